"""Where the diagnostic evidence lives: how a finding (or a mimic) shows in magnitude and phase.

Every lesion class has sites (two or more, e.g. medial and lateral meniscus); the eligible
slices of a class are tiled into *episodes*, each a run of consecutive slices that is either a
true finding or a mimic (see :mod:`i2m2_med.synth.lesions`). A regime decides, per episode,
which cues appear and where:

``inter``  A finding puts a magnitude cue **and** a phase cue on the same site (co-located).
           A mimic puts the magnitude cue on one site and the phase cue on a site of the other
           side (apart): magic-angle hyperintensity or red-marrow / physiological-fluid signal
           in magnitude; flow, calcification or gas (susceptibility) in phase. Each modality
           alone then has the same distribution with or without the finding (one magnitude cue
           and one phase cue per class and slice, same sites, sizes and amplitudes), so a
           single-modality model is at chance; the pair is fully informative.
``intra``  A finding shows a magnitude cue with probability ``p_mag`` and a phase cue with
           probability ``p_phase`` (independently), on its site. A mimic shows a magnitude cue
           with probability ``q_mag`` and a phase cue with ``q_phase``, on one site (both on the
           same site when both appear, so co-location carries nothing). The two modalities are
           conditionally independent given the finding: each alone is informative, and their
           product (the I2M2 product of experts) is the Bayes-optimal combination.
``mixed``  Each episode is ``inter`` with probability ``p_inter`` (default 0.5), else ``intra``.

Episode-level Bayes AUROC of the defaults (binary evidence, computed in
:func:`episode_auroc`): intra magnitude 0.775, phase 0.775, both 0.871; inter single
modality 0.5, both 1.0; mixed 0.6375, 0.6375, 0.963. Slice- and head-level numbers differ
(slices outside every episode, neighbouring classes, resizing) and are measured by the probes
of :mod:`i2m2_med.synth.probe`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

REGIMES: tuple[str, ...] = ("mixed", "intra", "inter")


@dataclass(frozen=True)
class RegimeParams:
    """Knobs of a regime (probabilities per episode)."""

    name: str
    p_inter: float          # probability that an episode follows the inter (co-location) rule
    p_mag: float = 0.75     # intra: finding shows in magnitude
    p_phase: float = 0.75   # intra: finding shows in phase
    q_mag: float = 0.20     # intra: mimic shows in magnitude
    q_phase: float = 0.20   # intra: mimic shows in phase

    def as_dict(self) -> dict:
        return asdict(self)


def regime_params(name: str) -> RegimeParams:
    """The parameters of a named regime; raises ``ValueError`` for an unknown name."""
    if name == "inter":
        return RegimeParams("inter", p_inter=1.0)
    if name == "intra":
        return RegimeParams("intra", p_inter=0.0)
    if name == "mixed":
        return RegimeParams("mixed", p_inter=0.5)
    raise ValueError(f"unknown regime {name!r}; choose one of {', '.join(REGIMES)}")


@dataclass(frozen=True)
class Expression:
    """Where an episode's cues go: site indices into the class's site list, or None (no cue)."""

    mode: str                 # "inter" or "intra"
    site: int                 # the episode's own site (where the finding is, if it is one)
    mag_site: int | None
    phase_site: int | None


def express(
    rng: np.random.Generator, params: RegimeParams, finding: bool, site_groups: tuple[int, ...]
) -> Expression:
    """Draw the cue placement of one episode.

    ``site_groups[i]`` is the side (group) of site ``i``; a split pair puts the phase cue on a
    site of another group, drawn uniformly, so that each cue's site is marginally uniform.
    """
    n = len(site_groups)
    site = int(rng.integers(n))
    mode = "inter" if rng.random() < params.p_inter else "intra"
    if mode == "inter":
        if finding:
            return Expression(mode, site, site, site)
        others = [i for i in range(n) if site_groups[i] != site_groups[site]]
        return Expression(mode, site, site, int(others[int(rng.integers(len(others)))]))
    pm, pp = (params.p_mag, params.p_phase) if finding else (params.q_mag, params.q_phase)
    show_mag = rng.random() < pm
    show_phase = rng.random() < pp
    return Expression(mode, site, site if show_mag else None, site if show_phase else None)


def episode_evidence(params: RegimeParams) -> tuple[dict[str, float], dict[str, float]]:
    """Distribution of what one episode shows, with and without the finding.

    States: "none", "mag" (magnitude cue only), "phase" (phase cue only), "together" (both on
    one site: an inter finding, or an intra episode showing both), "apart" (an inter mimic).
    """
    pi, pm, pp, qm, qp = params.p_inter, params.p_mag, params.p_phase, params.q_mag, params.q_phase
    pos = {"none": (1 - pi) * (1 - pm) * (1 - pp), "mag": (1 - pi) * pm * (1 - pp),
           "phase": (1 - pi) * (1 - pm) * pp, "together": pi + (1 - pi) * pm * pp, "apart": 0.0}
    neg = {"none": (1 - pi) * (1 - qm) * (1 - qp), "mag": (1 - pi) * qm * (1 - qp),
           "phase": (1 - pi) * (1 - qm) * qp, "together": (1 - pi) * qm * qp, "apart": pi}
    return pos, neg


EVIDENCE_STATES: tuple[str, ...] = ("none", "mag", "phase", "together", "apart")


def evidence_state(expr: Expression) -> str:
    """What an episode shows (one of :data:`EVIDENCE_STATES`, as in :func:`episode_evidence`)."""
    m, p = expr.mag_site, expr.phase_site
    if m is None and p is None:
        return "none"
    if p is None:
        return "mag"
    if m is None:
        return "phase"
    return "together" if m == p else "apart"


def evidence_log_ratio(params: RegimeParams, state: str) -> float:
    """log p(state | finding) / p(state | mimic) under the regime: the Bayes score of an episode
    from its images (+-inf where only one side can show the state; 0 where neither can)."""
    pos, neg = episode_evidence(params)
    a, b = pos[state], neg[state]
    if a > 0 and b > 0:
        return float(np.log(a / b))
    if a > 0:
        return float("inf")
    if b > 0:
        return float("-inf")
    return 0.0


def _bayes_auroc(pos: dict, neg: dict) -> float:
    """AUROC of the likelihood-ratio score over discrete states (ties one half)."""
    def lr(k):
        return pos[k] / neg[k] if neg[k] > 0 else float("inf") if pos[k] > 0 else 1.0

    auc = 0.0
    for kp, wp in pos.items():
        for kn, wn in neg.items():
            a, b = lr(kp), lr(kn)
            auc += wp * wn * (1.0 if a > b else 0.5 if a == b else 0.0)
    return float(auc)


def episode_auroc(params: RegimeParams) -> dict[str, float]:
    """Best achievable AUROC of one episode (finding vs mimic) from magnitude alone, phase alone
    and both (the Bayes classifier on the states of :func:`episode_evidence`).

    Defaults: intra 0.775 / 0.775 / 0.871; inter 0.5 / 0.5 / 1.0; mixed 0.6375 / 0.6375 / 0.963.
    """
    pos, neg = episode_evidence(params)

    def marginal(dist: dict, keys: tuple[str, ...]) -> dict[str, float]:
        shown = sum(dist[k] for k in keys)
        return {"shown": shown, "not": 1.0 - shown}

    mag_keys, ph_keys = ("mag", "together", "apart"), ("phase", "together", "apart")
    return {
        "magnitude": round(_bayes_auroc(marginal(pos, mag_keys), marginal(neg, mag_keys)), 4),
        "phase": round(_bayes_auroc(marginal(pos, ph_keys), marginal(neg, ph_keys)), 4),
        "joint": round(_bayes_auroc(pos, neg), 4),
    }
