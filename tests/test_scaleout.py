"""The run plan as commands (`patchmix plan`) and the local pool that trains it."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from patchmix.cli import build_parser, main
from patchmix.config import PROFILES, overrides_between, profile, with_overrides
from patchmix.datasets import load_data
from patchmix.experiment import NOTEBOOK_RUNS, finished, planned_runs, run_key
from patchmix.plan import compare, jobs, notebook_seeds, pending, run_local
from patchmix.report import NOTEBOOKS


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
    plan = jobs("smoke", data_root=str(synth_root), notebooks=["04_latent_umap"])
    assert len(plan) == 2  # fine-tuning and Patch-Mix CL, one seed
    data = load_data(plan[0].cfg.data, progress=False)  # the features, once, before the pool
    assert pending(plan, tmp_path / "runs", data) == plan
    assert run_local(plan, workers=2, threads=1, log_dir=tmp_path / "logs") == []
    assert pending(plan, tmp_path / "runs", data) == []
    for job in plan:  # where `patchmix.experiment.run` (the notebooks) will look
        assert finished(tmp_path / "runs" / run_key(job.cfg, data)) is not None
    assert "[2/2]" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["001.log", "002.log"]

    # the check a reproduction runs: the same runs elsewhere, one changed, one gone
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "runs", other)
    assert [r["status"] for r in compare(plan, other, tmp_path / "runs", data)] == ["same"] * 2
    first, second = (other / run_key(job.cfg, data) for job in plan)
    lines = (first / "metrics.jsonl").read_text().splitlines()
    epoch = json.loads(lines[-1])
    epoch["test_score"] += 1.0
    (first / "metrics.jsonl").write_text("\n".join([*lines[:-1], json.dumps(epoch)]) + "\n")
    shutil.rmtree(second)
    rows = compare(plan, other, tmp_path / "runs", data)
    assert [r["status"] for r in rows] == ["differs", "missing"]
    assert rows[0]["first_epoch"] == str(len(lines)) and rows[0]["last_score_diff"] == -1.0
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
    assert main(["plan", "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err


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
    plan = jobs("smoke", data_root=str(synth_root), notebooks=["04_latent_umap"])
    data = load_data(plan[0].cfg.data, progress=False)
    assert pending(plan, tmp_path / "runs", data) == []  # where the notebooks will look
    assert main([*args]) == 0 and capsys.readouterr().out == ""  # nothing left to list
