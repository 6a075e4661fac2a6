"""Patch-Mix: mixing patch embeddings between samples of a batch (docs/method.md).

Patch-Mix acts on the tokens of the AST patch embedding, after the patch conv and before the
CLS/DIST tokens and the positional embedding are added: ``tokens`` (B, N, D), token k at grid
cell (f, t) = (k // T, k % T) of the (F frequency rows, T time columns) grid, frequency-major
(N = 12 · 79 = 948 for the paper geometry). A random batch permutation ``index`` pairs every
sample i with a partner index[i] (possibly itself); a set of token positions, **the same for the
whole batch**, is taken from the partner; λ is recomputed from the number of positions moved.

λ is drawn by the caller (`patchmix.model.augment.sample_lambda(1.0, generator)`: Beta(1, 1)).
Every random draw comes from an explicit `torch.Generator`, in a fixed order (batch
permutation, then positions), and the number of values drawn does not depend on λ, so a seeded
generator fixes the result bit for bit on CPU. The input is never written.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from patchmix.config import MIX_MODES, MethodConfig
from patchmix.model.augment import check_lam


class PatchMixResult(NamedTuple):
    """What `patch_mix` returns.

    ``tokens`` (B, N, D): the mixed tokens. ``index`` (B,) int64: the batch permutation, sample
    i's partner is ``index[i]``. ``lam`` float: the recomputed λ, the share of tokens a sample
    keeps (``1 − m/N`` in ``"random"`` mode, ``1 − m/T`` in ``"time"`` mode). ``mask`` (N,)
    bool: True where a token came from the partner.
    """

    tokens: torch.Tensor
    index: torch.Tensor
    lam: float
    mask: torch.Tensor


def _check_inputs(
    tokens: torch.Tensor, lam: float, mode: str, grid: tuple[int, int] | None
) -> float:
    """Validate `patch_mix`'s arguments; return λ as a float."""
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, N, D), got shape {tuple(tokens.shape)}")
    if tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(f"tokens must hold at least one sample and one token, "
                         f"got shape {tuple(tokens.shape)}")
    lam = check_lam(lam)
    if mode not in MIX_MODES:
        raise ValueError(f"mode must be one of {MIX_MODES}, not {mode!r}")
    if mode == "time" and grid is None:
        raise ValueError("mode='time' needs grid=(F, T), the token grid "
                         "(frequency rows, time columns)")
    if grid is not None:
        if len(grid) != 2 or min(int(grid[0]), int(grid[1])) < 1:
            raise ValueError(f"grid must be (F, T) with positive sizes, got {grid}")
        n_freq, n_time = int(grid[0]), int(grid[1])
        if n_freq * n_time != tokens.shape[1]:
            raise ValueError(f"grid {n_freq} x {n_time} = {n_freq * n_time} tokens does not "
                             f"match the {tokens.shape[1]} tokens of the input")
    return lam


def patch_mix(
    tokens: torch.Tensor,
    lam: float,
    generator: torch.Generator,
    mode: str = MethodConfig.mix_mode,
    grid: tuple[int, int] | None = None,
) -> PatchMixResult:
    """Mix patch tokens across the batch (docs/method.md); pure, differentiable.

    ``tokens`` (B, N, D) are patch embeddings before CLS/DIST and positional embedding, token k
    at (f, t) = (k // T, k % T). Draws, in this order from ``generator``: ``index``, a random
    permutation of the batch (a sample may draw itself); then a random permutation of the N
    positions (``"random"``) or of the T time columns (``"time"``), whose first m entries are
    the moved positions/columns — the same for every sample of the batch.

    - ``mode="random"``: ``m = int(N·(1−λ))`` positions; λ is recomputed as ``1 − m/N``.
    - ``mode="time"`` (needs ``grid=(F, T)``, F·T = N): ``m = int(T·(1−λ))`` whole time
      columns, every frequency row of them; λ is recomputed as ``1 − m/T``.

    Sample i takes sample ``index[i]``'s tokens at the moved positions and keeps its own
    elsewhere. The output is a new tensor; the gradient reaches both the sample's own tokens
    (kept positions) and its partner's (moved positions). ``lam = 1`` moves nothing,
    ``lam = 0`` moves everything.
    """
    lam = _check_inputs(tokens, lam, mode, grid)
    batch, n_tokens = tokens.shape[0], tokens.shape[1]
    dev = generator.device
    index = torch.randperm(batch, generator=generator, device=dev).to(tokens.device)  # (B,)

    if mode == "random":
        n_units = n_tokens
        m = int(n_units * (1.0 - lam))
        chosen = torch.randperm(n_units, generator=generator, device=dev)[:m]  # (m,)
        mask = torch.zeros(n_units, dtype=torch.bool, device=dev)  # (N,)
        mask[chosen] = True
    else:
        assert grid is not None  # checked above
        n_freq, n_units = int(grid[0]), int(grid[1])
        m = int(n_units * (1.0 - lam))
        chosen = torch.randperm(n_units, generator=generator, device=dev)[:m]  # (m,)
        columns = torch.zeros(n_units, dtype=torch.bool, device=dev)  # (T,)
        columns[chosen] = True
        mask = columns.expand(n_freq, n_units).reshape(-1)  # (F·T,) = (N,), frequency-major
    mask = mask.to(tokens.device)

    partner = tokens[index]  # (B, N, D)
    mixed = torch.where(mask[None, :, None], partner, tokens)  # (B, N, D)
    return PatchMixResult(mixed, index, 1.0 - m / n_units, mask)
