"""How a data set sounds, measured per class: the numbers that compare the synthetic stand-in
(`patchmix.data.synth`) with real recordings, so that the generator can be recalibrated.

Every cycle is cut as the pipeline cuts it (`patchmix.companion.explore.recording_cuts`: resampled
to the recipe's 16 kHz and faded), so recordings made at 4, 8, 10 or 44.1 kHz are measured on the
same grid, and the event detectors of `patchmix.companion.explore` run at the rate they were checked
at.
One cycle gives (`measure_waveform`):

* **adventitious level over breath**: the tonal prominence (dB over the spectrum around it) of
  the wheezes `detect_wheezes` finds and the crackle contrast (dB over the surrounding 300 ms)
  of the crackles `detect_crackles` finds; and, for every cycle whether or not a detector fires,
  the strongest sustained tonal prominence and the strongest transient contrast, which are not
  cut off at the detectors' thresholds;
* **events**: crackles found and the seconds of wheeze found;
* **spectral shape**: centroid, median frequency, 95 % roll-off and slope (dB per octave) of
  its Welch power spectrum (`spectral_summary`);

and the cycle table gives its annotated duration. `measure_cycles` does it for a table,
`class_summary` turns the per-cycle numbers into per-class medians and IQRs,
`mean_spectra` averages the spectra, and `comparison_figure` overlays data sets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import ndimage, signal

from patchmix.companion.explore import (
    CRACKLE_THRESHOLD_DB,
    WHEEZE_BAND_HZ,
    WHEEZE_MIN_MS,
    WHEEZE_PROMINENCE_DB,
    crackle_contrast,
    cycle_seconds,
    detect_crackles,
    detect_wheezes,
    recording_cuts,
    tonal_prominence,
)
from patchmix.companion.plots import PALETTE
from patchmix.config import FeatureConfig
from patchmix.data.dataset import CLASSES

# Every device of ICBHI and SPRSound records 50-2000 Hz (the Litt3200 records at 4 kHz), so the
# spectral summaries stay inside that band: wider, they would measure the sample rate.
SUMMARY_BAND_HZ: tuple[float, float] = (50.0, 2000.0)
SLOPE_BAND_HZ: tuple[float, float] = (100.0, 1000.0)
SPECTRUM_MAX_HZ = 4000.0  # the curves go to SPRSound's Nyquist frequency
WELCH_SECONDS = 0.064  # 1,024 samples at 16 kHz: 15.6 Hz bins, as the wheeze detector's window
TONAL_HOP_MS = 16.0  # the hop of `tonal_prominence` and `detect_wheezes`

MEASURE_COLUMNS: tuple[str, ...] = (
    "crackles", "crackle_contrast_db", "contrast_peak_db", "wheezes", "wheeze_s",
    "wheeze_prominence_db", "tonal_peak_db", "centroid_hz", "median_hz", "rolloff_hz",
    "slope_db_oct")

# (column, which cycles of a class it is summarised over, what it is); "share" columns are the
# percentage of the class's cycles where the count is > 0.
MEASURES: tuple[tuple[str, str, str], ...] = (
    ("seconds", "all", "annotated cycle duration (s)"),
    ("wheeze_found_pct", "share", "cycles with a detected wheeze (%)"),
    ("wheeze_prominence_db", "detected", "tonal prominence of the detected wheezes (dB)"),
    ("tonal_peak_db", "all", "strongest sustained tonal prominence, 100-1000 Hz (dB)"),
    ("wheeze_s", "detected", "detected wheeze duration per cycle (s)"),
    ("crackle_found_pct", "share", "cycles with a detected crackle (%)"),
    ("crackle_contrast_db", "detected", "contrast of the detected crackles (dB)"),
    ("contrast_peak_db", "all", "strongest transient contrast (dB)"),
    ("crackles", "all", "detected crackles per cycle"),
    ("centroid_hz", "all", "spectral centroid, 50-2000 Hz (Hz)"),
    ("median_hz", "all", "median frequency, 50-2000 Hz (Hz)"),
    ("rolloff_hz", "all", "95 % roll-off, 50-2000 Hz (Hz)"),
    ("slope_db_oct", "all", "spectral slope, 100-1000 Hz (dB/octave)"),
)


@dataclass(frozen=True)
class Measured:
    """The measurements of one data set: a table with one row per cycle (the cycle table's
    ``recording``, ``label``, ``seconds`` and the `MEASURE_COLUMNS`) and the cycles' spectra,
    row-aligned with it."""

    name: str  # how tables and figures call the data set
    table: pd.DataFrame  # (n, ...) one row per cycle
    freqs: np.ndarray  # (F,) Hz, 0 to SPECTRUM_MAX_HZ
    spectra: np.ndarray  # (n, F) power density, each row normalised to unit power in the
    #                     summary band; NaN rows for cycles shorter than one Welch segment


# ----------------------------------------------------------------------------- one cycle


def cycle_spectrum(x: np.ndarray, rate: int, *, max_hz: float = SPECTRUM_MAX_HZ,
                   band: tuple[float, float] = SUMMARY_BAND_HZ
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectrum of a 1-D waveform up to `max_hz`: ``(freqs (F,), psd (F,))``,
    normalised to unit power in `band` so that averages compare shapes, not loudness.
    The psd is NaN when `x` is shorter than one `WELCH_SECONDS` segment."""
    size = round(WELCH_SECONDS * rate)
    freqs = np.fft.rfftfreq(size, 1 / rate)
    keep = freqs <= max_hz
    if len(x) < size:
        return freqs[keep], np.full(int(keep.sum()), np.nan)
    _, psd = signal.welch(np.asarray(x, dtype=np.float64), rate, window="hann", nperseg=size)
    in_band = (freqs >= band[0]) & (freqs <= band[1])
    total = float(psd[in_band].sum() * (freqs[1] - freqs[0]))
    return freqs[keep], psd[keep] / (total if total > 0 else np.nan)


