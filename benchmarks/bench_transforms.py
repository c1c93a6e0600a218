"""Modality pipeline: fastMRI k-space slices -> magnitude and phase (320 x 320), slices/s.

Every path reads the same synthetic fastMRI-shaped singlecoil volumes (written here in the
fastMRI layout with a real ISMRMRD header and a ``reconstruction_esc``, files hot in the page
cache) and produces magnitude and phase of the centred, cropped image:

* ``i2m2_slice``   -- this project, slice by slice as the dataset does it:
  ``read_fastmri_h5`` + ``Study.read_slice`` (a direct read of the slice's bytes, checked for
  NaN/Inf) + ``kspace_to_modalities``;
* ``i2m2_volume``  -- a volume-by-volume path built from this project's per-slice functions
  (``benchmarks/volume_modalities.py``; no production path reads volume by volume):
  ``read_fastmri_h5`` + ``iter_volume_modalities`` (blocks of 8 slices spread over one thread
  per core, the next block queued before a block is waited for; each thread reads its slice with
  a direct read into its own buffer and transforms it; the images are checked for NaN/Inf
  instead of the k-space);
* ``i2m2_no_io``   -- ``kspace_to_modalities`` on the preloaded volumes (no I/O);
* ``fastmri_slice``  -- ``fastmri.data.SliceDataset`` with a transform doing ``to_tensor`` +
  ``ifft2c`` + ``complex_center_crop`` + ``complex_abs`` / ``atan2``, iterated slice by slice;
* ``fastmri_volume`` -- the same fastMRI functions on a whole volume (one h5py read);
* ``monai_volume``   -- ``monai.apps.reconstruction.fastmri_reader.FastMRIReader`` (reads the
  whole file) + ``convert_to_tensor_complex`` + ``ifftn_centered_t`` + ``CenterSpatialCrop`` +
  ``complex_abs_t`` / ``atan2`` (MONAI's reader has no per-slice read);
* ``bare_volume`` / ``bare_slices`` -- the machine's limit: ``scipy.fft.ifft2(workers=-1)`` on
  the preloaded complex64 volumes, whole volumes or slice by slice, nothing else (no I/O, no
  centring, no crop, no magnitude or phase). The bare limit of a repetition is the faster of
  the two.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import scipy.fft as sfft
import torch

from benchmarks.common import Context, interleaved

TITLE = "Modality pipeline: k-space slice -> magnitude and phase (320 x 320)"

#: (slices, width) of the benchmark volumes; two of each width in the full run.
FULL_VOLUMES: tuple[tuple[int, int], ...] = ((35, 368), (35, 372), (35, 368), (35, 372))
QUICK_VOLUMES: tuple[tuple[int, int], ...] = ((2, 368), (2, 372))
READOUT = 640
CROP = (320, 320)
#: Profile stage of the volume path's read.
UNCHECKED_READ = "direct read of one slice, no NaN/Inf pass (the volume path's read)"


# ---- synthetic fastMRI-shaped volumes -------------------------------------------------------


def _phantom(rng: np.random.Generator, width: int) -> np.ndarray:
    """A complex (640, width) image: a few smooth ellipses of tissue-like intensity in the
    central 320 x 320, a smooth phase, zero elsewhere (the readout is 2x oversampled)."""
    yy, xx = np.mgrid[-1:1:complex(0, READOUT), -1:1:complex(0, width)]
    yy = yy * (READOUT / 320)
    xx = xx * (width / 320)
    img = np.zeros((READOUT, width), np.float32)
    for _ in range(6):
        cy, cx = rng.uniform(-0.5, 0.5, 2)
        ay, ax = rng.uniform(0.15, 0.6, 2)
        inside = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 < 1
        img[inside] += rng.uniform(0.2, 1.0)
    texture = rng.standard_normal((READOUT, width)).astype(np.float32) * 0.05
    img = np.clip(img + texture * (img > 0), 0, None)
    phase = 0.8 * xx + 0.5 * yy + 0.3 * xx * yy
    return (img * np.exp(1j * phase)).astype(np.complex64)


def write_volume(path: Path, n_slices: int, width: int, seed: int) -> np.ndarray:
    """Write a singlecoil volume (n_slices, 640, width) complex64 in the fastMRI layout and
    return its k-space. Columns outside the acquired band are zero, as in fastMRI."""
    from i2m2_med.io.fastmri_h5 import write_fastmri_h5
    from i2m2_med.io.ismrmrd import HeaderParams, build_header

    rng = np.random.default_rng(seed)
    pad = (width - 332) // 2  # acquired columns: the central 332 (fastMRI-like padding)
    kspace = np.empty((n_slices, READOUT, width), np.complex64)
    for s in range(n_slices):
        k = sfft.fftshift(sfft.fft2(sfft.ifftshift(_phantom(rng, width)), norm="ortho"))
        noise = rng.standard_normal((READOUT, width, 2)).astype(np.float32) * 2e-3
        k = k + noise.view(np.complex64)[..., 0]
        k[:, :pad] = 0
        k[:, width - pad:] = 0
        kspace[s] = k
    image = sfft.fftshift(sfft.ifft2(sfft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    r0, c0 = (READOUT - CROP[0]) // 2, (width - CROP[1]) // 2
    recon = np.abs(image[:, r0:r0 + CROP[0], c0:c0 + CROP[1]]).astype(np.float32)
    header = build_header(
        HeaderParams(encoded_y=width, n_slices=n_slices, enc_center=width // 2 - pad, enc_maximum=width - 2 * pad - 1)
    )
    write_fastmri_h5(
        path,
        kspace,
        header,
        reconstruction=recon,
        attrs={"acquisition": "CORPD_FBK", "max": float(recon.max()), "norm": float(np.linalg.norm(recon))},
    )
    return kspace


# ---- the paths ------------------------------------------------------------------------------


def _fastmri_image_parts(kspace: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    import fastmri
    from fastmri.data import transforms as T

    image = T.complex_center_crop(fastmri.ifft2c(T.to_tensor(kspace)), CROP)
    return fastmri.complex_abs(image), torch.atan2(image[..., 1], image[..., 0])


def _fastmri_slice_transform(kspace, mask, target, attrs, fname, slice_num):
    return _fastmri_image_parts(kspace)


def make_paths(files: list[Path], volumes: list[np.ndarray]) -> dict[str, Callable[[], Any]]:
    """The callables timed, each processing every slice of every file once."""
    from fastmri.data import SliceDataset
    from monai.apps.reconstruction.complex_utils import (
        complex_abs_t,
        convert_to_tensor_complex,
    )
    from monai.apps.reconstruction.fastmri_reader import FastMRIReader
    from monai.networks.blocks.fft_utils_t import ifftn_centered_t
    from monai.transforms import CenterSpatialCrop

    from benchmarks.volume_modalities import iter_volume_modalities
    from i2m2_med.io.fastmri_h5 import read_fastmri_h5
    from i2m2_med.transforms.modalities import kspace_to_modalities

    root = files[0].parent
    dataset = SliceDataset(root, challenge="singlecoil", transform=_fastmri_slice_transform)
    reader = FastMRIReader()
    crop = CenterSpatialCrop(roi_size=(CROP[0], CROP[1], -1))

    def i2m2_slice() -> None:
        for path in files:
            study = read_fastmri_h5(path)
            for i in range(study.n_slices):
                kspace_to_modalities(study.read_slice(i)["kspace"])
            study.slice_reader.close()

    def i2m2_volume() -> None:
        for path in files:
            study = read_fastmri_h5(path)
            for _ in iter_volume_modalities(study):
                pass
            study.slice_reader.close()

    def i2m2_no_io() -> None:
        for k in volumes:
            kspace_to_modalities(k)

    def fastmri_slice() -> None:
        for i in range(len(dataset)):
            dataset[i]

    def fastmri_volume() -> None:
        for path in files:
            with h5py.File(path, "r") as f:
                k = f["kspace"][()]
            _fastmri_image_parts(k)

    def monai_volume() -> None:
        for path in files:
            data, _ = reader.get_data(reader.read(path))
            ksp = convert_to_tensor_complex(data)              # (S, 640, W, 2) float32
            image = ifftn_centered_t(ksp, spatial_dims=2, is_complex=True)
            image = crop(image)                                # channel = slice
            complex_abs_t(image)
            torch.atan2(image[..., 1], image[..., 0])

    def bare_volume() -> None:
        for k in volumes:
            sfft.ifft2(k, workers=-1)

    def bare_slices() -> None:
        for k in volumes:
            for s in range(k.shape[0]):
                sfft.ifft2(k[s], workers=-1)

    return {
        "bare_volume": bare_volume,
        "bare_slices": bare_slices,
        "i2m2_no_io": i2m2_no_io,
        "i2m2_volume": i2m2_volume,
        "i2m2_slice": i2m2_slice,
        "fastmri_volume": fastmri_volume,
        "fastmri_slice": fastmri_slice,
        "monai_volume": monai_volume,
    }


LABELS = {
    "bare_volume": "bare limit: scipy.fft.ifft2(workers=-1), whole volumes, no I/O",
    "bare_slices": "bare limit: scipy.fft.ifft2(workers=-1), slice by slice, no I/O",
    "i2m2_no_io": "i2m2-med kspace_to_modalities, whole volumes, no I/O",
    "i2m2_volume": "volume path of i2m2-med's per-slice functions (a direct read and the transform of a slice per thread), volume by volume",
    "i2m2_slice": "i2m2-med read_fastmri_h5 + read_slice + kspace_to_modalities, slice by slice",
    "fastmri_volume": "fastmri to_tensor + ifft2c + complex_center_crop + abs/angle, whole volumes",
    "fastmri_slice": "fastmri SliceDataset + the same transform, slice by slice",
    "monai_volume": "MONAI FastMRIReader + ifftn_centered_t + CenterSpatialCrop + abs/angle",
}


def check_same_numbers(files: list[Path]) -> float:
    """Largest relative difference |z_i2m2 - z_fastmri| / max|z_fastmri| over the first file."""
    from i2m2_med.transforms.modalities import kspace_to_modalities

    with h5py.File(files[0], "r") as f:
        k = f["kspace"][()]
    ours = kspace_to_modalities(k)
    mag, phase = _fastmri_image_parts(k)
    z_ours = ours["magnitude"] * np.exp(1j * ours["phase"].astype(np.float64))
    z_ref = mag.numpy() * np.exp(1j * phase.numpy().astype(np.float64))
    return float(np.abs(z_ours - z_ref).max() / np.abs(z_ref).max())


def stage_profile(path: Path, repeats: int) -> dict[str, float]:
    """Single-thread CPU milliseconds per slice of each stage of the project's transform (and of
    the bare 2-D FFT and the h5 read), the 20th percentile over ``repeats`` x slices: where the
    time goes."""
    import time

    from i2m2_med.io.fastmri_h5 import FastMRISliceReader
    from i2m2_med.transforms.modalities import kspace_to_modalities

    reader = FastMRISliceReader(path)
    with h5py.File(path, "r") as f:
        ds = f["kspace"]
        n = ds.shape[0]
        slices = [ds[i] for i in range(n)]
        buf = np.empty(ds.shape[1:], np.complex64)
        times: dict[str, list[float]] = {}

        def clock(name: str, fn: Callable[[], Any]) -> Any:
            start = time.thread_time()
            out = fn()
            times.setdefault(name, []).append(time.thread_time() - start)
            return out

        sign = np.ones((160, 160), np.float32)
        for _ in range(max(1, repeats)):
            for i, k in enumerate(slices):
                w = k.shape[-1]
                clock("h5py read of one slice", lambda: ds.read_direct(buf, np.s_[i], np.s_[:]))
                clock("direct read of one slice (read_block)", lambda: reader.read_block(i, i + 1, out=buf[None]))
                clock(UNCHECKED_READ,
                      lambda: reader.read_block(i, i + 1, out=buf[None], check_finite=False))
                clock("bare: scipy ifft2, one thread", lambda: sfft.ifft2(k, workers=1))
                clock("i2m2: kspace_to_modalities, one thread", lambda: kspace_to_modalities(k, workers=1))
                y = clock("  readout FFT (640 x W)", lambda: sfft.ifft(k, axis=0, workers=1, norm="ortho"))
                zs = clock("  FFT along W of the 320 kept rows", lambda: [
                    sfft.ifft(y[a:b], axis=1, workers=1, norm="ortho", overwrite_x=True) for a, b in ((480, 640), (0, 160))])
                mag = np.empty((320, 320), np.float32)
                re = np.empty((320, 320), np.float32)
                im = np.empty((320, 320), np.float32)

                def post() -> None:
                    for r, z in zip((0, 160), zs):
                        for cd, (a, b) in zip((0, 160), ((w - 160, w), (0, 160))):
                            zb = z[:, a:b]
                            np.abs(zb, out=mag[r:r + 160, cd:cd + 160])
                            np.multiply(zb.real, sign, out=re[r:r + 160, cd:cd + 160])
                            np.multiply(zb.imag, sign, out=im[r:r + 160, cd:cd + 160])

                clock("  magnitude + centring sign + real/imag split", post)
                tre, tim = torch.from_numpy(re), torch.from_numpy(im)
                clock("  phase: float32 atan2 (torch)", lambda: [
                    torch.atan2(tim[r:r + 80], tre[r:r + 80], out=tre[r:r + 80]) for r in range(0, 320, 80)])
    reader.close()
    return {name: float(np.percentile(v, 20) * 1e3) for name, v in times.items()}


def run(ctx: Context) -> dict[str, Any]:
    shapes = QUICK_VOLUMES if ctx.quick else FULL_VOLUMES
    folder = ctx.workdir / "transforms"
    folder.mkdir(parents=True, exist_ok=True)
    files, volumes = [], []
    for n, (slices, width) in enumerate(shapes):
        path = folder / f"file{9000000 + n}.h5"
        ctx.log(f"writing {path.name} ({slices}, {READOUT}, {width})")
        volumes.append(write_volume(path, slices, width, seed=ctx.seed + n))
        files.append(path)
    total = sum(s for s, _ in shapes)
    max_rel = check_same_numbers(files)
    paths = make_paths(files, volumes)
    ctx.log(f"timing {len(paths)} paths x {ctx.repeats} repeats on {total} slices")
    profile = stage_profile(files[0], 1 if ctx.quick else 3)
    seconds, cpu_seconds = interleaved(paths, ctx.repeats, warmup=1)
    rate = {name: [total / t for t in ts] for name, ts in seconds.items()}
    cpu_rate = {name: [total / max(t, 1e-9) for t in ts] for name, ts in cpu_seconds.items()}
    bare = [max(a, b) for a, b in zip(rate["bare_volume"], rate["bare_slices"])]
    fm_best = [max(a, b) for a, b in zip(rate["fastmri_volume"], rate["fastmri_slice"])]
    ours_best = [max(a, b) for a, b in zip(rate["i2m2_volume"], rate["i2m2_slice"])]

    def ratio(num: list[float], den: list[float]) -> list[float]:
        return [a / b for a, b in zip(num, den)]

    figures = [{"key": k, "label": LABELS[k], "unit": "slices/s", "values": v} for k, v in rate.items()]
    figures.append({"key": "bare_limit", "label": "bare limit (faster of the two bare figures, per repetition)", "unit": "slices/s", "values": bare})
    figures += [
        {"key": f"{k}_cpu", "label": f"{k}: slices per CPU-second (all threads)", "unit": "slices/CPU-s", "values": v}
        for k, v in cpu_rate.items()
    ]
    bare_cpu = [max(a, b) for a, b in zip(cpu_rate["bare_volume"], cpu_rate["bare_slices"])]
    ratios = [
        {"key": "i2m2_volume_vs_bare", "label": "i2m2 volume path (a read and the transform of a slice per thread) / bare limit", "values": ratio(rate["i2m2_volume"], bare), "target": 0.8},
        {"key": "i2m2_slice_vs_bare", "label": "i2m2 slice path (dataset reads) / bare limit", "values": ratio(rate["i2m2_slice"], bare), "target": 0.8},
        {"key": "i2m2_no_io_vs_bare", "label": "i2m2 transform alone (no I/O) / bare limit", "values": ratio(rate["i2m2_no_io"], bare), "target": None},
        {"key": "i2m2_best_vs_fastmri_best", "label": "i2m2 faster path / fastmri faster path", "values": ratio(ours_best, fm_best), "target": 2.0},
        {"key": "fastmri_slice_vs_bare", "label": "fastmri slice path / bare limit", "values": ratio(rate["fastmri_slice"], bare), "target": None},
        {"key": "fastmri_volume_vs_bare", "label": "fastmri volume path / bare limit", "values": ratio(rate["fastmri_volume"], bare), "target": None},
        {"key": "monai_volume_vs_bare", "label": "MONAI volume path / bare limit", "values": ratio(rate["monai_volume"], bare), "target": None},
        {"key": "i2m2_no_io_cpu_vs_bare_cpu", "label": "CPU efficiency: i2m2 transform alone / bare FFT (slices per CPU-second)", "values": ratio(cpu_rate["i2m2_no_io"], bare_cpu), "target": None},
        {"key": "i2m2_volume_cpu_vs_bare_cpu", "label": "CPU efficiency: i2m2 volume path / bare FFT (slices per CPU-second)", "values": ratio(cpu_rate["i2m2_volume"], bare_cpu), "target": None},
    ]
    return {
        "description": (__doc__ or "").split("\n\n", 1)[1].strip(),
        "params": {
            "volumes": [[s, READOUT, w] for s, w in shapes],
            "slices_per_repetition": total,
            "crop": list(CROP),
            "dtype": "complex64",
            "threads": int(os.cpu_count() or 1),
            "torch_threads": torch.get_num_threads(),
            "max_relative_difference_i2m2_vs_fastmri": max_rel,
            "stage_cpu_ms_per_slice": {k: round(v, 3) for k, v in profile.items()},
        },
        "figures": figures,
        "ratios": ratios,
        "notes": [
            "Where the time goes (single-thread CPU ms per slice, 20th percentile, "
            f"W = {shapes[0][1]}): " + "; ".join(f"{k.strip()} {v:.2f}" for k, v in profile.items()) + ". "
            "The project's transform does strictly more than the bare limit -- centring, crop, "
            "magnitude and a float32 arctangent for the phase -- with fewer FFT operations (the "
            "readout transform first, then the W transform of the 320 kept rows only); its "
            "extra cost is the magnitude / phase stage, and the I/O paths add the h5 read.",
            "Wall-clock slices/s is what a user gets; slices per CPU-second (process CPU time, all "
            "threads) is the work each path needs per slice. On an idle machine the wall figure also "
            "shows how well a path uses the cores; on a loaded machine (see the load average above) "
            "threads wait for cores and the wall ratios move towards the CPU-efficiency ratios.",
            "Cores in use (median wall slices/s over median slices per CPU-second): "
            + ", ".join(f"{k} {statistics.median(rate[k]) / statistics.median(cpu_rate[k]):.2f}"
                        for k in ("bare_slices", "bare_volume", "i2m2_no_io", "i2m2_volume", "i2m2_slice"))
            + ". Once the cores are full, a path's speed is its CPU cost per slice: "
            f"{1e3 / statistics.median(bare_cpu):.2f} ms for the bare FFT, "
            f"{1e3 / statistics.median(cpu_rate['i2m2_no_io']):.2f} ms for the project's transform alone and "
            f"{1e3 / statistics.median(cpu_rate['i2m2_volume']):.2f} ms for its volume path with the read "
            "(all threads, CPU time per slice). The direct read "
            f"({profile.get('direct read of one slice (read_block)', float('nan')):.2f} ms per slice on one core "
            "with the reader's NaN/Inf pass, "
            f"{profile.get(UNCHECKED_READ, float('nan')):.2f} ms "
            "without it, as the volume path reads and then checks the image instead; "
            f"{profile.get('h5py read of one slice', float('nan')):.2f} ms through h5py) runs without "
            "the interpreter lock, so one thread's read runs beside the other thread's transform. The "
            "slice-by-slice path transforms one slice per call, each FFT call too small to keep two threads "
            "busy; its parallelism in training and diagnosis comes from loader workers reading ahead.",
            f"Same numbers: the largest difference of the complex image (magnitude, phase) between "
            f"i2m2-med and fastmri is {max_rel:.1e} of the image maximum.",
        ],
    }
