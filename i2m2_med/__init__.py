"""i2m2-med: I2M2 (a normalised product of intra- and inter-modality experts) for knee MRI."""

__version__ = "0.1.0"
