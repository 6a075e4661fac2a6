"""Where a trained AST looks: attention rollout from the CLS and DIST tokens onto the patch grid.

Attention rollout (Abnar & Zuidema, 2020) follows attention back through the blocks: each
block's attention matrix, averaged over heads and mixed half and half with the identity (the
residual path carries a token's own value past attention), is multiplied with the ones below,
so entry (i, j) of the product estimates how much input token j flows into output token i. The
classifier pools the mean of the CLS and DIST outputs (`patchmix.model.ast.AST.forward_head`), so
the map of a cycle is the mean of those two rows, read at the patch tokens and laid out on the
(frequency rows, time columns) token grid. It says where information is drawn from, not whether
it pushed the prediction up or down, and it ignores the MLPs.

`attention_rollout` computes it; `first_agreed` picks the cycles to show; `rollout_figure`
draws the fbank with each model's map over it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from patchmix.companion.plots import mel_ticks
from patchmix.config import FeatureConfig, ModelConfig
from patchmix.model.ast import AST, N_PREFIX


@torch.inference_mode()
def attention_rollout(model: AST, x: Tensor | np.ndarray, *, residual: float = 0.5) -> np.ndarray:
    """Attention rollout of fbanks `x` (B, T, F) from the pooled CLS/DIST outputs: (B, F', T').

    ``F' × T'`` is ``model.grid`` (12 × 79 for the paper geometry). Each block's attention
    A (B, heads, 2 + N, 2 + N) is averaged over heads, replaced by ``residual·I + (1 −
    residual)·A`` (rows still sum to 1) and the blocks' matrices multiplied, first block on
    the right. Values are non-negative; a map sums to at most 1, the rest being what the two
    prefix tokens draw from themselves. The model is run in eval mode with timm's manual
    attention, which materialises A; its fused-attention setting is restored afterwards.
    """
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must lie in [0, 1], got {residual}")
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).to(device)
    attention: list[Tensor] = []  # one (B, 2 + N, 2 + N) per block

    def keep(_module: torch.nn.Module, _inputs: tuple[Tensor, ...], out: Tensor) -> None:
        attention.append(out.float().mean(1))  # (B, H, 2 + N, 2 + N) → head mean

    fused = [block.attn.fused_attn for block in model.blocks]
    was_training = model.training
    hooks = [block.attn.attn_drop.register_forward_hook(keep) for block in model.blocks]
    try:
        model.eval()
        model.set_fused_attention(False)  # the manual path computes softmax(q·kᵀ/√d) itself
        model.forward_features(x)
    finally:
        for hook in hooks:
            hook.remove()
        for block, was in zip(model.blocks, fused, strict=True):
            block.attn.fused_attn = was
        model.train(was_training)
    if len(attention) != len(model.blocks):
        raise RuntimeError(f"expected attention from {len(model.blocks)} blocks, got "
                           f"{len(attention)}")
    n = attention[0].shape[-1]
    eye = torch.eye(n, device=device)
    rollout = eye.expand_as(attention[0])  # (B, 2 + N, 2 + N)
    for a in attention:
        rollout = (residual * eye + (1.0 - residual) * a) @ rollout
    pooled = rollout[:, :N_PREFIX].mean(1)[:, N_PREFIX:]  # (B, N): mean of CLS and DIST rows
    return pooled.reshape(len(x), *model.grid).cpu().numpy()  # (B, F', T')


def first_agreed(labels: np.ndarray, predictions: Sequence[np.ndarray],
                 wanted: Sequence[int]) -> dict[int, int]:
    """For each class in `wanted`, the first position whose label it is and that every array of
    `predictions` predicts correctly; the first position of that class when none does. A
    class absent from `labels` is left out. A fixed rule, so no example is picked by eye."""
    labels = np.asarray(labels)
    right = np.all([np.asarray(p) == labels for p in predictions], axis=0)  # (n,)
    out = {}
    for c in wanted:
        of_class = np.flatnonzero(labels == c)
        agreed = of_class[right[of_class]]
        if len(of_class):
            out[int(c)] = int((agreed if len(agreed) else of_class)[0])
    return out


def rollout_figure(fbanks: np.ndarray, rollouts: Mapping[str, np.ndarray],
                   model_cfg: ModelConfig, *, titles: Sequence[str],
                   captions: Mapping[str, Sequence[str]] | None = None,
                   cycle_seconds: Sequence[float] | None = None,
                   feature_cfg: FeatureConfig | None = None) -> Figure:
    """One column per cycle: its fbank (top), then each model's rollout over it (a row each).

    ``fbanks`` (k, T, F) are the model inputs; ``rollouts`` maps a model name to its maps
    (k, F', T') from `attention_rollout`, drawn as token-grid cells (each cell at the centre
    of its patch, stride apart) over the fbank in grey. A map is shown divided by its mean, so
    1 means "an even share" and the scale is the same for every panel; the more a cell draws,
    the more opaque it is, and cells at or below an even share stay see-through.
    ``titles`` (k,) head the columns, ``captions`` (per model, k strings, e.g. its prediction)
    are added to the panel titles; a dashed line marks ``cycle_seconds`` (k,), where the repeat
    padding to 8 s starts repeating the cycle.
    """
    feature_cfg = feature_cfg or FeatureConfig()
    fbanks = np.asarray(fbanks)
    k, frames, mels = fbanks.shape
    step_s = feature_cfg.frame_shift_ms / 1000
    rows = 1 + len(rollouts)
    fig, axes = plt.subplots(rows, k, figsize=(5.6 * k, 1.9 * rows + 0.6), squeeze=False,
                             sharex=True)
    vmin, vmax = np.quantile(fbanks, 0.01), np.quantile(fbanks, 0.995)
    s, p = model_cfg.stride, model_cfg.patch_size
    n_freq, n_time = model_cfg.grid
    # token (f, t) covers frames [s·t, s·t + p) and mel bins [s·f, s·f + p): a cell of width s
    # around the patch centre
    cells = ((p - s) / 2 * step_s, ((p - s) / 2 + s * n_time) * step_s,
             (p - s) / 2, (p - s) / 2 + s * n_freq)
    # each map ÷ its mean: "times an even share", comparable across models and cycles
    relative = {name: np.asarray(maps) / np.maximum(np.asarray(maps).mean((1, 2), keepdims=True),
                                                    1e-12) for name, maps in rollouts.items()}
    top = max([float(np.quantile(r, 0.995)) for r in relative.values()] + [2.0])
    colours = plt.get_cmap("inferno")
    for col in range(k):
        spec = fbanks[col].T  # (F, T): rows mel bins, columns frames
        for row, ax in enumerate(axes[:, col]):
            ax.imshow(spec, origin="lower", aspect="auto", vmin=vmin, vmax=vmax,
                      cmap="gray" if row else "magma", extent=(0, frames * step_s, 0, mels))
            if row:
                name = list(rollouts)[row - 1]
                share = np.clip((relative[name][col] - 1.0) / (top - 1.0), 0.0, 1.0)
                rgba = colours(0.25 + 0.75 * share)  # (F', T', 4)
                rgba[..., 3] = 0.9 * share  # an even share or less: transparent
                ax.imshow(rgba, origin="lower", aspect="auto", extent=cells,
                          interpolation="nearest")
                caption = (captions or {}).get(name)
                ax.set_title(f"{name}" + (f": {caption[col]}" if caption else ""), fontsize=9,
                             loc="left")
            else:
                ax.set_title(f"{titles[col]}: the model's input", fontsize=9, loc="left")
            if cycle_seconds is not None and cycle_seconds[col] < frames * step_s:
                ax.axvline(cycle_seconds[col], color="white", ls="--", lw=0.9)
            ax.set_xlim(0, frames * step_s)
            ax.set_ylim(0, mels)
            ax.grid(False)
            mel_ticks(ax, feature_cfg)
            if col:
                ax.set_ylabel("")
        axes[-1, col].set_xlabel("time (s)")
    if rollouts:
        scale = plt.cm.ScalarMappable(plt.Normalize(1.0, top),
                                      matplotlib.colors.ListedColormap(colours(
                                          np.linspace(0.25, 1.0, 256))))
        fig.colorbar(scale, ax=axes[1:, :], shrink=0.8,
                     label="rollout ÷ its mean\n(1 = an even share)")
    return fig
