"""The on-disk tensor cache: equal to the files, invalidated by changed data or settings."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from diagnose_inputs import write_h5, write_nifti

from i2m2_med.data.cache import TensorCache, cache_then_drop
from i2m2_med.data.cohort import load_cohort
from i2m2_med.data.dataset import SliceDataset
from i2m2_med.data.sample import image_sample
from i2m2_med.errors import StudyReadError
from i2m2_med.io.fastmri_h5 import read_fastmri_h5
from i2m2_med.io.nifti import read_nifti
from i2m2_med.synth import generate_cohort
from i2m2_med.transforms.dictionary import build_modality_pipeline


def _same(a: dict, b: dict) -> None:
    assert a["present"] == b["present"] and a["slice"] == b["slice"]
    for m in ("magnitude", "phase"):
        assert (m in a) == (m in b)
        if m in a:
            assert a[m].dtype == b[m].dtype == torch.float32 and a[m].shape == b[m].shape
            assert torch.equal(a[m], b[m])


def test_cached_samples_equal_the_files_bit_for_bit(tmp_path):
    pipe = build_modality_pipeline(32)
    studies = [
        read_fastmri_h5(write_h5(tmp_path / "a.h5", n_slices=3, width=372)),
        read_nifti(write_nifti(tmp_path / "b.nii.gz", n_slices=2, phase=False)),  # no phase
    ]
    cache = TensorCache(tmp_path / "cache", 32, pipe)
    for study in studies:
        for k in range(study.n_slices):
            _same(cache.sample(study, k), image_sample(study, k, pipe))
    assert cache.built == 2
    assert "phase" not in cache.sample(studies[1], 0) and cache.sample(studies[1], 0)["present"]["phase"] is False
    # a second cache over the same folder reads the entries instead of building them
    again = TensorCache(tmp_path / "cache", 32, pipe)
    _same(again.sample(studies[0], 2), image_sample(studies[0], 2, pipe))
    assert again.built == 0
    assert not any("a.h5" in p.name or "b.nii" in p.name for p in (tmp_path / "cache").iterdir())


def test_changed_data_or_settings_are_never_served_an_old_entry(tmp_path):
    path = write_h5(tmp_path / "a.h5", n_slices=2, seed=0)
    pipe = build_modality_pipeline(32)
    cache = TensorCache(tmp_path / "cache", 32, pipe)
    before = cache.sample(read_fastmri_h5(path), 1)
    # same name, same size, other k-space: a new entry is built and it matches the new file
    write_h5(path, n_slices=2, seed=1)
    os.utime(path, ns=(1, 1))
    study = read_fastmri_h5(path)
    fresh = TensorCache(tmp_path / "cache", 32, pipe)
    after = fresh.sample(study, 1)
    assert fresh.built == 1 and not torch.equal(before["magnitude"], after["magnitude"])
    _same(after, image_sample(study, 1, pipe))
    # other transform settings: another key, another entry
    other = TensorCache(tmp_path / "cache", 32, build_modality_pipeline(32, percentile=95.0), percentile=95.0)
    other.sample(study, 0)
    assert other.built == 1 and other.key != fresh.key
    assert other.prune([study]) == 4  # the stale entry of the old file and the entry of the old settings
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_dataset_reads_the_cache_and_gives_the_same_items(tiny_cohort, tmp_path):
    cohort = load_cohort(tiny_cohort)
    plain = SliceDataset(cohort, "train", image_size=32, cache_size=0)
    cache = TensorCache(tmp_path / "cache", 32, build_modality_pipeline(32))
    cached = SliceDataset(cohort, "train", image_size=32, tensor_cache=cache)
    assert len(plain) == len(cached) > 0
    for i in (0, len(plain) // 2, len(plain) - 1):
        a, b = plain[i], cached[i]
        _same(a, b)
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["tabular"], b["tabular"])
        assert a["study_id"] == b["study_id"] and a["index"] == b["index"]
    assert cache.built == len({cached.item(i)[0].study_id for i in (0, len(plain) // 2, len(plain) - 1)})
    shutil.rmtree(tmp_path / "cache")


def test_a_cohort_generated_into_the_cache_keeps_its_studies_without_their_kspace(tmp_path):
    full = tmp_path / "full"
    generate_cohort(full, 4, seed=3, n_slices=8)
    lean = tmp_path / "lean"
    cache = TensorCache(tmp_path / "cache", 32, build_modality_pipeline(32))
    kept = "synth3_0000"
    generate_cohort(lean, 4, seed=3, n_slices=8, on_written=cache_then_drop(cache, keep=lambda sid: sid == kept))
    assert sorted(p.stem for p in (lean / "h5").glob("*.h5")) == [kept]

    reader = TensorCache(tmp_path / "cache", 32, build_modality_pipeline(32))
    a = load_cohort(full)
    b = load_cohort(lean, tensor_cache=reader)
    assert [s.study_id for s in a.studies] == [s.study_id for s in b.studies]
    assert a.split == b.split and a.subjects == b.subjects and a.tabular_names == b.tabular_names
    for sid in a.labels:
        np.testing.assert_array_equal(a.labels[sid], b.labels[sid])
        np.testing.assert_array_equal(a.tabular[sid], b.tabular[sid])
    pipe = build_modality_pipeline(32)
    for study in b.studies:
        twin = next(s for s in a.studies if s.study_id == study.study_id)
        _same(reader.sample(study, 5), image_sample(twin, 5, pipe))
    assert reader.built == 0
    dropped = next(s for s in b.studies if s.study_id != kept)
    with pytest.raises(StudyReadError, match="only the cached"):
        dropped.read_slice(0)
