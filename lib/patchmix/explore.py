"""Data exploration for notebook 01: what is in an ICBHI-layout folder, and what the
preprocessing of PAPER.md §3 does to one respiratory cycle.

Tables are tidy DataFrames computed straight from the cycle table of
`patchmix.icbhi.read_icbhi` (one row per cycle), so on the full ICBHI download they reproduce
the counts of PAPER.md §2. Figures use the colours of `patchmix.plots` and are returned, never
saved: the notebook saves them through `patchmix.report.Outputs`.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from patchmix.audio import cut, fix_length, load_wav, prepare_recording
from patchmix.config import FeatureConfig
from patchmix.datasets import CLASSES
from patchmix.features import fbank
from patchmix.plots import CLASS_COLORS, DEVICE_COLORS, PALETTE

SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test")
SPLIT_COLORS: dict[str, str] = {"train": PALETTE[5], "val": PALETTE[2], "test": PALETTE[4]}
ALL = "all"  # the split label of the rows that count every split together


# ----------------------------------------------------------------------------- tables


def splits(cycles: pd.DataFrame) -> list[str]:
    """The splits present in the cycle table, in the order train, val, test."""
    present = set(cycles["split"])
    return [s for s in SPLIT_ORDER if s in present] + sorted(present - set(SPLIT_ORDER))


def cycle_seconds(cycles: pd.DataFrame) -> pd.Series:
    """Duration of each cycle in seconds, its end clamped to the recording (as the cut is)."""
    return (cycles["end"].clip(upper=cycles["duration"]) - cycles["start"]).rename("seconds")


def overview(cycles: pd.DataFrame) -> pd.DataFrame:
    """One row per split and one for all: recordings, patients, cycles, abnormal share, median
    cycle duration."""
    seconds = cycle_seconds(cycles)
    rows = []
    for split in [*splits(cycles), ALL]:
        mask = cycles["split"] == split if split != ALL else np.ones(len(cycles), bool)
        part = cycles[mask]
        rows.append({
            "split": split,
            "recordings": int(part["recording"].nunique()),
            "patients": int(part["patient"].nunique()),
            "cycles": int(len(part)),
            "percent_abnormal": 100.0 * part["label2"].mean() if len(part) else math.nan,
            "median_cycle_s": float(seconds[mask].median()) if len(part) else math.nan,
        })
    return pd.DataFrame(rows)


def class_counts(cycles: pd.DataFrame) -> pd.DataFrame:
    """Cycles per split × class (every class, zeros included), then the same over all splits.

    Columns: ``split``, ``class``, ``cycles``, ``percent`` (of the split's cycles).
    """
    rows = []
    for split in [*splits(cycles), ALL]:
        labels = cycles["label"] if split == ALL else cycles.loc[cycles["split"] == split, "label"]
        for i, name in enumerate(CLASSES):
            n = int((labels == i).sum())
            rows.append({"split": split, "class": name, "cycles": n,
                         "percent": 100.0 * n / len(labels) if len(labels) else math.nan})
    return pd.DataFrame(rows)


def device_counts(cycles: pd.DataFrame) -> pd.DataFrame:
    """Recordings, patients and cycles per device × split (zeros included), with each device's
    share of its split: the device imbalance between train and test.

    Columns: ``device``, ``split``, ``recordings``, ``patients``, ``cycles``,
    ``percent_of_split_cycles``.
    """
    rows = []
    split_sizes = cycles["split"].value_counts()
    for device in sorted(cycles["device"].unique()):
        for split in splits(cycles):
            part = cycles[(cycles["device"] == device) & (cycles["split"] == split)]
            rows.append({"device": device, "split": split,
                         "recordings": int(part["recording"].nunique()),
                         "patients": int(part["patient"].nunique()),
                         "cycles": int(len(part)),
                         "percent_of_split_cycles": 100.0 * len(part) / split_sizes[split]})
    return pd.DataFrame(rows, columns=["device", "split", "recordings", "patients", "cycles",
                                       "percent_of_split_cycles"])


def audio_formats(cycles: pd.DataFrame) -> pd.DataFrame:
    """Recordings and cycles per device × sample rate × bit depth (combinations that occur)."""
    grouped = cycles.groupby(["device", "sample_rate", "bits"], sort=True)
    return grouped.agg(recordings=("recording", "nunique"),
                       cycles=("recording", "size")).reset_index()


def duration_summary(cycles: pd.DataFrame, limit_s: float = 8.0) -> pd.DataFrame:
    """Cycle durations (s) per class and over all cycles: min, median, mean, max and how many
    cycles exceed `limit_s` (those lose their end to the fixed length)."""
    seconds = cycle_seconds(cycles)
    rows = []
    for name, mask in [*((c, cycles["label"] == i) for i, c in enumerate(CLASSES)),
                       (ALL, pd.Series(True, index=cycles.index))]:
        s = seconds[mask]
        empty = len(s) == 0
        rows.append({"class": name, "cycles": int(len(s)),
                     "min_s": math.nan if empty else float(s.min()),
                     "median_s": math.nan if empty else float(s.median()),
                     "mean_s": math.nan if empty else float(s.mean()),
                     "max_s": math.nan if empty else float(s.max()),
                     f"over_{limit_s:g}s": int((s > limit_s).sum())})
    return pd.DataFrame(rows)


def shared_patients(cycles: pd.DataFrame) -> pd.DataFrame:
    """Patients with recordings in more than one split (a leak of the official split), one row
    per patient × split: ``patient``, ``split``, ``recordings``, ``cycles``. Empty if none."""
    n_splits = cycles.groupby("patient")["split"].nunique()
    shared = cycles[cycles["patient"].isin(n_splits[n_splits > 1].index)]
    table = shared.groupby(["patient", "split"]).agg(
        recordings=("recording", "nunique"), cycles=("recording", "size")).reset_index()
    rank = table["split"].map({s: i for i, s in enumerate(SPLIT_ORDER)}).fillna(len(SPLIT_ORDER))
    table = table.assign(rank=rank).sort_values(["patient", "rank"])
    return table.reset_index(drop=True)[["patient", "split", "recordings", "cycles"]]


# ----------------------------------------------------------------------------- count figures


def _bar_labels(ax: Axes, bars: Any, fmt: str = "{:.0f}") -> None:
    ax.bar_label(bars, labels=[fmt.format(b.get_height()) for b in bars], fontsize=7, padding=1)


def class_counts_figure(counts: pd.DataFrame) -> Figure:
    """Left: cycles per class in each split; right: the class mix of each split (% of cycles).

    `counts` is the table of `class_counts`.
    """
    per_split = counts[counts["split"] != ALL]
    names = list(dict.fromkeys(per_split["split"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6),
                                      gridspec_kw={"width_ratios": [1.3, 1]},
                                      layout="constrained")
    width = 0.8 / len(CLASSES)
    x = np.arange(len(names))
    for k, name in enumerate(CLASSES):
        n = per_split[per_split["class"] == name].set_index("split").reindex(names)["cycles"]
        bars = left.bar(x + (k - 1.5) * width, n, width, color=CLASS_COLORS[name], label=name)
        _bar_labels(left, bars)
    left.set_xticks(x, names)
    left.set_xlabel("split")
    left.set_ylabel("cycles")
    left.set_title("Cycles per class and split")
    left.margins(y=0.12)
    _stacked_shares(right, per_split, "split", "class", "percent", names, list(CLASSES),
                    CLASS_COLORS)
    right.set_title("Class mix of each split")
    fig.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncols=4,
               frameon=False)
    return fig


def device_figure(devices: pd.DataFrame) -> Figure:
    """Left: cycles per device in each split; right: the device mix of each split (% of cycles).

    `devices` is the table of `device_counts`.
    """
    names = list(dict.fromkeys(devices["split"]))
    device_names = list(dict.fromkeys(devices["device"]))
    colours = {d: DEVICE_COLORS.get(d, PALETTE[i % len(PALETTE)])
               for i, d in enumerate(device_names)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6),
                                      gridspec_kw={"width_ratios": [1.3, 1]},
                                      layout="constrained")
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(device_names))
    for k, split in enumerate(names):
        n = devices[devices["split"] == split].set_index("device").reindex(device_names)
        bars = left.bar(x + (k - (len(names) - 1) / 2) * width, n["cycles"], width,
                        color=SPLIT_COLORS.get(split, PALETTE[7]), label=split)
        _bar_labels(left, bars)
    left.set_xticks(x, device_names)
    left.set_xlabel("stethoscope / microphone")
    left.set_ylabel("cycles")
    left.set_title("Cycles per device and split")
    left.margins(y=0.12)
    _stacked_shares(right, devices, "split", "device", "percent_of_split_cycles", names,
                    device_names, colours)
    right.set_title("Device mix of each split")
    fig.legend(*left.get_legend_handles_labels(), loc="outside lower left", ncols=len(names),
               frameon=False, title="split (left panel)")
    fig.legend(*right.get_legend_handles_labels(), loc="outside lower right",
               ncols=len(device_names), frameon=False, title="device (right panel)")
    return fig


def _stacked_shares(ax: Axes, table: pd.DataFrame, row: str, part: str, value: str,
                    rows: list[str], parts: list[str], colours: dict[str, str]) -> None:
    """Horizontal 100 % bars, one per `row` value, split into `parts` (labelled if ≥ 6 %)."""
    wide = table.pivot_table(index=row, columns=part, values=value, aggfunc="sum")
    wide = wide.reindex(index=rows, columns=parts).fillna(0.0)  # (rows, parts) in %
    y = np.arange(len(rows))[::-1]
    left = np.zeros(len(rows))
    for name in parts:
        share = wide[name].to_numpy()
        ax.barh(y, share, left=left, color=colours[name], label=name, height=0.6)
        for yi, lo, s in zip(y, left, share, strict=True):
            if s >= 6:
                ax.text(lo + s / 2, yi, f"{s:.0f}", ha="center", va="center", fontsize=8,
                        color="white")
        left += share
    ax.set_yticks(y, rows)
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the split's cycles")
    ax.grid(False)


def duration_figure(cycles: pd.DataFrame, limit_s: float = 8.0, bin_s: float = 0.25) -> Figure:
    """Histogram of cycle durations per class, marking the fixed length `limit_s` and each
    class's median; the count of cycles longer than `limit_s` is written in each panel."""
    seconds = cycle_seconds(cycles)
    top = max(limit_s + 1.0, math.ceil(float(seconds.max())) if len(seconds) else 0.0)
    bins = np.arange(0.0, top + bin_s, bin_s)
    fig, axes = plt.subplots(len(CLASSES), 1, figsize=(7.5, 6.6), sharex=True,
                             layout="constrained")
    for i, (ax, name) in enumerate(zip(axes, CLASSES, strict=True)):
        s = seconds[cycles["label"] == i]
        ax.set_title(f"{name} (n = {len(s)})", loc="left", fontsize=10)
        ax.axvline(limit_s, color="grey", ls="--", lw=1.0)
        ax.set_ylabel("cycles")
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        where = blended_transform_factory(ax.transData, ax.transAxes)
        if len(s) == 0:
            ax.text(limit_s / 2, 0.5, "no cycles of this class", transform=where,
                    ha="center", va="center", color="grey")
            continue
        ax.hist(s, bins=bins, color=CLASS_COLORS[name])
        median = float(s.median())
        ax.axvline(median, color="black", ls=":", lw=1.2)
        ax.text(limit_s - 0.15, 0.92, f"median {median:.1f} s\n"
                f"{int((s > limit_s).sum())} longer than {limit_s:g} s", transform=where,
                ha="right", va="top", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})
    axes[-1].set_xlabel("cycle duration (s)")
    axes[-1].set_xlim(0, top)
    fig.legend(handles=[Line2D([], [], color="grey", ls="--", label=f"{limit_s:g} s: the fixed "
                               "length (longer cycles are cut, shorter ones padded)"),
                        Line2D([], [], color="black", ls=":", label="median of the class")],
               loc="outside lower center", ncols=1, frameon=False, fontsize=8)
    fig.suptitle("How long is a respiratory cycle?")
    return fig


