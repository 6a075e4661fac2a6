"""The training-step variants the fast path is measured against (benchmark only).

``fast`` is `patchmix.train.Run.step` as the library runs it: fused scaled-dot-product attention
in every block and, for Patch-Mix CL, the clean and mixed tokens through one batched `encode`.
The others change one thing or both, and draw the same random numbers in the same order, so
they compute the same loss (up to rounding):

- ``unfused``: timm's manual attention, ``softmax(q·kᵀ/√d)·v`` with the (B, H, N, N) matrix
  materialised (``fused_attn = False`` on every block);
- ``two_forwards``: Patch-Mix CL with a clean forward ``forward_features(x)`` and a separate
  mixed forward (patch embedding run twice, two `encode` calls), as the official code does;
- ``naive``: both of the above — the computation written naively;
- ``store`` / ``checkpoint``: the fast step with ``model.activations`` set to ``"store"``
  (every activation autograd saves is kept) or ``"checkpoint"`` (each block recomputed in
  backward) instead of the ``paper`` geometry's ``"lean"``; the same gradients, bit for bit;
- ``split``: Patch-Mix CL with the clean forward and its CE backward done before the mixed
  forward and the contrastive backward (gradients accumulated; the contrastive target is the
  detached clean feature, so nothing else changes). Half the activations are alive at once; a
  candidate for memory, not the library's path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from patchmix.augment import sample_lambda, spec_augment
from patchmix.losses import contrastive_target, patchmix_contrastive_loss
from patchmix.patchmix import patch_mix
from patchmix.train import Run, ma_update

VARIANTS = ("fast", "unfused", "two_forwards", "naive", "split", "store", "checkpoint")
# configuration overrides a variant runs with; the naive step keeps every activation
OVERRIDES = {"naive": ["model.activations=store"], "store": ["model.activations=store"],
             "checkpoint": ["model.activations=checkpoint"]}


def set_fused_attention(run: Run, fused: bool) -> None:
    """Fused SDPA (the library's setting) or timm's manual attention in every block."""
    for block in run.model.blocks:
        block.attn.fused_attn = fused


def two_forward_loss(run: Run, x: torch.Tensor, y: torch.Tensor,
                     g: torch.Generator) -> torch.Tensor:
    """`Run.loss` for ``ce`` and ``patchmix_cl`` with two separate forwards for Patch-Mix CL."""
    m, model = run.cfg.method, run.model
    if m.spec_augment or m.name == "specaug":
        x = spec_augment(x, g, gate=m.specaug_gate)
    if m.name == "ce":
        return F.cross_entropy(model(x), y)
    if m.name != "patchmix_cl" or run.projector is None:
        raise ValueError(f"the naive step covers ce and patchmix_cl, not {m.name}")
    lam = sample_lambda(m.mix_beta, g)
    mix = patch_mix(model.embed(x), lam, g, m.mix_mode, model.grid)
    clean = model.forward_features(x)  # (B, D): clean forward, its own patch embedding
    mixed = model.encode(mix.tokens)  # (B, D): mixed forward
    ce = F.cross_entropy(model.head(clean), y)
    target, stop = contrastive_target(clean, run.projector, m.target_type)
    cl = patchmix_contrastive_loss(run.projector(mixed), target, mix.index, mix.lam,
                                   m.temperature, labels=y, negatives=m.negatives,
                                   stop_grad=stop)
    return ce + m.alpha * cl


def split_step(run: Run, x: torch.Tensor, y: torch.Tensor, g: torch.Generator,
               state: list[torch.Tensor]) -> torch.Tensor:
    """A Patch-Mix CL step (``grad_block`` target) with the two backward passes in sequence."""
    m, model = run.cfg.method, run.model
    if m.name != "patchmix_cl" or m.target_type != "grad_block" or run.projector is None:
        raise ValueError("the split step covers patchmix_cl with target_type=grad_block")
    previous = [t.detach().clone() for t in state]
    run.optimizer.zero_grad(set_to_none=True)
    with run.autocast:
        if m.spec_augment:
            x = spec_augment(x, g, gate=m.specaug_gate)
        lam = sample_lambda(m.mix_beta, g)
        tokens = model.embed(x)  # (B, N, D)
        mix = patch_mix(tokens, lam, g, m.mix_mode, model.grid)
        leaf = tokens.detach().requires_grad_()  # the clean half's graph stops here
        clean = model.encode(leaf)  # (B, D)
        ce = F.cross_entropy(model.head(clean), y)
    ce.backward()  # frees the clean activations; leaf.grad = dCE/dtokens
    with run.autocast:
        mixed = model.encode(mix.tokens)  # (B, D)
        cl = patchmix_contrastive_loss(run.projector(mixed), clean.detach(), mix.index,
                                       mix.lam, m.temperature, labels=y, negatives=m.negatives)
    # the contrastive gradient and the clean half's token gradient through the embedding
    torch.autograd.backward([m.alpha * cl, tokens], [None, leaf.grad])
    run.optimizer.step()
    if state:
        ma_update(state, previous, run.cfg.train.ma_beta)
    return (ce + m.alpha * cl).detach()


def prepare(run: Run, variant: str):
    """Configure `run` for `variant`; return its step function ``(x, y, g, state) → loss``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    set_fused_attention(run, variant not in ("unfused", "naive"))
    if variant in ("two_forwards", "naive"):
        run.loss = lambda x, y, g: two_forward_loss(run, x, y, g)  # type: ignore[method-assign]
    if variant == "split":
        return lambda x, y, g, state: split_step(run, x, y, g, state)
    return run.step
