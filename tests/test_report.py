"""Output naming, the manifest and results README, the paper table, verdicts, notebook configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from patchmix.companion.knobs import notebook_config
from patchmix.companion.latent import Encoded, encode_cycles, knn_scores, mix_alignment, silhouettes
from patchmix.companion.report import (
    PAPER_TABLE,
    Outputs,
    markdown_table,
    notebook_of,
    paper_comparison,
    project_root,
    verdict,
    with_sd,
)
from patchmix.config import ModelConfig
from patchmix.data.dataset import DATASETS, DataFolder
from patchmix.engine.experiment import aggregate
from patchmix.model.ast import AST


def test_notebook_of_needs_an_exact_notebook_prefix():
    assert notebook_of("02_baselines-scores.csv") == "02_baselines"
    assert notebook_of("05_paper_tables-table1.md") == "05_paper_tables"
    assert notebook_of("02_baselines.csv") is None
    assert notebook_of("scores.csv") is None
    assert notebook_of("06_extra-scores.csv") is None


def test_outputs_names_records_and_indexes_every_file(tmp_path):
    out = Outputs("02_baselines", tmp_path / "f", tmp_path / "r",
                  context={"profile": "demo", "data": "synthetic", "seeds": "1, 2"})
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    assert out.figure(fig, "curves", "a curve") is None  # a cell ending with it shows no path
    plt.close(fig)
    out.table(pd.DataFrame({"method": ["ce"], "score": [61.234]}), "scores", "scores")
    png = tmp_path / "f" / "02_baselines-curves.png"
    csv = tmp_path / "r" / "02_baselines-scores.csv"
    assert png.read_bytes()[:4] == b"\x89PNG"
    # at the precision reported (the Markdown's .1f): a number computed on another CPU, off
    # in its 8th digit, writes the same file
    assert csv.read_text() == "method,score\nce,61.2\n"
    out.table(pd.DataFrame({"method": ["ce"], "score": [61.234000001]}), "scores", "scores")
    assert csv.read_text() == "method,score\nce,61.2\n"
    out.table(pd.DataFrame({"method": ["ce"], "score": [-0.0004]}), "scores", "scores",
              floatfmt=".3f")
    assert csv.read_text() == "method,score\nce,0.0\n"  # no "-0.0"
    assert "| ce | 0.000 |" in csv.with_suffix(".md").read_text()  # nor "-0.000"
    out.table(pd.DataFrame({"method": ["ce"], "score": [61.234]}), "scores", "scores")
    md = csv.with_suffix(".md").read_text()
    assert "profile demo · data synthetic · seeds 1, 2" in md and "| ce | 61.2 |" in md
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert set(manifest) == {"figures/02_baselines-curves.png", "results/02_baselines-scores.csv",
                             "results/02_baselines-scores.md"}
    assert all(v["notebook"] == "02_baselines" and v["profile"] == "demo"
               for v in manifest.values())
    readme = (tmp_path / "r" / "README.md").read_text()
    assert "`figures/02_baselines-curves.png`" in readme and "| demo |" in readme
    with pytest.raises(ValueError, match="lower-case"):
        out.table(pd.DataFrame(), "Bad Name", "x")
    with pytest.raises(ValueError, match="unknown notebook"):
        Outputs("06_extra", tmp_path / "f", tmp_path / "r")


def test_describe_data_never_leaks_a_machine_path():
    assert DATASETS.get("synthetic").describe("/home/someone/data/synthetic") == (
        "synthetic stand-in, not ICBHI (folder synthetic)")
    assert DATASETS.get("icbhi").describe("/mnt/ICBHI") == "ICBHI 2017 (folder ICBHI)"


def test_markdown_table_formats_floats_and_nan():
    text = markdown_table(pd.DataFrame({"a": [1.25, float("nan")], "b": ["x|y", "z"]}))
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.2 | x\\|y |", "| – | z |"]


def _per_seed(scores: dict[tuple[str, str], list[float]]) -> pd.DataFrame:
    rows = [{"profile": "demo", "method": m, "protocol": p, "seed": i + 1, "sp": s, "se": s,
             "score": s} for (m, p), values in scores.items() for i, s in enumerate(values)]
    return pd.DataFrame(rows)


def test_paper_comparison_keeps_the_published_rows_first():
    summary = aggregate(_per_seed({("patchmix_cl", "last"): [55.0, 57.0],
                                   ("patchmix_cl", "best_test"): [58.0, 60.0]}))
    table = paper_comparison(summary, data="synthetic", weights="none")
    assert list(table["score"][:len(PAPER_TABLE)]) == pytest.approx(
        list(PAPER_TABLE["score"]), nan_ok=True)
    ours = table[table["source"] == "this run"]
    assert set(ours["protocol"]) == {"last", "best_test"}
    assert ours.loc[ours["protocol"] == "last", "score"].item() == pytest.approx(56.0)
    assert ours.loc[ours["protocol"] == "last", "score_sd"].item() == pytest.approx(math.sqrt(2))
    shown = with_sd(table)
    assert shown.loc[shown["protocol"] == "last", "score"].item() == "56.00 ± 1.41"
    assert shown["score"].iloc[0] == "59.55"  # paper: no sd


def test_verdict_states_the_data_and_judges_against_the_spread():
    summary = aggregate(_per_seed({("ce", "last"): [55.0, 56.0, 57.0],
                                   ("patchmix_cl", "last"): [60.0, 61.0, 62.0],
                                   ("patchmix_cl", "best_test"): [63.0, 64.0, 65.0]}))
    text = verdict(summary, synthetic=True, weights="none", profile="demo")
    assert "not ICBHI numbers" in text and "synthetic data" in text
    assert "+5.00 points" in text and "more than twice" in text
    assert "adds +3.00 points" in text
    real = verdict(summary, synthetic=False, weights="audioset", profile="paper")
    assert "not ICBHI numbers" not in real
    close = aggregate(_per_seed({("ce", "last"): [55.0, 60.0],
                                 ("patchmix_cl", "last"): [56.0, 61.0]}))
    assert "not evidence either way" in verdict(close, synthetic=True, weights="none",
                                                profile="demo")


def test_notebook_config_is_one_call_from_parameters(tmp_path):
    folder = DataFolder(tmp_path / "some" / "where", DATASETS.get("icbhi"))  # as recognised
    cfg = notebook_config("demo", folder=folder, weights=Path("w.pth"),
                          overrides="epochs=3 method.name=ce")
    assert cfg.data.root == str(folder.path) and cfg.train.epochs == 3
    assert cfg.model.weights == "audioset" and cfg.model.audioset_checkpoint == "w.pth"
    assert cfg.method.name == "ce" and cfg.profile == "demo"
    assert notebook_config("smoke").data.root == ""
    with pytest.raises(ValueError, match="unknown override key"):
        notebook_config("demo", overrides="no_such_knob=1")


def test_project_root_is_found_from_the_notebooks_folder():
    root = project_root()
    assert (root / "pyproject.toml").is_file()
    assert project_root(root / "notebooks") == root


def test_latent_numbers_on_constructed_features():
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 5
    y = np.repeat(np.arange(4), 20)
    x = centres[y] + rng.normal(0, 0.3, (80, 4))
    s = knn_scores(x[::2], y[::2], x[1::2], y[1::2], k=3)
    assert s["knn_accuracy"] == 100.0 and s["knn_score"] == 100.0
    sil = silhouettes(x, cls=y, noise=rng.integers(0, 2, 80), single=np.zeros(80))
    assert sil["silhouette_cls"] > 0.8 and abs(sil["silhouette_noise"]) < 0.1
    assert math.isnan(sil["silhouette_single"])


def test_encode_cycles_and_mix_alignment_on_a_tiny_model():
    torch.manual_seed(0)
    model = AST(ModelConfig(embed_dim=32, depth=1, num_heads=2, stride=32))
    features = np.random.default_rng(0).normal(size=(10, 798, 128)).astype(np.float32)
    enc = encode_cycles(model, features, np.arange(10), seed=1, batch_size=4)
    assert enc.clean.shape == enc.mixed.shape == (10, 32)
    assert enc.partner.min() >= 0 and enc.partner.max() < 10
    # partners stay inside their batch of 4
    assert all(p // 4 == i // 4 for i, p in enumerate(enc.partner))
    with torch.inference_mode():
        tokens = model.encode(model.embed(torch.from_numpy(features[:4])))
        direct = model.forward_head(tokens, pre_logits=True).numpy()
    np.testing.assert_allclose(enc.clean[:4], direct, rtol=1e-5, atol=1e-6)


def test_mix_alignment_counts_mixes_nearer_their_dominant_source():
    clean = np.eye(4)
    partner = np.array([1, 0, 3, 2])
    lam = np.full(4, 0.7)  # each mixed sample keeps 70 % of its own patches
    own_heavy = Encoded(clean, 0.7 * clean + 0.3 * clean[partner], partner, lam)
    partner_heavy = Encoded(clean, 0.3 * clean + 0.7 * clean[partner], partner, lam)
    assert mix_alignment(own_heavy) == 100.0
    assert mix_alignment(partner_heavy) == 0.0
    self_pairs = Encoded(clean, clean, np.arange(4), lam)  # partner = itself: left out
    assert math.isnan(mix_alignment(self_pairs))