# ----------------------------------------------------------------------------- audio examples


def pick_examples(cycles: pd.DataFrame, seed: int = 0, *, min_s: float = 1.0,
                  max_s: float = 6.0) -> pd.DataFrame:
    """One random cycle per class present (reproducible for a `seed`), preferring durations in
    [`min_s`, `max_s`]; ordered by class, with a ``seconds`` column."""
    seconds = cycle_seconds(cycles)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(len(CLASSES)):
        of_class = cycles.index[cycles["label"] == i]
        if len(of_class) == 0:
            continue
        s = seconds[of_class]
        preferred = of_class[((s >= min_s) & (s <= max_s)).to_numpy()]
        pool = preferred if len(preferred) else of_class
        rows.append(rng.choice(np.asarray(pool)))
    out = cycles.loc[rows].copy()
    out["seconds"] = seconds[rows]
    return out


def load_cycle(row: pd.Series, cfg: FeatureConfig | None = None) -> torch.Tensor:
    """One cycle as the pipeline cuts it (PAPER.md §3 steps 1-3): (samples at 16 kHz,)."""
    cfg = cfg or FeatureConfig()
    waveform, rate = load_wav(row["path"])
    recording = prepare_recording(waveform, rate, cfg)  # (samples,) resampled and faded
    return cut(recording, float(row["start"]), float(row["end"]), cfg.sample_rate)


