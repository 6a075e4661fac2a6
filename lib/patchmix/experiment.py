"""Cached experiments: what notebooks and the command line call.

`run(cfg)` trains a configuration once and keeps it under ``runs/<hash>/``, the hash covering
the whole configuration and the identity of the data (every source WAV's name, size and mtime,
the cycle boundaries and the split); calling it again returns the stored summary without
training, and an interrupted run resumes. `run_seeds` repeats a configuration over seeds and
`aggregate` reduces the per-seed table to mean ± sd per protocol.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from patchmix.config import ExperimentConfig, config_from_dict, config_hash, to_dict
from patchmix.features import cache_key
from patchmix.icbhi import CLASSES
from patchmix.metrics import icbhi_scores_2class_from_4
from patchmix.model import AST
from patchmix.train import Data, fit, load_data

RUNS_ENV = "PATCHMIX_RUNS"


def runs_dir() -> Path:
    """``$PATCHMIX_RUNS`` if set, else ``runs/`` in the working directory."""
    return Path(os.environ.get(RUNS_ENV) or "runs")


def run_key(cfg: ExperimentConfig, data: Data) -> str:
    """The run's cache name: hash of the configuration and of the data's identity."""
    return config_hash({"config": to_dict(cfg),
                        "data": cache_key(data.cycles, cfg.data.features)})


def baselines(cfg: ExperimentConfig) -> dict[str, list[str]]:
    """The fine-tuning baselines of notebooks 02 and 05: ``{name: overrides}``.

    CE, weighted CE, Mixup, CutMix and Patch-Mix CE, plus the SpecAugment comparison. When the
    profile already applies SpecAugment to every method (the official recipe, on in ``paper``
    and ``demo``), the ``specaug`` method would repeat ``ce`` exactly, so the comparison is
    ``ce_no_specaug`` (CE with SpecAugment switched off) instead.
    """
    names = ["ce", "weighted_ce", "mixup", "cutmix", "patchmix_ce"]
    variants = {name: [f"method.name={name}"] for name in names}
    if cfg.method.spec_augment:
        variants["ce_no_specaug"] = ["method.name=ce", "method.spec_augment=false"]
    else:
        variants["specaug"] = ["method.name=specaug"]
    return variants


def run(cfg: ExperimentConfig, *, data: Data | None = None, root: str | os.PathLike | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Train `cfg` unless a finished run of it is cached; return its summary.

    The summary (``summary.json`` of `patchmix.train.fit`) gains ``run_dir`` and ``cached``
    (True when nothing was trained). Pass `data` to reuse features already loaded.
    """
    data = data if data is not None else load_data(cfg.data, progress=progress)
    out = Path(root) if root is not None else runs_dir()
    out = out / run_key(cfg, data)
    summary_path = out / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        return {**summary, "run_dir": str(out), "cached": True}
    summary = fit(cfg, data, out, progress=progress)
    return {**summary, "run_dir": str(out), "cached": False}


def run_seeds(cfg: ExperimentConfig, seeds: Iterable[int], *, data: Data | None = None,
              root: str | os.PathLike | None = None, progress: bool = True,
              name: str = "") -> pd.DataFrame:
    """`run` for each seed; a tidy table with one row per seed × protocol.

    Columns: ``profile, method, seed, protocol, epoch, sp, se, score`` and one ``recall_<class>``
    per class, plus ``run_dir`` and ``synthetic``. ``method`` is `name` when given (a variant
    such as ``ce_no_specaug``), else ``cfg.method.name``.
    """
    data = data if data is not None else load_data(cfg.data, progress=progress)
    rows = []
    name = name or cfg.method.name
    for seed in seeds:
        summary = run(dataclasses.replace(cfg, seed=int(seed)), data=data, root=root,
                      progress=progress)
        for protocol, result in summary["protocols"].items():
            rows.append({
                "profile": cfg.profile, "method": name, "seed": int(seed),
                "protocol": protocol, "epoch": result["epoch"], "sp": result["sp"],
                "se": result["se"], "score": result["score"],
                **{f"recall_{c}": result["per_class_recall"][c] for c in CLASSES
                   if c in result["per_class_recall"]},  # class order, not the JSON's
                "synthetic": summary["synthetic"], "run_dir": summary["run_dir"],
            })
    return pd.DataFrame(rows)


