"""Data sets behind one interface: a cycle table, its features, and its identity.

A data set is a registered `DataSet`: a name, a reader that turns its folder into a **cycle
table** (one row per labelled respiratory cycle, at least the columns of `CYCLE_COLUMNS`), a
summary for ``patchmix data check`` and a test that recognises its folder. Everything after the
reader is shared: the validation split, the recipe's features (`patchmix.features`), training
and scoring. `load_data` resolves the folder, finds its data set, reads it and returns `Data`:
the table, the features row-aligned with it, and the identity the run cache is keyed by.

The built-in data sets are registered in `patchmix.icbhi`: ``synthetic`` (the stand-in that
`patchmix.synth` writes, recognised by its marker file) and ``icbhi`` (ICBHI 2017's layout, the
fallback), and in `patchmix.sprsound`: ``sprsound`` (SPRSound 2022, recognised by its
folders). ``docs/adding-a-dataset.md`` shows how to add one.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from patchmix.config import DataConfig, FeatureConfig, config_hash

CLASSES: tuple[str, ...] = ("normal", "crackle", "wheeze", "both")
"""The four classes every data set is scored in (label 0..3)."""

CLASSES_2: tuple[str, ...] = ("normal", "abnormal")

CYCLE_COLUMNS: tuple[str, ...] = (
    "recording", "patient", "location", "mode", "device", "split", "cycle", "start", "end",
    "crackle", "wheeze", "label", "path")
"""What every reader's table holds: ``split`` in train/test (``val`` is carved later),
``start``/``end`` in seconds within the WAV at ``path``, ``label`` 0 normal, 1 crackle,
2 wheeze, 3 both (= crackle + 2 · wheeze)."""

ROOT_ENV = "ICBHI_ROOT"
DEFAULT_ROOT = "data/synthetic"


class DataError(ValueError):
    """Input that cannot be read; the message names the file (and line) and the problem."""


PART_ORDER: tuple[str, ...] = ("train", "val", "test")  # other parts follow, by name


def is_test_part(split: str) -> bool:
    """Whether a split is a test part (``test``, or ``test_intra``, ``test_inter``, …)."""
    return split == "test" or split.startswith("test_")


def parts(cycles: pd.DataFrame) -> list[str]:
    """The values of ``split`` in a cycle table: train, val, test first, then any others."""
    known = {p: i for i, p in enumerate(PART_ORDER)}
    return sorted(cycles["split"].unique(), key=lambda p: (known.get(p, len(known)), p))


def summarize_cycles(cycles: pd.DataFrame) -> dict[str, Any]:
    """What ``patchmix data check`` reports for every data set: the folder, whether it is
    synthetic, recordings and patients per part, cycles per part and class, the total, and the
    reader's problems (``attrs`` of the table)."""
    recs = cycles.drop_duplicates("recording")
    names = parts(cycles)
    return {
        "root": cycles.attrs.get("root"),
        "synthetic": bool(cycles.attrs.get("synthetic", False)),
        "recordings": {s: int((recs["split"] == s).sum()) for s in names},
        "cycles": {s: {c: int(((cycles["split"] == s) & (cycles["label"] == i)).sum())
                       for i, c in enumerate(CLASSES)} for s in names},
        "total_cycles": int(len(cycles)),
        "patients": {s: int(recs.loc[recs["split"] == s, "patient"].nunique()) for s in names},
        "problems": list(cycles.attrs.get("problems", [])),
    }


def seconds_summary(seconds: pd.Series) -> dict[str, float]:
    """Min, median and max of cycle durations in seconds (3 decimals) and how many exceed
    the recipe's 8 s; {} for no cycles."""
    if len(seconds) == 0:
        return {}
    q = np.quantile(seconds.to_numpy(), [0.0, 0.5, 1.0])
    return {"min": round(float(q[0]), 3), "median": round(float(q[1]), 3),
            "max": round(float(q[2]), 3), "over_8s": int((seconds > 8).sum())}