def padded_versions(row: pd.Series, cfg: FeatureConfig | None = None) -> dict[str, np.ndarray]:
    """The cut cycle and both ways of bringing it to the fixed length (step 4).

    Returns ``{"cycle": (n,), "repeat": (cfg.cycle_samples,), "zero": (cfg.cycle_samples,)}``;
    with the default config the padded ones hold 128,000 samples (8 s at 16 kHz).
    """
    cfg = cfg or FeatureConfig()
    cycle = load_cycle(row, cfg)
    return {"cycle": cycle.numpy(),
            "repeat": fix_length(cycle, cfg.cycle_samples, "repeat", cfg.fade_samples).numpy(),
            "zero": fix_length(cycle, cfg.cycle_samples, "zero", cfg.fade_samples).numpy()}


def spectrogram(waveform: np.ndarray, cfg: FeatureConfig | None = None) -> np.ndarray:
    """The normalised Kaldi fbank the model sees (steps 5-6): (frames, mels), 798 × 128 for 8 s."""
    return fbank(torch.as_tensor(waveform, dtype=torch.float32)[None], cfg)[0].numpy()


def _mel_ticks(ax: Axes, cfg: FeatureConfig) -> None:
    """Label the mel-bin axis in Hz (Kaldi's mel scale, 20 Hz to Nyquist)."""
    def mel(f: float) -> float:
        return 1127.0 * math.log(1.0 + f / 700.0)
    lo, hi = mel(20.0), mel(cfg.sample_rate / 2)
    step = (hi - lo) / (cfg.n_mels + 1)
    freqs = [f for f in (100, 500, 1000, 2000, 4000) if f < cfg.sample_rate / 2]
    ax.set_yticks([(mel(f) - lo) / step - 1 for f in freqs],
                  [f"{f // 1000}k" if f >= 1000 else str(f) for f in freqs])
    ax.set_ylabel("frequency (Hz)")