def spectral_summary(freqs: np.ndarray, psd: np.ndarray, *,
                     band: tuple[float, float] = SUMMARY_BAND_HZ,
                     slope_band: tuple[float, float] = SLOPE_BAND_HZ) -> dict[str, float]:
    """Centroid, median frequency and 95 % roll-off (Hz) of a power spectrum within `band`,
    and its slope in dB per octave within `slope_band`: a least-squares line through
    10·log10(psd) against log2(f), every octave weighted alike (the bins are spaced linearly,
    so unweighted the octave 500-1000 Hz would count five times 100-200 Hz). NaNs for a NaN psd."""
    names = ("centroid_hz", "median_hz", "rolloff_hz", "slope_db_oct")
    in_band = (freqs >= band[0]) & (freqs <= band[1])
    f, p = freqs[in_band], psd[in_band]  # (B,)
    if not np.all(np.isfinite(p)) or p.sum() <= 0:
        return dict.fromkeys(names, math.nan)
    cumulative = np.cumsum(p) / p.sum()  # (B,) share of the band's power up to each bin
    in_slope = (freqs >= slope_band[0]) & (freqs <= slope_band[1]) & (psd > 0)
    octaves = np.log2(freqs[in_slope])
    slope = np.polyfit(octaves, 10 * np.log10(psd[in_slope]), 1,
                       w=freqs[in_slope] ** -0.5)[0]  # residual² weighted by 1/f
    return dict(zip(names, (float(np.sum(f * p) / p.sum()), float(np.interp(0.5, cumulative, f)),
                            float(np.interp(0.95, cumulative, f)), float(slope)), strict=True))


