"""k-space / image slices -> the magnitude and phase modalities.

Array functions (numpy / torch in, the same out; no MONAI):

* :mod:`.fft` -- the centred, cropped, orthonormal inverse 2-D FFT (fastMRI's ``ifft2c`` numbers);
* :mod:`.coils` -- multicoil combination (root-sum-of-squares magnitude, sensitivity-weighted phase);
* :mod:`.modalities` -- :func:`~.modalities.kspace_to_modalities` (the core);
* :mod:`.subsample` -- fastMRI-style column masks;
* :mod:`.intensity` -- magnitude normalisation;
* :mod:`.geometry` -- centre crop / pad and resizing of the planes.

:mod:`.dictionary` wraps them as MONAI dictionary transforms and builds the modality pipeline
(:func:`~.dictionary.build_modality_pipeline`); it imports the array functions, never the reverse.
"""
