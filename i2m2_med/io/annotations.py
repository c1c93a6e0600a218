"""fastMRI+ knee annotations: read labels per slice and boxes, and write files in the same format.

The fastMRI+ release has two files:

* ``knee.csv``, columns ``file, slice, study_level, x, y, width, height, label``: one row per
  box (a finding on one slice), plus study-level rows (``study_level = Yes``, empty box,
  slice 0) that remark on the whole examination -- in the knee release only ``artifact``, an
  image-quality remark that is not a finding and feeds no head;
* ``knee_file_list.csv``, no header: every volume the radiologists reviewed, one name a line.
  A listed volume with no finding row was reviewed and found normal (all heads negative).

Coordinate conventions (pixels of the 320 x 320 reconstruction, x = column, y = row):

* **flipped convention** -- what ``knee.csv`` stores. The images were flipped up/down before
  labelling, so ``y`` is the top row of the box *in the flipped image*.
* **image convention** -- what this project uses everywhere else (``Study.boxes``, the viewer):
  row 0 is the first row of the image as reconstructed from k-space (``kspace_to_modalities``)
  and as stored in ``reconstruction_esc``. ``y_image = 320 - y_flipped - height`` and, the
  conversion being its own inverse, ``y_flipped = 320 - y_image - height``. ``x`` and ``width``
  are the same in both.

The label -> head mapping is :func:`i2m2_med.heads.head_of_label` (one source of truth).

Labels at slice level (:func:`read_fastmri_plus`) are one row per (file, slice) that carries at
least one finding; a volume without any finding row (normal per the file list, or with only a
study-level remark) is one *volume row* with ``slice = VOLUME_ROW`` (-1) and every head False,
so that the table alone tells "reviewed and normal" (volume row) from "never reviewed" (file
absent). :func:`slice_labels` expands a file to its (S, 4) array; :func:`volume_labels` gives
the volume-level labels (any positive slice).
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from i2m2_med.atomic import atomic_path
from i2m2_med.errors import AnnotationError
from i2m2_med.heads import HEADS, head_of_label

#: Columns of knee.csv, in order.
FASTMRI_PLUS_COLUMNS: tuple[str, ...] = ("file", "slice", "study_level", "x", "y", "width", "height", "label")
#: Height (= width) of the reconstruction the boxes refer to, in pixels.
IMAGE_SIZE = 320
#: ``slice`` value of a volume row: a reviewed volume with no finding on any slice.
VOLUME_ROW = -1

_FILE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_BOX_COLUMNS = ("x", "y", "width", "height")


# ---- names ----------------------------------------------------------------------------------


def volume_name(file: str | os.PathLike) -> str:
    """The fastMRI+ key of a volume: ``file1000001`` for ``file1000001``, ``x/file1000001.h5``."""
    name = Path(str(file)).name
    for suffix in (".h5", ".hdf5"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_file_list(path: str | os.PathLike) -> list[str]:
    """The volumes of ``knee_file_list.csv`` (no header, one name a line), in file order.

    Blank lines and lines that are not a file name (the release's stray last line
    ``Knee data``: it contains a space) are skipped; a ``.h5`` suffix is dropped; repeated
    names are kept once. Raises :class:`AnnotationError` if the file cannot be read.
    """
    text = _read_text(path)
    names: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        entry = line.strip().strip(",").strip()
        if not entry or not _FILE_NAME.match(entry):
            continue
        name = volume_name(entry)
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


# ---- raw table ------------------------------------------------------------------------------


def _read_text(path: str | os.PathLike) -> str:
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(p, "no such file")
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise AnnotationError(p, "not a UTF-8 text file") from None
    except OSError as exc:
        raise AnnotationError(p, f"cannot read ({exc.strerror or exc})") from None


def _read_raw(csv_path: str | os.PathLike) -> pd.DataFrame:
    """knee.csv as validated columns: file str, slice int, study_level bool, box float (NaN for
    study-level rows), label (whitespace-normalised), head (str or None); line = CSV line number.
    Exact duplicate rows are dropped."""
    where = str(csv_path)
    text = _read_text(csv_path)
    try:
        raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise AnnotationError(where, f"not a CSV table ({' '.join(str(exc).split())})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in FASTMRI_PLUS_COLUMNS if c not in raw.columns]
    if missing:
        raise AnnotationError(
            where, f"missing column(s) {', '.join(missing)}; expected {','.join(FASTMRI_PLUS_COLUMNS)}"
        )
    raw = raw[list(FASTMRI_PLUS_COLUMNS)].copy()
    raw["line"] = np.arange(len(raw)) + 2  # header is line 1
    raw = raw.drop_duplicates(subset=list(FASTMRI_PLUS_COLUMNS), keep="first")

    files = raw["file"].str.strip()
    empty_file = files == ""
    if empty_file.any():
        raise AnnotationError(where, f"line {int(raw['line'][empty_file].iloc[0])}: empty file name")

    slices = pd.to_numeric(raw["slice"].str.strip(), errors="coerce")
    bad = slices.isna() | (slices != np.floor(slices)) | (slices < 0)
    if bad.any():
        i = bad.idxmax()
        raise AnnotationError(
            where, f"line {int(raw.at[i, 'line'])}: slice {raw.at[i, 'slice']!r} is not a non-negative integer"
        )

    level = raw["study_level"].str.strip().str.lower()
    unknown = ~level.isin(["yes", "no"])
    if unknown.any():
        i = unknown.idxmax()
        raise AnnotationError(
            where, f"line {int(raw.at[i, 'line'])}: study_level {raw.at[i, 'study_level']!r} is not Yes/No"
        )
    study_level = level == "yes"

    out = pd.DataFrame(
        {
            "file": files.map(volume_name),
            "slice": slices.astype(np.int64),
            "study_level": study_level,
        },
        index=raw.index,
    )
    for col in _BOX_COLUMNS:
        values = pd.to_numeric(raw[col].str.strip(), errors="coerce")
        bad = ~study_level & (values.isna() | ~np.isfinite(values))
        if bad.any():
            i = bad.idxmax()
            raise AnnotationError(
                where, f"line {int(raw.at[i, 'line'])}: {col} {raw.at[i, col]!r} is not a number"
            )
        out[col] = values.astype(np.float64)
    out["label"] = raw["label"].map(lambda s: " ".join(str(s).split()))
    no_label = out["label"] == ""
    if no_label.any():
        i = no_label.idxmax()
        raise AnnotationError(where, f"line {int(raw.at[i, 'line'])}: empty label")
    out["head"] = out["label"].map(head_of_label)
    out["line"] = raw["line"]
    # exact duplicates after label normalisation ("Joint Effusion" vs "Joint Effusion ")
    out = out.drop_duplicates(subset=["file", "slice", "study_level", *_BOX_COLUMNS, "label"], keep="first")
    return out.reset_index(drop=True)


# ---- labels per slice -----------------------------------------------------------------------


def read_fastmri_plus(
    csv_path: str | os.PathLike, file_list_path: str | os.PathLike | None = None
) -> pd.DataFrame:
    """Labels per (file, slice) from a fastMRI+ ``knee.csv``.

    Returns a DataFrame with columns ``file`` (str, e.g. ``file1000001``), ``slice`` (int64)
    and the boolean heads ``acl, mtear, cart, abnormal`` (order of :data:`HEADS`), sorted by
    file then slice, one row per (file, slice) carrying at least one finding. Study-level rows
    (``artifact``) are not findings and make no slice row. Every volume of the CSV without a
    finding row, and (when ``file_list_path`` is given) every listed volume without a finding
    row, is one volume row with ``slice = VOLUME_ROW`` (-1) and all heads False: reviewed and
    normal. A slice row is positive for a head when any of its findings maps to that head.

    Quirks of the release handled here: exact duplicate rows (dropped), a trailing space in a
    label (normalised), y = -1 and zero heights (irrelevant to labels; see
    :func:`read_fastmri_plus_boxes`), the stray ``Knee data`` line of the file list (skipped).

    Raises :class:`AnnotationError` (file + reason) on a missing file or column, a slice that is
    not a non-negative integer, a study_level that is not Yes/No, a non-numeric box of a finding
    row, an empty file name or label.
    """
    raw = _read_raw(csv_path)
    findings = raw[~raw["study_level"] & raw["head"].notna()]
    onehot = pd.DataFrame({h: (findings["head"] == h).to_numpy() for h in HEADS})
    onehot["file"] = findings["file"].to_numpy()
    onehot["slice"] = findings["slice"].to_numpy()
    slices = onehot.groupby(["file", "slice"], sort=True, as_index=False)[list(HEADS)].any()

    volumes = set(raw["file"])
    if file_list_path is not None:
        volumes.update(read_file_list(file_list_path))
    normal = sorted(volumes - set(slices["file"]))
    rows = pd.DataFrame({"file": normal, "slice": VOLUME_ROW})
    for h in HEADS:
        rows[h] = False
    df = pd.concat([slices, rows], ignore_index=True) if len(rows) else slices
    df = df.astype({"file": str, "slice": np.int64, **{h: bool for h in HEADS}})
    return df.sort_values(["file", "slice"], kind="stable").reset_index(drop=True)[["file", "slice", *HEADS]]


def annotated_files(df: pd.DataFrame) -> set[str]:
    """The volumes whose labels ``df`` knows (findings or reviewed-normal)."""
    return set(df["file"].astype(str))


def slice_labels(df: pd.DataFrame, file: str | os.PathLike, n_slices: int) -> np.ndarray:
    """(n_slices, 4) bool labels of one volume (order :data:`HEADS`); unlisted slices are False.

    ``file`` may be a name (``file1000001``) or a path (``.../file1000001.h5``). Raises
    :class:`AnnotationError` when the volume is not in ``df`` (labels unknown -- not the same
    as negative) or when an annotated slice lies outside ``0..n_slices-1``.
    """
    name = volume_name(file)
    rows = df[df["file"] == name]
    if rows.empty:
        raise AnnotationError(name, "not among the annotated volumes: labels unknown")
    out = np.zeros((int(n_slices), len(HEADS)), dtype=bool)
    rows = rows[rows["slice"] != VOLUME_ROW]
    if len(rows):
        idx = rows["slice"].to_numpy(dtype=np.int64)
        if idx.max() >= n_slices:
            raise AnnotationError(
                name, f"annotated slice {int(idx.max())} outside the volume's {int(n_slices)} slices"
            )
        out[idx] = rows[list(HEADS)].to_numpy(dtype=bool)
    return out


def volume_labels(df: pd.DataFrame, file_list: Iterable[str] | None = None) -> pd.DataFrame:
    """Volume-level labels (a head is positive when any slice is): index ``file``, bool columns
    :data:`HEADS`. Volumes of ``file_list`` that ``df`` lacks are added as all-negative (they were
    reviewed and found normal)."""
    vol = df.groupby("file", sort=True)[list(HEADS)].any()
    if file_list is not None:
        extra = sorted({volume_name(f) for f in file_list} - set(vol.index))
        if extra:
            vol = pd.concat([vol, pd.DataFrame(False, index=pd.Index(extra, name="file"), columns=list(HEADS))])
            vol = vol.sort_index()
    return vol.astype(bool)


# ---- boxes ----------------------------------------------------------------------------------


def flip_y(y: Any, height: Any, image_size: int = IMAGE_SIZE) -> Any:
    """Convert a box's top row between the flipped and the image convention (its own inverse):
    ``image_size - y - height``. Works on scalars and arrays."""
    return image_size - y - height


def read_fastmri_plus_boxes(csv_path: str | os.PathLike, image_size: int = IMAGE_SIZE) -> pd.DataFrame:
    """The boxes of a fastMRI+ ``knee.csv`` in the **image** convention (see module docstring).

    One row per finding box (study-level rows, which have no box, are left out; exact duplicate
    rows are dropped), columns: ``file`` str, ``slice`` int64, ``x, y, width, height`` int64
    pixels in the image convention, ``label`` (whitespace-normalised), ``head`` (str), ``note``
    (str, empty unless the box was repaired).

    Repairs, recorded in ``note``: a box reaching outside the image (the release's y = -1 rows)
    is clipped to ``0..image_size`` ("clipped"); a zero width or height is raised to 1 pixel
    ("zero height -> 1" / "zero width -> 1") so every finding keeps a drawable box.
    """
    raw = _read_raw(csv_path)
    boxes = raw[~raw["study_level"] & raw["head"].notna()].copy()
    x = boxes["x"].to_numpy()
    yf = boxes["y"].to_numpy()
    w = boxes["width"].to_numpy()
    h = boxes["height"].to_numpy()
    notes = [[] for _ in range(len(boxes))]
    # clip in the flipped convention, then convert
    x0, x1 = np.clip(x, 0, image_size), np.clip(x + w, 0, image_size)
    y0, y1 = np.clip(yf, 0, image_size), np.clip(yf + h, 0, image_size)
    clipped = (x0 != x) | (x1 != x + w) | (y0 != yf) | (y1 != yf + h)
    w2, h2 = x1 - x0, y1 - y0
    for i in np.flatnonzero(clipped):
        notes[i].append("clipped")
    for name, arr in (("width", w2), ("height", h2)):
        for i in np.flatnonzero(arr <= 0):
            notes[i].append(f"zero {name} -> 1")
    w2 = np.maximum(w2, 1)
    h2 = np.maximum(h2, 1)
    x0 = np.minimum(x0, image_size - w2)
    y0 = np.minimum(y0, image_size - h2)
    out = pd.DataFrame(
        {
            "file": boxes["file"].to_numpy(),
            "slice": boxes["slice"].to_numpy(dtype=np.int64),
            "x": np.rint(x0).astype(np.int64),
            "y": np.rint(flip_y(y0, h2, image_size)).astype(np.int64),
            "width": np.rint(w2).astype(np.int64),
            "height": np.rint(h2).astype(np.int64),
            "label": boxes["label"].to_numpy(),
            "head": boxes["head"].to_numpy(),
            "note": ["; ".join(n) for n in notes],
        }
    )
    return out.sort_values(["file", "slice"], kind="stable").reset_index(drop=True)


def study_level_notes(csv_path: str | os.PathLike) -> dict[str, list[str]]:
    """The study-level remarks of a fastMRI+ CSV (``artifact`` in the knee release): file -> labels."""
    raw = _read_raw(csv_path)
    out: dict[str, list[str]] = {}
    for file, label in raw.loc[raw["study_level"], ["file", "label"]].itertuples(index=False):
        out.setdefault(file, []).append(label)
    return out


# ---- writer ---------------------------------------------------------------------------------


def _format_number(value: Any, where: str, what: str) -> str:
    v = float(value)
    if not np.isfinite(v):
        raise AnnotationError(where, f"{what} {value!r} is not finite")
    return str(int(v)) if v == int(v) else f"{v:g}"


def write_fastmri_plus(
    rows: Iterable[Mapping[str, Any]],
    csv_path: str | os.PathLike,
    file_list_path: str | os.PathLike | None = None,
    files: Sequence[str] | None = None,
    *,
    image_size: int = IMAGE_SIZE,
    file_list_trailer: str | None = None,
) -> None:
    """Write annotations in the exact fastMRI+ knee format, atomically.

    ``rows``: dicts with ``file`` (name or path; written as the name without ``.h5``),
    ``slice`` (int), ``label`` (str, written as given -- a trailing space is kept) and either
    a box ``x, y, width, height`` in the **image** convention (pixels; converted to the flipped
    convention of the release: ``y_csv = image_size - y - height``) or ``study_level=True``
    (no box; written as ``Yes`` with empty box fields, slice as given, 0 by default).
    Rows are written in the order given, under the header
    ``file,slice,study_level,x,y,width,height,label`` with ``\\n`` line ends.

    ``file_list_path``: when given, ``knee_file_list.csv`` is written too (no header, one name a
    line): ``files`` (every reviewed volume, including the normal ones) or, if None, the files
    of ``rows`` in order of first appearance; ``file_list_trailer`` appends a last line such as
    the release's stray ``Knee data``.

    Raises :class:`AnnotationError` (naming ``csv_path``) on a row without file/slice/label, a
    non-integer or negative slice, or a box that is missing or not finite.
    """
    where = str(csv_path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FASTMRI_PLUS_COLUMNS)
    seen_files: list[str] = []
    seen: set[str] = set()
    for n, row in enumerate(rows):
        try:
            file = volume_name(row["file"])
            label = str(row["label"])
        except KeyError as exc:
            raise AnnotationError(where, f"row {n}: missing {exc.args[0]!r}") from None
        study = bool(row.get("study_level", False))
        try:
            s = float(row.get("slice", 0 if study else None))
        except (TypeError, ValueError):
            raise AnnotationError(where, f"row {n}: slice {row.get('slice')!r} is not an integer") from None
        if not np.isfinite(s) or s != int(s) or s < 0:
            raise AnnotationError(where, f"row {n}: slice {row.get('slice')!r} is not a non-negative integer")
        if study:
            writer.writerow([file, int(s), "Yes", "", "", "", "", label])
        else:
            try:
                x, y, w, h = (row[k] for k in _BOX_COLUMNS)
            except KeyError as exc:
                raise AnnotationError(where, f"row {n}: box field {exc.args[0]!r} missing") from None
            try:
                y_csv = flip_y(float(y), float(h), image_size)
                fields = [_format_number(v, where, f"row {n}: {k}") for k, v in zip(_BOX_COLUMNS, (x, y_csv, w, h))]
            except (TypeError, ValueError):
                raise AnnotationError(where, f"row {n}: box {x!r},{y!r},{w!r},{h!r} is not numeric") from None
            writer.writerow([file, int(s), "No", *fields, label])
        if file not in seen:
            seen.add(file)
            seen_files.append(file)
    listed = [volume_name(f) for f in files] if files is not None else seen_files
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    if file_list_path is not None:
        lines = list(listed) + ([file_list_trailer] if file_list_trailer else [])
        with atomic_path(file_list_path) as tmp:
            tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
