"""Mixup on fbank images: a baseline of input-level mixing."""

from __future__ import annotations

import torch
from torch import Tensor

from patchmix.methods.base import Method, Net, register_method
from patchmix.model.augment import mixed_cross_entropy, mixup, sample_lambda


@register_method("mixup", label="Mixup", baseline=True)
class Mixup(Method):
    """Blend each fbank with a partner's, x̃ = λ·x + (1−λ)·x[index], and score the blend
    against both labels in proportion λ."""

    terms = {"cross_entropy": "mixed-label cross-entropy"}

    def loss(self, net: Net, x: Tensor, y: Tensor, g: torch.Generator) -> dict[str, Tensor]:
        lam = sample_lambda(self.cfg.mix_beta, g)  # λ ~ Beta(β, β)
        mixed, y_a, y_b, _ = mixup(x, y, lam, g)  # a random partner per sample
        return {"cross_entropy": mixed_cross_entropy(net.logits(mixed), y_a, y_b, lam)}
