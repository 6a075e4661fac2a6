"""Patch-Mix contrastive learning: the paper's method.

One step, as the paper describes it: the clean batch's features, the same batch Patch-Mixed,
the mixed batch's features; the classifier is trained on the clean features only (CE), and the
projected mixed features are pulled towards the clean features of both their sources in
proportion to how many patches each gave (the contrastive loss L_CL). Total: CE + α·L_CL.

`mixed_pair` and `contrastive_terms` are the step's two halves and their only home: training
calls them through `PatchMixCL.loss`, and notebook 03's loss anatomy and notebook 04's latent
space call them on a trained model (with ``Net(model)``), so what they show is what trained.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from patchmix.config import ExperimentConfig, MethodConfig
from patchmix.methods.base import Method, Net, register_method
from patchmix.model.augment import sample_lambda
from patchmix.model.losses import ContrastiveRows, Projector, contrastive_rows, contrastive_target
from patchmix.model.patchmix import PatchMixResult, patch_mix


class MixedPair(NamedTuple):
    """The features of one Patch-Mix CL step (`mixed_pair`): ``clean`` (B, D) of the batch,
    ``mixed`` (B, D) of the same batch Patch-Mixed, ``mix`` the mixing (partners, λ)."""

    clean: Tensor
    mixed: Tensor
    mix: PatchMixResult


def mixed_pair(net: Net, x: Tensor, lam: float, g: torch.Generator, mode: str) -> MixedPair:
    """Fbank (B, T, F) → the clean and the Patch-Mixed features of the batch.

    Patch tokens, `patch_mix` with λ and partners drawn from `g` (``mode`` ``"random"`` or
    ``"time"``), then both token batches through one transformer call (`Net.features`).
    """
    tokens = net.embed(x)  # (B, N, D) patch embeddings
    mix = patch_mix(tokens, lam, g, mode, net.grid)  # partners' patches moved in
    clean, mixed = net.features(tokens, mix.tokens)  # (B, D) each
    return MixedPair(clean, mixed, mix)


def contrastive_terms(pair: MixedPair, projector: nn.Module, y: Tensor, m: MethodConfig,
                      temperature: float | None = None) -> ContrastiveRows:
    """S, M and each mixed sample's contrastive loss (`contrastive_rows`) for `pair`.

    The target is built from the clean features as ``m.target_type`` says (the paper's
    ``grad_block``: the raw features, gradient stopped), the anchors are the projected mixed
    features; ``m.negatives`` uses the labels `y` (B,). `temperature` replaces ``m``'s τ.
    L_CL is ``per_row.mean()``.
    """
    # soft targets λ·I + (1−λ)·P over the clean features
    target, stop = contrastive_target(pair.clean, projector, m.target_type)
    tau = m.temperature if temperature is None else temperature
    return contrastive_rows(projector(pair.mixed), target, pair.mix.index, pair.mix.lam, tau,
                            labels=y, negatives=m.negatives, stop_grad=stop)


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
        pair = mixed_pair(net, x, lam, g, m.mix_mode)
        ce = F.cross_entropy(net.head(pair.clean), y)  # the classifier sees clean features only
        cl = contrastive_terms(pair, self.projector, y, m).per_row.mean()
        return {"cross_entropy": ce, "contrastive": m.alpha * cl}  # CE + α·L_CL