@dataclass(frozen=True)
class DataSet:
    """One kind of data set: how to recognise its folder, read it and report on it."""

    name: str  # "icbhi", "synthetic", …: what reports and the run cache call it
    title: str  # how tables name data of this set, e.g. "ICBHI 2017"
    read: Callable[..., pd.DataFrame]  # read(root, split_file=None) → cycle table
    detect: Callable[[Path], bool]  # is this folder one of ours?
    # the `patchmix data check` report; a data set's own adds its own keys to these
    summarize: Callable[[pd.DataFrame], dict[str, Any]] = summarize_cycles
    synthetic: bool = False  # numbers from it are never numbers of a real data set
    # the score families its tables report (`patchmix.metrics.SCORE_FAMILIES`)
    score_families: tuple[str, ...] = ("icbhi",)
    fallback: bool = False  # tried after every other set (it gives the clearest errors)
    # which version of its files a folder holds, where the same names and sizes can hold other
    # sound (the synthetic set's generator version); "" for a release whose files never change
    release: Callable[[Path], str] = lambda root: ""
    # the environment variable naming its folder, for notebooks that train on it by name
    root_env: str = ""
    where_to_get: str = ""  # one line for the error when its folder is not given
    # training epochs per profile where the profile's own do not suit the set's size (a
    # notebook's EPOCHS or an explicit override still wins: `patchmix.config.notebook_config`)
    profile_epochs: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def describe(self, root: str | os.PathLike) -> str:
        """How a table names data read from `root`: the title and only the folder's name,
        never a machine path."""
        return f"{self.title} (folder {Path(root).name or root})"


_DATASETS: dict[str, DataSet] = {}


def register_dataset(dataset: DataSet) -> DataSet:
    """Add a data set to the registry (a name may be registered once); returns it."""
    if dataset.name in _DATASETS:
        raise ValueError(f"data set {dataset.name!r} is already registered")
    _DATASETS[dataset.name] = dataset
    return dataset


def unregister_dataset(name: str) -> None:
    """Remove a registered data set (for tests that register their own)."""
    _DATASETS.pop(name, None)


def _registry() -> dict[str, DataSet]:
    import patchmix.icbhi  # noqa: F401, PLC0415 - registers the built-in data sets
    import patchmix.sprsound  # noqa: F401, PLC0415

    return _DATASETS


def dataset_names() -> tuple[str, ...]:
    """Names of the registered data sets."""
    return tuple(_registry())


def get_dataset(name: str) -> DataSet:
    """The registered data set `name`."""
    try:
        return _registry()[name]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; choose from "
                         f"{', '.join(dataset_names())}") from None


def find_dataset(root: str | os.PathLike) -> DataSet:
    """The data set whose folder `root` is: the first that recognises it, the fallback last."""
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"{root}: no such data folder")
    ordered = sorted(_registry().values(), key=lambda d: d.fallback)  # stable: keeps order
    for dataset in ordered:
        if dataset.detect(path):
            return dataset
    raise DataError(f"{root}: not a folder of any known data set ({', '.join(dataset_names())})")


def dataset_root(name: str, root: str = "", *, required: bool = True) -> str:
    """The folder of the registered data set `name`: `root`, else its environment variable
    (`DataSet.root_env`, e.g. ``$SPRSOUND_ROOT``). When neither names one: a DataError that
    says how to get it, or ``""`` if not `required`."""
    if root:
        return root
    dataset = get_dataset(name)
    found = os.environ.get(dataset.root_env, "") if dataset.root_env else ""
    if not found and required:
        raise DataError(f"no {dataset.title} folder: set {dataset.root_env or 'its folder'}"
                        f"=… (or the notebook's parameter){'; ' if dataset.where_to_get else ''}"
                        f"{dataset.where_to_get}")
    return found


