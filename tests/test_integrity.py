"""Runs whose files disagree are refused, never read into a table (`patchmix.engine.integrity`): a
shipped run changed in any byte, a cached run whose summary its predictions or history do not
bear out, and `plan --compare` over every file a run ships."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from patchmix.atomic import LOCK_NAME
from patchmix.cli import main
from patchmix.companion.plan import compare, jobs
from patchmix.data.dataset import recognise
from patchmix.data.loading import load_data
from patchmix.engine.experiment import run, run_key
from patchmix.engine.integrity import FILES, PROVENANCE, RunIntegrityError, verify_shipped
from patchmix.engine.train import finished, fit


@pytest.fixture(scope="module")
def shipped(synth_root, tmp_path_factory, monkeypatch_module):
    """Notebook 04's two smoke runs (fine-tuning and Patch-Mix CL, seed 1, with weights),
    trained into a run cache and exported as ``make ship`` does."""
    base = tmp_path_factory.mktemp("integrity")
    monkeypatch_module.setenv("PATCHMIX_CACHE", str(base / "cache"))
    plan = jobs("smoke", folder=recognise(synth_root), seeds=1, notebooks=["04_latent_umap"])
    data = load_data(plan[0].cfg.data, progress=False)
    for job in plan:
        fit(job.cfg, data, base / "runs" / run_key(job.cfg, data), progress=False)
    monkeypatch_module.setenv("PATCHMIX_RUNS", str(base / "runs"))
    args = ["plan", "--profile", "smoke", "--data", str(synth_root), "--seeds", "1",
            "--notebooks", "04_latent_umap"]
    assert main([*args, "--export", str(base / "shipped")]) == 0
    return plan, data, base, args


def _copy(base: Path, source: str, name: str) -> Path:
    other = base / name
    shutil.rmtree(other, ignore_errors=True)
    shutil.copytree(base / source, other)
    return other


def _set_last_score(run_dir: Path, score: float) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["protocols"]["last"]["score"] = score
    (run_dir / "summary.json").write_text(json.dumps(summary))


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_export_records_a_checksum_of_every_file_and_they_verify(shipped):
    plan, data, base, _ = shipped
    made = json.loads((base / "shipped" / PROVENANCE).read_text())
    for entry in made["runs"]:
        files = {p.name for p in (base / "shipped" / entry["run"]).iterdir()}
        assert set(entry[FILES]) == files and "final.pt" in files
        verify_shipped(base / "shipped", entry["run"])


@pytest.mark.parametrize("tamper, message", [
    (lambda d: _set_last_score(d, 99.0), "summary.json has changed since it was shipped"),
    (lambda d: (d / "predictions-val.csv").unlink(), "predictions-val.csv is missing"),
    (lambda d: _flip_a_byte(d / "final.pt"), "final.pt has changed since it was shipped"),
    (lambda d: (d / "notes.txt").write_text("x"), "notes.txt was not shipped with it"),
])
def test_a_tampered_shipped_run_stops_its_reader_with_one_line_naming_it(
        shipped, monkeypatch, tmp_path, tamper, message):
    """What a notebook calls (`experiment.run`) and what ``make reproduce`` ends with
    (``plan --compare``) both refuse the run: no number of it reaches a table."""
    plan, data, base, args = shipped
    other = _copy(base, "shipped", "tampered")
    job = plan[0]
    key = run_key(job.cfg, data)
    tamper(other / key)
    monkeypatch.setenv("PATCHMIX_SHIPPED", str(other))
    monkeypatch.setenv("PATCHMIX_RUNS", str(tmp_path / "empty"))  # nothing cached: shipped
    with pytest.raises(RunIntegrityError, match=message) as err:
        run(job.cfg, data=data, progress=False)
    assert key in str(err.value) and f"{job.label} seed 1" in str(err.value)
    monkeypatch.setenv("PATCHMIX_RUNS", str(base / "runs"))
    with pytest.raises(RunIntegrityError, match=message):
        compare(plan, other, base / "runs", data)


def test_compare_on_the_command_line_is_one_line_and_exit_2(shipped, capsys):
    plan, data, base, args = shipped
    other = _copy(base, "shipped", "tampered_cli")
    key = run_key(plan[1].cfg, data)
    summary = json.loads((other / key / "summary.json").read_text())
    summary["protocols"]["last"]["confusion"][0][0] += 1  # one confusion cell
    (other / key / "summary.json").write_text(json.dumps(summary))
    assert main([*args, "--compare", str(other)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines()
              if not line.startswith("#")]  # the plan's own count line aside
    assert len(errors) == 1 and errors[0].startswith("patchmix: error: ")
    assert key in errors[0] and "summary.json has changed since it was shipped" in errors[0]


def test_a_shipped_set_without_checksums_is_refused(shipped, monkeypatch, tmp_path):
    plan, data, base, _ = shipped
    other = _copy(base, "shipped", "unlisted")
    made = json.loads((other / PROVENANCE).read_text())
    for entry in made["runs"]:
        del entry[FILES]
    (other / PROVENANCE).write_text(json.dumps(made))
    monkeypatch.setenv("PATCHMIX_SHIPPED", str(other))
    monkeypatch.setenv("PATCHMIX_RUNS", str(tmp_path / "empty"))
    with pytest.raises(RunIntegrityError, match="records no checksums"):
        run(plan[0].cfg, data=data, progress=False)


def test_a_cached_summary_its_predictions_do_not_bear_out_is_refused(shipped):
    """The defect as found: a Score of 99 where the run's Sp and Se give 57 went into the
    results table. In a run cache (no checksums) the summary is recomputed from the run's
    predictions and read back from its history."""
    plan, data, base, _ = shipped
    cache = _copy(base, "runs", "cache_score")
    key = run_key(plan[0].cfg, data)
    _set_last_score(cache / key, 99.0)
    with pytest.raises(RunIntegrityError, match=r"'last' protocol: score 99\.0 is not what "
                                                r"predictions-last\.csv gives"):
        finished(cache / key)
    with pytest.raises(RunIntegrityError, match=key):
        run(plan[0].cfg, data=data, root=cache, progress=False)


def test_a_cached_run_missing_a_prediction_file_is_refused(shipped):
    plan, data, base, _ = shipped
    cache = _copy(base, "runs", "cache_predictions")
    key = run_key(plan[0].cfg, data)
    (cache / key / "predictions-val.csv").unlink()
    with pytest.raises(RunIntegrityError, match="predictions-val.csv is missing"):
        finished(cache / key)


def test_compare_looks_at_every_file_a_run_ships(shipped):
    """Runs equal in their history but not in their weights, or lacking a prediction file
    the other has, are not the same to the last bit."""
    plan, data, base, _ = shipped
    key = run_key(plan[0].cfg, data)
    assert {r["status"] for r in compare(plan, base / "shipped", base / "runs", data)} == {
        "same"}
    weights = _copy(base, "runs", "cache_weights")
    _flip_a_byte(weights / key / "final.pt")
    row = next(r for r in compare(plan, base / "shipped", weights, data) if r["run"] == key)
    assert (row["status"], row["first_epoch"]) == ("differs", "final.pt")
    config = _copy(base, "runs", "cache_config")
    (config / key / "config.json").write_text(
        (config / key / "config.json").read_text().replace("{", "{\n", 1))
    row = next(r for r in compare(plan, weights, config, data) if r["run"] == key)
    assert row["status"] == "differs" and row["first_epoch"] == "config.json"


def test_two_run_caches_of_the_same_runs_compare_the_same(shipped):
    """Two run caches hold the same runs to the last bit although each folder's lock names
    another writer (its process id): the lock is not a file of the run."""
    plan, data, base, _ = shipped
    key = run_key(plan[0].cfg, data)
    other = _copy(base, "runs", "cache_relocked")
    for run_dir in (base / "runs" / key, other / key):
        assert (run_dir / LOCK_NAME).is_file()  # fit leaves its lock behind
    (other / key / LOCK_NAME).write_text("999999")
    assert {r["status"] for r in compare(plan, base / "runs", other, data)} == {"same"}
    _flip_a_byte(other / key / "last.pt")  # what does differ still counts
    row = next(r for r in compare(plan, base / "runs", other, data) if r["run"] == key)
    assert (row["status"], row["first_epoch"]) == ("differs", "last.pt")
