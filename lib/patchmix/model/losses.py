"""Losses of Patch-Mix (docs/method.md): Patch-Mix CE, the Patch-Mix contrastive loss, projector.

Patch-Mix CL step: a clean forward gives the feature f (B, D) and the plain CE; a Patch-Mix
forward gives f̃ (B, D), projected by `Projector`; the contrastive loss pulls the projection of
mixed sample i toward the clean features of both its sources, i (weight λ) and index[i]
(weight 1 − λ), against the other clean samples of the batch. Total loss = CE + α · L_CL
(`patchmix.methods.patchmix_cl` puts the pieces together; τ and α default to `MethodConfig`'s).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from patchmix.config import NEGATIVES, TARGET_TYPES, MethodConfig
from patchmix.model.augment import check_lam, mixed_cross_entropy


def patchmix_ce(
    logits: torch.Tensor, y: torch.Tensor, index: torch.Tensor, lam: float
) -> torch.Tensor:
    """Patch-Mix CE: ``λ·CE(logits, y) + (1−λ)·CE(logits, y[index])``, unweighted batch means.

    ``logits`` (B, C) of the mixed samples, ``y`` (B,) their clean labels, ``index`` (B,) and
    ``lam`` as returned by `patchmix.model.patchmix.patch_mix`. At λ = 1 this is the plain CE.
    """
    return mixed_cross_entropy(logits, y, y[index], check_lam(lam))  # y[index]: partners


class Projector(nn.Module):
    """The contrastive projection head: Linear, BatchNorm1d, ReLU, Linear (docs/method.md).

    ``dim`` → ``hidden`` (default ``dim``) → ``out`` (default ``dim``); the paper uses 768 →
    768 → 768. ``bn=False`` drops the BatchNorm (an option of the official code). In train
    mode BatchNorm needs a batch of at least 2.
    """

    def __init__(
        self, dim: int = 768, hidden: int | None = None, out: int | None = None, bn: bool = True
    ) -> None:
        super().__init__()
        hidden = dim if hidden is None else hidden
        out = dim if out is None else out
        norm: nn.Module = nn.BatchNorm1d(hidden) if bn else nn.Identity()
        self.net = nn.Sequential(nn.Linear(dim, hidden), norm, nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim) → (B, out)."""
        return self.net(x)


def contrastive_target(
    clean_feat: torch.Tensor, projector: nn.Module | None = None,
    target_type: str = MethodConfig.target_type,
) -> tuple[torch.Tensor, bool]:
    """The contrastive target built from the clean features, and whether to stop its gradient.

    Returns ``(target, stop_grad)`` to pass on as ``clean_feat`` and ``stop_grad`` of
    `patchmix_contrastive_loss`. The official code's four target types:

    - ``"grad_block"`` (the paper's default): the raw clean feature, gradient stopped.
    - ``"grad_flow"``: the raw clean feature, gradient flows into the backbone.
    - ``"project_block"``: ``projector(clean_feat)``, detached (computed without a graph; in
      train mode the projector's BatchNorm statistics still update, as in the official code).
    - ``"project_flow"``: ``projector(clean_feat)``, gradient flows into projector and backbone.

    ``clean_feat`` (B, D); the target is (B, D) or (B, projector out).
    """
    if target_type not in TARGET_TYPES:
        raise ValueError(f"target_type must be one of {TARGET_TYPES}, not {target_type!r}")
    if target_type == "grad_block":
        return clean_feat.detach(), True
    if target_type == "grad_flow":
        return clean_feat, False
    if projector is None:
        raise ValueError(f"target_type {target_type!r} needs the projector")
    if target_type == "project_block":
        with torch.no_grad():
            return projector(clean_feat).detach(), True
    return projector(clean_feat), False


class ContrastiveRows(NamedTuple):
    """The pieces of the Patch-Mix contrastive loss for a batch (what `contrastive_rows`
    returns): ``sim`` (B, B) S = p·zᵀ/τ, rows the mixed anchors and columns the clean samples;
    ``soft`` (B, B) the soft targets M; ``per_row`` (B,) each anchor's loss."""

    sim: torch.Tensor
    soft: torch.Tensor
    per_row: torch.Tensor


