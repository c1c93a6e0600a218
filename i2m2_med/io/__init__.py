"""Readers and writers: fastMRI h5, DICOM, NIfTI, fastMRI+ annotations and folder discovery."""
