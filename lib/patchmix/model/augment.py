"""Input-level baselines on fbank batches (B, T=798, F=128): SpecAugment, Mixup, CutMix.

Also the class weights of the official weighted cross-entropy (docs/recipe.md#training) and
the mixed cross-entropy shared by Mixup and CutMix. Every random choice comes from an explicit
`torch.Generator`, drawn in a fixed order, so a seeded generator fixes the result bit for bit on
CPU. No function writes into its input: fbank batches may be views of a read-only memory-mapped
feature cache.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from patchmix.config import GATES, MethodConfig


def class_weights(labels: Any, n_classes: int = 4) -> torch.Tensor:
    """Weights ``w_c ∝ 1 / n_c`` normalised to sum 1 (float32, shape ``(n_classes,)``).

    ``n_c`` is the number of training cycles of class c: the official fine-tuning's weighted
    cross-entropy. A class without any cycle has no finite weight and raises ValueError.
    """
    y = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    y = y.reshape(-1).long().cpu()  # (N,)
    if y.numel() and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    counts = torch.bincount(y, minlength=n_classes).double()  # (n_classes,)
    if (counts == 0).any():
        missing = [c for c in range(n_classes) if counts[c] == 0]
        raise ValueError(f"class(es) {missing} have no sample: class weights 1/n_c undefined")
    inv = 1.0 / counts
    return (inv / inv.sum()).float()


class SpecAugmentMasks(NamedTuple):
    """The random draws of one SpecAugment call for a batch of B samples.

    ``apply`` (B,) bool: the gate. ``freq`` (B, n_freq_masks, 2) and ``time`` (B, n_time_masks,
    2) int64: ``[start, width]`` of each mask along the mel (last) and frame (dim 1) axis.
    """

    apply: torch.Tensor
    freq: torch.Tensor
    time: torch.Tensor


def _intervals(
    batch: int, n_masks: int, max_width: int, size: int, generator: torch.Generator
) -> torch.Tensor:
    """(batch, n_masks, 2) [start, width]: width ~ U{0..max_width-1}, start ~ U{0..size-width}."""
    dev = generator.device
    width = torch.randint(0, max_width, (batch, n_masks), generator=generator, device=dev)
    u = torch.rand((batch, n_masks), generator=generator, device=dev, dtype=torch.float64)
    start = torch.floor(u * (size - width + 1)).long()  # u < 1, so start <= size - width
    return torch.stack([start, width], dim=-1).cpu()


def spec_augment_masks(
    batch: int,
    n_frames: int,
    n_mels: int,
    generator: torch.Generator,
    *,
    freq_masks: int = 2,
    freq_width: int = 48,
    time_masks: int = 2,
    time_width: int = 160,
    gate: str = MethodConfig.specaug_gate,
) -> SpecAugmentMasks:
    """Draw SpecAugment's gate and mask positions (docs/recipe.md#training) without touching data.

    Draw order, fixed: B standard normals (the gate), then frequency widths and starts, then
    time widths and starts. The normals are drawn for ``gate="always"`` too, so the two gates
    give the same masks for the same seed and differ only in which samples get them.
    ``"official"`` applies where ``1.0 >= N(0, 1)`` (probability Φ(1) ≈ 0.841, the official
    code's quirk); ``"always"`` applies to every sample.
    """
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    for name, width, size in (("freq_width", freq_width, n_mels),
                              ("time_width", time_width, n_frames)):
        if not 1 <= width <= size + 1:
            raise ValueError(f"{name} must lie in 1..{size + 1} for an axis of {size}, "
                             f"got {width}")
    if freq_masks < 0 or time_masks < 0:
        raise ValueError("the numbers of masks must be non-negative")
    normal = torch.randn(batch, generator=generator, device=generator.device).cpu()  # (B,)
    apply = normal <= 1.0 if gate == "official" else torch.ones(batch, dtype=torch.bool)
    freq = _intervals(batch, freq_masks, freq_width, n_mels, generator)  # (B, mF, 2)
    time = _intervals(batch, time_masks, time_width, n_frames, generator)  # (B, mT, 2)
    return SpecAugmentMasks(apply=apply, freq=freq, time=time)


def apply_spec_augment(x: torch.Tensor, masks: SpecAugmentMasks) -> torch.Tensor:
    """Apply drawn masks to ``x`` (B, T, F) and return a new tensor; ``x`` is left unchanged.

    For each gated sample: the frequency bands are filled with the sample's mean over (T, F)
    before any masking; then the time bands are filled with the mean recomputed after the
    frequency masks. Samples not gated come back unchanged (as a copy).
    """
    if x.ndim != 3:
        raise ValueError(f"expected (B, T, F), got shape {tuple(x.shape)}")
    b, t, f = x.shape
    if masks.apply.shape != (b,):
        raise ValueError(f"masks drawn for {masks.apply.shape[0]} samples, batch has {b}")
    y = x.clone()  # (B, T, F); the bands are filled in place below, x stays as it is
    mean0 = x.mean(dim=(1, 2))  # (B,)
    gated = masks.apply.nonzero().flatten().tolist()
    # Why slices, not torch.where over masks: each band is a few rows or columns, and two
    # passes over the whole batch cost a sixth of a small model's training step.
    for i in gated:
        for start, width in masks.freq[i].tolist():
            y[i, :, start:start + width] = mean0[i]
    mean1 = y.mean(dim=(1, 2))  # (B,), recomputed after the frequency masks
    for i in gated:
        for start, width in masks.time[i].tolist():
            y[i, start:start + width, :] = mean1[i]
    return y


def spec_augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    freq_masks: int = 2,
    freq_width: int = 48,
    time_masks: int = 2,
    time_width: int = 160,
    gate: str = MethodConfig.specaug_gate,
) -> torch.Tensor:
    """SpecAugment of the official recipe (docs/recipe.md#training) on each sample of (B, T, F).

    With probability Φ(1) ≈ 0.841 (``gate="official"``) or always (``gate="always"``): 2 mel
    bands of width U{0..47} at start U{0..F-width}, filled with the sample's mean; then 2 frame
    bands of width U{0..159} at start U{0..T-width}, filled with the mean recomputed after the
    frequency masks. Returns a new tensor; ``x`` is never written.
    """
    if x.ndim != 3:
        raise ValueError(f"expected (B, T, F), got shape {tuple(x.shape)}")
    b, t, f = x.shape
    masks = spec_augment_masks(b, t, f, generator, freq_masks=freq_masks, freq_width=freq_width,
                               time_masks=time_masks, time_width=time_width, gate=gate)
    return apply_spec_augment(x, masks)


def sample_lambda(beta: float, generator: torch.Generator) -> float:
    """λ ~ Beta(beta, beta), reproducible through ``generator``.

    For ``beta == 1`` (the paper's mix β) λ is one float64 uniform from the generator. Otherwise
    one 63-bit integer drawn from the generator seeds a private ``numpy.random.Generator``, whose
    exact Beta sampler gives λ: the torch generator alone fixes the value, and it advances by one
    draw either way.
    """
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    dev = generator.device
    if beta == 1.0:
        return float(torch.rand(1, generator=generator, device=dev, dtype=torch.float64))
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=dev))
    return float(np.random.default_rng(seed).beta(beta, beta))


def check_lam(lam: float) -> float:
    """λ as a float, or a ValueError unless it lies in [0, 1] (NaN included)."""
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    return lam


def _permutation(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A random permutation of 0..n-1 (a sample may be paired with itself)."""
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def mixup(
    x: torch.Tensor, y: torch.Tensor, lam: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup: ``x̃ = λ·x + (1−λ)·x[index]`` with a random batch permutation ``index``.

    ``x`` is (B, ...), ``y`` (B,). Returns ``(x_mixed, y_a, y_b, index)`` with ``y_a = y`` and
    ``y_b = y[index]``, for `mixed_cross_entropy`. ``lam = 1`` returns ``x`` exactly.
    """
    lam = check_lam(lam)
    index = _permutation(x.shape[0], generator, x.device)  # (B,)
    mixed = lam * x + (1.0 - lam) * x[index]  # (B, ...)
    return mixed, y, y[index], index


def cutmix(
    x: torch.Tensor, y: torch.Tensor, lam: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix on the (T, F) plane of ``x`` (B, ..., T, F), one box for the whole batch.

    Standard CutMix box: side ratio ``sqrt(1−λ)`` (``int(T·r)`` frames × ``int(F·r)`` bins),
    centre uniform over the grid, clipped at the borders; sample i gets ``x[index[i]]`` inside
    the box. λ is recomputed from the clipped box: ``λ' = 1 − box area / (T·F)``. Draw order:
    permutation, centre frame, centre bin. Returns ``(x_mixed, y_a, y_b, index, λ')``.
    """
    lam = check_lam(lam)
    if x.ndim < 3:
        raise ValueError(f"expected (B, ..., T, F), got shape {tuple(x.shape)}")
    t, f = x.shape[-2], x.shape[-1]
    index = _permutation(x.shape[0], generator, x.device)  # (B,)
    ratio = math.sqrt(1.0 - lam)
    cut_t, cut_f = int(t * ratio), int(f * ratio)
    dev = generator.device
    ct = int(torch.randint(0, t, (1,), generator=generator, device=dev))
    cf = int(torch.randint(0, f, (1,), generator=generator, device=dev))
    t0, t1 = max(ct - cut_t // 2, 0), min(ct + cut_t // 2, t)
    f0, f1 = max(cf - cut_f // 2, 0), min(cf + cut_f // 2, f)
    mixed = x.clone()  # (B, ..., T, F); x itself is never written
    mixed[..., t0:t1, f0:f1] = x[index][..., t0:t1, f0:f1]
    lam_adjusted = 1.0 - (t1 - t0) * (f1 - f0) / (t * f)
    return mixed, y, y[index], index, lam_adjusted


def mixed_cross_entropy(
    logits: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: float | torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``λ·CE(logits, y_a) + (1−λ)·CE(logits, y_b)``, each term a (weighted) mean over (B,).

    ``logits`` (B, C). With ``weight`` each term is PyTorch's weighted mean (divided by the
    sum of the target classes' weights). Used by Mixup, CutMix and
    `patchmix.model.losses.patchmix_ce`.
    """
    ce_a = F.cross_entropy(logits, y_a, weight=weight)
    ce_b = F.cross_entropy(logits, y_b, weight=weight)
    return lam * ce_a + (1 - lam) * ce_b
