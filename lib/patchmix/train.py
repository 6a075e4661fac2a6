"""The training and evaluation engine (PAPER.md §6-§7).

`fit(cfg, data, out_dir)` trains one run: Adam with coupled L2, a cosine learning rate set once
per epoch, optional bf16 autocast, the official ``ma_update`` weight interpolation after every
step, and an evaluation of the test (and validation) cycles after every epoch. All three
selection protocols are recorded for every run:

- ``best_test``: the epoch with the best test Score among those with Se > 5 — what the paper
  and the official code report (model selection on the test set);
- ``last``: the last epoch;
- ``val``: the epoch with the best Score on the patient-grouped validation split carved from
  train (only when ``data.val_fraction > 0``).

Each epoch appends to ``metrics.jsonl`` and atomically rewrites ``last.pt``; an interrupted run
resumes from it and ends with the same numbers. Randomness comes from the run seed: the model
initialisation, then one generator per epoch for the batch order and every augmentation.

Under ``torchrun`` (several processes) the model is wrapped in DistributedDataParallel, each
step's global batch of ``train.batch_size`` cycles is shared among the ranks, evaluation
predictions are gathered from all ranks, and only rank 0 writes files: `patchmix.distributed`
says how, and why the metrics are those of one process.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from patchmix import distributed
from patchmix.atomic import atomic_path, write_json_atomic, write_text_atomic
from patchmix.augment import (
    class_weights,
    cutmix,
    mixed_cross_entropy,
    mixup,
    sample_lambda,
    spec_augment,
)
from patchmix.config import DataConfig, ExperimentConfig, to_dict
from patchmix.features import cycle_features
from patchmix.icbhi import CLASSES, read_icbhi, validation_split
from patchmix.losses import Projector, contrastive_target, patchmix_ce, patchmix_contrastive_loss
from patchmix.metrics import icbhi_scores
from patchmix.model import AST, build_model
from patchmix.patchmix import patch_mix

PROTOCOLS: tuple[str, ...] = ("best_test", "last", "val")
DEFAULT_DATA = "data/synthetic"


@dataclass
class Data:
    """The cycle table (``split`` in train/val/test) and its features, row-aligned."""

    cycles: pd.DataFrame
    features: np.ndarray  # (n, 798, 128) float32, memory-mapped
    root: str
    synthetic: bool

    def rows(self, split: str) -> np.ndarray:
        """Row positions of one split."""
        return np.flatnonzero(self.cycles["split"].to_numpy() == split)


def data_root(cfg: DataConfig) -> str:
    """``cfg.root``, else ``$ICBHI_ROOT``, else the synthetic set under ``data/synthetic``."""
    return cfg.root or os.environ.get("ICBHI_ROOT") or DEFAULT_DATA


def load_data(cfg: DataConfig, *, progress: bool = True) -> Data:
    """Read the data set, carve the validation split and get (cached) features."""
    root = data_root(cfg)
    cycles = read_icbhi(root)
    if cfg.val_fraction > 0:
        cycles = validation_split(cycles, cfg.val_fraction, seed=cfg.val_seed)
    cycles = cycles.reset_index(drop=True)
    features = cycle_features(cycles, cfg.features, progress=progress)
    return Data(cycles, features, str(root), bool(cycles.attrs.get("synthetic", False)))


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


def cosine_lr(epoch: int, epochs: int, lr: float, min_lr: float) -> float:
    """The official per-epoch schedule, epoch = 1..epochs: η_min + (lr−η_min)(1+cos(πe/E))/2."""
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def ma_update(tensors: list[torch.Tensor], previous: list[torch.Tensor], beta: float) -> None:
    """``w ← β·w_old + (1−β)·w_new`` in place (the official ``ma_update``)."""
    with torch.no_grad():
        for new, old in zip(tensors, previous, strict=True):
            new.mul_(1 - beta).add_(old, alpha=beta)


def _float_state(modules: list[nn.Module]) -> list[torch.Tensor]:
    """Every floating parameter and buffer of the modules (what ma_update interpolates)."""
    return [t for m in modules for t in m.state_dict(keep_vars=True).values()
            if t.is_floating_point()]


class Run:
    """One training run's modules, optimiser and step logic; `fit` drives it."""

    def __init__(self, cfg: ExperimentConfig, data: Data, device: torch.device) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        torch.manual_seed(cfg.seed)
        self.model: AST = build_model(cfg.model).to(device)
        if cfg.train.compile:
            for block in self.model.blocks:  # in place: checkpoints keep their key names
                block.compile()
        self.projector = (Projector(cfg.model.embed_dim).to(device)
                          if cfg.method.name == "patchmix_cl" else None)
        modules: list[nn.Module] = [self.model] + ([self.projector] if self.projector else [])
        self.modules = modules
        params = [p for m in modules for p in m.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=cfg.train.lr,
                                          weight_decay=cfg.train.weight_decay)
        train_labels = data.cycles["label"].to_numpy()[data.rows("train")]
        self.weight = (class_weights(train_labels, len(CLASSES)).to(device)
                       if cfg.method.name == "weighted_ce" else None)
        bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto"
                                                 and device.type == "cuda")
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
                         else nullcontext())
        self.dist = distributed.current()
        self.ddp = (DistributedDataParallel(_StepLoss(self), device_ids=(
            [device] if device.type == "cuda" else None)) if self.dist.enabled else None)

    def loss(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The method's loss on one batch x (B, T, F), y (B,).

        With several processes x, y are the global batch on every rank: the random draws and
        input-level mixing use all of it, the transformer runs on this rank's shard only, and
        the loss is computed from the gathered outputs (`patchmix.distributed`). In one
        process `shard` and `gather` return their input.
        """
        m, model = self.cfg.method, self.model
        n, shard, gather = len(y), self.dist.shard, self.dist.gather
        if m.spec_augment or m.name == "specaug":
            x = spec_augment(x, g, gate=m.specaug_gate)
        if m.name in ("ce", "weighted_ce", "specaug"):
            return F.cross_entropy(gather(model(shard(x)), n), y, weight=self.weight)
        lam = sample_lambda(m.mix_beta, g)
        if m.name == "mixup":
            xm, ya, yb, _ = mixup(x, y, lam, g)
            return mixed_cross_entropy(gather(model(shard(xm)), n), ya, yb, lam)
        if m.name == "cutmix":
            xm, ya, yb, _, lam = cutmix(x, y, lam, g)
            return mixed_cross_entropy(gather(model(shard(xm)), n), ya, yb, lam)
        tokens = model.embed(x)  # (B, N, D)
        mix = patch_mix(tokens, lam, g, m.mix_mode, model.grid)
        if m.name == "patchmix_ce":
            logits = gather(model.head(model.encode(shard(mix.tokens))), n)  # (B, C)
            return patchmix_ce(logits, y, mix.index, mix.lam)
        assert self.projector is not None
        # (2b, D): clean and mixed through one batched call (b = B in one process)
        feats = model.encode(torch.cat([shard(tokens), shard(mix.tokens)]))
        clean, mixed = (gather(f, n) for f in feats.chunk(2))  # (B, D) each
        ce = F.cross_entropy(model.head(clean), y)
        target, stop = contrastive_target(clean, self.projector, m.target_type)
        cl = patchmix_contrastive_loss(self.projector(mixed), target, mix.index, mix.lam,
                                       m.temperature, labels=y, negatives=m.negatives,
                                       stop_grad=stop)
        return ce + m.alpha * cl

    def step(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator,
             state: list[torch.Tensor]) -> torch.Tensor:
        """One optimisation step on batch x (B, T, F), y (B,); returns the detached loss.

        ``state`` is `_float_state` of the modules when ``ma_beta`` > 0 (else empty): after the
        optimiser step it is interpolated with its pre-step copy (`ma_update`). For a lower
        peak, the last step's gradients are released before the forward, and the pre-step copy
        of the parameters (which forward and backward leave unchanged) is taken after the
        backward; buffers (BatchNorm statistics move in the forward) are copied first.
        """
        self.optimizer.zero_grad(set_to_none=True)
        buffers = {i: t.detach().clone() for i, t in enumerate(state)
                   if not isinstance(t, nn.Parameter)}
        with self.autocast:
            loss = self.ddp(x, y, g) if self.ddp is not None else self.loss(x, y, g)
        loss.backward()
        previous = [buffers[i] if i in buffers else t.detach().clone()
                    for i, t in enumerate(state)]
        self.optimizer.step()
        if state:
            ma_update(state, previous, self.cfg.train.ma_beta)
        return loss.detach()

    def train_epoch(self, epoch: int, progress: bool) -> float:
        """One epoch over shuffled training batches (drop_last); returns the mean loss."""
        cfg = self.cfg.train
        lr = cosine_lr(epoch, cfg.epochs, cfg.lr, cfg.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        rows = self.data.rows("train")
        order = rows[torch.randperm(len(rows), generator=g).numpy()]
        n_steps = len(order) // cfg.batch_size
        if cfg.max_steps_per_epoch:
            n_steps = min(n_steps, cfg.max_steps_per_epoch)
        if n_steps == 0:
            raise ValueError(f"{len(rows)} training cycles make no batch of {cfg.batch_size}")
        labels = torch.tensor(self.data.cycles["label"].to_numpy(), dtype=torch.long)
        for m in self.modules:
            m.train()
        state = _float_state(self.modules) if cfg.ma_beta > 0 else []
        total = torch.zeros((), device=self.device)
        bar = tqdm(range(n_steps), desc=f"epoch {epoch}/{cfg.epochs}", unit="step",
                   disable=not progress, leave=False)
        for step in bar:
            batch = np.sort(order[step * cfg.batch_size:(step + 1) * cfg.batch_size])
            x = torch.from_numpy(self.data.features[batch])  # (B, T, F)
            if self.device.type == "cuda":  # pinned host memory: an asynchronous copy
                x = x.pin_memory().to(self.device, non_blocking=True)
            y = labels[batch].to(self.device)
            total += self.step(x, y, g, state).float()
        return float(total) / n_steps

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities (n, n_classes) of the given rows (each rank predicts its share
        and every rank gets all of them)."""
        probs = predict_proba(self.model, self.data.features, self.dist.shard_rows(rows),
                              self.cfg.train.eval_batch_size, self.autocast)
        return self.dist.gather_array(probs, len(rows))

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "projector": self.projector.state_dict() if self.projector else None}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.projector is not None:
            self.projector.load_state_dict(state["projector"])


