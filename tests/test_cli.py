"""The ``patchmix`` command line: data check on real recordings, errors as one line, exit 2."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from patchmix.cli import main

# The README table of ../shared/data/icbhi-mini (normal/crackle/wheeze/both).
MINI = {
    "recordings": {"train": 6, "test": 4},
    "cycles": {"train": {"normal": 14, "crackle": 19, "wheeze": 4, "both": 10},
               "test": {"normal": 35, "crackle": 1, "wheeze": 10, "both": 0}},
    "total_cycles": 93,
    "renamed": 0,
    "problems": [],
}
MINI_RECORDINGS = {  # recording: (split, rate, bits, [normal, crackle, wheeze, both])
    "101_1b1_Al_sc_Meditron": ("test", 44100, "24", [12, 0, 0, 0]),
    "102_1b1_Ar_sc_Meditron": ("test", 44100, "16", [13, 0, 0, 0]),
    "103_2b2_Ar_mc_LittC2SE": ("train", 44100, "24", [2, 0, 4, 0]),
    "104_1b1_Ar_sc_Litt3200": ("test", 4000, "16", [4, 0, 10, 0]),
    "104_1b1_Ll_sc_Litt3200": ("test", 4000, "16", [6, 1, 0, 0]),
    "105_1b1_Tc_sc_Meditron": ("train", 44100, "24", [8, 0, 0, 0]),
    "106_2b1_Pl_mc_LittC2SE": ("train", 44100, "24", [1, 8, 0, 0]),
    "107_2b3_Ar_mc_AKGC417L": ("train", 44100, "24", [0, 1, 0, 7]),
    "107_2b3_Lr_mc_AKGC417L": ("train", 44100, "16", [1, 7, 0, 0]),
    "107_2b3_Pr_mc_AKGC417L": ("train", 44100, "24", [2, 3, 0, 3]),
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_data_check_json_reports_the_readme_counts(icbhi_mini, capsys):
    code, out, err = run(capsys, "data", "check", str(icbhi_mini), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert {k: report[k] for k in MINI} == MINI
    assert report["synthetic"] is False
    assert report["sample_rates"] == {"train": {"44100": 6}, "test": {"4000": 2, "44100": 2}}
    assert report["bit_depths"] == {"train": {"16": 1, "24": 5}, "test": {"16": 3, "24": 1}}
    assert len(report["ignored_files"]) == 2  # filename_format.txt, filename_differences.txt


def test_reader_matches_the_readme_per_recording(icbhi_mini):
    from patchmix.data.icbhi import read_icbhi

    df = read_icbhi(icbhi_mini)
    assert sorted(df.recording.unique()) == sorted(MINI_RECORDINGS)
    for name, (split, rate, bits, counts) in MINI_RECORDINGS.items():
        r = df[df.recording == name]
        assert (r.split.iloc[0], r.sample_rate.iloc[0], r.bits.iloc[0]) == (split, rate, bits)
        assert r.label.value_counts().reindex(range(4), fill_value=0).tolist() == counts, name


def test_data_check_text_report(icbhi_mini, capsys):
    code, out, _ = run(capsys, "data", "check", str(icbhi_mini))
    assert code == 0
    assert "train" in out and "  93" in out and "Litt3200 2" in out and "problems" in out


def test_data_check_strict_fails_on_skips(make_data, capsys):
    root = make_data({"101_1b1_Al_sc_Meditron": "test"},
                     annotations={"101_1b1_Al_sc_Meditron": "0.5\t0.5\t0\t0\n0.5\t1\t0\t0\n"})
    assert run(capsys, "data", "check", str(root))[0] == 0
    code, out, _ = run(capsys, "data", "check", str(root), "--strict")
    assert code == 1 and "end 0.5 <= start 0.5 (skipped)" in out


@pytest.mark.parametrize("argv, message", [
    (["data", "check", "{tmp}/nowhere"], "nowhere: no such data folder"),
    (["data", "check", "{root}"], r"101_1b1_Al_sc_Meditron.txt:2: cannot parse"),
    (["data", "chek", "{root}"], "invalid choice: 'chek'"),
    (["synth", "{tmp}/s", "--recordings", "0"], "recordings"),
    (["data", "features", "{tmp}/nowhere"], "no such data folder"),
])
def test_bad_input_is_one_line_exit_2(make_data, tmp_path, capsys, argv, message):
    root = make_data({"101_1b1_Al_sc_Meditron": "test"},
                     annotations={"101_1b1_Al_sc_Meditron": "0.1\t0.5\t0\t0\n0.5\tx\t0\t0\n"})
    argv = [a.format(tmp=tmp_path, root=root) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("patchmix: error: ")
    assert message.split(":")[0] in err
    assert "Traceback" not in err


def patchmix_exe() -> str:
    exe = Path(sys.executable).parent / "patchmix"
    return str(exe) if exe.exists() else shutil.which("patchmix") or "patchmix"


def test_console_script_on_the_venv_path(tmp_path):
    help_ = subprocess.run([patchmix_exe(), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "synth" in help_.stdout and "data" in help_.stdout
    bad = subprocess.run([patchmix_exe(), "data", "check", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "no such data folder" in bad.stderr
    mod = subprocess.run([sys.executable, "-m", "patchmix", "--version"], capture_output=True,
                         text=True)
    assert mod.returncode == 0 and mod.stdout.startswith("patchmix ")


def test_data_features_builds_then_reuses_the_cache(icbhi_mini, tmp_path, capsys):
    code, out, err = run(capsys, "data", "features", str(icbhi_mini), "--cache", str(tmp_path))
    assert code == 0, err
    assert out.startswith("93 cycles → features (798, 128)")
    code, out2, _ = run(capsys, "data", "features", str(icbhi_mini), "--cache", str(tmp_path))
    assert code == 0 and out2.split(": ")[-1] == out.split(": ")[-1]  # same cache file


def test_synth_then_check_reads_the_synthetic_set_unchanged(tmp_path, capsys):
    out = tmp_path / "synthetic"
    code, text, err = run(capsys, "synth", str(out), "--recordings", "40", "--seed", "3",
                          "--quiet")
    assert code == 0, err
    assert text.startswith("wrote 40 synthetic recordings")
    code, text, err = run(capsys, "data", "check", str(out), "--json", "--strict")
    assert code == 0, err
    report = json.loads(text)
    assert report["synthetic"] is True and report["problems"] == []
    assert sum(report["recordings"].values()) == 40 and report["split_only"] == 0
    assert report["renamed"] >= 1  # Meditron files stored under their old device name
    assert report["patients_in_several_splits"] == []  # the synthetic split is patient-disjoint
    assert set(report["sample_rates"]["train"]) | set(report["sample_rates"]["test"]) == {
        "4000", "44100"}
    assert all(report["cycles"][s][c] > 0 for s in ("train", "test")
               for c in ("normal", "crackle", "wheeze", "both"))


@pytest.fixture(scope="module")
def trained_smoke_run(tmp_path_factory):
    """A 2-epoch smoke run on a small synthetic set, trained through the command line."""
    from patchmix.data.synth import make_synthetic_icbhi

    base = tmp_path_factory.mktemp("roundtrip")
    make_synthetic_icbhi(base / "data", 24, seed=5)
    mp = pytest.MonkeyPatch()
    mp.setenv("PATCHMIX_CACHE", str(base / "cache"))
    code = main(["train", "--profile", "smoke", "--method", "patchmix_cl", "--seed", "3",
                 "--data", str(base / "data"), "--out", str(base / "run"), "--quiet",
                 "epochs=2"])
    yield base, code
    mp.undo()


def test_train_evaluate_predict_round_trip(trained_smoke_run, capsys):
    base, code = trained_smoke_run
    assert code == 0
    assert (base / "run" / "final.pt").is_file() and (base / "run" / "summary.json").is_file()
    summary = json.loads((base / "run" / "summary.json").read_text())
    assert summary["seed"] == 3 and summary["method"] == "patchmix_cl" and summary["epochs"] == 2

    code, out, err = run(capsys, "evaluate", str(base / "run" / "final.pt"), "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["synthetic"] is True
    last = summary["protocols"]["last"]  # the final model is the last epoch's
    assert math.isclose(scores["score"], last["score"]) and scores["confusion"] == last["confusion"]

    rec = base / "data" / "ICBHI_final_database"
    wav = sorted(rec.glob("*.wav"))[0]
    code, out, err = run(capsys, "predict", str(base / "run" / "final.pt"), str(wav),
                         "--annotations", str(wav.with_suffix(".txt")))
    assert code == 0, err
    lines = out.strip().splitlines()
    n_cycles = len(wav.with_suffix(".txt").read_text().split("\n")) - 1
    assert len(lines) == 1 + n_cycles and lines[0].split()[:2] == ["start", "end"]
    probs = [float(v) for v in lines[1].split()[2:6]]
    assert math.isclose(sum(probs), 1.0, abs_tol=2e-3)
    code, out, _ = run(capsys, "predict", str(base / "run" / "final.pt"), str(wav))
    duration = __import__("soundfile").info(str(wav)).duration
    assert code == 0 and len(out.strip().splitlines()) == 1 + math.ceil(duration / 8)


@pytest.mark.parametrize("argv, message", [
    (["train", "--profile", "smoke", "--data", "{tmp}/none"], "none: no such data folder"),
    (["train", "--profile", "smoke", "--method", "svm"], "unknown method 'svm'"),
    (["train", "--profile", "smoke", "frobnicate=1"], "unknown override key 'frobnicate'"),
    (["train", "--profile", "huge"], "unknown profile 'huge'"),
    (["evaluate", "{tmp}/junk.pt"], "not a readable checkpoint"),
    (["evaluate", "{tmp}/other.pt"], "weights do not fit the model geometry"),
    (["predict", "{tmp}/missing.pt", "x.wav"], "no such checkpoint"),
])
def test_train_evaluate_predict_bad_input(trained_smoke_run, tmp_path, capsys, argv, message):
    import torch

    base, _ = trained_smoke_run
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    saved = torch.load(base / "run" / "final.pt", weights_only=False)
    saved["config"]["model"]["embed_dim"] = 64  # a checkpoint of another geometry
    torch.save(saved, tmp_path / "other.pt")
    code, out, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err


def test_a_long_problem_list_shows_the_first_of_each_kind(make_data):
    from patchmix.cli import format_report
    from patchmix.data.dataset import recognise

    folder = recognise(make_data({"101_1b1_Al_sc_Meditron": "test"}))
    dataset, cycles = folder.dataset, folder.read()
    report = dataset.summarize(cycles)
    report["problems"] = [{"kind": "poor_quality", "file": f"r{i}.json", "detail": "Poor Quality",
                           "action": "skipped"} for i in range(25)] + [
        {"kind": "stereo", "file": "s.wav", "detail": "2 channels", "action": "handled"}]
    text = format_report(report)
    assert "problems                26" in text
    assert "r2.json" in text and "r3.json" not in text and "s.wav" in text
    assert "… and 22 more poor_quality (--json lists all)" in text
    report["problems"] = report["problems"][:5]
    assert "r4.json" in format_report(report) and "more" not in format_report(report)
