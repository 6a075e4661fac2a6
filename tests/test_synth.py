"""The synthetic ICBHI generator: layout, determinism, formats, split, acoustics, validation."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import ndimage, signal, stats

from patchmix.data.synth import CLASSES, VERSION, SynthSummary, _plan, make_synthetic_icbhi

DB = "ICBHI_final_database"
DESCRIPTIONS = {"filename_format.txt", "filename_differences.txt"}
NAME = re.compile(r"^(\d{3})_(\d[bp]\d)_(Tc|Al|Ar|Pl|Pr|Ll|Lr)_(sc|mc)_"
                  r"(AKGC417L|LittC2SE|Litt3200|Meditron)$")
SEED = 7
N = 30


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    """One set of 30 recordings shared by the read-only tests (about 2-4 s to write)."""
    root = tmp_path_factory.mktemp("synth") / "set"
    return root, make_synthetic_icbhi(root, N, seed=SEED)


def annotations(root: Path) -> dict[str, list[tuple[float, float, int, int]]]:
    """{stored name: [(start, end, crackle, wheeze), ...]} parsed strictly."""
    out = {}
    for txt in sorted((root / DB).glob("*.txt")):
        if txt.name in DESCRIPTIONS:
            continue
        rows = []
        for line in txt.read_text().splitlines():
            fields = line.split("\t")
            assert len(fields) == 4, (txt.name, line)
            assert all(re.fullmatch(r"\d+(\.\d{1,3})?", f) for f in fields[:2]), line
            start, end = float(fields[0]), float(fields[1])
            crackle, wheeze = int(fields[2]), int(fields[3])
            assert end > start >= 0 and crackle in (0, 1) and wheeze in (0, 1), line
            rows.append((start, end, crackle, wheeze))
        out[txt.stem] = rows
    return out


def split_file(root: Path) -> dict[str, str]:
    lines = (root / "ICBHI_challenge_train_test.txt").read_text().splitlines()
    pairs = [line.split("\t") for line in lines]
    assert all(len(p) == 2 and p[1] in ("train", "test") for p in pairs)
    return dict(pairs)


def renamed_map(root: Path) -> dict[str, str]:
    """{stored name: split name} for files stored under an old device suffix."""
    split = split_file(root)
    stems = {p.stem for p in (root / DB).glob("*.wav")}
    return {s: s.rsplit("_", 1)[0] + "_Meditron" for s in stems if s not in split}


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# ----------------------------------------------------------------------------- layout


def test_layout_and_annotations(synth):
    root, summary = synth
    for name in ("ICBHI_challenge_train_test.txt", "ICBHI_challenge_diagnosis.txt",
                 "ICBHI_Challenge_demographic_information.txt", "README.md", "synthetic.json",
                 f"{DB}/filename_format.txt", f"{DB}/filename_differences.txt"):
        assert (root / name).is_file(), name
    wavs = {p.stem for p in (root / DB).glob("*.wav")}
    txts = {p.stem for p in (root / DB).glob("*.txt")} - {Path(d).stem for d in DESCRIPTIONS}
    assert wavs == txts and len(wavs) == N == summary.recordings
    notes = annotations(root)
    for stem, rows in notes.items():
        assert rows, stem
        duration = sf.info(str(root / DB / f"{stem}.wav")).duration
        assert rows[-1][1] <= duration + 1e-3
        for (_, end, _, _), (start, _, _, _) in zip(rows[:-1], rows[1:], strict=True):
            assert start >= end - 1e-9, stem  # cycles in order, never overlapping
    lengths = [e - s for rows in notes.values() for s, e, _, _ in rows]
    assert min(lengths) >= 0.2 and max(lengths) <= 16.2 + 1e-9
    counts = Counter(CLASSES[c + 2 * w] for rows in notes.values() for _, _, c, w in rows)
    assert counts == Counter(summary.cycles)


def test_split_file_and_renamed_recordings(synth):
    root, summary = synth
    split = split_file(root)
    stems = {p.stem for p in (root / DB).glob("*.wav")}
    renamed = renamed_map(root)
    assert renamed, "a set with Meditron recordings has at least one renamed file"
    assert set(summary.renamed) == set(renamed)
    for stored, name in renamed.items():
        assert stored.endswith(("_AKGC417L", "_LittC2SE")) and name in split
        assert name not in stems
    assert {renamed.get(s, s) for s in stems} == set(split)  # every recording listed, once
    assert all(NAME.match(name) for name in split)
    differences = (root / DB / "filename_differences.txt").read_text().splitlines()
    assert sorted(differences) == sorted(f"'{s}'" for s in renamed)
    meditron = [n for n in split if n.endswith("_Meditron")]
    assert len(renamed) <= max(1, len(meditron) // 2)  # a small fraction, as in the brief
    # every other recording: name on disk == name in the split file
    assert stems - set(renamed) <= set(split)


def test_metadata_files(synth):
    root, summary = synth
    patients = {int(n[:3]) for n in split_file(root)}
    diagnosis = dict(line.split("\t") for line in
                     (root / "ICBHI_challenge_diagnosis.txt").read_text().splitlines())
    assert {int(p) for p in diagnosis} == patients == set(range(101, 101 + summary.patients))
    assert set(diagnosis.values()) <= {"COPD", "Healthy", "URTI", "Bronchiectasis",
                                       "Bronchiolitis", "Pneumonia", "LRTI", "Asthma"}
    demo = (root / "ICBHI_Challenge_demographic_information.txt").read_text().splitlines()
    assert len(demo) == len(patients)
    for line in demo:
        pid, age, sex, bmi, weight, height = line.split("\t")
        assert int(pid) in patients and sex in ("M", "F")
        if float(age) >= 18:
            assert weight == height == "NA" and (bmi == "NA" or 14 < float(bmi) < 46)
        else:
            assert bmi == "NA"
            assert (weight == height == "NA") or (2 < float(weight) < 90
                                                  and 45 < float(height) < 185)
    marker = (root / "synthetic.json").read_text()
    assert json.loads(marker) == {"generator": "patchmix.synth", "n_recordings": N,
                                  "seed": SEED, "version": VERSION}
    assert marker == json.dumps(json.loads(marker), sort_keys=True, indent=2) + "\n"
    readme = (root / "README.md").read_text()
    assert "SYNTHETIC" in readme and f"seed {SEED}" in readme and VERSION in readme
    assert "Not modelled" in readme


def test_summary_matches_files(synth):
    root, summary = synth
    split = split_file(root)
    notes = annotations(root)
    renamed = renamed_map(root)
    per_split: dict[str, Counter] = defaultdict(Counter)
    for stem, rows in notes.items():
        for _, _, c, w in rows:
            per_split[split[renamed.get(stem, stem)]][CLASSES[c + 2 * w]] += 1
    for name in ("train", "test"):
        assert per_split[name] == Counter(summary.cycles_per_split[name])
    assert summary.recordings_per_split == dict(Counter(split.values()))
    assert summary.root == root and summary.seed == SEED and summary.seconds > 0


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    a = make_synthetic_icbhi(tmp_path / "a", 8, seed=3)
    b = make_synthetic_icbhi(tmp_path / "b", 8, seed=3)
    bytes_a, bytes_b = all_bytes(tmp_path / "a"), all_bytes(tmp_path / "b")
    assert bytes_a == bytes_b and len(bytes_a) >= 2 * 8 + 7
    assert (a.cycles_per_split, a.devices, a.renamed) == (b.cycles_per_split, b.devices,
                                                          b.renamed)
    make_synthetic_icbhi(tmp_path / "c", 8, seed=4)
    bytes_c = all_bytes(tmp_path / "c")
    wavs = [k for k in bytes_a if k.endswith(".wav")]
    assert bytes_c != bytes_a
    assert not any(bytes_c.get(k) == bytes_a[k] for k in wavs)


# ----------------------------------------------------------------------------- formats


def test_sample_rates_and_subtypes_per_device(synth):
    root, _ = synth
    renamed = renamed_map(root)
    seen: dict[str, set[tuple[int, str]]] = defaultdict(set)
    for wav in (root / DB).glob("*.wav"):
        info = sf.info(str(wav))
        device = renamed.get(wav.stem, wav.stem).rsplit("_", 1)[1]
        assert info.channels == 1 and info.format == "WAV"
        seen[device].add((info.samplerate, info.subtype))
    assert set(seen) == {"AKGC417L", "LittC2SE", "Litt3200", "Meditron"}  # n >= 20
    assert seen["Litt3200"] == {(4000, "PCM_16")}
    for device in ("AKGC417L", "LittC2SE", "Meditron"):
        assert {rate for rate, _ in seen[device]} == {44100}
        assert {sub for _, sub in seen[device]} <= {"PCM_16", "PCM_24"}
    assert {sub for subs in seen.values() for _, sub in subs} == {"PCM_16", "PCM_24"}


def test_no_clipping(synth):
    root, _ = synth
    for wav in (root / DB).glob("*.wav"):
        x, _ = sf.read(str(wav))
        assert 0.1 < np.max(np.abs(x)) < 0.95, wav.name


# ----------------------------------------------------------------------------- patients


def test_split_is_patient_disjoint_with_several_recordings_per_patient(synth):
    root, summary = synth
    split = split_file(root)
    by_patient: dict[str, set[str]] = defaultdict(set)
    for name, part in split.items():
        by_patient[name[:3]].add(part)
    assert all(len(parts) == 1 for parts in by_patient.values())
    per_patient = Counter(name[:3] for name in split)
    assert max(per_patient.values()) >= 3 and sum(v >= 2 for v in per_patient.values()) >= 2
    assert 0.25 <= Counter(split.values())["test"] / len(split) <= 0.55
    for part in ("train", "test"):
        assert all(summary.cycles_per_split[part][c] > 0 for c in CLASSES), part
    # mc recordings of one session share their breathing cycles (recorded at once)
    sessions: dict[str, list[str]] = defaultdict(list)
    for stem in annotations(root):
        pid, idx, _, mode, _ = stem.split("_")
        if mode == "mc":
            sessions[f"{pid}_{idx}"].append(stem)
    notes = annotations(root)
    for stems in sessions.values():
        bounds = {tuple((s, e) for s, e, _, _ in notes[stem]) for stem in stems}
        assert len(bounds) == 1


def test_plan_resembles_icbhi():
    """Plan-level statistics over 600 recordings (no audio rendered: fast)."""
    _, recordings = _plan(600, seed=11)
    labels = Counter(c + 2 * w for r in recordings for _, _, c, w in r.cycles)
    total = sum(labels.values())
    shares = [labels[k] / total for k in range(4)]  # ICBHI: .53 .27 .13 .07
    for share, low, high in zip(shares, (0.45, 0.19, 0.08, 0.035), (0.62, 0.35, 0.2, 0.12),
                                strict=True):
        assert low <= share <= high, shares
    lengths = np.array([e - s for r in recordings for s, e, _, _ in r.cycles])
    assert 2.0 <= np.median(lengths) <= 3.0 and lengths.min() >= 0.2 and lengths.max() <= 16.2
    assert 0 < np.sum(lengths > 8) < 0.01 * lengths.size
    devices = Counter(r.device for r in recordings)
    assert 0.6 <= devices["AKGC417L"] / 600 <= 0.8 and devices.most_common(1)[0][0] == "AKGC417L"
    durations = np.array([r.duration for r in recordings])
    assert np.mean(durations == 20.0) > 0.5 and durations.max() > 30
    renamed = np.mean([r.stored != r.name for r in recordings if r.device == "Meditron"])
    assert 0.55 <= renamed <= 0.85  # ICBHI: 91 of 127


# ----------------------------------------------------------------------------- acoustics


def cycle_features(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cycle: class index, a tonality score and a transient score, measured on the WAVs.

    tonality: the largest ratio, over 100-1000 Hz, of the Welch spectrum (10 Hz bins) to its
    own 310 Hz running median: a narrowband peak stands out, broadband noise does not.
    transient: third-largest ratio of 2 ms energy (above 400 Hz) to its 100 ms running median:
    short explosive events stand out, steady noise and tones do not.
    """
    labels, tonal, transient = [], [], []
    for stem, rows in annotations(root).items():
        x, fs = sf.read(str(root / DB / f"{stem}.wav"))
        high = signal.sosfiltfilt(signal.butter(4, 400, "highpass", fs=fs, output="sos"), x)
        w = max(1, int(0.002 * fs))
        for start, end, crackle, wheeze in rows:
            seg, hseg = x[int(start * fs): int(end * fs)], high[int(start * fs): int(end * fs)]
            f, psd = signal.welch(seg, fs, nperseg=min(seg.size, int(0.1 * fs)))
            band = (f >= 100) & (f <= 1000)
            tonal.append(np.max(psd[band] / signal.medfilt(psd, 31)[band]))
            energy = hseg[: hseg.size // w * w].reshape(-1, w).var(axis=1) + 1e-20
            local = ndimage.median_filter(energy, size=51, mode="nearest")
            transient.append(np.sort(energy / local)[-3])
            labels.append(crackle + 2 * wheeze)
    return np.array(labels), np.array(tonal), np.array(transient)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    return float((positive[:, None] > negative[None, :]).mean())


def test_wheezes_are_narrowband_peaks_and_crackles_are_transients(synth):
    """Measured on the files, averaged over cycles (log scale: recordings differ a lot).

    Since the calibration to real recordings (generator 1.1), normal cycles carry clicks as
    real ones do: crackle cycles hold more and stronger transients, but no longer alone."""
    root, _ = synth
    labels, tonal, transient = cycle_features(root)
    normal, crackle, wheeze, both = (labels == k for k in range(4))
    assert min(normal.sum(), crackle.sum(), wheeze.sum(), both.sum()) >= 2
    tonal, transient = np.log10(tonal), np.log10(transient)
    # wheeze cycles: a narrowband 100-1000 Hz peak well above what normal cycles show
    assert tonal[wheeze].mean() - tonal[normal].mean() > 0.3  # > 2x on average
    assert tonal[both].mean() - tonal[normal].mean() > 0.3
    assert auc(tonal[wheeze | both], tonal[normal]) > 0.7
    assert auc(tonal[crackle], tonal[normal]) < 0.85  # crackles are not tonal
    # crackle cycles: more short high-amplitude transients than normal (and wheeze) cycles
    assert transient[crackle].mean() - transient[normal].mean() > 0.2
    assert auc(transient[crackle], transient[normal]) > 0.55
    assert auc(transient[wheeze], transient[normal]) < 0.85
    # not trivial: clicks in every recording, faint crackles in hard ones
    assert auc(transient[crackle | both], transient[normal]) < 0.9
    # ... and a heavier-tailed amplitude distribution above 400 Hz than normal cycles
    kurt: dict[int, list[float]] = {k: [] for k in range(4)}
    for stem, rows in annotations(root).items():
        x, fs = sf.read(str(root / DB / f"{stem}.wav"))
        high = signal.sosfiltfilt(signal.butter(4, 400, "highpass", fs=fs, output="sos"), x)
        for start, end, c, w in rows:
            kurt[c + 2 * w].append(stats.kurtosis(high[int(start * fs): int(end * fs)]))
    assert np.median(kurt[1]) > 1.2 * np.median(kurt[0]) and np.mean(kurt[1]) > np.mean(kurt[0])


def test_breath_sounds_are_low_frequency_and_heart_sounds_present(synth):
    root, _ = synth
    below_1k, heart_share = [], []
    for wav in sorted((root / DB).glob("*_Al_*.wav")) + sorted((root / DB).glob("*_Pr_*.wav")):
        x, fs = sf.read(str(wav))
        f, psd = signal.welch(x, fs, nperseg=int(0.2 * fs))
        below_1k.append(psd[f < 1000].sum() / psd.sum())
        heart_share.append(psd[(f >= 20) & (f < 150)].sum() / psd.sum())
    assert below_1k and np.median(below_1k) > 0.8  # chest sounds: little above 1 kHz
    assert np.median(heart_share) > 0.05


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("n", [0, -3])
def test_rejects_too_few_recordings(tmp_path, n):
    with pytest.raises(ValueError, match="n_recordings must be at least 1"):
        make_synthetic_icbhi(tmp_path / "s", n)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("kwargs", [{"n_recordings": 2.5}, {"n_recordings": True},
                                    {"n_recordings": 2, "seed": -1}, {"n_recordings": 2,
                                                                      "seed": "0"}])
def test_rejects_bad_argument_types(tmp_path, kwargs):
    with pytest.raises(ValueError, match="must be"):
        make_synthetic_icbhi(tmp_path / "s", **kwargs)


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty and holds no synthetic set"):
        make_synthetic_icbhi(tmp_path / "data", 2)
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["mine.txt"]
    (tmp_path / "data" / "synthetic.json").write_text('{"generator": "someone else"}')
    with pytest.raises(FileExistsError):
        make_synthetic_icbhi(tmp_path / "data", 2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        make_synthetic_icbhi(tmp_path / "file", 2)


def test_overwrites_a_previous_synthetic_set_without_stale_files(tmp_path):
    root = tmp_path / "s"
    make_synthetic_icbhi(root, 5, seed=1)
    summary = make_synthetic_icbhi(root, 2, seed=1)
    assert len(list((root / DB).glob("*.wav"))) == 2 == summary.recordings
    assert json.loads((root / "synthetic.json").read_text())["n_recordings"] == 2
    fresh = make_synthetic_icbhi(tmp_path / "fresh", 2, seed=1)
    assert all_bytes(root).keys() == all_bytes(tmp_path / "fresh").keys()
    assert fresh.cycles == summary.cycles


def test_one_recording_and_progress_bar(tmp_path, capsys):
    summary = make_synthetic_icbhi(tmp_path / "one", 1, seed=5, progress=True)
    assert summary.recordings == 1 and summary.patients == 1
    assert summary.recordings_per_split["train"] == 1
    assert "synthetic recordings" in capsys.readouterr().err
    assert len(split_file(tmp_path / "one")) == 1
