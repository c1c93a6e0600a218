"""Training and inference build a slice's image inputs alike: :class:`SliceDataset` (training,
evaluation) and the inference stream (:func:`iter_slice_samples`, :class:`ReadAhead`, with the
shared :func:`modality_pipeline`) give bit-identical magnitude / phase tensors and the same
``present`` flags for the same slice -- for k-space studies, for image studies, and for a study
whose phase is missing (absent from the sample on both sides, never zero-filled)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from i2m2_med.config import load_config
from i2m2_med.data.cohort import load_cohort
from i2m2_med.data.dataset import SliceDataset
from i2m2_med.inference.streaming import (
    ReadAhead,
    iter_slice_samples,
    modality_pipeline,
)
from i2m2_med.io.nifti import read_nifti
from i2m2_med.io.study import IMAGE_MODALITIES
from i2m2_med.synth import generate_cohort

torch.set_num_threads(1)
IMAGE_SIZE = int(load_config("cpu").image_size)


def assert_same_images(train: dict, infer: dict) -> None:
    """The image part of a training sample equals an inference sample: the same slice, the same
    presence of each image modality, and bit-identical float32 tensors of the same shape."""
    assert train["slice"] == infer["slice"]
    assert {m: train["present"][m] for m in IMAGE_MODALITIES} == infer["present"]
    for m in IMAGE_MODALITIES:
        assert (m in train) == (m in infer) == infer["present"][m], m
        if m in train:
            assert train[m].dtype == infer[m].dtype == torch.float32, m
            assert train[m].shape == infer[m].shape == (1, IMAGE_SIZE, IMAGE_SIZE), m
            assert torch.equal(train[m], infer[m]), f"{m} of slice {train['slice']} differs"


def training_samples(dataset: SliceDataset, study_id: str) -> list[dict]:
    return [dataset[i] for i in range(len(dataset)) if dataset.item(i)[0].study_id == study_id]


def inference_streams(study, exclude: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """The study's samples as diagnose and the app read them: in this thread, with loading threads,
    and read ahead across studies."""
    pipeline = modality_pipeline(IMAGE_SIZE)
    indices = range(study.n_slices)
    with ReadAhead([("other", study, [0]), ("this", study, indices)], pipeline, workers=2, lookahead=3,
                   exclude=exclude) as ahead:
        list(ahead.samples("other"))
        read_ahead = list(ahead.samples("this"))
    return {
        "serial": list(iter_slice_samples(study, pipeline, indices, exclude=exclude)),
        "threads": list(iter_slice_samples(study, pipeline, indices, workers=2, exclude=exclude, lookahead=2)),
        "read_ahead": read_ahead,
    }


def test_kspace_studies_reach_the_model_alike_in_training_and_inference(tiny_cohort):
    cohort = load_cohort(tiny_cohort)
    dataset = SliceDataset(cohort, split=None, image_size=IMAGE_SIZE, cache_size=0)
    for study in cohort.studies[:2]:
        assert study.domain == "kspace" and set(study.modalities) >= set(IMAGE_MODALITIES)
        train = training_samples(dataset, study.study_id)
        assert len(train) == study.n_slices
        for name, stream in inference_streams(study).items():
            assert len(stream) == study.n_slices, name
            for a, b in zip(train, stream):
                assert_same_images(a, b)
    # the comparison sees a difference: a neighbouring slice, or the phase withheld
    with pytest.raises(AssertionError):
        assert_same_images({**train[1], "slice": train[0]["slice"]}, stream[0])
    with pytest.raises(AssertionError):
        assert_same_images(train[0], inference_streams(study, exclude=("phase",))["serial"][0])


@pytest.fixture(scope="module")
def nifti_cohort(tmp_path_factory) -> tuple[Path, Path]:
    """A cohort of two NIfTI studies, the first without its phase volume (``cohort/``), and that
    first study again with its phase (``twin/``)."""
    base = tmp_path_factory.mktemp("sample_builder")
    generated = base / "generated"
    generate_cohort(generated, 2, seed=11, nifti=True, n_slices=8)
    cohort, twin = base / "cohort", base / "twin"
    shutil.copytree(generated / "annotations", cohort / "annotations")
    for name in ("tabular.csv", "splits.csv"):
        shutil.copy(generated / name, cohort / name)
    volumes = sorted(p for p in (generated / "nifti").glob("*.nii.gz") if not p.name.endswith("_phase.nii.gz"))
    assert len(volumes) == 2
    first, second = volumes
    (cohort / "nifti").mkdir()
    shutil.copy(first, cohort / "nifti" / first.name)
    shutil.copy(second, cohort / "nifti" / second.name)
    shutil.copy(second.with_name(second.name.replace(".nii.gz", "_phase.nii.gz")), cohort / "nifti")
    twin.mkdir()
    shutil.copy(first, twin / first.name)
    shutil.copy(first.with_name(first.name.replace(".nii.gz", "_phase.nii.gz")), twin)
    return cohort, twin / first.name


def test_a_missing_phase_is_absent_alike_in_training_and_inference(nifti_cohort):
    folder, twin_path = nifti_cohort
    cohort = load_cohort(folder)
    dataset = SliceDataset(cohort, split=None, image_size=IMAGE_SIZE, cache_size=0)
    by_missing = {tuple(s.missing_modalities): s for s in cohort.studies}
    assert set(by_missing) == {("phase",), ()}
    magnitude_only, complete = by_missing[("phase",)], by_missing[()]

    # the study without phase: no phase tensor on either side, present["phase"] False
    train = training_samples(dataset, magnitude_only.study_id)
    assert len(train) == magnitude_only.n_slices and all("phase" not in s for s in train)
    assert all(s["present"]["phase"] is False and s["present"]["magnitude"] is True for s in train)
    for stream in inference_streams(magnitude_only).values():
        for a, b in zip(train, stream, strict=True):
            assert_same_images(a, b)

    # the same volume with its phase, the phase withheld at inference: what training saw without it
    twin = read_nifti(twin_path)
    assert twin.study_id == magnitude_only.study_id and "phase" in twin.modalities
    for stream in inference_streams(twin, exclude=("phase",)).values():
        for a, b in zip(train, stream, strict=True):
            assert_same_images(a, b)
    with pytest.raises(AssertionError):  # not withheld: the phase is there, unlike in training
        assert_same_images(train[0], inference_streams(twin)["serial"][0])

    # the image study with both modalities
    train = training_samples(dataset, complete.study_id)
    assert all(s["present"]["phase"] for s in train)
    for stream in inference_streams(complete).values():
        for a, b in zip(train, stream, strict=True):
            assert_same_images(a, b)