def _show_spectrogram(ax: Axes, spec: np.ndarray, cfg: FeatureConfig, vmin: float,
                      vmax: float) -> Any:
    frames = spec.shape[0]
    image = ax.imshow(spec.T, origin="lower", aspect="auto", vmin=vmin, vmax=vmax,
                      extent=(0.0, frames * cfg.frame_shift_ms / 1000, 0, spec.shape[1]))
    ax.grid(False)
    ax.set_xlabel("time (s)")
    _mel_ticks(ax, cfg)
    return image


def _colour_range(specs: list[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([s.ravel() for s in specs])
    return float(np.quantile(values, 0.01)), float(np.quantile(values, 0.995))


def _waveform(ax: Axes, x: np.ndarray, rate: int, colour: str, offset_s: float = 0.0,
              **kwargs: Any) -> None:
    t = offset_s + np.arange(len(x)) / rate
    ax.plot(t, x, color=colour, lw=0.4, **kwargs)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("amplitude")


def examples_figure(examples: pd.DataFrame, cfg: FeatureConfig | None = None) -> Figure:
    """Per example cycle (`pick_examples`): its waveform as cut (left) and the 798 × 128 fbank of
    its repeat-padded 8 s version (right), a dashed line where the first repeat begins."""
    cfg = cfg or FeatureConfig()
    waves = [padded_versions(row, cfg) for _, row in examples.iterrows()]
    specs = [spectrogram(w["repeat"], cfg) for w in waves]  # each (798, 128)
    vmin, vmax = _colour_range(specs) if specs else (0.0, 1.0)
    n = max(len(waves), 1)
    fig, axes = plt.subplots(n, 2, figsize=(10.0, 2.5 * n + 0.4), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.6]}, layout="constrained")
    image = None
    for (ax_w, ax_s), (_, row), w, spec in zip(axes, examples.iterrows(), waves, specs,
                                               strict=False):
        name = CLASSES[int(row["label"])]
        _waveform(ax_w, w["cycle"], cfg.sample_rate, CLASS_COLORS[name])
        ax_w.set_title(f"{name}: {row['recording']}, cycle {row['cycle']}\n"
                       f"{row['seconds']:.1f} s, recorded at {row['sample_rate'] / 1000:g} kHz",
                       loc="left", fontsize=9)
        image = _show_spectrogram(ax_s, spec, cfg, vmin, vmax)
        ax_s.axvline(len(w["cycle"]) / cfg.sample_rate, color="white", ls="--", lw=1.0)
        ax_s.set_title(f"{name}: model input ({spec.shape[0]} frames × {spec.shape[1]} mel bins)",
                       loc="left", fontsize=9)
    if image is None:
        for ax in axes.flat:
            ax.set_visible(False)
        return fig
    fig.colorbar(image, ax=axes[:, 1], label="normalised log-mel energy", shrink=0.8)
    fig.suptitle("Left: the cycle as cut (16 kHz).  Right: its fbank after repeat padding "
                 "to 8 s; dashed line = where the first repeat starts", fontsize=10)
    return fig


