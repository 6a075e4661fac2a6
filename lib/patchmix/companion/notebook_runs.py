"""The runs each notebook needs, declared as data: the run plan.

Each notebook names groups of runs (`NOTEBOOK_RUNS`); each group is a function of the
notebook's configuration returning `PlannedRun`s: the fine-tuning ``baselines``, the
``paper_baseline``, the ``comparison`` of the paper's method with its reference, and the
``ablations`` of the paper's method over the grid `ABLATIONS`. Which methods fill them comes
from the method registry (their ``baseline`` flag and ``role``). `run_table` trains or reads
them through the run cache (`patchmix.engine.experiment`); ``patchmix plan`` lists, trains,
exports and compares the same runs (`patchmix.companion.plan`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from patchmix.companion.knobs import knob_label
from patchmix.config import ExperimentConfig, config_hash, get_value, with_values
from patchmix.data.dataset import dataset_root
from patchmix.data.loading import Data
from patchmix.engine.experiment import run_seeds
from patchmix.methods import METHODS, Method, baseline_methods, method_with_role


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
                        METHODS.names())  # the registered method it extends
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
    ``ablation`` names the knob (`patchmix.companion.knobs.knob_label`). A field of
    `PRETRAINED_ONLY` is left out when the model starts from random weights.
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
data set's environment variable (`patchmix.data.dataset.dataset_root`); without it the notebook
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


def run_table(planned: Iterable[PlannedRun], seeds: dict[str, Sequence[int]], *, data: Data,
              root: str | os.PathLike | None = None, progress: bool = True) -> pd.DataFrame:
    """`run_seeds` of every planned run on `data` (trained unless cached), one table.

    `seeds` maps each run's ``seeds`` name (``"seeds"``, ``"ablation_seeds"``) to its seeds.
    """
    planned = list(planned)
    if not planned:
        raise ValueError("no runs planned")
    return pd.concat([run_seeds(p.cfg, seeds[p.seeds], data=data, root=root, progress=progress,
                                name=p.name).assign(**dict(p.columns)) for p in planned],
                     ignore_index=True)
