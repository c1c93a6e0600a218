"""The one progress display of every command: a rich bar on stderr with the count done of the
total, the rate, the time elapsed and the time remaining -- drawn only when stderr is a terminal.

Redirected to a file or a pipe (a batch job's log, CI), a command draws no bar: its result lines
and one-line summaries are what the log keeps. Training uses Lightning's rich bar under the same
rule (:func:`bars_wanted`); ``ablate`` writes one line per run and per epoch instead of bars, since
its output is usually a log.
"""

from __future__ import annotations

import sys
from typing import Any


def bars_wanted(requested: bool = True) -> bool:
    """True when a bar was asked for (``--progress``, the default) and stderr is a terminal."""
    if not requested:
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class Bar:
    """A progress bar of ``total`` items (``unit``: what they are), drawn on stderr when
    :func:`bars_wanted`; otherwise every call does nothing. Use as a context manager or call
    :meth:`close`."""

    def __init__(self, total: int, unit: str, description: str, enabled: bool = True):
        self.unit = unit
        self._progress: Any = None
        if not bars_wanted(enabled):
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
            TaskProgressColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"), console=Console(file=sys.stderr), transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=max(0, int(total)), unit=unit, note="")

    @property
    def active(self) -> bool:
        return self._progress is not None

    def update(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n)

    def set_completed(self, done: int, total: int | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, **({} if total is None else {"total": total}))

    def note(self, text: str) -> None:
        """A short text after the bar (e.g. the file being read)."""
        if self._progress is not None:
            self._progress.update(self._task, note=text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
