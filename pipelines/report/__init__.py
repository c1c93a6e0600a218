"""Templates and renderers of the reports (the ablation report: :mod:`pipelines.report.ablation`)."""
