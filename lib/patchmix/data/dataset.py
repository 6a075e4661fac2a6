"""Data sets behind one interface: a cycle table and how to recognise the folder it comes from.

A data set is a registered `DataSet`: a name, a reader that turns its folder into a **cycle
table** (one row per labelled respiratory cycle, at least the columns of `CYCLE_COLUMNS`), a
summary for ``patchmix data check`` and a test that recognises its folder. `recognise` finds
the data set of a folder once and returns a `DataFolder`, which reads it; everything after the
reader is shared: the validation split (here), the recipe's features
(`patchmix.data.features`), training and scoring. `patchmix.data.loading` puts them together.

The built-in data sets register themselves in `patchmix.data.icbhi` (``synthetic``, the
stand-in `patchmix.data.synth` writes, recognised by its marker file, and ``icbhi``, ICBHI
2017's layout, the fallback) and `patchmix.data.sprsound` (``sprsound``, SPRSound 2022,
recognised by its folders); `patchmix.data` imports them. ``docs/adding-a-dataset.md`` shows
how to add one.
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

from patchmix.data.errors import DataError
from patchmix.registry import Registry

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
    # the score families its tables report (`patchmix.engine.metrics.SCORE_FAMILIES`)
    score_families: tuple[str, ...] = ("icbhi",)
    fallback: bool = False  # tried after every other set (it gives the clearest errors)
    # which version of its files a folder holds, where the same names and sizes can hold other
    # sound (the synthetic set's generator version); "" for a release whose files never change
    release: Callable[[Path], str] = lambda root: ""
    # the environment variable naming its folder, for notebooks that train on it by name
    root_env: str = ""
    where_to_get: str = ""  # one line for the error when its folder is not given
    # training epochs per profile where the profile's own do not suit the set's size (a
    # notebook's EPOCHS or an explicit override still wins:
    # `patchmix.companion.knobs.notebook_config`)
    profile_epochs: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def describe(self, root: str | os.PathLike) -> str:
        """How a table names data read from `root`: the title and only the folder's name,
        never a machine path."""
        return f"{self.title} (folder {Path(root).name or root})"


DATASETS: Registry[DataSet] = Registry("data set")
"""The registered data sets (`patchmix.data` imports the built-in ones), in the order a
folder is tested against them."""


def register_dataset(dataset: DataSet) -> DataSet:
    """Add a data set to `DATASETS` under its name (a name may be registered once)."""
    return DATASETS.add(dataset.name, dataset)


@dataclass(frozen=True)
class DataFolder:
    """A folder whose data set has been recognised (`recognise`): what loading, the run plan
    and the notebooks pass around instead of a path as text."""

    path: Path
    dataset: DataSet

    def describe(self) -> str:
        """How tables name this data (`DataSet.describe`: the folder's name, no machine path)."""
        return self.dataset.describe(self.path)

    def read(self, split_file: str | os.PathLike | None = None) -> pd.DataFrame:
        """The folder's cycle table (checked to hold `CYCLE_COLUMNS`); `split_file` replaces
        the data set's own split where its reader takes one."""
        read = self.dataset.read
        cycles = read(self.path) if split_file is None else read(self.path, split_file)
        missing = [c for c in CYCLE_COLUMNS if c not in cycles.columns]
        if missing:
            raise ValueError(f"the {self.dataset.name} reader's table lacks columns {missing}")
        cycles.attrs.setdefault("root", str(self.path))
        cycles.attrs.setdefault("synthetic", self.dataset.synthetic)
        return cycles


def recognise(root: str | os.PathLike) -> DataFolder:
    """The folder `root` with its data set: the first registered set that recognises it, the
    fallback last. A DataError for a folder that does not exist or that no set recognises."""
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"{root}: no such data folder")
    ordered = sorted(DATASETS.values(), key=lambda d: d.fallback)  # stable: keeps the order
    for dataset in ordered:
        if dataset.detect(path):
            return DataFolder(path, dataset)
    raise DataError(f"{root}: not a folder of any known data set ({', '.join(DATASETS)})")


def find_folder(root: str | os.PathLike = "") -> DataFolder:
    """The data folder a configuration or a notebook means by `root`: `root` itself, else
    ``$ICBHI_ROOT``, else the synthetic set under ``data/synthetic`` (what ``make reproduce``
    builds), recognised (`recognise`)."""
    return recognise(root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def dataset_root(name: str, root: str = "", *, required: bool = True) -> str:
    """The folder of the registered data set `name`: `root`, else its environment variable
    (`DataSet.root_env`, e.g. ``$SPRSOUND_ROOT``). When neither names one: a DataError that
    says how to get it, or ``""`` if not `required`."""
    if root:
        return root
    dataset = DATASETS.get(name)
    found = os.environ.get(dataset.root_env, "") if dataset.root_env else ""
    if not found and required:
        raise DataError(f"no {dataset.title} folder: set {dataset.root_env or 'its folder'}"
                        f"=… (or the notebook's parameter){'; ' if dataset.where_to_get else ''}"
                        f"{dataset.where_to_get}")
    return found


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
