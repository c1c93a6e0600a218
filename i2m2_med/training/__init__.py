"""Training with PyTorch Lightning, one module per job.

* :mod:`.datamodule` -- cohort, splits, loaders, class balance;
* :mod:`.module` -- the LightningModule: loss, optimiser, validation AUROC;
* :mod:`.fit` -- :func:`~.fit.train`, the library entry point (warm start, prior refit, run folder);
* :mod:`.results` -- predictions and metrics of a split, the run folder's file names.
"""
