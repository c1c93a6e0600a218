"""i2m2-med: I2M2 (a normalised product of intra- and inter-modality experts) for knee MRI."""

__version__ = "0.1.0"

from pathlib import Path as _Path

DEMO_MODEL_DIR = _Path(__file__).resolve().parent / "assets" / "demo_model"
"""Folder of the bundled demo model: ``model.safetensors``, ``metrics.json``, ``command.txt``."""


def demo_model_path() -> _Path:
    """The bundled demo checkpoint (``assets/demo_model/model.safetensors``), written by
    ``i2m2-med demo``; the model that ``diagnose`` and the app use when the user names none.

    The path is returned whether or not the file exists (a checkout where the demo has not been
    built); loaders report a missing file with a clear error.
    """
    return DEMO_MODEL_DIR / "model.safetensors"
