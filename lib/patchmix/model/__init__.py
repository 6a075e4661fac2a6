"""The model layer: the paper's operations in pure torch.

`ast` is the Audio Spectrogram Transformer and its pretrained weights, `backbone` the registry
that ``model.backbone`` names, `patchmix` the Patch-Mix of patch tokens, `losses` Patch-Mix CE,
the contrastive loss and its projector, `augment` SpecAugment, Mixup, CutMix and λ, and
`distributed` how a batch is split over processes. Below it only `patchmix.config` and
`patchmix.registry`; it knows nothing of data sets, methods or runs.

The imports below register the built-in backbones.
"""

from patchmix.model import ast  # noqa: F401 - registers the backbone "ast"
