"""Reading an ICBHI 2017 folder into a table of respiratory cycles.

The download (and the synthetic stand-in of `patchmix.data.synth`) looks like::

    ROOT/ICBHI_final_database/101_1b1_Al_sc_Meditron.wav   recordings ...
    ROOT/ICBHI_final_database/101_1b1_Al_sc_Meditron.txt   ... and their cycle annotations
    ROOT/ICBHI_final_database/filename_format.txt           description files (ignored)
    ROOT/ICBHI_challenge_train_test.txt                     the official split
    ROOT/ICBHI_challenge_diagnosis.txt                      diagnosis per patient (optional)
    ROOT/ICBHI_Challenge_demographic_information.txt        demographics (optional)

`read_icbhi(ROOT)` (or the recordings folder itself) returns one row per annotated cycle.

How bad input is handled, case by case (each skip is counted and listed in ``attrs["problems"]``
and in ``patchmix data check``; nothing is dropped silently):

======================================  =================================================
case                                    decision
======================================  =================================================
WAV that cannot be opened               error (names the file): a damaged download
WAV shorter than its header says        error (names the file and both sizes)
annotation line that does not parse     error (file and line number)
cycle with end <= start                 skipped, reported with file and line
cycle starting at/after the recording   skipped, reported with file and line
cycle shorter than one sample at 16 kHz skipped, reported with file and line (nothing to cut)
cycle ending after the recording        kept: the cut is clamped (docs/recipe.md), counted
recording with no annotation file       skipped, reported
annotation file with no recording       skipped, reported
recording absent from the split file    skipped, reported
recording under its old device name     mapped to the split file's name, counted as renamed
stereo WAV                              handled: channels averaged, reported
float WAV                               handled: read as is (bit depth "float"); NaN or
                                        infinite samples are an error when features are made
======================================  =================================================
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from patchmix.config import FeatureConfig
from patchmix.data.audio import cut_samples, wav_info
from patchmix.data.dataset import DataSet, register_dataset, seconds_summary, summarize_cycles
from patchmix.data.errors import DataError

SPLIT_FILE_NAMES: tuple[str, ...] = ("ICBHI_challenge_train_test.txt", "official_split.txt")
DIAGNOSIS_FILE_NAMES: tuple[str, ...] = ("ICBHI_challenge_diagnosis.txt", "patient_diagnosis.csv")
DEMOGRAPHICS_FILE_NAMES: tuple[str, ...] = (
    "ICBHI_Challenge_demographic_information.txt",
    "demographic_info.txt",
)
RECORDINGS_DIR_NAMES: tuple[str, ...] = ("ICBHI_final_database", "audio_and_txt_files")
SYNTHETIC_MARKER = "synthetic.json"

# PID_RecIdx_Loc_Mode_Device, e.g. 101_1b1_Al_sc_Meditron
RECORDING_NAME = re.compile(
    r"^(?P<patient>\d+)_(?P<rec_index>\d+[a-z]\d+)_(?P<location>[A-Z][a-z])"
    r"_(?P<mode>sc|mc)_(?P<device>[A-Za-z0-9]+)$"
)

CYCLE_COLUMNS: tuple[str, ...] = (
    "recording", "patient", "rec_index", "location", "mode", "device", "split", "cycle",
    "start", "end", "crackle", "wheeze", "label", "label2", "path", "stored_as", "sample_rate",
    "bits", "channels", "duration", "diagnosis", "age", "sex", "adult_bmi", "child_weight",
    "child_height",
)


@dataclass(frozen=True)
class Problem:
    """One reported irregularity: what, where, and what the reader did about it."""

    kind: str  # e.g. "no_annotation", "empty_cycle", "stereo"
    file: str  # path relative to the data root
    detail: str  # a human sentence, with the line number where there is one
    action: str  # "skipped" or "handled"


# ----------------------------------------------------------------------------- file discovery


def find_recordings_dir(root: str | os.PathLike) -> Path:
    """The folder holding the WAVs: `root` itself or its known (or only) sub-folder with WAVs."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    if _has_wavs(root):
        return root
    for name in RECORDINGS_DIR_NAMES:
        if _has_wavs(root / name):
            return root / name
    candidates = [d for d in sorted(root.iterdir()) if d.is_dir() and _has_wavs(d)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise DataError(f"{root}: no .wav recordings here or in a sub-folder")
    names = ", ".join(d.name for d in candidates)
    raise DataError(f"{root}: several sub-folders hold recordings ({names}); pass the one to use")


def _has_wavs(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() == ".wav" for p in folder.iterdir())


def _find_file(rec_dir: Path, names: tuple[str, ...]) -> Path | None:
    for folder in (rec_dir, rec_dir.parent):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


# ----------------------------------------------------------------------------- metadata files


def read_split(path: str | os.PathLike) -> dict[str, str]:
    """The split file: ``<recording>\\t<train|test>`` per line → {recording: split}."""
    path = Path(path)
    split: dict[str, str] = {}
    for lineno, line in _lines(path):
        fields = line.split()
        if len(fields) != 2 or fields[1].lower() not in ("train", "test"):
            raise DataError(f"{path}:{lineno}: expected '<recording> <train|test>', got {line!r}")
        split[fields[0].strip("'\"")] = fields[1].lower()
    if not split:
        raise DataError(f"{path}: the split file is empty")
    return split


def read_diagnosis(path: str | os.PathLike) -> dict[int, str]:
    """The diagnosis file: ``<pid>\\t<diagnosis>`` per line (comma-separated accepted)."""
    path = Path(path)
    out: dict[int, str] = {}
    for lineno, line in _lines(path):
        fields = [f.strip() for f in re.split(r"[\t,]", line) if f.strip()]
        if len(fields) < 2 or not fields[0].isdigit():
            raise DataError(f"{path}:{lineno}: expected '<patient id> <diagnosis>', got {line!r}")
        out[int(fields[0])] = fields[1]
    return out


DEMOGRAPHIC_FIELDS: tuple[str, ...] = ("age", "sex", "adult_bmi", "child_weight", "child_height")


def read_demographics(path: str | os.PathLike) -> dict[int, dict[str, Any]]:
    """The demographics file: ``pid age sex adult_BMI child_weight child_height``.

    Missing fields and ``NA`` become NaN; a line with fewer fields is padded with NaN.
    """
    path = Path(path)
    out: dict[int, dict[str, Any]] = {}
    for lineno, line in _lines(path):
        fields = line.split()
        if not fields[0].isdigit():
            raise DataError(f"{path}:{lineno}: expected a patient id first, got {line!r}")
        values = fields[1:] + ["NA"] * (len(DEMOGRAPHIC_FIELDS) - len(fields) + 1)
        row: dict[str, Any] = {}
        for name, value in zip(DEMOGRAPHIC_FIELDS, values, strict=False):  # extra fields: ignored
            if name == "sex":
                row[name] = value if value in ("M", "F") else math.nan
            else:
                row[name] = _float_or_nan(value)
        out[int(fields[0])] = row
    return out


def _float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _lines(path: Path) -> list[tuple[int, str]]:
    """Non-empty, stripped lines with their 1-based numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    return [(i, s.strip()) for i, s in enumerate(text.splitlines(), 1) if s.strip()]


# ----------------------------------------------------------------------------- WAVs and cycles


def read_annotation(path: str | os.PathLike) -> list[tuple[int, float, float, int, int]]:
    """Cycles of one annotation file as (line number, start, end, crackle, wheeze)."""
    path = Path(path)
    cycles = []
    for lineno, line in _lines(path):
        fields = line.split()
        try:
            if len(fields) != 4:
                raise ValueError
            start, end = float(fields[0]), float(fields[1])
            crackle, wheeze = int(fields[2]), int(fields[3])
            if crackle not in (0, 1) or wheeze not in (0, 1):
                raise ValueError
            if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
                raise ValueError
        except ValueError:
            raise DataError(
                f"{path}:{lineno}: cannot parse annotation line {line!r}: expected "
                "'start end crackle wheeze' (seconds >= 0, then 0/1 flags)"
            ) from None
        cycles.append((lineno, start, end, crackle, wheeze))
    return cycles


# ----------------------------------------------------------------------------- the reader


def read_icbhi(root: str | os.PathLike,
               split_file: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read an ICBHI-layout folder into a table with one row per annotated cycle.

    Args:
        root: the folder holding the recordings, or its parent (the download's top folder).
        split_file: the split file; by default ``ICBHI_challenge_train_test.txt`` or
            ``official_split.txt`` next to the recordings or in their parent folder.

    Returns:
        A DataFrame with the columns of `CYCLE_COLUMNS` (``label``: 0 normal, 1 crackle,
        2 wheeze, 3 both; ``label2``: 0 normal, 1 abnormal; ``recording`` is the split file's
        name, ``stored_as`` the name on disk), sorted by recording and cycle. ``attrs`` holds
        ``root``, ``split_file``, ``synthetic``, ``renamed`` ({stored name: split name}),
        ``problems`` (list of dicts, see `Problem`), ``clamped_cycles`` and ``ignored_files``.

    Raises:
        DataError: for input that cannot be read (see the module docstring for each case).
    """
    rec_dir = find_recordings_dir(root)
    data_root = rec_dir.parent if rec_dir.name in RECORDINGS_DIR_NAMES else rec_dir
    if split_file is None:
        split_path = _find_file(rec_dir, SPLIT_FILE_NAMES)
        if split_path is None:
            raise DataError(
                f"{rec_dir}: no split file ({' or '.join(SPLIT_FILE_NAMES)}) here or in the "
                "parent folder: it says which recordings are train and which test"
            )
    else:
        split_path = Path(split_file)
        if not split_path.is_file():
            raise DataError(f"{split_path}: no such split file")
    split = read_split(split_path)
    diag_path = _find_file(rec_dir, DIAGNOSIS_FILE_NAMES)
    demo_path = _find_file(rec_dir, DEMOGRAPHICS_FILE_NAMES)
    diagnosis = read_diagnosis(diag_path) if diag_path else {}
    demographics = read_demographics(demo_path) if demo_path else {}

    def rel(p: Path) -> str:
        return os.path.relpath(p, data_root)

    wavs: dict[str, Path] = {}
    notes: dict[str, Path] = {}
    ignored: list[str] = []
    for p in sorted(rec_dir.iterdir()):
        suffix = p.suffix.lower()
        if suffix == ".wav" and RECORDING_NAME.match(p.stem):
            wavs[p.stem] = p
        elif suffix == ".txt" and RECORDING_NAME.match(p.stem):
            notes[p.stem] = p
        elif p.is_file():
            ignored.append(rel(p))

    problems: list[Problem] = []
    for stem in sorted(set(wavs) - set(notes)):
        problems.append(Problem("no_annotation", rel(wavs[stem]),
                                "recording without an annotation file", "skipped"))
    for stem in sorted(set(notes) - set(wavs)):
        problems.append(Problem("no_recording", rel(notes[stem]),
                                "annotation file without a recording", "skipped"))

    renamed = _map_renamed(sorted(set(wavs) & set(notes)), split)
    rows: list[dict[str, Any]] = []
    clamped = 0
    for stem in sorted(set(wavs) & set(notes)):
        name = renamed.get(stem, stem)
        if name not in split:
            problems.append(Problem("not_in_split", rel(wavs[stem]),
                                    f"recording absent from {split_path.name}", "skipped"))
            continue
        info = wav_info(wavs[stem])
        if info.channels > 1:
            problems.append(Problem("stereo", rel(wavs[stem]),
                                    f"{info.channels} channels averaged to mono", "handled"))
        fields = RECORDING_NAME.match(name).groupdict()  # type: ignore[union-attr]
        patient = int(fields["patient"])
        demo = demographics.get(patient, {})
        index = 0
        for lineno, start, end, crackle, wheeze in read_annotation(notes[stem]):
            where = f"{rel(notes[stem])}:{lineno}"
            if end <= start:
                problems.append(Problem("empty_cycle", where,
                                        f"cycle end {end} <= start {start}", "skipped"))
                continue
            if start >= info.duration:
                problems.append(Problem(
                    "cycle_past_end", where,
                    f"cycle starts at {start} s, the recording lasts {info.duration:.3f} s",
                    "skipped"))
                continue
            if cut_samples(start, end, info.duration) < 1:
                problems.append(Problem(
                    "cycle_too_short", where, f"cycle [{start}, {end}) s holds no sample at "
                    f"{FeatureConfig.sample_rate} Hz", "skipped"))
                continue
            clamped += end > info.duration
            rows.append({
                "recording": name, "patient": patient, "rec_index": fields["rec_index"],
                "location": fields["location"], "mode": fields["mode"],
                "device": fields["device"], "split": split[name], "cycle": index,
                "start": start, "end": end, "crackle": crackle, "wheeze": wheeze,
                "label": crackle + 2 * wheeze, "label2": int(crackle or wheeze),
                "path": str(wavs[stem].resolve()), "stored_as": stem,
                "sample_rate": info.sample_rate,
                "bits": info.bits, "channels": info.channels, "duration": info.duration,
                "diagnosis": diagnosis.get(patient, math.nan),
                **{k: demo.get(k, math.nan) for k in DEMOGRAPHIC_FIELDS},
            })
            index += 1

    df = pd.DataFrame(rows, columns=list(CYCLE_COLUMNS))
    df = df.astype({"patient": "int64", "cycle": "int64", "crackle": "int64", "wheeze": "int64",
                    "label": "int64", "label2": "int64", "sample_rate": "int64",
                    "channels": "int64", "start": "float64", "end": "float64",
                    "duration": "float64", "age": "float64", "adult_bmi": "float64",
                    "child_weight": "float64", "child_height": "float64"})
    df.attrs.update(
        root=str(data_root),
        split_file=str(split_path),
        synthetic=(data_root / SYNTHETIC_MARKER).is_file(),
        renamed=dict(renamed),
        problems=[asdict(p) for p in problems],
        clamped_cycles=int(clamped),
        ignored_files=ignored,
        split_only=sorted(set(split) - {renamed.get(s, s) for s in wavs}),
    )
    return df


def _map_renamed(stems: list[str], split: dict[str, str]) -> dict[str, str]:
    """Stored names that are absent from the split file but match exactly one of its names up to
    the device suffix (the dataset's 91 renamed recordings), mapped to that name."""
    def key(name: str) -> str:
        return name.rsplit("_", 1)[0]

    on_disk = set(stems)
    by_key: dict[str, list[str]] = {}
    for name in split:
        by_key.setdefault(key(name), []).append(name)
    renamed = {}
    for stem in stems:
        if stem in split:
            continue
        candidates = [n for n in by_key.get(key(stem), []) if n not in on_disk]
        if len(candidates) == 1:
            renamed[stem] = candidates[0]
    # two stored copies mapped onto one split name: keep neither mapping (reported as absent)
    counts = Counter(renamed.values())
    return {s: n for s, n in renamed.items() if counts[n] == 1}


# ----------------------------------------------------------------------------- summaries


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Counts `patchmix data check` reports: the keys every data set reports
    (`patchmix.data.dataset.summarize_cycles`), then devices, sample rates, bit depths, patients in
    several splits, durations, renamed files, clamped cycles and ignored files."""
    report = summarize_cycles(df)
    splits = list(report["recordings"])
    recs = df.drop_duplicates("recording")
    attrs = df.attrs

    def per_split(frame: pd.DataFrame, column: str) -> dict[str, dict[str, int]]:
        return {s: {str(k): int(v) for k, v in sorted(
            frame[frame["split"] == s][column].value_counts().items())} for s in splits}

    patients = [set(recs[recs["split"] == s]["patient"]) for s in splits]
    shared = set.intersection(*patients) if len(patients) > 1 else set()
    durations = df["end"].clip(upper=df["duration"]) - df["start"]
    return {
        **report,
        "split_file": attrs.get("split_file"),
        "patients_in_several_splits": sorted(int(p) for p in shared),
        "devices": per_split(recs, "device"),
        "sample_rates": per_split(recs, "sample_rate"),
        "bit_depths": per_split(recs, "bits"),
        "cycle_seconds": seconds_summary(durations),
        "renamed": len(attrs.get("renamed", {})),
        "clamped_cycles": int(attrs.get("clamped_cycles", 0)),
        "ignored_files": list(attrs.get("ignored_files", [])),
        "split_only": len(attrs.get("split_only", [])),
    }


# ----------------------------------------------------------------------------- registration


def _is_synthetic(path: Path) -> bool:
    """A folder `patchmix.data.synth` wrote: its marker file at the top, or one level up when
    `path` is the recordings folder."""
    top = path.parent if path.name in RECORDINGS_DIR_NAMES else path
    return (top / SYNTHETIC_MARKER).is_file()


def _generator_version(path: Path) -> str:
    """The version of `patchmix.data.synth` that wrote the set at `path` (its marker's), or ""."""
    top = path.parent if path.name in RECORDINGS_DIR_NAMES else path
    try:
        return str(json.loads((top / SYNTHETIC_MARKER).read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


register_dataset(DataSet("synthetic", "synthetic stand-in, not ICBHI", read_icbhi,
                         detect=_is_synthetic, summarize=summarize, synthetic=True,
                         release=_generator_version))
# ICBHI is the fallback: any other folder is read as ICBHI, whose reader says what is missing
register_dataset(DataSet("icbhi", "ICBHI 2017", read_icbhi, detect=lambda path: True,
                         summarize=summarize, fallback=True))
