"""The method, shown: Patch-Mix on two cycles, and the pieces of its contrastive loss.

Notebook 03 opens with these. `mix_two_cycles` runs the library's own `patch_mix` on the patches
of two fbanks and paints the mixed tokens back onto the spectrogram grid, so a reader sees which
parts of cycle A were replaced by cycle B; `loss_anatomy` runs a trained Patch-Mix CL model on a
small batch at a chosen λ and τ and returns the similarity matrix S, the soft targets M and each
mixed sample's loss, computed by `patchmix.model.losses.contrastive_rows`, the loss the training
uses. The figure functions draw them in the style of `patchmix.companion.plots`.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from patchmix.companion.plots import CLASS_COLORS, PALETTE
from patchmix.config import MethodConfig, ModelConfig
from patchmix.data.dataset import CLASSES
from patchmix.methods.base import Net
from patchmix.methods.patchmix_cl import contrastive_terms, mixed_pair
from patchmix.model.ast import AST
from patchmix.model.losses import Projector
from patchmix.model.patchmix import patch_mix

SOURCE_COLORS = (PALETTE[0], PALETTE[1])  # source A, source B


@dataclass
class MixPicture:
    """Two cycles' spectrograms and the mix of A with B, as images (mel rows × frames)."""

    a: np.ndarray  # (F, T) source A's fbank, rows mel bins (low first), columns frames
    b: np.ndarray  # (F, T) source B's
    mixed: np.ndarray  # (F, T) what A's mixed tokens see; NaN where no patch reaches
    mask: np.ndarray  # (F', T') bool token grid: True where A's token came from B
    lam: float  # share of A's tokens A keeps (recomputed from the mask)
    seed: int  # the generator seed whose draw paired A with B
    patch: int
    stride: int


