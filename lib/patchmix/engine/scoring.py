"""Scores by test part and score family, and trained models scored on another data set.

SPRSound has two test parts, ``test_intra`` (patients also in train) and ``test_inter`` (new
patients), and a score family of its own beside ICBHI's (`patchmix.engine.metrics.SCORE_FAMILIES`).
Training scores all test parts together each epoch (`patchmix.data.loading.Data.test_rows`); the
functions here split a run's saved predictions by part and rescore them in every family
(`part_scores`), with patient-bootstrap intervals of the seed-mean (`part_intervals`), and
score models trained on one data set on the test parts of another, in the four shared classes
(`cross_scores`: ICBHI or synthetic → SPRSound and back).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from patchmix.data.loading import Data, load_data
from patchmix.engine.experiment import load_trained
from patchmix.engine.metrics import ALL, SCORE_FAMILIES, patient_bootstrap_ci, scores_by_part
from patchmix.engine.train import predict_proba
from patchmix.model.ast import AST

METRICS: dict[str, tuple[str, ...]] = {"icbhi": ("sp", "se", "score"),
                                       "sprsound": ("sp", "se", "as", "hs", "score")}
"""The metrics each score family reports (both share Sp and Se; their Scores differ)."""


def predictions(run_dir: str | os.PathLike, protocol: str, cycles: pd.DataFrame
                ) -> pd.DataFrame:
    """A run's ``predictions-<protocol>.csv`` with each cycle's ``part``: its split in
    `cycles`, the table the run was trained on (joined on recording and cycle)."""
    pred = pd.read_csv(Path(run_dir) / f"predictions-{protocol}.csv",
                       dtype={"recording": str, "patient": str})
    split = cycles.astype({"recording": str}).set_index(["recording", "cycle"])["split"]
    keys = pd.MultiIndex.from_frame(pred[["recording", "cycle"]])
    part = split.reindex(keys)
    if part.isna().any():
        missing = keys[part.isna().to_numpy()][0]
        raise ValueError(f"{run_dir}: its predictions name cycles this table lacks (first: "
                         f"recording {missing[0]}, cycle {missing[1]}): scored on other data?")
    return pred.assign(part=part.astype(str).to_numpy())


def _rows(scores: dict[str, dict[str, dict]], **columns: Any) -> list[dict[str, Any]]:
    return [{**columns, "part": part, "family": family, "n": s["n"],
             **{m: s[m] for m in METRICS[family]}}
            for part, by_family in scores.items() for family, s in by_family.items()]


def part_scores(table: pd.DataFrame, protocol: str, cycles: pd.DataFrame,
                families: Sequence[str] = SCORE_FAMILIES) -> pd.DataFrame:
    """Every run's test scores under `protocol`, per part and score family.

    One row per run of a `patchmix.engine.experiment.run_seeds` table, part (each test part, and
    ``all`` when there are several) and family: ``method, seed, protocol, part, family, n`` and
    the family's `METRICS` (percent; ``as`` and ``hs`` empty for ICBHI's family). Runs that
    lack the protocol (``best_test`` when no epoch reached Se > 5) are left out.
    """
    rows = []
    for r in table[table["protocol"] == protocol].drop_duplicates("run_dir").itertuples():
        pred = predictions(r.run_dir, protocol, cycles)
        scores = scores_by_part(pred["label"], pred["pred"], pred["part"], families)
        rows += _rows(scores, method=r.method, seed=r.seed, protocol=protocol)
    return pd.DataFrame(rows)


def part_intervals(table: pd.DataFrame, protocol: str, cycles: pd.DataFrame,
                   families: Sequence[str] = SCORE_FAMILIES, *, n_boot: int = 1000,
                   level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Patient-bootstrap intervals of each method's seed-mean scores, per part and family.

    One row per method, part (and ``all``) and family: ``method, protocol, part, family`` and
    ``<metric>_lo``, ``<metric>_hi`` for the family's `METRICS`. As in
    `patchmix.engine.experiment.bootstrap_intervals`, a replicate redraws the part's patients once
    for all seeds; the interval says how far the reported mean could move with other patients.
    """
    rows = []
    chosen = table[table["protocol"] == protocol].drop_duplicates("run_dir")
    for method, runs in chosen.groupby("method", sort=False):
        preds = [predictions(d, protocol, cycles) for d in runs["run_dir"]]
        first = preds[0]
        for other in preds[1:]:  # the same test cycles in the same order, or no seed-mean
            if not other[["recording", "cycle"]].equals(first[["recording", "cycle"]]):
                raise ValueError(f"{method}: the runs' predictions cover different cycles")
        stacked = np.stack([p["pred"].to_numpy() for p in preds])  # (seeds, N)
        parts = list(dict.fromkeys(first["part"]))
        masks = {p: (first["part"] == p).to_numpy() for p in parts}
        if len(parts) > 1:
            masks[ALL] = np.ones(len(first), dtype=bool)
        for part, mask in masks.items():
            for family in families:
                ci = patient_bootstrap_ci(first["label"].to_numpy()[mask], stacked[:, mask],
                                          first["patient"].to_numpy()[mask], n_boot=n_boot,
                                          level=level, seed=seed, family=family)
                rows.append({"method": method, "protocol": protocol, "part": part,
                             "family": family,
                             **{f"{m}_{end}": ci[m][i] for m in METRICS[family]
                                for i, end in enumerate(("lo", "hi"))}})
    return pd.DataFrame(rows)


def model_scores(model: AST, data: Data, batch_size: int = 64,
                 families: Sequence[str] | None = None) -> dict[str, dict[str, dict]]:
    """A trained model's scores on every test part of `data` (and on all together):
    `patchmix.engine.metrics.scores_by_part` in `families` (default: the data set's own,
    `patchmix.data.dataset.DataSet.score_families`)."""
    rows = data.test_rows()
    pred = predict_proba(model, data.features, rows, batch_size).argmax(1)  # (len(rows),)
    return scores_by_part(data.cycles["label"].to_numpy()[rows], pred,
                          data.cycles["split"].to_numpy()[rows],
                          families or data.dataset.score_families)


def cross_scores(table: pd.DataFrame, root: str | os.PathLike,
                 families: Sequence[str] | None = None) -> pd.DataFrame:
    """The final weights (``final.pt``) of every run in a `run_seeds` table, scored on the
    test parts of the data set in `root`, in the four shared classes.

    The data is read once, with the features the runs were trained on (all runs must share
    them). One row per run, part and family: ``method, seed, part, family, n`` and the
    family's `METRICS`; the frame's ``attrs["data"]`` says which data it was scored on.
    """
    runs = table.drop_duplicates("run_dir")
    if runs.empty:
        raise ValueError("no runs to score")
    rows, features, data = [], None, None
    for r in runs.itertuples():
        model, cfg = load_trained(Path(r.run_dir) / "final.pt")
        if data is None:
            features = cfg.data.features
            data = load_data(dataclasses.replace(cfg.data, root=str(root)), progress=False)
        elif cfg.data.features != features:
            raise ValueError(f"{r.run_dir}: trained on other features than the table's first "
                             "run; score runs with different features apart")
        rows += _rows(model_scores(model, data, cfg.train.eval_batch_size, families),
                      method=r.method, seed=r.seed)
    frame = pd.DataFrame(rows)
    frame.attrs["data"] = data.describe()
    return frame
