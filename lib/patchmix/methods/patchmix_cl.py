"""Patch-Mix contrastive learning: the paper's method.

One step, as the paper describes it: the clean batch's features, the same batch Patch-Mixed,
the mixed batch's features; the classifier is trained on the clean features only (CE), and the
projected mixed features are pulled towards the clean features of both their sources in
proportion to how many patches each gave (the contrastive loss L_CL). Total: CE + α·L_CL.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from patchmix.augment import sample_lambda
from patchmix.config import ExperimentConfig
from patchmix.losses import Projector, contrastive_target, patchmix_contrastive_loss
from patchmix.methods.base import Method, Net, register_method
from patchmix.patchmix import patch_mix


@register_method("patchmix_cl", label="Patch-Mix CL", role="proposed")
class PatchMixCL(Method):
    """Patch-Mix contrastive learning, with a projector h of its own (trained with the model)."""

    terms = {"cross_entropy": "cross-entropy", "contrastive": "α · contrastive loss"}

    def __init__(self, cfg: ExperimentConfig, train_labels: np.ndarray) -> None:
        super().__init__(cfg, train_labels)
        self.projector = Projector(cfg.model.embed_dim)  # h: Linear, BatchNorm, ReLU, Linear

    def loss(self, net: Net, x: Tensor, y: Tensor, g: torch.Generator) -> dict[str, Tensor]:
        m = self.cfg
        lam = sample_lambda(m.mix_beta, g)  # λ ~ Beta(β, β)
        tokens = net.embed(x)  # (B, N, D) patch embeddings
        mix = patch_mix(tokens, lam, g, m.mix_mode, net.grid)  # partners' patches moved in
        clean, mixed = net.features(tokens, mix.tokens)  # (B, D) each, one transformer call
        ce = F.cross_entropy(net.head(clean), y)  # the classifier sees clean features only
        # soft targets λ·I + (1−λ)·P over the clean features, gradient stopped (grad_block)
        target, stop = contrastive_target(clean, self.projector, m.target_type)
        cl = patchmix_contrastive_loss(self.projector(mixed), target, mix.index, mix.lam,
                                       m.temperature, labels=y, negatives=m.negatives,
                                       stop_grad=stop)
        return {"cross_entropy": ce, "contrastive": m.alpha * cl}  # CE + α·L_CL
