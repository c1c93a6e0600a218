"""`i2m2-med bundle [RUN] --out DIR`: the model as a MONAI Bundle (:mod:`i2m2_med.inference.bundle`).

Exit codes: 0 written; 1 a bad run or checkpoint, or an output folder that exists and is not empty.
"""

from __future__ import annotations

from pathlib import Path


def run(model: Path | None, out: Path) -> int:
    from i2m2_med.inference.bundle import write_bundle

    root = write_bundle(model, out)
    print(f"MONAI Bundle written: {root}")
    for part in ("configs/metadata.json", "configs/inference.json", "models/model.safetensors", "docs/README.md"):
        print(f"  {part}")
    print(f"run it: python -m monai.bundle run --config_file {root}/configs/inference.json --bundle_root {root} "
          "--dataset_dir IN --output_dir OUT")
    return 0
