"""The run plan as commands (`patchmix plan`) and the local pool that trains it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from patchmix.cli import build_parser, main
from patchmix.companion.notebook_runs import NOTEBOOK_RUNS, planned_runs
from patchmix.companion.plan import compare, jobs, notebook_seeds, pending, run_local
from patchmix.companion.report import NOTEBOOKS
from patchmix.config import PROFILES, overrides_between, profile, result_config, with_overrides
from patchmix.data.dataset import recognise
from patchmix.data.loading import load_data
from patchmix.engine.experiment import finished, run_key


@pytest.mark.parametrize("name", PROFILES)
def test_every_job_command_rebuilds_its_configuration(name):
    plan = jobs(name)
    assert plan
    for job in plan:
        args = build_parser().parse_args(job.argv())  # as `patchmix train` reads them
        assert args.command == "train" and args.profile == name
        assert with_overrides(profile(args.profile), args.overrides) == job.cfg


def test_the_plan_is_every_notebook_run_once_with_the_notebooks_seeds():
    plan = jobs("demo")
    assert notebook_seeds("02_baselines") == {"SEEDS": 2, "ABLATION_SEEDS": 1}
    assert notebook_seeds("03_patchmix_ablations") == {"SEEDS": 2, "ABLATION_SEEDS": 1}
    wanted = set()
    for nb in NOTEBOOKS:
        counts = notebook_seeds(nb)
        for p in planned_runs(NOTEBOOK_RUNS[nb], profile("demo")):
            n = counts["ABLATION_SEEDS" if p.seeds == "ablation_seeds" else "SEEDS"]
            wanted |= {dataclasses.replace(p.cfg, seed=s) for s in range(1, n + 1)}
    assert len(plan) == len(wanted) and {j.cfg for j in plan} == wanted
    cl = [j for j in plan if j.cfg == dataclasses.replace(profile("demo"), seed=1)]
    assert cl and set(cl[0].notebooks) == {"03_patchmix_ablations", "04_latent_umap",
                                           "05_paper_tables"}
    assert len(jobs("demo", seeds=3)) > len(plan)


def test_overrides_spell_booleans_and_nested_fields():
    base = profile("demo")
    cfg = with_overrides(base, ["method.spec_augment=false", "data.features.pad=zero"])
    assert set(overrides_between(base, cfg)) == {"data.features.pad=zero",
                                                 "method.spec_augment=false"}
    assert overrides_between(base, base) == []


def test_a_local_pool_trains_into_the_run_cache_the_notebooks_read(synth_root, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATCHMIX_RUNS", str(tmp_path / "runs"))
    plan = jobs("smoke", folder=recognise(synth_root), notebooks=["04_latent_umap"])
    assert len(plan) == 2  # fine-tuning and Patch-Mix CL, one seed
    data = load_data(plan[0].cfg.data, progress=False)  # the features, once, before the pool
    assert pending(plan, tmp_path / "runs", data) == plan
    assert run_local(plan, main, workers=2, threads=1, log_dir=tmp_path / "logs") == []
    assert pending(plan, tmp_path / "runs", data) == []
    for job in plan:  # where `patchmix.engine.experiment.run` (the notebooks) will look
        assert finished(tmp_path / "runs" / run_key(job.cfg, data)) is not None
    assert "[2/2]" in capsys.readouterr().out
    lines = (tmp_path / "logs" / "001.log").read_text().splitlines()
    assert lines[0] == plan[0].with_threads(1).command() and "→" in lines[1]  # then its output
    # The jobs ran in forks of a warm server (`patchmix.companion.plan._launch`). Again, in another
    # run cache: through the same server (started with the first environment, so each job must
    # carry its own), and as a plain `patchmix train` process (platforms without a fork
    # server): the same run to the last bit.
    metrics = (tmp_path / "runs" / run_key(plan[0].cfg, data) / "metrics.jsonl").read_bytes()
    for name, server in (("again", True), ("plain", False)):
        monkeypatch.setenv("PATCHMIX_RUNS", str(tmp_path / name))
        if not server:
            monkeypatch.setattr("patchmix.companion.plan._fork_server", lambda entry: None)
        assert run_local(plan[:1], main, threads=1, log_dir=tmp_path / f"{name}-logs") == []
        again = tmp_path / name / run_key(plan[0].cfg, data) / "metrics.jsonl"
        assert again.read_bytes() == metrics, name
    monkeypatch.setenv("PATCHMIX_RUNS", str(tmp_path / "runs"))

    # the check a reproduction runs: the same runs elsewhere, one changed, one gone
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "runs", other)
    assert [r["status"] for r in compare(plan, other, tmp_path / "runs", data)] == ["same"] * 2
    first, second = (other / run_key(job.cfg, data) for job in plan)
    lines = (first / "metrics.jsonl").read_text().splitlines()
    epoch = json.loads(lines[-1])
    epoch["train_loss"] += 1e-6  # a number no summary reports (a Score would be refused)
    (first / "metrics.jsonl").write_text("\n".join([*lines[:-1], json.dumps(epoch)]) + "\n")
    shutil.rmtree(second)
    rows = compare(plan, other, tmp_path / "runs", data)
    assert [r["status"] for r in rows] == ["differs", "missing"]
    assert rows[0]["first_epoch"] == str(len(lines)) and rows[0]["last_score_diff"] == 0.0
    capsys.readouterr()
    assert main(["plan", "--profile", "smoke", "--data", str(synth_root), "--notebooks",
                 "04_latent_umap", "--compare", str(other)]) == 1  # a difference: exit 1
    assert "| differs |" in capsys.readouterr().out


def test_plan_lists_commands_and_refuses_bad_counts(synth_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATCHMIX_RUNS", str(tmp_path / "runs"))
    assert main(["plan", "--profile", "smoke", "--data", str(synth_root),
                 "--notebooks", "02_baselines"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines and all(line.startswith("patchmix train --profile smoke") for line in lines)
    assert f"{len(lines)} runs for the smoke notebooks, {len(lines)} not yet" in out.err
    assert main(["plan", "--workers", "-1"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_pool_threads_follow_a_pinned_profile(monkeypatch, tmp_path):
    """demo pins one thread per run: the pool runs one per core; --threads replaces the count
    without changing a run's key."""
    seen: list[tuple[str, list[str]]] = []

    def fake_launch(job, env, log, server, running, entry):
        seen.append((env["OMP_NUM_THREADS"], job.argv()))
        return 0

    monkeypatch.setattr("patchmix.companion.plan._launch", fake_launch)
    monkeypatch.setattr("patchmix.companion.plan.os.cpu_count", lambda: 8)
    plan = jobs("demo", notebooks=["04_latent_umap"])
    assert {j.cfg.train.threads for j in plan} == {1}
    assert run_local(plan, main, log_dir=tmp_path) == []
    assert {t for t, _ in seen} == {"1"}
    seen.clear()
    assert run_local(plan, main, threads=2, log_dir=tmp_path) == []
    assert {t for t, _ in seen} == {"2"} and all("train.threads=2" in a for _, a in seen)
    # the same runs: the key is made of `result_config`, which leaves the thread count out
    assert [result_config(j.with_threads(2).cfg) for j in plan] == [
        result_config(j.cfg) for j in plan]
    seen.clear()
    assert run_local(jobs("smoke", notebooks=["04_latent_umap"]), main, workers=2,
                     log_dir=tmp_path) == []
    assert {t for t, _ in seen} == {"4"}  # unpinned: the cores shared among the workers