def padding_figure(row: pd.Series, cfg: FeatureConfig | None = None) -> Figure:
    """What the fixed 8 s length does to one short cycle: the cycle as cut; repeat padding (the
    official recipe: tiled, then faded out) against zero padding (centred); their fbanks."""
    cfg = cfg or FeatureConfig()
    w = padded_versions(row, cfg)
    rate, total_s = cfg.sample_rate, cfg.cycle_samples / cfg.sample_rate
    name = CLASSES[int(row["label"])]
    colour = CLASS_COLORS[name]
    n = len(w["cycle"])
    fig = plt.figure(figsize=(10.0, 7.2), layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=[1, 1, 1.4])
    ax0 = fig.add_subplot(grid[0, :])
    _waveform(ax0, w["cycle"], rate, colour)
    ax0.set_xlim(0, total_s)
    ax0.set_title(f"the cycle as cut: {name}, {row['recording']}, cycle {row['cycle']}, "
                  f"{n / rate:.2f} s = {n:,} samples at {rate / 1000:g} kHz", loc="left")
    ax_r = fig.add_subplot(grid[1, 0], sharey=ax0)
    _waveform(ax_r, w["repeat"], rate, PALETTE[7], label="repeat-padded (8 s)")
    _waveform(ax_r, w["repeat"][:n], rate, colour, label="original cycle")
    for k in range(1, math.ceil(cfg.cycle_samples / n)):
        ax_r.axvline(k * n / rate, color="grey", ls=":", lw=0.8)
    ax_r.set_title(f"repeat padding (official): copies in black,\ncut at {total_s:g} s, "
                   "then faded out", loc="left", fontsize=10)
    ax_z = fig.add_subplot(grid[1, 1], sharey=ax0)
    offset = (cfg.cycle_samples - n) // 2
    _waveform(ax_z, w["zero"], rate, PALETTE[7], label="zero-padded (8 s)")
    _waveform(ax_z, w["zero"][offset:offset + n], rate, colour, offset_s=offset / rate,
              label="original cycle")
    ax_z.set_title("zero padding (alternative):\nthe cycle centred in silence", loc="left",
                   fontsize=10)
    for ax in (ax_r, ax_z):
        ax.set_xlim(0, total_s)
    specs = [spectrogram(w["repeat"], cfg), spectrogram(w["zero"], cfg)]  # 2 × (798, 128)
    vmin, vmax = _colour_range(specs)
    image = None
    for col, (spec, label) in enumerate(zip(specs, ("repeat-padded", "zero-padded"),
                                            strict=True)):
        ax = fig.add_subplot(grid[2, col])
        image = _show_spectrogram(ax, spec, cfg, vmin, vmax)
        ax.set_title(f"fbank of the {label} cycle ({spec.shape[0]} × {spec.shape[1]})",
                     loc="left", fontsize=10)
    fig.colorbar(image, ax=fig.axes[-2:], label="normalised log-mel", shrink=0.9)
    return fig
