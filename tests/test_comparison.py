"""Honest comparisons: which baseline each row is, intervals beside the means, the README's
key table, and loss panels that only put one objective on an axis."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from patchmix.companion.plots import learning_curves
from patchmix.companion.report import paper_comparison, readme_table, roles, verdict, with_sd
from patchmix.engine.experiment import aggregate, bootstrap_intervals
from patchmix.methods import METHODS


def _per_seed(scores: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = [{"profile": "demo", "method": m, "protocol": p, "seed": i + 1, "sp": s, "se": s,
             "score": s} for (m, p), values in scores.items() for i, s in enumerate(values)]
    return pd.DataFrame(rows)


SUMMARY = aggregate(_per_seed({("weighted_ce", "last"): [58.0, 60.0],
                               ("ce", "last"): [62.0, 63.0],
                               ("patchmix_cl", "last"): [61.0, 62.0],
                               ("patchmix_cl", "best_test"): [63.0, 64.0]}))
INTERVALS = pd.DataFrame([{"method": m, "protocol": "last", "sp_lo": 50.0, "sp_hi": 70.0,
                           "se_lo": 40.0, "se_hi": 60.0, "score_lo": lo, "score_hi": lo + 6,
                           "n_valid": 1000}
                          for m, lo in (("weighted_ce", 56.0), ("ce", 59.5),
                                        ("patchmix_cl", 58.5))])


def test_the_stronger_baseline_is_named_from_the_numbers():
    assert roles(SUMMARY) == {"weighted_ce": "the paper's baseline", "ce":
                              "plain CE, the stronger baseline", "patchmix_cl":
                              "the paper's method"}
    flipped = SUMMARY.assign(score_mean=np.where(SUMMARY["method"] == "ce", 50.0,
                                                 SUMMARY["score_mean"]))
    assert roles(flipped)["weighted_ce"] == "the paper's baseline, the stronger baseline"
    assert roles(flipped)["ce"] == "plain CE"


def test_the_table_pairs_the_papers_rows_and_carries_intervals():
    table = paper_comparison(SUMMARY, data="synthetic stand-in", weights="none",
                             intervals=INTERVALS)
    paper = table[table["source"] == "paper"]
    assert list(paper["compared_as"][:2]) == ["the paper's baseline", "the paper's method"]
    ours = table[(table["source"] == "this run") & (table["protocol"] == "last")]
    cl = ours[ours["method"] == METHODS.get("patchmix_cl").label].iloc[0]
    assert (cl["score_lo"], cl["score_hi"]) == (58.5, 64.5)
    shown = with_sd(table)
    assert shown.loc[cl.name, "score"] == "61.50 ± 0.71 [58.5, 64.5]"
    assert shown["score"].iloc[0] == "59.55"  # the paper: no sd, no interval
    best = table[(table["source"] == "this run") & (table["protocol"] == "best_test")]
    assert best["score_lo"].isna().all()  # no interval given for that protocol


def test_the_verdict_holds_the_method_against_both_baselines_with_intervals():
    text = verdict(SUMMARY, synthetic=True, weights="none", profile="demo",
                   intervals=INTERVALS)
    assert "against the paper's baseline (weighted CE): Patch-Mix CL scores" in text
    assert "61.50 (95 % CI 58.5–64.5) and weighted CE 59.00 (95 % CI 56.0–62.0)" in text
    assert "+2.50 points" in text and "-1.00 points" in text
    assert "against plain CE, the stronger baseline (CE)" in text
    assert "resample the test patients" in text


def test_the_readme_table_says_where_each_row_comes_from(tmp_path):
    path = tmp_path / "table1.csv"
    paper_comparison(SUMMARY, data="synthetic stand-in, not ICBHI (folder synthetic)",
                     weights="none", intervals=INTERVALS).to_csv(path, index=False)
    lines = readme_table(path).splitlines()
    assert lines[0] == ("| source | data | method | compared_as | protocol | sp | se | score | "
                        "seeds |")
    assert "| paper | ICBHI 2017, ImageNet + AudioSet pretrained | AST fine-tuning" in lines[2]
    ours = [line for line in lines if line.startswith("| this run")]
    assert len(ours) == 4  # weighted CE, CE, Patch-Mix CL last + Patch-Mix CL best_test
    assert all("| synthetic data, trained from scratch |" in line for line in ours)


def test_loss_panels_put_one_objective_on_an_axis():
    epochs = np.arange(1, 4)
    frames = []
    for name in ("ce", "weighted_ce", "mixup", "patchmix_cl"):
        terms = METHODS.get(name).terms
        frames.append(pd.DataFrame({"method": name, "seed": 1, "epoch": epochs,
                                    "train_loss": 9.0, "test_score": 55.0,
                                    **{f"loss_{t}": float(i + 1) for i, t in enumerate(terms)}}))
    history = pd.concat(frames, ignore_index=True)
    fig = learning_curves(history, terms={n: METHODS.get(n).terms for n in history["method"]})
    panels = {ax.get_title(): [line.get_label() for line in ax.get_lines() if
                               not line.get_label().startswith("_")]
              for ax in fig.axes if ax.get_visible() and ax.get_title()}
    assert panels["train: cross-entropy"] == ["Fine-tuning (CE)", "Patch-Mix CL"]
    assert panels["train: class-weighted cross-entropy"] == ["Fine-tuning (weighted CE)"]
    assert panels["train: mixed-label cross-entropy"] == ["Mixup"]
    assert panels["train: α · contrastive loss"] == ["Patch-Mix CL"]
    cl_ce = [ln for ax in fig.axes if ax.get_title() == "train: cross-entropy"
             for ln in ax.get_lines() if ln.get_label() == "Patch-Mix CL"][0]
    assert list(cl_ce.get_ydata()) == [1.0, 1.0, 1.0]  # its CE term, not the total loss
    plt.close(fig)
    one = learning_curves(history)  # without terms: one panel of total losses
    assert [ax.get_title() for ax in one.axes][:1] == ["train: training loss"]
    plt.close(one)


def test_bootstrap_intervals_read_the_runs_predictions(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    base = pd.DataFrame({"recording": [f"r{i // 4}" for i in range(n)], "cycle": np.arange(n) % 4,
                         "patient": np.arange(n) // 8, "label": rng.integers(0, 4, n)})
    rows = []
    for seed in (1, 2):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        pred = np.where(rng.random(n) < 0.7, base["label"], rng.integers(0, 4, n))
        base.assign(pred=pred).to_csv(run / "predictions-last.csv", index=False)
        rows.append({"method": "ce", "seed": seed, "protocol": "last", "run_dir": str(run)})
    ci = bootstrap_intervals(pd.DataFrame(rows), "last", n_boot=200)
    assert list(ci["method"]) == ["ce"] and ci["n_valid"].item() == 200
    assert ci["score_lo"].item() < ci["score_hi"].item()
    shifted = tmp_path / "run2" / "predictions-last.csv"
    pd.read_csv(shifted).iloc[::-1].to_csv(shifted, index=False)  # other cycle order
    with pytest.raises(ValueError, match="different cycles"):
        bootstrap_intervals(pd.DataFrame(rows), "last", n_boot=10)
