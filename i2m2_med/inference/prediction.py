"""The result of one study's inference (:class:`StudyPrediction`) and its JSON form.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from i2m2_med import __version__
from i2m2_med.heads import HEADS


@dataclass
class StudyPrediction:
    """The model's answer for one study.

    Per slice (S slices, 4 heads in :data:`HEADS` order, terms in :data:`TERM_ORDER`):

    * ``terms``: term -> log-probabilities ``(S, 4, 2)`` float32 (each expert that ran, and the
      prior when the model has one: learned, refitted on validation after training, or both);
    * ``combined``: the normalised product ``(S, 4, 2)`` float32 log-probabilities;
    * ``p``: combined p(y=1) ``(S, 4)`` float32 (``exp(combined[..., 1])``).

    Per study: ``p_study`` ``(4,)`` float64 by ``aggregation``; ``top_slice`` ``(4,)`` int64;
    ``contributions`` term -> ``(4,)`` float64 log-odds (see the module docstring).
    """

    study_id: str
    source: str
    format: str
    model: dict[str, str]
    n_slices: int
    modalities: list[str]
    missing_modalities: list[str]
    excluded_modalities: list[str]
    dropped_experts: list[str]
    aggregation: dict[str, Any]
    slices: np.ndarray
    terms: dict[str, np.ndarray]
    combined: np.ndarray
    p: np.ndarray
    p_study: np.ndarray
    top_slice: np.ndarray
    contributions: dict[str, np.ndarray]
    tabular: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def term_names(self) -> list[str]:
        return list(self.terms)

    def with_identity(self, study_id: str, source: str, notes: Sequence[str] | None = None) -> "StudyPrediction":
        """A copy under another study id / source (e.g. hashed for de-identified outputs)."""
        return replace(self, study_id=study_id, source=source, notes=list(self.notes if notes is None else notes))

    def study_p(self) -> dict[str, float]:
        return {h: float(self.p_study[j]) for j, h in enumerate(HEADS)}

    def study_top_slice(self) -> dict[str, int]:
        return {h: int(self.slices[int(self.top_slice[j])]) for j, h in enumerate(HEADS)}

    def study_contributions(self) -> dict[str, dict[str, float]]:
        return {t: {h: float(v[j]) for j, h in enumerate(HEADS)} for t, v in self.contributions.items()}

    def to_json(self) -> dict[str, Any]:
        """The per-study JSON of ``diagnose`` (``OUT_DIR/studies/<study_id>.json``).

        For every slice and head the product is checkable from the file alone::

            p1 = exp(sum_t logp[t][h][1]) / (exp(sum_t logp[t][h][0]) + exp(sum_t logp[t][h][1]))
        """
        slices = []
        for i, index in enumerate(self.slices):
            slices.append({
                "index": int(index),
                "p": {h: float(self.p[i, j]) for j, h in enumerate(HEADS)},
                "logp": {
                    t: {h: [float(v[i, j, 0]), float(v[i, j, 1])] for j, h in enumerate(HEADS)}
                    for t, v in self.terms.items()
                },
            })
        return {
            "study_id": self.study_id,
            "source": self.source,
            "format": self.format,
            "status": "ok",
            "error": None,
            "model": dict(self.model),
            "software": {"name": "i2m2-med", "version": __version__},
            "heads": list(HEADS),
            "n_slices": int(self.n_slices),
            "modalities": list(self.modalities),
            "missing_modalities": list(self.missing_modalities),
            "excluded_modalities": list(self.excluded_modalities),
            "dropped_experts": list(self.dropped_experts),
            "terms": list(self.terms),
            "aggregation": dict(self.aggregation),
            "slices": slices,
            "study": {
                "p": self.study_p(),
                "top_slice": self.study_top_slice(),
                "contributions": self.study_contributions(),
            },
            "notes": list(self.notes),
        }