def resolve_root(cfg: DataConfig) -> str:
    """The data folder of `cfg`: ``cfg.root``, else ``$ICBHI_ROOT``, else the synthetic set
    under ``data/synthetic`` (what ``make reproduce`` builds)."""
    return cfg.root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT


def read_cycles(root: str | os.PathLike, split_file: str | os.PathLike | None = None
                ) -> tuple[DataSet, pd.DataFrame]:
    """The data set of `root` and its cycle table (checked to hold `CYCLE_COLUMNS`)."""
    dataset = find_dataset(root)
    cycles = dataset.read(root) if split_file is None else dataset.read(root, split_file)
    missing = [c for c in CYCLE_COLUMNS if c not in cycles.columns]
    if missing:
        raise ValueError(f"the {dataset.name} reader's table lacks columns {missing}")
    cycles.attrs.setdefault("root", str(root))
    cycles.attrs.setdefault("synthetic", dataset.synthetic)
    return dataset, cycles


@dataclass
class Data:
    """A data set ready to train on: the cycle table (``split`` in train/val/test) and its
    features, row-aligned."""

    cycles: pd.DataFrame
    features: np.ndarray | None  # (n, 798, 128) float32, memory-mapped; None: `load_cycles`
    root: str
    dataset: DataSet
    feature_config: FeatureConfig = FeatureConfig()

    @property
    def synthetic(self) -> bool:
        """Whether the data is a synthetic stand-in (its numbers are never real-data numbers)."""
        return self.dataset.synthetic

    def rows(self, split: str) -> np.ndarray:
        """Row positions of one split."""
        return np.flatnonzero(self.cycles["split"].to_numpy() == split)

    def test_parts(self) -> list[str]:
        """The test parts: ``test`` (ICBHI, synthetic), or ``test_intra`` and ``test_inter``
        (SPRSound): every split named ``test`` or ``test_…``."""
        return [p for p in parts(self.cycles) if is_test_part(p)]

    def test_rows(self) -> np.ndarray:
        """Row positions of every test part, in table order: what training scores each epoch
        on (a data set with several test parts is scored on all of them together, and each
        part is scored apart from the predictions)."""
        split = self.cycles["split"].astype(str)
        return np.flatnonzero((split == "test") | split.str.startswith("test_"))

    def describe(self) -> str:
        """How tables name this data (`DataSet.describe`)."""
        return self.dataset.describe(self.root)

    def identity(self) -> str:
        """What the run cache keys this data by: the data set, every cycle's recording (file
        name and size) and boundaries, its label and its split, and the files' version where
        the data set has one (`DataSet.release`: a synthetic set from another generator version
        has the same names and sizes but other sound). Anything that changes a training run's
        inputs or targets changes it; the folder's place and the files' dates do not, so a
        copied or freshly built data set (``make data`` in a new clone) finds the runs trained
        on the same data elsewhere, the shipped ones included. (The feature cache, which never
        leaves the machine, also checks each file's mtime.)"""
        from patchmix.features import CACHE_VERSION  # noqa: PLC0415 - features imports this module

        sizes = {p: os.stat(p).st_size for p in self.cycles["path"].unique()}
        rows = [[Path(p).name, sizes[p], repr(float(s)), repr(float(e))] for p, s, e in
                zip(self.cycles["path"], self.cycles["start"], self.cycles["end"], strict=True)]
        release = self.dataset.release(Path(self.root))  # e.g. the synthetic generator's
        return config_hash({"dataset": self.dataset.name, "features_version": CACHE_VERSION,
                            "rows": rows, "labels": self.cycles["label"].astype(int).tolist(),
                            "split": self.cycles["split"].astype(str).tolist(),
                            **({"release": release} if release else {})}, 24)


def load_data(cfg: DataConfig, *, progress: bool = True) -> Data:
    """Resolve the folder, read its data set, carve the validation split, get the features.

    Features come from the on-disk cache when it holds them (`patchmix.features`), else they
    are computed once, in parallel, with a progress bar.
    """
    from patchmix.features import cycle_features  # noqa: PLC0415 - features imports this module

    data = load_cycles(cfg)
    features = cycle_features(data.cycles, cfg.features, progress=progress)
    return dataclasses.replace(data, features=features)


