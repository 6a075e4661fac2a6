"""The run plan: which runs each notebook needs, derived from the method registry and the
ablation grid, with typed configurations."""

from __future__ import annotations

import pytest

from patchmix.companion.knobs import knob_label
from patchmix.companion.notebook_runs import (
    ABLATIONS,
    NOTEBOOK_RUNS,
    PRETRAINED_ONLY,
    ablations,
    baselines,
    comparison,
    planned_runs,
)
from patchmix.companion.report import NOTEBOOKS
from patchmix.config import config_hash, get_value, profile, with_overrides, with_values
from patchmix.methods import baseline_methods, method_with_role


def test_baselines_never_repeat_ce_when_specaugment_is_always_on():
    demo = {p.name: p for p in baselines(profile("demo"))}
    assert list(demo) == ["ce", "weighted_ce", "mixup", "cutmix", "patchmix_ce", "ce_no_specaug"]
    assert demo["ce_no_specaug"].cfg == with_overrides(
        profile("demo"), ["method.name=ce", "method.spec_augment=false"])
    assert demo["ce_no_specaug"].label == "CE, no SpecAugment"
    plain = {p.name: p for p in baselines(with_overrides(profile("demo"),
                                                         ["spec_augment=false"]))}
    assert "specaug" in plain and "ce_no_specaug" not in plain
    assert plain["specaug"].cfg.method.name == "specaug" and plain["specaug"].label == (
        "SpecAugment")
    assert len({config_hash(p.cfg) for p in demo.values()}) == len(demo)  # all different runs
    # the list is the registry's: every method registered as a baseline is in it
    assert {p.cfg.method.name for p in plain.values()} == {m.name for m in baseline_methods()}


def test_the_comparison_is_the_proposed_method_and_its_reference():
    runs = comparison(profile("demo"))
    assert [p.name for p in runs] == [method_with_role("reference").name,
                                      method_with_role("proposed").name]
    assert [p.label for p in runs] == ["Fine-tuning (CE)", "Patch-Mix CL"]


@pytest.mark.parametrize("name", ["demo", "paper"])
def test_ablations_try_every_grid_setting_and_mark_the_current_value(name):
    cfg = profile(name)
    runs = ablations(cfg)
    assert {p.name for p in runs} == {method_with_role("proposed").name}
    assert all(p.seeds == "ablation_seeds" for p in runs)
    for key, settings in ABLATIONS.items():
        mine = [p for p in runs if dict(p.columns)["ablation"] == knob_label(key)]
        if key in PRETRAINED_ONLY and cfg.model.weights == "none":  # demo: random weights
            assert mine == []
            continue
        current = get_value(cfg, key)
        expected = list(dict.fromkeys([current, *settings]))
        assert [get_value(p.cfg, key) for p in mine] == expected, key
        assert [dict(p.columns)["setting"] for p in mine] == [
            f"{v}{' *' if v == current else ''}" for v in expected]
        for p in mine:  # nothing else changes
            assert with_values(p.cfg, {key: current}) == with_values(
                cfg, {"method.name": p.name})
    # the paper profile's pos_embed is "official": the ablation still tries the AST rule
    pos = [p.cfg.model.pos_embed for p in runs if dict(p.columns)["ablation"] == "pos_embed"]
    assert sorted(pos) == (["ast", "official"] if name == "paper" else [])


def test_ablations_start_from_the_current_value_of_a_turned_knob():
    cfg = with_values(profile("demo"), {"method.temperature": 0.3})
    runs = ablations(cfg, {"method.temperature": [0.06, 0.3]})
    assert [dict(p.columns)["setting"] for p in runs] == ["0.3 *", "0.06"]
    assert [p.cfg.method.temperature for p in runs] == [0.3, 0.06]


def test_the_plan_covers_every_notebook_and_04_05_train_nothing_02_03_do_not():
    assert tuple(NOTEBOOK_RUNS) == NOTEBOOKS
    cfg = profile("demo")
    trained = {config_hash(p.cfg) for nb in ("02_baselines", "03_patchmix_ablations")
               for p in planned_runs(NOTEBOOK_RUNS[nb], cfg)}
    for nb in ("04_latent_umap", "05_paper_tables"):
        assert {config_hash(p.cfg) for p in planned_runs(NOTEBOOK_RUNS[nb], cfg)} <= trained
    five = planned_runs(NOTEBOOK_RUNS["05_paper_tables"], cfg)
    assert [p.name for p in five] == ["ce", "weighted_ce", "mixup", "cutmix", "patchmix_ce",
                                      "ce_no_specaug", "patchmix_cl"]  # ce listed once
    with pytest.raises(ValueError, match="unknown run group"):
        planned_runs(["nope"], cfg)
