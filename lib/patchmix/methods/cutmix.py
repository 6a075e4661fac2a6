"""CutMix on fbank images: a baseline of input-level mixing."""

from __future__ import annotations

import torch
from torch import Tensor

from patchmix.methods.base import Method, Net, register_method
from patchmix.model.augment import cutmix, mixed_cross_entropy, sample_lambda


@register_method("cutmix", label="CutMix", baseline=True)
class CutMix(Method):
    """Paste a box of a partner's fbank (frames × mel bins, the same box for the batch) into
    each sample, and score it against both labels in proportion to the area each keeps."""

    terms = {"cross_entropy": "mixed-label cross-entropy"}

    def loss(self, net: Net, x: Tensor, y: Tensor, g: torch.Generator) -> dict[str, Tensor]:
        lam = sample_lambda(self.cfg.mix_beta, g)  # λ ~ Beta(β, β) sets the box's size
        mixed, y_a, y_b, _, lam = cutmix(x, y, lam, g)  # λ recomputed from the clipped box
        return {"cross_entropy": mixed_cross_entropy(net.logits(mixed), y_a, y_b, lam)}
