"""A data folder made ready to train on: its cycle table, its features and its identity.

`load_data` is the one way in: it recognises the folder (or takes one already recognised),
reads its cycle table, carves the validation split and gets the recipe's features from the
cache. `Data` is what the engine trains and scores on.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from patchmix.config import DataConfig, FeatureConfig, config_hash
from patchmix.data.dataset import (
    DataFolder,
    DataSet,
    find_folder,
    is_test_part,
    parts,
    validation_split,
)
from patchmix.data.features import CACHE_VERSION, cycle_features


@dataclass
class Data:
    """A data set ready to train on: the cycle table (``split`` in train/val/test) and its
    features, row-aligned, and the folder they come from."""

    cycles: pd.DataFrame
    features: np.ndarray | None  # (n, 798, 128) float32, memory-mapped; None: `load_cycles`
    folder: DataFolder
    feature_config: FeatureConfig = FeatureConfig()

    @property
    def root(self) -> str:
        """The data folder, as text (what run records and messages name)."""
        return str(self.folder.path)

    @property
    def dataset(self) -> DataSet:
        """The registered data set of the folder."""
        return self.folder.dataset

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
        """How tables name this data (`DataFolder.describe`)."""
        return self.folder.describe()

    def identity(self) -> str:
        """What the run cache keys this data by: the data set, every cycle's recording (file
        name and size) and boundaries, its label and its split, and the files' version where
        the data set has one (`DataSet.release`: a synthetic set from another generator version
        has the same names and sizes but other sound). Anything that changes a training run's
        inputs or targets changes it; the folder's place and the files' dates do not, so a
        copied or freshly built data set (``make data`` in a new clone) finds the runs trained
        on the same data elsewhere, the shipped ones included. (The feature cache, which never
        leaves the machine, also checks each file's mtime.)"""
        sizes = {p: os.stat(p).st_size for p in self.cycles["path"].unique()}
        rows = [[Path(p).name, sizes[p], repr(float(s)), repr(float(e))] for p, s, e in
                zip(self.cycles["path"], self.cycles["start"], self.cycles["end"], strict=True)]
        release = self.dataset.release(self.folder.path)  # e.g. the synthetic generator's
        return config_hash({"dataset": self.dataset.name, "features_version": CACHE_VERSION,
                            "rows": rows, "labels": self.cycles["label"].astype(int).tolist(),
                            "split": self.cycles["split"].astype(str).tolist(),
                            **({"release": release} if release else {})}, 24)


def load_data(cfg: DataConfig, *, folder: DataFolder | None = None,
              progress: bool = True) -> Data:
    """Read the data set, carve the validation split, get the features.

    `folder` is the data folder when the caller has recognised it already; None recognises
    ``cfg.root`` (`patchmix.data.dataset.find_folder`: "" is ``$ICBHI_ROOT``, else the
    synthetic set). Features come from the on-disk cache when it holds them
    (`patchmix.data.features`), else they are computed once, in parallel, with a progress bar.
    """
    data = load_cycles(cfg, folder=folder)
    features = cycle_features(data.cycles, cfg.features, progress=progress)
    return dataclasses.replace(data, features=features)


def load_cycles(cfg: DataConfig, *, folder: DataFolder | None = None) -> Data:
    """`load_data` without the features (``features`` is None): the cycle table with its
    validation split, which is all `Data.identity` needs, so no audio is read."""
    folder = folder if folder is not None else find_folder(cfg.root)
    cycles = folder.read()
    if cfg.val_fraction > 0:
        cycles = validation_split(cycles, cfg.val_fraction, seed=cfg.val_seed)
    return Data(cycles.reset_index(drop=True), None, folder, cfg.features)
