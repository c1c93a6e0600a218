"""Bootstrap confidence intervals of AUROC (one head, or the mean over heads) by resampling whole
clusters (studies or subjects) with replacement; every random choice takes ``seed``.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np

from i2m2_med.errors import UndefinedMetricError, UsageError
from i2m2_med.metrics.ranking import _binary, _check_alpha, _scores, auroc

_BOOT_CHUNK_ELEMENTS = 4_000_000  # replicate-by-row weight matrices are built in chunks of this size


class BootstrapCI(NamedTuple):
    """A point estimate with a percentile bootstrap interval.

    ``n_valid`` counts the replicates in which the statistic was defined (both classes drawn);
    the interval uses those only. ``method`` says what was resampled.
    """

    estimate: float
    low: float
    high: float
    alpha: float
    n_boot: int
    n_valid: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self._asdict())


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UsageError("seed", f"seed must be an int or a numpy Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def _weighted_auc(y: np.ndarray, s: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC of B weighted copies of the same data, in O(B * N) after one sort.

    ``w_pos`` (B, m) and ``w_neg`` (B, n) are the multiplicities of the positives and negatives
    (in the order of ``s[y]`` and ``s[~y]``) in each replicate. Returns ``(auc (B,), valid (B,))``;
    ``auc`` is 0 where ``valid`` is False (a class has total weight 0).
    """
    pos = s[y]
    neg = s[~y]
    order = np.argsort(neg, kind="mergesort")
    neg_sorted = neg[order]
    lo = np.searchsorted(neg_sorted, pos, side="left")
    hi = np.searchsorted(neg_sorted, pos, side="right")
    cum = np.zeros((w_neg.shape[0], neg.size + 1), dtype=np.float64)
    np.cumsum(w_neg[:, order], axis=1, out=cum[:, 1:])
    below = cum[:, lo]
    ties = cum[:, hi] - below
    numerator = (w_pos * (below + 0.5 * ties)).sum(axis=1)
    denominator = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    valid = denominator > 0
    auc = np.zeros_like(numerator)
    auc[valid] = numerator[valid] / denominator[valid]
    return auc, valid


def _resample_counts(rng: np.random.Generator, n_items: int, n_rep: int) -> np.ndarray:
    """(n_rep, n_items) multiplicities of drawing ``n_items`` items with replacement, per replicate."""
    if n_items == 0:
        return np.zeros((n_rep, 0), dtype=np.float64)
    draws = rng.integers(0, n_items, size=(n_rep, n_items))
    draws += (np.arange(n_rep) * n_items)[:, None]
    return np.bincount(draws.ravel(), minlength=n_rep * n_items).reshape(n_rep, n_items).astype(np.float64)


class _Resampler:
    """Draws bootstrap row weights (B, N) for N rows, optionally by cluster and within strata.

    Rows: with ``y`` given and ``stratified``, positives and negatives are each resampled to their
    own count. Clusters (``groups`` (N,)): clusters are drawn with replacement and every row of a
    drawn cluster enters with the cluster's multiplicity; when stratified, clusters that hold a
    positive row and clusters that hold none are resampled separately.
    """

    def __init__(self, n: int, y: np.ndarray | None = None, groups: Any = None, stratified: bool = False):
        self.stratified = bool(stratified) and y is not None
        if groups is None:
            self.codes = None
            self.n_units = n
            unit_positive = y
        else:
            g = np.asarray(groups)
            if g.ndim != 1 or g.shape[0] != n:
                raise UsageError("groups", f"groups must have shape ({n},) like the labels, got {g.shape}")
            self.codes = np.unique(g, return_inverse=True)[1].ravel()
            self.n_units = int(self.codes.max()) + 1 if n else 0
            unit_positive = None
            if y is not None:
                unit_positive = np.zeros(self.n_units, dtype=bool)
                np.logical_or.at(unit_positive, self.codes, y)
        if self.stratified:
            self.strata = [np.flatnonzero(unit_positive), np.flatnonzero(~unit_positive)]
        else:
            self.strata = [np.arange(self.n_units)]
        unit = "clusters" if groups is not None else "rows"
        self.method = f"{'stratified ' if self.stratified else ''}{unit}"

    def weights(self, rng: np.random.Generator, n_rep: int) -> np.ndarray:
        """(n_rep, N) float64 multiplicity of every row in each replicate."""
        unit_w = np.zeros((n_rep, self.n_units), dtype=np.float64)
        for members in self.strata:
            unit_w[:, members] = _resample_counts(rng, members.size, n_rep)
        return unit_w if self.codes is None else unit_w[:, self.codes]


