"""Slices -> model inputs, streamed with bounded memory: the shared inference pipeline, a
per-study iterator over transformed slices and :class:`ReadAhead` across studies.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence

from i2m2_med.data.sample import image_sample
from i2m2_med.errors import UsageError
from i2m2_med.io.study import Study

_PIPELINES: dict[int, Callable[[dict], dict]] = {}
_PIPELINE_LOCK = threading.Lock()


def modality_pipeline(image_size: int) -> Callable[[dict], dict]:
    """The (deterministic, fully sampled) modality pipeline at ``image_size``, built once per
    process and shared (it holds no random state)."""
    with _PIPELINE_LOCK:
        pipe = _PIPELINES.get(int(image_size))
        if pipe is None:
            # MONAI loads with this import (seconds): only once a pipeline is built, not when a
            # caller (diagnose, the app) imports this module before a model is even loaded
            from i2m2_med.transforms.dictionary import build_modality_pipeline

            pipe = _PIPELINES[int(image_size)] = build_modality_pipeline(int(image_size))
        return pipe


def iter_slice_samples(
    study: Study,
    pipeline: Callable[[dict], dict],
    indices: Sequence[int],
    workers: int = 0,
    exclude: Iterable[str] = (),
    lookahead: int = 64,
) -> Iterator[dict[str, Any]]:
    """Samples of ``indices`` in order. ``workers`` > 0 reads and transforms in that many threads
    with at most ``lookahead`` samples in flight (bounded memory); an error of any slice is raised
    when its turn comes, and pending reads are cancelled."""
    exclude = tuple(exclude)
    if workers <= 0:
        for i in indices:
            yield image_sample(study, int(i), pipeline, exclude)
        return
    pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="i2m2-load")
    window: deque[Future] = deque()
    it = iter(indices)
    try:
        for i in it:
            window.append(pool.submit(image_sample, study, int(i), pipeline, exclude))
            if len(window) >= max(1, lookahead):
                break
        while window:
            fut = window.popleft()
            nxt = next(it, None)
            if nxt is not None:
                window.append(pool.submit(image_sample, study, int(nxt), pipeline, exclude))
            yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class ReadAhead:
    """The slices of a sequence of studies, read and transformed by ``workers`` threads ahead of
    their use -- across study boundaries, so the model never waits for the first slices of the
    next study. At most ``lookahead`` samples are in flight or waiting (bounded memory).

    ``jobs``: ``(key, study, slice indices)`` in the order the studies will be consumed. Consume
    with :meth:`samples` (``key`` by ``key``, in that order); samples of a study that was not
    fully consumed (it failed) are discarded when the next one is asked for. Use as a context
    manager, or call :meth:`close` (cancels what is pending).
    """

    def __init__(self, jobs: Iterable[tuple[str, Study, Sequence[int]]], pipeline: Callable[[dict], dict],
                 workers: int, lookahead: int = 64, exclude: Iterable[str] = ()):
        if int(workers) < 1:
            raise UsageError("workers", f"read-ahead needs at least one thread, got {workers}")
        self._pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="i2m2-load")
        self._tasks = ((key, study, int(i)) for key, study, indices in jobs for i in indices)
        self._window: deque[tuple[str, Future]] = deque()
        self._pipeline = pipeline
        self._exclude = tuple(exclude)
        self._lookahead = max(1, int(lookahead))
        self._fill()

    def _fill(self) -> None:
        while len(self._window) < self._lookahead:
            task = next(self._tasks, None)
            if task is None:
                return
            key, study, index = task
            self._window.append((key, self._pool.submit(image_sample, study, index, self._pipeline, self._exclude)))

    def samples(self, key: str) -> Iterator[dict[str, Any]]:
        """The samples of study ``key`` in slice order (a slice's error is raised at its turn)."""
        while self._window and self._window[0][0] != key:
            _, stale = self._window.popleft()
            stale.cancel()
            self._fill()
        while self._window and self._window[0][0] == key:
            _, fut = self._window.popleft()
            self._fill()
            yield fut.result()

    def close(self) -> None:
        for _, fut in self._window:
            fut.cancel()
        self._window.clear()
        self._tasks = iter(())
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