def measure_waveform(x: np.ndarray, rate: int) -> dict[str, float]:
    """The `MEASURE_COLUMNS` of one cycle's waveform (1-D, at `rate`); see the module doc.

    Per-event numbers are NaN when the detector finds no such event. The wheeze prominence is,
    over the frames the detected wheezes span, the median of each frame's highest prominence in
    the wheeze band; ``tonal_peak_db`` is the highest running median of that per-frame peak over
    ~100 ms (the detector's shortest wheeze), taken over the whole cycle. The crackle contrast is
    the median `crackle_contrast` at the detected crackles; ``contrast_peak_db`` its maximum
    over the cycle."""
    x = np.asarray(x, dtype=np.float64)
    out: dict[str, float] = {}
    contrast = crackle_contrast(x, rate)  # (frames,) dB, 1 ms frames
    crackles = detect_crackles(x, rate)  # (k,) s
    hop = max(1, round(rate / 1000))
    at = np.clip(np.round(crackles * rate / hop - 0.5).astype(int), 0, max(len(contrast) - 1, 0))
    out["crackles"] = float(len(crackles))
    out["crackle_contrast_db"] = float(np.median(contrast[at])) if len(crackles) else math.nan
    out["contrast_peak_db"] = float(contrast.max()) if contrast.size else math.nan

    freqs, times, prominence = tonal_prominence(x, rate, hop_ms=TONAL_HOP_MS)  # (F,) (T,) (F, T)
    wheezes = detect_wheezes(x, rate, hop_ms=TONAL_HOP_MS)  # (m, 3) start s, end s, pitch Hz
    out["wheezes"] = float(len(wheezes))
    out["wheeze_s"] = float(np.sum(wheezes[:, 1] - wheezes[:, 0])) if len(wheezes) else 0.0
    if prominence.size:
        in_band = (freqs >= WHEEZE_BAND_HZ[0]) & (freqs <= WHEEZE_BAND_HZ[1])
        peak = prominence[in_band].max(axis=0)  # (T,) the most tonal bin of each frame
        span = int(math.ceil(WHEEZE_MIN_MS / TONAL_HOP_MS)) | 1  # odd, ~100 ms of frames
        out["tonal_peak_db"] = float(ndimage.median_filter(peak, size=span, mode="nearest").max())
        inside = np.zeros(len(times), bool)  # (T,) frames inside a detected wheeze
        for start, end, _ in wheezes:
            inside |= (times >= start) & (times <= end)
        out["wheeze_prominence_db"] = float(np.median(peak[inside])) if inside.any() else math.nan
    else:  # shorter than one window and a hop (80 ms): no tonal measure
        out["tonal_peak_db"] = out["wheeze_prominence_db"] = math.nan
    out.update(spectral_summary(*cycle_spectrum(x, rate)))  # NaNs for a too-short cycle
    return out


# ----------------------------------------------------------------------------- a data set


