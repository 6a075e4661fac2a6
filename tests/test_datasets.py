"""Data sets behind one interface: a data set added from a test file is found, read, featurised
and trained on like the built-in ones; the run cache's data identity covers labels and split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import write_wav

from patchmix.cli import main
from patchmix.config import DataConfig, profile, with_values
from patchmix.data.dataset import (
    CYCLE_COLUMNS,
    DATASETS,
    DataSet,
    find_folder,
    recognise,
    register_dataset,
)
from patchmix.data.errors import DataError
from patchmix.data.loading import load_data
from patchmix.engine import experiment

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
    DATASETS.remove("wav_folder")


def test_a_data_set_registered_from_a_test_file_is_read_and_trained_on(
        wav_folder, tmp_path_factory, monkeypatch, capsys):
    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path_factory.mktemp("cache")))
    assert recognise(wav_folder).dataset is WAV_FOLDER
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


def test_built_in_data_sets_are_found_by_their_folder(tmp_path, make_data, monkeypatch):
    from patchmix.data.synth import make_synthetic_icbhi

    synthetic = make_synthetic_icbhi(tmp_path / "s", 4, seed=1, progress=False).root
    assert recognise(synthetic).dataset.name == "synthetic"
    assert recognise(Path(synthetic) / "ICBHI_final_database").dataset.name == "synthetic"
    real = make_data({"101_1b1_Al_sc_Meditron": "train"})
    assert recognise(real).dataset.name == "icbhi"
    with pytest.raises(DataError, match="no such data folder"):
        recognise(tmp_path / "missing")
    assert find_folder(real).path == Path(real)  # a named folder is that folder
    monkeypatch.setenv("ICBHI_ROOT", str(real))  # no folder named: $ICBHI_ROOT's
    assert find_folder("") == recognise(real)
    monkeypatch.delenv("ICBHI_ROOT")  # neither: the synthetic set make reproduce builds
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="data/synthetic: no such data folder"):
        find_folder("")


def test_a_reader_must_give_the_shared_columns(tmp_path):
    lacking = DataSet("lacking", "no labels", lambda root, split_file=None: pd.DataFrame(
        {c: [] for c in CYCLE_COLUMNS if c != "label"}), detect=lambda path: True)
    register_dataset(lacking)
    try:
        with pytest.raises(ValueError, match=r"lacks columns \['label'\]"):
            recognise(tmp_path).read()
        with pytest.raises(ValueError, match="already registered"):
            register_dataset(lacking)
    finally:
        DATASETS.remove("lacking")


def test_the_data_identity_covers_labels_and_split(smoke_data):
    cfg, data = smoke_data
    key = experiment.run_key(cfg, data)
    relabelled = data.cycles.copy()
    relabelled.loc[0, "label"] = (relabelled.loc[0, "label"] + 1) % 4
    resplit = data.cycles.copy()
    resplit.loc[resplit["split"] == "test", "split"] = "train"
    for cycles in (relabelled, resplit):
        other = type(data)(cycles, data.features, data.folder)
        assert experiment.run_key(cfg, other) != key
    same = type(data)(data.cycles.copy(), data.features, data.folder)
    assert experiment.run_key(cfg, same) == key
