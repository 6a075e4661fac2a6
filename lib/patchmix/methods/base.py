"""What a training method is, the registry of methods, and the model as a method sees it.

A method is a `Method` subclass registered under a name with `register_method`; its `loss`
turns one training batch into the named terms of its objective, which the engine adds up and
minimises. Everything that lists methods — config validation, the command line, display names,
the notebooks' run plan, the benchmark — reads this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, TypeVar, overload

import numpy as np
import torch
from torch import Tensor, nn

from patchmix.config import ExperimentConfig
from patchmix.model.ast import AST
from patchmix.model.distributed import Dist
from patchmix.registry import Registry

ROLES: tuple[str, ...] = ("paper_baseline", "reference", "proposed")
"""``paper_baseline``: the fine-tuning the paper's table reports (the official scripts'
class-weighted CE); ``reference``: plain fine-tuning, which the notebooks' curves and feature
spaces put beside the paper's method; ``proposed``: the paper's method. Each role belongs to at
most one registered method."""


class Net:
    """The model as a method sees it: whole batches in, whole batches out.

    Under ``torchrun`` (several processes) the transformer runs on this process's shard of the
    batch only, and the outputs come back gathered in batch order (`patchmix.model.distributed`
    explains why the loss and its gradients are then those of one process). In one process
    nothing is split. Methods call these helpers and never shard or gather themselves.

    ``batched``: `features` runs several token batches through one transformer call (the
    library's choice: one large call uses the cores better than two); False runs one call per
    batch, the way the official code does (the benchmark's ``two_forwards`` variant).
    """

    def __init__(self, model: AST, job: Dist | None = None, *, batched: bool = True) -> None:
        self.model = model
        self.job = job or Dist()
        self.batched = batched

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid (frequency rows, time columns), e.g. (12, 79)."""
        return self.model.grid

    def embed(self, x: Tensor) -> Tensor:
        """Fbank (B, T, F) → patch tokens (B, N, D), of the whole batch on every process: the
        patch conv is cheap, and Patch-Mix pairs samples across the whole batch."""
        return self.model.embed(x)

    def logits(self, x: Tensor) -> Tensor:
        """Fbank (B, T, F) → logits (B, n_classes)."""
        return self.job.gather(self.model(self.job.shard(x)), x.shape[0])

    @overload
    def features(self, tokens: Tensor) -> Tensor: ...

    @overload
    def features(self, tokens: Tensor, other: Tensor, *more: Tensor) -> tuple[Tensor, ...]: ...

    def features(self, tokens: Tensor, *more: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Patch tokens (B, N, D) → the pooled feature (B, D) the classifier reads; several
        token batches of one size → one feature batch each, in order."""
        batches = (tokens, *more)
        n = tokens.shape[0]
        if any(t.shape[0] != n for t in batches):
            raise ValueError("token batches of one features() call must have one size")
        shards = [self.job.shard(t) for t in batches]  # (b, N, D) each
        if self.batched and len(shards) > 1:
            parts = self._pool(torch.cat(shards)).chunk(len(shards))  # (k·b, D) → k × (b, D)
        else:
            parts = tuple(self._pool(s) for s in shards)
        gathered = tuple(self.job.gather(p, n) for p in parts)  # (B, D) each
        return gathered if more else gathered[0]

    def head(self, features: Tensor) -> Tensor:
        """Features (B, D) → logits (B, n_classes): the classifier alone."""
        return self.model.head(features)

    def _pool(self, tokens: Tensor) -> Tensor:
        return self.model.forward_head(self.model.encode(tokens), pre_logits=True)


class Method(nn.Module):
    """One training method: the terms of its loss on a batch, and any modules of its own.

    Subclasses implement `loss` and are registered with `register_method`, which sets the class
    attributes below. Modules a method creates in ``__init__`` (a projector) are trained with
    the model, saved in checkpoints and averaged by ``ma_update``; ``self.cfg`` is the run's
    `patchmix.config.MethodConfig`.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # how tables and figures name it, e.g. "Patch-Mix CL"
    short: ClassVar[str] = ""  # a shorter label, e.g. "CE"
    baseline: ClassVar[bool] = False  # one of the fine-tuning baselines of notebook 02
    role: ClassVar[str | None] = None  # one of ROLES, or None
    # True: SpecAugment on every training batch whatever method.spec_augment says
    always_spec_augment: ClassVar[bool] = False
    # what each term of `loss` is: figures put two methods' terms on one axis only when
    # these say they are the same objective
    terms: ClassVar[dict[str, str]] = {"cross_entropy": "cross-entropy"}

    def __init__(self, cfg: ExperimentConfig, train_labels: np.ndarray) -> None:
        """`cfg` is the run's configuration, `train_labels` (n,) the training cycles' labels."""
        super().__init__()
        self.cfg = cfg.method

    def loss(self, net: Net, x: Tensor, y: Tensor, g: torch.Generator) -> dict[str, Tensor]:
        """The objective's terms on one batch, by name; the engine minimises their sum.

        ``x`` (B, T, F) fbank, already SpecAugmented when that is on; ``y`` (B,) labels;
        ``g`` the epoch's generator, for every random draw (a seed then fixes the run).
        """
        raise NotImplementedError


M = TypeVar("M", bound=type[Method])

METHODS: Registry[type[Method]] = Registry("method")
"""The registered methods, in registration order (`patchmix.methods` imports the built-in
ones); ``METHODS.get(name)`` is the class of ``method.name=<name>``."""


def register_method(name: str, *, label: str, short: str = "", baseline: bool = False,
                    role: str | None = None) -> Callable[[M], M]:
    """Class decorator: register a `Method` subclass as ``method.name=<name>``.

    `label` names it in tables and figures (`short` where space is tight); `baseline` lists
    it among notebook 02's baselines; `role` marks the paper's method or its reference (`ROLES`).
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES} or None, not {role!r}")

    def add(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"{cls!r} is not a subclass of patchmix.methods.Method")
        taken = [m.name for m in METHODS.values() if role is not None and m.role == role]
        if taken:
            raise ValueError(f"role {role!r} already belongs to method {taken[0]!r}")
        METHODS.add(name, cls)
        cls.name, cls.label, cls.short = name, label, short or label
        cls.baseline, cls.role = baseline, role
        return cls
    return add


def baseline_methods() -> tuple[type[Method], ...]:
    """The methods marked ``baseline``, in registration order."""
    return tuple(m for m in METHODS.values() if m.baseline)


def method_with_role(role: str) -> type[Method]:
    """The method registered with `role` (``"reference"`` or ``"proposed"``)."""
    for method in METHODS.values():
        if method.role == role:
            return method
    raise ValueError(f"no registered method has the role {role!r}")


def method_label(name: str) -> str:
    """How tables and figures name a registered method (``patchmix_cl`` → ``Patch-Mix CL``);
    any other name (a variant such as ``ce_no_specaug``) as it is."""
    return METHODS.get(name).label if name in METHODS else name
