"""Data-parallel training over several processes (DDP), launched by ``torchrun``.

``torchrun --nproc_per_node N -m patchmix train …`` runs the same command in N processes; each
reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous variables) from its
environment. `init_from_env` joins the process group: NCCL with one GPU per process on CUDA,
gloo on CPU (what the tests use). Without those variables, or with ``WORLD_SIZE=1``, nothing is
initialised and every helper here is the identity, so one process runs exactly as before.

How a training step is split (`patchmix.engine.train.Run.loss`): every rank reads the same *global*
batch (``train.batch_size`` cycles) and draws the same random numbers from the same generator,
so SpecAugment, Mixup/CutMix, λ, the Patch-Mix permutation and positions are those of one
process. Only the transformer — almost all of the cost — runs on a rank's contiguous shard of
the batch (`Dist.shard`). The per-sample outputs (logits, or clean and mixed features) are then
put back together in batch order by `Dist.gather`, and the loss is computed on the whole batch
on every rank: the CE over all B cycles, the contrastive softmax over all B clean features and
the projector's BatchNorm statistics over all B mixed features, exactly as in one process. The
loss value is therefore the same on every rank and equal to the one-process loss.

Gradients: rank r's backward only reaches the transformer through its own rows, so
`Dist.gather` multiplies their gradient by the world size W, and DDP's averaging divides it
again: the summed gradient is that of the one-process loss. Parameters used after the gather
(classifier, projector) get the full gradient on every rank, which averaging leaves unchanged.
The result equals one process up to floating-point summation order.

Evaluation: each rank predicts a contiguous shard of the rows and `Dist.gather_array` returns
all predictions, in row order, to every rank, so metrics are computed on the full test set.
Only rank 0 writes files (`patchmix.engine.train.fit`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def env_world_size() -> int:
    """``$WORLD_SIZE`` (1 when unset): how many processes torchrun started."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def bounds(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) of each rank's share of n items, sizes differing by at most 1.

    The first ``n % world`` ranks get one more item (as `numpy.array_split`).
    """
    base, extra = divmod(n, world)
    starts = [r * base + min(r, extra) for r in range(world + 1)]
    return list(zip(starts[:-1], starts[1:], strict=True))


class _GatherRows(torch.autograd.Function):
    """All-gather of per-rank row blocks into one (n, …) tensor, in rank order.

    Backward returns this rank's rows of the incoming gradient times the world size: every rank
    computes the same loss from the gathered tensor, so the gradient of rank r's rows summed
    over ranks is W times its own, and DDP's averaging divides by W.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, spans: list[tuple[int, int]], rank: int,
                world: int) -> torch.Tensor:
        longest = max(stop - start for start, stop in spans)
        padded = local.new_zeros((longest, *local.shape[1:]))  # (longest, …)
        padded[:local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.span, ctx.world = spans[rank], world
        return torch.cat([p[:stop - start] for p, (start, stop) in zip(parts, spans, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start, stop = ctx.span
        return grad[start:stop] * ctx.world, None, None, None


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; the default is a single process (all identities)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def span(self, n: int) -> tuple[int, int]:
        """[start, stop) of this rank's share of n items."""
        if n < self.world_size:
            raise ValueError(f"{n} items cannot be shared by {self.world_size} processes: "
                             "use a batch at least as large as the number of processes")
        return bounds(n, self.world_size)[self.rank]

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous rows of a global batch (B, …) → (b, …); the batch itself in
        one process."""
        if not self.enabled:
            return batch
        start, stop = self.span(batch.shape[0])
        return batch[start:stop]

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """The rows (b, …) of every rank, in batch order → (n, …), differentiable (see the
        module docstring for the gradient); `local` itself in one process."""
        if not self.enabled:
            return local
        self.span(n)  # checks n
        return _GatherRows.apply(local, bounds(n, self.world_size), self.rank,
                                 self.world_size)

    def shard_rows(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of evaluation rows (may be empty)."""
        if not self.enabled:
            return rows
        start, stop = bounds(len(rows), self.world_size)[self.rank]
        return rows[start:stop]

    def gather_array(self, local: np.ndarray, n: int) -> np.ndarray:
        """Per-rank results of `shard_rows` (b, …) → all n of them, in row order, on every
        rank; `local` itself in one process."""
        if not self.enabled:
            return local
        spans = bounds(n, self.world_size)
        with torch.no_grad():
            out = _GatherRows.apply(torch.from_numpy(np.ascontiguousarray(local)).to(self.device),
                                    spans, self.rank, self.world_size)
        return out.cpu().numpy()

    def barrier(self) -> None:
        """Wait for every rank (nothing in one process)."""
        if self.enabled:
            dist.barrier()


def current() -> Dist:
    """The job this process belongs to: from the initialised process group, else one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    device = (torch.device("cuda", local) if dist.get_backend() == "nccl"
              else torch.device("cpu"))
    return Dist(dist.get_rank(), dist.get_world_size(), local, device)


def init_from_env(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the torchrun job described by the environment; return it and this rank's device.

    With ``WORLD_SIZE`` > 1: gloo on CPU, NCCL on CUDA with GPU ``LOCAL_RANK`` (the returned
    device). Idempotent. Without it: ``(Dist(), device)``, nothing initialised.
    """
    world = env_world_size()
    if world <= 1:
        return Dist(), device
    missing = [v for v in ENV_VARS + ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch "
                         "several processes with torchrun")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return current(), device


@contextmanager
def main_first(job: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. filling the feature cache), the others after it."""
    if job.enabled and not job.is_main:
        job.barrier()
    yield
    if job.enabled and job.is_main:
        job.barrier()


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
