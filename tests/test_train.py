"""Profiles, overrides and the training engine on a small synthetic set (smoke profile)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from patchmix.config import config_hash, profile, with_overrides
from patchmix.engine.train import cosine_lr, fit, ma_update
from patchmix.methods import METHODS


def test_profiles_and_overrides():
    paper = profile("paper")
    assert paper.model.pos_embed == "official" and paper.model.weights == "audioset"
    assert (paper.train.lr, paper.train.batch_size, paper.train.epochs) == (5e-5, 8, 50)
    assert (paper.train.min_lr, paper.train.weight_decay, paper.train.ma_beta) == (5e-8, 1e-6, 0.5)
    assert paper.method.temperature == 0.06 and paper.method.alpha == 1.0
    assert paper.method.spec_augment and paper.method.specaug_gate == "official"
    cfg = with_overrides(profile("demo"), ["epochs=3", "method.name=ce", "pad=zero"])
    assert (cfg.train.epochs, cfg.method.name, cfg.data.features.pad) == (3, "ce", "zero")
    assert config_hash(cfg) != config_hash(profile("demo"))
    for bad, message in ((["nope=1"], "unknown override key 'nope'"),
                         (["epochs=x"], "bad value 'x' for epochs"),
                         (["epochs"], "not key=value")):
        with pytest.raises(ValueError, match=message):
            with_overrides(cfg, bad)
    with pytest.raises(ValueError, match="unknown profile"):
        profile("huge")


def test_cosine_schedule_and_ma_update():
    assert math.isclose(cosine_lr(50, 50, 5e-5, 5e-8), 5e-8)
    assert math.isclose(cosine_lr(25, 50, 5e-5, 5e-8), (5e-5 + 5e-8) / 2)
    assert cosine_lr(1, 50, 5e-5, 5e-8) < 5e-5
    new, old = [torch.tensor([4.0, 0.0])], [torch.tensor([0.0, 2.0])]
    ma_update(new, old, 0.5)
    assert new[0].tolist() == [2.0, 1.0]


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_trains_and_records_all_protocols(smoke_data, tmp_path, method):
    cfg, data = smoke_data
    cfg = with_overrides(cfg, [f"method.name={method}", "epochs=1"])
    summary = fit(cfg, data, tmp_path, progress=False)
    assert summary["finished"] and summary["synthetic"] is True
    assert set(summary["protocols"]) == {"best_test", "last", "val"} or (
        set(summary["protocols"]) == {"last", "val"})  # best_test needs Se > 5
    last = summary["protocols"]["last"]
    assert 0 <= last["sp"] <= 100 and last["epoch"] == 1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and math.isfinite(json.loads(lines[0])["train_loss"])
    preds = (tmp_path / "predictions-last.csv").read_text().splitlines()
    assert len(preds) == 1 + int((data.cycles.split == "test").sum())


def test_training_progress_goes_to_stderr(smoke_data, tmp_path, capsys):
    """Bars and epoch lines alike: a notebook's stdout is then the same whether its runs were
    trained or read from the cache (the readable copies drop stderr)."""
    cfg, data = smoke_data
    fit(with_overrides(cfg, ["epochs=1"]), data, tmp_path, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "epoch   1  loss" in err


def test_same_seed_same_metrics_and_resume_equals_uninterrupted(smoke_data, tmp_path):
    cfg, data = smoke_data
    cfg = with_overrides(cfg, ["epochs=3", "method.name=patchmix_cl"])
    a = fit(cfg, data, tmp_path / "a", progress=False)
    b = fit(cfg, data, tmp_path / "b", progress=False)
    history_a = (tmp_path / "a" / "metrics.jsonl").read_text()
    assert history_a == (tmp_path / "b" / "metrics.jsonl").read_text()
    assert a["protocols"] == b["protocols"]

    part = fit(cfg, data, tmp_path / "c", progress=False, stop_after_epoch=1)
    assert part == {"finished": False, "epoch": 1}
    assert len((tmp_path / "c" / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = fit(cfg, data, tmp_path / "c", progress=False)
    assert (tmp_path / "c" / "metrics.jsonl").read_text() == history_a
    assert resumed["protocols"] == a["protocols"]
    other = fit(with_overrides(cfg, ["seed=2"]), data, tmp_path / "d", progress=False)
    assert (tmp_path / "d" / "metrics.jsonl").read_text() != history_a
    assert other["seed"] == 2


def test_overrides_of_one_section_apply_together():
    cfg = with_overrides(profile("demo"), ["embed_dim=99", "num_heads=3"])
    assert (cfg.model.embed_dim, cfg.model.num_heads) == (99, 3)
    with pytest.raises(ValueError, match="embed_dim 99 is not divisible by num_heads 2"):
        with_overrides(profile("demo"), ["embed_dim=99"])


def test_resume_refuses_a_checkpoint_of_another_config(smoke_data, tmp_path):
    cfg, data = smoke_data
    fit(with_overrides(cfg, ["epochs=2"]), data, tmp_path, progress=False, stop_after_epoch=1)
    with pytest.raises(ValueError, match="belongs to another configuration"):
        fit(with_overrides(cfg, ["epochs=2", "lr=0.01"]), data, tmp_path, progress=False)


def test_run_cache_returns_without_training_and_seeds_aggregate(smoke_data, tmp_path,
                                                               monkeypatch):
    from patchmix.engine import experiment

    cfg, data = smoke_data
    cfg = with_overrides(cfg, ["epochs=1", "method.name=ce"])
    first = experiment.run(cfg, data=data, root=tmp_path, progress=False)
    assert first["cached"] is False and first["finished"]

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run must not train")

    monkeypatch.setattr(experiment, "fit", no_training)
    again = experiment.run(cfg, data=data, root=tmp_path, progress=False)
    assert again["cached"] is True and again["protocols"] == first["protocols"]
    assert again["run_dir"] == first["run_dir"]
    with pytest.raises(AssertionError, match="must not train"):  # another config: trains
        experiment.run(with_overrides(cfg, ["lr=0.002"]), data=data, root=tmp_path)

    monkeypatch.undo()
    table = experiment.run_seeds(cfg, [1, 2], data=data, root=tmp_path, progress=False)
    assert set(table["seed"]) == {1, 2} and {"last", "val"} <= set(table["protocol"])
    assert len({p for p in table["run_dir"]}) == 2  # seed 1 reused, seed 2 trained
    summary = experiment.aggregate(table)
    last = summary[summary.protocol == "last"].iloc[0]
    scores = table[table.protocol == "last"]["score"]
    assert last["seeds"] == 2 and math.isclose(last["score_mean"], scores.mean())
    assert math.isclose(last["score_sd"], scores.std(ddof=1), abs_tol=1e-12)


def test_compiled_blocks_train_like_eager_and_keep_checkpoint_keys(smoke_data, tmp_path):
    from patchmix.engine.experiment import load_trained

    cfg, data = smoke_data
    cfg = with_overrides(cfg, ["epochs=1", "max_steps_per_epoch=2", "method.name=patchmix_cl"])
    eager = fit(cfg, data, tmp_path / "eager", progress=False)
    compiled = fit(with_overrides(cfg, ["train.compile=true"]), data, tmp_path / "compiled",
                   progress=False)
    loss = [json.loads((tmp_path / d / "metrics.jsonl").read_text())["train_loss"]
            for d in ("eager", "compiled")]
    assert loss[1] == pytest.approx(loss[0], rel=1e-4)
    assert compiled["protocols"]["last"]["confusion"] == eager["protocols"]["last"]["confusion"]
    model, _ = load_trained(tmp_path / "compiled" / "final.pt")  # plain AST, same key names
    assert model.cfg.embed_dim == cfg.model.embed_dim