def subsample(cycles: pd.DataFrame, per_class: int, seed: int = 0) -> pd.DataFrame:
    """At most `per_class` cycles of each class, drawn without replacement (reproducible for a
    `seed`); smaller classes are kept whole. Rows keep their index and table order."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in range(len(CLASSES)):
        of_class = cycles.index[cycles["label"] == label].to_numpy()
        keep.extend(of_class if len(of_class) <= per_class else
                    rng.choice(of_class, per_class, replace=False))
    return cycles.loc[cycles.index.isin(keep)]


def measure_cycles(cycles: pd.DataFrame, name: str = "", cfg: FeatureConfig | None = None
                   ) -> Measured:
    """`measure_waveform` of every cycle of a cycle table (`patchmix.data.dataset.DataFolder.read`),
    each recording read once, cut as the pipeline cuts it (``cfg``: the recipe by default).

    The table keeps the cycle table's index as ``row`` and its ``recording``, ``split``,
    ``label`` and annotated ``seconds`` (clamped to the recording, `explore.cycle_seconds`)."""
    cfg = cfg or FeatureConfig()
    seconds = cycle_seconds(cycles)
    rows, spectra = [], []
    freqs = np.zeros(0)
    for row, x in recording_cuts(cycles, cfg):
        freqs, psd = cycle_spectrum(x, cfg.sample_rate)  # (F,), (F,); cheap next to the rest
        spectra.append(psd)
        rows.append({"row": row.name, "recording": row["recording"], "split": row["split"],
                     "label": int(row["label"]), "class": CLASSES[int(row["label"])],
                     "seconds": float(seconds[row.name]),
                     **measure_waveform(x, cfg.sample_rate)})
    table = pd.DataFrame(rows, columns=["row", "recording", "split", "label", "class", "seconds",
                                        *MEASURE_COLUMNS])
    if not rows:
        freqs = cycle_spectrum(np.zeros(0), cfg.sample_rate)[0]
    return Measured(name, table, freqs, np.asarray(spectra).reshape(len(rows), len(freqs)))


def concat(parts: list[Measured], name: str) -> Measured:
    """Several measured tables (e.g. two folders of one data set) as one."""
    return Measured(name, pd.concat([m.table for m in parts], ignore_index=True), parts[0].freqs,
                    np.concatenate([m.spectra for m in parts]))


def class_summary(measured: Measured) -> pd.DataFrame:
    """Per class and measure of `MEASURES`: ``dataset``, ``class``, ``measure``, ``n`` (the
    cycles it is taken over), ``recordings`` (that they come from), ``median``, ``q25``,
    ``q75``, ``mean``. For a ``share`` measure, median and mean hold the percentage."""
    rows = []
    table = measured.table
    for name in CLASSES:
        part = table[table["class"] == name]
        for column, over, _ in MEASURES:
            if over == "share":
                hits = part[column.split("_")[0] + "s"] > 0  # "wheeze_found_pct" → "wheezes"
                value = 100.0 * float(hits.mean()) if len(part) else math.nan
                rows.append({"measure": column, "class": name, "n": len(part),
                             "recordings": part["recording"].nunique(),
                             "median": value, "q25": math.nan, "q75": math.nan, "mean": value})
                continue
            values = part[column]
            if over == "detected":
                values = values[part["wheezes" if "wheeze" in column else "crackles"] > 0]
            values = values.dropna()
            q = np.quantile(values, [0.25, 0.5, 0.75]) if len(values) else [math.nan] * 3
            rows.append({"measure": column, "class": name, "n": len(values),
                         "recordings": part.loc[values.index, "recording"].nunique(),
                         "median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]),
                         "mean": float(values.mean()) if len(values) else math.nan})
    out = pd.DataFrame(rows)
    out.insert(0, "dataset", measured.name)
    return out


def mean_spectra(measured: Measured, label: int = 0) -> tuple[pd.DataFrame, dict[str, float]]:
    """The average normalised spectrum of the cycles of class `label` (normal by default):
    a table ``freq_hz``, ``power_db`` (10·log10 of the mean normalised density), ``cycles``;
    and the `spectral_summary` of that mean curve, with the number of cycles averaged."""
    rows = (measured.table["label"] == label).to_numpy() & np.isfinite(measured.spectra).all(1)
    mean = measured.spectra[rows].mean(axis=0) if rows.any() else np.full(len(measured.freqs),
                                                                          np.nan)  # (F,)
    with np.errstate(divide="ignore"):
        curve = pd.DataFrame({"freq_hz": measured.freqs, "power_db": 10 * np.log10(mean),
                              "cycles": int(rows.sum())})
    return curve, {**spectral_summary(measured.freqs, mean), "cycles": int(rows.sum())}


# ----------------------------------------------------------------------------- figure


def _ecdf(ax: plt.Axes, values: pd.Series, **style: object) -> None:
    v = np.sort(values.dropna().to_numpy())
    if len(v):
        ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", **style)


def comparison_figure(sets: Mapping[str, Measured], colors: Mapping[str, str] | None = None
                      ) -> Figure:
    """Real and synthetic data sets overlaid, one colour each, in a 2 × 2 grid: the mean
    spectrum of normal breath; the cumulative distributions of the strongest tonal prominence
    (wheeze and both cycles, normal ones dotted) and of the strongest transient contrast
    (crackle and both, normal dotted), each with its detector's threshold; cycle durations
    (normal, abnormal dotted)."""
    colors = dict(colors or {})
    for i, key in enumerate(sets):
        colors.setdefault(key, PALETTE[i % len(PALETTE)])
    fig, axes = plt.subplots(2, 2, figsize=(10.0, 7.6), layout="constrained")
    spec, tonal, click, length = axes.flat
    for key, m in sets.items():
        t, c = m.table, colors[key]
        curve, _ = mean_spectra(m)
        spec.plot(curve["freq_hz"], curve["power_db"], color=c, lw=1.4)
        for ax, column, classes in ((tonal, "tonal_peak_db", ("wheeze", "both")),
                                    (click, "contrast_peak_db", ("crackle", "both"))):
            _ecdf(ax, t.loc[t["class"].isin(classes), column], color=c, lw=1.5)
            _ecdf(ax, t.loc[t["class"] == "normal", column], color=c, lw=1.0, ls=":")
        _ecdf(length, t.loc[t["class"] == "normal", "seconds"], color=c, lw=1.5)
        _ecdf(length, t.loc[t["class"] != "normal", "seconds"], color=c, lw=1.0, ls=":")
    spec.set_xscale("log")
    spec.set_xlim(50, SPECTRUM_MAX_HZ)
    spec.axvspan(*SUMMARY_BAND_HZ, color="grey", alpha=0.06, lw=0)
    spec.set_xlabel("frequency (Hz)")
    spec.set_ylabel("power density (dB)\nunit power in 50-2000 Hz (shaded)")
    spec.set_title("Normal breath: mean spectrum", loc="left")
    for ax, threshold, title, xlabel in (
            (tonal, WHEEZE_PROMINENCE_DB, "Wheeze and both cycles (normal dotted)",
             "strongest ~100 ms tonal prominence in 100-1000 Hz (dB)"),
            (click, CRACKLE_THRESHOLD_DB, "Crackle and both cycles (normal dotted)",
             "strongest transient contrast over the 300 ms around (dB)")):
        ax.axvline(threshold, color="grey", ls="--", lw=0.9)
        ax.set_title(title, loc="left")
        ax.set_xlabel(xlabel + "\ndashed: the detector's threshold")
    length.set_title("Cycle durations: normal (abnormal dotted)", loc="left")
    length.set_xlabel("annotated cycle duration (s)")
    length.set_xlim(0, 10)
    for ax in (tonal, click, length):
        ax.set_ylabel("share of cycles at or below")
        ax.set_ylim(0, 1)
    handles = [Line2D([], [], color=colors[k], lw=2, label=k) for k in sets]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    return fig


# ----------------------------------------------------------------------------- report


def _short(value: float) -> str:
    """Three significant digits, never an exponent: 0.128 s, 22.3 dB, 134 Hz, 1010 Hz."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def side_by_side(summaries: list[pd.DataFrame]) -> pd.DataFrame:
    """`class_summary` tables of several data sets as one: a row per class and measure (its
    `MEASURES` description), a column per data set holding ``median [q25, q75] (n)`` (a
    percentage for the ``share`` measures)."""
    described = {column: text for column, _, text in MEASURES}
    rows = []
    for (name, measure), _ in pd.concat(summaries).groupby(["class", "measure"], sort=False):
        row: dict[str, str] = {"class": name, "measure": described[measure]}
        for s in summaries:
            r = s[(s["class"] == name) & (s["measure"] == measure)].iloc[0]
            if math.isnan(r["median"]):
                cell = "–"
            elif math.isnan(r["q25"]):
                cell = f"{r['median']:.1f} % ({r['n']})"
            else:
                cell = (f"{_short(r['median'])} [{_short(r['q25'])}, {_short(r['q75'])}] "
                        f"({r['n']})")
            row[str(r["dataset"])] = cell
        rows.append(row)
    order = {c: i for i, c in enumerate(CLASSES)}
    return (pd.DataFrame(rows).sort_values("class", key=lambda c: c.map(order), kind="stable")
            .reset_index(drop=True))
