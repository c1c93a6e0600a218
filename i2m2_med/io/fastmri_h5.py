"""fastMRI knee h5 files: the writer (the reader follows below it).

Layout (as in the fastMRI knee release):

* ``kspace``: (S, 640, W) complex64 singlecoil, or (S, C, 640, W) complex64 multicoil;
* ``reconstruction_esc`` (singlecoil) or ``reconstruction_rss`` (multicoil): (S, 320, 320)
  float32;
* ``ismrmrd_header``: a scalar bytes dataset holding the ISMRMRD XML header;
* attrs ``acquisition`` ("CORPD_FBK" / "CORPDFS_FBK"), ``max`` and ``norm`` of the
  reconstruction, ``patient_id`` (a hashed id; absent in some files).
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from i2m2_med.atomic import atomic_path


def write_fastmri_h5(
    path: str | os.PathLike,
    kspace: np.ndarray,
    header: bytes,
    *,
    reconstruction: np.ndarray | None = None,
    attrs: dict[str, Any] | None = None,
) -> None:
    """Write one volume in the fastMRI layout, atomically.

    ``kspace`` (S, 640, W) or (S, C, 640, W) complex, stored as complex64; ``reconstruction``
    (S, 320, 320), stored as ``reconstruction_esc`` (singlecoil) or ``reconstruction_rss``
    (multicoil) in float32; ``attrs`` such as acquisition / max / norm / patient_id.
    Slices are chunked one per chunk so that readers can read them with partial reads.
    """
    kspace = np.asarray(kspace)
    if kspace.ndim not in (3, 4):
        raise ValueError(f"kspace must be (S, 640, W) or (S, C, 640, W), got {kspace.shape}")
    multicoil = kspace.ndim == 4
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(
                "kspace", data=kspace.astype(np.complex64, copy=False), chunks=(1, *kspace.shape[1:])
            )
            if reconstruction is not None:
                key = "reconstruction_rss" if multicoil else "reconstruction_esc"
                rec = np.asarray(reconstruction, dtype=np.float32)
                f.create_dataset(key, data=rec, chunks=(1, *rec.shape[1:]))
            f.create_dataset("ismrmrd_header", data=np.bytes_(header))
            for key, value in (attrs or {}).items():
                if value is not None:
                    f.attrs[key] = value
