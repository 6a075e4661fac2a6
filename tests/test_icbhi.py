"""The ICBHI reader on hand-made folders: layout, labels, metadata, every bad-input case."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from patchmix.data.dataset import patient_folds, validation_split
from patchmix.data.errors import DataError
from patchmix.data.icbhi import CYCLE_COLUMNS, read_icbhi, summarize

TWO = {"101_1b1_Al_sc_Meditron": "test", "103_2b2_Ar_mc_LittC2SE": "train"}


def kinds(df: pd.DataFrame) -> list[str]:
    return [p["kind"] for p in df.attrs["problems"]]


def test_columns_labels_and_names(make_data):
    root = make_data(TWO, annotations={
        "101_1b1_Al_sc_Meditron": "0.036\t0.579\t0\t0\n0.579\t2.45\t1\t0\n",
        "103_2b2_Ar_mc_LittC2SE": "0.2\t1.0\t0\t1\n1.0\t2.0\t1\t1\n2.0\t2.9\t0\t0\n",
    })
    df = read_icbhi(root)
    assert list(df.columns) == list(CYCLE_COLUMNS)
    assert len(df) == 5
    r = df[df.recording == "103_2b2_Ar_mc_LittC2SE"]
    assert r["label"].tolist() == [2, 3, 0]  # wheeze, both, normal
    assert r["label2"].tolist() == [1, 1, 0]
    assert r["cycle"].tolist() == [0, 1, 2]
    row = r.iloc[0]
    assert (row.patient, row.rec_index, row.location, row["mode"], row.device, row.split) == (
        103, "2b2", "Ar", "mc", "LittC2SE", "train")
    assert (row.sample_rate, row.bits, row.channels, row.duration) == (4000, "16", 1, 3.0)
    assert df[df.recording == "101_1b1_Al_sc_Meditron"]["label"].tolist() == [0, 1]
    assert df.attrs["problems"] == [] and df.attrs["renamed"] == {}
    assert df.attrs["ignored_files"] == ["ICBHI_final_database/filename_format.txt"]
    assert df.attrs["synthetic"] is False


def test_root_may_be_the_recordings_folder(make_data):
    root = make_data(TWO)
    a = read_icbhi(root)
    b = read_icbhi(root / "ICBHI_final_database")  # split file found in the parent
    pd.testing.assert_frame_equal(a.drop(columns="path"), b.drop(columns="path"))


def test_split_file_by_either_name_or_explicitly(make_data, tmp_path):
    root = make_data(TWO, split_name="official_split.txt")
    assert len(read_icbhi(root)) == 4
    other = tmp_path / "my_split.txt"
    shutil.move(root / "official_split.txt", other)
    with pytest.raises(DataError, match="no split file"):
        read_icbhi(root)
    assert read_icbhi(root, split_file=other)["split"].tolist() == ["test"] * 2 + ["train"] * 2
    with pytest.raises(DataError, match="no such split file"):
        read_icbhi(root, split_file=tmp_path / "nope.txt")


def test_diagnosis_and_demographics_missing_values_are_nan(make_data):
    root = make_data(TWO)
    (root / "ICBHI_challenge_diagnosis.txt").write_text("101\tURTI\n")
    (root / "ICBHI_Challenge_demographic_information.txt").write_text(
        "101\t3.0\tF\tNA\t19.0\t99.0\n103\t70.0\n")
    df = read_icbhi(root).drop_duplicates("recording").set_index("patient")
    assert df.loc[101, "diagnosis"] == "URTI" and math.isnan(df.loc[103, "diagnosis"])
    assert df.loc[101, "age"] == 3.0 and df.loc[101, "sex"] == "F"
    assert math.isnan(df.loc[101, "adult_bmi"]) and df.loc[101, "child_height"] == 99.0
    assert df.loc[103, "age"] == 70.0
    assert all(math.isnan(df.loc[103, c]) for c in ("sex", "adult_bmi", "child_weight"))


def test_without_metadata_files_columns_are_nan(make_data):
    df = read_icbhi(make_data(TWO))
    assert df["diagnosis"].isna().all() and df["age"].isna().all()


def test_description_and_stray_files_are_ignored(make_data):
    root = make_data(TWO)
    rec = root / "ICBHI_final_database"
    (rec / "filename_differences.txt").write_text("'101_1b1_Al_sc_AKGC417L'\n")
    (rec / "notes.txt").write_text("hello\n")
    (rec / "README").write_text("x\n")
    df = read_icbhi(root)
    assert len(df) == 4 and df.attrs["problems"] == []
    assert len(df.attrs["ignored_files"]) == 4


def test_old_device_name_is_mapped_to_the_split_name(make_data):
    root = make_data(TWO, stored_as={"101_1b1_Al_sc_Meditron": "101_1b1_Al_sc_AKGC417L"})
    df = read_icbhi(root)
    assert df.attrs["renamed"] == {"101_1b1_Al_sc_AKGC417L": "101_1b1_Al_sc_Meditron"}
    r = df[df.stored_as == "101_1b1_Al_sc_AKGC417L"]
    assert len(r) == 2 and set(r["recording"]) == {"101_1b1_Al_sc_Meditron"}
    assert set(r["device"]) == {"Meditron"} and set(r["split"]) == {"test"}
    assert summarize(df)["renamed"] == 1


def test_copy_under_old_name_beside_the_new_one_is_reported_not_mapped(make_data):
    root = make_data(TWO)
    rec = root / "ICBHI_final_database"
    for ext in (".wav", ".txt"):
        shutil.copy(rec / f"101_1b1_Al_sc_Meditron{ext}", rec / f"101_1b1_Al_sc_AKGC417L{ext}")
    df = read_icbhi(root)
    assert df.attrs["renamed"] == {}
    assert kinds(df) == ["not_in_split"] and len(df) == 4


# ---------------------------------------------------------------- bad input, case by case


def test_unreadable_wav_is_an_error_naming_the_file(make_data):
    root = make_data(TWO)
    (root / "ICBHI_final_database" / "103_2b2_Ar_mc_LittC2SE.wav").write_bytes(b"not a wav")
    with pytest.raises(DataError, match=r"103_2b2_Ar_mc_LittC2SE\.wav: unreadable"):
        read_icbhi(root)


def test_truncated_wav_is_an_error_with_both_sizes(make_data):
    root = make_data(TWO)
    path = root / "ICBHI_final_database" / "103_2b2_Ar_mc_LittC2SE.wav"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"LittC2SE\.wav: truncated WAV.*declares 24000 bytes"):
        read_icbhi(root)


@pytest.mark.parametrize("line", [
    "0.1\t1.2\t0", "0.1\t1.2\t0\t0\t7", "a\t1.2\t0\t0", "0.1\t1.2\t2\t0", "-1\t1.2\t0\t0",
    "0.1\tnan\t0\t0",
])
def test_unparsable_annotation_line_names_file_and_line(make_data, line):
    root = make_data(TWO, annotations={"103_2b2_Ar_mc_LittC2SE": f"0.1\t0.5\t0\t0\n\n{line}\n"})
    with pytest.raises(DataError, match=r"103_2b2_Ar_mc_LittC2SE\.txt:3: cannot parse"):
        read_icbhi(root)


def test_empty_and_out_of_range_cycles_are_skipped_and_reported(make_data):
    root = make_data(TWO, annotations={"103_2b2_Ar_mc_LittC2SE": (
        "0.1\t1.0\t0\t0\n1.0\t1.0\t1\t0\n1.5\t1.2\t0\t0\n2.0\t3.5\t0\t1\n3.0\t4.0\t1\t1\n"
        "3.5\t5.0\t0\t0\n")})
    df = read_icbhi(root)
    r = df[df.recording == "103_2b2_Ar_mc_LittC2SE"]
    assert r["start"].tolist() == [0.1, 2.0]  # the 3 s recording keeps 2.0-3.5 (clamped)
    assert r["cycle"].tolist() == [0, 1]
    assert kinds(df) == ["empty_cycle", "empty_cycle", "cycle_past_end", "cycle_past_end"]
    files = [p["file"] for p in df.attrs["problems"]]
    assert files[0].endswith("103_2b2_Ar_mc_LittC2SE.txt:2")
    assert files[2].endswith(":5")
    assert df.attrs["clamped_cycles"] == 1
    assert all(p["action"] == "skipped" for p in df.attrs["problems"])


def test_missing_annotation_or_recording_is_skipped_and_reported(make_data):
    three = {**TWO, "104_1b1_Ar_sc_Litt3200": "test"}
    root = make_data(three, skip_txt=["101_1b1_Al_sc_Meditron"],
                     skip_wav=["104_1b1_Ar_sc_Litt3200"])
    df = read_icbhi(root)
    assert set(df["recording"]) == {"103_2b2_Ar_mc_LittC2SE"}
    assert sorted(kinds(df)) == ["no_annotation", "no_recording"]
    s = summarize(df)
    assert s["recordings"] == {"train": 1} and len(s["problems"]) == 2


def test_recording_absent_from_split_is_skipped_and_reported(make_data):
    root = make_data(TWO)
    split = root / "ICBHI_challenge_train_test.txt"
    split.write_text("101_1b1_Al_sc_Meditron\ttest\n")
    df = read_icbhi(root)
    assert set(df["recording"]) == {"101_1b1_Al_sc_Meditron"}
    assert kinds(df) == ["not_in_split"]


def test_bad_split_line_is_an_error(make_data):
    root = make_data(TWO, split_extra=["105_1b1_Tc_sc_Meditron\tvalidation"])
    with pytest.raises(DataError, match=r"ICBHI_challenge_train_test\.txt:3: expected"):
        read_icbhi(root)


def test_stereo_and_float_wavs_are_handled(make_data):
    root = make_data(TWO, wav={
        "101_1b1_Al_sc_Meditron": {"channels": 2, "rate": 44100},
        "103_2b2_Ar_mc_LittC2SE": {"subtype": "FLOAT"},
    })
    df = read_icbhi(root)
    assert len(df) == 4
    assert kinds(df) == ["stereo"] and df.attrs["problems"][0]["action"] == "handled"
    recs = df.drop_duplicates("recording").set_index("recording")
    assert recs.loc["103_2b2_Ar_mc_LittC2SE", "bits"] == "float"
    assert recs.loc["101_1b1_Al_sc_Meditron", "channels"] == 2


def test_missing_root_and_folder_without_wavs(tmp_path):
    with pytest.raises(DataError, match="no such data folder"):
        read_icbhi(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no .wav recordings"):
        read_icbhi(tmp_path)


def test_synthetic_marker_is_reported(make_data):
    root = make_data(TWO)
    (root / "synthetic.json").write_text("{}")
    df = read_icbhi(root)
    assert df.attrs["synthetic"] is True and summarize(df)["synthetic"] is True


# ---------------------------------------------------------------- validation split and folds


def _table(n_patients: int = 12, per_patient: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for c in range(per_patient + p % 3):
            rows.append({"patient": 100 + p, "recording": f"{100 + p}_1b1_Al_sc_X",
                         "split": "train" if p < 9 else "test",
                         "label": int(rng.integers(0, 4)), "cycle": c})
    return pd.DataFrame(rows)


def test_validation_split_is_patient_grouped_seeded_and_sized():
    df = _table()
    a = validation_split(df, fraction=0.25, seed=3)
    b = validation_split(df, fraction=0.25, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert (a[df["split"] == "test"]["split"] == "test").all()  # test untouched
    val = set(a[a.split == "val"]["patient"])
    train = set(a[a.split == "train"]["patient"])
    assert val and train and not val & train
    n_train = (df.split == "train").sum()
    assert abs((a.split == "val").sum() - 0.25 * n_train) <= 42  # within about a patient
    seeds = {frozenset(validation_split(df, 0.25, seed=s).query("split == 'val'")["patient"])
             for s in range(6)}
    assert len(seeds) > 1
    with pytest.raises(ValueError, match="fraction"):
        validation_split(df, fraction=1.0)


def test_patient_folds_keep_patients_whole_and_balanced():
    df = _table(n_patients=10)
    folds = patient_folds(df, n_folds=5, seed=1)
    assert folds.between(0, 4).all()
    assert (df.assign(f=folds).groupby("patient")["f"].nunique() == 1).all()
    sizes = folds.value_counts()
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 42
    assert folds.equals(patient_folds(df, n_folds=5, seed=1))
    with pytest.raises(ValueError, match="cannot fill"):
        patient_folds(df, n_folds=11)


# ---------------------------------------------------------------- the full data set's layout


def test_all_920_split_names_with_the_91_renamed_files(icbhi_mini, tmp_path):
    """Every recording of the real split file, the 91 of filename_differences.txt stored under
    their old device name as in the download: nothing is dropped, devices count as in
    docs/data.md."""
    import soundfile as sf

    split_text = (icbhi_mini / "ICBHI_challenge_train_test.txt").read_text()
    old_names = [n.strip().strip("'") for n in (
        icbhi_mini / "ICBHI_final_database" / "filename_differences.txt").read_text().split()]
    old_by_key = {n.rsplit("_", 1)[0]: n for n in old_names}
    rec = tmp_path / "ICBHI_final_database"
    rec.mkdir()
    (tmp_path / "ICBHI_challenge_train_test.txt").write_text(split_text)
    silence = np.zeros(4000, dtype=np.int16)
    for line in split_text.split("\n"):
        if not line.strip():
            continue
        name = line.split()[0]
        disk = old_by_key.get(name.rsplit("_", 1)[0], name)
        sf.write(str(rec / f"{disk}.wav"), silence, 4000, subtype="PCM_16")
        (rec / f"{disk}.txt").write_text("0.1\t0.6\t0\t0\n")
    df = read_icbhi(tmp_path)
    s = summarize(df)
    assert len(old_names) == 91
    assert s["recordings"] == {"train": 539, "test": 381}
    assert s["renamed"] == 91 and s["problems"] == [] and s["split_only"] == 0
    devices = df.drop_duplicates("recording")["device"].value_counts().to_dict()
    assert devices == {"AKGC417L": 646, "Meditron": 127, "LittC2SE": 87, "Litt3200": 60}
    assert s["patients_in_several_splits"] == [156, 218]


@pytest.mark.skipif(not os.environ.get("ICBHI_FULL_ROOT"),
                    reason="set ICBHI_FULL_ROOT to a full ICBHI 2017 download to run")
def test_full_icbhi_counts_equal_paper_section_2():
    s = summarize(read_icbhi(os.environ["ICBHI_FULL_ROOT"]))
    assert s["recordings"] == {"train": 539, "test": 381}
    assert s["cycles"] == {
        "train": {"normal": 2063, "crackle": 1215, "wheeze": 501, "both": 363},
        "test": {"normal": 1579, "crackle": 649, "wheeze": 385, "both": 143},
    }
    assert s["total_cycles"] == 6898 and s["patients_in_several_splits"] == [156, 218]