def _chunks(n_boot: int, n_rows: int) -> Iterable[int]:
    size = max(1, _BOOT_CHUNK_ELEMENTS // max(n_rows, 1))
    done = 0
    while done < n_boot:
        step = min(size, n_boot - done)
        yield step
        done += step


def _check_n_boot(n_boot: int) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise UsageError("n_boot", f"n_boot must be a positive integer, got {n_boot!r}")
    return int(n_boot)


def bootstrap_auroc_ci(
    y: Any,
    s: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.Generator = 0,
    stratified: bool = True,
    groups: Any = None,
) -> BootstrapCI:
    """Percentile bootstrap ``1 - alpha`` interval of the AUROC of ``s`` (N,) for labels ``y`` (N,).

    Args:
        stratified: resample positives and negatives separately (each to its own count), so every
            replicate has both classes and the prevalence is fixed. With ``groups``, clusters with
            at least one positive row and clusters with none are resampled separately.
        groups: optional cluster ids (N,) (e.g. study or subject ids of slice-level rows). Whole
            clusters are resampled, so correlated slices of one knee do not pass for independent
            evidence and the interval stays honest.

    Replicates in which a class is absent (possible only for clustered data) are discarded and
    counted in ``n_valid``.

    Raises:
        UndefinedMetricError: a class is absent, or no replicate defines the AUROC.
    """
    y_b = _binary(y)
    s_f = _scores(s, y_b.size)
    alpha = _check_alpha(alpha)
    n_boot = _check_n_boot(n_boot)
    estimate = auroc(y_b, s_f)
    reps = _replicate(y_b, [s_f], n_boot, seed, stratified, groups)
    values = reps.values[:, 0]
    if values.size == 0:
        raise UndefinedMetricError("bootstrap", "no bootstrap replicate contained both classes")
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapCI(estimate, float(low), float(high), alpha, n_boot, int(values.size), reps.method)


class _Replicates(NamedTuple):
    values: np.ndarray  # (n_valid, K) AUROC of each score vector in each valid replicate
    method: str


def _replicate(
    y: np.ndarray,
    score_list: Sequence[np.ndarray],
    n_boot: int,
    seed: int | np.random.Generator,
    stratified: bool,
    groups: Any,
) -> _Replicates:
    """AUROC of several score vectors over the same bootstrap replicates (paired)."""
    rng = _rng(seed)
    sampler = _Resampler(y.size, y, groups, stratified)
    out = []
    for n_rep in _chunks(n_boot, y.size):
        w = sampler.weights(rng, n_rep)
        w_pos, w_neg = w[:, y], w[:, ~y]
        per_score = []
        valid = np.ones(n_rep, dtype=bool)
        for s in score_list:
            auc, ok = _weighted_auc(y, s, w_pos, w_neg)
            per_score.append(auc)
            valid &= ok
        out.append(np.stack(per_score, axis=1)[valid])
    return _Replicates(np.concatenate(out, axis=0), sampler.method)


def bootstrap_mean_auroc_ci(
    y: Any,
    s: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int | np.random.Generator = 0,
    groups: Any = None,
    mask: Any = None,
) -> BootstrapCI:
    """Percentile interval of the mean AUROC over H heads, ``y`` and ``s`` both (N, H).

    All heads share each replicate (rows, or whole clusters with ``groups`` (N,)), so the
    interval reflects their correlation. Resampling is not stratified (strata differ by head);
    replicates where some head lacks a class are discarded and counted in ``n_valid``.
    ``mask`` (N, H) bool, optional: head h is scored on the rows where ``mask[:, h]`` holds
    (e.g. the slices where that head's anatomy is in view); rows are still drawn jointly.

    Raises UndefinedMetricError when some head has a single class in the data.
    """
    y_arr = np.asarray(y)
    s_arr = np.asarray(s, dtype=np.float64)
    if y_arr.ndim != 2 or s_arr.shape != y_arr.shape:
        raise UsageError("bootstrap_mean_auroc_ci", f"y and s must both be (N, H); got {y_arr.shape} and {s_arr.shape}")
    m_arr = np.ones(y_arr.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m_arr.shape != y_arr.shape:
        raise UsageError("bootstrap_mean_auroc_ci", f"mask must be (N, H) like y; got {m_arr.shape}")
    alpha = _check_alpha(alpha)
    n_boot = _check_n_boot(n_boot)
    ys = [_binary(y_arr[:, h], f"y[:, {h}]") for h in range(y_arr.shape[1])]
    ss = [_scores(s_arr[:, h], y_arr.shape[0], f"s[:, {h}]") for h in range(y_arr.shape[1])]
    ms = [m_arr[:, h] for h in range(y_arr.shape[1])]
    estimate = float(np.mean([auroc(yh[mh], sh[mh]) for yh, sh, mh in zip(ys, ss, ms)]))
    rng = _rng(seed)
    sampler = _Resampler(y_arr.shape[0], None, groups, stratified=False)
    chunks = []
    for n_rep in _chunks(n_boot, y_arr.shape[0] * y_arr.shape[1]):
        w = sampler.weights(rng, n_rep)
        total = np.zeros(n_rep)
        valid = np.ones(n_rep, dtype=bool)
        for yh, sh, mh in zip(ys, ss, ms):
            wm = w * mh
            auc, ok = _weighted_auc(yh, sh, wm[:, yh], wm[:, ~yh])
            total += auc
            valid &= ok
        chunks.append(total[valid] / len(ys))
    values = np.concatenate(chunks)
    if values.size == 0:
        raise UndefinedMetricError("bootstrap", "no bootstrap replicate contained both classes for every head")
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapCI(estimate, float(low), float(high), alpha, n_boot, int(values.size), sampler.method)
