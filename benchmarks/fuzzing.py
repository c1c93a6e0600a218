"""Fuzzing the readers: byte mutations of input files and reading a folder the way a run does,
shared by the fuzz tests (``tests/test_fuzz_inputs.py``, mutations drawn by hypothesis) and the
hostile-input benchmark (``bench_hostile``, drawn from a seeded numpy generator).

A mutation is ``(kind, where, value)``: ``where`` in [0, 1] is the position as a fraction of the
file's length at the time it is applied; ``kind`` is one of

* ``flip``: XOR the byte there with ``value`` (0 counts as 1);
* ``ff``: overwrite ``value`` bytes from there with 0xFF;
* ``cut``: drop everything from there on;
* ``insert``: insert ``value`` bytes (a fixed pattern) there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KINDS: tuple[str, ...] = ("flip", "ff", "cut", "insert")


def mutate(data: bytes, mutations: list[tuple[str, float, int]]) -> bytes:
    """``data`` with ``mutations`` applied in order."""
    buf = bytearray(data)
    for kind, where, value in mutations:
        if not buf:
            break
        at = min(len(buf) - 1, int(where * len(buf)))
        if kind == "flip":
            buf[at] ^= value or 1
        elif kind == "ff":
            buf[at:at + value] = b"\xff" * len(buf[at:at + value])
        elif kind == "cut":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = bytes((at * 31 + i) % 256 for i in range(value))
        else:
            raise ValueError(f"unknown mutation {kind!r}; expected one of {', '.join(KINDS)}")
    return bytes(buf)


def random_mutations(rng: np.random.Generator, max_count: int = 4) -> list[tuple[str, float, int]]:
    """One to ``max_count`` mutations drawn uniformly over the kinds (the ranges of the fuzz
    tests' strategy: flip 0-255, ff 1-16 bytes, insert 1-64 bytes)."""
    out = []
    for _ in range(int(rng.integers(1, max_count + 1))):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        value = {"flip": int(rng.integers(0, 256)), "ff": int(rng.integers(1, 17)), "cut": 0,
                 "insert": int(rng.integers(1, 65))}[kind]
        out.append((kind, float(rng.random()), value))
    return out


def read_all(folder: Path) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """Discover ``folder`` and read every slice of every study, as a run would: study id -> its
    slices' arrays (each slice's modalities concatenated), and the one-line reasons of what was
    refused (discovery's problems and the readers' typed errors while reading). Any other
    exception propagates: it is a defect."""
    from i2m2_med.errors import I2M2Error
    from i2m2_med.io.discover import discover

    found = discover(folder)
    out: dict[str, list[np.ndarray]] = {}
    refused = [str(reason) for _, reason in found.problems]
    for study in found.studies:
        slices = []
        try:
            for k in range(study.n_slices):
                sample = study.read_slice(k)
                slices.append(np.concatenate([np.asarray(v).ravel() for _, v in sorted(sample.items())]))
        except I2M2Error as exc:
            refused.append(exc.one_line())
            continue
        finally:
            study.close()
        out[study.study_id] = slices
    return out, refused
