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

A memory budget bounds a whole run (``diagnose --memory-mb``, default ``I2M2_MEMORY_MB`` or
4096 MB, per process): what the process holds once the model is loaded (the libraries, the
model, the transforms), plus :data:`WORK_RESERVE_MB` for the model's work on a batch, plus, for
each thread that reads slices, :data:`WORK_FACTOR` times the bytes of the slice it reads. The
bytes one declared slice may take follow from it (:func:`slice_allowance`); a slice beyond them
is refused like any other limit, before it is read, naming the budget. Everything else a run
holds grows with the model-resolution slices (kilobytes each), not with the files.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from i2m2_med.errors import StudyReadError, UsageError

_ENV = {"slices": "I2M2_MAX_SLICES", "coils": "I2M2_MAX_COILS", "matrix": "I2M2_MAX_MATRIX", "slice_mb": "I2M2_MAX_SLICE_MB"}
MEMORY_ENV = "I2M2_MEMORY_MB"
DEFAULT_MEMORY_MB = 4096
WORK_FACTOR = 4
"""Peak bytes a reader and the transforms hold per byte of the slice being read: the k-space, its
inverse FFT per coil and the combination (measured 2.6 for a 32- and a 64-coil h5 slice through
the inference pipeline; rounded up for decoders that keep a copy)."""
WORK_RESERVE_MB = 256
"""Room for the model's activations on a batch, the read-ahead window of model-resolution
samples and the outputs of a study."""


@dataclass(frozen=True)
class ReadLimits:
    slices: int = 1024
    coils: int = 128
    matrix: int = 2048
    slice_mb: int = 512
    budget_bytes: int | None = None  # bytes one slice may take under a memory budget
    budget_mb: int | None = None     # that budget (for the message)

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
        if self.budget_bytes is not None and n_bytes > self.budget_bytes:
            raise StudyReadError(where, f"declares {n_bytes:,} bytes per slice, beyond the {self.budget_bytes:,} a slice "
                                        f"may take under the memory budget of {self.budget_mb:,} MB (raise it with "
                                        f"--memory-mb or {MEMORY_ENV})")


def check_regular_file(path: str | os.PathLike) -> None:
    """Refuse anything but a regular file (a FIFO or a device would block a reader or never end;
    a symlink is followed to what it names)."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        raise StudyReadError(str(path), "no such file") from None
    if not stat.S_ISREG(mode):
        raise StudyReadError(str(path), "not a regular file (a FIFO, device or folder): not read")


_BUDGET: tuple[int, int] | None = None  # (budget MB, bytes per slice) once a run has set one


def read_limits() -> ReadLimits:
    """The limits in force for this process: :meth:`ReadLimits.from_env`, with the memory budget
    of :func:`set_memory_budget` when one is set."""
    limits = ReadLimits.from_env()
    if _BUDGET is None:
        return limits
    return dataclasses.replace(limits, budget_mb=_BUDGET[0], budget_bytes=_BUDGET[1])


def memory_budget_mb(value: int | None = None) -> int:
    """The budget in MB: ``value`` when given, else ``I2M2_MEMORY_MB`` when it holds a positive
    whole number, else :data:`DEFAULT_MEMORY_MB`."""
    if value is not None:
        if int(value) < 1:
            raise UsageError("--memory-mb", f"must be a positive number of MB, got {value}")
        return int(value)
    text = os.environ.get(MEMORY_ENV, "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else DEFAULT_MEMORY_MB


def resident_mb() -> float:
    """This process's resident memory now, in MB (its peak so far where /proc is absent)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def slice_allowance(budget_mb: int, held_mb: float, readers: int) -> int:
    """The bytes one declared slice may take when the process already holds ``held_mb`` and
    ``readers`` threads read slices at once (see the module's text). Raises :class:`UsageError`
    when the budget leaves nothing for reading."""
    room = float(budget_mb) - float(held_mb) - WORK_RESERVE_MB
    allowance = int(room * 2**20 / (max(1, int(readers)) * WORK_FACTOR))
    if allowance < 2**20:
        raise UsageError("--memory-mb", f"{budget_mb:,} MB leaves no room to read: the model and libraries hold "
                                        f"{held_mb:,.0f} MB, and the model's work needs {WORK_RESERVE_MB} MB more")
    return allowance


def set_memory_budget(budget_mb: int | None, readers: int) -> int:
    """Bound this process's reads by a memory budget (:func:`memory_budget_mb` of ``budget_mb``)
    from what it holds now (call it once the model is loaded); returns the bytes one slice may
    take. Every reader refuses a larger slice from then on."""
    global _BUDGET
    mb = memory_budget_mb(budget_mb)
    allowance = slice_allowance(mb, resident_mb(), readers)
    _BUDGET = (mb, allowance)
    return allowance


def clear_memory_budget() -> None:
    """Forget the budget (the readers go back to the fixed limits)."""
    global _BUDGET
    _BUDGET = None


__all__ = ["ReadLimits", "check_regular_file", "clear_memory_budget", "memory_budget_mb", "read_limits", "resident_mb",
           "set_memory_budget", "slice_allowance"]
