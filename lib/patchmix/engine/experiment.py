"""The run cache: a configuration trained once, its results read back as tables.

`run(cfg, data=...)` trains a configuration once and keeps it under ``runs/<hash>/``, the hash
covering the whole configuration and the identity of the data
(`patchmix.data.loading.Data.identity`: every source WAV's name and size, the cycle boundaries,
the labels and the split); calling it again returns the stored summary without training, and
an interrupted run resumes. Before training, `run` also looks in the **shipped runs**
(``shipped/``, `shipped_dir`): the demo runs committed with the repository, read-only, so that
a fresh clone's notebooks render without training (`patchmix.companion.plan.export` writes
them). `run_seeds` repeats a configuration over seeds and `aggregate` reduces the per-seed
table to mean ± sd per protocol; `load_trained`, `history`, `bootstrap_intervals` and
`binary_scores` read a run's files back. Which runs a notebook needs is the companion's
business (`patchmix.companion.notebook_runs`).
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

from patchmix.config import ExperimentConfig, config_from_dict, config_hash, result_config, to_dict
from patchmix.data.dataset import CLASSES
from patchmix.data.loading import Data
from patchmix.engine.integrity import verify_shipped
from patchmix.engine.metrics import icbhi_scores_2class_from_4, patient_bootstrap_ci
from patchmix.engine.train import finished, fit, read_checkpoint
from patchmix.model import distributed
from patchmix.model.ast import AST
from patchmix.model.backbone import build_model

RUNS_ENV = "PATCHMIX_RUNS"
SHIPPED_ENV = "PATCHMIX_SHIPPED"
SHIPPED = "shipped"  # the committed runs, in the repository root


def runs_dir() -> Path:
    """``$PATCHMIX_RUNS`` if set, else ``runs/`` in the working directory."""
    return Path(os.environ.get(RUNS_ENV) or "runs")


def shipped_dir() -> Path | None:
    """Where `run` looks for shipped runs after the run cache: ``$PATCHMIX_SHIPPED`` if set
    (``off``: nowhere, as ``make reproduce`` trains everything itself), else ``shipped/`` in
    the working directory."""
    value = os.environ.get(SHIPPED_ENV, SHIPPED)
    return None if value in ("", "off") else Path(value)


def run_key(cfg: ExperimentConfig, data: Data, processes: int = 1) -> str:
    """The run's cache name: hash of what decides its result (`result_config`), of the data's
    identity and, for a run over several processes (``torchrun``), of their number — its
    batches are split differently, so it is a different run."""
    key: dict[str, Any] = {"config": to_dict(result_config(cfg)), "data": data.identity()}
    if processes > 1:
        key["processes"] = processes
    return config_hash(key)


def run(cfg: ExperimentConfig, *, data: Data, root: str | os.PathLike | None = None,
        progress: bool = True, shipped: bool = True) -> dict[str, Any]:
    """Train `cfg` unless a finished run of it is cached or shipped; return its summary.

    The summary (``summary.json`` of `patchmix.engine.train.fit`) gains ``run_dir`` (where its files
    are: the run cache, or ``shipped/`` when only the shipped runs have it) and ``cached``
    (True when nothing was trained). An explicit `root` is the only place looked in, and
    ``shipped=False`` (``patchmix train``, the pool's workers) skips the shipped runs: the run
    is then trained into the run cache. Pass `data` to reuse features already loaded. A
    cached or shipped run whose files disagree is refused (`patchmix.engine.integrity`): a
    RunIntegrityError naming the run and the file. `data` is `cfg`'s data set, loaded once by
    the caller for all its runs (`patchmix.data.loading.load_data`).
    """
    key = run_key(cfg, data, distributed.env_world_size())
    out = (Path(root) if root is not None else runs_dir()) / key
    summary = finished(out)
    if summary is not None:
        return {**summary, "run_dir": str(out), "cached": True}
    layer = shipped_dir() if root is None and shipped else None
    if layer is not None and (layer / key).is_dir():
        verify_shipped(layer, key)  # byte for byte as exported, or one line naming the file
        if summary := finished(layer / key, weights=False):
            return {**summary, "run_dir": str(layer / key), "cached": True}
    summary = fit(cfg, data, out, progress=progress)  # trains, resumes or repairs
    return {**summary, "run_dir": str(out), "cached": False}


def run_seeds(cfg: ExperimentConfig, seeds: Iterable[int], *, data: Data,
              root: str | os.PathLike | None = None, progress: bool = True,
              name: str = "") -> pd.DataFrame:
    """`run` for each seed; a tidy table with one row per seed × protocol.

    Columns: ``profile, method, seed, protocol, epoch, sp, se, score`` and one ``recall_<class>``
    per class, plus ``run_dir`` and ``synthetic``. ``method`` is `name` when given (a variant
    such as ``ce_no_specaug``), else ``cfg.method.name``.
    """
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
    saved = read_checkpoint(path, ("model", "config"), "run checkpoint (final.pt or best-*.pt)")
    cfg = config_from_dict(saved["config"])
    # the configured backbone, randomly initialised: the checkpoint fills every weight, so no
    # pretrained file is needed to read it back
    model = build_model(dataclasses.replace(cfg.model, weights="none"))
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


def bootstrap_intervals(table: pd.DataFrame, protocol: str, *, n_boot: int = 1000,
                        level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Patient-bootstrap intervals of each method's seed-mean test Sp/Se/Score under
    `protocol` (`patchmix.engine.metrics.patient_bootstrap_ci` on the runs' predictions).

    One row per method of the `run_seeds` table: ``method, protocol, sp_lo, sp_hi, se_lo,
    se_hi, score_lo, score_hi, n_valid``. Every replicate resamples the test patients once for
    all of a method's seeds, so the interval is that of the mean the tables report; it shows
    how much the Score could move with another draw of patients, not with another seed.
    """
    rows = []
    chosen = table[table["protocol"] == protocol].drop_duplicates("run_dir")
    for method, runs in chosen.groupby("method", sort=False):
        preds = [pd.read_csv(Path(d) / f"predictions-{protocol}.csv") for d in runs["run_dir"]]
        first = preds[0]
        for other in preds[1:]:  # the same test cycles, in the same order
            if not other[["recording", "cycle"]].equals(first[["recording", "cycle"]]):
                raise ValueError(f"{method}: the runs' predictions cover different cycles")
        ci = patient_bootstrap_ci(first["label"], np.stack([p["pred"] for p in preds]),
                                  first["patient"].astype(str), n_boot=n_boot, level=level,
                                  seed=seed)
        rows.append({"method": method, "protocol": protocol,
                     **{f"{m}_{end}": ci[m][i] for m in ("sp", "se", "score")
                        for i, end in enumerate(("lo", "hi"))}, "n_valid": ci["n_valid"]})
    return pd.DataFrame(rows)


def binary_scores(table: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Normal-vs-abnormal Sp/Se/Score (docs/evaluation.md#the-2-class-score) of each run's
    predictions.

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
