"""Real-data notebook plumbing: scores per test part and family from saved predictions,
models scored across data sets, SPRSound's tables, the data set's own demo epochs, run keys
that ignore the folder's path, and notebook 06 in the plan and the runner only with a folder."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from patchmix.companion.knobs import notebook_config
from patchmix.companion.notebook_runs import NOTEBOOK_DATA, notebook_roots
from patchmix.companion.notebooks import run_all
from patchmix.companion.plan import jobs
from patchmix.companion.plots import mel_bin, mel_frequency
from patchmix.companion.realdata import (
    event_counts,
    findings,
    floor_start,
    record_counts,
    score_summary,
)
from patchmix.config import FeatureConfig, profile
from patchmix.data.dataset import dataset_root, recognise
from patchmix.data.errors import DataError
from patchmix.data.loading import load_data
from patchmix.data.sprsound import DEMO_EPOCHS, ROOT_ENV
from patchmix.engine.experiment import run_key, run_seeds
from patchmix.engine.metrics import icbhi_scores, sprsound_scores
from patchmix.engine.scoring import cross_scores, part_intervals, part_scores, predictions

SIX = "06_real_lung_sounds"


@pytest.fixture(scope="module")
def sprsound_runs(sprsound_mini, tmp_path_factory, monkeypatch_module):
    """Weighted CE in the smoke profile on sprsound-mini, seeds 1 and 2, and its data."""
    monkeypatch_module.setenv("PATCHMIX_CACHE", str(tmp_path_factory.mktemp("cache")))
    folder = recognise(sprsound_mini)
    cfg = notebook_config("smoke", folder=folder, overrides="method.name=weighted_ce")
    data = load_data(cfg.data, folder=folder, progress=False)
    table = run_seeds(cfg, [1, 2], data=data, root=tmp_path_factory.mktemp("runs"),
                      progress=False)
    return table, data


def test_part_scores_rescore_the_saved_predictions_per_part(sprsound_runs):
    table, data = sprsound_runs
    scores = part_scores(table, "last", data.cycles)
    assert set(scores["part"]) == {"test_intra", "test_inter", "all"}
    assert len(scores) == 2 * 3 * 2  # seeds × parts × families
    run_dir = table.loc[(table["seed"] == 1) & (table["protocol"] == "last"), "run_dir"].iloc[0]
    pred = predictions(run_dir, "last", data.cycles)
    inter = pred[pred["part"] == "test_inter"]
    assert len(inter) == 60 and (pred["part"] == "test_intra").sum() == 32
    by_hand = sprsound_scores(inter["label"], inter["pred"])
    row = scores.query("seed == 1 and part == 'test_inter' and family == 'sprsound'").iloc[0]
    for metric in ("sp", "se", "as", "hs", "score"):
        assert math.isclose(row[metric], by_hand[metric], abs_tol=1e-9) or (
            math.isnan(row[metric]) and math.isnan(by_hand[metric]))
    # "all" is what training logged as the run's test Score
    whole = scores.query("seed == 1 and part == 'all' and family == 'icbhi'").iloc[0]
    logged = table.query("seed == 1 and protocol == 'last'").iloc[0]
    assert math.isclose(whole["score"], logged["score"])
    assert math.isclose(whole["score"], icbhi_scores(pred["label"], pred["pred"])["score"])


def test_part_intervals_cover_the_seed_mean(sprsound_runs):
    table, data = sprsound_runs
    scores = part_scores(table, "last", data.cycles)
    intervals = part_intervals(table, "last", data.cycles, n_boot=200)
    assert len(intervals) == 3 * 2  # parts × families, one method
    mean = scores.groupby(["part", "family"])["score"].mean()
    for r in intervals.itertuples():
        assert r.score_lo <= mean[(r.part, r.family)] + 1e-9 <= r.score_hi + 2e-9
    assert {"as_lo", "hs_hi"} <= set(intervals.columns)
    summary = score_summary(pd.DataFrame([{
        "method": "ce", "protocol": "last", "part": "test_inter", "family": f, "sp": 80.0,
        "sp_sd": 1.0, "se": 40.0, "se_sd": 2.0, "score": 60.0, "score_sd": 0.5,
        "score_lo": 55.0, "score_hi": 65.0} for f in ("icbhi", "sprsound")]), labels={"ce": "CE"})
    assert summary.iloc[0].to_dict() == {
        "method": "CE", "part": "test_inter", "Sp": "80.0 ± 1.0", "Se": "40.0 ± 2.0",
        "ICBHI Score": "60.0 ± 0.5 [55.0, 65.0]", "SPRSound Score": "60.0 ± 0.5 [55.0, 65.0]"}


def test_findings_rank_the_methods_and_compare_the_proposed_one():
    rows = [{"method": m, "protocol": "last", "part": part, "family": "icbhi", "score": score,
             "score_sd": 1.0, "score_lo": score - 3, "score_hi": score + 3}
            for part, scores in (("test_intra", {"ce": 70.0, "patchmix_cl": 60.0}),
                                 ("test_inter", {"ce": 61.0, "patchmix_cl": 62.0}))
            for m, score in scores.items()]
    text = findings(pd.DataFrame(rows), labels={"ce": "CE", "patchmix_cl": "CL"})
    lines = text.splitlines()
    assert lines[0].endswith("CE 70.0 ± 1.0, CL 60.0 ± 1.0")
    assert lines[1] == "  CL − CE: -10.0 points; their 95 % intervals do not overlap"
    assert lines[3] == "  CL − CE: +1.0 points; their 95 % intervals overlap"
    assert lines[4] == "intra minus inter: CE +9.0, CL -2.0 points"


def test_predictions_refuse_a_table_they_were_not_made_on(sprsound_runs, synth_root):
    table, _ = sprsound_runs
    other = recognise(synth_root).read()
    with pytest.raises(ValueError, match="cycles this table lacks"):
        predictions(table["run_dir"].iloc[0], "last", other)


def test_a_model_is_scored_on_another_data_set_in_its_families(sprsound_runs, synth_root):
    table, _ = sprsound_runs
    cross = cross_scores(table[table["protocol"] == "last"], synth_root)
    assert set(cross["part"]) == {"test"} and set(cross["family"]) == {"icbhi"}
    assert sorted(cross["seed"]) == [1, 2]
    assert "synthetic" in cross.attrs["data"]
    both = cross_scores(table[table["protocol"] == "last"], synth_root,
                        families=("icbhi", "sprsound"))
    assert set(both["family"]) == {"icbhi", "sprsound"}
    assert cross["n"].iloc[0] == (recognise(synth_root).read()["split"] == "test").sum()


def test_sprsound_tables_match_the_subset(sprsound_mini):
    cycles = recognise(sprsound_mini).read()
    events = event_counts(cycles).set_index("event type")
    assert events.loc["Normal", ["train", "test_intra", "test_inter"]].tolist() == [137, 19, 43]
    assert events.loc["Stridor", "class"] == "wheeze" and events["total"].sum() == 289
    records = record_counts(cycles).set_index("record label")
    assert records.loc["Poor Quality", "total"] == 5 and records["total"].sum() == 80


def test_floor_start_finds_where_the_sound_ends():
    flat_top = np.concatenate([np.linspace(0.0, -1.0, 40), np.full(88, -1.2)])
    flat_top[-1] = -1.17  # a last bin a little off the floor still counts as floor
    assert floor_start(flat_top) == 40
    assert floor_start(np.linspace(0.0, -1.0, 128)) == 128  # sound everywhere
    cfg = FeatureConfig()
    assert math.isclose(mel_frequency(mel_bin(700.0, cfg), cfg), 700.0)


def test_a_data_set_sets_its_own_demo_epochs_unless_told(sprsound_mini):
    root = recognise(sprsound_mini)
    assert notebook_config("demo", folder=root).train.epochs == DEMO_EPOCHS
    assert notebook_config("demo", folder=root, overrides="epochs=30").train.epochs == 30
    assert notebook_config("demo", folder=root, knobs={"epochs": 4}).train.epochs == 4
    assert notebook_config("smoke", folder=root).train.epochs == profile("smoke").train.epochs
    assert notebook_config("demo").train.epochs == profile("demo").train.epochs


def test_a_run_key_ignores_where_the_data_lies(smoke_data):
    cfg, data = smoke_data
    moved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root="/elsewhere"))
    assert run_key(moved, data) == run_key(cfg, data)
    assert run_key(dataclasses.replace(cfg, seed=7), data) != run_key(cfg, data)


def test_notebook_06_needs_its_folder(sprsound_mini, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv(ROOT_ENV, raising=False)
    assert notebook_roots() == {SIX: ""}
    with pytest.raises(DataError, match="set SPRSOUND_ROOT"):
        dataset_root("sprsound")
    assert all(SIX not in j.notebooks for j in jobs("smoke"))
    assert run_all({}, names=[SIX], executed_dir=tmp_path) == {}  # skipped, says so
    assert "06_real_lung_sounds: skipped, its committed outputs kept" in capsys.readouterr().out

    monkeypatch.setenv(ROOT_ENV, str(sprsound_mini))
    assert notebook_roots() == {SIX: str(sprsound_mini)}
    assert notebook_roots({"sprsound": ""}) == {SIX: ""}  # an explicit "" wins
    six = [j for j in jobs("demo") if SIX in j.notebooks]
    assert [(j.cfg.method.name, j.cfg.seed) for j in six] == [
        (m, seed) for m in ("weighted_ce", "ce", "patchmix_cl") for seed in (1, 2)]
    assert {j.cfg.data.root for j in six} == {str(sprsound_mini)}
    assert {j.cfg.train.epochs for j in six} == {DEMO_EPOCHS}
    assert all("train.epochs=15" in j.command() for j in six)
    assert set(NOTEBOOK_DATA) == {SIX}
