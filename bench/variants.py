"""The training-step variants the fast path is measured against (benchmark only).

A variant is a registered set of switches on the library's own `patchmix.engine.train.Run`: none of
them re-implements a method's loss, so every variant computes what `patchmix.methods` computes
today, draws the same random numbers in the same order, and gives the same loss up to rounding.

- ``fast``: `Run.step` as the library runs it: fused scaled-dot-product attention in every block
  and, for Patch-Mix CL, the clean and mixed tokens through one batched transformer call;
- ``unfused``: timm's manual attention, ``softmax(q·kᵀ/√d)·v`` with the (B, H, N, N) matrix
  materialised (`AST.set_fused_attention(False)`);
- ``two_forwards``: one transformer call per token batch (`Net(batched=False)`): Patch-Mix CL's
  clean and mixed forwards separately, as the official code runs them;
- ``naive``: both of the above, with every activation stored — the computation written naively;
- ``store`` / ``checkpoint``: the fast step with ``model.activations`` set to ``"store"`` (every
  activation autograd saves is kept) or ``"checkpoint"`` (each block recomputed in backward)
  instead of the ``paper`` geometry's ``"lean"``; the same gradients, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from patchmix.engine.train import Run


@dataclass(frozen=True)
class Variant:
    """What a variant changes: configuration overrides, the attention kernel, batching."""

    overrides: tuple[str, ...] = ()  # applied to the configuration before the run is built
    fused_attention: bool = True
    batched: bool = True  # several token batches through one transformer call


VARIANTS: dict[str, Variant] = {
    "fast": Variant(),
    "unfused": Variant(fused_attention=False),
    "two_forwards": Variant(batched=False),
    "naive": Variant(("model.activations=store",), fused_attention=False, batched=False),
    "store": Variant(("model.activations=store",)),
    "checkpoint": Variant(("model.activations=checkpoint",)),
}


def prepare(run: Run, name: str) -> Callable[..., tuple[Tensor, dict[str, Tensor]]]:
    """Switch `run` (built with the variant's overrides) to variant `name`; return its step,
    ``(x, y, g, state) → (loss, terms)``."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    variant = VARIANTS[name]
    run.model.set_fused_attention(variant.fused_attention)
    run.net.batched = variant.batched
    return run.step