def _patches(images: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """(B, F, T) images → (B, N, patch²) patches, token order of the patch embedding
    (frequency-major: token k = T'·f + t)."""
    return F.unfold(images[:, None], kernel_size=patch, stride=stride).transpose(1, 2)


def _paint(tokens: torch.Tensor, grid: tuple[int, int], patch: int, stride: int,
           shape: tuple[int, int]) -> np.ndarray:
    """(N, patch²) patch tokens → an (F, T) image: each token's patch laid at its place, later
    tokens over earlier ones (with stride < patch the patches overlap), NaN where none reaches."""
    image = np.full(shape, np.nan, dtype=np.float32)
    cells = tokens.reshape(grid[0], grid[1], patch, patch).numpy()
    for f in range(grid[0]):
        for t in range(grid[1]):
            image[f * stride:f * stride + patch, t * stride:t * stride + patch] = cells[f, t]
    return image


def example_rows(cycles: pd.DataFrame, split: str, classes: tuple[int, ...],
                 n: int | None = None) -> np.ndarray:
    """Row positions of `split` cycles: the first of each class in `classes` (table order),
    then the next cycles of the split in order until there are `n` (default: one per class).
    A class the split lacks is skipped."""
    in_split = np.flatnonzero(cycles["split"].to_numpy() == split)
    labels = cycles["label"].to_numpy()[in_split]
    rows = [int(in_split[np.argmax(labels == c)]) for c in classes if (labels == c).any()]
    rest = [int(r) for r in in_split if r not in rows]
    return np.array(rows + rest[:max(0, (n or len(rows)) - len(rows))], dtype=np.int64)


def mix_two_cycles(fbank_a: np.ndarray, fbank_b: np.ndarray, lam: float,
                   model: ModelConfig | None = None, *, mode: str = MethodConfig.mix_mode,
                   seed: int = 0) -> MixPicture:
    """Patch-Mix of cycle A with cycle B, in the token geometry of `model` (default: the paper's).

    ``fbank_a``/``fbank_b`` (T, F) features as the model reads them. Their patches (the inputs
    of the patch convolution) stand in for the tokens, so the picture shows exactly which
    spectrogram patches A's mixed tokens come from; λ is the one `patch_mix` recomputes from its
    mask. `patch_mix` pairs the batch at random and may pair A with itself: the first generator
    seed from `seed` on whose draw pairs A with B is used, and returned.
    """
    model = model or ModelConfig()
    patch, stride, grid = model.patch_size, model.stride, model.grid
    images = torch.from_numpy(np.stack([fbank_a, fbank_b])).float().transpose(1, 2)  # (2, F, T)
    tokens = _patches(images, patch, stride)  # (2, N, patch²)
    for draw in range(seed, seed + 64):  # a pair draws itself with probability 1/2
        mix = patch_mix(tokens, lam, torch.Generator().manual_seed(draw), mode, grid)
        if int(mix.index[0]) == 1:
            break
    else:  # pragma: no cover - 2⁻⁶⁴
        raise RuntimeError("no draw paired the two cycles")
    shape = (images.shape[1], images.shape[2])
    return MixPicture(images[0].numpy(), images[1].numpy(),
                      _paint(mix.tokens[0], grid, patch, stride, shape),
                      mix.mask.reshape(grid).numpy(), mix.lam, draw, patch, stride)


def mix_figure(pic: MixPicture, *, titles: tuple[str, str] = ("A", "B")) -> Figure:
    """Source A, source B, the token mask on the grid and the mixed input, one row each."""
    fig, axes = plt.subplots(4, 1, figsize=(8.0, 8.4), sharex=True)
    low = np.nanmin([pic.a.min(), pic.b.min()])
    high = np.nanmax([pic.a.max(), pic.b.max()])
    shown = {"vmin": low, "vmax": high, "origin": "lower", "aspect": "auto",
             "interpolation": "nearest"}
    for ax, image, title in ((axes[0], pic.a, f"source A · {titles[0]}"),
                             (axes[1], pic.b, f"source B · {titles[1]}")):
        ax.imshow(image, **shown)
        ax.set_title(title, loc="left")
    n_f, n_t = pic.mask.shape
    # the mask drawn on the spectrogram's axes: token (f, t) covers rows f·stride… and columns
    # t·stride… (its patch is `patch` wide; with stride < patch neighbours overlap)
    extent = (-0.5, n_t * pic.stride - 0.5, -0.5, n_f * pic.stride - 0.5)
    colours = plt.matplotlib.colors.ListedColormap(SOURCE_COLORS)
    axes[2].imshow(pic.mask.astype(float), cmap=colours, vmin=0, vmax=1, origin="lower",
                   aspect="auto", interpolation="nearest", extent=extent)
    axes[2].set_title(f"token grid {n_f} × {n_t}: blue keeps A, orange comes from B "
                      f"(λ = {pic.lam:.3f} of A's tokens kept)", loc="left")
    axes[3].imshow(np.ma.masked_invalid(pic.mixed), **shown)
    axes[3].set_title("mixed input: what A's tokens see after Patch-Mix", loc="left")
    for ax in axes:
        ax.grid(False)
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("frame (10 ms)")
    return fig


@dataclass
class LossAnatomy:
    """The Patch-Mix contrastive loss of one small batch, piece by piece."""

    sim: np.ndarray  # (B, B) S = p·zᵀ/τ: row i mixed sample, column j clean sample
    soft: np.ndarray  # (B, B) soft targets M = λ·I + (1−λ)·P
    per_row: np.ndarray  # (B,) each mixed sample's loss; L_CL is their mean
    floor: np.ndarray  # (B,) the least each row's loss can be: the entropy of its target row
    index: np.ndarray  # (B,) partner of each sample
    labels: np.ndarray  # (B,) class ids
    lam: float
    temperature: float


@torch.inference_mode()
def loss_anatomy(model: AST, projector: Projector, x: np.ndarray, labels: np.ndarray,
                 lam: float, temperature: float, method: MethodConfig | None = None, *,
                 seed: int = 0) -> LossAnatomy:
    """S, M and the per-row loss of Patch-Mix CL on the batch `x` (B, T, F), eval mode.

    With the training step's own functions (`patchmix.methods.patchmix_cl.mixed_pair` and
    `contrastive_terms`), except that λ is given instead of drawn: partners come from a
    generator seeded with `seed`, and `temperature` replaces the run's τ. `method` is the
    run's method config (its ``mix_mode``, ``target_type`` and ``negatives`` apply).
    """
    method = method or MethodConfig()
    model.eval()
    batch = torch.from_numpy(np.asarray(x)).float()
    pair = mixed_pair(Net(model), batch, lam, torch.Generator().manual_seed(seed),
                      method.mix_mode)  # the training step's own code, λ given
    y = torch.as_tensor(np.asarray(labels))
    rows = contrastive_terms(pair, projector, y, method, temperature)
    mix = pair.mix
    soft = rows.soft.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        floor = -np.where(soft > 0, soft * np.log(soft), 0.0).sum(1)  # H(M_i)
    return LossAnatomy(rows.sim.numpy(), soft, rows.per_row.numpy(), floor, mix.index.numpy(),
                       np.asarray(labels), float(mix.lam), float(temperature))


def anatomy_figure(an: LossAnatomy) -> Figure:
    """S, M and the per-row loss (with its floor) side by side."""
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.7), width_ratios=(1, 1, 1.1))
    names = [f"{i} {CLASSES[y]}" for i, y in enumerate(an.labels)]
    ticks = range(len(names))
    for ax, matrix, title, cmap in ((axes[0], an.sim, f"S = p·zᵀ / τ   (τ = {an.temperature:g})",
                                     "magma"),
                                    (axes[1], an.soft, f"targets M = λI + (1−λ)P   "
                                     f"(λ = {an.lam:.2f})", "Blues")):
        image = ax.imshow(matrix, cmap=cmap)
        ax.grid(False)
        ax.set_xticks(ticks, names, rotation=90)
        ax.set_yticks(ticks, names)
        ax.set_xlabel("clean sample j (target z_j)")
        ax.set_ylabel("mixed sample i (p_i)")
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8)
    for i, j in enumerate(an.index):  # where the partner is
        axes[0].add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="white", lw=1))
    ax = axes[2]
    colours = [CLASS_COLORS[CLASSES[y]] for y in an.labels]
    ax.barh(list(ticks), an.per_row, color=colours)
    ax.scatter(an.floor, list(ticks), marker="|", s=160, color="black", zorder=3,
               label="floor: entropy of the target row")
    ax.set_yticks(ticks, names)
    ax.invert_yaxis()
    ax.set_xlabel("loss of row i")
    ax.set_title(f"per-row loss · L_CL = mean = {an.per_row.mean():.3f}", fontsize=10)
    # below the axis: inside, it covered the bottom row's bar
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
    return fig
