"""The one figure style of the notebooks, and the training figures they share.

`use_style()` sets matplotlib's rcParams once (notebooks call it first); colours are the
Okabe-Ito palette, readable in grey and by colour-blind readers. Functions return a Figure and
never save it: `patchmix.companion.report.Outputs.figure` does that.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from patchmix.config import FeatureConfig
from patchmix.data.dataset import CLASSES
from patchmix.methods import method_label

PALETTE: tuple[str, ...] = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9",
                            "#F0E442", "#000000")
CLASS_COLORS: dict[str, str] = {"normal": "#0072B2", "crackle": "#E69F00", "wheeze": "#009E73",
                                "both": "#D55E00"}
# devices get colours no class or split uses (Paul Tol's muted scheme), so a device panel is
# never read as a class panel
DEVICE_COLORS: dict[str, str] = {"AKGC417L": "#332288", "LittC2SE": "#999933",
                                 "Litt3200": "#882255", "Meditron": "#777777"}
PROTOCOL_LABELS: dict[str, str] = {"best_test": "best test epoch (as published)",
                                   "last": "last epoch", "val": "best validation epoch"}


def use_style() -> None:
    """Apply the project's figure style (idempotent)."""
    plt.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 130, "figure.figsize": (7.0, 4.0),
        "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
        "xtick.labelsize": 9, "ytick.labelsize": 9,
        "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
        "axes.prop_cycle": matplotlib.cycler(color=list(PALETTE)),
        "figure.constrained_layout.use": True, "image.cmap": "magma",
    })


def learning_curves(history: pd.DataFrame, *, hue: str = "method",
                    labels: Mapping[str, str] | None = None,
                    terms: Mapping[str, Mapping[str, str]] | None = None) -> Figure:
    """Training loss, test Score and validation Score per epoch; mean line, min–max band.

    `history` is long-format, one row per run × epoch, with columns `hue`, ``seed``, ``epoch``,
    ``train_loss`` (or ``loss_<term>`` per term), ``test_score`` and optionally ``val_score``.
    `terms` maps each `hue` value to its method's terms (`patchmix.methods.Method.terms`: term
    → what it is): each distinct objective gets its own loss panel, so that only losses of the
    same objective share an axis. Without `terms` every run's total loss shares one panel.
    A method keeps its colour in every panel.
    """
    keys = list(dict.fromkeys(history[hue]))
    colours = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}
    losses: dict[str, list[tuple[Any, str]]] = {}  # objective → (hue value, column)
    for key in keys:
        for term, what in ((terms or {}).get(key) or {"loss": "training loss"}).items():
            column = (f"loss_{term}" if term != "loss" and f"loss_{term}" in history
                      else "train_loss")
            losses.setdefault(what, []).append((key, column))
    loss_panels = [(f"train: {what}", runs) for what, runs in losses.items()]
    score_panels = [("test Score (%)", [(k, "test_score") for k in keys])]
    if "val_score" in history and history["val_score"].notna().any():
        score_panels.append(("validation Score (%)", [(k, "val_score") for k in keys]))
    rows = ([loss_panels + score_panels] if len(loss_panels) + len(score_panels) <= 3
            else [loss_panels, score_panels])
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.9 * ncols, 3.2 * len(rows)),
                             sharex=True, squeeze=False)
    for r, row in enumerate(rows):
        for ax in axes[r, len(row):]:
            ax.set_visible(False)
        for ax, (title, runs) in zip(axes[r], row, strict=False):
            for key, column in runs:
                part = history[history[hue] == key]
                stats = part.groupby("epoch")[column].agg(["mean", "min", "max"])
                name = (labels or {}).get(key, method_label(str(key)))
                ax.plot(stats.index, stats["mean"], color=colours[key], label=name, lw=1.6)
                if part["seed"].nunique() > 1:
                    ax.fill_between(stats.index, stats["min"], stats["max"],
                                    color=colours[key], alpha=0.15, lw=0)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if "Score" in title:
                ax.axhline(50, color="grey", lw=0.8, ls=":")
    legend = {}
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center",
               ncols=min(len(legend), 4), frameon=False)
    return fig


def confusion_grid(confusions: Mapping[str, np.ndarray], *, classes: Sequence[str] = CLASSES,
                   ncols: int = 3) -> Figure:
    """Row-normalised confusion matrices (true class rows), one panel per entry, counts shown."""
    n = len(confusions)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.1 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (title, cm) in zip(axes.flat, confusions.items(), strict=False):
        cm = np.asarray(cm, dtype=float)
        share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        ax.grid(False)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.55 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=30)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    return fig


def score_bars(table: pd.DataFrame, *, group: str = "method", protocols: Sequence[str] = (
        "best_test", "last", "val"), labels: Mapping[str, str] | None = None,
        reference: float | None = 50.0) -> Figure:
    """Sp, Se and Score per `group` value (mean over seeds, sd as error bar), a panel per protocol.

    `table` is the per-seed table of `patchmix.engine.experiment.run_seeds` (column ``protocol`` and
    ``sp``/``se``/``score``); the dotted line marks `reference` (50: all-normal predictions).
    """
    protocols = [p for p in protocols if p in set(table["protocol"])]
    keys = list(dict.fromkeys(table[group]))
    fig, axes = plt.subplots(1, len(protocols), figsize=(max(4.0, 0.9 * len(keys) + 1.5)
                                                         * len(protocols) / 1.4, 3.6),
                             sharey=True, squeeze=False)
    width = 0.27
    for ax, protocol in zip(axes[0], protocols, strict=True):
        part = table[table["protocol"] == protocol]
        stats = part.groupby(group, sort=False)[["sp", "se", "score"]].agg(["mean", "std"])
        stats = stats.reindex(keys)
        x = np.arange(len(keys))
        for k, (metric, colour) in enumerate(zip(("sp", "se", "score"), PALETTE, strict=False)):
            sd = stats[(metric, "std")].fillna(0).to_numpy()
            ax.bar(x + (k - 1) * width, stats[(metric, "mean")], width, yerr=sd, capsize=2,
                   color=colour, label={"sp": "Sp", "se": "Se", "score": "Score"}[metric],
                   error_kw={"lw": 0.8})
        if reference is not None:
            ax.axhline(reference, color="grey", lw=0.8, ls=":")
        names = [(labels or {}).get(k, method_label(str(k))) for k in keys]
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_title(PROTOCOL_LABELS.get(protocol, protocol))
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("%")
    axes[0][0].legend(frameon=False, ncols=3, loc="upper left")
    return fig