def test_submitit_local_jobs_land_in_the_run_cache(synth_root, tmp_path, monkeypatch, capsys):
    """The SLURM route through submitit, run by its local executor: same commands, same keys."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATCHMIX_RUNS", str(tmp_path / "runs"))
    args = ["plan", "--profile", "smoke", "--data", str(synth_root), "--notebooks",
            "04_latent_umap"]
    assert main([*args, "--submit", str(tmp_path / "jobs"), "--cluster", "local",
                 "--timeout-min", "10"]) == 0
    out = capsys.readouterr().out
    assert out.count("submitted ") == 2 and out.count("done ") == 2
    plan = jobs("smoke", folder=recognise(synth_root), notebooks=["04_latent_umap"])
    data = load_data(plan[0].cfg.data, progress=False)
    assert pending(plan, tmp_path / "runs", data) == []  # where the notebooks will look
    assert main([*args]) == 0 and capsys.readouterr().out == ""  # nothing left to list


def test_shipped_runs_are_found_read_only_and_compare_with_a_retraining(
        synth_root, tmp_path, monkeypatch, capsys):
    """The committed layer: `export` writes compact runs with their provenance, `run` reads
    them when the run cache lacks them (weights where a notebook opens them), never writing
    there, and `compare` checks a retraining against them."""
    from patchmix.companion.latent import load_projector
    from patchmix.companion.notebooks import where_from
    from patchmix.companion.plan import SHIPPED_FILES, export
    from patchmix.engine.experiment import load_trained, run, shipped_dir
    from patchmix.engine.integrity import PROVENANCE, RunIntegrityError

    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATCHMIX_RUNS", str(tmp_path / "runs"))
    plan = jobs("smoke", folder=recognise(synth_root), notebooks=["04_latent_umap"])
    assert [j.weights for j in plan] == [True, True]  # 04 encodes with both checkpoints
    plan[0] = dataclasses.replace(plan[0], weights=False)  # as a scores-only run would ship
    data = load_data(plan[0].cfg.data, progress=False)
    with pytest.raises(ValueError, match="2 of 2 runs are not finished"):
        export(plan, tmp_path / "runs", tmp_path / "shipped", data)
    assert run_local(plan, main, workers=1, log_dir=tmp_path / "logs") == []
    made = export(plan, tmp_path / "runs", tmp_path / "shipped", data)
    keys = [run_key(j.cfg, data) for j in plan]
    assert [r["run"] for r in made["runs"]] == keys
    assert made["data_identity"] == data.identity() and made["machine"]["cpu_count"]
    assert made["runs"][1]["command"] == plan[1].command()
    assert json.loads((tmp_path / "shipped" / PROVENANCE).read_text()) == made
    scores_only, with_weights = (tmp_path / "shipped" / k for k in keys)
    assert not (scores_only / "final.pt").exists() and (with_weights / "final.pt").is_file()
    assert not any((tmp_path / "shipped" / k / "last.pt").exists() for k in keys)
    for pattern in SHIPPED_FILES:
        assert list(scores_only.glob(pattern))

    # a fresh clone: an empty run cache, the shipped folder beside it
    monkeypatch.setenv("PATCHMIX_RUNS", str(tmp_path / "fresh"))
    monkeypatch.setenv("PATCHMIX_SHIPPED", str(tmp_path / "shipped"))
    found = run(plan[1].cfg, data=data, progress=False)
    assert found["cached"] and found["run_dir"] == str(with_weights)
    assert not (tmp_path / "fresh").exists()  # nothing trained, nothing written
    model, _ = load_trained(f"{found['run_dir']}/final.pt")
    assert load_projector(found["run_dir"]) is not None  # the projector ships in final.pt
    assert main(plan[1].argv()) == 0  # `patchmix train` (a pool's worker) trains into runs/
    assert finished(tmp_path / "fresh" / keys[1]) is not None
    line = where_from([found["run_dir"]])
    assert "1 shipped with the repository" in line and "0 from" in line
    monkeypatch.setenv("PATCHMIX_SHIPPED", "off")
    assert shipped_dir() is None
    monkeypatch.delenv("PATCHMIX_SHIPPED")
    assert shipped_dir() == Path("shipped")

    # the reproduction's check: the run cache that trained them against the shipped copy
    assert [r["status"] for r in compare(plan, tmp_path / "shipped", tmp_path / "runs",
                                         data)] == ["same", "same"]
    # one probability of the retrained run moved: its predictions still bear out its scores
    preds = tmp_path / "runs" / keys[1] / "predictions-last.csv"
    preds.write_text(preds.read_text().replace("0.", "1.", 1))
    rows = compare(plan, tmp_path / "shipped", tmp_path / "runs", data)
    assert [(r["status"], r["first_epoch"]) for r in rows] == [
        ("same", ""), ("differs", "predictions-last.csv")]
    # the same edit to the shipped copy is a tampered shipped run: refused, naming the file
    shipped_preds = with_weights / "predictions-last.csv"
    shipped_preds.write_text(shipped_preds.read_text().replace("0.", "1.", 1))
    with pytest.raises(RunIntegrityError, match="predictions-last.csv has changed"):
        compare(plan, tmp_path / "shipped", tmp_path / "runs", data)
    capsys.readouterr()
