"""`i2m2-med export RUN --format onnx|torchscript|exported-program --out FILE`.

Writes the model of a run folder (or checkpoint file; the bundled demo model when RUN is left
out) as a graph with plain tensor inputs and outputs (:mod:`i2m2_med.inference.export`),
checked against PyTorch before it is kept, and ``FILE.json`` beside it describing the inputs,
the outputs and the model. Prints what was written and the largest difference measured.

Exit codes: 0 written; 1 a bad run or checkpoint, an unknown format, a missing ONNX package, or an
export that disagrees with PyTorch (nothing is left at FILE then).
"""

from __future__ import annotations

from pathlib import Path


def run(model: Path | None, fmt: str, out: Path) -> int:
    from i2m2_med.inference.export import TOLERANCE, export_model

    result = export_model(model, fmt, out)
    meta = result.metadata
    inputs = ", ".join(f"{i['name']} {'x'.join(str(d) for d in i['shape'])}" for i in meta["inputs"])
    outputs = ", ".join(o["name"] for o in meta["outputs"])
    print(f"exported {meta['variant']} model {meta['fingerprint']} as {fmt}: {result.path.name} "
          f"({result.path.stat().st_size / 1e6:.1f} MB)")
    print(f"inputs:  {inputs}")
    print(f"outputs: {outputs} (log-probabilities [batch, heads, 2])")
    print(f"checked against PyTorch on {result.checks} batches (every modality, and each one missing): "
          f"largest difference {result.max_abs_diff:.1e} (allowed {TOLERANCE:g})")
    print(f"description: {result.metadata_path.name}")
    return 0
