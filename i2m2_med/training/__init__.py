"""Training with PyTorch Lightning, one module per job.

* :mod:`.datamodule` -- cohort, splits, loaders, class balance;
* :mod:`.module` -- the LightningModule: loss, optimiser, validation AUROC;
* :mod:`.options` -- :class:`~.options.TrainerOptions` (how Lightning runs a fit) and the
  command line's overrides of the config;
* :mod:`.fit` -- :func:`~.fit.train`, the library entry point (warm start, prior refit, run folder);
* :mod:`.results` -- predictions and metrics of a split, the run folder's file names and
  :class:`~.results.TrainResult`, what :func:`~.fit.train` returns.
"""
