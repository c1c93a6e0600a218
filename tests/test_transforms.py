"""k-space -> magnitude / phase: equality with fastMRI, widths, multicoil, masks, MONAI pipeline."""

from __future__ import annotations

import fastmri
import numpy as np
import pytest
import torch
from fastmri.data import transforms as fT
from fastmri.data.subsample import EquispacedMaskFractionFunc, RandomMaskFunc
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.transforms import Compose

from i2m2_med.errors import TransformError
from i2m2_med.transforms.dictionary import (
    ImageToModalitiesd,
    KSpaceToModalitiesd,
    NormalizeMagnituded,
    PackModalitiesd,
    ResizeModalitiesd,
    UndersampleKSpaced,
    build_modality_pipeline,
)
from i2m2_med.transforms.geometry import centre_crop_or_pad, resize_modalities
from i2m2_med.transforms.intensity import normalize_magnitude
from i2m2_med.transforms.modalities import kspace_to_modalities
from i2m2_med.transforms.subsample import apply_column_mask, sample_mask


def _kspace(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def _fastmri_image(k: np.ndarray, crop: tuple[int, int] = (320, 320)) -> np.ndarray:
    """fastMRI's path: to_tensor -> ifft2c -> complex_center_crop, zero-padded first when the
    image is smaller than the crop ((crop - n) // 2 zeros before, as MONAI's symmetric pad;
    fastMRI itself refuses that case). Complex numpy."""
    img = fastmri.ifft2c(fT.to_tensor(k))
    rows, cols = img.shape[-3], img.shape[-2]
    if rows < crop[0] or cols < crop[1]:
        big = torch.zeros(*img.shape[:-3], max(rows, crop[0]), max(cols, crop[1]), 2)
        r = (crop[0] - rows) // 2 if rows < crop[0] else 0
        c = (crop[1] - cols) // 2 if cols < crop[1] else 0
        big[..., r:r + rows, c:c + cols, :] = img
        img = big
    img = fT.complex_center_crop(img, crop)
    return torch.view_as_complex(img.contiguous()).numpy()


def _rel_err(out: dict, ref: np.ndarray) -> float:
    z = out["magnitude"] * np.exp(1j * out["phase"].astype(np.float64))
    return float(np.abs(z - ref).max() / np.abs(ref).max())


# ---- equality with fastMRI ------------------------------------------------------------------


@pytest.mark.parametrize("width", [368, 372, 320, 338, 356, 386, 400, 454, 644, 301, 300, 200, 367])
def test_equals_fastmri_ifft2c_crop(width: int) -> None:
    k = _kspace((640, width), seed=width)
    out = kspace_to_modalities(k)
    ref = _fastmri_image(k)
    assert out["magnitude"].shape == (320, 320) and out["magnitude"].dtype == np.float32
    assert out["phase"].dtype == np.float32
    assert _rel_err(out, ref) < 1e-5
    np.testing.assert_allclose(out["magnitude"], np.abs(ref), rtol=0, atol=1e-5 * np.abs(ref).max())
    assert np.abs(out["phase"]).max() <= np.pi


def test_odd_readout_and_volume() -> None:
    k = _kspace((3, 639, 371), seed=3)
    out = kspace_to_modalities(k)
    assert out["magnitude"].shape == (3, 320, 320)
    assert _rel_err(out, _fastmri_image(k)) < 1e-5


def test_narrow_width_is_zero_filled_centred() -> None:
    k = _kspace((640, 200), seed=1)
    out = kspace_to_modalities(k)
    # the 200 image columns sit at 60..259 (centre column 100 -> 160), the rest is 0
    assert not out["magnitude"][:, :60].any() and not out["magnitude"][:, 260:].any()
    assert not out["phase"][:, :60].any() and not out["phase"][:, 260:].any()
    assert (out["magnitude"][:, 60:260] > 0).all()


def test_hand_computed_point_source() -> None:
    # a single k-space sample at the centre (row 320, column W//2) of unit value is a flat
    # image of value 1/sqrt(640*W) with zero phase (orthonormal, centred transform)
    for width in (368, 338, 371):
        k = np.zeros((640, width), np.complex64)
        k[320, width // 2] = 1.0
        out = kspace_to_modalities(k)
        np.testing.assert_allclose(out["magnitude"], 1 / np.sqrt(640 * width), rtol=1e-5)
        np.testing.assert_allclose(out["phase"], 0.0, atol=1e-5)
    # a sample one column right of the centre is a phase ramp of 2*pi/W per image column
    k = np.zeros((640, 368), np.complex64)
    k[320, 185] = 1.0
    phase = kspace_to_modalities(k)["phase"]
    step = np.angle(np.exp(1j * (phase[:, 1:] - phase[:, :-1])))
    np.testing.assert_allclose(step, 2 * np.pi / 368, atol=1e-4)


def test_torch_in_torch_out_same_numbers() -> None:
    k = _kspace((2, 640, 372), seed=5)
    a = kspace_to_modalities(k)
    b = kspace_to_modalities(torch.from_numpy(k))
    assert isinstance(b["magnitude"], torch.Tensor) and b["magnitude"].dtype == torch.float32
    np.testing.assert_array_equal(a["magnitude"], b["magnitude"].numpy())
    np.testing.assert_array_equal(a["phase"], b["phase"].numpy())


def test_torch_path_matches_numpy_path() -> None:
    from i2m2_med.transforms.modalities import _kspace_to_modalities_torch

    for shape, coils in (((640, 368), None), ((2, 640, 301), None), ((3, 640, 338), True)):
        k = _kspace(shape, seed=len(shape))
        a = kspace_to_modalities(k, coils=coils)
        b = _kspace_to_modalities_torch(torch.from_numpy(k), (320, 320), coils=coils, where=None)
        za = a["magnitude"] * np.exp(1j * a["phase"])
        zb = b["magnitude"].numpy() * np.exp(1j * b["phase"].numpy())
        err = np.abs(za - zb)
        if coils:
            # The combined phase is ill-conditioned where the coils cancel: with coherence
            # |sum_c x_c conj(l_c)| / sum_c |x_c| |l_c| near 0 (random k-space has such pixels)
            # float32 rounding moves it by up to eps / coherence. Weight the error by it.
            from i2m2_med.transforms.coils import _lowres_images
            from i2m2_med.transforms.fft import _centred_crop_image
            x = _centred_crop_image(k, (320, 320), 1)
            low = _lowres_images(k[None], (320, 320))[0]
            coherence = np.abs((x * np.conj(low)).sum(0)) / (np.abs(x) * np.abs(low)).sum(0)
            assert coherence.min() < 0.01  # the case the weighting is for is present
            err = err * coherence
            np.testing.assert_allclose(a["magnitude"], b["magnitude"].numpy(), rtol=1e-5, atol=1e-6 * a["magnitude"].max())
        assert err.max() / np.abs(za).max() < 1e-4


def test_workers_do_not_change_results() -> None:
    k = _kspace((4, 640, 368), seed=9)
    a = kspace_to_modalities(k, workers=1)
    b = kspace_to_modalities(k, workers=2)
    np.testing.assert_array_equal(a["magnitude"], b["magnitude"])
    np.testing.assert_array_equal(a["phase"], b["phase"])


# ---- multicoil ------------------------------------------------------------------------------


def test_multicoil_rss_and_phase() -> None:
    k = _kspace((2, 4, 640, 368), seed=11)
    out = kspace_to_modalities(k)
    assert out["magnitude"].shape == (2, 320, 320)
    imgs = _fastmri_image(k)  # (2, 4, 320, 320)
    rss = np.sqrt((np.abs(imgs) ** 2).sum(axis=1))
    np.testing.assert_allclose(out["magnitude"], rss, rtol=1e-4, atol=1e-6 * rss.max())
    assert np.abs(out["phase"]).max() <= np.pi
    # one slice (C, 640, W) with coils=True equals the volume's slice
    one = kspace_to_modalities(k[1], coils=True)
    np.testing.assert_array_equal(one["magnitude"], out["magnitude"][1])


def test_one_coil_phase_is_the_singlecoil_phase() -> None:
    k = _kspace((640, 368), seed=12)
    single = kspace_to_modalities(k)
    multi = kspace_to_modalities(k[None], coils=True)
    np.testing.assert_allclose(multi["magnitude"], single["magnitude"], rtol=1e-5)
    mask = single["magnitude"] > 1e-3 * single["magnitude"].max()
    dphi = np.angle(np.exp(1j * (multi["phase"] - single["phase"])))
    assert np.abs(dphi[mask]).max() < 1e-3


def test_multicoil_phase_removes_coil_phase() -> None:
    # the same object seen by coils with different constant phases: the combined phase is the
    # object's phase plus coil 0's, independent of the other coils' phases
    k = _kspace((640, 368), seed=13)
    obj = kspace_to_modalities(k)
    coil_phases = np.array([0.3, 1.7, -2.5], np.float32)
    mc = (k[None] * np.exp(1j * coil_phases)[:, None, None]).astype(np.complex64)
    out = kspace_to_modalities(mc, coils=True)
    np.testing.assert_allclose(out["magnitude"], np.sqrt(3) * obj["magnitude"], rtol=1e-4)
    mask = obj["magnitude"] > 1e-2 * obj["magnitude"].max()
    dphi = np.angle(np.exp(1j * (out["phase"] - obj["phase"] - 0.3)))
    assert np.abs(dphi[mask]).max() < 1e-3


# ---- bad inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, reason",
    [
        (np.ones((640, 368), np.float32), "not complex"),
        (torch.ones(640, 368), "not complex"),
        (np.ones((640,), np.complex64), "rank 1"),
        (np.ones((1, 2, 2, 640, 368), np.complex64), "rank 5"),
        (np.ones((0, 640, 368), np.complex64), "empty"),
        ([[1 + 1j]], "numpy array or torch tensor"),
    ],
)
def test_bad_input_raises(bad, reason: str) -> None:
    with pytest.raises(TransformError, match=reason):
        kspace_to_modalities(bad, where="file1.h5")


@given(
    row=st.integers(0, 63),
    col=st.integers(0, 39),
    value=st.sampled_from([np.nan, np.inf, -np.inf, complex(np.nan, 0), complex(0, np.inf)]),
)
@settings(max_examples=25, deadline=None)
def test_non_finite_anywhere_raises(row: int, col: int, value) -> None:
    k = _kspace((64, 40), seed=0)
    k[row, col] = value
    with pytest.raises(TransformError, match="1 NaN/Inf") as info:
        kspace_to_modalities(k, crop=(32, 32), where="file7.h5")
    assert info.value.where == "file7.h5"


def test_bad_crop() -> None:
    with pytest.raises(TransformError, match="crop"):
        kspace_to_modalities(_kspace((64, 40)), crop=(0, 32))


@given(
    rows=st.integers(2, 48),
    cols=st.integers(2, 48),
    crop_r=st.integers(1, 40),
    crop_c=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None)
def test_property_any_size_matches_reference(rows: int, cols: int, crop_r: int, crop_c: int, seed: int) -> None:
    k = _kspace((rows, cols), seed=seed)
    out = kspace_to_modalities(k, crop=(crop_r, crop_c))
    ref = _fastmri_image(k, (crop_r, crop_c))
    assert out["magnitude"].shape == (crop_r, crop_c)
    z = out["magnitude"] * np.exp(1j * out["phase"].astype(np.float64))
    assert np.abs(z - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1e-12)


# ---- undersampling --------------------------------------------------------------------------


@pytest.mark.parametrize("mask_type", ["random", "equispaced"])
@pytest.mark.parametrize("acc, cf", [(2, 0.16), (4, 0.08), (8, 0.04)])
def test_masks_keep_centre_and_reduce_columns(mask_type: str, acc: int, cf: float) -> None:
    width = 368
    counts = []
    for seed in range(20):
        mask = sample_mask(width, mask_type, acc, cf, seed=seed)
        n_low = round(width * cf)
        start = (width - n_low + 1) // 2  # fastMRI's centre block
        assert mask[start:start + n_low].all()
        counts.append(mask.sum())
    assert abs(np.mean(counts) / width - 1 / acc) < 0.25 / acc
    if mask_type == "equispaced":
        assert max(counts) - min(counts) <= 2  # deterministic count up to rounding


def test_mask_equals_fastmri_and_is_deterministic() -> None:
    ours = sample_mask(372, "random", 4, 0.08, seed=123)
    ref, _ = RandomMaskFunc([0.08], [4])((640, 372, 2), seed=123)
    assert np.array_equal(ours, ref.numpy().reshape(-1).astype(bool))
    ours = sample_mask(372, "equispaced", 8, 0.04, seed=7)
    ref, _ = EquispacedMaskFractionFunc([0.04], [8])((640, 372, 2), seed=7)
    assert np.array_equal(ours, ref.numpy().reshape(-1).astype(bool))
    assert np.array_equal(sample_mask(372, "random", 4, 0.08, seed=5), sample_mask(372, "random", 4, 0.08, seed=5))
    assert not np.array_equal(sample_mask(372, "random", 4, 0.08, seed=5), sample_mask(372, "random", 4, 0.08, seed=6))
    with pytest.raises(TransformError, match="mask type"):
        sample_mask(372, "radial")


def test_undersample_transform_zeroes_columns_and_seeds() -> None:
    k = _kspace((640, 368), seed=2)
    t = UndersampleKSpaced("kspace", "random", 4, 0.08, seed=0, mask_key="mask")
    d = t({"kspace": k})
    mask = d["mask"]
    assert np.array_equal(d["kspace"][:, ~mask], np.zeros((640, (~mask).sum()), np.complex64))
    assert np.array_equal(d["kspace"][:, mask], k[:, mask])
    # same seed -> same sequence of masks; study key -> same mask for every slice of a study
    t1 = UndersampleKSpaced("kspace", "random", [4, 8], [0.08, 0.04], seed=3, mask_key="mask")
    t2 = UndersampleKSpaced("kspace", "random", [4, 8], [0.08, 0.04], seed=3, mask_key="mask")
    seq1 = [t1({"kspace": k})["mask"] for _ in range(4)]
    seq2 = [t2({"kspace": k})["mask"] for _ in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(seq1, seq2))
    assert not all(np.array_equal(seq1[0], m) for m in seq1[1:])
    ts = UndersampleKSpaced("kspace", "random", 4, 0.08, seed=1, seed_key="study_id", mask_key="mask")
    m1 = ts({"kspace": k, "study_id": "file1", "slice": 0})["mask"]
    m2 = ts({"kspace": k, "study_id": "file1", "slice": 9})["mask"]
    m3 = ts({"kspace": k, "study_id": "file2", "slice": 0})["mask"]
    assert np.array_equal(m1, m2) and not np.array_equal(m1, m3)
    # torch k-space stays torch
    dt = t({"kspace": torch.from_numpy(k)})
    assert isinstance(dt["kspace"], torch.Tensor)
    with pytest.raises(TransformError, match="columns"):
        apply_column_mask(k, np.ones(10, bool))


# ---- image-domain helpers -------------------------------------------------------------------


def test_centre_crop_or_pad_convention() -> None:
    img = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    out = centre_crop_or_pad(img, (3, 3))
    np.testing.assert_array_equal(out, img[1:4, 2:5])  # fastMRI: start (n - m) // 2
    big = centre_crop_or_pad(img, (9, 10))
    assert big.shape == (9, 10)
    np.testing.assert_array_equal(big[2:7, 1:8], img)  # centre 2,3 -> 4,5
    assert big.sum() == img.sum()


def test_normalize_modes() -> None:
    m = np.arange(100, dtype=np.float32).reshape(10, 10)
    np.testing.assert_allclose(normalize_magnitude(m, "max"), m / 99)
    p = normalize_magnitude(m, "percentile", 90)
    np.testing.assert_allclose(p, m / 89)  # nearest rank: round(0.9 * 99) = 89 -> value 89
    z = normalize_magnitude(m, "zscore")
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-5
    assert not normalize_magnitude(np.zeros((4, 4), np.float32)).any()
    assert isinstance(normalize_magnitude(torch.from_numpy(m)), torch.Tensor)
    with pytest.raises(TransformError):
        normalize_magnitude(m, "bogus")


def test_resize_phase_through_complex() -> None:
    # a phase pattern alternating near +pi and -pi: the same direction on the unit circle.
    # Averaging the angles would give ~0; averaging the complex image keeps ~pi.
    ph = np.where(np.indices((8, 8)).sum(0) % 2 == 0, np.pi - 0.01, -np.pi + 0.01).astype(np.float32)
    mag = np.ones((8, 8), np.float32) * 2
    m2, p2 = resize_modalities(mag, ph, (4, 4), "area")
    np.testing.assert_allclose(m2, 2.0, rtol=1e-6)
    assert (np.abs(p2) > np.pi - 0.02).all()
    m3, p3 = resize_modalities(torch.from_numpy(mag)[None], None, (2, 2), "bilinear")
    assert isinstance(m3, torch.Tensor) and tuple(m3.shape) == (1, 2, 2) and p3 is None


# ---- MONAI dictionary transforms and the pipeline -------------------------------------------


def test_pipeline_round_trip_kspace() -> None:
    k = _kspace((640, 368), seed=21)
    sample = build_modality_pipeline(320)({"kspace": k, "study_id": "file9", "slice": 4})
    assert set(sample) == {"magnitude", "phase", "present", "study_id", "slice"}
    assert sample["present"] == {"magnitude": True, "phase": True}
    for key in ("magnitude", "phase"):
        assert isinstance(sample[key], torch.Tensor) and sample[key].dtype == torch.float32
        assert tuple(sample[key].shape) == (1, 320, 320)
    direct = kspace_to_modalities(k)
    np.testing.assert_array_equal(sample["phase"][0].numpy(), direct["phase"])
    expected = direct["magnitude"] / np.float32(np.sort(direct["magnitude"].ravel())[round(0.99 * (320 * 320 - 1))])
    np.testing.assert_allclose(sample["magnitude"][0].numpy(), expected, rtol=1e-6)


def test_pipeline_compact_and_undersampled() -> None:
    k = _kspace((4, 640, 372), seed=22)  # one multicoil slice
    pipe = build_modality_pipeline(96, undersample={"mask": "equispaced", "acceleration": 8, "center_fraction": 0.04}, seed=0)
    sample = pipe({"kspace": k})
    assert tuple(sample["magnitude"].shape) == (1, 96, 96) and tuple(sample["phase"].shape) == (1, 96, 96)
    assert float(sample["phase"].abs().max()) <= np.pi
    again = build_modality_pipeline(96, undersample={"mask": "equispaced", "acceleration": 8, "center_fraction": 0.04}, seed=0)({"kspace": k})
    assert torch.equal(sample["magnitude"], again["magnitude"])
    full = build_modality_pipeline(96)({"kspace": k})
    assert not torch.equal(sample["magnitude"], full["magnitude"])
    with pytest.raises(TransformError, match="unknown undersample"):
        build_modality_pipeline(96, undersample={"accel": 4})


def test_pipeline_image_domain_missing_phase() -> None:
    rng = np.random.default_rng(0)
    mag = rng.random((512, 448)).astype(np.float32) * 1000
    sample = build_modality_pipeline(128, image_mode="fit")({"magnitude": mag, "study_id": "dcm1", "slice": 0})
    assert "phase" not in sample and sample["present"] == {"magnitude": True, "phase": False}
    assert tuple(sample["magnitude"].shape) == (1, 128, 128)
    crop = build_modality_pipeline(320)({"magnitude": mag[:300, :300], "phase": np.zeros((300, 300), np.float32)})
    assert crop["present"] == {"magnitude": True, "phase": True}
    assert not crop["magnitude"][0, :10].any()  # zero pad, 10 rows each side
    with pytest.raises(TransformError, match="radians"):
        build_modality_pipeline(320)({"magnitude": mag, "phase": mag})
    with pytest.raises(TransformError, match="NaN"):
        build_modality_pipeline(320)({"magnitude": np.full((8, 8), np.nan, np.float32)})
    with pytest.raises(TransformError, match="no image modality"):
        build_modality_pipeline(320)({"study_id": "x"})


def test_transforms_compose_by_hand_and_missing_keys() -> None:
    k = _kspace((640, 356), seed=23)
    pipe = Compose([
        KSpaceToModalitiesd("kspace", drop_kspace=False),
        NormalizeMagnituded("magnitude", mode="max"),
        ResizeModalitiesd(("magnitude", "phase"), size=64),
        PackModalitiesd(("magnitude", "phase")),
    ])
    out = pipe({"kspace": k})
    assert "kspace" not in out and tuple(out["magnitude"].shape) == (1, 64, 64)
    assert float(out["magnitude"].max()) <= 1.0 + 1e-6
    with pytest.raises(Exception):
        KSpaceToModalitiesd("kspace")({"magnitude": np.ones((4, 4))})
    passthrough = KSpaceToModalitiesd("kspace", allow_missing_keys=True)({"magnitude": np.ones((4, 4))})
    assert "phase" not in passthrough
    img = ImageToModalitiesd(size=(32, 32))({"magnitude": torch.ones(1, 40, 20)})
    assert isinstance(img["magnitude"], torch.Tensor) and tuple(img["magnitude"].shape) == (32, 32)


def test_core_does_not_import_monai() -> None:
    # the functional core is used by readers and the CLI; MONAI takes seconds to import
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from i2m2_med.transforms.modalities import kspace_to_modalities\n"
        "kspace_to_modalities(np.ones((64, 40), np.complex64), crop=(32, 32))\n"
        "assert 'monai' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("workers", [1, 2])
def test_transform_leaves_the_kspace_as_it_was_and_repeats_exactly(workers):
    """The readout FFT runs in place on a per-thread copy: the caller's k-space is not touched,
    and a slice transformed again after others gives the same bytes."""
    vol = _kspace((4, 96, 72), seed=31)
    before = vol.copy()
    first = kspace_to_modalities(vol, (64, 64), workers=workers)
    np.testing.assert_array_equal(vol, before)
    one = kspace_to_modalities(vol[2], (64, 64), workers=workers)
    np.testing.assert_array_equal(vol, before)
    kspace_to_modalities(_kspace((96, 80), seed=32), (64, 64), workers=workers)  # another width
    again = kspace_to_modalities(vol[2], (64, 64), workers=workers)
    for key in ("magnitude", "phase"):
        np.testing.assert_array_equal(again[key], one[key])
        np.testing.assert_allclose(first[key][2], one[key], rtol=1e-5, atol=1e-5)
