"""The result of one study's inference (:class:`StudyPrediction`) and its JSON form
(:meth:`StudyPrediction.to_json`, read back by :meth:`StudyPrediction.from_json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

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

    Per study: ``p_study`` ``(4,)`` float64: the probability of each finding in the study, the
    slice probabilities aggregated by ``aggregation`` and, when the model carries a study-level
    calibration map (``aggregation["calibration"]``), mapped through it; ``study_score`` ``(4,)``
    the aggregated ranking score before that map (None in records without it); ``top_slice`` ``(4,)`` int64;
    ``contributions`` term -> ``(4,)`` float64 log-odds (see the module docstring); ``shift``
    the distribution-shift block (:func:`i2m2_med.inference.shift.study_shift`: score, threshold,
    ``out_of_scope`` and the reason; or ``available: false`` and a note; None in older records).
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
    study_score: np.ndarray | None = None
    shift: dict[str, Any] | None = None

    @property
    def out_of_scope(self) -> bool:
        """True when the distribution-shift score put the study out of the model's scope."""
        return bool((self.shift or {}).get("out_of_scope"))

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
                **({} if self.study_score is None else {"score": {h: float(self.study_score[j]) for j, h in enumerate(HEADS)}}),
                "top_slice": self.study_top_slice(),
                "contributions": self.study_contributions(),
            },
            "notes": list(self.notes),
            **({} if self.shift is None else {"shift": dict(self.shift)}),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "StudyPrediction":
        """The prediction a per-study JSON of :meth:`to_json` describes (``diagnose`` writes it),
        so that ``StudyPrediction.from_json(doc).to_json() == doc`` (up to the keys
        ``diagnose`` adds, and ``software``, which names the version reading it).

        Every field :meth:`to_json` writes comes back exactly (the log-probabilities as float32,
        the study-level numbers as float64, each head's top slice as a position in ``slices``);
        ``combined`` is recomputed from the terms (:func:`i2m2_med.models.combine`, as the model
        combines them); ``tabular`` and ``seconds``, which the JSON does not hold, are empty / 0.

        Raises ValueError naming what is wrong for a record that is not a successful prediction of
        these heads (``status`` other than ``ok``, other heads, no slices, a top slice that is not
        one of the slices); KeyError for a missing field.
        """
        import torch

        from i2m2_med.models.product import combine

        status = doc.get("status", "ok")
        if status != "ok":
            raise ValueError(f"not a prediction: status {status!r}" + (f" ({doc.get('error')})" if doc.get("error") else ""))
        heads = list(doc.get("heads", HEADS))
        if heads != list(HEADS):
            raise ValueError(f"heads {heads} are not this version's {list(HEADS)}")
        rows = doc["slices"]
        if not rows:
            raise ValueError("the record has no slices")
        names = list(doc["terms"])
        terms = {t: np.asarray([[r["logp"][t][h] for h in HEADS] for r in rows], dtype=np.float32) for t in names}
        combined = combine({t: torch.from_numpy(v) for t, v in terms.items()}).numpy().astype(np.float32)
        slices = np.asarray([int(r["index"]) for r in rows], dtype=np.int64)
        position = {int(index): i for i, index in enumerate(slices)}
        study = doc["study"]
        missing_top = [h for h in HEADS if int(study["top_slice"][h]) not in position]
        if missing_top:
            raise ValueError(f"top slice of {', '.join(missing_top)} is not one of the record's slices")
        return cls(
            study_id=doc["study_id"],
            source=doc["source"],
            format=doc["format"],
            model=dict(doc["model"]),
            n_slices=int(doc["n_slices"]),
            modalities=list(doc["modalities"]),
            missing_modalities=list(doc["missing_modalities"]),
            excluded_modalities=list(doc["excluded_modalities"]),
            dropped_experts=list(doc["dropped_experts"]),
            aggregation=dict(doc["aggregation"]),
            slices=slices,
            terms=terms,
            combined=combined,
            p=np.asarray([[r["p"][h] for h in HEADS] for r in rows], dtype=np.float32),
            p_study=np.asarray([study["p"][h] for h in HEADS], dtype=np.float64),
            study_score=np.asarray([study["score"][h] for h in HEADS], dtype=np.float64) if "score" in study else None,
            top_slice=np.asarray([position[int(study["top_slice"][h])] for h in HEADS], dtype=np.int64),
            contributions={t: np.asarray([v[h] for h in HEADS], dtype=np.float64)
                           for t, v in study["contributions"].items()},
            notes=list(doc["notes"]),
            shift=dict(doc["shift"]) if isinstance(doc.get("shift"), Mapping) else None,
        )
