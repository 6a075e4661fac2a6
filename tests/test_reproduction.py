"""The verdict of a reproduction (`patchmix.companion.reproduction`, ``patchmix plan --compare``): a
run that differs in its last bits passes, a shipped Score moved beyond the tolerance fails with a
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
from patchmix.companion.plan import jobs
from patchmix.companion.reproduction import (
    NOISE,
    Judgement,
    _per_run,
    factor,
    judge,
    outputs_lines,
    scores_table,
    seed_noise,
    tolerance,
    tolerance_markdown,
)
from patchmix.data.dataset import recognise
from patchmix.data.loading import load_data
from patchmix.engine.experiment import run_key
from patchmix.engine.integrity import FILES, PROVENANCE, checksums
from patchmix.engine.metrics import icbhi_scores
from patchmix.engine.train import fit


@pytest.fixture(scope="module")
def shipped(synth_root, tmp_path_factory, monkeypatch_module):
    """Notebook 04's smoke runs (fine-tuning and Patch-Mix CL) for seeds 1 and 2, trained into
    a run cache and exported as shipped runs with their noise scale, as ``make ship`` does."""
    base = tmp_path_factory.mktemp("reproduction")
    monkeypatch_module.setenv("PATCHMIX_CACHE", str(base / "cache"))
    monkeypatch_module.setenv("PATCHMIX_RUNS", str(base / "runs"))
    plan = jobs("smoke", folder=recognise(synth_root), seeds=2, notebooks=["04_latent_umap"])
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


def _reship(folder: Path) -> None:
    """Record `folder`'s files as its checksums, as exporting these runs would have."""
    made = json.loads((folder / PROVENANCE).read_text())
    for entry in made["runs"]:
        entry[FILES] = checksums(folder / entry["run"])
    (folder / PROVENANCE).write_text(json.dumps(made))


def _repredict(run_dir: Path, protocol: str, pred) -> float:
    """Give `protocol`'s epoch other predictions (`pred`: labels → predictions) and every file
    that reports that epoch (its protocols' prediction files and summaries, its history
    line) the scores they make: another run, consistent in itself. Returns its new Score."""
    summary = json.loads((run_dir / "summary.json").read_text())
    epoch = summary["protocols"][protocol]["epoch"]
    for name, entry in summary["protocols"].items():
        if entry["epoch"] != epoch:
            continue
        path = run_dir / f"predictions-{name}.csv"
        frame = pd.read_csv(path)
        frame["pred"] = pred(frame["label"].to_numpy())
        frame.to_csv(path, index=False)
        scores = icbhi_scores(frame["label"].to_numpy(), frame["pred"].to_numpy())
        entry.update({k: scores[k] for k in ("sp", "se", "score", "per_class_recall",
                                              "confusion")})
    (run_dir / "summary.json").write_text(json.dumps(summary))
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text()
               .splitlines()]
    for line in history:
        if line["epoch"] == epoch:
            line.update({f"test_{m}": scores[m] for m in ("sp", "se", "score")})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    return scores["score"]


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
    _reship(other)  # another set of runs, shipped as such
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
    before = json.loads((other / key / "summary.json").read_text())["protocols"]["last"]
    # every cycle right (Score 100) or every one wrong (0), whichever lies further away
    right = before["score"] < 50
    after = _repredict(other / key, "last", (lambda y: y) if right else (lambda y: (y + 1) % 4))
    assert abs(after - before["score"]) > tolerance(noise, "last", "score")
    _reship(other)
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


def test_a_protocol_that_chose_another_epoch_is_held_against_that_epoch(tmp_path):
    """A selecting protocol whose choice fell on another epoch reports that epoch's Sp and Se,
    and val its test Score too: they are compared with the twin's at the same epoch, not with
    the twin's choice; best_test's Score, the maximum chosen over, as reported."""
    (tmp_path / "r").mkdir()
    history = [{"epoch": 1, "test_sp": 90.0, "test_se": 10.0, "test_score": 50.0},
               {"epoch": 2, "test_sp": 60.0, "test_se": 42.0, "test_score": 51.0}]
    (tmp_path / "r" / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n"
                                                          for h in history))
    row = {"label": "m", "seed": 1, "group": "g", "run": "r"}
    # the twin chose epoch 1 under both; the retrained run chose epoch 2 with other numbers
    old = pd.DataFrame([{**row, "protocol": p, "sp": 90.0, "se": 10.0, "score": 50.0,
                         "epoch": 1} for p in ("best_test", "val")])
    new = pd.DataFrame([{**row, "protocol": p, "sp": 61.0, "se": 41.0, "score": 51.0,
                         "epoch": 2} for p in ("best_test", "val")])
    noise = {"sd": {p: dict.fromkeys(("sp", "se", "score"), 1.0) for p in ("best_test", "val")},
             "dof": {"best_test": 7, "val": 7}}
    runs = _per_run(old, new, noise, tmp_path).set_index(["protocol", "metric"])
    assert runs.loc[("val", "sp"), "compared"] == 60.0  # the twin at epoch 2
    assert runs.loc[("val", "score"), "compared"] == 51.0
    assert runs.loc[("best_test", "score"), "compared"] == 50.0  # as reported
    assert runs["epoch"].eq("1 → 2").all() and runs["ok"].all()  # 1 point off, within 4.53 √2
    naive = _per_run(old, new.assign(epoch=1), noise, tmp_path)  # held against the choice
    assert not naive.set_index(["protocol", "metric"]).loc[("val", "sp"), "ok"]
    judged = Judgement(_per_run(old, new, noise, tmp_path), pd.DataFrame(columns=["ok"]), 0,
                       [], noise, 1)
    assert judged.passed and "chose another epoch" in judged.verdict()
