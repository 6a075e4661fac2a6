"""The knobs a reader turns: the notebooks' names for configuration fields, and a notebook's
parameters made into one configuration.

A notebook's parameters cell declares ``EPOCHS = None``, ``TEMPERATURE = None``, …; each is a
`Knob` of `KNOBS`, a typed field of `patchmix.config.ExperimentConfig` with the label tables and
figures give it. `notebook_config` applies a profile, a data folder, a weights file, overrides
and knobs, in that order. The configuration itself (`patchmix.config`) knows none of this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchmix.config import (
    ExperimentConfig,
    profile,
    resolve_key,
    with_overrides,
    with_values,
)
from patchmix.data.dataset import DataFolder


@dataclass(frozen=True)
class Knob:
    """A config field a notebook exposes as a typed parameter."""

    path: str  # dotted field of ExperimentConfig
    label: str  # how tables and figures name it
    help: str  # one line for parameter cells and docs


KNOBS: dict[str, Knob] = {
    "epochs": Knob("train.epochs", "epochs", "training epochs"),
    "lr": Knob("train.lr", "learning rate",
               "Adam's learning rate, the top of the per-epoch cosine schedule"),
    "ma_beta": Knob("train.ma_beta", "ma β",
                    "weight averaging after each step, w ← β·w_old + (1−β)·w_new; 0 disables"),
    "temperature": Knob("method.temperature", "temperature τ",
                        "τ of the contrastive softmax"),
    "alpha": Knob("method.alpha", "loss weight α", "total loss = CE + α · L_CL"),
    "mix_beta": Knob("method.mix_beta", "mix β",
                     "λ ~ Beta(β, β) for Mixup, CutMix and Patch-Mix"),
    "mix_mode": Knob("method.mix_mode", "mixed units",
                     "Patch-Mix moves random patches or whole time columns"),
    "target_type": Knob("method.target_type", "target",
                        "the contrastive target: raw or projected clean feature, gradient "
                        "blocked or flowing"),
    "negatives": Knob("method.negatives", "negatives",
                      "the contrastive softmax over all clean samples or other-label ones"),
    "spec_augment": Knob("method.spec_augment", "SpecAugment",
                         "SpecAugment on every method's training batches"),
    "specaug_gate": Knob("method.specaug_gate", "SpecAugment gate",
                         "official: fires on ~84 % of samples (the code's quirk); always"),
    "pos_embed": Knob("model.pos_embed", "pos_embed",
                      "pretrained positional grid fitted by the AST rule or the official quirk"),
}


def knob_label(key: str) -> str:
    """The label of the knob whose field is `key` (``"method.alpha"`` → ``"loss weight α"``),
    else `key` itself."""
    return next((k.label for k in KNOBS.values() if k.path == key), key)


def notebook_config(profile_name: str, *, folder: DataFolder | None = None,
                    weights: Path | None = None, overrides: str = "",
                    knobs: dict[str, Any] | None = None) -> ExperimentConfig:
    """A notebook's parameters as one config: profile, data folder, weights file, overrides,
    knobs.

    `folder` is the recognised data folder (`patchmix.data.dataset.find_folder`); None keeps
    ``data.root`` empty, which loading the data reads as ``$ICBHI_ROOT``, else the synthetic
    set. `weights` is a local AudioSet checkpoint
    (``audioset_10_10_0.4593.pth``): it switches the model to ``weights=audioset``.
    `overrides` is a space-separated list of ``key=value`` items, as `with_overrides` takes
    them (``"epochs=5 lr=1e-3"``). `knobs` maps names of `KNOBS` to typed values; None keeps
    the profile's value. Knobs apply last.

    A data set may set its own epochs for a profile (`patchmix.data.dataset.DataSet.
    profile_epochs`: SPRSound's for ``demo``); they apply when `folder` holds that data set
    and neither `overrides` nor the ``epochs`` knob sets the epochs.
    """
    items = [f"data.root={folder.path}"] if folder is not None else []
    if weights is not None:
        items += ["model.weights=audioset", f"model.audioset_checkpoint={weights}"]
    cfg = with_overrides(profile(profile_name), items + overrides.split())
    epochs_set = any(resolve_key(cfg, item.split("=", 1)[0]) == ("train", "epochs")
                     for item in overrides.split())
    epochs = folder.dataset.profile_epochs.get(profile_name) if folder is not None else None
    if epochs and not epochs_set:
        cfg = with_values(cfg, {"train.epochs": epochs})
    unknown = sorted(set(knobs or {}) - set(KNOBS))
    if unknown:
        raise ValueError(f"unknown knob(s) {', '.join(unknown)}; known: {', '.join(KNOBS)}")
    chosen = {KNOBS[name].path: v for name, v in (knobs or {}).items() if v is not None}
    return with_values(cfg, chosen)
