"""The training engine: one run of a registered method, epoch by epoch, evaluated and resumable.

`fit(cfg, data, out_dir)` trains the method ``cfg.method.name`` (`patchmix.methods`; the engine
knows nothing about any one method): Adam with coupled L2, a cosine learning rate set once per
epoch, optional bf16 autocast, the official ``ma_update`` weight interpolation after every step,
and an evaluation of the test (and validation) cycles after every epoch. All three selection
protocols are recorded for every run:

- ``best_test``: the epoch with the best test Score among those with Se > 5 — what the paper
  and the official code report (model selection on the test set);
- ``last``: the last epoch;
- ``val``: the epoch with the best Score on the patient-grouped validation split carved from
  train (only when ``data.val_fraction > 0``).

Each epoch appends to ``metrics.jsonl`` and atomically rewrites ``last.pt``; an interrupted run
resumes from it and ends with the same numbers. ``summary.json`` is written last, after
``final.pt``: a run is finished exactly when it is there (`finished`), and a run killed before
it is repaired by the next call. One process at a time writes into a run folder (its lock), and
a fresh run starts with none of an earlier run's files beside it. Randomness comes from the run
seed: the model's (and the method's) initialisation, then one generator per epoch for the batch
order and every augmentation.

Under ``torchrun`` (several processes) the step's modules are wrapped in
DistributedDataParallel, each step's global batch of ``train.batch_size`` cycles is shared among
the ranks (`patchmix.methods.Net`), evaluation predictions are gathered from all ranks, and only
rank 0 writes files: `patchmix.model.distributed` says how, and why the metrics are those of one
process.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from patchmix.atomic import (
    atomic_path,
    clean_temporaries,
    ensure_space,
    exclusive,
    write_json_atomic,
    write_text_atomic,
)
from patchmix.config import ExperimentConfig, config_from_dict, result_config, to_dict
from patchmix.data.dataset import CLASSES
from patchmix.data.errors import DataError
from patchmix.data.loading import Data
from patchmix.engine.integrity import check_consistent
from patchmix.engine.metrics import icbhi_scores
from patchmix.methods import METHODS, Method, Net
from patchmix.model import distributed
from patchmix.model.ast import AST
from patchmix.model.augment import spec_augment
from patchmix.model.backbone import BACKBONES, build_model

PROTOCOLS: tuple[str, ...] = ("best_test", "last", "val")
# What a run writes into its folder; a fresh run removes whatever of these an earlier one left
RUN_FILES: tuple[str, ...] = ("config.json", "metrics.jsonl", "predictions-*.csv", "best-*.pt",
                              "last.pt", "final.pt", "summary.json")
# The official code lets an epoch be the best only if its Se > 5, so that an epoch calling
# (almost) every cycle normal — Score ≈ 50 from Sp ≈ 100 alone — is never picked.
MIN_SE_BEST_TEST = 5.0


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
    if len(tensors) != len(previous):
        raise ValueError(f"{len(tensors)} tensors but {len(previous)} previous values")
    with torch.no_grad():  # one call per operation over all tensors, the same arithmetic
        torch._foreach_mul_(tensors, 1 - beta)
        torch._foreach_add_(tensors, previous, alpha=beta)


def _float_state(modules: list[nn.Module]) -> list[torch.Tensor]:
    """Every floating parameter and buffer of the modules (what ma_update interpolates)."""
    return [t for m in modules for t in m.state_dict(keep_vars=True).values()
            if t.is_floating_point()]


class Objective(nn.Module):
    """One batch's loss terms, as a module over the model and the method (so that
    DistributedDataParallel can wrap both): the recipe's SpecAugment when it is on, then the
    method's `loss`."""

    def __init__(self, model: AST, method: Method, net: Net) -> None:
        super().__init__()
        self.model, self.method = model, method
        self.net = net

    def forward(self, x: Tensor, y: Tensor, g: torch.Generator) -> dict[str, Tensor]:
        m = self.method
        if m.always_spec_augment or m.cfg.spec_augment:
            x = spec_augment(x, g, gate=m.cfg.specaug_gate)  # (B, T, F), a new tensor
        return m.loss(self.net, x, y, g)


