"""Cached experiments and the run plan: what notebooks and the command line call.

`run(cfg)` trains a configuration once and keeps it under ``runs/<hash>/``, the hash covering
the whole configuration and the identity of the data (`patchmix.datasets.Data.identity`: every
source WAV's name and size, the cycle boundaries, the labels and the split); calling it again
returns the stored summary without training, and an interrupted run resumes. Before training,
`run` also looks in the **shipped runs** (``shipped/``, `shipped_dir`): the demo runs committed
with the repository, read-only, so that a fresh clone's notebooks render without training
(`patchmix.plan.export` writes them). `run_seeds`
repeats a configuration over seeds and `aggregate` reduces the per-seed table to mean ± sd per
protocol.

The run plan declares which runs each notebook needs (`NOTEBOOK_RUNS`), as groups of
`PlannedRun`s built from a notebook's configuration: the fine-tuning ``baselines``, the
``comparison`` of the paper's method with its reference, and the ``ablations`` of the paper's
method over the grid `ABLATIONS`. Which methods fill them comes from the method registry.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from patchmix import distributed
from patchmix.config import (
    ExperimentConfig,
    config_from_dict,
    config_hash,
    get_value,
    knob_label,
    result_config,
    to_dict,
    with_values,
)
from patchmix.datasets import CLASSES, Data, dataset_root, load_data
from patchmix.integrity import verify_shipped
from patchmix.methods import Method, baseline_methods, method_names, method_with_role
from patchmix.metrics import icbhi_scores_2class_from_4, patient_bootstrap_ci
from patchmix.model import AST, build_model
from patchmix.train import finished, fit, read_checkpoint

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


# --- the run plan --------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    """One configuration a notebook trains (for each of its seeds)."""

    name: str  # the tables' ``method`` column: a method's name, or a variant's
    label: str  # how figures and tables name it
    cfg: ExperimentConfig
    columns: tuple[tuple[str, Any], ...] = ()  # more table columns, e.g. the ablated knob
    seeds: str = "seeds"  # which of a notebook's seed lists: "seeds" or "ablation_seeds"


# The ablations of notebook 03, as data: config field → settings tried. The current value of
# each field is read from the configuration and always tried too (marked * in the tables).
ABLATIONS: dict[str, list[Any]] = {
    "method.temperature": [0.06, 0.3],
    "method.alpha": [1.0, 0.3],
    "method.mix_beta": [1.0, 0.4],
    "method.mix_mode": ["random", "time"],
    "method.target_type": ["grad_block", "project_block"],
    "model.pos_embed": ["ast", "official"],
}
PRETRAINED_ONLY: tuple[str, ...] = ("model.pos_embed",)
"""Fields of `ABLATIONS` that act only on pretrained weights (the positional-embedding rule
fits a pretrained grid to ours): with random initialisation both settings would train the same
model, so `ablations` leaves them out."""


def no_spec_augment_label(method: type[Method]) -> str:
    """How tables name `method` trained without SpecAugment (``"CE, no SpecAugment"``)."""
    return f"{method.short}, no SpecAugment"


def _planned(method: type[Method], cfg: ExperimentConfig) -> PlannedRun:
    return PlannedRun(method.name, method.label, with_values(cfg, {"method.name": method.name}))


def baselines(cfg: ExperimentConfig) -> list[PlannedRun]:
    """The fine-tuning baselines of notebooks 02 and 05: every method registered as a
    baseline, in registration order.

    A method that only adds SpecAugment to another (``always_spec_augment``) would repeat that
    method exactly when the profile already applies SpecAugment to every method (the official
    recipe, on in ``paper`` and ``demo``); the comparison is then the other method with
    SpecAugment switched off (``<name>_no_specaug``) instead.
    """
    runs = []
    for method in baseline_methods():
        if method.always_spec_augment and cfg.method.spec_augment:
            base = next(c for c in method.__mro__[1:] if getattr(c, "name", "") in
                        method_names())  # the registered method it extends
            runs.append(PlannedRun(f"{base.name}_no_specaug", no_spec_augment_label(base),
                                   with_values(cfg, {"method.name": base.name,
                                                     "method.spec_augment": False})))
        else:
            runs.append(_planned(method, cfg))
    return runs


def comparison(cfg: ExperimentConfig) -> list[PlannedRun]:
    """The paper's method and the plain fine-tuning it is shown beside (roles ``reference``
    and ``proposed`` of the method registry), in that order."""
    return [_planned(method_with_role(role), cfg) for role in ("reference", "proposed")]


def paper_baseline(cfg: ExperimentConfig) -> list[PlannedRun]:
    """The fine-tuning the paper's table reports (role ``paper_baseline``: the official
    scripts train it with class-weighted CE)."""
    return [_planned(method_with_role("paper_baseline"), cfg)]


def ablations(cfg: ExperimentConfig,
              grid: dict[str, Sequence[Any]] | None = None) -> list[PlannedRun]:
    """The paper's method with one field of `grid` (default `ABLATIONS`) changed at a time.

    Each field's current value comes first and is marked ``*`` in the ``setting`` column;
    ``ablation`` names the knob (`patchmix.config.knob_label`). A field of `PRETRAINED_ONLY`
    is left out when the model starts from random weights.
    """
    proposed = method_with_role("proposed")
    base = with_values(cfg, {"method.name": proposed.name})
    runs = []
    for key, settings in (ABLATIONS if grid is None else grid).items():
        if key in PRETRAINED_ONLY and base.model.weights == "none":
            continue
        current = get_value(base, key)
        for value in dict.fromkeys([current, *settings]):
            mark = " *" if value == current else ""
            columns = (("ablation", knob_label(key)), ("setting", f"{value}{mark}"))
            runs.append(PlannedRun(proposed.name, proposed.label, with_values(base, {key: value}),
                                   columns, seeds="ablation_seeds"))
    return runs


GROUPS: dict[str, Callable[[ExperimentConfig], list[PlannedRun]]] = {
    "baselines": baselines, "paper_baseline": paper_baseline, "comparison": comparison,
    "ablations": ablations}
"""The groups of the run plan, each a function of a notebook's configuration."""