def patchmix_contrastive_loss(
    mixed_proj: torch.Tensor,
    clean_feat: torch.Tensor,
    index: torch.Tensor,
    lam: float,
    temperature: float = MethodConfig.temperature,
    *,
    labels: torch.Tensor | None = None,
    negatives: str = MethodConfig.negatives,
    stop_grad: bool = True,
) -> torch.Tensor:
    """The Patch-Mix contrastive loss L_CL, a mean over the batch: the mean of
    `contrastive_rows`' ``per_row`` (which documents the arguments and the formula)."""
    return contrastive_rows(mixed_proj, clean_feat, index, lam, temperature, labels=labels,
                            negatives=negatives, stop_grad=stop_grad).per_row.mean()


def contrastive_rows(
    mixed_proj: torch.Tensor,
    clean_feat: torch.Tensor,
    index: torch.Tensor,
    lam: float,
    temperature: float = MethodConfig.temperature,
    *,
    labels: torch.Tensor | None = None,
    negatives: str = MethodConfig.negatives,
    stop_grad: bool = True,
) -> ContrastiveRows:
    """The Patch-Mix contrastive loss of each mixed sample, with S and M (`ContrastiveRows`).

    ``mixed_proj`` (B, D): projector outputs of the mixed samples; ``clean_feat`` (B, D): the
    target, by default the raw clean features (see `contrastive_target`), detached when
    ``stop_grad``; ``index`` (B,) and ``lam`` from `patch_mix`. With p = normalize(mixed_proj),
    z = normalize(clean_feat), S = p·zᵀ/τ (B, B) and soft targets M = λ·I + (1−λ)·P,
    P[i, index[i]] = 1 (a self-pair gets M[i, i] = 1)::

        per_row[i] = −Σ_j M_ij · log_softmax_j(S_i·),   L_CL = mean_i per_row[i]

    computed as ``Σ_j M_ij · logsumexp_j S_ij − Σ_j M_ij S_ij``: no exponential is taken
    outside a log-sum-exp, so any τ > 0 is safe. Half-precision inputs are upcast to float32
    (float64 stays float64); the pieces are returned in that type.

    ``negatives="diff_label"`` (needs ``labels`` (B,)): the softmax denominator of row i keeps
    the positives — the columns i and index[i], whatever λ — and the samples whose label
    differs from both ``labels[i]`` and ``labels[index[i]]``; the other logits are masked to
    −inf, so the loss stays differentiable.
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}, not {negatives!r}")
    if mixed_proj.ndim != 2 or clean_feat.ndim != 2 or mixed_proj.shape != clean_feat.shape:
        raise ValueError(f"mixed_proj and clean_feat must both be (B, D), got "
                         f"{tuple(mixed_proj.shape)} and {tuple(clean_feat.shape)}")
    batch = mixed_proj.shape[0]
    if index.shape != (batch,):
        raise ValueError(f"index must be ({batch},), got {tuple(index.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    lam = check_lam(lam)
    if negatives == "diff_label" and (labels is None or labels.reshape(-1).shape != (batch,)):
        raise ValueError(f"negatives='diff_label' needs labels of shape ({batch},)")

    dtype = torch.promote_types(mixed_proj.dtype, torch.float32)
    dev = mixed_proj.device
    target = clean_feat.detach() if stop_grad else clean_feat
    p = F.normalize(mixed_proj.to(dtype), dim=1)  # (B, D)
    z = F.normalize(target.to(dtype), dim=1)  # (B, D)
    sim = p @ z.T / temperature  # (B, B): row = mixed anchor, column = clean sample

    rows = torch.arange(batch, device=dev)
    index = index.to(dev).long()
    own = torch.eye(batch, dtype=dtype, device=dev)  # (B, B) I
    partner = torch.zeros(batch, batch, dtype=dtype, device=dev)  # (B, B) P
    partner[rows, index] = 1.0
    soft = lam * own + (1.0 - lam) * partner  # (B, B) M

    denom = sim
    if negatives == "diff_label":
        assert labels is not None  # checked above
        y = labels.reshape(-1).to(dev)  # (B,)
        y_partner = y[index]  # (B,)
        positive = (own > 0) | (partner > 0)  # (B, B)
        negative = (y[None, :] != y[:, None]) & (y[None, :] != y_partner[:, None])  # (B, B)
        denom = sim.masked_fill(~(positive | negative), float("-inf"))
    log_norm = torch.logsumexp(denom, dim=1)  # (B,)
    per_row = soft.sum(dim=1) * log_norm - (soft * sim).sum(dim=1)  # (B,)
    return ContrastiveRows(sim, soft, per_row)
