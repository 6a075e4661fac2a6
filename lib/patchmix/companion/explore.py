"""Data exploration for notebook 01: what is in an ICBHI-layout folder, and what the
preprocessing of docs/recipe.md#preprocessing does to one respiratory cycle.

Tables are tidy DataFrames computed straight from the cycle table of
`patchmix.data.icbhi.read_icbhi` (one row per cycle), so on the full ICBHI download they reproduce
the counts of docs/data.md. Figures use the colours of `patchmix.companion.plots` and are returned,
never saved: the notebook saves them through `patchmix.companion.report.Outputs`.

Two more things for the reader of notebook 01: players for the example cycles (the cut and the
model's fixed-length input, `audio_players`), and a small rule-based detector that says where in
a cycle the crackles and wheezes are (`detect_events`), because the annotations only say
whether a cycle holds them; `detection_rates` checks how often it fires per annotated class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from scipy import ndimage, signal

from patchmix.companion.plots import CLASS_COLORS, DEVICE_COLORS, PALETTE, mel_ticks
from patchmix.config import FeatureConfig
from patchmix.data.audio import cut, fix_length, load_wav, prepare_recording, recording_cycles
from patchmix.data.dataset import CLASSES
from patchmix.data.features import fbank
from patchmix.engine.metrics import ALL  # the split label of rows that count every split together

SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test", "test_intra", "test_inter")
SPLIT_COLORS: dict[str, str] = {"train": PALETTE[5], "val": PALETTE[2], "test": PALETTE[4],
                                "test_intra": PALETTE[4], "test_inter": PALETTE[3]}


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


# ----------------------------------------------------------------------------- split contrasts


def split_shift(cycles: pd.DataFrame, column: str, a: str = "train", b: str = "test") -> float:
    """How differently `column` (``"label"``, ``"device"``, …) is spread over the cycles of
    split `a` and split `b`, in percentage points: half the sum of the absolute differences of
    the two distributions (0: the same mix, 100: no value in common). NaN if a split is empty.
    """
    shares = [cycles.loc[cycles["split"] == s, column].value_counts(normalize=True) for s in (a, b)]
    if any(len(s) == 0 for s in shares):
        return math.nan
    both = pd.concat(shares, axis=1).fillna(0.0)  # (values, 2)
    return float(50.0 * (both.iloc[:, 0] - both.iloc[:, 1]).abs().sum())


def class_mix_line(cycles: pd.DataFrame) -> str:
    """How the class mix of train and of each test part (``test``, or SPRSound's
    ``test_intra`` and ``test_inter``) differs in `cycles`, one line per test part."""
    counts = class_counts(cycles)
    tests = [s for s in splits(cycles) if s == "test" or s.startswith("test_")]
    if "train" not in set(counts["split"]) or not tests:
        return "class mix: this data has no train/test pair to compare"
    share = counts.pivot(index="class", columns="split", values="percent").reindex(CLASSES)
    lines = []
    for test in tests:
        parts = ", ".join(f"{c} {share.loc[c, 'train']:.0f} % / {share.loc[c, test]:.0f} %"
                          for c in CLASSES)
        lines.append(f"class mix, train / {test}: {parts}; the two mixes differ by "
                     f"{split_shift(cycles, 'label', b=test):.0f} points (0 = same mix, "
                     "100 = disjoint)")
    return "\n".join(lines)


def device_split_line(cycles: pd.DataFrame) -> str:
    """One line on how the devices are spread over the splits of `cycles`: per device its
    recordings in train / test (``train only`` / ``test only`` where that holds), and how far
    the device mix of train and test differs (`split_shift`)."""
    rec = cycles.drop_duplicates("recording")
    parts = []
    for device in sorted(rec["device"].unique()):
        n = rec.loc[rec["device"] == device, "split"].value_counts()
        train, test = int(n.get("train", 0)), int(n.get("test", 0))
        where = "train only" if not test else "test only" if not train else f"{train} / {test}"
        parts.append(f"{device} {where}" + ("" if train and test else f" ({train + test})"))
    shift = split_shift(cycles, "device")
    tail = "" if math.isnan(shift) else (f"; the device mix of train and test cycles differs by "
                                         f"{shift:.0f} points (0 = same mix, 100 = disjoint)")
    return "recordings per device, train / test: " + ", ".join(parts) + tail


def duration_line(cycles: pd.DataFrame, limit_s: float = 8.0) -> str:
    """One line on cycle lengths against the fixed length `limit_s`: the median, the share
    short enough to fit twice or more, and how many lose their end."""
    seconds = cycle_seconds(cycles)
    if len(seconds) == 0:
        return "no cycles"
    twice = 100.0 * float((seconds <= limit_s / 2).mean())
    return (f"median cycle {float(seconds.median()):.1f} s; {twice:.0f} % of the cycles are at "
            f"most {limit_s / 2:g} s long, so their {limit_s:g} s input holds two or more whole "
            f"copies; {int((seconds > limit_s).sum())} of {len(seconds)} are longer than "
            f"{limit_s:g} s and lose their end")


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


# ----------------------------------------------------------------------------- event detector
# ICBHI annotates whole cycles (crackle yes/no, wheeze yes/no), never where in the cycle an event
# is. To point at the events in a figure, two textbook rules find them: crackles are short
# explosive transients, wheezes sustained tones. They are a reading aid, not a classifier: see
# `detection_rates` for how often they fire per class.

CRACKLE_HIGHPASS_HZ = 200.0  # below it lie breath noise (100-200 Hz peak) and heart sounds
CRACKLE_THRESHOLD_DB = 16.0  # a crackle's energy over its surroundings' median
CRACKLE_MAX_MS = 25.0  # longer bursts are not crackles (coarse ones last 15-25 ms)
WHEEZE_BAND_HZ = (100.0, 1000.0)  # where a wheeze's pitch lies
WHEEZE_PROMINENCE_DB = 12.0  # a wheeze's spectral peak over the median around it
WHEEZE_MIN_MS = 100.0  # shorter tones are not wheezes (heart sounds last ~50 ms)
EVENT_COLORS: dict[str, str] = {"crackle": CLASS_COLORS["crackle"],
                                "wheeze": CLASS_COLORS["wheeze"]}


@dataclass(frozen=True)
class Events:
    """Where the rules of `detect_events` find events in one cycle (seconds from its start)."""

    crackles: np.ndarray  # (k,) time of each crackle's energy peak
    wheezes: np.ndarray  # (m, 3) start, end and median pitch (Hz) of each tonal ridge


def crackle_contrast(x: np.ndarray, rate: int, *, highpass_hz: float = CRACKLE_HIGHPASS_HZ,
                     frame_ms: float = 1.0, background_ms: float = 300.0) -> np.ndarray:
    """Per `frame_ms` frame, how far the energy of the high-passed signal stands above the
    median of the surrounding `background_ms` (dB): (frames,). A running median follows the
    breath's loudness, so a loud inspiration is not a crackle; a floor at a tenth of the whole
    cycle's median keeps near-silence (the recording's fades) from making ratios of nothing.
    (The Teager-Kaiser energy in place of the plain square found fewer of the synthetic set's
    crackles at the same false-alarm rate.)"""
    x = np.asarray(x, dtype=np.float64)
    hop = max(1, round(rate * frame_ms / 1000))
    if len(x) < 4 * hop or len(x) < 64:
        return np.zeros(len(x) // hop)
    sos = signal.butter(4, highpass_hz, "highpass", fs=rate, output="sos")
    energy = signal.sosfiltfilt(sos, x) ** 2  # (n,)
    n = len(energy) // hop
    frames = energy[:n * hop].reshape(n, hop).mean(axis=1)  # (frames,)
    width = max(3, int(background_ms / frame_ms) | 1)  # odd
    background = ndimage.median_filter(frames, size=width, mode="reflect")
    floor = 0.1 * float(np.median(frames)) + 1e-30
    return 10.0 * np.log10((frames + 1e-30) / np.maximum(background, floor))


def detect_crackles(x: np.ndarray, rate: int, *, threshold_db: float = CRACKLE_THRESHOLD_DB,
                    max_ms: float = CRACKLE_MAX_MS, decay_db: float = 20.0,
                    onset_db: float = 6.0, prior_ms: float = 15.0, frame_ms: float = 1.0,
                    **contrast: float) -> np.ndarray:
    """Times (s, from the cycle's start) of crackle-like transients in a 1-D waveform: (k,).

    On the `crackle_contrast` track, a candidate is a run of frames above half the threshold
    (hysteresis) that peaks above `threshold_db`. It is a crackle if it is short: the frames
    around its peak within `decay_db` of it (and above half the threshold) last at most
    `max_ms`, so a loud crackle's long, faint ring-down does not count against it; and if its
    onset is sudden: the peak rises at least `onset_db` above everything from `prior_ms` to
    3 ms before it. The onset test rejects the rapid beating of a wheeze's harmonics, whose
    peaks follow each other every few milliseconds.
    `contrast` goes to `crackle_contrast` (``highpass_hz``, ``background_ms``).
    """
    ratio = crackle_contrast(x, rate, frame_ms=frame_ms, **contrast)  # (frames,) dB
    if ratio.size == 0:
        return np.zeros(0)
    hop = max(1, round(rate * frame_ms / 1000))
    before, guard = round(prior_ms / frame_ms), round(3.0 / frame_ms)
    runs, _ = ndimage.label(ratio >= threshold_db / 2)
    times = []
    for (span,) in ndimage.find_objects(runs):
        part = ratio[span]
        top, at = float(part.max()), int(np.argmax(part))
        if top < threshold_db:
            continue
        core, _ = ndimage.label(part >= max(top - decay_db, threshold_db / 2))
        if np.count_nonzero(core == core[at]) * frame_ms > max_ms:
            continue
        peak = span.start + at
        prior = ratio[max(0, peak - before):max(0, peak - guard)]
        if prior.size and top - prior.max() < onset_db:
            continue
        times.append((peak + 0.5) * hop / rate)
    return np.asarray(times, dtype=np.float64)


def tonal_prominence(x: np.ndarray, rate: int, *, window_ms: float = 64.0,
                     hop_ms: float = 16.0, median_hz: float = 300.0, max_hz: float = 1300.0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How far each time-frequency bin stands above the median of the `median_hz` around it
    (dB), from a Hann-window power spectrogram averaged over two hops.

    Returns ``(freqs (F,), times (T,), prominence (F, T))`` up to `max_hz`; a 64 ms window
    resolves 16 Hz. A tone is a narrow peak (high prominence); breath noise is smooth (low).
    """
    x = np.asarray(x, dtype=np.float64)
    size, hop = round(rate * window_ms / 1000), round(rate * hop_ms / 1000)
    if len(x) < size + hop:
        return np.zeros(0), np.zeros(0), np.zeros((0, 0))
    nfft = 1 << (size - 1).bit_length()
    freqs, times, power = signal.spectrogram(x, rate, window="hann", nperseg=size,
                                             noverlap=size - hop, nfft=nfft, detrend=False)
    keep = freqs <= max_hz
    freqs, power = freqs[keep], ndimage.uniform_filter1d(power[keep], 2, axis=1)  # (F, T)
    db = 10.0 * np.log10(power + 1e-30)
    width = max(3, int(median_hz / freqs[1]) | 1)  # odd, in bins
    return freqs, times, db - ndimage.median_filter(db, size=(width, 1), mode="nearest")


def detect_wheezes(x: np.ndarray, rate: int, *, band: tuple[float, float] = WHEEZE_BAND_HZ,
                   prominence_db: float = WHEEZE_PROMINENCE_DB, min_ms: float = WHEEZE_MIN_MS,
                   hop_ms: float = 16.0) -> np.ndarray:
    """Sustained tones in a 1-D waveform: (m, 3) rows of start (s), end (s), median pitch (Hz).

    Bins in `band` whose `tonal_prominence` reaches `prominence_db` are joined into ridges
    (neighbours in time and frequency, so a pitch may glide one bin per hop); a ridge lasting
    at least `min_ms` is a wheeze. Ridges that overlap in time (a tone's harmonics, or two
    tones at once) make one wheeze, spanning them all, at the pitch of the lowest.
    """
    freqs, times, prominence = tonal_prominence(x, rate, hop_ms=hop_ms)
    if prominence.size == 0:
        return np.zeros((0, 3))
    in_band = ((freqs >= band[0]) & (freqs <= band[1]))[:, None]
    ridges, _ = ndimage.label((prominence >= prominence_db) & in_band,
                              structure=np.ones((3, 3), bool))  # (F, T) ridge ids
    found = []
    for i, (f_span, t_span) in enumerate(ndimage.find_objects(ridges), 1):
        if (t_span.stop - 1 - t_span.start) * hop_ms < min_ms:
            continue
        rows = np.nonzero(ridges[f_span, t_span] == i)[0] + f_span.start
        found.append([times[t_span.start] - hop_ms / 2000, times[t_span.stop - 1] + hop_ms / 2000,
                      float(np.median(freqs[rows]))])
    merged: list[list[float]] = []
    for start, end, pitch in sorted(found):
        if merged and start < merged[-1][1]:  # overlaps the previous wheeze: the same one
            last = merged[-1]
            last[1], last[2] = max(last[1], end), min(last[2], pitch)
        else:
            merged.append([start, end, pitch])
    return np.asarray(merged, dtype=np.float64).reshape(-1, 3)


def detect_events(x: np.ndarray, rate: int) -> Events:
    """Crackles (`detect_crackles`) and wheezes (`detect_wheezes`) of one cycle's waveform,
    with the default rules."""
    return Events(detect_crackles(x, rate), detect_wheezes(x, rate))


def recording_cuts(cycles: pd.DataFrame, cfg: FeatureConfig
                   ) -> Iterator[tuple[pd.Series, np.ndarray]]:
    """(row, cut cycle) for every cycle, each recording read and prepared once."""
    for path, group in cycles.groupby("path", sort=False):
        waveform, rate = load_wav(path)
        recording = prepare_recording(waveform, rate, cfg)  # (samples at 16 kHz,)
        for _, row in group.iterrows():
            yield row, cut(recording, float(row["start"]), float(row["end"]),
                           cfg.sample_rate).numpy()


def detection_rates(cycles: pd.DataFrame, *, max_cycles: int = 300, seed: int = 0,
                    cfg: FeatureConfig | None = None,
                    detector: Callable[[np.ndarray, int], Events] = detect_events
                    ) -> pd.DataFrame:
    """How often a `detector` (the rules of `detect_events` by default) fires, per annotated
    class: the detector's check.

    Whole recordings are drawn at random (reproducible for a `seed`) until at least
    `max_cycles` cycles are in, and every cycle is cut as the pipeline cuts it. Columns:
    ``class``, ``cycles``, ``recordings``, ``with_crackles_pct`` / ``with_wheezes_pct`` (share of
    the class's cycles with at least one detection), ``crackles_per_cycle``.
    """
    cfg = cfg or FeatureConfig()
    order = np.random.default_rng(seed).permutation(cycles["recording"].unique())
    sizes = cycles.groupby("recording").size().reindex(order)
    chosen = order[:int(np.searchsorted(np.cumsum(sizes.to_numpy()), max_cycles)) + 1]
    rows = []
    for row, x in recording_cuts(cycles[cycles["recording"].isin(chosen)], cfg):
        events = detector(x, cfg.sample_rate)
        rows.append({"class": CLASSES[int(row["label"])], "recording": row["recording"],
                     "crackles": len(events.crackles), "wheezes": len(events.wheezes)})
    found = pd.DataFrame(rows, columns=["class", "recording", "crackles", "wheezes"])
    table = []
    for name in CLASSES:
        part = found[found["class"] == name]
        empty = len(part) == 0
        table.append({"class": name, "cycles": len(part),
                      "recordings": int(part["recording"].nunique()),
                      "with_crackles_pct": math.nan if empty else
                      100.0 * float((part["crackles"] > 0).mean()),
                      "with_wheezes_pct": math.nan if empty else
                      100.0 * float((part["wheezes"] > 0).mean()),
                      "crackles_per_cycle": math.nan if empty else float(part["crackles"].mean())})
    out = pd.DataFrame(table)
    out.attrs["recordings"] = int(found["recording"].nunique())
    return out


def detection_line(rates: pd.DataFrame) -> str:
    """The detector check of `detection_rates` as one printable line."""
    def shares(column: str) -> str:
        return ", ".join(f"{r['class']} {r[column]:.0f} %" for _, r in rates.iterrows()
                         if r["cycles"])
    n, recordings = int(rates["cycles"].sum()), rates.attrs.get("recordings", "?")
    return (f"detector check on {n} cycles ({recordings} recordings) of this data — cycles "
            f"with a crackle mark: "
            f"{shares('with_crackles_pct')}; with a wheeze mark: {shares('with_wheezes_pct')}")


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
    """One cycle as the pipeline cuts it (steps 1-3 of docs/recipe.md#preprocessing): (samples
    at 16 kHz,)."""
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


def _show_spectrogram(ax: Axes, spec: np.ndarray, cfg: FeatureConfig, vmin: float,
                      vmax: float) -> Any:
    frames = spec.shape[0]
    image = ax.imshow(spec.T, origin="lower", aspect="auto", vmin=vmin, vmax=vmax,
                      extent=(0.0, frames * cfg.frame_shift_ms / 1000, 0, spec.shape[1]))
    ax.grid(False)
    ax.set_xlabel("time (s)")
    mel_ticks(ax, cfg)
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


def copy_starts(n: int, cfg: FeatureConfig | None = None) -> np.ndarray:
    """Where (s) the copies of an `n`-sample cycle begin in its fixed-length model input:
    every n samples for repeat padding, the centring offset for zero padding, 0 for a cycle
    that is truncated. Events found in the cycle recur at these shifts."""
    cfg = cfg or FeatureConfig()
    if n >= cfg.cycle_samples:
        return np.zeros(1)
    if cfg.pad == "zero":
        return np.array([(cfg.cycle_samples - n) // 2 / cfg.sample_rate])
    return np.arange(0, cfg.cycle_samples, n) / cfg.sample_rate


def _mark_events(ax: Axes, events: Events, shifts: np.ndarray, end_s: float) -> None:
    """Wheeze bars and crackle triangles in a strip just above `ax` (x in seconds), once per
    shift; marks past `end_s` (the input's end) are left out."""
    above = blended_transform_factory(ax.transData, ax.transAxes)
    for shift in shifts:
        for start, end, _ in events.wheezes:
            if start + shift < end_s:
                ax.plot([start + shift, min(end + shift, end_s)], [1.035, 1.035],
                        transform=above, clip_on=False, color=EVENT_COLORS["wheeze"], lw=3.5,
                        solid_capstyle="butt")
        times = events.crackles + shift
        times = times[times < end_s]
        if len(times):  # an empty unclipped line has no extent and upsets the layout
            ax.plot(times, np.full(len(times), 1.085), "v", transform=above, clip_on=False,
                    ms=4.5, color=EVENT_COLORS["crackle"], mec="black", mew=0.4)


def _events_text(events: Events) -> str:
    wheezes = len(events.wheezes)
    pitch = (f" (~{float(np.median(events.wheezes[:, 2])):.0f} Hz)" if wheezes else "")
    return (f"{len(events.crackles)} crackle{'s' * (len(events.crackles) != 1)}, "
            f"{wheezes} wheeze{'s' * (wheezes != 1)}{pitch} detected")


def examples_figure(examples: pd.DataFrame, cfg: FeatureConfig | None = None, *,
                    events: bool = True) -> Figure:
    """Per example cycle (`pick_examples`): its waveform as cut (left) and the 798 × 128 fbank of
    its padded 8 s version (right, ``cfg.pad``), a dashed line where the cycle ends.

    With `events`, marks above each panel show where `detect_events` finds crackles
    (triangles) and wheezes (bars) in the cycle, repeated on every copy in the model input:
    a simple rule's guess, since ICBHI annotates whole cycles only.
    """
    cfg = cfg or FeatureConfig()
    waves = [padded_versions(row, cfg) for _, row in examples.iterrows()]
    specs = [spectrogram(w[cfg.pad], cfg) for w in waves]  # each (798, 128)
    found = [detect_events(w["cycle"], cfg.sample_rate) for w in waves] if events else []
    vmin, vmax = _colour_range(specs) if specs else (0.0, 1.0)
    n = max(len(waves), 1)
    fig, axes = plt.subplots(n, 2, figsize=(10.0, 2.6 * n + 0.8), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.6]}, layout="constrained")
    image = None
    pad = 14 if events else 6  # room for the event strip under the titles
    total_s = cfg.cycle_samples / cfg.sample_rate
    for i, ((ax_w, ax_s), (_, row), w, spec) in enumerate(zip(axes, examples.iterrows(), waves,
                                                             specs, strict=False)):
        name = CLASSES[int(row["label"])]
        length_s = len(w["cycle"]) / cfg.sample_rate
        _waveform(ax_w, w["cycle"], cfg.sample_rate, CLASS_COLORS[name])
        ax_w.set_xlim(0, length_s)
        ax_w.set_title(f"{name}: {row['recording']}, cycle {row['cycle']}\n"
                       f"{row['seconds']:.1f} s, recorded at {row['sample_rate'] / 1000:g} kHz",
                       loc="left", fontsize=9, pad=pad)
        image = _show_spectrogram(ax_s, spec, cfg, vmin, vmax)
        shifts = copy_starts(len(w["cycle"]), cfg)
        for edge in {float(shifts[0]), float(shifts[0]) + length_s} - {0.0}:
            if edge < total_s:
                ax_s.axvline(edge, color="white", ls="--", lw=1.0)
        title = f"{name}: model input ({spec.shape[0]} frames × {spec.shape[1]} mel bins)"
        if events:
            limits = ax_s.get_xlim()
            _mark_events(ax_w, found[i], np.zeros(1), length_s)
            _mark_events(ax_s, found[i], shifts, total_s)
            ax_s.set_xlim(limits)  # the marks must not widen the image's time axis
            title += f"\n{_events_text(found[i])}"
        ax_s.set_title(title, loc="left", fontsize=9, pad=pad)
    if image is None:
        for ax in axes.flat:
            ax.set_visible(False)
        return fig
    fig.colorbar(image, ax=axes[:, 1], label="normalised log-mel energy", shrink=0.8)
    how = (f"repeat padding to {total_s:g} s; dashed line = where the cycle ends"
           if cfg.pad == "repeat" else
           f"zero padding (centred) to {total_s:g} s; dashed lines = the cycle's edges")
    fig.suptitle(f"Left: the cycle as cut ({cfg.sample_rate / 1000:g} kHz).  Right: its fbank "
                 f"after {how}", fontsize=10)
    if events:
        marks = [Line2D([], [], ls="", marker="v", ms=6, color=EVENT_COLORS["crackle"],
                        mec="black", mew=0.4, label="crackle: short explosive transient"),
                 Line2D([], [], color=EVENT_COLORS["wheeze"], lw=3.5, solid_capstyle="butt",
                        label="wheeze: sustained tone, 100-1000 Hz")]
        fig.legend(handles=marks, loc="outside lower center", ncols=2, frameon=False,
                   fontsize=8, title_fontsize=8,
                   title="Marks above the panels: where a simple rule (patchmix.companion.explore."
                   "detect_events) finds events, repeated on every copy.\nDetected, NOT "
                   "annotated: a label names a whole cycle (or event), not where in it.")
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


# ----------------------------------------------------------------------------- listening

# A player embeds its WAV (16-bit, base64) in the notebook: 8 s at 16 kHz is about 340 kB.


def listening_clips(row: pd.Series, cfg: FeatureConfig | None = None
                    ) -> dict[str, tuple[np.ndarray, int]]:
    """What to play for one cycle: ``{"cycle": (samples, rate), "model input": (samples, rate)}``.

    ``cycle`` is the cut as the pipeline makes it (16 kHz, after the recording's fades);
    ``model input`` is the fixed-length waveform the features are computed from, taken from
    `patchmix.data.audio.recording_cycles` itself (8 s, repeat-padded by default: ``cfg.pad``).
    """
    cfg = cfg or FeatureConfig()
    model_input = recording_cycles(row["path"], [row["start"]], [row["end"]], cfg)[0]
    return {"cycle": (load_cycle(row, cfg).numpy(), cfg.sample_rate),
            "model input": (model_input.numpy(), cfg.sample_rate)}  # (cfg.cycle_samples,)


def audio_players(examples: pd.DataFrame, cfg: FeatureConfig | None = None) -> Any:
    """An HTML table of audio players, one row per example cycle (`pick_examples`): class,
    recording and cycle, duration, then the cycle as cut and the model's 8 s input
    (`listening_clips`), each normalised to its own peak. Returns an `IPython.display.HTML`
    that renders in JupyterLab and in the executed notebook's HTML copy."""
    from IPython.display import HTML, Audio  # noqa: PLC0415 - only where a notebook runs

    cfg = cfg or FeatureConfig()
    pad = "repeat-padded" if cfg.pad == "repeat" else "zero-padded"
    cell = 'style="padding:2px 8px;text-align:left"'
    rows = []
    for _, row in examples.iterrows():
        clips = listening_clips(row, cfg)
        name = CLASSES[int(row["label"])]
        players = "".join(f"<td {cell}>{Audio(x, rate=rate)._repr_html_()}</td>"
                          for x, rate in clips.values())
        rows.append(f"<tr><td {cell}><b style=\"color:{CLASS_COLORS[name]}\">{name}</b></td>"
                    f"<td {cell}>{row['recording']}, cycle {row['cycle']}<br>"
                    f"<small>{row['device']}, recorded at {row['sample_rate'] / 1000:g} kHz"
                    f"</small></td><td {cell}>{row['seconds']:.2f} s</td>{players}</tr>")
    head = "".join(f"<th {cell}>{h}</th>" for h in (
        "class", "recording", "duration", f"as cut ({cfg.sample_rate / 1000:g} kHz)",
        f"model input ({cfg.cycle_seconds:g} s, {pad})"))
    return HTML(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
                "<small>Each player is normalised to its own peak; the model input is the "
                "waveform its fbank is computed from.</small>")

