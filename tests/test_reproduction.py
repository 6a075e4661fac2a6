"""The verdict of a reproduction (`patchmix.reproduction`, ``patchmix plan --compare``): a run
that differs in its last bits passes, a shipped Score moved beyond the tolerance fails with a
table naming the run, a missing run fails."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from patchmix.cli import main
from patchmix.datasets import load_data
from patchmix.experiment import PROVENANCE, run_key
from patchmix.plan import jobs
from patchmix.reproduction import (
    NOISE,
    factor,
    judge,
    outputs_lines,
    scores_table,
    seed_noise,
    tolerance,
    tolerance_markdown,
)
from patchmix.train import fit


@pytest.fixture(scope="module")
def shipped(synth_root, tmp_path_factory, monkeypatch_module):
    """Notebook 04's smoke runs (fine-tuning and Patch-Mix CL) for seeds 1 and 2, trained into
    a run cache and exported as shipped runs with their noise scale, as ``make ship`` does."""
    base = tmp_path_factory.mktemp("reproduction")
    monkeypatch_module.setenv("PATCHMIX_CACHE", str(base / "cache"))
    monkeypatch_module.setenv("PATCHMIX_RUNS", str(base / "runs"))
    plan = jobs("smoke", data_root=str(synth_root), seeds=2, notebooks=["04_latent_umap"])
    assert len(plan) == 4
    data = load_data(plan[0].cfg.data, progress=False)
    for job in plan:
        fit(job.cfg, data, base / "runs" / run_key(job.cfg, data), progress=False)
    args = ["plan", "--profile", "smoke", "--data", str(synth_root), "--seeds", "2",
            "--notebooks", "04_latent_umap"]
    assert main([*args, "--export", str(base / "shipped")]) == 0
    return plan, data, base, args


def _copy(base: Path, name: str) -> Path:
    other = base / name
    shutil.rmtree(other, ignore_errors=True)
    shutil.copytree(base / "shipped", other)
    return other


def test_identical_runs_are_reproduced_to_the_last_bit(shipped, capsys):
    plan, data, base, args = shipped
    judged = judge(plan, base / "shipped", base / "runs", data)
    assert judged.passed and judged.bits == 4
    assert judged.verdict().startswith("reproduced to the last bit")
    assert main([*args, "--compare", str(base / "shipped")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("reproduced to the last bit")


def test_a_run_that_differs_in_its_last_bits_is_reproduced_within_noise(shipped, capsys):
    plan, data, base, args = shipped
    other = _copy(base, "last_bits")
    key = run_key(plan[1].cfg, data)
    lines = (other / key / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["train_loss"] = math.nextafter(first["train_loss"], math.inf)  # one bit of one loss
    (other / key / "metrics.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    judged = judge(plan, other, base / "runs", data)
    assert judged.bits == 3 and judged.passed and judged.outside.empty
    assert judged.verdict().startswith("reproduced within noise")
    assert main([*args, "--compare", str(other)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("reproduced within noise (largest difference")
    assert "| differs |" in out  # the run's bits are reported as they are


def test_a_shipped_score_moved_beyond_the_tolerance_fails_naming_the_run(shipped, capsys):
    plan, data, base, args = shipped
    other = _copy(base, "moved")
    noise = json.loads((other / PROVENANCE).read_text())[NOISE]  # recorded at export
    job = plan[2]  # Patch-Mix CL, seed 1
    key = run_key(job.cfg, data)
    summary = json.loads((other / key / "summary.json").read_text())
    last = summary["protocols"]["last"]
    moved = tolerance(noise, "last", "score") + 5.0  # beyond any tolerance, NaN-safe below
    last["score"] = last["score"] - moved if last["score"] > 50 else last["score"] + moved
    (other / key / "summary.json").write_text(json.dumps(summary))
    judged = judge(plan, other, base / "runs", data)
    assert not judged.passed
    outside = judged.outside
    assert ((outside["kind"] == "run") & (outside["label"] == job.label)
            & (outside["seed"] == "1") & (outside["metric"] == "score")).any()
    assert main([*args, "--compare", str(other)]) == 1
    out = capsys.readouterr().out
    assert "OUTSIDE the tolerance:" in out and f"| run | {job.label} | 1 |" in out
    assert out.splitlines()[-1].startswith("not reproduced:")


def test_a_missing_run_fails(shipped, capsys):
    plan, data, base, args = shipped
    other = _copy(base, "missing")
    shutil.rmtree(other / run_key(plan[0].cfg, data))
    judged = judge(plan, other, base / "runs", data)
    assert not judged.passed and len(judged.missing) == 1
    assert judged.verdict().startswith("not reproduced: 1 of 4 runs missing")
    assert main([*args, "--compare", str(other)]) == 1
    assert "missing" in capsys.readouterr().out.splitlines()[-1]


def test_the_noise_scale_pools_the_seed_variances_and_sets_the_tolerances():
    rows = [{"label": m, "seed": s, "group": m, "run": f"{m}{s}", "protocol": "last",
             "sp": sp, "se": 0.0, "score": sp / 2}
            for m, values in (("a", (60.0, 62.0)), ("b", (70.0, 76.0, 73.0)), ("c", (50.0,)))
            for s, sp in enumerate(values, 1)]
    noise = seed_noise(pd.DataFrame(rows))
    # a: var 2 (1 df); b: var 9 (2 df); c: one seed, left out → √((2 + 18) / 3)
    assert noise["sd"]["last"]["sp"] == pytest.approx(math.sqrt(20 / 3), abs=1e-4)
    assert noise["configurations"] == 2 and noise["runs"] == 5
    assert noise["dof"] == {"last": 3}
    k = factor(3)
    assert 3.0 < factor(1000) < 3.01 < factor(7) < k
    assert factor(7) == pytest.approx(4.530, abs=1e-3)
    assert tolerance(noise, "last", "sp") == pytest.approx(k * math.sqrt(2) * math.sqrt(20 / 3),
                                                           abs=1e-3)
    assert tolerance(noise, "last", "sp", seeds=2) == pytest.approx(k * math.sqrt(20 / 3),
                                                                    abs=1e-3)
    assert math.isnan(tolerance(noise, "val", "sp"))  # no protocol, no tolerance


def test_the_shipped_noise_is_the_seed_spread_of_the_exported_runs(shipped):
    plan, data, base, _ = shipped
    recorded = json.loads((base / "shipped" / PROVENANCE).read_text())[NOISE]
    assert recorded == seed_noise(scores_table(plan, base / "runs", data))
    assert recorded["configurations"] == 2 and recorded["runs"] == 4


def test_outputs_lines_say_what_a_reproduction_rewrote(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    table = "/".join(("results", "t.csv"))  # a made-up output, not one of this repository
    (tmp_path / "results").mkdir()
    (tmp_path / "figures").mkdir()
    (tmp_path / table).write_text("score\n57.4\n")
    (tmp_path / "figures" / "f.png").write_bytes(b"png")
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "outputs")
    assert outputs_lines(tmp_path)[-1] == "reported numbers: none changed"
    (tmp_path / "figures" / "f.png").write_bytes(b"other pixels")
    lines = outputs_lines(tmp_path)
    assert "1 files rewritten" in lines[0] and "figures/ 1" in lines[0]
    assert lines[1].startswith("reported numbers: none changed (results/ as committed")
    (tmp_path / table).write_text("score\n57.5\n")
    assert outputs_lines(tmp_path)[1] == f"reported numbers: changed in 1 files: {table}"
    assert outputs_lines(tmp_path / "nowhere")[0].startswith("committed outputs: not a git")


def test_the_documented_tolerances_are_those_of_the_shipped_runs():
    """docs/evaluation.md shows the tolerances a reproduction is judged by: those of the
    noise scale recorded with the shipped runs, which is their own seed spread."""
    repo = Path(__file__).resolve().parents[1]
    made = json.loads((repo / "shipped" / PROVENANCE).read_text())
    doc = (repo / "docs" / "evaluation.md").read_text()
    shown = doc.split("<!-- tolerance-table:start -->")[1].split("<!-- tolerance-table:end -->")[0]
    assert shown.strip() == tolerance_markdown(made[NOISE]).strip()
    runs = [{"label": r["label"], "seed": r["seed"], "run": r["run"],
             "group": r["command"].replace(f" seed={r['seed']}", "")} for r in made["runs"]]
    rows = []
    for r in runs:
        summary = json.loads((repo / "shipped" / r["run"] / "summary.json").read_text())
        rows += [{**r, "protocol": p, **{m: v[m] for m in ("sp", "se", "score")}}
                 for p, v in summary["protocols"].items()]
    assert seed_noise(pd.DataFrame(rows)) == made[NOISE]


def test_a_protocol_that_chose_another_epoch_is_held_against_that_epoch(shipped):
    """A selecting protocol whose choice fell on another epoch reports that epoch's Sp and Se,
    and val its test Score too: they are compared with the twin's at the same epoch, not with
    the twin's choice."""
    plan, data, base, _ = shipped
    other = _copy(base, "moved_epoch")
    key = run_key(plan[0].cfg, data)
    history = [json.loads(line) for line in (other / key / "metrics.jsonl").read_text()
               .splitlines()]
    summary = json.loads((other / key / "summary.json").read_text())
    val = summary["protocols"]["val"]
    elsewhere = next(e for e in history if e["epoch"] != val["epoch"])
    # the twin (other) chose `elsewhere`'s epoch, whose Sp and Se are far off in a made-up
    # way; the retrained run (base/runs) chose its own epoch, which the twin's history holds
    val.update(epoch=elsewhere["epoch"], sp=val["sp"] + 40.0, se=val["se"] - 40.0,
               score=val["score"] + 30.0)
    (other / key / "summary.json").write_text(json.dumps(summary))
    judged = judge(plan, other, base / "runs", data)
    row = judged.runs[(judged.runs["run"] == key) & (judged.runs["protocol"] == "val")
                      & (judged.runs["metric"] == "sp")].iloc[0]
    assert "→" in row["epoch"] and row["old"] != row["compared"]
    score = judged.runs[(judged.runs["run"] == key) & (judged.runs["protocol"] == "val")
                        & (judged.runs["metric"] == "score")].iloc[0]
    assert score["old"] != score["compared"] and score["ok"]
    assert judged.passed, judged.outside
    assert "chose another epoch" in judged.verdict()