def scatter_2d(points: np.ndarray, colour_by: Sequence[Any], *, title: str = "",
               palette: Mapping[Any, str] | None = None, ax: Any = None) -> Any:
    """A 2-D embedding coloured by a categorical label (legend in category order)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4.0))
    values = np.asarray(colour_by)
    present = set(values.tolist())
    order = ([k for k in palette if k in present] if palette else []) + sorted(
        present - set(palette or {}), key=str)
    for i, key in enumerate(order):
        mask = values == key
        colour = (palette or {}).get(key, PALETTE[i % len(PALETTE)])
        ax.scatter(points[mask, 0], points[mask, 1], s=7, alpha=0.7, color=colour,
                   label=str(key), lw=0)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.legend(frameon=False, fontsize=8, markerscale=2, loc="best")
    return ax


def ablation_panels(table: pd.DataFrame, *, metric: str = "score",
                    protocols: Sequence[str] = ("best_test", "last"),
                    reference: float | None = 50.0) -> Figure:
    """One small panel per ablated knob: `metric` per setting, one marker per protocol.

    `table` has columns ``ablation``, ``setting``, ``protocol``, ``seed`` and `metric`; diamonds
    are means over seeds, with the individual seeds drawn as small dots. The paper's setting is
    whatever the caller marked in ``setting`` (e.g. with a ``*``).
    """
    knobs = list(dict.fromkeys(table["ablation"]))
    ncols = min(3, len(knobs))
    nrows = -(-len(knobs) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(knobs):]:
        ax.set_visible(False)
    width = 0.5 / len(protocols)
    for ax, knob in zip(axes.flat, knobs, strict=False):
        part = table[table["ablation"] == knob]
        settings = list(dict.fromkeys(part["setting"]))
        for k, protocol in enumerate(protocols):
            rows = part[part["protocol"] == protocol]
            x = np.arange(len(settings)) + (k - (len(protocols) - 1) / 2) * width
            means = rows.groupby("setting")[metric].mean().reindex(settings)
            # markers, not bars: the axis does not start at 0, and bars would exaggerate
            ax.plot(x, means, "D", ms=8, color=PALETTE[k], label=PROTOCOL_LABELS.get(protocol))
            for xi, setting in zip(x, settings, strict=True):
                dots = rows.loc[rows["setting"] == setting, metric]
                ax.plot([xi] * len(dots), dots, "o", ms=3, color="black", alpha=0.6)
        if reference is not None:
            ax.axhline(reference, color="grey", lw=0.8, ls=":")
        ax.set_xticks(np.arange(len(settings)), settings)
        ax.set_title(knob)
    lowest = float(np.nanmin(table[metric])) if len(table) else 0.0
    highest = float(np.nanmax(table[metric])) if len(table) else 100.0
    axes[0][0].set_ylim(min(40.0, 5 * np.floor(lowest / 5)),
                        min(100.0, 5 * np.ceil((highest + 5) / 5)))
    axes[0][0].set_ylabel({"score": "test Score (%)"}.get(metric, metric))
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(protocols), frameon=False)
    return fig


def mel_bin(freq: float, cfg: FeatureConfig) -> float:
    """Where `freq` (Hz) falls on the fbank's mel-bin axis (0 … n_mels − 1, fractional):
    Kaldi's mel scale from 20 Hz to Nyquist, as `patchmix.data.features` computes it."""
    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)
    lo, hi = mel(20.0), mel(cfg.sample_rate / 2)
    return (mel(freq) - lo) / ((hi - lo) / (cfg.n_mels + 1)) - 1


def mel_frequency(position: float, cfg: FeatureConfig) -> float:
    """The frequency (Hz) at a position on the mel-bin axis: the inverse of `mel_bin`."""
    lo = 1127.0 * math.log(1.0 + 20.0 / 700.0)
    hi = 1127.0 * math.log(1.0 + cfg.sample_rate / 2 / 700.0)
    mel = lo + (position + 1) * (hi - lo) / (cfg.n_mels + 1)
    return 700.0 * (math.exp(mel / 1127.0) - 1.0)


def mel_ticks(ax: Any, cfg: FeatureConfig, axis: str = "y") -> None:
    """Label the `axis` ("y" or "x") of a plot over mel bins in Hz (`mel_bin`)."""
    freqs = [f for f in (100, 500, 1000, 2000, 4000) if f < cfg.sample_rate / 2]
    ticks = ([mel_bin(f, cfg) for f in freqs],
             [f"{f // 1000}k" if f >= 1000 else str(f) for f in freqs])
    if axis == "x":
        ax.set_xticks(*ticks)
        ax.set_xlabel("frequency (Hz)")
    else:
        ax.set_yticks(*ticks)
        ax.set_ylabel("frequency (Hz)")
