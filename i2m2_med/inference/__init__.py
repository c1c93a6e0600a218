"""Inference on studies, one module per job.

* :mod:`.loading` -- a run folder or checkpoint (the bundled demo model by default) -> model + metadata;
* :mod:`.streaming` -- slices -> model inputs with bounded memory, read ahead across studies;
* :mod:`.predict` -- one study -> its prediction (the one place that turns a study into numbers);
* :mod:`.prediction` -- :class:`~.prediction.StudyPrediction` and its JSON form;
* :mod:`.shift` -- the distribution-shift score (out of scope by content);
* :mod:`.export` -- a model as an ONNX, TorchScript or ExportedProgram graph with plain tensor inputs;
* :mod:`.bundle` -- a model as a MONAI Bundle (metadata, inference config that runs diagnose, model card).
"""