NOTEBOOK_RUNS: dict[str, tuple[str, ...]] = {
    "01_data_exploration": (),
    "02_baselines": ("baselines",),
    "03_patchmix_ablations": ("paper_baseline", "comparison", "ablations"),
    # 04 and 05 train nothing of their own: they read what 02 and 03 trained from the run cache
    "04_latent_umap": ("comparison",),
    "05_paper_tables": ("baselines", "comparison"),
    # weighted CE, CE and Patch-Mix CL on real lung sounds
    "06_real_lung_sounds": ("paper_baseline", "comparison"),
}
"""Which groups of runs each notebook needs."""

NOTEBOOK_DATA: dict[str, str] = {"06_real_lung_sounds": "sprsound"}
"""Notebooks that train on a data set of their own (by registered name) rather than on the
folder the others share (``DATA_ROOT``: ICBHI or the synthetic set). Its folder comes from the
data set's environment variable (`patchmix.datasets.dataset_root`); without it the notebook
is skipped and its committed outputs stay."""


def notebook_roots(given: dict[str, str] | None = None) -> dict[str, str]:
    """The folder of each notebook of `NOTEBOOK_DATA`: `given` by data set name (``""``:
    none), else the data set's environment variable, else ``""``: the notebook is skipped."""
    return {notebook: (given or {}).get(name, dataset_root(name, required=False))
            for notebook, name in NOTEBOOK_DATA.items()}

WEIGHTS_READ: tuple[str, ...] = ("comparison",)
"""The groups whose trained weights notebooks open (03's loss anatomy, 04's encodings), not
only their scores: their shipped runs keep ``final.pt``."""


def planned_runs(groups: Iterable[str], cfg: ExperimentConfig) -> list[PlannedRun]:
    """The runs of `groups` for `cfg`, in order; a run listed by two groups comes once."""
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown run group(s) {', '.join(unknown)}; known: "
                         f"{', '.join(GROUPS)}")
    seen: dict[tuple[str, str, tuple], PlannedRun] = {}
    for group in groups:
        for planned in GROUPS[group](cfg):
            seen.setdefault((planned.name, config_hash(planned.cfg), planned.columns), planned)
    return list(seen.values())


def run_table(planned: Iterable[PlannedRun], seeds: dict[str, Sequence[int]], *,
              data: Data | None = None, root: str | os.PathLike | None = None,
              progress: bool = True) -> pd.DataFrame:
    """`run_seeds` of every planned run (trained unless cached), one table.

    `seeds` maps each run's ``seeds`` name (``"seeds"``, ``"ablation_seeds"``) to its seeds.
    """
    planned = list(planned)
    if not planned:
        raise ValueError("no runs planned")
    data = data if data is not None else load_data(planned[0].cfg.data, progress=progress)
    return pd.concat([run_seeds(p.cfg, seeds[p.seeds], data=data, root=root, progress=progress,
                                name=p.name).assign(**dict(p.columns)) for p in planned],
                     ignore_index=True)


def run(cfg: ExperimentConfig, *, data: Data | None = None, root: str | os.PathLike | None = None,
        progress: bool = True, shipped: bool = True) -> dict[str, Any]:
    """Train `cfg` unless a finished run of it is cached or shipped; return its summary.

    The summary (``summary.json`` of `patchmix.train.fit`) gains ``run_dir`` (where its files
    are: the run cache, or ``shipped/`` when only the shipped runs have it) and ``cached``
    (True when nothing was trained). An explicit `root` is the only place looked in, and
    ``shipped=False`` (``patchmix train``, the pool's workers) skips the shipped runs: the run
    is then trained into the run cache. Pass `data` to reuse features already loaded. A
    cached or shipped run whose files disagree is refused (`patchmix.integrity`): a
    RunIntegrityError naming the run and the file.
    """
    data = data if data is not None else load_data(cfg.data, progress=progress)
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
    `protocol` (`patchmix.metrics.patient_bootstrap_ci` on the runs' predictions).

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
