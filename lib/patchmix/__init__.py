"""patchmix: a reproducible companion to "Patch-Mix Contrastive Learning with Audio Spectrogram
Transformer on Respiratory Sound Classification" (Bae et al., INTERSPEECH 2023).

Importing the package is cheap and has no side effects; import the modules you need
(`patchmix.data.icbhi`, `patchmix.data.audio`, `patchmix.data.features`, `patchmix.data.synth`,
...).
"""

__version__ = "0.1.0"
