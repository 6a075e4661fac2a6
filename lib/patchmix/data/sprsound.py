"""Reading SPRSound, the SJTU Paediatric Respiratory Sound Database (BioCAS 2022 release).

The release holds 8 kHz recordings of children's lungs, each with a JSON annotation: a record
label (Normal, CAS, DAS, CAS & DAS, Poor Quality) and a list of respiratory events, each with a
start and end in milliseconds and one of seven types. Two folder layouts are in circulation::

    official repository, folder BioCAS2022/      older copies (e.g. a folder SPRSound/)
    train2022_wav/   train2022_json/             train_wav/   train_json/
    test2022_wav/                                test_wav/
    test2022_json/intra_test_json/               test_json/intra_test_json/
    test2022_json/inter_test_json/               test_json/inter_test_json/

`read_sprsound(ROOT)` accepts either layout, ROOT being that folder or its parent. The test
recordings share one WAV folder; which test part a recording belongs to is told by the JSON
folder that holds its annotation: ``test_intra`` (patients who also appear in train) or
``test_inter`` (patients who do not). Every **event** becomes one row of the cycle table, so that
events go through the same recipe as ICBHI's cycles (docs/recipe.md) and are scored in the four
shared classes (`EVENT_TO_CLASS`), while the table keeps the event's own type and its record's
label for SPRSound's own tasks.

How bad input is handled (each skip is counted and listed in ``attrs["problems"]`` and in
``patchmix data check``; nothing is dropped silently):

======================================  =================================================
case                                    decision
======================================  =================================================
WAV that cannot be opened or truncated  error (names the file)
JSON that does not parse                error (names the file)
JSON without a record label or events   error (names the file and the missing key)
unknown record label or event type      error (file, event number and the value; a type
                                        that is not a string too)
event time that is not a number         error (file, event number and the value)
Poor Quality record                     reported; its events (normally none) not used
record other than Poor Quality with no  skipped, reported
events
event with end <= start                 skipped, reported with file and event number
event starting at/after the recording   skipped, reported with file and event number
event shorter than one sample at 16 kHz skipped, reported with file and event number
event ending after the recording        kept: the cut is clamped (docs/recipe.md), counted
file name not patient_age_sex_loc_rec   skipped, reported
recording with no annotation            skipped, reported
annotation with no recording            skipped, reported
test annotation in both test folders    skipped, reported
annotation in train and in a test part  skipped from both, reported (a recording scored on
                                        must not be learnt from)
folder or file not part of the release  ignored, reported (e.g. ``example/``, ``test_clip/``)
stereo WAV                              handled: channels averaged, reported
======================================  =================================================
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from patchmix.config import FeatureConfig
from patchmix.data.audio import cut_samples, wav_info
from patchmix.data.dataset import DataSet, register_dataset, seconds_summary, summarize_cycles
from patchmix.data.errors import DataError

EVENT_TYPES: tuple[str, ...] = (
    "Normal", "Rhonchi", "Wheeze", "Stridor", "Coarse Crackle", "Fine Crackle", "Wheeze+Crackle")
"""The seven event classes, in the challenge's order (task 1-2); ``label7`` indexes them."""

EVENT_ABBREVIATIONS: dict[str, str] = {
    "Normal": "N", "Rhonchi": "R", "Wheeze": "W", "Stridor": "S", "Coarse Crackle": "CC",
    "Fine Crackle": "FC", "Wheeze+Crackle": "WC"}

RECORD_LABELS: tuple[str, ...] = ("Normal", "CAS", "DAS", "CAS & DAS", "Poor Quality")
"""Record-level labels (task 2-2); Poor Quality records carry no events."""

POOR_QUALITY = "Poor Quality"

EVENT_TO_CLASS: dict[str, int] = {
    "Normal": 0,
    "Fine Crackle": 1, "Coarse Crackle": 1,  # discontinuous (DAS) → crackle
    "Wheeze": 2, "Rhonchi": 2, "Stridor": 2,  # continuous (CAS) → wheeze
    "Wheeze+Crackle": 3,  # both
}
"""Each event type in the four shared classes (0 normal, 1 crackle, 2 wheeze, 3 both), following
SPRSound's own grouping of continuous (CAS) and discontinuous (DAS) adventitious sounds."""

