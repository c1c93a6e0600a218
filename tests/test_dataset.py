"""The cohort (labels, tabular, split), the slice dataset (lazy reads, cache, pickling), collation
and class balance, on the tiny synthetic cohort written by the real generator."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from i2m2_med.data.cohort import data_fingerprint, load_cohort
from i2m2_med.data.dataset import SliceDataset, collate_samples
from i2m2_med.data.sampling import class_weights, sampler_weights
from i2m2_med.data.splits import SPLIT_SALT, read_splits_csv, split_by_hash
from i2m2_med.errors import AnnotationError, UsageError
from i2m2_med.heads import HEADS

REPO = Path(__file__).resolve().parents[1]


def _linked_copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """A copy of a cohort folder whose h5 files are hard links (cheap; a symbolic link to a file
    outside the folder would not be read) and other files copies."""
    dst.mkdir(parents=True)
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if rel.as_posix() in skip or path.is_dir():
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".h5":
            try:
                os.link(path, target)
            except OSError:  # another file system
                shutil.copyfile(path, target)
        else:
            shutil.copyfile(path, target)
    return dst


@pytest.fixture(scope="module")
def cohort(tiny_cohort: Path):
    return load_cohort(tiny_cohort)


# ---- split -------------------------------------------------------------------------------------


def test_split_by_hash_is_the_documented_sha256_ranking() -> None:
    subjects = [f"subject{i:03d}" for i in range(20)]
    split = split_by_hash(subjects, val_fraction=0.15, test_fraction=0.15)
    ranked = sorted(subjects, key=lambda s: hashlib.sha256((SPLIT_SALT + s).encode()).hexdigest())
    assert [split[s] for s in ranked] == ["test"] * 3 + ["val"] * 3 + ["train"] * 14
    # independent of the order of the input and of duplicates
    assert split_by_hash(list(reversed(subjects)) + subjects[:5], 0.15, 0.15) == split


def test_split_by_hash_small_cohorts_get_every_split() -> None:
    for n in (3, 4, 6):
        split = split_by_hash([f"s{i}" for i in range(n)], 0.15, 0.15)
        counts = pd.Series(split).value_counts()
        assert counts["test"] == 1 and counts["val"] == 1 and counts["train"] == n - 2
    assert set(split_by_hash(["a", "b"]).values()) == {"train"}
    with pytest.raises(UsageError):
        split_by_hash(["a", "b", "c"], val_fraction=0.6, test_fraction=0.5)


def test_split_does_not_depend_on_pythonhashseed(tmp_path: Path) -> None:
    code = (
        "import json, sys; sys.path.insert(0, %r); "
        "from i2m2_med.data.splits import split_by_hash; "
        "print(json.dumps(split_by_hash(['knee%%d' %% i for i in range(40)]), sort_keys=True))"
    ) % str(REPO)
    outputs = []
    for seed in ("1", "987654"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        outputs.append(res.stdout)
    assert outputs[0] == outputs[1]
    assert '"test"' in outputs[0] and '"val"' in outputs[0] and '"train"' in outputs[0]


def test_hash_split_keeps_subjects_together_and_is_used_without_splits_csv(tiny_cohort: Path, tmp_path: Path) -> None:
    copy = _linked_copy(tiny_cohort, tmp_path / "c", skip=("splits.csv",))
    c = load_cohort(copy)
    assert c.split_source == "sha256(subject)"
    expected = split_by_hash(c.subjects.values())
    assert c.split == {sid: expected[c.subjects[sid]] for sid in c.subjects}
    for subject in set(c.subjects.values()):
        assert len({c.split[s] for s, subj in c.subjects.items() if subj == subject}) == 1
    assert load_cohort(copy).split == c.split


def test_splits_csv_is_read_and_checked(tiny_cohort: Path, cohort, tmp_path: Path) -> None:
    table = read_splits_csv(tiny_cohort / "splits.csv")
    assert cohort.split_source.endswith("splits.csv")
    for study in cohort.studies:
        assert cohort.split[study.study_id] == table[study.study_id]
    assert {"train", "val", "test"} <= set(cohort.split.values())
    bad = tmp_path / "splits.csv"
    bad.write_text("study_id,split\nfile1,holdout\n")
    with pytest.raises(AnnotationError, match="holdout"):
        read_splits_csv(bad)


# ---- cohort ------------------------------------------------------------------------------------


def test_cohort_labels_tabular_manifest(tiny_cohort: Path, cohort) -> None:
    from i2m2_med.io.annotations import read_fastmri_plus, slice_labels

    assert len(cohort.studies) == 6
    table = read_fastmri_plus(tiny_cohort / "annotations" / "knee.csv", tiny_cohort / "annotations" / "knee_file_list.csv")
    for study in cohort.studies:
        lab = cohort.labels[study.study_id]
        assert lab.shape == (study.n_slices, 4) and lab.dtype == np.float32
        np.testing.assert_array_equal(lab > 0.5, slice_labels(table, study.source, study.n_slices))
        vec = cohort.tabular[study.study_id]
        assert vec.shape == (cohort.n_tabular,) and np.isfinite(vec).all()
    assert cohort.n_tabular > 0 and len(cohort.tabular_names) == cohort.n_tabular
    assert cohort.manifest is not None
    summary = cohort.summary()
    assert sum(summary[s]["studies"] for s in ("train", "val", "test")) == 6
    assert summary["train"]["slices"] == cohort.n_slices("train")


def test_in_view_from_the_episode_table(tiny_cohort: Path, cohort, tmp_path: Path) -> None:
    """Cohort.in_view marks every slice of every episode of a head; each true finding lies in
    view; a broken episode table is reported as a problem, not a crash."""
    import shutil

    import pandas as pd

    from i2m2_med.data.cohort import load_cohort, read_in_view

    assert cohort.in_view is not None and set(cohort.in_view) == {s.study_id for s in cohort.studies}
    ep = pd.read_csv(tiny_cohort / "episodes.csv")
    for study in cohort.studies:
        view = cohort.in_view[study.study_id]
        assert view.shape == (study.n_slices, 4) and view.dtype == bool
        expected = np.zeros_like(view)
        for e in ep[ep["study_id"] == study.study_id].itertuples():
            expected[e.first_slice:e.last_slice + 1, HEADS.index(e.head)] = True
        np.testing.assert_array_equal(view, expected)
        assert not ((cohort.labels[study.study_id] > 0.5) & ~view).any()
    copy = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, copy)
    first = cohort.studies[0]
    (copy / "episodes.csv").write_text(f"study_id,head,first_slice,last_slice\n{first.study_id},mtear,3,{first.n_slices}\n")
    with pytest.raises(AnnotationError, match=f"line 2: slices 3..{first.n_slices} outside study"):
        read_in_view(copy / "episodes.csv", {first.study_id: first.n_slices})
    broken = load_cohort(copy)
    assert broken.in_view is None
    assert any(p.endswith("episodes.csv") and "in-view metrics left out" in r for p, r in broken.problems)


def test_evidence_from_the_episode_table(tiny_cohort: Path, cohort, tmp_path: Path) -> None:
    """read_evidence gives each slice of an episode that episode's cue state, "" outside every
    episode, agreeing with the in-view mask (each of ACL, MTEAR and CART has one lesion class,
    whose episodes tile its slices); a table without the evidence column is refused."""
    import pandas as pd

    from i2m2_med.data.cohort import read_evidence
    from i2m2_med.synth.regimes import EVIDENCE_STATES

    n_slices = {s.study_id: s.n_slices for s in cohort.studies}
    states = read_evidence(tiny_cohort / "episodes.csv", n_slices)
    ep = pd.read_csv(tiny_cohort / "episodes.csv")
    for study in cohort.studies:
        st = states[study.study_id]
        np.testing.assert_array_equal(st != "", cohort.in_view[study.study_id])
        assert set(np.unique(st[st != ""])) <= set(EVIDENCE_STATES)
        for e in ep[(ep["study_id"] == study.study_id) & (ep["head"] != "abnormal")].itertuples():
            assert (st[e.first_slice:e.last_slice + 1, HEADS.index(e.head)] == e.evidence).all()
    first = cohort.studies[0]
    (tmp_path / "episodes.csv").write_text(f"study_id,head,first_slice,last_slice\n{first.study_id},mtear,0,1\n")
    with pytest.raises(AnnotationError, match="needs the columns .*evidence"):
        read_evidence(tmp_path / "episodes.csv", n_slices)


def test_unlabelled_studies_are_left_out_and_no_labels_is_an_error(tiny_cohort: Path, tmp_path: Path) -> None:
    copy = _linked_copy(tiny_cohort, tmp_path / "c")
    listing = copy / "annotations" / "knee_file_list.csv"
    names = [n for n in listing.read_text().split() if n]
    dropped = names[0]
    listing.write_text("".join(f"{n}\n" for n in names[1:]))
    knee = pd.read_csv(copy / "annotations" / "knee.csv")
    knee[knee["file"] != dropped].to_csv(copy / "annotations" / "knee.csv", index=False)
    c = load_cohort(copy)
    assert dropped not in c.labels and len(c.studies) == 5
    assert any("labels unknown" in reason or "not among" in reason for _, reason in c.problems)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no labelled study"):
        load_cohort(empty)
    with pytest.raises(UsageError, match="no such data folder"):
        load_cohort(tmp_path / "missing")


def test_data_fingerprint_tracks_labels(tiny_cohort: Path, cohort, tmp_path: Path) -> None:
    fp = data_fingerprint(cohort)
    assert len(fp) == 64 and fp == data_fingerprint(load_cohort(tiny_cohort))
    copy = _linked_copy(tiny_cohort, tmp_path / "c")
    assert data_fingerprint(load_cohort(copy)) == fp  # same names, sizes, labels, split
    knee = pd.read_csv(copy / "annotations" / "knee.csv")
    knee = knee.iloc[1:]  # one finding fewer
    knee.to_csv(copy / "annotations" / "knee.csv", index=False)
    assert data_fingerprint(load_cohort(copy)) != fp


# ---- slice dataset -----------------------------------------------------------------------------


def test_slice_dataset_samples_follow_the_contract(cohort) -> None:
    ds = SliceDataset(cohort, "train", image_size=32, cache_size=8)
    assert len(ds) == cohort.n_slices("train")
    sample = ds[3]
    study, k = ds.item(3)
    assert sample["magnitude"].shape == (1, 32, 32) and sample["magnitude"].dtype == torch.float32
    assert sample["phase"].shape == (1, 32, 32)
    assert float(sample["phase"].abs().max()) <= np.pi + 1e-5
    assert sample["tabular"].shape == (cohort.n_tabular,)
    np.testing.assert_array_equal(sample["labels"].numpy(), cohort.labels[study.study_id][k])
    assert sample["present"] == {"magnitude": True, "phase": True, "tabular": True}
    assert sample["study_id"] == study.study_id and sample["slice"] == k and sample["index"] == 3
    np.testing.assert_array_equal(ds.label_matrix()[3], sample["labels"].numpy())


def test_cache_is_bounded_and_hits(cohort) -> None:
    ds = SliceDataset(cohort, "train", image_size=32, cache_size=4)
    first = ds[0]
    again = ds[0]
    assert ds.cache_info()["hits"] == 1 and torch.equal(first["magnitude"], again["magnitude"])
    for i in range(10):
        ds[i]
    info = ds.cache_info()
    assert info["entries"] == 4 and info["capacity"] == 4
    off = SliceDataset(cohort, "train", image_size=32, cache_size=0)
    off[0], off[0]
    assert off.cache_info()["entries"] == 0 and off.cache_info()["misses"] == 2
    with pytest.raises(UsageError):
        SliceDataset(cohort, "train", cache_size=-1)


def test_dataset_pickles_and_workers_give_the_same_batches(cohort) -> None:
    ds = SliceDataset(cohort, "val", image_size=32, cache_size=16)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.cache_info()["entries"] == 0
    assert torch.equal(clone[0]["phase"], ds[0]["phase"])
    serial = next(iter(DataLoader(ds, batch_size=6, collate_fn=collate_samples)))
    parallel = next(iter(DataLoader(ds, batch_size=6, collate_fn=collate_samples, num_workers=2)))
    assert torch.equal(serial["magnitude"], parallel["magnitude"])
    assert serial["study_id"] == parallel["study_id"]


# ---- collation and class balance -----------------------------------------------------------------


def _sample(index: int, magnitude: bool = True, phase: bool = True) -> dict:
    s = {
        "tabular": torch.full((3,), float(index)),
        "labels": torch.tensor([1.0, 0.0, 0.0, 1.0]),
        "present": {"magnitude": magnitude, "phase": phase, "tabular": True},
        "study_id": f"s{index}",
        "slice": index,
        "index": index,
    }
    if magnitude:
        s["magnitude"] = torch.full((1, 4, 4), float(index + 1))
    if phase:
        s["phase"] = torch.full((1, 4, 4), 0.5)
    return s


def test_collate_keeps_the_presence_contract() -> None:
    batch = collate_samples([_sample(0), _sample(1, phase=False), _sample(2)])
    assert batch["magnitude"].shape == (3, 1, 4, 4) and batch["tabular"].shape == (3, 3)
    assert batch["present"]["phase"].tolist() == [True, False, True]
    assert batch["present"]["magnitude"].tolist() == [True, True, True]
    assert float(batch["phase"][1].abs().sum()) == 0.0  # placeholder, marked absent
    assert batch["study_id"] == ["s0", "s1", "s2"] and batch["slice"].tolist() == [0, 1, 2]
    none = collate_samples([_sample(0, phase=False), _sample(1, phase=False)])
    assert "phase" not in none and none["present"]["phase"].tolist() == [False, False]


def test_collated_mixed_batch_drops_the_term_for_absent_samples() -> None:
    from i2m2_med.config import load_config
    from i2m2_med.models import build_model

    torch.manual_seed(0)
    model = build_model("i2m2", load_config("cpu").with_updates(image_size=16, **{"model.image_expert.pool_size": 1}), 3).eval()
    samples = [_sample(0), _sample(1, phase=False)]
    for s in samples:
        for m in ("magnitude", "phase"):
            if m in s:
                s[m] = torch.randn(1, 16, 16)
    out = model(collate_samples(samples))
    assert out.mask["phase"].tolist() == [True, False] and out.mask["joint"].tolist() == [True, False]
    # sample 1 is the product of magnitude and tabular only
    expected = out.terms["magnitude"][1] + out.terms["tabular"][1]
    expected = expected - torch.logsumexp(expected, dim=-1, keepdim=True)
    torch.testing.assert_close(out.combined[1], expected)


def test_class_and_sampler_weights_by_hand() -> None:
    y = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=np.float32)
    w = class_weights(y)
    # acl: 3 negatives, 1 positive of N=4 -> 4/(2*3), 4/(2*1); mtear: no positive -> weight 1 for it
    torch.testing.assert_close(w[0], torch.tensor([4 / 6, 2.0]))
    torch.testing.assert_close(w[1], torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(w[2], torch.tensor([1.0, 1.0]))
    s = sampler_weights(y)
    assert s.shape == (4,) and abs(float(s.sum()) - 4.0) < 1e-9
    assert float(s[0]) > float(s[1])  # the rare ACL positive is drawn more often
    assert len(HEADS) == w.shape[0]


def test_hard_case_weights_give_the_hard_slices_their_share():
    from i2m2_med.data.sampling import hard_case_weights

    hard = np.array([True, False, False, False, True, False, False, False, False, False])
    w = hard_case_weights(hard, share=0.5).numpy()
    assert w.sum() == pytest.approx(10.0)
    assert w[hard].sum() / w.sum() == pytest.approx(0.5) and np.allclose(w[hard], 2.5)
    assert np.allclose(w[~hard], 5.0 / 8)
    assert np.allclose(hard_case_weights(np.zeros(4, bool)).numpy(), 1.0)  # a real cohort: uniform
    assert np.allclose(hard_case_weights(np.ones(3, bool)).numpy(), 1.0)
    with pytest.raises(UsageError):
        hard_case_weights(hard, share=1.0)
    # drawn by torch's sampler, the hard slices come up about half the time
    sampler = torch.utils.data.WeightedRandomSampler(hard_case_weights(hard), 20000, replacement=True,
                                                     generator=torch.Generator().manual_seed(0))
    drawn = np.fromiter(iter(sampler), dtype=np.int64)
    assert abs(hard[drawn].mean() - 0.5) < 0.02


def test_split_problems_name_an_empty_head_before_training(tiny_cohort):
    cohort = load_cohort(tiny_cohort)
    problems = cohort.split_problems()
    # 6 volumes: a split of one or two studies cannot hold both classes of every head
    assert problems and all(" split" in p for p in problems)
    test_ids = [s.study_id for s in cohort.studies_in("test")]
    for sid in test_ids:  # make the test split negative for ACL
        cohort.labels[sid][:, 0] = 0.0
    assert any(p.startswith("acl: no positive study in the test split") for p in cohort.split_problems())
    assert not any(p.startswith("acl:") for p in cohort.split_problems(heads=("mtear",)))
