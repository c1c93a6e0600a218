"""The project's error hierarchy.

Every error a user can cause carries the file (or object) it concerns and a one-line reason,
so that the command line can print ``<file>: <reason>`` and exit non-zero without a traceback.
"""

from __future__ import annotations

from os import PathLike


class I2M2Error(Exception):
    """Base class of every error the project raises on purpose."""

    def __init__(self, where: str | PathLike | None, reason: str):
        self.where = None if where is None else str(where)
        self.reason = " ".join(str(reason).split())  # always one line
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return f"{self.where}: {self.reason}" if self.where else self.reason


class StudyReadError(I2M2Error):
    """A file or series could not be read as a study (corrupt, wrong layout, unsupported)."""


class AnnotationError(I2M2Error):
    """An annotation / label file (fastMRI+ CSV, clinical table) is malformed."""


class TransformError(I2M2Error):
    """Input to a transform has the wrong shape, dtype or values (NaN/Inf)."""


class ConfigError(I2M2Error):
    """A configuration file or value is unknown, ill-typed or inconsistent."""


class CheckpointError(I2M2Error):
    """A checkpoint is missing, corrupt, tampered with or does not match the model."""


class UsageError(I2M2Error):
    """A bad argument on the command line or in a library call (negative count, wrong path...)."""


class UndefinedMetricError(I2M2Error):
    """A statistic is undefined for the data given (one class absent, empty split, too few cases).

    Reports catch it and show its reason (e.g. "no positives in test split") instead of a number.
    """