class _StepLoss(nn.Module):
    """`Run.loss` as a module over the run's modules, so DistributedDataParallel wraps it."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.model, self.projector = run.model, run.projector
        self.run = run

    def forward(self, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.run.loss(x, y, g)


@torch.inference_mode()
def predict_proba(model: AST, features: np.ndarray, rows: np.ndarray, batch_size: int = 64,
                  autocast: Any = None) -> np.ndarray:
    """Softmax probabilities (len(rows), n_classes) of feature rows, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(rows), batch_size):
        x = torch.from_numpy(np.asarray(features[rows[i:i + batch_size]])).to(device)
        with autocast if autocast is not None else nullcontext():
            logits = model(x)  # (b, n_classes)
        out.append(logits.float().softmax(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.cfg.n_classes), np.float32)


def fit(cfg: ExperimentConfig, data: Data, out_dir: str | os.PathLike, *,
        progress: bool = True, stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Train (or resume) one run into `out_dir`; returns its summary (also ``summary.json``).

    `stop_after_epoch` ends the run early, as an interruption would, leaving ``last.pt`` to
    resume from; the returned dict then has ``"finished": False``. Under ``torchrun`` every
    rank calls this with the same arguments (`out_dir` on a file system they share, for
    resuming); every rank returns the summary, only rank 0 writes and shows progress.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job, device = distributed.init_from_env(resolve_device(cfg.train.device))
    main, progress = job.is_main, progress and job.is_main
    if cfg.train.threads and device.type == "cpu":
        torch.set_num_threads(cfg.train.threads)
    run = Run(cfg, data, device)
    test_rows, val_rows = data.rows("test"), data.rows("val")
    history: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    start = 1
    checkpoint = out / "last.pt"
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        if saved["config"] != to_dict(cfg):
            raise ValueError(f"{checkpoint} belongs to another configuration: use another "
                             "output folder or delete it")
        run.load_state(saved["state"])
        history, best, start = saved["history"], saved["best"], saved["epoch"] + 1
    if main:
        write_json_atomic(out / "config.json", to_dict(cfg))
    started = time.perf_counter()
    labels = data.cycles["label"].to_numpy()
    for epoch in range(start, cfg.train.epochs + 1):
        loss = run.train_epoch(epoch, progress)
        probs = run.predict(test_rows)
        test = icbhi_scores(labels[test_rows], probs.argmax(1))
        record = {"epoch": epoch, "train_loss": loss,
                  "lr": cosine_lr(epoch, cfg.train.epochs, cfg.train.lr, cfg.train.min_lr),
                  "test_sp": test["sp"], "test_se": test["se"], "test_score": test["score"]}
        if len(val_rows):
            val = icbhi_scores(labels[val_rows], run.predict(val_rows).argmax(1))
            record.update(val_sp=val["sp"], val_se=val["se"], val_score=val["score"])
        history.append(record)
        candidates = {"last": True,
                      "best_test": test["se"] > 5 and test["score"] > best.get(
                          "best_test", {}).get("test_score", -1.0)}
        if len(val_rows):
            candidates["val"] = record["val_score"] > best.get("val", {}).get("val_score", -1.0)
        for protocol, chosen in candidates.items():
            if chosen:
                best[protocol] = {**record, "test": test}
                if not main:
                    continue
                _write_predictions(out / f"predictions-{protocol}.csv", data, test_rows, probs)
                if protocol != "last":
                    _atomic_save({"model": run.model.state_dict(), "config": to_dict(cfg),
                                  "epoch": epoch}, out / f"best-{protocol}.pt")
        if main:
            write_text_atomic(out / "metrics.jsonl",
                              "".join(json.dumps(r) + "\n" for r in history))
            _atomic_save({"state": run.state(), "history": history, "best": best,
                          "epoch": epoch, "config": to_dict(cfg)}, checkpoint)
        if progress:
            tqdm.write(f"epoch {epoch:>3}  loss {loss:.4f}  test Sp {test['sp']:.1f} "
                       f"Se {test['se']:.1f} Score {test['score']:.1f}"
                       + (f"  val Score {record['val_score']:.1f}" if len(val_rows) else ""))
        if stop_after_epoch is not None and epoch == stop_after_epoch < cfg.train.epochs:
            job.barrier()  # rank 0's files are written when any rank returns
            return {"finished": False, "epoch": epoch}
    summary = {
        "finished": True,
        "profile": cfg.profile, "method": cfg.method.name, "seed": cfg.seed,
        "data": data.root, "synthetic": data.synthetic, "weights": run.model.weights,
        "device": str(device), "epochs": cfg.train.epochs,
        **({"processes": job.world_size} if job.enabled else {}),
        "protocols": {p: _protocol_summary(best[p]) for p in PROTOCOLS if p in best},
        "seconds_this_session": round(time.perf_counter() - started, 1),
    }
    if main:
        write_json_atomic(out / "summary.json", summary)
        _atomic_save({"model": run.model.state_dict(), "config": to_dict(cfg),
                      "epoch": cfg.train.epochs}, out / "final.pt")
    job.barrier()
    return summary


def _protocol_summary(entry: dict[str, Any]) -> dict[str, Any]:
    test = entry["test"]
    return {"epoch": entry["epoch"], "sp": test["sp"], "se": test["se"], "score": test["score"],
            "per_class_recall": test["per_class_recall"], "confusion": test["confusion"],
            **({"val_score": entry["val_score"]} if "val_score" in entry else {})}


def _write_predictions(path: Path, data: Data, rows: np.ndarray, probs: np.ndarray) -> None:
    frame = data.cycles.iloc[rows][["recording", "patient", "device", "cycle", "label"]].copy()
    frame["pred"] = probs.argmax(1)
    for i, name in enumerate(CLASSES[:probs.shape[1]]):
        frame[f"p_{name}"] = probs[:, i]
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