LOCATIONS: dict[str, str] = {"p1": "left posterior", "p2": "left lateral",
                             "p3": "right posterior", "p4": "right lateral"}
SEXES: dict[str, str] = {"0": "M", "1": "F"}
DEVICE = "Yunting II"  # every SPRSound recording was made with this electronic stethoscope

PARTS: tuple[str, ...] = ("train", "test_intra", "test_inter")


@dataclass(frozen=True)
class Layout:
    """Folder names of one layout of the release, relative to its top folder."""

    name: str
    train_wav: str
    train_json: str
    test_wav: str
    test_json: str  # holds the two folders below

    intra: str = "intra_test_json"
    inter: str = "inter_test_json"

    def release(self) -> set[str]:
        """The top-level folders that belong to the release."""
        return {self.train_wav, self.train_json, self.test_wav, self.test_json}


LAYOUTS: tuple[Layout, ...] = (
    Layout("BioCAS2022", "train2022_wav", "train2022_json", "test2022_wav", "test2022_json"),
    Layout("older copy", "train_wav", "train_json", "test_wav", "test_json"),
)
TOP_FOLDERS: tuple[str, ...] = ("BioCAS2022", "SPRSound")  # what a repository calls the release
RELEASE_FILES: frozenset[str] = frozenset({"README.md", "LICENSE", "LICENSE.txt", ".DS_Store"})

# patient_age_sex_location_recording, e.g. 65101170_0.4_0_p4_3248
RECORDING_NAME = re.compile(
    r"^(?P<patient>\d+)_(?P<age>\d+(?:\.\d+)?)_(?P<sex>[01])_(?P<location>p[1-4])"
    r"_(?P<number>\d+)$")

CYCLE_COLUMNS: tuple[str, ...] = (
    "recording", "patient", "location", "mode", "device", "split", "cycle", "start", "end",
    "crackle", "wheeze", "label", "label2", "event_type", "label7", "record_label", "path",
    "annotation", "age", "sex", "rec_number", "sample_rate", "bits", "channels", "duration")


@dataclass(frozen=True)
class Problem:
    """One reported irregularity: what, where, and what the reader did about it."""

    kind: str  # e.g. "poor_quality", "no_annotation", "empty_event", "not_in_release"
    file: str  # path relative to the release folder
    detail: str
    action: str  # "skipped", "handled" or "ignored"


# ----------------------------------------------------------------------------- layout


def find_release(root: str | os.PathLike) -> tuple[Path, Layout] | None:
    """The release folder under `root` (itself, or its ``BioCAS2022/`` or ``SPRSound/``) and its
    layout; None when `root` holds neither layout."""
    root = Path(root)
    for folder in (root, *(root / name for name in TOP_FOLDERS)):
        for layout in LAYOUTS:
            if (folder / layout.train_json).is_dir() or (folder / layout.test_json).is_dir():
                return folder, layout
    return None


def _is_sprsound(path: Path) -> bool:
    return find_release(path) is not None


# ----------------------------------------------------------------------------- annotations