def aggregate(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd (ddof=1; NaN for one seed) of Sp/Se/Score per method × protocol.

    Columns ``sp_mean, sp_sd, se_mean, …, seeds``, grouped by whichever of ``profile``,
    ``method`` and ``protocol`` the table has.
    """
    metrics = ["sp", "se", "score"]
    keys = [k for k in ("profile", "method", "protocol") if k in table]
    grouped = table.groupby(keys, sort=False)
    out = grouped[metrics].agg(["mean", "std"])
    out.columns = [f"{m}_{s.replace('std', 'sd')}" for m, s in out.columns]
    out["seeds"] = grouped["seed"].nunique()
    return out.reset_index()


def load_trained(path: str | os.PathLike) -> tuple[AST, ExperimentConfig]:
    """A trained model and its configuration from a run's ``final.pt`` or ``best-*.pt``.

    Raises ValueError (naming the file) for a file that is not such a checkpoint, or whose
    weights do not fit the geometry its configuration describes.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated, foreign or not a torch file
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(saved, dict) or "model" not in saved or "config" not in saved:
        raise ValueError(f"{path}: not a patchmix run checkpoint (final.pt or best-*.pt)")
    cfg = config_from_dict(saved["config"])
    model = AST(cfg.model)
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ValueError(f"{path}: weights do not fit the model geometry of its config "
                         f"({first[1].strip() if len(first) > 1 else first[0]})") from None
    return model.eval(), cfg


def history(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run's ``metrics.jsonl`` as a table, one row per epoch."""
    path = Path(run_dir) / "metrics.jsonl"
    return pd.DataFrame([json.loads(line) for line in path.read_text().splitlines() if line])


def histories(table: pd.DataFrame, by: Iterable[str] = ("method",)) -> pd.DataFrame:
    """The per-epoch histories of every run in a `run_seeds` table, long format.

    Each row of `history` gains the run's ``seed`` and its `by` columns (e.g. ``method``).
    """
    keys = ["run_dir", "seed", *by]
    runs = table[keys].drop_duplicates("run_dir")
    frames = [history(r.run_dir).assign(**{k: getattr(r, k) for k in keys[1:]})
              for r in runs.itertuples(index=False)]
    return pd.concat(frames, ignore_index=True)


def summed_confusion(table: pd.DataFrame, protocol: str) -> np.ndarray:
    """The test confusion matrix of `protocol`, summed over the runs of a `run_seeds` table."""
    total = None
    for run_dir in dict.fromkeys(table["run_dir"]):
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        cm = np.asarray(summary["protocols"][protocol]["confusion"], dtype=np.int64)
        total = cm if total is None else total + cm
    if total is None:
        raise ValueError("no runs in the table")
    return total


def binary_scores(table: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Normal-vs-abnormal Sp/Se/Score (PAPER.md §1's 2-class Score) of each run's predictions.

    Read from the runs' ``predictions-<protocol>.csv``; one row per run that has the protocol
    (``best_test`` is missing when no epoch reached Se > 5), with its ``method`` and ``seed``.
    """
    rows = []
    chosen = table[table["protocol"] == protocol].drop_duplicates("run_dir")
    for r in chosen.itertuples(index=False):
        pred = pd.read_csv(Path(r.run_dir) / f"predictions-{protocol}.csv")
        s = icbhi_scores_2class_from_4(pred["label"], pred["pred"])
        rows.append({"method": r.method, "seed": r.seed, "protocol": protocol,
                     "sp": s["sp"], "se": s["se"], "score": s["score"]})
    return pd.DataFrame(rows)