class Run:
    """One training run's modules, optimiser and step; `fit` drives it."""

    def __init__(self, cfg: ExperimentConfig, data: Data, device: torch.device) -> None:
        self.cfg, self.data, self.device = cfg, data, device
        labels = data.cycles["label"].to_numpy()
        if len(labels) and not 0 <= labels.min() <= labels.max() < cfg.model.n_classes:
            raise ValueError(f"model.n_classes is {cfg.model.n_classes}, but the data's labels "
                             f"run from {labels.min()} to {labels.max()}")
        torch.manual_seed(cfg.seed)  # fixes the initialisation of the model, then the method's
        self.model: AST = build_model(cfg.model).to(device)
        if cfg.train.compile:
            for block in self.model.blocks:  # in place: checkpoints keep their key names
                block.compile()
        train_labels = labels[data.rows("train")]
        self.method: Method = METHODS.get(cfg.method.name)(cfg, train_labels).to(device)
        self.modules: list[nn.Module] = [self.model, self.method]
        params = [p for m in self.modules for p in m.parameters()]
        # foreach: one kernel per operation over every parameter (the for-loop Adam, which
        # CPU would otherwise get, gives the same numbers more slowly)
        self.optimizer = torch.optim.Adam(params, lr=cfg.train.lr,
                                          weight_decay=cfg.train.weight_decay, foreach=True)
        bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto"
                                                 and device.type == "cuda")
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
                         else nullcontext())
        self.dist = distributed.current()
        self.net = Net(self.model, self.dist)
        self.objective = Objective(self.model, self.method, self.net)
        self.ddp = (DistributedDataParallel(self.objective, device_ids=(
            [device] if device.type == "cuda" else None)) if self.dist.enabled else None)

    def step(self, x: Tensor, y: Tensor, g: torch.Generator,
             state: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One optimisation step on batch x (B, T, F), y (B,); returns the detached loss and
        its terms.

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
            terms = (self.ddp or self.objective)(x, y, g)
            loss = functools.reduce(operator.add, terms.values())  # the objective: their sum
        loss.backward()
        previous = [buffers[i] if i in buffers else t.detach().clone()
                    for i, t in enumerate(state)]
        self.optimizer.step()
        if state:  # the official ma_update: each step goes only (1 − β) of the optimiser's way
            ma_update(state, previous, self.cfg.train.ma_beta)
        return loss.detach(), {k: v.detach() for k, v in terms.items()}

    def train_epoch(self, epoch: int, progress: bool) -> dict[str, float]:
        """One epoch over shuffled training batches (drop_last); returns the mean loss
        (``"loss"``) and the mean of each of its terms."""
        cfg = self.cfg.train
        lr = cosine_lr(epoch, cfg.epochs, cfg.lr, cfg.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # One generator per epoch, seeded from the run seed and the epoch number alone: a
        # resumed run draws exactly what an uninterrupted one would. 1,000,003 is a prime above
        # any epoch count, so no two (seed, epoch) pairs share a generator.
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
        totals: dict[str, Tensor] = {}
        bar = tqdm(range(n_steps), desc=f"epoch {epoch}/{cfg.epochs}", unit="step",
                   disable=not progress, leave=False)
        for step in bar:
            # sorted rows: a batch reads the memory-mapped features front to back
            batch = np.sort(order[step * cfg.batch_size:(step + 1) * cfg.batch_size])
            x = torch.from_numpy(self.data.features[batch])  # (B, T, F)
            if self.device.type == "cuda":  # pinned host memory: an asynchronous copy
                x = x.pin_memory().to(self.device, non_blocking=True)
            y = labels[batch].to(self.device)
            loss, terms = self.step(x, y, g, state)
            for name, value in {"loss": loss, **terms}.items():
                previous = totals.get(name, torch.zeros((), device=self.device))
                totals[name] = previous + value.float()
        return {name: float(total) / n_steps for name, total in totals.items()}

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities (n, n_classes) of the given rows (each rank predicts its share
        and every rank gets all of them)."""
        probs = predict_proba(self.model, self.data.features, self.dist.shard_rows(rows),
                              self.cfg.train.eval_batch_size, self.autocast)
        return self.dist.gather_array(probs, len(rows))

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "method": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])


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


@dataclass
class Record:
    """What a run has recorded: one entry per epoch, and each protocol's chosen epoch (with
    its full test scores); saved in ``last.pt`` so that a resumed run continues it."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, dict[str, Any]] = field(default_factory=dict)

    def choose(self, entry: dict[str, Any], test: dict[str, Any]) -> list[str]:
        """Add an epoch's entry; return the protocols that now pick it."""
        self.history.append(entry)
        best_test = self.best.get("best_test", {}).get("test_score", -1.0)
        wins = {"last": True,
                "best_test": test["se"] > MIN_SE_BEST_TEST and test["score"] > best_test}
        if "val_score" in entry:
            wins["val"] = entry["val_score"] > self.best.get("val", {}).get("val_score", -1.0)
        chosen = [protocol for protocol, won in wins.items() if won]
        for protocol in chosen:
            self.best[protocol] = {**entry, "test": test}
        return chosen

    def summary(self) -> dict[str, dict[str, Any]]:
        """Each recorded protocol's epoch and test scores, in `PROTOCOLS` order."""
        out = {}
        for protocol in (p for p in PROTOCOLS if p in self.best):
            chosen = self.best[protocol]
            test = chosen["test"]
            out[protocol] = {
                "epoch": chosen["epoch"], "sp": test["sp"], "se": test["se"],
                "score": test["score"], "per_class_recall": test["per_class_recall"],
                "confusion": test["confusion"],
                **({"val_score": chosen["val_score"]} if "val_score" in chosen else {})}
        return out


def check_names(cfg: ExperimentConfig) -> None:
    """Raise ValueError unless ``method.name`` and ``model.backbone`` are registered: the
    configuration holds names only (`patchmix.registry`). The entry points call this before
    any feature is computed; building the run would say the same later."""
    METHODS.get(cfg.method.name)
    BACKBONES.get(cfg.model.backbone)


def check_splits(data: Data) -> None:
    """Raise DataError unless `data` has cycles to learn from and to be scored on: a run
    with an empty train or test split would train or score nothing and be cached as
    finished, every score NaN."""
    for split, rows in (("train", data.rows("train")), ("test", data.test_rows())):
        if not len(rows):
            raise DataError(f"{data.root}: no {split} cycle ({data.describe()}: "
                            f"{len(data.cycles)} cycles, none in {split}); check its split "
                            "file or the recordings' split")


def fit(cfg: ExperimentConfig, data: Data, out_dir: str | os.PathLike, *,
        progress: bool = True, stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Train (or resume, or repair) one run into `out_dir`; returns its summary (also
    ``summary.json``).

    `stop_after_epoch` ends the run early, as an interruption would, leaving ``last.pt`` to
    resume from; the returned dict then has ``"finished": False``. Under ``torchrun`` every
    rank calls this with the same arguments (`out_dir` on a file system they share, for
    resuming); every rank returns the summary, only rank 0 writes and shows progress. Raises
    `patchmix.atomic.FolderBusy` when another process is writing into `out_dir`, and
    DataError when the data has no train or no test cycle (`check_splits`).
    """
    out = Path(out_dir)
    job, device = distributed.init_from_env(resolve_device(cfg.train.device))
    with exclusive(out, "another training run") if job.is_main else nullcontext():
        return _fit(cfg, data, out, job, device, progress and job.is_main, stop_after_epoch)


def _fit(cfg: ExperimentConfig, data: Data, out: Path, job: distributed.Dist,
         device: torch.device, progress: bool, stop_after_epoch: int | None) -> dict[str, Any]:
    check_names(cfg)
    check_splits(data)
    writes = job.is_main
    if writes:  # what a killed run left half-written: this process holds the folder now
        clean_temporaries(out, all_of_them=True)
    if cfg.train.threads and device.type == "cpu":
        torch.set_num_threads(cfg.train.threads)
    run = Run(cfg, data, device)
    # An interrupted run goes on from its last finished epoch: every later epoch's draws come
    # from the seed and the epoch number alone, so it ends as if it had never stopped.
    record, start = _resume(run, out / "last.pt", device)
    if writes and start == 1:  # a fresh run: no file of an earlier one may stay beside it
        _remove_run_files(out)
    if writes:
        write_json_atomic(out / "config.json", to_dict(cfg))
    started = time.perf_counter()
    test_rows, val_rows = data.test_rows(), data.rows("val")
    labels = data.cycles["label"].to_numpy()
    for epoch in range(start, cfg.train.epochs + 1):
        losses = run.train_epoch(epoch, progress)
        if not math.isfinite(losses["loss"]):  # nothing of a diverged epoch is kept
            raise ValueError(f"epoch {epoch}: the training loss is {losses['loss']}, not a "
                             f"finite number: the run diverged (train.lr is {cfg.train.lr:g}); "
                             "nothing of this epoch was saved")
        probs = run.predict(test_rows)
        test = icbhi_scores(labels[test_rows], probs.argmax(1))
        entry = {"epoch": epoch, "train_loss": losses.pop("loss"),
                 **{f"loss_{name}": value for name, value in losses.items()},
                 "lr": cosine_lr(epoch, cfg.train.epochs, cfg.train.lr, cfg.train.min_lr),
                 "test_sp": test["sp"], "test_se": test["se"], "test_score": test["score"]}
        if len(val_rows):
            val = icbhi_scores(labels[val_rows], run.predict(val_rows).argmax(1))
            entry.update(val_sp=val["sp"], val_se=val["se"], val_score=val["score"])
        chosen = record.choose(entry, test)
        if writes:
            _write_epoch(out, run, record, chosen, test_rows, probs)
        if progress:
            # progress, like the bars: on stderr, so a notebook's outputs do not depend on
            # whether its runs were trained or read from the cache
            tqdm.write(f"epoch {epoch:>3}  loss {entry['train_loss']:.4f}  test Sp "
                       f"{test['sp']:.1f} Se {test['se']:.1f} Score {test['score']:.1f}"
                       + (f"  val Score {entry['val_score']:.1f}" if len(val_rows) else ""),
                       file=sys.stderr)
        if stop_after_epoch is not None and epoch == stop_after_epoch < cfg.train.epochs:
            job.barrier()  # rank 0's files are written when any rank returns
            return {"finished": False, "epoch": epoch}
    summary = {
        "finished": True,
        "profile": cfg.profile, "method": cfg.method.name, "seed": cfg.seed,
        "data": data.root, "synthetic": data.synthetic, "weights": run.model.weights,
        "device": str(device), "epochs": cfg.train.epochs,
        **({"processes": job.world_size} if job.enabled else {}),
        "protocols": record.summary(),
        "seconds_this_session": round(time.perf_counter() - started, 1),
    }
    if writes:
        _atomic_save(_weights(run, cfg.train.epochs), out / "final.pt")
        write_json_atomic(out / "summary.json", summary)  # last: the run is finished now
    job.barrier()
    return summary


def finished(out_dir: str | os.PathLike, *, weights: bool = True) -> dict[str, Any] | None:
    """The summary of the finished run in `out_dir`, or None if it is not finished.

    A run is finished when its last file, ``summary.json``, is there and readable, with
    ``final.pt`` beside it; anything less (a kill before the end, a damaged file) is an
    unfinished run, which `fit` resumes or repairs from ``last.pt``. ``weights=False`` does
    not ask for ``final.pt``: a shipped run (`patchmix.companion.plan.export`) keeps its weights
    only where a notebook reads them.

    A finished run whose summary disagrees with its predictions or its history (an edited
    ``summary.json``, a deleted prediction file) is refused: RunIntegrityError
    (`patchmix.engine.integrity.check_consistent`), naming the run and the file.
    """
    out = Path(out_dir)
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):  # missing, unreadable or not JSON
        return None
    if (not isinstance(summary, dict) or summary.get("finished") is not True
            or not isinstance(summary.get("protocols"), dict)
            or (weights and not (out / "final.pt").is_file())):
        return None
    check_consistent(out, summary)
    return summary


def read_checkpoint(path: str | os.PathLike, keys: tuple[str, ...], what: str,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint of this project holding `keys`, or a ValueError naming the file (missing,
    empty, truncated, not a torch file, or another kind of checkpoint than `what`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    try:
        saved = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # truncated, foreign or not a torch file
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(saved, dict) or any(k not in saved for k in keys):
        raise ValueError(f"{path}: not a patchmix {what}")
    return saved


def _resume(run: Run, checkpoint: Path, device: torch.device) -> tuple[Record, int]:
    """The record so far and the first epoch to train: from `checkpoint` if it exists."""
    if not checkpoint.is_file():
        return Record(), 1
    saved = read_checkpoint(checkpoint, ("state", "history", "best", "epoch", "config"),
                            "resume checkpoint (last.pt); delete it to start the run again",
                            device)
    # another thread count or data folder continues the same run (`result_config`)
    if result_config(config_from_dict(saved["config"])) != result_config(run.cfg):
        raise ValueError(f"{checkpoint} belongs to another configuration: use another "
                         f"output folder, or delete {checkpoint.parent} to train this one there")
    run.load_state(saved["state"])
    return Record(saved["history"], saved["best"]), saved["epoch"] + 1


def _remove_run_files(out: Path) -> None:
    for pattern in RUN_FILES:
        for path in out.glob(pattern):
            path.unlink()


def _write_epoch(out: Path, run: Run, record: Record, chosen: list[str],
                 test_rows: np.ndarray, probs: np.ndarray) -> None:
    """An epoch's files: the predictions (and weights) of every protocol that picks it, the
    history, and ``last.pt`` — written last, so it never runs ahead of the others."""
    epoch = record.history[-1]["epoch"]
    for protocol in chosen:
        _write_predictions(out / f"predictions-{protocol}.csv", run.data, test_rows, probs)
        if protocol != "last":  # the last epoch's weights are final.pt
            _atomic_save(_weights(run, epoch), out / f"best-{protocol}.pt")
    write_text_atomic(out / "metrics.jsonl",
                      "".join(json.dumps(r) + "\n" for r in record.history))
    _atomic_save({"state": run.state(), "history": record.history, "best": record.best,
                  "epoch": epoch, "config": to_dict(run.cfg)}, out / "last.pt")


def _weights(run: Run, epoch: int) -> dict[str, Any]:
    """What `patchmix.engine.experiment.load_trained` reads: the model, its config, the epoch; and
    the method's own modules (the contrastive projector), which `patchmix.companion.latent`
    reads."""
    return {"model": run.model.state_dict(), "method": run.method.state_dict(),
            "config": to_dict(run.cfg), "epoch": epoch}


def _write_predictions(path: Path, data: Data, rows: np.ndarray, probs: np.ndarray) -> None:
    frame = data.cycles.iloc[rows][["recording", "patient", "device", "cycle", "label"]].copy()
    frame["pred"] = probs.argmax(1)
    for i, name in enumerate(CLASSES[:probs.shape[1]]):
        frame[f"p_{name}"] = probs[:, i]
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically, after checking there is room for it: a full disk is one
    clear error, not torch's (and no temporary is left to keep the disk full)."""
    needed = _nbytes(obj) + 2**20
    ensure_space(path.parent, needed, path.name)
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except (RuntimeError, OSError):  # the disk may have filled while writing
            ensure_space(path.parent, needed, path.name)
            raise


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in a nested checkpoint object."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 0
