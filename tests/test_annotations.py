"""fastMRI+ annotations: the real release's counts and quirks, the writer round trip, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from i2m2_med.errors import AnnotationError
from i2m2_med.heads import HEADS
from i2m2_med.io.annotations import (
    VOLUME_ROW,
    annotated_files,
    flip_y,
    read_fastmri_plus,
    read_fastmri_plus_boxes,
    read_file_list,
    slice_labels,
    study_level_notes,
    volume_labels,
    write_fastmri_plus,
)

HEADER = "file,slice,study_level,x,y,width,height,label\n"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---- the real release -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(shared_data: Path) -> tuple[Path, Path]:
    d = shared_data / "fastmri_plus"
    return d / "knee.csv", d / "knee_file_list.csv"


@pytest.fixture(scope="module")
def real_labels(real: tuple[Path, Path]) -> pd.DataFrame:
    return read_fastmri_plus(*real)


def test_real_positive_slice_counts(real_labels: pd.DataFrame) -> None:
    slices = real_labels[real_labels["slice"] != VOLUME_ROW]
    assert int(slices["acl"].sum()) == 1439
    assert int(slices["mtear"].sum()) == 4858
    assert int(slices["cart"].sum()) == 2986
    assert not slices.duplicated(["file", "slice"]).any()
    assert list(real_labels.columns) == ["file", "slice", *HEADS]
    assert real_labels[list(HEADS)].dtypes.eq(bool).all()


def test_real_volume_labels(real: tuple[Path, Path], real_labels: pd.DataFrame) -> None:
    files = read_file_list(real[1])
    assert len(files) == 1172 and "Knee data" not in files and files[0] == "file1000000"
    vol = volume_labels(real_labels)
    assert len(vol) == 1172  # every listed volume is known
    assert int(vol["acl"].sum()) == 254
    assert int(vol["mtear"].sum()) == 663
    assert int(vol["cart"].sum()) == 594
    # volumes of the list without a finding row: reviewed and normal (198 per the release notes)
    csv_files = set(pd.read_csv(real[0], dtype=str)["file"])
    normal = set(files) - csv_files
    assert len(normal) == 198
    assert not vol.loc[sorted(normal)].any(axis=None)
    # volume row for each file without a finding slice (the 198 + the artifact-only volumes)
    assert (real_labels["slice"] == VOLUME_ROW).sum() == len(set(vol.index) - set(real_labels.loc[real_labels["slice"] >= 0, "file"]))


def test_real_slice_labels_by_hand(real_labels: pd.DataFrame) -> None:
    # knee.csv rows of file1000001 (read by hand): cartilage 14,15,18-23,27,28; meniscus tear
    # 23-26; bone edema 15,16,23; MCL sprain 20,21; periarticular cysts 34,35 (21 rows)
    lab = slice_labels(real_labels, "some/dir/file1000001.h5", 38)
    assert lab.shape == (38, 4) and lab.dtype == bool
    cart = {14, 15, 18, 19, 20, 21, 22, 23, 27, 28}
    mtear = {23, 24, 25, 26}
    abnormal = {15, 16, 23, 20, 21, 34, 35}
    for s in range(38):
        assert lab[s].tolist() == [False, s in mtear, s in cart, s in abnormal], s


def test_real_quirks(real: tuple[Path, Path]) -> None:
    boxes = read_fastmri_plus_boxes(real[0])
    assert len(boxes) == 16167 - 13 - 5  # study-level rows and exact duplicates gone
    assert (boxes["label"] == "Joint Effusion").sum() == 1311
    assert not boxes["label"].str.endswith(" ").any()
    assert boxes["note"].str.contains("clipped").sum() == 6  # the six y = -1 rows
    assert boxes["note"].str.contains("zero height").sum() == 1
    assert (boxes[["x", "y"]] >= 0).all(axis=None)
    assert ((boxes["x"] + boxes["width"]) <= 320).all() and ((boxes["y"] + boxes["height"]) <= 320).all()
    assert (boxes[["width", "height"]] >= 1).all(axis=None)
    # first row of the file, by hand: file1000001,14,No,90,173,35,10 -> y_image = 320-173-10
    first = boxes[boxes["file"] == "file1000001"].iloc[0]
    assert (first["file"], first["slice"], first["x"], first["y"], first["width"], first["height"]) == (
        "file1000001", 14, 90, 137, 35, 10)
    assert first["head"] == "cart"
    notes = study_level_notes(real[0])
    assert len(notes) == 13 and all(v == ["artifact"] for v in notes.values())


# ---- synthetic files: conversions, quirks, errors -------------------------------------------


def test_flip_is_its_own_inverse() -> None:
    y, h = np.array([0, 10, 300, -1]), np.array([5, 20, 20, 12])
    assert np.array_equal(flip_y(flip_y(y, h), h), y)
    assert flip_y(173, 10) == 137


def test_quirks_on_a_small_file(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "k.csv",
        HEADER
        + "file1,3,No,10,-1,20,12,Joint Effusion \n"
        + "file1,3,No,10,-1,20,12,Joint Effusion \n"   # exact duplicate
        + "file1,3,No,10,-1,20,12,Joint Effusion\n"    # duplicate after label normalisation
        + "file1,4,No,50,100,8,0,Meniscus Tear\n"       # zero height
        + "file1,4,No,60,90,30,10,Ligament - ACL Low Grade sprain\n"
        + "file2,0,Yes,,,,,artifact\n"                    # study level only
        + "file3,7,No,1,2,3,4,Cartilage - Full Thickness loss/defect\n",
    )
    flist = _write(tmp_path / "list.csv", "file1\nfile2\nfile3\nfile4\nKnee data\n")
    df = read_fastmri_plus(csv, flist)
    assert df[["file", "slice"]].values.tolist() == [
        ["file1", 3], ["file1", 4], ["file2", VOLUME_ROW], ["file3", 7], ["file4", VOLUME_ROW]]
    assert df.loc[0, list(HEADS)].tolist() == [False, False, False, True]
    assert df.loc[1, list(HEADS)].tolist() == [True, True, False, False]
    assert df.loc[3, list(HEADS)].tolist() == [False, False, True, False]
    assert annotated_files(df) == {"file1", "file2", "file3", "file4"}
    lab = slice_labels(df, "file4", 5)
    assert lab.shape == (5, 4) and not lab.any()
    with pytest.raises(AnnotationError, match="labels unknown"):
        slice_labels(df, "file9", 5)
    with pytest.raises(AnnotationError, match="outside"):
        slice_labels(df, "file3", 7)
    vol = volume_labels(df, ["file5"])
    assert vol.loc["file1"].tolist() == [True, True, False, True]
    assert not vol.loc[["file2", "file4", "file5"]].any(axis=None)

    boxes = read_fastmri_plus_boxes(csv)
    assert len(boxes) == 4
    eff = boxes.iloc[0]
    # y = -1, height 12 in the flipped image: clipped to rows 0..10 (height 11), then
    # y_image = 320 - 0 - 11 = 309
    assert (eff["y"], eff["height"], eff["note"]) == (309, 11, "clipped")
    tear = boxes[boxes["label"] == "Meniscus Tear"].iloc[0]
    assert (tear["y"], tear["height"], tear["note"]) == (320 - 100 - 1, 1, "zero height -> 1")


@pytest.mark.parametrize(
    "text, reason",
    [
        ("file,slice,x,y,width,height,label\nfile1,1,1,2,3,4,ACL\n", "missing column"),
        (HEADER + "file1,abc,No,1,2,3,4,Meniscus Tear\n", "line 2: slice 'abc'"),
        (HEADER + "file1,2.5,No,1,2,3,4,Meniscus Tear\n", "not a non-negative integer"),
        (HEADER + "file1,2,Maybe,1,2,3,4,Meniscus Tear\n", "study_level"),
        (HEADER + "file1,2,No,1,,3,4,Meniscus Tear\n", "y '' is not a number"),
        (HEADER + ",2,No,1,2,3,4,Meniscus Tear\n", "empty file name"),
        (HEADER + "file1,2,No,1,2,3,4, \n", "line 2: empty label"),
        ("", "not a CSV table"),
    ],
)
def test_malformed_csv_raises_with_file_and_reason(tmp_path: Path, text: str, reason: str) -> None:
    csv = _write(tmp_path / "bad.csv", text)
    with pytest.raises(AnnotationError, match=reason) as info:
        read_fastmri_plus(csv)
    assert info.value.where == str(csv)
    assert "\n" not in info.value.one_line()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="no such file"):
        read_fastmri_plus(tmp_path / "absent.csv")


# ---- writer ---------------------------------------------------------------------------------


def test_writer_exact_format_and_round_trip(tmp_path: Path) -> None:
    rows = [
        {"file": "vol/fileA.h5", "slice": 5, "x": 10, "y": 200, "width": 30, "height": 12, "label": "Meniscus Tear"},
        {"file": "fileA", "slice": 6, "x": 11, "y": 0, "width": 8, "height": 320, "label": "Joint Effusion "},
        {"file": "fileB", "study_level": True, "label": "artifact"},
        {"file": "fileC", "slice": 2, "x": 1, "y": 2, "width": 3, "height": 4, "label": "Ligament - ACL High Grade Sprain"},
    ]
    csv, flist = tmp_path / "knee.csv", tmp_path / "knee_file_list.csv"
    write_fastmri_plus(rows, csv, flist, ["fileA", "fileB", "fileC", "fileD"], file_list_trailer="Knee data")
    assert csv.read_text() == (
        HEADER
        + "fileA,5,No,10,108,30,12,Meniscus Tear\n"      # 320 - 200 - 12
        + "fileA,6,No,11,0,8,320,Joint Effusion \n"
        + "fileB,0,Yes,,,,,artifact\n"
        + "fileC,2,No,1,314,3,4,Ligament - ACL High Grade Sprain\n"
    )
    assert flist.read_text() == "fileA\nfileB\nfileC\nfileD\nKnee data\n"
    assert not list(tmp_path.glob(".*part"))  # no temporary left behind

    boxes = read_fastmri_plus_boxes(csv)
    back = boxes[["file", "slice", "x", "y", "width", "height"]].values.tolist()
    assert back == [["fileA", 5, 10, 200, 30, 12], ["fileA", 6, 11, 0, 8, 320], ["fileC", 2, 1, 2, 3, 4]]
    df = read_fastmri_plus(csv, flist)
    vol = volume_labels(df)
    assert vol.loc["fileA"].tolist() == [False, True, False, True]
    assert vol.loc["fileC"].tolist() == [True, False, False, False]
    assert not vol.loc[["fileB", "fileD"]].any(axis=None)


def test_writer_rejects_bad_rows_and_leaves_no_file(tmp_path: Path) -> None:
    csv = tmp_path / "knee.csv"
    with pytest.raises(AnnotationError, match="box field 'height' missing"):
        write_fastmri_plus([{"file": "a", "slice": 1, "x": 1, "y": 2, "width": 3, "label": "x"}], csv)
    with pytest.raises(AnnotationError, match="slice"):
        write_fastmri_plus([{"file": "a", "slice": -1, "x": 1, "y": 2, "width": 3, "height": 1, "label": "x"}], csv)
    with pytest.raises(AnnotationError, match="not finite"):
        write_fastmri_plus([{"file": "a", "slice": 1, "x": float("nan"), "y": 2, "width": 3, "height": 1, "label": "x"}], csv)
    assert not csv.exists() and not list(tmp_path.iterdir())
