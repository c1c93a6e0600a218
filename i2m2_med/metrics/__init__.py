"""Statistics of the evaluation, one module per job.

* :mod:`.ranking` -- AUROC (Mann-Whitney with midranks), ROC points, the shared input checks;
* :mod:`.bootstrap` -- cluster-bootstrap confidence intervals of AUROC;
* :mod:`.paired` -- DeLong's test and the paired bootstrap;
* :mod:`.thresholds` -- operating points, sensitivity / specificity with Wilson intervals;
* :mod:`.calibration` -- reliability, expected calibration error, the prior's refit;
* :mod:`.aggregation` -- slice -> study rules (the only home of the rule names);
* :mod:`.tables` -- the metric tables of a run (per head, per expert, in view, over seeds);
* :mod:`.localisation` -- whether a saliency map points at the finding's box (pointing game).

Conventions: ``y`` is a binary label vector ``(N,)``; ``s`` / ``p`` a finite score vector
``(N,)``; multi-head arrays are ``(N, H)`` in :data:`i2m2_med.heads.HEADS` order. A statistic the
data cannot define raises :class:`~i2m2_med.errors.UndefinedMetricError` with a one-line reason,
never NaN. Every random choice takes ``seed``. Nothing here needs torch.
"""
