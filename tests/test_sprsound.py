"""The SPRSound reader: the real subset's counts, both folder layouts, every bad-input case,
the recipe's features on its 8 kHz recordings, and SPRSound's scores."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_wav

from patchmix.cli import main
from patchmix.data.dataset import recognise
from patchmix.data.errors import DataError
from patchmix.data.sprsound import (
    CYCLE_COLUMNS,
    EVENT_TO_CLASS,
    EVENT_TYPES,
    RECORD_LABELS,
    read_sprsound,
    summarize,
)
from patchmix.engine.metrics import icbhi_scores, patient_bootstrap_ci, sprsound_scores

# sprsound-mini's README, per part: recordings, patients, events by type, record labels
README = {
    "train": (50, 41, dict(N=137, FC=26, CC=6, W=14, R=3, S=4, WC=7), (28, 9, 6, 4, 3)),
    "test_intra": (15, 15, dict(N=19, FC=4, CC=1, W=2, R=3, S=2, WC=1), (7, 3, 2, 2, 1)),
    "test_inter": (15, 10, dict(N=43, FC=1, CC=1, W=14, R=0, S=0, WC=1), (7, 4, 2, 1, 1)),
}
ABBREVIATION = {"N": "Normal", "FC": "Fine Crackle", "CC": "Coarse Crackle", "W": "Wheeze",
                "R": "Rhonchi", "S": "Stridor", "WC": "Wheeze+Crackle"}


def older_layout(mini: Path, dest: Path) -> Path:
    """The subset laid out as older copies of the release are (train_wav/, test_json/, …),
    with links to the real files and two folders that are not part of the release."""
    src = mini / "BioCAS2022"
    names = {"train2022_wav": "train_wav", "train2022_json": "train_json",
             "test2022_wav": "test_wav", "test2022_json/intra_test_json":
             "test_json/intra_test_json", "test2022_json/inter_test_json":
             "test_json/inter_test_json"}
    for new, old in names.items():
        (dest / old).mkdir(parents=True)
        for f in sorted((src / new).iterdir()):
            (dest / old / f.name).symlink_to(f)
    for extra in ("example", "test_clip"):
        (dest / extra).mkdir()
        (dest / extra / "a.wav").write_bytes(b"")
    (dest / "README.md").write_text("SPRSound\n")
    return dest


def test_the_subset_reads_as_its_readme_counts(sprsound_mini):
    df = read_sprsound(sprsound_mini)
    assert list(df.columns) == list(CYCLE_COLUMNS)
    report = summarize(df)
    for part, (recs, patients, events, records) in README.items():
        assert report["recordings"][part] == recs
        assert report["patients"][part] == patients
        assert report["events"][part] == {ABBREVIATION[k]: n for k, n in events.items()}
        assert list(report["record_labels"][part].values()) == list(records)
        # the four shared classes follow the CAS/DAS grouping
        shared = report["cycles"][part]
        assert shared["normal"] == events["N"] and shared["both"] == events["WC"]
        assert shared["crackle"] == events["FC"] + events["CC"]
        assert shared["wheeze"] == events["W"] + events["R"] + events["S"]
    assert report["total_cycles"] == 197 + 32 + 60 == len(df)
    assert report["layout"] == "BioCAS2022" and report["ignored_folders"] == []
    # Poor Quality records are reported, not trained on
    pq = [p for p in report["problems"] if p["kind"] == "poor_quality"]
    assert len(pq) == 3 + 1 + 1 and all(p["action"] == "skipped" for p in pq)
    assert set(df["record_label"]) <= set(RECORD_LABELS) - {"Poor Quality"}
    # inter-test patients never appear in train; event times are in seconds, sorted
    assert report["patients_also_in_train"]["test_inter"] == 0
    assert df.groupby("recording")["start"].apply(lambda s: s.is_monotonic_increasing).all()
    assert (df["end"] > df["start"]).all() and set(df["sample_rate"]) == {8000}
    assert df["label"].tolist() == [EVENT_TO_CLASS[t] for t in df["event_type"]]
    assert df["label7"].tolist() == [EVENT_TYPES.index(t) for t in df["event_type"]]
    assert recognise(sprsound_mini).dataset.name == "sprsound"


def test_the_older_layout_reads_alike_and_extra_folders_are_reported(sprsound_mini, tmp_path):
    new = read_sprsound(sprsound_mini / "BioCAS2022")
    old = read_sprsound(older_layout(sprsound_mini, tmp_path / "SPRSound"))
    same = [c for c in CYCLE_COLUMNS if c not in ("path", "annotation")]
    pd.testing.assert_frame_equal(new[same], old[same])
    assert old.attrs["layout"] == "older copy"
    assert old.attrs["ignored_folders"] == ["example", "test_clip"]
    kinds = [p["kind"] for p in old.attrs["problems"]]
    assert kinds.count("not_in_release") == 2 and old.attrs["ignored_files"] == []
    # the parent of a repository's SPRSound/ folder is found too
    assert len(read_sprsound(tmp_path)) == len(new)


def test_data_check_prints_the_counts(sprsound_mini, capsys):
    assert main(["data", "check", str(sprsound_mini), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recordings"] == {"train": 50, "test_intra": 15, "test_inter": 15}
    assert report["total_cycles"] == 289
    assert set(report["events"]["train"]) == set(EVENT_TYPES)
    assert main(["data", "check", str(sprsound_mini)]) == 0
    text = capsys.readouterr().out
    assert "test_intra" in text and "Wheeze+Crackle" in text and "Poor Quality" in text


def test_features_follow_the_recipe(sprsound_mini, tmp_path, monkeypatch):
    from patchmix.config import DataConfig
    from patchmix.data.audio import recording_cycles
    from patchmix.data.features import fbank
    from patchmix.data.loading import load_data

    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path / "cache"))
    data = load_data(DataConfig(root=str(sprsound_mini), val_fraction=0.2), progress=False)
    assert data.features.shape == (289, 798, 128) and np.isfinite(data.features).all()
    assert set(data.cycles["split"]) == {"train", "val", "test_intra", "test_inter"}
    # one recording's events by hand: whole recording at 16 kHz, cut, padded, fbank
    first = data.cycles.index[data.cycles["recording"] == data.cycles["recording"].iloc[0]]
    rows = data.cycles.loc[first]
    waves = recording_cycles(rows["path"].iloc[0], rows["start"].tolist(), rows["end"].tolist())
    np.testing.assert_allclose(data.features[first], fbank(waves).numpy(), rtol=0, atol=1e-5)
    assert data.describe() == "SPRSound 2022 (folder sprsound-mini)"


# --- hand-made folders: every bad-input case ------------------------------------------------

NAME = "41067823_6.1_0_p1_{}"


def release(tmp_path: Path, train: dict[str, dict | str | None], intra: dict | None = None,
            inter: dict | None = None, wav_seconds: float = 4.0) -> Path:
    """A BioCAS2022-layout folder: {recording: annotation (a dict, raw text, or None for a WAV
    without annotation)} per part."""
    top = tmp_path / "BioCAS2022"
    for part, wav_dir, json_dir in (
            (train, "train2022_wav", "train2022_json"),
            (intra or {}, "test2022_wav", "test2022_json/intra_test_json"),
            (inter or {}, "test2022_wav", "test2022_json/inter_test_json")):
        (top / wav_dir).mkdir(parents=True, exist_ok=True)
        (top / json_dir).mkdir(parents=True, exist_ok=True)
        for i, (name, note) in enumerate(part.items()):
            write_wav(top / wav_dir / f"{name}.wav", seconds=wav_seconds, rate=8000, seed=i)
            if note is not None:
                text = note if isinstance(note, str) else json.dumps(note)
                (top / json_dir / f"{name}.json").write_text(text)
    return tmp_path


def note(*events: tuple, record: str = "CAS") -> dict:
    return {"record_annotation": record,
            "event_annotation": [{"start": s, "end": e, "type": t} for s, e, t in events]}


def test_events_are_sorted_and_strings_or_numbers_are_milliseconds(tmp_path):
    root = release(tmp_path, {NAME.format(1): note(
        ("2500", "3100", "Wheeze"), (100, 900.5, "Normal"), ("900", "1700", "Fine Crackle"))},
        inter={NAME.format(2).replace("41067823", "5"): note(("0", "800", "Wheeze+Crackle"))})
    df = read_sprsound(root)
    train = df[df["split"] == "train"]
    assert train["start"].tolist() == [0.1, 0.9, 2.5] and train["end"].tolist() == [
        0.9005, 1.7, 3.1]
    assert train["label"].tolist() == [0, 1, 2] and train["cycle"].tolist() == [0, 1, 2]
    row = train.iloc[0]
    assert (row.patient, row.age, row.sex, row.location, row.rec_number, row.device) == (
        41067823, 6.1, "M", "p1", 1, "Yunting II")
    assert df[df["split"] == "test_inter"]["label"].tolist() == [3]
    assert df.attrs["problems"] == []


def test_skips_are_counted_and_reported(tmp_path):
    root = release(tmp_path, {
        NAME.format(1): note(("1000", "900", "Normal"), ("5000", "5500", "Wheeze"),
                             ("3500", "4500", "Rhonchi"), ("0", "500", "Stridor")),
        NAME.format(2): note(record="Poor Quality"),
        NAME.format(3): note(record="Normal"),
        NAME.format(4): None,
        "not_a_release_name": note(("0", "100", "Normal")),
    }, intra={NAME.format(5): note(("0", "100", "Normal"))},
        inter={NAME.format(5): note(("0", "100", "Normal"))})
    (root / "BioCAS2022" / "train2022_json" / f"{NAME.format(6)}.json").write_text(
        json.dumps(note(("0", "100", "Normal"))))
    (root / "BioCAS2022" / "example").mkdir()
    df = read_sprsound(root)
    problems = {(p["kind"], p["file"].rstrip("/").split("/")[-1]) for p in df.attrs["problems"]}
    assert problems == {
        ("empty_event", f"{NAME.format(1)}.json event 1"),
        ("event_past_end", f"{NAME.format(1)}.json event 2"),
        ("poor_quality", f"{NAME.format(2)}.json"),
        ("no_events", f"{NAME.format(3)}.json"),
        ("no_annotation", f"{NAME.format(4)}.wav"),
        ("unexpected_name", "not_a_release_name.wav"),
        ("in_both_test_parts", f"{NAME.format(5)}.json"),
        ("no_recording", f"{NAME.format(6)}.json"),
        ("not_in_release", "example"),
    }
    # kept: the Stridor event and the Rhonchi one, whose end past the recording is clamped
    assert df["event_type"].tolist() == ["Stridor", "Rhonchi"]
    assert df.attrs["clamped_cycles"] == 1
    report = summarize(df)
    assert report["recordings"] == {"train": 3} and report["record_labels"]["train"][
        "Poor Quality"] == 1


@pytest.mark.parametrize("text, message", [
    ("{not json", "not a readable JSON annotation"),
    (json.dumps({"event_annotation": []}), "no record_annotation"),
    (json.dumps(note(record="Crackly")), "unknown record label 'Crackly'"),
    (json.dumps(note(("0", "100", "Squawk"))), "event 1 has unknown type 'Squawk'"),
    (json.dumps(note(("0", "1s", "Normal"))), "event 1 end '1s' is not a time in ms"),
    (json.dumps(note(("-5", "100", "Normal"))), "event 1 start '-5' is not a time in ms"),
    (json.dumps({"record_annotation": "Normal", "event_annotation": [{"start": "0"}]}),
     "event 1 lacks start, end or type"),
    (json.dumps(note(("0", "100", ["Normal"]))), r"event 1 has unknown type \['Normal'\]"),
    (json.dumps(note(("0", "100", {"name": "Normal"}))), "event 1 has unknown type {'name'"),
])
def test_unreadable_annotations_are_one_line_errors(tmp_path, capsys, text, message):
    root = release(tmp_path, {NAME.format(1): text})
    with pytest.raises(DataError, match=message):
        read_sprsound(root)
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"{NAME.format(1)}.json" in err


def test_a_recording_in_train_and_test_and_an_event_under_one_sample_are_reported(tmp_path):
    """A recording annotated in train and in a test part would be scored on after being
    learnt from: it is used in neither. An event shorter than one 16 kHz sample (5000 →
    5000.01 ms) has nothing to cut."""
    root = release(tmp_path, {NAME.format(1): note(("0", "500", "Normal")),
                              NAME.format(2): note(("0", "500", "Normal"),
                                                   ("3000", "3000.01", "Wheeze"))},
                   intra={NAME.format(1): note(("0", "500", "Wheeze"))},
                   inter={NAME.format(3).replace("41067823", "5"): note(("0", "800", "Normal"))})
    df = read_sprsound(root)
    problems = {(p["kind"], p["file"].split("/")[-1], p["action"]) for p in df.attrs["problems"]}
    assert problems == {("in_train_and_test", f"{NAME.format(1)}.json", "skipped"),
                        ("event_too_short", f"{NAME.format(2)}.json event 2", "skipped")}
    assert NAME.format(1) not in set(df["recording"])
    assert df.groupby("split").size().to_dict() == {"test_inter": 1, "train": 1}
    assert main(["data", "check", str(root)]) == 0


def test_the_readme_key_name_and_no_split_file(tmp_path):
    doc = {"recording_annotation": "Normal",
           "event_annotation": [{"start": 0, "end": 400, "type": "Normal"}]}
    root = release(tmp_path, {NAME.format(1): doc})
    assert read_sprsound(root)["record_label"].tolist() == ["Normal"]
    with pytest.raises(DataError, match="takes no split file"):
        recognise(root).read(tmp_path / "split.txt")
    with pytest.raises(DataError, match="not an SPRSound release folder"):
        read_sprsound(tmp_path / "BioCAS2022" / "train2022_wav")


def test_a_damaged_wav_names_the_file(tmp_path):
    root = release(tmp_path, {NAME.format(1): note(("0", "100", "Normal"))})
    wav = root / "BioCAS2022" / "train2022_wav" / f"{NAME.format(1)}.wav"
    wav.write_bytes(wav.read_bytes()[:2000])
    with pytest.raises(DataError, match="truncated WAV"):
        read_sprsound(root)


def test_older_copies_hold_both_test_folders_under_test_json(tmp_path):
    root = release(tmp_path, {NAME.format(1): note(("0", "100", "Normal"))},
                   intra={NAME.format(2): note(("0", "100", "Wheeze"))})
    top = root / "BioCAS2022"
    old = tmp_path / "SPRSound"
    old.mkdir()
    for new, name in (("train2022_wav", "train_wav"), ("train2022_json", "train_json"),
                      ("test2022_wav", "test_wav"), ("test2022_json", "test_json")):
        shutil.move(top / new, old / name)
    shutil.rmtree(top)
    df = read_sprsound(tmp_path)
    assert df["split"].tolist() == ["train", "test_intra"]
    assert df.attrs["layout"] == "older copy"


# --- SPRSound's scores ------------------------------------------------------------------------


def test_sprsound_scores_by_hand():
    # 7 classes: 4 normal (3 right), 4 adventitious (2 of them exactly right)
    y_true = [0, 0, 0, 0, 1, 2, 5, 6]
    y_pred = [0, 0, 0, 2, 1, 3, 5, 5]
    s = sprsound_scores(y_true, y_pred)
    sp, se = 75.0, 50.0
    assert (s["sp"], s["se"]) == (sp, se)
    assert s["as"] == (sp + se) / 2 == icbhi_scores(y_true, y_pred, 7)["score"]
    assert math.isclose(s["hs"], 2 * sp * se / (sp + se))
    assert math.isclose(s["score"], (s["as"] + s["hs"]) / 2)
    assert s["per_class_recall"]["Fine Crackle"] == 100.0 and s["n"] == 8
    # binary task: an adventitious event predicted adventitious is a hit
    b = sprsound_scores([0, 0, 1, 1], [0, 1, 1, 1], n_classes=2)
    assert (b["sp"], b["se"], b["hs"]) == (50.0, 100.0, 200 / 3)
    # no hit at all: HS is 0, not NaN
    assert sprsound_scores([0, 1], [1, 0], n_classes=2)["hs"] == 0.0


def test_bootstrap_of_sprsound_scores_brackets_the_point_estimate():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 7, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 7, 300))
    patients = np.arange(300) // 6
    ci = patient_bootstrap_ci(y_true, y_pred, patients, n_classes=7, family="sprsound")
    point = sprsound_scores(y_true, y_pred)
    for key in ("sp", "se", "as", "hs", "score"):
        assert ci[key][0] <= point[key] <= ci[key][1]
    icbhi = patient_bootstrap_ci(y_true, y_pred, patients, n_classes=7)
    assert icbhi["score"] == ci["as"] and "hs" not in icbhi
    with pytest.raises(ValueError, match="unknown score family"):
        patient_bootstrap_ci(y_true, y_pred, patients, n_classes=7, family="f1")


# --- training on SPRSound and scoring across data sets ----------------------------------------


def test_train_on_sprsound_and_score_each_part_then_on_synthetic(sprsound_mini, synth_root,
                                                                tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", "--profile", "smoke", "--method", "weighted_ce", "--data",
                 str(sprsound_mini), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    last = summary["protocols"]["last"]
    assert sum(map(sum, last["confusion"])) == 32 + 60  # scored on both test parts together
    predictions = pd.read_csv(out / "predictions-last.csv")
    assert len(predictions) == 92

    assert main(["evaluate", str(out / "final.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "sprsound" and report["confusion"] == last["confusion"]
    assert list(report["parts"]) == ["test_intra", "test_inter", "all"]
    intra, inter = report["parts"]["test_intra"], report["parts"]["test_inter"]
    assert intra["icbhi"]["n"] == 32 and inter["sprsound"]["n"] == 60
    assert math.isclose(inter["sprsound"]["as"], inter["icbhi"]["score"])
    assert report["parts"]["all"]["icbhi"]["score"] == report["score"]

    # the same SPRSound-trained model scored on another data set, in the four shared classes
    assert main(["evaluate", str(out / "final.pt"), "--data", str(synth_root), "--json"]) == 0
    cross = json.loads(capsys.readouterr().out)
    assert cross["synthetic"] is True and list(cross["parts"]) == ["test"]
    assert list(cross["parts"]["test"]) == ["icbhi"]
    assert main(["evaluate", str(out / "final.pt")]) == 0
    text = capsys.readouterr().out
    assert "SPRSound 2022 (folder sprsound-mini)" in text
    assert "test_inter" in text and "SPRSound Sp" in text and "· HS " in text
