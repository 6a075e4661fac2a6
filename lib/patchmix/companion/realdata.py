"""What notebook 06 shows about real lung sounds: SPRSound's own tables, and its results.

The data side: SPRSound's seven event types and record labels per part (`event_counts`,
`record_counts`) and the average fbank over mel bins of two data sets side by side
(`mel_profile`, `mel_profile_figure`, `floor_start`: SPRSound's stethoscope leaves almost
nothing above about 700 Hz, so most of the recipe's mel bins sit at the floor of the log).
The results side: runs scored per test part and score family (`patchmix.engine.scoring`) as mean ±
sd over seeds with patient-bootstrap intervals (`results_table`, `score_summary`, `findings`), one
figure of the Scores per part (`results_figure`), training times (`run_times`), and models
trained on one data set scored on another (`cross_table`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from patchmix.companion.plots import PALETTE, mel_bin, mel_ticks
from patchmix.config import FeatureConfig
from patchmix.data.dataset import CLASSES
from patchmix.data.sprsound import EVENT_TO_CLASS, EVENT_TYPES, PARTS, RECORD_LABELS
from patchmix.engine.metrics import ALL
from patchmix.engine.scoring import METRICS
from patchmix.methods import method_label

PART_LABELS: dict[str, str] = {"test_intra": "intra (patients also in train)",
                               "test_inter": "inter (new patients)", ALL: "both test parts"}
FAMILY_LABELS: dict[str, str] = {"icbhi": "ICBHI", "sprsound": "SPRSound"}


def event_counts(cycles: pd.DataFrame) -> pd.DataFrame:
    """Events per SPRSound event type (rows, `EVENT_TYPES` order) and part (columns), with
    the shared class each type is scored as and the total."""
    counts = (cycles.groupby(["event_type", "split"]).size().unstack(fill_value=0)
              .reindex(index=list(EVENT_TYPES), fill_value=0))
    parts = [p for p in PARTS if p in counts.columns]
    table = counts[parts].astype(int)
    table.insert(0, "class", [CLASSES[EVENT_TO_CLASS[t]] for t in table.index])
    table["total"] = table[parts].sum(axis=1)
    return table.rename_axis("event type").reset_index()


def record_counts(cycles: pd.DataFrame) -> pd.DataFrame:
    """Recordings per record label (rows, `RECORD_LABELS` order, Poor Quality included: the
    reader keeps every record in ``attrs["records"]``) and part (columns)."""
    records = pd.DataFrame(cycles.attrs.get("records", []),
                           columns=["recording", "patient", "split", "record_label", "events"])
    counts = (records.groupby(["record_label", "split"]).size().unstack(fill_value=0)
              .reindex(index=list(RECORD_LABELS), fill_value=0))
    parts = [p for p in PARTS if p in counts.columns]
    table = counts[parts].astype(int)
    table["total"] = table[parts].sum(axis=1)
    return table.rename_axis("record label").reset_index()


def mel_profile(features: np.ndarray, rows: np.ndarray, *, limit: int = 2000,
                seed: int = 0) -> np.ndarray:
    """The mean fbank over frames and cycles, per mel bin ``(n_mels,)``, of up to `limit` of
    the cycles `rows` (drawn with `seed`), in the recipe's normalised units."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(rows, size=min(limit, len(rows)), replace=False))
    total = np.zeros(features.shape[-1])
    for start in range(0, len(chosen), 256):  # chunks: the features are memory-mapped
        block = np.asarray(features[chosen[start:start + 256]], dtype=np.float64)  # (b, T, M)
        total += block.mean(axis=1).sum(axis=0)
    return total / max(len(chosen), 1)


