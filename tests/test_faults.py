"""Faults and bad input: no stale result, no lost file, no silent NaN, no traceback.

Each test reproduces one defect class of an adversarial session: a kill at every write of the
final epoch, concurrent writers, non-finite audio, features and losses, nonsense values, damaged
checkpoints and caches, a full disk, killed feature workers, and the command line's edges.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from conftest import write_wav

from patchmix import atomic
from patchmix.atomic import FolderBusy, exclusive
from patchmix.cli import main
from patchmix.config import profile, with_overrides, with_values
from patchmix.data import features
from patchmix.data.errors import DataError
from patchmix.data.loading import load_data
from patchmix.engine import experiment, train
from patchmix.methods import METHODS, Method, register_method

REPO = Path(__file__).resolve().parents[1]


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("patchmix: error: ") and "Traceback" not in err
    return err


def run_files(folder: Path) -> dict[str, bytes]:
    """What a finished run folder holds that must not depend on interruptions."""
    out = {p.name: p.read_bytes() for p in sorted(folder.glob("predictions-*.csv"))}
    out["metrics.jsonl"] = (folder / "metrics.jsonl").read_bytes()
    summary = json.loads((folder / "summary.json").read_text())
    out["protocols"] = json.dumps(summary["protocols"], sort_keys=True).encode()
    for name in ["final.pt", *sorted(p.name for p in folder.glob("best-*.pt"))]:
        state = torch.load(folder / name, weights_only=False)["model"]
        out[name] = b"".join(v.numpy().tobytes() for v in state.values())
    return out


class Killed(BaseException):
    """A kill: raised instead of a write, so nothing after it happens."""


# --- 1, 2: what a result depends on, and a kill at every write of the final epoch -----------


def test_a_changed_label_or_split_is_a_new_run(smoke_data, tmp_path):
    cfg, data = smoke_data
    cfg = with_values(cfg, {"train.epochs": 1, "method.name": "ce"})
    assert experiment.run(cfg, data=data, root=tmp_path, progress=False)["cached"] is False
    assert experiment.run(cfg, data=data, root=tmp_path, progress=False)["cached"] is True
    relabelled = data.cycles.copy()
    relabelled.loc[relabelled["split"] == "test", "label"] = 0
    other = type(data)(relabelled, data.features, data.folder)
    again = experiment.run(cfg, data=other, root=tmp_path, progress=False)
    assert again["cached"] is False and again["run_dir"] != experiment.run(
        cfg, data=data, root=tmp_path, progress=False)["run_dir"]


def _writes(monkeypatch, kill_at: int | None = None) -> list[str]:
    """Count (and, at `kill_at`, refuse) every file `fit` writes."""
    seen: list[str] = []
    for name in ("_atomic_save", "write_json_atomic", "write_text_atomic",
                 "_write_predictions"):
        original = getattr(train, name)

        def counted(*args, _original=original, **kwargs):
            path = next(a for a in args if isinstance(a, Path))
            if len(seen) == kill_at:
                raise Killed(path.name)
            seen.append(path.name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(train, name, counted)
    return seen


def test_a_kill_at_any_write_of_the_final_epoch_resumes_to_the_same_run(
        smoke_data, tmp_path, monkeypatch):
    cfg, data = smoke_data
    cfg = with_values(cfg, {"method.name": "patchmix_cl"})
    with monkeypatch.context() as m:
        order = _writes(m)
        whole = experiment.run(cfg, data=data, root=tmp_path / "whole", progress=False)
    expected = run_files(Path(whole["run_dir"]))
    checkpoints = [i for i, name in enumerate(order) if name == "last.pt"]
    assert len(checkpoints) == cfg.train.epochs and order[checkpoints[-1] + 1:] == [
        "final.pt", "summary.json"]  # the summary is the last file
    kill_points = range(checkpoints[-2] + 1, len(order))  # every write of the final epoch
    assert len(kill_points) >= 4  # predictions, metrics.jsonl, last.pt, final.pt, summary
    for k in kill_points:
        root = tmp_path / f"kill{k}"
        with monkeypatch.context() as m:
            _writes(m, kill_at=k)
            with pytest.raises(Killed):
                experiment.run(cfg, data=data, root=root, progress=False)
        resumed = experiment.run(cfg, data=data, root=root, progress=False)
        assert resumed["cached"] is False, order[k]  # an incomplete run is never "cached"
        assert run_files(Path(resumed["run_dir"])) == expected, f"killed before {order[k]}"
        assert experiment.run(cfg, data=data, root=root, progress=False)["cached"] is True


@pytest.mark.parametrize("damage", ["{}", "not json", ""])
def test_a_damaged_summary_is_an_unfinished_run_and_is_repaired(smoke_data, tmp_path, damage):
    cfg, data = smoke_data
    cfg = with_values(cfg, {"train.epochs": 1, "method.name": "ce"})
    first = experiment.run(cfg, data=data, root=tmp_path, progress=False)
    expected = run_files(Path(first["run_dir"]))
    (Path(first["run_dir"]) / "summary.json").write_text(damage)
    repaired = experiment.run(cfg, data=data, root=tmp_path, progress=False)
    assert repaired["cached"] is False and run_files(Path(repaired["run_dir"])) == expected


# --- 3: one writer per folder, and nothing of an earlier run left beside a new one ---------


def test_a_second_run_into_a_busy_folder_stops_with_one_line(smoke_data, synth_root, tmp_path,
                                                             capsys):
    cfg, data = smoke_data
    out = tmp_path / "out"
    with exclusive(out, "a test"):
        with pytest.raises(FolderBusy, match=f"process {os.getpid()}"):
            train.fit(cfg, data, out, progress=False)
        err = one_line_error(capsys, ["train", "--profile", "smoke", "--data", str(synth_root),
                                      "--out", str(out), "--quiet"])
        assert "is writing into this folder" in err
    assert not (out / "summary.json").exists()


def test_a_fresh_run_in_a_used_folder_keeps_nothing_of_the_earlier_one(smoke_data, tmp_path):
    cfg, data = smoke_data
    out = tmp_path / "out"
    a = with_values(cfg, {"train.epochs": 2, "method.name": "weighted_ce"})
    b = with_values(cfg, {"train.epochs": 2, "method.name": "ce", "seed": 2})
    train.fit(a, data, out, progress=False)
    assert (out / "best-best_test.pt").is_file()  # weighted CE finds abnormal cycles (Se > 5)
    with pytest.raises(ValueError, match="belongs to another configuration.*delete"):
        train.fit(b, data, out, progress=False)
    (out / "last.pt").unlink()  # as the message used to advise (for the checkpoint alone)
    train.fit(b, data, out, progress=False)
    train.fit(b, data, tmp_path / "alone", progress=False)  # the same run in an empty folder
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in (tmp_path / "alone").iterdir())
    for path in out.glob("*.pt"):
        assert torch.load(path, weights_only=False)["config"]["seed"] == 2, path.name


# --- 4: non-finite audio, features and losses ------------------------------------------------


def test_nan_samples_in_a_float_wav_are_an_error_naming_it(make_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path / "cache"))
    root = make_data({"101_1b1_Al_sc_Meditron": "train", "102_1b1_Ar_sc_Meditron": "test"},
                     wav={"101_1b1_Al_sc_Meditron": {"subtype": "FLOAT"}})
    wav = root / "ICBHI_final_database" / "101_1b1_Al_sc_Meditron.wav"
    samples, rate = sf.read(str(wav))
    samples[100] = np.nan
    sf.write(str(wav), samples, rate, subtype="FLOAT")
    with pytest.raises(DataError, match=r"101_1b1_Al_sc_Meditron\.wav: 1 audio samples are not"):
        load_data(with_values(profile("smoke"), {"data.root": str(root),
                                                 "data.val_fraction": 0.0}).data,
                  progress=False)
    assert not list((tmp_path / "cache").glob("*.npy"))


@pytest.mark.parametrize("value", [np.nan, 1e30])
def test_an_altered_feature_cache_is_rebuilt(smoke_data, tmp_path, value):
    cfg, data = smoke_data
    built = features.cycle_features(data.cycles, cfg.data.features, cache_dir=tmp_path,
                                    progress=False)
    path, expected = Path(built.filename), np.array(built)
    del built
    with open(path, "r+b") as f:  # one value of the cached array, changed in place
        f.seek(path.stat().st_size - 4)
        f.write(np.float32(value).tobytes())
    again = features.cycle_features(data.cycles, cfg.data.features, cache_dir=tmp_path,
                                    progress=False)
    assert np.isfinite(again).all() and np.array_equal(again, expected)


class _Diverges(Method):
    def loss(self, net, x, y, g):
        return {"cross_entropy": F.cross_entropy(net.logits(x), y) * math.inf}


def test_a_run_whose_loss_is_not_finite_stops_and_is_never_cached(smoke_data, tmp_path):
    cfg, data = smoke_data
    register_method("diverges", label="diverges")(_Diverges)
    try:
        cfg = with_values(cfg, {"method.name": "diverges"})
        with pytest.raises(ValueError, match="epoch 1: the training loss is nan, not a finite"):
            experiment.run(cfg, data=data, root=tmp_path, progress=False)
    finally:
        METHODS.remove("diverges")
    run_dir = next(tmp_path.iterdir())
    assert not (run_dir / "summary.json").exists() and not (run_dir / "last.pt").exists()


# --- 5, 6: nonsense values are one line naming the key ----------------------------------------


@pytest.mark.parametrize("override, message", [
    ("max_steps_per_epoch=-1", "max_steps_per_epoch must be >= 0"),
    ("min_lr=-5", "min_lr must be >= 0"), ("min_lr=1", "min_lr 1 is above lr"),
    ("train.precision=bogus", "precision must be one of"),
    ("train.precision=fp16", "precision must be one of"),
    ("profile=paper", "do not override it"), ("lr=inf", "lr must be a finite number"),
    ("method.alpha=inf", "alpha must be a finite number"),
    ("data.features.norm_std=0", "norm_std must be > 0"),
    ("threads=-1", "threads must be >= 0"), ("model.num_heads=0", "num_heads must be >= 1"),
    ("model.embed_dim=0", "embed_dim must be >= 1"), ("model.stride=0", "stride must be >= 1"),
    ("model.patch_size=0", "patch_size must be >= 1"),
    ("data.features.frame_shift_ms=0", "frame_shift_ms must be > 0"),
    ("data.features.frame_length_ms=0", "frame_length_ms must be > 0"),
    ("train.device=tpu", "device must be one of"), ("seed=-1", "seed must be in"),
    ("seed=99999999999999", "seed must be in"), ("val_seed=-3", "val_seed must be in"),
])
def test_nonsense_values_are_refused_at_construction(override, message, capsys):
    with pytest.raises(ValueError, match=message):
        with_overrides(profile("smoke"), [override])
    assert message.split()[0] in one_line_error(capsys, ["train", "--profile", "smoke",
                                                         override])


def test_a_model_with_fewer_classes_than_the_labels_is_one_line(synth_root, capsys,
                                                                monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path / "cache"))
    err = one_line_error(capsys, ["train", "--profile", "smoke", "--data", str(synth_root),
                                  "--out", str(tmp_path / "o"), "--quiet", "model.n_classes=2"])
    assert "model.n_classes is 2, but the data's labels run from 0 to 3" in err


def test_imagenet_weights_offline_are_one_line(synth_root, tmp_path, capsys, monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path / "cache"))
    err = one_line_error(capsys, ["train", "--profile", "smoke", "--data", str(synth_root),
                                  "--out", str(tmp_path / "o"), "--quiet",
                                  "model.weights=imagenet"])
    assert "no network: pass a local DeiT checkpoint file (model.imagenet_checkpoint=FILE)" in err


# --- 7, 8: damaged checkpoints and bad WAVs are one line -------------------------------------


@pytest.mark.parametrize("content", [b"", b"garbage", "truncated", "other kind"])
def test_a_damaged_resume_checkpoint_is_one_line_naming_it(smoke_data, tmp_path, content):
    cfg, data = smoke_data
    out = tmp_path / "run"
    train.fit(cfg, data, out, progress=False, stop_after_epoch=1)
    last = out / "last.pt"
    if content == "truncated":
        last.write_bytes(last.read_bytes()[:1000])
    elif content == "other kind":
        torch.save({"hello": 1}, last)
    else:
        last.write_bytes(content)
    with pytest.raises(ValueError, match=r"last\.pt: not a (readable checkpoint|patchmix res)"):
        train.fit(cfg, data, out, progress=False)


@pytest.fixture(scope="module")
def smoke_checkpoint(smoke_data, tmp_path_factory):
    cfg, data = smoke_data
    out = tmp_path_factory.mktemp("trained")
    train.fit(with_values(cfg, {"train.epochs": 1}), data, out, progress=False)
    return out / "final.pt"


@pytest.mark.parametrize("kind, message", [
    ("not a wav", "unreadable audio file"), ("empty", "unreadable audio file"),
    ("header only", "truncated WAV: the header declares"), ("truncated", "truncated WAV")])
def test_predict_with_annotations_checks_the_wav(smoke_checkpoint, tmp_path, capsys, kind,
                                                 message):
    wav = tmp_path / "x.wav"
    write_wav(wav, seconds=3.0, rate=4000)
    full = wav.read_bytes()
    wav.write_bytes({"not a wav": b"RIFF but not really a wav file at all", "empty": b"",
                     "header only": full[:44], "truncated": full[:len(full) // 2]}[kind])
    notes = tmp_path / "x.txt"
    notes.write_text("0.1\t1.0\t0\t0\n")
    err = one_line_error(capsys, ["predict", str(smoke_checkpoint), str(wav),
                                  "--annotations", str(notes)])
    assert "x.wav" in err
    assert any(m in err for m in message.split("|"))


def test_predict_with_an_empty_annotation_file_is_one_line(smoke_checkpoint, tmp_path, capsys):
    wav = tmp_path / "x.wav"
    write_wav(wav, seconds=3.0, rate=4000)
    notes = tmp_path / "x.txt"
    notes.write_text("")
    err = one_line_error(capsys, ["predict", str(smoke_checkpoint), str(wav),
                                  "--annotations", str(notes)])
    assert "x.txt: no cycle annotated" in err


def test_a_split_with_no_test_recording_is_refused_before_training(make_data, tmp_path,
                                                                   capsys):
    """Every score would be NaN and the run cached as finished."""
    root = make_data({"101_1b1_Al_sc_Meditron": "train", "102_1b1_Ar_sc_Meditron": "train"})
    cfg = with_values(profile("smoke"), {"data.root": str(root), "data.val_fraction": 0.0})
    with pytest.raises(DataError, match="no test cycle"):
        train.fit(cfg, load_data(cfg.data, progress=False), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "summary.json").exists()
    err = one_line_error(capsys, ["train", "--profile", "smoke", "--out", str(tmp_path / "cli"),
                                  f"data.root={root}", "data.val_fraction=0"])
    assert "no test cycle" in err


# --- 9: a full disk is one clear error, and no temporary is left ----------------------------


def test_a_full_disk_says_how_much_is_needed_before_writing(smoke_data, tmp_path, monkeypatch,
                                                            capsys):
    cfg, data = smoke_data
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(atomic.shutil, "disk_usage",
                        lambda path: usage._replace(free=1000))
    with pytest.raises(OSError, match="no space left on device for the features of 160 cycles: "
                                      "needs 66.4 MB, 1.0 kB free"):
        features.cycle_features(data.cycles, cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(OSError, match=r"no space left on device for (best-val|last)\.pt: needs"):
        train.fit(cfg, data, tmp_path / "run", progress=False)
    assert not list((tmp_path / "run").glob("*.tmp")) and not list((tmp_path / "run").glob("*.pt"))
    err = one_line_error(capsys, ["data", "features", str(data.root), "--cache",
                                  str(tmp_path / "c2")])
    assert "no space left on device for the features" in err and "Errno" not in err


def test_a_disk_that_fills_during_a_checkpoint_write_says_so(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    calls = []

    def filling(path):  # room before the write, none after it failed
        calls.append(path)
        return usage._replace(free=10**12 if len(calls) == 1 else 0)

    def cryptic(obj, f):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64")

    monkeypatch.setattr(atomic.shutil, "disk_usage", filling)
    monkeypatch.setattr(train.torch, "save", cryptic)
    with pytest.raises(OSError, match="no space left on device for best-val.pt"):
        train._atomic_save({"w": torch.zeros(10)}, tmp_path / "best-val.pt")
    assert list(tmp_path.iterdir()) == []


def test_the_feature_cache_is_reserved_on_disk_before_it_is_filled(smoke_data, tmp_path,
                                                                   monkeypatch):
    _, data = smoke_data

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "posix_fallocate", full)
    with pytest.raises(OSError, match="no space left on device for the features"):
        features.cycle_features(data.cycles, cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


# --- 10: the notebook runner -----------------------------------------------------------------


def test_the_notebook_runner_refuses_bad_seeds_and_unwritable_folders(monkeypatch, capsys):
    from patchmix.companion import notebooks

    with pytest.raises(SystemExit) as exit_:
        notebooks.main(["--seeds", "-1"])
    assert exit_.value.code == 2 and "must be 0 or more" in capsys.readouterr().err

    def read_only(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert notebooks.main(["--only", "01_data_exploration", "--no-html"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Permission denied" in err and "Traceback" not in err


# --- 11, 12: killed processes and transient errors -------------------------------------------


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_feature_workers_die_with_their_parent_and_no_temporary_stays(synth_root, tmp_path, sig):
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "patchmix", "data", "features", str(synth_root),
               "--cache", str(cache), "--workers", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(workers := _children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(workers) >= 2, "the workers did not start"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    time.sleep(0.5)
    assert [w for w in workers if Path(f"/proc/{w}").exists()
            and "zombie" not in Path(f"/proc/{w}/status").read_text()] == []
    if sig == signal.SIGTERM:  # the parent cleaned up after itself and said so
        assert proc.returncode == 143 and b"patchmix: terminated" in proc.stderr.read()
        assert not list(cache.glob(".*.tmp"))
    # whatever a SIGKILL left is removed by the next run, which builds the cache
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    assert not list(cache.glob(".*.tmp")) and len(list(cache.glob("*.npy"))) == 1


def test_stale_temporaries_of_killed_runs_are_removed(smoke_data, tmp_path):
    cfg, data = smoke_data
    out = tmp_path / "run"
    out.mkdir()
    stale = out / f".last.pt.{2**22 + 17}.{'0' * 32}.tmp"
    stale.write_bytes(b"x" * 1000)
    train.fit(cfg, data, out, progress=False)
    assert not stale.exists()


def test_a_transient_error_opening_the_feature_cache_keeps_it(smoke_data, monkeypatch):
    cfg, data = smoke_data
    path = Path(data.features.filename)

    def no_memory(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(features.np, "load", no_memory)
    with pytest.raises(OSError, match="Cannot allocate memory"):
        features.cycle_features(data.cycles, cfg.data.features, progress=False)
    assert path.is_file()


# --- 13-16: the command line's edges ------------------------------------------------------------


def test_data_check_reports_a_cycle_too_short_to_cut(make_data, capsys):
    root = make_data({"101_1b1_Al_sc_Meditron": "train"},
                     annotations={"101_1b1_Al_sc_Meditron": "0.1\t1.0\t0\t0\n"
                                                           "1.00001\t1.00004\t1\t0\n"})
    assert main(["data", "check", str(root), "--json"]) == 0
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [p["kind"] for p in problems] == ["cycle_too_short"]
    assert problems[0]["file"].endswith(".txt:2") and problems[0]["action"] == "skipped"


def test_evaluate_says_where_its_data_comes_from(make_data, smoke_checkpoint, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "else $ICBHI_ROOT" in " ".join(capsys.readouterr().out.split())
    root = make_data({"101_1b1_Al_sc_Meditron": "train"}, split_name="elsewhere.txt")
    err = one_line_error(capsys, ["evaluate", str(smoke_checkpoint), "--data", str(root)])
    assert "no split file" in err and "split_file=" not in err


def test_several_processes_are_a_different_run(smoke_data):
    cfg, data = smoke_data
    assert experiment.run_key(cfg, data, 2) != experiment.run_key(cfg, data) == (
        experiment.run_key(cfg, data, 1))


def test_two_synth_runs_into_one_folder_cannot_mix(tmp_path, capsys):
    from patchmix.data.synth import make_synthetic_icbhi

    out = tmp_path / "synth"
    with exclusive(out, "a test"):
        with pytest.raises(FolderBusy):
            make_synthetic_icbhi(out, 2, seed=1)
        one_line_error(capsys, ["synth", str(out), "--recordings", "2", "--quiet"])
    make_synthetic_icbhi(out, 2, seed=1)  # once free, it writes (next to the lock file)
    assert (out / "synthetic.json").is_file()


def test_an_empty_home_is_not_a_cache_at_the_root(monkeypatch):
    for env in ("PATCHMIX_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("HOME", "")
    with pytest.raises(ValueError, match="HOME is empty; set PATCHMIX_CACHE"):
        features.default_cache_dir()
    monkeypatch.setenv("HOME", "/somewhere")
    assert features.default_cache_dir() == Path("/somewhere/.cache/patchmix")


def test_data_check_into_a_closed_pipe_is_not_an_error(synth_root):
    done = subprocess.run(f"'{sys.executable}' -m patchmix data check '{synth_root}' --json "
                          "| head -1", shell=True, capture_output=True, text=True,
                          executable="/bin/bash", timeout=120,
                          env={**os.environ, "SHELLOPTS": ""})
    assert done.stdout == "{\n" and done.stderr == ""
    piped = subprocess.run(["/bin/bash", "-o", "pipefail", "-c",
                            f"'{sys.executable}' -m patchmix data check '{synth_root}' --json"
                            " | head -1 > /dev/null"], timeout=120)
    assert piped.returncode == 0