def load_cycles(cfg: DataConfig) -> Data:
    """`load_data` without the features (``features`` is None): the cycle table with its
    validation split, which is all `Data.identity` needs, so no audio is read."""
    root = resolve_root(cfg)
    dataset, cycles = read_cycles(root)
    if cfg.val_fraction > 0:
        cycles = validation_split(cycles, cfg.val_fraction, seed=cfg.val_seed)
    return Data(cycles.reset_index(drop=True), None, str(root), dataset, cfg.features)


# --- splits --------------------------------------------------------------------------------


def validation_split(df: pd.DataFrame, fraction: float = 0.2, seed: int = 0,
                     tries: int = 256) -> pd.DataFrame:
    """Carve a patient-grouped validation split out of ``train`` (rows get split ``"val"``).

    Whole patients move, so no patient is in both train and val. Seeded random patient orders
    are tried in turn; the first whose validation share is within 20 % of `fraction` and whose
    class mix is within 0.2 (L1 distance of class proportions) of train's is kept — otherwise
    the best of `tries`. Deterministic for a given seed; different seeds give different splits.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), not {fraction}")
    train = df[df["split"] == "train"]
    if train["patient"].nunique() < 2:
        raise ValueError("need at least two training patients to carve a validation split")
    counts = pd.crosstab(train["patient"], train["label"]).reindex(
        columns=range(len(CLASSES)), fill_value=0)
    patients = counts.index.to_numpy()
    table = counts.to_numpy(dtype=float)  # (P, 4) cycles per patient and class
    target = fraction * table.sum()
    train_mix = table.sum(0) / table.sum()
    rng = np.random.default_rng(seed)
    best, best_cost = None, math.inf
    for _ in range(tries):
        order = rng.permutation(len(patients))
        totals = np.cumsum(table[order].sum(1))
        reach = int(np.searchsorted(totals, target)) + 1  # shortest prefix reaching the target
        # the prefixes just below and just reaching the target; val and train both non-empty
        for n in sorted({min(max(k, 1), len(patients) - 1) for k in (reach - 1, reach)}):
            val = table[order[:n]].sum(0)
            size_error = abs(val.sum() - target) / target
            mix_error = np.abs(val / val.sum() - train_mix).sum()
            ok = size_error <= 0.2 and mix_error <= 0.2
            cost = size_error + mix_error + (0 if ok else 1)
            if cost < best_cost:
                best, best_cost = order[:n], cost
        if best_cost <= 1:  # the first seeded order within both tolerances wins
            break
    out = df.copy()
    val_patients = set(patients[best].tolist())
    out.loc[(out["split"] == "train") & out["patient"].isin(val_patients), "split"] = "val"
    return out


def patient_folds(df: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> pd.Series:
    """Assign every row a fold in ``0..n_folds-1`` so that each patient is in exactly one fold.

    Patients are shuffled with `seed`, then placed largest first into the fold with the fewest
    cycles, which keeps folds close in size.
    """
    if n_folds < 2:
        raise ValueError("n_folds must be >= 2")
    sizes = df.groupby("patient").size()
    if len(sizes) < n_folds:
        raise ValueError(f"{len(sizes)} patients cannot fill {n_folds} folds")
    rng = np.random.default_rng(seed)
    order = sizes.index.to_numpy()[rng.permutation(len(sizes))]
    order = sorted(order, key=lambda p: -sizes[p])  # stable: ties keep the seeded order
    load = np.zeros(n_folds)
    fold_of: dict[int, int] = {}
    for p in order:
        k = int(np.argmin(load))
        fold_of[int(p)] = k
        load[k] += sizes[p]
    return df["patient"].map(fold_of).astype("int64").rename("fold")
