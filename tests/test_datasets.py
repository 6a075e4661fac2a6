"""Data sets behind one interface: a data set added from a test file is found, read, featurised
and trained on like the built-in ones; the run cache's data identity covers labels and split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import write_wav

from patchmix import experiment
from patchmix.cli import main
from patchmix.config import DataConfig, profile, with_values
from patchmix.datasets import (
    CYCLE_COLUMNS,
    DataError,
    DataSet,
    find_dataset,
    load_data,
    read_cycles,
    register_dataset,
    resolve_root,
    unregister_dataset,
)

# --- a data set from outside the library (the example of docs/adding-a-dataset.md) ----------


def read_wav_folder(root, split_file=None):
    """One WAV per cycle, listed in cycles.csv: file, patient, split, crackle, wheeze."""
    table = pd.read_csv(Path(root) / "cycles.csv")
    wavs = [Path(root, name).resolve() for name in table["file"]]
    return table.assign(recording=table["file"], location="", mode="", device="", cycle=0,
                        start=0.0, end=[sf.info(str(w)).duration for w in wavs],
                        label=table["crackle"] + 2 * table["wheeze"], path=list(map(str, wavs)))


WAV_FOLDER = DataSet("wav_folder", "a folder of cycle WAVs", read_wav_folder,
                     detect=lambda path: (path / "cycles.csv").is_file())


@pytest.fixture
def wav_folder(tmp_path):
    """Register the data set and write a folder of it: 12 patients, 2 cycles each."""
    register_dataset(WAV_FOLDER)
    rows = []
    for i in range(24):
        name = f"cycle_{i:02d}.wav"
        write_wav(tmp_path / name, seconds=1.5, rate=8000, seed=i)
        patient = i // 2
        rows.append({"file": name, "patient": patient, "split": "test" if patient >= 8 else
                     "train", "crackle": i % 2, "wheeze": (i // 2) % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "cycles.csv", index=False)
    yield tmp_path
    unregister_dataset("wav_folder")


def test_a_data_set_registered_from_a_test_file_is_read_and_trained_on(
        wav_folder, tmp_path_factory, monkeypatch, capsys):
    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path_factory.mktemp("cache")))
    assert find_dataset(wav_folder) is WAV_FOLDER
    data = load_data(DataConfig(root=str(wav_folder), val_fraction=0.25), progress=False)
    assert data.dataset is WAV_FOLDER and not data.synthetic
    assert data.features.shape == (24, 798, 128) and np.isfinite(data.features).all()
    assert set(data.cycles["split"]) == {"train", "val", "test"}
    assert data.describe() == f"a folder of cycle WAVs (folder {wav_folder.name})"
    cfg = with_values(profile("smoke"), {"data.root": str(wav_folder), "train.epochs": 1,
                                         "method.name": "ce"})
    summary = experiment.run(cfg, data=data, root=tmp_path_factory.mktemp("runs"),
                             progress=False)
    assert summary["finished"] and {"last", "val"} <= set(summary["protocols"])
    # the command line's data check reports it with the keys every data set has
    assert main(["data", "check", str(wav_folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"data: {wav_folder}  [recordings on disk]"
    assert [line.split()[:3] for line in lines[4:6]] == [["train", "16", "8"], ["test", "8", "4"]]
    assert main(["data", "check", str(wav_folder), "--json"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    assert report["total_cycles"] == 24 and set(report["recordings"]) == {"train", "test"}
    assert report["cycles"]["train"]["both"] + report["cycles"]["test"]["both"] == 6


def test_built_in_data_sets_are_found_by_their_folder(tmp_path, make_data):
    from patchmix.synth import make_synthetic_icbhi

    synthetic = make_synthetic_icbhi(tmp_path / "s", 4, seed=1, progress=False).root
    assert find_dataset(synthetic).name == "synthetic"
    assert find_dataset(Path(synthetic) / "ICBHI_final_database").name == "synthetic"
    real = make_data({"101_1b1_Al_sc_Meditron": "train"})
    assert find_dataset(real).name == "icbhi"
    with pytest.raises(DataError, match="no such data folder"):
        find_dataset(tmp_path / "missing")
    assert resolve_root(DataConfig(root="somewhere")) == "somewhere"


def test_a_reader_must_give_the_shared_columns(tmp_path):
    lacking = DataSet("lacking", "no labels", lambda root, split_file=None: pd.DataFrame(
        {c: [] for c in CYCLE_COLUMNS if c != "label"}), detect=lambda path: True)
    register_dataset(lacking)
    try:
        with pytest.raises(ValueError, match=r"lacks columns \['label'\]"):
            read_cycles(tmp_path)
        with pytest.raises(ValueError, match="already registered"):
            register_dataset(lacking)
    finally:
        unregister_dataset("lacking")


def test_the_data_identity_covers_labels_and_split(smoke_data):
    cfg, data = smoke_data
    key = experiment.run_key(cfg, data)
    relabelled = data.cycles.copy()
    relabelled.loc[0, "label"] = (relabelled.loc[0, "label"] + 1) % 4
    resplit = data.cycles.copy()
    resplit.loc[resplit["split"] == "test", "split"] = "train"
    for cycles in (relabelled, resplit):
        other = type(data)(cycles, data.features, data.root, data.dataset)
        assert experiment.run_key(cfg, other) != key
    assert experiment.run_key(cfg, type(data)(data.cycles.copy(), data.features, data.root,
                                              data.dataset)) == key