def read_annotation(path: str | os.PathLike) -> tuple[str, list[tuple[int, float, float, str]]]:
    """One JSON annotation: its record label and its events as (event number, start s, end s,
    type), sorted by start (the files list events in no guaranteed order). Event numbers count
    from 1 in the file's own order, so that a message can point at the event."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON annotation ({err})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with record_annotation and "
                        "event_annotation")
    # the release writes "record_annotation"; its README's example says "recording_annotation"
    record = doc.get("record_annotation", doc.get("recording_annotation"))
    if record is None:
        raise DataError(f"{path}: no record_annotation")
    if record not in RECORD_LABELS:
        raise DataError(f"{path}: unknown record label {record!r} "
                        f"(expected one of {', '.join(RECORD_LABELS)})")
    raw = doc.get("event_annotation")
    if not isinstance(raw, list):
        raise DataError(f"{path}: no event_annotation list")
    events = []
    for number, event in enumerate(raw, 1):
        if not isinstance(event, dict) or not {"start", "end", "type"} <= set(event):
            raise DataError(f"{path}: event {number} lacks start, end or type: {event!r}")
        if not isinstance(event["type"], str) or event["type"] not in EVENT_TO_CLASS:
            raise DataError(f"{path}: event {number} has unknown type {event['type']!r} "
                            f"(expected one of {', '.join(EVENT_TYPES)})")
        times = [_milliseconds(event[key], path, number, key) for key in ("start", "end")]
        events.append((number, times[0] / 1000.0, times[1] / 1000.0, event["type"]))
    events.sort(key=lambda e: (e[1], e[2], e[0]))
    return record, events


def _milliseconds(value: Any, path: Path, number: int, key: str) -> float:
    """A time in ms, written as a number or (as the release does) a string of one."""
    try:
        ms = float(value)
    except (TypeError, ValueError):
        ms = math.nan
    if isinstance(value, bool) or not math.isfinite(ms) or ms < 0:
        raise DataError(f"{path}: event {number} {key} {value!r} is not a time in ms >= 0")
    return ms


# ----------------------------------------------------------------------------- the reader


def read_sprsound(root: str | os.PathLike,
                  split_file: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read an SPRSound release folder into a table with one row per respiratory event.

    Args:
        root: the release folder (either layout, see the module docstring) or its parent.
        split_file: not used: the release's folders are its split (accepted so that every
            data set's reader is called alike); passing one is an error.

    Returns:
        A DataFrame with the columns of `CYCLE_COLUMNS`, sorted by part, recording and start:
        ``split`` train / test_intra / test_inter; ``label`` the event in the four shared
        classes (`EVENT_TO_CLASS`), ``label2`` normal/adventitious, ``event_type`` and ``label7``
        (index into `EVENT_TYPES`) its own type, ``record_label`` its record's label; ``start``
        and ``end`` in seconds. ``attrs`` holds ``root``, ``layout``, ``synthetic`` (False),
        ``records`` (one dict per annotated recording, Poor Quality ones included: recording,
        patient, split, record_label, events), ``problems`` (see `Problem`),
        ``clamped_cycles``, ``ignored_folders`` and ``ignored_files``.

    Raises:
        DataError: for input that cannot be read (see the module docstring for each case).
    """
    if split_file is not None:
        raise DataError(f"{split_file}: SPRSound takes no split file; its folders are its split")
    found = find_release(root)
    if found is None:
        names = " or ".join(f"{lay.train_json}/ and {lay.test_json}/" for lay in LAYOUTS)
        raise DataError(f"{root}: not an SPRSound release folder (expected {names})")
    top, layout = found
    problems: list[Problem] = []
    ignored_folders, ignored_files = [], []
    for entry in sorted(top.iterdir()):
        if entry.is_dir() and entry.name not in layout.release():
            ignored_folders.append(entry.name)
            problems.append(Problem("not_in_release", entry.name + "/",
                                    "folder that is not part of the 2022 release", "ignored"))
        elif entry.is_file() and entry.name not in RELEASE_FILES:
            ignored_files.append(entry.name)

    def rel(p: Path) -> str:
        return os.path.relpath(p, top)

    # annotations per part, then the recordings they describe
    notes: dict[str, dict[str, Path]] = {
        "train": _files(top / layout.train_json, ".json"),
        "test_intra": _files(top / layout.test_json / layout.intra, ".json"),
        "test_inter": _files(top / layout.test_json / layout.inter, ".json"),
    }
    both = sorted(set(notes["test_intra"]) & set(notes["test_inter"]))
    for stem in both:
        problems.append(Problem("in_both_test_parts", rel(notes["test_intra"][stem]),
                                f"annotated in both {layout.intra} and {layout.inter}", "skipped"))
        del notes["test_intra"][stem], notes["test_inter"][stem]
    leaked = sorted(set(notes["train"]) & (set(notes["test_intra"]) | set(notes["test_inter"])))
    for stem in leaked:  # a model must never be scored on a recording it learnt from
        part = "test_intra" if stem in notes["test_intra"] else "test_inter"
        problems.append(Problem("in_train_and_test", rel(notes["train"][stem]),
                                f"annotated in {layout.train_json} and in "
                                f"{rel(notes[part][stem])}", "skipped"))
        for folder in notes.values():
            folder.pop(stem, None)
    wavs = {"train": _files(top / layout.train_wav, ".wav"),
            "test": _files(top / layout.test_wav, ".wav")}
    test_notes = set(notes["test_intra"]) | set(notes["test_inter"]) | set(both) | set(leaked)
    for group, annotated in (("train", set(notes["train"]) | set(leaked)), ("test", test_notes)):
        for stem in sorted(set(wavs[group]) - annotated):
            problems.append(Problem("no_annotation", rel(wavs[group][stem]),
                                    "recording without an annotation", "skipped"))

    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    clamped = 0
    for part in PARTS:
        wav_dir = wavs["train" if part == "train" else "test"]
        for stem, note in sorted(notes[part].items()):
            if stem not in wav_dir:
                problems.append(Problem("no_recording", rel(note),
                                        "annotation without a recording", "skipped"))
                continue
            name = RECORDING_NAME.match(stem)
            if name is None:
                problems.append(Problem(
                    "unexpected_name", rel(wav_dir[stem]),
                    "file name is not patient_age_sex_location_recording", "skipped"))
                continue
            record, events = read_annotation(note)
            info = wav_info(wav_dir[stem])
            fields = name.groupdict()
            records.append({"recording": stem, "patient": int(fields["patient"]), "split": part,
                            "record_label": record, "events": len(events)})
            if record == POOR_QUALITY:
                problems.append(Problem(
                    "poor_quality", rel(note),
                    f"Poor Quality record ({len(events)} events): not used", "skipped"))
                continue
            if not events:
                problems.append(Problem("no_events", rel(note),
                                        f"{record} record without events", "skipped"))
                continue
            if info.channels > 1:
                problems.append(Problem("stereo", rel(wav_dir[stem]),
                                        f"{info.channels} channels averaged to mono", "handled"))
            index = 0
            for number, start, end, kind in events:
                where = f"{rel(note)} event {number}"
                if end <= start:
                    problems.append(Problem("empty_event", where,
                                            f"event end {end} s <= start {start} s", "skipped"))
                    continue
                if start >= info.duration:
                    problems.append(Problem(
                        "event_past_end", where, f"event starts at {start} s, the recording "
                        f"lasts {info.duration:.3f} s", "skipped"))
                    continue
                if cut_samples(start, end, info.duration) < 1:
                    problems.append(Problem(
                        "event_too_short", where, f"event [{start}, {end}) s holds no sample "
                        f"at {FeatureConfig.sample_rate} Hz", "skipped"))
                    continue
                clamped += end > info.duration
                label = EVENT_TO_CLASS[kind]
                rows.append({
                    "recording": stem, "patient": int(fields["patient"]),
                    "location": fields["location"], "mode": "", "device": DEVICE,
                    "split": part, "cycle": index, "start": start, "end": end,
                    "crackle": label & 1, "wheeze": label >> 1, "label": label,
                    "label2": int(label != 0), "event_type": kind,
                    "label7": EVENT_TYPES.index(kind), "record_label": record,
                    "path": str(wav_dir[stem].resolve()), "annotation": rel(note),
                    "age": float(fields["age"]), "sex": SEXES[fields["sex"]],
                    "rec_number": int(fields["number"]), "sample_rate": info.sample_rate,
                    "bits": info.bits, "channels": info.channels, "duration": info.duration,
                })
                index += 1

    df = pd.DataFrame(rows, columns=list(CYCLE_COLUMNS))
    df = df.astype({"patient": "int64", "cycle": "int64", "crackle": "int64", "wheeze": "int64",
                    "label": "int64", "label2": "int64", "label7": "int64",
                    "rec_number": "int64", "sample_rate": "int64", "channels": "int64",
                    "start": "float64", "end": "float64", "age": "float64",
                    "duration": "float64"})
    df.attrs.update(root=str(top), layout=layout.name, synthetic=False, records=records,
                    problems=[asdict(p) for p in problems], clamped_cycles=int(clamped),
                    ignored_folders=ignored_folders, ignored_files=ignored_files)
    return df


