"""Data: from a cohort folder to the samples the models see, one module per job.

* :mod:`.layout` -- the names a cohort folder holds, and the clinical-row lookup;
* :mod:`.cohort` -- :class:`~.cohort.Cohort` (studies, labels, tabular vectors, split, in-view rows);
* :mod:`.sample` -- one slice of a study -> the model's image inputs (training and inference alike);
* :mod:`.dataset` -- :class:`~.dataset.SliceDataset` and the collation of samples into batches;
* :mod:`.sampling` -- class balance: loss and sampler weights;
* :mod:`.splits` -- the subject-level split; :mod:`.tabular` -- the tabular features;
  :mod:`.augment` -- training-time flips and shifts.
"""