def floor_start(profile: np.ndarray, tolerance: float = 0.05) -> int:
    """The mel bin from which a `mel_profile` sits at its lowest value (within `tolerance`,
    normalised units) up to the top: where the recording's sound ends and only the floor of
    the log is left. The longest such run counts, if it spans at least a quarter of the bins;
    else ``len(profile)`` (sound in every bin)."""
    at_floor = profile <= profile.min() + tolerance  # (n_mels,)
    best_start, best_len, start = len(profile), 0, None
    for i, flag in enumerate([*at_floor, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start > best_len:
                best_start, best_len = start, i - start
            start = None
    return best_start if best_len >= len(profile) // 4 else len(profile)


def mel_profile_figure(profiles: Mapping[str, np.ndarray], cfg: FeatureConfig,
                       marks: Mapping[str, tuple[float, str]] | None = None) -> Figure:
    """The `mel_profile` of each data set (label → curve) on one axis over frequency; `marks`
    (label → (Hz, text)) draws a dotted line in the data set's colour with its text, e.g. where
    its `floor_start` lies."""
    fig, ax = plt.subplots(figsize=(7.0, 3.4))
    for colour, (label, curve) in zip(PALETTE, profiles.items(), strict=False):
        ax.plot(np.arange(len(curve)), curve, color=colour, label=label, lw=1.6)
    top = ax.get_ylim()[1]
    for colour, label in zip(PALETTE, profiles, strict=False):
        if label in (marks or {}):
            freq, text = marks[label]
            ax.axvline(mel_bin(freq, cfg), color=colour, ls=":", lw=1.2)
            ax.annotate(text, (mel_bin(freq, cfg), top), xytext=(4, -12),
                        textcoords="offset points", color=colour, fontsize=8, va="top")
    mel_ticks(ax, cfg, axis="x")
    ax.set_ylabel("mean fbank (normalised)")
    ax.legend(frameon=False, loc="lower left")
    return fig


def _mean_sd(scores: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per `keys`: the mean of every metric, its sd over seeds (``<metric>_sd``) and ``seeds``."""
    metrics = [m for m in METRICS["sprsound"] if m in scores]
    grouped = scores.groupby(keys, sort=False)
    table = grouped[metrics].mean().join(grouped[metrics].std().add_suffix("_sd"))
    table["seeds"] = grouped["seed"].nunique()
    return table.reset_index()


def results_table(scores: pd.DataFrame, intervals: pd.DataFrame | None = None) -> pd.DataFrame:
    """`patchmix.engine.scoring.part_scores` rows as mean ± sd over seeds per method, protocol, part
    and family: ``<metric>`` and ``<metric>_sd`` for the family's metrics, ``seeds``, and
    with `intervals` (`patchmix.engine.scoring.part_intervals`) the Score's 95 % interval
    ``score_lo``, ``score_hi``."""
    keys = ["method", "protocol", "part", "family"]
    table = _mean_sd(scores, keys)
    if intervals is not None:
        table = table.merge(intervals[[*keys, "score_lo", "score_hi"]], on=keys, how="left")
    return table


def score_summary(results: pd.DataFrame, *, protocol: str = "last",
                  parts: Sequence[str] = ("test_intra", "test_inter"),
                  labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per method (named by `labels`) and test part of a `results_table`: Sp and Se
    (mean ± sd), and the Score of each family as ``mean ± sd [lo, hi]`` text: the table a
    reader compares."""
    def cell(row: pd.Series, metric: str) -> str:
        text = f"{row[metric]:.1f} ± {row[metric + '_sd']:.1f}"
        if metric == "score" and pd.notna(row.get("score_lo")):
            text += f" [{row['score_lo']:.1f}, {row['score_hi']:.1f}]"
        return text

    chosen = results[(results["protocol"] == protocol) & results["part"].isin(parts)]
    rows = []
    for (method, part), group in chosen.groupby(["method", "part"], sort=False):
        by = group.set_index("family")
        rows.append({"method": (labels or {}).get(method, method_label(method)), "part": part,
                     "Sp": cell(by.loc["icbhi"], "sp"), "Se": cell(by.loc["icbhi"], "se"),
                     **{f"{FAMILY_LABELS[f]} Score": cell(by.loc[f], "score")
                        for f in FAMILY_LABELS if f in by.index}})
    return pd.DataFrame(rows)


def findings(results: pd.DataFrame, *, protocol: str = "last", family: str = "icbhi",
             labels: Mapping[str, str] | None = None, reference: str = "ce",
             proposed: str = "patchmix_cl") -> str:
    """What a `results_table` says, in a few lines: per test part the methods' Scores of
    `family` (best first, mean ± sd over seeds), `proposed` against `reference` and whether
    their patient-bootstrap intervals overlap, and each method's drop from intra to inter."""
    chosen = results[(results["protocol"] == protocol) & (results["family"] == family)]
    name = {m: (labels or {}).get(m, method_label(m)) for m in chosen["method"]}
    lines = []
    for part in ("test_intra", "test_inter"):
        rows = chosen[chosen["part"] == part].sort_values("score", ascending=False)
        if rows.empty:
            continue
        ranked = ", ".join(f"{name[r.method]} {r.score:.1f} ± {r.score_sd:.1f}"
                           for r in rows.itertuples())
        lines.append(f"{PART_LABELS[part]}, {FAMILY_LABELS[family]} Score ({protocol} "
                     f"epoch): {ranked}")
        by = rows.set_index("method")
        if {reference, proposed} <= set(by.index):
            a, b = by.loc[proposed], by.loc[reference]
            gap = a["score"] - b["score"]
            apart = (a["score_lo"] > b["score_hi"]) or (b["score_lo"] > a["score_hi"])
            lines.append(f"  {name[proposed]} − {name[reference]}: {gap:+.1f} points; their 95 % "
                         f"intervals {'do not overlap' if apart else 'overlap'}")
    wide = chosen.pivot(index="method", columns="part", values="score")
    if {"test_intra", "test_inter"} <= set(wide.columns):
        drops = ", ".join(f"{name[m]} {wide.loc[m, 'test_intra'] - wide.loc[m, 'test_inter']:+.1f}"
                          for m in dict.fromkeys(chosen["method"]))
        lines.append(f"intra minus inter: {drops} points")
    return "\n".join(lines)


def results_figure(results: pd.DataFrame, *, protocol: str = "last",
                   labels: Mapping[str, str] | None = None,
                   parts: Sequence[str] = ("test_intra", "test_inter")) -> Figure:
    """Each method's Score in both families (bars: seed-mean; whiskers: the patient-bootstrap
    interval where `results` has one, else ± sd), one panel per test part."""
    chosen = results[results["protocol"] == protocol]
    parts = [p for p in parts if p in set(chosen["part"])]
    methods = list(dict.fromkeys(chosen["method"]))
    fig, axes = plt.subplots(1, len(parts), figsize=(3.4 * len(parts) + 0.6, 3.6),
                             sharey=True, squeeze=False)
    width = 0.38
    for ax, part in zip(axes[0], parts, strict=True):
        for k, family in enumerate(("icbhi", "sprsound")):
            rows = (chosen[(chosen["part"] == part) & (chosen["family"] == family)]
                    .set_index("method").reindex(methods))
            mean = rows["score"].to_numpy()
            if {"score_lo", "score_hi"} <= set(rows) and rows["score_lo"].notna().all():
                err = np.vstack([mean - rows["score_lo"], rows["score_hi"] - mean])
            else:
                err = rows["score_sd"].fillna(0).to_numpy()
            x = np.arange(len(methods)) + (k - 0.5) * width
            ax.bar(x, mean, width, yerr=err, capsize=2, color=PALETTE[k * 2],
                   label=f"{FAMILY_LABELS[family]} Score", error_kw={"lw": 0.8})
        ax.axhline(50, color="grey", lw=0.8, ls=":")
        names = [(labels or {}).get(m, method_label(m)) for m in methods]
        ax.set_xticks(np.arange(len(methods)), names, rotation=20, ha="right")
        ax.set_title(PART_LABELS.get(part, part))
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("Score (%)")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=2, frameon=False)
    return fig


def run_times(table: pd.DataFrame) -> pd.DataFrame:
    """How long each run of a `run_seeds` table trained: ``method, seed, epochs, minutes``
    (the training session that finished it, from its ``summary.json``)."""
    rows = []
    for r in table.drop_duplicates("run_dir").itertuples():
        summary = json.loads((Path(r.run_dir) / "summary.json").read_text(encoding="utf-8"))
        rows.append({"method": r.method, "seed": r.seed, "epochs": summary["epochs"],
                     "minutes": summary["seconds_this_session"] / 60})
    return pd.DataFrame(rows)


def cross_table(cross: pd.DataFrame, *, trained_on: str) -> pd.DataFrame:
    """`patchmix.engine.scoring.cross_scores` rows as mean ± sd over seeds per method, part and
    family, with the data the models were trained on (``trained_on``) and scored on."""
    table = _mean_sd(cross, ["method", "part", "family"])
    table.insert(0, "scored_on", cross.attrs.get("data", ""))
    table.insert(0, "trained_on", trained_on)
    return table
