"""Resource limits every reader checks from a file's declared shapes, before it allocates
anything: a few bytes of header must not be able to claim gigabytes of memory or hours of work.

The defaults cover every real knee protocol with room to spare (fastMRI knee: 30-50 slices,
15 coils, 640 x 368 k-space; clinical sagittal / coronal series: up to about 60 slices of
512 x 512; 3D isotropic acquisitions: a few hundred partitions). Each can be raised for one
process with an environment variable; a file beyond a limit is refused with one line naming the
file, the declared size and the limit (and the variable that raises it).

=====================  =========  =============================================================
limit                  default    environment variable
=====================  =========  =============================================================
slices per study       1024       ``I2M2_MAX_SLICES``
coils                  128        ``I2M2_MAX_COILS``
matrix side (k-space   2048       ``I2M2_MAX_MATRIX``
or image), pixels
bytes of one slice     512 MiB    ``I2M2_MAX_SLICE_MB`` (all coils, as the reader holds it)
=====================  =========  =============================================================
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from i2m2_med.errors import StudyReadError

_ENV = {"slices": "I2M2_MAX_SLICES", "coils": "I2M2_MAX_COILS", "matrix": "I2M2_MAX_MATRIX", "slice_mb": "I2M2_MAX_SLICE_MB"}


@dataclass(frozen=True)
class ReadLimits:
    slices: int = 1024
    coils: int = 128
    matrix: int = 2048
    slice_mb: int = 512

    @classmethod
    def from_env(cls) -> "ReadLimits":
        """The defaults, each replaced by its environment variable when that holds a positive
        whole number (anything else is ignored: a limit is never lowered to nothing by a typo)."""
        values = {}
        for field, var in _ENV.items():
            text = os.environ.get(var, "").strip()
            if text.isdigit() and int(text) > 0:
                values[field] = int(text)
        return cls(**values)

    def check(self, where: str, *, slices: int, coils: int = 1, matrix: Sequence[int] = (), item_bytes: int = 8) -> None:
        """Raise :class:`StudyReadError` when a declared size is beyond a limit."""
        def refuse(what: str, value: int, limit: int, field: str) -> None:
            raise StudyReadError(where, f"declares {value:,} {what}, beyond the limit of {limit:,} "
                                        f"(raise it with {_ENV[field]} if this is a real acquisition)")

        if slices > self.slices:
            refuse("slices", slices, self.slices, "slices")
        if coils > self.coils:
            refuse("coils", coils, self.coils, "coils")
        for side in matrix:
            if side > self.matrix:
                refuse("samples along one axis of a slice", int(side), self.matrix, "matrix")
        n_bytes = coils * item_bytes
        for side in matrix:
            n_bytes *= max(1, int(side))
        if n_bytes > self.slice_mb * 2**20:
            refuse("bytes per slice", n_bytes, self.slice_mb * 2**20, "slice_mb")


def check_regular_file(path: str | os.PathLike) -> None:
    """Refuse anything but a regular file (a FIFO or a device would block a reader or never end;
    a symlink is followed to what it names)."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        raise StudyReadError(str(path), "no such file") from None
    if not stat.S_ISREG(mode):
        raise StudyReadError(str(path), "not a regular file (a FIFO, device or folder): not read")


def read_limits() -> ReadLimits:
    """The limits in force for this process (:meth:`ReadLimits.from_env`)."""
    return ReadLimits.from_env()


__all__ = ["ReadLimits", "check_regular_file", "read_limits"]
