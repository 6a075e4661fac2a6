"""Patch-Mix with a mixed-label cross-entropy: the paper's ablation of its own loss."""

from __future__ import annotations

import torch
from torch import Tensor

from patchmix.methods.base import Method, Net, register_method
from patchmix.model.augment import sample_lambda
from patchmix.model.losses import patchmix_ce
from patchmix.model.patchmix import patch_mix


@register_method("patchmix_ce", label="Patch-Mix CE", baseline=True)
class PatchMixCE(Method):
    """Mix patch embeddings across the batch (Patch-Mix) and classify the mixed samples with
    a cross-entropy against both labels, λ·CE(y) + (1−λ)·CE(y[index])."""

    terms = {"cross_entropy": "mixed-label cross-entropy"}

    def loss(self, net: Net, x: Tensor, y: Tensor, g: torch.Generator) -> dict[str, Tensor]:
        m = self.cfg
        lam = sample_lambda(m.mix_beta, g)  # λ ~ Beta(β, β)
        tokens = net.embed(x)  # (B, N, D) patch embeddings
        mix = patch_mix(tokens, lam, g, m.mix_mode, net.grid)  # partners' patches moved in
        logits = net.head(net.features(mix.tokens))  # (B, C) of the mixed samples
        return {"cross_entropy": patchmix_ce(logits, y, mix.index, mix.lam)}