def _files(folder: Path, suffix: str) -> dict[str, Path]:
    """{stem: path} of the files with `suffix` in `folder` ({} when it does not exist)."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() == suffix}


# ----------------------------------------------------------------------------- summaries


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """What ``patchmix data check`` reports on SPRSound: the keys every data set reports
    (`patchmix.data.dataset.summarize_cycles`, with ``cycles`` the events in the four shared
    classes), where ``recordings`` and ``patients`` count every annotated recording, Poor
    Quality ones included (``recordings_with_events`` counts those the table holds); then events
    per part and type (`EVENT_TYPES`), record labels per part, patients of each test part also
    in train, the layout, sample rates, event durations (``cycle_seconds``), clamped events
    and ignored entries."""
    report = summarize_cycles(df)
    records = pd.DataFrame(df.attrs.get("records", []),
                           columns=["recording", "patient", "split", "record_label", "events"])
    names = [p for p in PARTS if p in set(records["split"])]

    def of(part: str) -> pd.DataFrame:
        return records[records["split"] == part]

    train_patients = set(of("train")["patient"])
    events = df.groupby(["split", "event_type"]).size()
    durations = df["end"].clip(upper=df["duration"]) - df["start"]
    return {
        **report,
        "recordings": {p: len(of(p)) for p in names},
        "recordings_with_events": report["recordings"],
        "patients": {p: int(of(p)["patient"].nunique()) for p in names},
        "events": {p: {t: int(events.get((p, t), 0)) for t in EVENT_TYPES} for p in names},
        "record_labels": {p: {r: int((of(p)["record_label"] == r).sum()) for r in RECORD_LABELS}
                          for p in names},
        "patients_also_in_train": {p: len(set(of(p)["patient"]) & train_patients)
                                   for p in names if p != "train"},
        "layout": df.attrs.get("layout"),
        "sample_rates": {p: {str(k): int(v) for k, v in sorted(
            df.drop_duplicates("recording").loc[lambda d, p=p: d["split"] == p, "sample_rate"]
            .value_counts().items())} for p in names},
        "cycle_seconds": seconds_summary(durations),
        "clamped_cycles": int(df.attrs.get("clamped_cycles", 0)),
        "ignored_folders": list(df.attrs.get("ignored_folders", [])),
        "ignored_files": list(df.attrs.get("ignored_files", [])),
    }


ROOT_ENV = "SPRSOUND_ROOT"  # the folder notebook 06 and make reproduce train on
WHERE_TO_GET = ("clone https://github.com/SJTU-YONGFU-RESEARCH-GRP/SPRSound (its BioCAS2022/ "
                "folder is the 2022 release); docs/data.md#sprsound")
DEMO_EPOCHS = 15
"""Epochs of the ``demo`` profile on SPRSound. An epoch of its train part is 336 steps of 16,
against 19 on the synthetic set: the validation Score of weighted CE levelled off by epoch 12
of 15 (docs/data.md#training-on-sprsound), and the profile's 30 would double the time."""

register_dataset(DataSet("sprsound", "SPRSound 2022", read_sprsound, detect=_is_sprsound,
                         summarize=summarize, score_families=("icbhi", "sprsound"),
                         root_env=ROOT_ENV, where_to_get=WHERE_TO_GET,
                         profile_epochs={"demo": DEMO_EPOCHS}))
