"""A synthetic stand-in for the ICBHI 2017 Respiratory Sound Database.

`make_synthetic_icbhi(out, n_recordings, seed)` writes a data set that a reader of the real
download cannot tell apart by its layout::

    OUT/ICBHI_final_database/<PID>_<RecIdx>_<Loc>_<Mode>_<Device>.wav   mono PCM WAV
    OUT/ICBHI_final_database/<same>.txt          one line per cycle: start, end, crackle, wheeze
    OUT/ICBHI_final_database/filename_format.txt        description of the file names
    OUT/ICBHI_final_database/filename_differences.txt   old names of the renamed recordings
    OUT/ICBHI_challenge_train_test.txt           <recording> <train|test>
    OUT/ICBHI_challenge_diagnosis.txt            <pid> <diagnosis>
    OUT/ICBHI_Challenge_demographic_information.txt   pid, age, sex, adult_BMI, child weight/height
    OUT/README.md                                what this is (SYNTHETIC), seed, version, model
    OUT/synthetic.json                           marker: generator, version, seed, n_recordings

What is modelled (ICBHI counts and textbook lung-sound acoustics: docs/data.md):

* **Patients** with a diagnosis (COPD most common, then Healthy, URTI, Bronchiectasis, ...) that
  sets the class priors of their cycles, and demographics plausible for the age (children with
  weight and height, adults with BMI, a few ``NA``). COPD patients give several sessions, often
  multichannel (``mc``: several chest locations recorded at once, sharing breathing and heart
  timing); the others one or two single-channel (``sc``) sessions.
* **Breathing cycles** of 0.2-16 s (median about 2.5 s, a few longer than 8 s) tiling the
  recording like the real annotations; recordings mostly 20 s, some up to 60 s.
* **Breath sound**: noise shaped to the vesicular spectrum (most energy below 150 Hz, little
  above 500 Hz) or, at the trachea (``Tc``), louder and brighter (to about 1 kHz) with a pause
  between the phases; inspiration louder than expiration.
* **Crackles**: explosive transients; fine ones (two-cycle duration < 10 ms, several per cycle,
  late inspiration) or coarse ones (15-25 ms, lower pitched, early inspiration and expiration).
* **Wheezes**: tonal components with a 100-1000 Hz fundamental (often about 400 Hz), harmonics,
  pitch drift and vibrato, lasting 0.1 s to most of a phase, mostly expiratory; sometimes two.
* ``both`` cycles hold crackles and wheezes; ``normal`` cycles hold neither.
* **Heart sounds** (S1/S2, 20-150 Hz, every 0.45-1 s) and unannotated clicks (about 1.5 per
  second) everywhere, friction and handling bursts and mains hum in some recordings.
* **Devices**: AKGC417L, LittC2SE, Litt3200 (4 kHz, 16-bit) and Meditron (44.1 kHz, 16- or
  24-bit like the others), each with its own band-pass colouring and noise floor, mixed roughly
  like ICBHI (about 70/9/7/14 %; every device present from 20 recordings on).
* **Difficulty** per recording: a signal-to-noise ratio and event loudness, so some recordings
  are easy and others hard (faint events, loud noise floor).
* **Calibrated to real recordings** (version 1.1): breath spectrum, clicks, crackle and wheeze
  levels were set from measurements of 40 real ICBHI recordings and of SPRSound
  (``patchmix calibrate``; docs/data.md#how-close-to-real-recordings). Wheezes stay about 13 dB
  more prominent than real ones, so that the demo's small model can learn them at all.
* **Renamed files**: most Meditron recordings (ICBHI: 91 of 127) are stored under an old device
  suffix (``_AKGC417L``/``_LittC2SE``) while the split file names them ``_Meditron``; their old
  names are listed in ``filename_differences.txt``, as in the download.
* **Split**: patient-disjoint (unlike the real one), about 60/40 of the recordings, every class in
  both splits whenever the set has enough cycles.

Not modelled: real pathophysiology beyond these textbook cues, inter-annotator noise, labels that
disagree with the sound, stridor, squawks, rhonchi, speech, coughs, device-specific nonlinear
distortion, recordings longer than 60 s, the real split's patient overlap and its device/split
imbalance.

Determinism: the plan (patients, sessions, cycles, labels, split) comes from one generator seeded
by `seed`; every recording's audio from its own child seed (`numpy.random.SeedSequence.spawn`),
so the same seed gives byte-identical files whatever the number of worker threads. WAVs are
written as PCM (libsndfile adds a time-stamped PEAK chunk to float WAVs) after a peak
normalisation that never clips.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import soundfile as sf
from scipy import fft as sp_fft

from patchmix.atomic import LOCK_NAME, exclusive
from patchmix.data.dataset import CLASSES
from patchmix.data.icbhi import (
    DEMOGRAPHICS_FILE_NAMES,
    DIAGNOSIS_FILE_NAMES,
    RECORDINGS_DIR_NAMES,
    SPLIT_FILE_NAMES,
    SYNTHETIC_MARKER,
)

__all__ = ["VERSION", "SynthSummary", "make_synthetic_icbhi"]

VERSION = "1.1.0"
"""Version of the generator: bump it whenever the same seed would give different bytes."""

# the generator's name in the marker file; it predates the module's move into patchmix.data and
# stays, so existing sets keep their bytes and can still be rewritten
GENERATOR = "patchmix.synth"
# The download's names, as the reader looks for them (first of each list).
RECORDINGS_DIR = RECORDINGS_DIR_NAMES[0]
SPLIT_FILE = SPLIT_FILE_NAMES[0]
DIAGNOSIS_FILE = DIAGNOSIS_FILE_NAMES[0]
DEMOGRAPHICS_FILE = DEMOGRAPHICS_FILE_NAMES[0]
MARKER_FILE = SYNTHETIC_MARKER
TOP_FILES: tuple[str, ...] = (SPLIT_FILE, DIAGNOSIS_FILE, DEMOGRAPHICS_FILE, "README.md",
                              MARKER_FILE)

LOCATIONS: tuple[str, ...] = ("Al", "Ar", "Pl", "Pr", "Ll", "Lr", "Tc")
LOCATION_WEIGHTS: tuple[float, ...] = (0.2, 0.18, 0.14, 0.14, 0.1, 0.1, 0.14)
DEVICES: tuple[str, ...] = ("AKGC417L", "LittC2SE", "Litt3200", "Meditron")
DEVICE_SHARES: tuple[float, ...] = (0.70, 0.09, 0.07, 0.14)  # of recordings, as in ICBHI
# propensity of each device for a multichannel session (the AKG microphone mostly)
MC_DEVICE_FACTORS: tuple[float, ...] = (1.0, 0.3, 0.0, 0.0)
# unannotated clicks (skin contact, small movements of the chest piece) per second of every
# recording: real normal cycles are full of them (a click detector fires in 73 % of the normal
# cycles of 40 ICBHI recordings), so a click alone must not mean "crackle" (docs/data.md)
CLICK_RATE_HZ = 1.5
RENAMED_FRACTION = 0.7  # of Meditron recordings stored under an old suffix (ICBHI: 91 of 127)
TEST_FRACTION = 0.4  # of recordings, patient-disjoint

# diagnosis: (patient weight as in ICBHI, class prior over CLASSES, probability of fine crackles)
DIAGNOSES: MappingProxyType[str, tuple[float, tuple[float, ...], float]] = MappingProxyType({
    "COPD": (64, (0.49, 0.29, 0.14, 0.08), 0.3),
    "Healthy": (26, (0.94, 0.04, 0.02, 0.00), 0.5),
    "URTI": (14, (0.86, 0.08, 0.05, 0.01), 0.5),
    "Bronchiectasis": (7, (0.40, 0.50, 0.05, 0.05), 0.2),
    "Bronchiolitis": (6, (0.40, 0.22, 0.26, 0.12), 0.6),
    "Pneumonia": (6, (0.45, 0.45, 0.05, 0.05), 0.7),
    "LRTI": (2, (0.70, 0.20, 0.07, 0.03), 0.5),
    "Asthma": (1, (0.40, 0.05, 0.50, 0.05), 0.5),
})
LABEL_CONCENTRATION = 3.0  # Dirichlet concentration of a recording's class mix around the prior


@dataclass(frozen=True)
class _Device:
    """Sample rate, 24-bit share, colouring and extra noise floor of a recording device."""

    rate: int
    p_pcm24: float
    highpass: tuple[float, int]  # corner (Hz), order
    lowpass: tuple[float, int]
    bump: tuple[float, float]  # resonance centre (Hz), gain (dB)
    noise_db: float  # extra noise floor, dB
    noise_tilt: float  # noise power ∝ f ** -tilt (0: white hiss, 1: pink rumble)


DEVICE_MODELS: MappingProxyType[str, _Device] = MappingProxyType({
    "AKGC417L": _Device(44100, 0.6, (40.0, 2), (3000.0, 1), (1000.0, 0.0), 0.0, 0.3),
    "LittC2SE": _Device(44100, 0.6, (60.0, 1), (600.0, 2), (150.0, 6.0), 3.0, 1.0),
    "Litt3200": _Device(4000, 0.0, (30.0, 1), (900.0, 3), (250.0, 3.0), 2.0, 0.0),
    "Meditron": _Device(44100, 0.5, (40.0, 2), (1200.0, 2), (300.0, 4.0), 6.0, 0.0),
})


# ----------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class SynthSummary:
    """What `make_synthetic_icbhi` wrote.

    ``cycles`` counts cycles per class; ``cycles_per_split`` per split then class;
    ``renamed`` holds the old names stored on disk (as in ``filename_differences.txt``).
    """

    root: Path
    seed: int
    version: str
    recordings: int
    patients: int
    cycles: dict[str, int]
    cycles_per_split: dict[str, dict[str, int]]
    recordings_per_split: dict[str, int]
    patients_per_split: dict[str, int]
    devices: dict[str, int]
    diagnoses: dict[str, int]
    renamed: tuple[str, ...]
    audio_seconds: float
    seconds: float = field(compare=False)


def make_synthetic_icbhi(out: str | os.PathLike, n_recordings: int = 100, seed: int = 0, *,
                         progress: bool = False) -> SynthSummary:
    """Write a synthetic ICBHI 2017 data set of ``n_recordings`` recordings into ``out``.

    The same ``seed`` gives byte-identical files. ``out`` is created if needed; an existing
    non-empty folder is refused unless it holds a previous synthetic set (its ``synthetic.json``),
    whose files are then replaced. ``progress`` shows a tqdm bar over the recordings.
    Recordings are rendered on up to 4 threads; 100 recordings take about 10 s on 2 cores.
    (Byte identity holds on one platform and library stack; another BLAS/FFT build or CPU may
    round differently in the last bit.)

    Raises ValueError for ``n_recordings < 1`` or a negative seed, FileExistsError for a folder
    (or file) that is not a previous synthetic set, `patchmix.atomic.FolderBusy` while another
    process writes into the folder.
    """
    started = time.perf_counter()
    if isinstance(n_recordings, bool) or not isinstance(n_recordings, int | np.integer):
        raise ValueError(f"n_recordings must be an integer, got {n_recordings!r}")
    if n_recordings < 1:
        raise ValueError(f"n_recordings must be at least 1, got {n_recordings}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    n_recordings, seed = int(n_recordings), int(seed)
    root = Path(out)
    _refuse_foreign(root)  # before the lock: a refused folder is left as it was
    with exclusive(root, "another patchmix synth"):  # two writers would mix their sets
        return _write(root, n_recordings, seed, progress, started)


def _write(root: Path, n_recordings: int, seed: int, progress: bool,
           started: float) -> SynthSummary:
    _refuse_foreign(root)
    _clear(root)
    patients, recordings = _plan(n_recordings, seed)
    rec_dir = root / RECORDINGS_DIR
    rec_dir.mkdir(parents=True)
    (root / MARKER_FILE).write_text(json.dumps(
        {"generator": GENERATOR, "n_recordings": n_recordings, "seed": seed, "version": VERSION},
        sort_keys=True, indent=2) + "\n")
    _render_all(recordings, rec_dir, progress)
    _write_metadata(root, patients, recordings)
    summary = _summarise(root, seed, patients, recordings, time.perf_counter() - started)
    (root / "README.md").write_text(_readme(summary))
    return summary


def _refuse_foreign(root: Path) -> None:
    """Refuse a file, or a non-empty folder that holds no previous synthetic set."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root}: exists and is not a folder")
    if not root.exists() or not any(p.name != LOCK_NAME for p in root.iterdir()):
        return
    try:
        generator = json.loads((root / MARKER_FILE).read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        generator = None
    if generator != GENERATOR:
        raise FileExistsError(
            f"{root}: folder is not empty and holds no synthetic set ({MARKER_FILE} of "
            f"{GENERATOR}); refusing to write into it. Choose an empty or new folder.")


def _clear(root: Path) -> None:
    """Remove a previous synthetic set, so that no stale recording survives."""
    shutil.rmtree(root / RECORDINGS_DIR, ignore_errors=True)
    for name in TOP_FILES:
        (root / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class _Patient:
    pid: int
    diagnosis: str
    age: float | None  # years
    sex: str
    bmi: float | None  # adults only
    weight: float | None  # kg, children only
    height: float | None  # cm, children only


@dataclass
class _Session:
    patient: _Patient
    rec_idx: str
    mode: str  # "sc" or "mc"
    locations: list[str]
    device: str = ""


@dataclass(frozen=True)
class _Recording:
    """Everything needed to render one recording, fixed before any audio is drawn."""

    name: str  # name in the split file
    stored: str  # name on disk (differs for renamed recordings)
    patient: _Patient
    location: str
    device: str
    subtype: str
    split: str
    duration: float  # s
    breaths: tuple[float, ...]  # boundaries of all breathing cycles (s), covering [0, duration]
    insp_fraction: float  # share of a cycle spent inhaling
    heart_beats: tuple[float, ...]  # S1 onsets (s)
    cycles: tuple[tuple[float, float, int, int], ...]  # annotated (start, end, crackle, wheeze)
    p_fine: float  # probability that a crackle cycle holds fine (not coarse) crackles
    seed: np.random.SeedSequence

    @property
    def rate(self) -> int:
        return DEVICE_MODELS[self.device].rate


def _plan(n: int, seed: int) -> tuple[list[_Patient], list[_Recording]]:
    """Patients, sessions, timing, labels and split: all random draws that are not audio."""
    plan_seq, audio_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(plan_seq)
    cap = max(1, math.ceil(n / 4))  # recordings per patient: small sets still get several patients
    patients: list[_Patient] = []
    sessions: list[_Session] = []
    total = 0
    while total < n:
        patient = _draw_patient(rng, 101 + len(patients))
        patients.append(patient)
        for session in _draw_sessions(rng, patient, cap):
            session.locations = session.locations[: n - total]
            if session.locations:
                sessions.append(session)
                total += len(session.locations)
    _assign_devices(rng, sessions)
    if n >= 20:
        _ensure_every_device(rng, sessions)

    drafts: list[dict] = []
    for session in sessions:
        shared = _draw_timing(rng, session) if session.mode == "mc" else None
        for location in session.locations:
            timing = shared or _draw_timing(rng, session)
            labels = _draw_labels(rng, session.patient.diagnosis, len(timing["cycles"]))
            drafts.append({"session": session, "location": location, "labels": labels, **timing})

    split_of = _draw_split(rng, drafts)
    _ensure_classes(rng, drafts, split_of)
    meditron = [i for i, d in enumerate(drafts) if d["session"].device == "Meditron"]
    renamed = {i for i in meditron if rng.random() < RENAMED_FRACTION}
    if meditron and not renamed:
        renamed.add(meditron[int(rng.integers(len(meditron)))])

    seeds = audio_seq.spawn(len(drafts))
    recordings = []
    for i, draft in enumerate(drafts):
        session: _Session = draft["session"]
        device, pid = session.device, session.patient.pid
        name = f"{pid}_{session.rec_idx}_{draft['location']}_{session.mode}_{device}"
        stored = name
        if i in renamed:
            stored = name.rsplit("_", 1)[0] + "_" + str(rng.choice(["AKGC417L", "LittC2SE"]))
        pcm24 = rng.random() < DEVICE_MODELS[device].p_pcm24
        cycles = tuple((s, e, int(lab in (1, 3)), int(lab in (2, 3)))
                       for (s, e), lab in zip(draft["cycles"], draft["labels"], strict=True))
        recordings.append(_Recording(
            name=name, stored=stored, patient=session.patient, location=draft["location"],
            device=device, subtype="PCM_24" if pcm24 else "PCM_16", split=split_of[pid],
            duration=draft["duration"], breaths=draft["breaths"],
            insp_fraction=draft["insp_fraction"], heart_beats=draft["heart_beats"],
            cycles=cycles, p_fine=DIAGNOSES[session.patient.diagnosis][2], seed=seeds[i]))
    return patients, recordings


def _draw_patient(rng: np.random.Generator, pid: int) -> _Patient:
    """Diagnosis by ICBHI's patient counts; age, sex and body size plausible for it."""
    names = list(DIAGNOSES)
    weights = np.array([DIAGNOSES[d][0] for d in names], dtype=float)
    diagnosis = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    p_child = {"COPD": 0.0, "Healthy": 0.5, "URTI": 0.7, "Bronchiectasis": 0.15,
               "Bronchiolitis": 1.0, "Pneumonia": 0.3, "LRTI": 0.7, "Asthma": 0.5}[diagnosis]
    if rng.random() < p_child:
        age = rng.uniform(0.2, 3.0) if diagnosis == "Bronchiolitis" else rng.uniform(0.3, 17.5)
        age = round(age, 2) if age < 2 else float(round(age))
        # cm: a rough growth curve (75 cm at 1 year, 147 at 12, 162 at 17)
        height = 50 + 25 * age if age < 1 else 75 + 6.5 * min(age - 1, 11) + 3 * max(age - 12, 0)
        height = float(round(height * rng.lognormal(0, 0.04)))
        weight = round(rng.normal(16.5, 1.8) * (height / 100) ** 2, 1)  # child BMI ~16.5
        if rng.random() < 0.08:
            height = weight = None
        bmi = None
    else:
        age = float(round(rng.normal(70, 8) if diagnosis == "COPD" else rng.uniform(20, 88)))
        age = min(max(age, 18.0), 93.0)
        bmi = round(float(np.clip(rng.normal(26.5, 5), 15, 45)), 2)
        if rng.random() < 0.05:
            bmi = None
        weight = height = None
    sex = "M" if rng.random() < (0.65 if diagnosis == "COPD" else 0.5) else "F"
    return _Patient(pid, diagnosis, age, sex, bmi, weight, height)


def _draw_sessions(rng: np.random.Generator, patient: _Patient, cap: int) -> list[_Session]:
    """Sessions of a patient (COPD: 1-4, often multichannel; others: 1-2 single channel)."""
    copd = patient.diagnosis == "COPD"
    weights = [0.3, 0.3, 0.2, 0.2] if copd else [0.85, 0.15, 0.0, 0.0]
    n_sessions = int(rng.choice([1, 2, 3, 4], p=weights))
    sessions, budget = [], cap
    for number in range(1, n_sessions + 1):
        mc = rng.random() < (0.6 if copd else 0.1)
        n_loc = int(rng.integers(3, 8)) if mc else int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
        n_loc = min(n_loc, budget)
        if n_loc < 1:
            break
        budget -= n_loc
        p = np.array(LOCATION_WEIGHTS)
        picks = rng.choice(len(LOCATIONS), size=n_loc, replace=False, p=p / p.sum())
        kind = "p" if rng.random() < 0.05 else "b"
        rec_idx = f"{number}{kind}{int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))}"
        sessions.append(_Session(patient, rec_idx, "mc" if mc else "sc",
                                 [LOCATIONS[k] for k in sorted(picks)]))
    return sessions


def _assign_devices(rng: np.random.Generator, sessions: list[_Session]) -> None:
    """One device per session, drawn in proportion to each device's deficit against
    DEVICE_SHARES so far: random, yet every set lands near ICBHI's device mix."""
    assigned = dict.fromkeys(DEVICES, 0)
    total = 0
    for session in sessions:
        size = len(session.locations)
        deficit = np.array([max(share * (total + size) - assigned[d], 0.0) + 0.05
                            for d, share in zip(DEVICES, DEVICE_SHARES, strict=True)])
        if session.mode == "mc":
            deficit *= MC_DEVICE_FACTORS
        session.device = DEVICES[int(rng.choice(len(DEVICES), p=deficit / deficit.sum()))]
        assigned[session.device] += size
        total += size


def _ensure_every_device(rng: np.random.Generator, sessions: list[_Session]) -> None:
    """Give each missing device to a small session of the most common one."""
    for device in DEVICES:
        counts = Counter(s.device for s in sessions)
        if counts[device]:
            continue
        common = counts.most_common(1)[0][0]
        candidates = [s for s in sessions if s.device == common and counts[common] > 1]
        if not candidates:
            continue
        smallest = min(len(s.locations) for s in candidates)
        candidates = [s for s in candidates if len(s.locations) == smallest]
        candidates[int(rng.integers(len(candidates)))].device = device


def _draw_timing(rng: np.random.Generator, session: _Session) -> dict:
    """Duration, breathing boundaries, annotated cycles and heart beats of one recording."""
    child = session.patient.age is not None and session.patient.age < 12
    if session.device == "Litt3200":
        duration = float(np.clip(rng.lognormal(math.log(22), 0.25), 10, 60))
    elif rng.random() < 0.85:
        duration = 20.0
    else:
        duration = rng.uniform(20, 60)
    duration = round(duration, 3)

    # breathing: a typical cycle length per recording, per-cycle spread, rare outliers
    typical = rng.lognormal(math.log(2.1 if child else 2.75), 0.2)
    bounds = [-rng.uniform(0, typical)]
    while bounds[-1] < duration:
        length = typical * rng.lognormal(0, 0.2)
        u = rng.random()
        if u < 0.006:
            length *= rng.uniform(2.5, 5.0)  # a long, irregular cycle (a few > 8 s)
        elif u < 0.02:
            length = rng.uniform(0.2, 0.9)  # a very short one
        bounds.append(bounds[-1] + float(np.clip(length, 0.2, 16.2)))
    breaths = tuple(round(b, 3) for b in bounds)

    inner = [b for b in breaths if 0 <= b <= duration]
    cycles = list(zip(inner[:-1], inner[1:], strict=True))
    if cycles and inner[0] >= 0.2 and rng.random() < 0.15:
        cycles.insert(0, (0.0, inner[0]))  # annotated from the very start
    if cycles and duration - inner[-1] >= 0.2 and rng.random() < 0.2:
        cycles.append((inner[-1], duration))  # ... or to the very end
    if not cycles:  # no full cycle inside: annotate the longest piece
        edges = [0.0, *inner, duration]
        pieces = [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b - a <= 16.2]
        cycles = [max(pieces, key=lambda p: p[1] - p[0])]

    period = rng.uniform(0.45, 0.7) if child else rng.uniform(0.6, 1.0)  # s between beats
    beats = [-rng.uniform(0, period)]
    while beats[-1] < duration:
        beats.append(beats[-1] + period * rng.lognormal(0, 0.03))
    return {"duration": duration, "breaths": breaths, "cycles": cycles,
            "insp_fraction": float(rng.uniform(0.35, 0.45)),
            "heart_beats": tuple(round(b, 4) for b in beats)}


def _draw_labels(rng: np.random.Generator, diagnosis: str, n_cycles: int) -> list[int]:
    """Class indices of a recording's cycles: a recording-level mix drawn around the prior."""
    prior = np.array(DIAGNOSES[diagnosis][1]) + 1e-3
    mix = rng.dirichlet(LABEL_CONCENTRATION * prior / prior.sum())
    return [int(c) for c in rng.choice(len(CLASSES), size=n_cycles, p=mix)]


def _draw_split(rng: np.random.Generator, drafts: list[dict]) -> dict[int, str]:
    """Patient-disjoint split, about TEST_FRACTION of recordings in test, classes in both."""
    recs = Counter(d["session"].patient.pid for d in drafts)
    classes: dict[int, set[int]] = {}
    for d in drafts:
        classes.setdefault(d["session"].patient.pid, set()).update(d["labels"])
    pids = sorted(recs)
    target = TEST_FRACTION * len(drafts)
    best: tuple[float, dict[int, str]] | None = None
    for _ in range(200):
        test: set[int] = set()
        n_test = 0
        for pid in rng.permutation(pids):
            if n_test + recs[pid] / 2 <= target and len(test) < len(pids) - 1:
                test.add(int(pid))
                n_test += recs[pid]
        split = {pid: "test" if pid in test else "train" for pid in pids}
        missing = sum(len(set(range(len(CLASSES))) - set().union(
            *(classes[p] for p in pids if split[p] == name))) for name in ("train", "test"))
        score = missing + abs(n_test - target) / len(drafts)
        if best is None or score < best[0]:
            best = (score, split)
        if missing == 0 and abs(n_test - target) <= 0.05 * len(drafts):
            break
    assert best is not None
    return best[1]


def _ensure_classes(rng: np.random.Generator, drafts: list[dict], split: dict[int, str]) -> None:
    """Relabel a cycle of the commonest class wherever a split lacks a class (tiny sets only)."""
    for name in ("train", "test"):
        mine = [d for d in drafts if split[d["session"].patient.pid] == name]
        for cls in range(len(CLASSES)):
            counts = Counter(lab for d in mine for lab in d["labels"])
            if counts[cls] or sum(counts.values()) < 2 * len(CLASSES):
                continue
            common = counts.most_common(1)[0][0]
            spots = [(d, j) for d in mine for j, lab in enumerate(d["labels"]) if lab == common]
            d, j = spots[int(rng.integers(len(spots)))]
            d["labels"][j] = cls


# ----------------------------------------------------------------------------- sound


def _render_all(recordings: Sequence[_Recording], rec_dir: Path, progress: bool) -> None:
    """Render and write every recording on up to 4 threads.

    Threads, not processes: the FFTs, the random draws and libsndfile release the GIL, so two
    threads nearly halve the time, with no start-up cost and no ``__main__`` guard needed in
    the caller's script. Each recording has its own seed, so the bytes never depend on the
    number of threads or their scheduling.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = max(1, min(4, cpus or 1, len(recordings)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(recordings), desc="synthetic recordings", unit="rec")
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="synth") as pool:
            for _ in pool.map(lambda r: _write_recording(r, rec_dir), recordings):
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _write_recording(recording: _Recording, rec_dir: Path) -> None:
    """The WAV and its annotation file, both under the name stored on disk."""
    audio = _render(recording)
    sf.write(str(rec_dir / f"{recording.stored}.wav"), audio, recording.rate,
             subtype=recording.subtype, format="WAV")
    lines = [f"{_fmt_time(s)}\t{_fmt_time(e)}\t{c}\t{w}\n" for s, e, c, w in recording.cycles]
    (rec_dir / f"{recording.stored}.txt").write_text("".join(lines))


def _render(rec: _Recording) -> np.ndarray:
    """The waveform (float64, shape (n,), peak < 1) of one recording, from its own seed."""
    rng = np.random.default_rng(rec.seed)
    rate = rec.rate
    n = int(round(rec.duration * rate))
    device = DEVICE_MODELS[rec.device]
    # difficulty 0 (easy: loud events, clean) .. 1 (hard: faint events, loud noise floor)
    difficulty = rng.beta(2.0, 2.0)
    snr_db = 38.0 - 28.0 * difficulty - device.noise_db + rng.normal(0, 2)
    # event peak amplitudes re. the breath noise (RMS 1); wheezes carry well to the trachea.
    # Wheeze level, calibrated (docs/data.md#how-close-to-real-recordings): at 0 dB a wheeze
    # stands a median 29 dB above the spectrum around it (real ICBHI: 16.5 dB) and the demo's
    # CE of the calibration (16 × 16 patches) learnt 44 % of them; at the real level (-16 dB)
    # none in 30 epochs.
    crackle_gain = 10 ** ((15.0 - 14.0 * difficulty + rng.normal(0, 1.5)) / 20)
    wheeze_gain = 10 ** ((0.0 - 15.0 * difficulty + rng.normal(0, 1.5)) / 20)
    wheeze_gain *= 2.0 if rec.location == "Tc" else 1.0

    x = _breath(rng, rec, n)  # (n,), reference level: unit RMS before the envelope
    _add_heart(rng, rec, x)
    wheeze_f0 = float(np.clip(rng.lognormal(math.log(400), 0.4), 120, 950))  # Hz, typical
    mostly_fine = rng.random() < rec.p_fine  # the recording's usual crackle type
    for start, end, crackle, wheeze in rec.cycles:
        if crackle:
            fine = mostly_fine if rng.random() < 0.85 else not mostly_fine
            _add_crackles(rng, x, rate, start, end, rec.insp_fraction, fine, crackle_gain)
        if wheeze:
            _add_wheezes(rng, x, rate, start, end, rec.insp_fraction, wheeze_f0, wheeze_gain)
    _add_artifacts(rng, x, rate, rec.device)

    freqs = sp_fft.rfftfreq(n, 1 / rate)  # (n//2+1,) Hz
    spectrum = sp_fft.rfft(x) * _device_response(freqs, device)
    spectrum += _noise_spectrum(rng, freqs, n, device.noise_tilt) * 10 ** (-snr_db / 20)
    y = sp_fft.irfft(spectrum, n)
    y -= y.mean()
    peak = float(np.max(np.abs(y))) or 1.0
    return y * (rng.uniform(0.3, 0.9) / peak)


def _noise_spectrum(rng: np.random.Generator, freqs: np.ndarray, n: int,
                    tilt: float) -> np.ndarray:
    """The rfft (shape of ``freqs``) of Gaussian noise of unit RMS whose power falls as
    ``f ** -tilt`` (0: white). Drawn directly in the frequency domain, which saves an FFT."""
    shape = np.maximum(freqs, 10.0) ** (-tilt / 2)
    shape[0] = 0.0
    shape /= math.sqrt(np.mean(shape**2))
    white = rng.standard_normal(freqs.size) + 1j * rng.standard_normal(freqs.size)
    return white * shape * math.sqrt(n / 2)


def _breath(rng: np.random.Generator, rec: _Recording, n: int) -> np.ndarray:
    """Vesicular or tracheal breath noise under per-cycle inspiration/expiration envelopes."""
    rate, tracheal = rec.rate, rec.location == "Tc"
    freqs = sp_fft.rfftfreq(n, 1 / rate)
    if tracheal:  # louder, brighter (to ~1 kHz)
        shape = _highpass(freqs, 100.0, 1) * _lowpass(freqs, 400.0, 3)
    else:  # vesicular: most energy below 150 Hz, then ~12 dB less per octave (as measured)
        shape = _highpass(freqs, 40.0, 2) * _lowpass(freqs, 65.0, 2)
    shape = shape + 3e-3  # a trace of broadband content
    shape[0] = 0.0
    noise = sp_fft.irfft(_noise_spectrum(rng, freqs, n, 0.0) * shape, n)
    noise /= noise.std() or 1.0

    bounds = np.asarray(rec.breaths)  # (m+1,) s
    lengths = np.diff(bounds)  # (m,) s
    t = np.arange(n) / rate
    idx = np.clip(np.searchsorted(bounds, t, side="right") - 1, 0, lengths.size - 1)
    phase = (t - bounds[idx]) / lengths[idx]  # position within its cycle, 0..1
    amp = rng.lognormal(0, 0.15, lengths.size)  # cycle-to-cycle loudness
    fi = rec.insp_fraction
    gap, fe, exp_amp = (0.08, 0.45, 0.85) if tracheal else (0.0, 0.5, 0.45)
    env = _bump(phase / fi) + exp_amp * _bump((phase - fi - gap) / fe)
    return noise * (env * amp[idx] * (2.0 if tracheal else 1.0) + 0.03)


def _bump(u: np.ndarray) -> np.ndarray:
    """A rise-and-fall with a broad top, sqrt(sin(pi u)) over 0 < u < 1, zero elsewhere."""
    out = np.zeros_like(u)
    inside = (u > 0) & (u < 1)
    out[inside] = np.sqrt(np.sin(np.pi * u[inside]))
    return out


def _highpass(freqs: np.ndarray, corner: float, order: int) -> np.ndarray:
    r = (freqs / corner) ** (2 * order)
    return np.sqrt(r / (1 + r))


def _lowpass(freqs: np.ndarray, corner: float, order: int) -> np.ndarray:
    return 1 / np.sqrt(1 + (freqs / corner) ** (2 * order))


def _device_response(freqs: np.ndarray, device: _Device) -> np.ndarray:
    """Magnitude response: band-pass with a resonance bump (the device's colouring)."""
    centre, gain_db = device.bump
    bump = 1 + (10 ** (gain_db / 20) - 1) * np.exp(
        -0.5 * (np.log2(np.maximum(freqs, 1.0) / centre) / 0.7) ** 2)
    return _highpass(freqs, *device.highpass) * _lowpass(freqs, *device.lowpass) * bump


def _add_at(x: np.ndarray, start: int, wave: np.ndarray) -> None:
    """x[start:start+len(wave)] += wave, clipped to x."""
    lo, hi = max(start, 0), min(start + wave.size, x.size)
    if hi > lo:
        x[lo:hi] += wave[lo - start: hi - start]


def _add_heart(rng: np.random.Generator, rec: _Recording, x: np.ndarray) -> None:
    """S1/S2 pairs: low-frequency (20-150 Hz) damped tones, loudest at the left chest."""
    rate = rec.rate
    gain = {"Al": 0.9, "Ll": 0.8, "Tc": 0.25}.get(rec.location, 0.45) * rng.uniform(0.5, 1.5)
    t = np.arange(int(0.16 * rate)) / rate  # (k,) s

    def sound(low: tuple[float, float], high: tuple[float, float], width: float) -> np.ndarray:
        env = np.exp(-0.5 * ((t - 0.05) / width) ** 2)
        f1, f2 = rng.uniform(*low), rng.uniform(*high)
        tone = np.sin(2 * np.pi * f1 * t) + 0.5 * np.sin(2 * np.pi * f2 * t + rng.uniform(0, 6))
        return env * tone / np.max(np.abs(env * tone))

    s1 = sound((30.0, 55.0), (70.0, 110.0), 0.018)
    s2 = 0.7 * sound((45.0, 70.0), (90.0, 150.0), 0.013)
    beats = np.asarray(rec.heart_beats)
    systole = 0.3 * float(np.mean(np.diff(beats))) ** 0.5 if beats.size > 1 else 0.28  # s
    for beat in beats:
        a = gain * rng.lognormal(0, 0.1)
        _add_at(x, int(round((beat - 0.05) * rate)), a * s1)
        _add_at(x, int(round((beat + systole - 0.05) * rate)), a * s2)


def _crackle(rng: np.random.Generator, rate: int, fine: bool) -> np.ndarray:
    """One crackle: a sharp deflection then a few damped, slowing oscillations.

    Fine: first period 1.1-2.2 ms (two-cycle duration < 10 ms); coarse: 5.5-11 ms (2CD
    10-25 ms). Peak amplitude 1, random polarity.
    """
    f0 = rng.uniform(450, 900) if fine else rng.uniform(90, 180)  # Hz
    tau = rng.uniform(1.5, 3.0) / 1000 if fine else rng.uniform(5, 9) / 1000  # s
    t = np.arange(int(6 * tau * rate) + 2) / rate
    freq = f0 * (1 - 0.3 * t / t[-1])  # deflections widen
    phase = 2 * np.pi * np.cumsum(freq) / rate
    onset = 1 - np.exp(-t / (0.05 / f0))  # sub-millisecond rise
    wave = onset * np.exp(-t / tau) * np.sin(phase)
    return rng.choice([-1.0, 1.0]) * wave / (np.max(np.abs(wave)) or 1.0)


def _add_crackles(rng: np.random.Generator, x: np.ndarray, rate: int, start: float, end: float,
                  insp: float, fine: bool, gain: float) -> None:
    """Fine crackles late in inspiration (several); coarse early in inspiration or expiration."""
    length = end - start
    count = 3 + rng.poisson(5) if fine else 2 + rng.poisson(2)
    for _ in range(count):
        if fine:
            where = insp * rng.beta(5, 2)
        elif rng.random() < 0.7:
            where = insp * rng.beta(1.5, 4)
        else:
            where = insp + (1 - insp) * rng.beta(1.5, 5)
        loud = 1.0 if fine else 1.5  # coarse crackles are louder
        wave = loud * gain * rng.lognormal(0, 0.35) * _crackle(rng, rate, fine)
        onset = min(start + where * length, end - wave.size / rate)
        _add_at(x, int(round(max(onset, start) * rate)), wave)


def _add_wheezes(rng: np.random.Generator, x: np.ndarray, rate: int, start: float, end: float,
                 insp: float, f0: float, gain: float) -> None:
    """One (sometimes two) tonal events with harmonics, pitch drift and vibrato, ≥ 100 ms."""
    length = end - start
    for _ in range(2 if rng.random() < 0.2 else 1):
        if rng.random() < 0.7:  # expiratory
            lo, hi = start + insp * length, end
        else:
            lo, hi = start, start + insp * length
        dur = max(0.1, rng.uniform(0.3, 0.95) * (hi - lo))
        dur = min(dur, length)
        onset = rng.uniform(lo, max(lo, hi - dur))
        onset = min(max(onset, start), end - dur)
        m = int(dur * rate)
        t = np.arange(m) / rate
        pitch = f0 * rng.lognormal(0, 0.12)  # this event's pitch, Hz
        drift = np.linspace(1.0, rng.uniform(0.8, 1.2), m)
        vibrato = 1 + rng.uniform(0.005, 0.02) * np.sin(2 * np.pi * rng.uniform(3, 8) * t)
        phase = 2 * np.pi * np.cumsum(pitch * drift * vibrato) / rate
        richness = rng.uniform(0.3, 1.0)
        wave = np.zeros(m)
        for k, a in enumerate((1.0, 0.5 * richness, 0.25 * richness, 0.12 * richness), 1):
            if k * pitch * 1.25 < 0.45 * rate:
                wave += a * np.sin(k * phase)
        ramp = min(int(0.03 * rate), m // 2)
        env = np.ones(m)
        env[:ramp] = np.sin(np.linspace(0, np.pi / 2, ramp)) ** 2
        env[m - ramp:] = env[:ramp][::-1]
        _add_at(x, int(round(onset * rate)), gain * rng.lognormal(0, 0.25) * env * wave)


def _add_artifacts(rng: np.random.Generator, x: np.ndarray, rate: int, device: str) -> None:
    """Friction rustle and handling thumps in some recordings, clicks in all of them
    (`CLICK_RATE_HZ`), mains hum on some AKG ones."""
    n = x.size
    if rng.random() < 0.35:
        for _ in range(1 + rng.poisson(1.0)):
            m = int(rng.uniform(0.05, 0.4) * rate)
            at = int(rng.integers(0, max(1, n - m)))
            t = np.arange(m) / rate
            if rng.random() < 0.6:  # friction: bright rustling noise
                burst = np.diff(rng.standard_normal(m + 1)) * np.sin(np.pi * t / t[-1]) ** 2
            else:  # handling: a low thump with a click
                burst = np.sin(2 * np.pi * rng.uniform(8, 25) * t) * np.exp(-t / 0.05)
                burst[: max(1, rate // 2000)] += 1.0
            _add_at(x, at, rng.uniform(0.8, 3.0) * burst / (np.max(np.abs(burst)) or 1.0))
    m = int(0.2 * rate)  # a click: a 0.5 ms spike on a small decaying thump
    t = np.arange(m) / rate
    for _ in range(rng.poisson(CLICK_RATE_HZ * n / rate)):
        click = 0.3 * np.sin(2 * np.pi * rng.uniform(8, 25) * t) * np.exp(-t / 0.05)
        click[: max(1, rate // 2000)] += 1.0
        _add_at(x, int(rng.integers(0, max(1, n - m))), rng.uniform(0.5, 4.0) * click)
    if device == "AKGC417L" and rng.random() < 0.25:
        t = np.arange(n) / rate
        x += rng.uniform(0.01, 0.05) * (np.sin(2 * np.pi * 50 * t) + 0.3 * np.sin(
            2 * np.pi * 150 * t))


# ----------------------------------------------------------------------------- metadata


def _fmt_time(seconds: float) -> str:
    """At most 3 decimals, no trailing zeros, like the real annotations ("2.45", "0.036")."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def _fmt_value(value: float | None) -> str:
    return "NA" if value is None else str(value)


def _write_metadata(root: Path, patients: Iterable[_Patient],
                    recordings: Sequence[_Recording]) -> None:
    """Split, diagnosis and demographics files and the two description files."""
    patients = sorted(patients, key=lambda p: p.pid)
    rec_dir = root / RECORDINGS_DIR
    # like the download: the split and diagnosis files have no final newline
    ordered = sorted(recordings, key=lambda r: r.name)
    (root / SPLIT_FILE).write_text("\n".join(f"{r.name}\t{r.split}" for r in ordered))
    (root / DIAGNOSIS_FILE).write_text("\n".join(f"{p.pid}\t{p.diagnosis}" for p in patients))
    rows = [f"{p.pid}\t{_fmt_value(p.age)}\t{p.sex}\t{_fmt_value(p.bmi)}\t"
            f"{_fmt_value(p.weight)}\t{_fmt_value(p.height)}\n" for p in patients]
    (root / DEMOGRAPHICS_FILE).write_text("".join(rows))
    old = sorted(r.stored for r in recordings if r.stored != r.name)
    (rec_dir / "filename_differences.txt").write_text("".join(f"'{s}'\n" for s in old))
    last = patients[-1].pid
    (rec_dir / "filename_format.txt").write_text(
        "How the recordings are named (SYNTHETIC set written by patchmix.synth):\n\n"
        f"PID_RecIdx_Loc_Mode_Device, e.g. 101_1b1_Al_sc_Meditron\n"
        f"PID: patient number (101, 102, ..., {last})\n"
        "RecIdx: recording index of the session (1b1, 2b3, 1p1, ...)\n"
        "Loc: chest location: trachea (Tc) or anterior (A), posterior (P), lateral (L) "
        "left (l) / right (r)\n"
        "Mode: sc = single channel (locations one after the other), "
        "mc = multichannel (locations at once)\n"
        "Device: AKGC417L (AKG C417L microphone), LittC2SE (Littmann Classic II SE), "
        "Litt3200 (Littmann 3200 electronic), Meditron (WelchAllyn Meditron electronic)\n")


def _summarise(root: Path, seed: int, patients: Sequence[_Patient],
               recordings: Sequence[_Recording], seconds: float) -> SynthSummary:
    cycles = {c: 0 for c in CLASSES}
    per_split: dict[str, dict[str, int]] = {s: {c: 0 for c in CLASSES} for s in ("train", "test")}
    for r in recordings:
        for _, _, crackle, wheeze in r.cycles:
            label = CLASSES[crackle + 2 * wheeze]
            cycles[label] += 1
            per_split[r.split][label] += 1
    recs = Counter(r.split for r in recordings)
    pats = Counter(s for _, s in {(r.patient.pid, r.split) for r in recordings})
    return SynthSummary(
        root=root, seed=seed, version=VERSION, recordings=len(recordings),
        patients=len(patients), cycles=cycles, cycles_per_split=per_split,
        recordings_per_split={s: recs[s] for s in ("train", "test")},
        patients_per_split={s: pats[s] for s in ("train", "test")},
        devices={d: sum(r.device == d for r in recordings) for d in DEVICES},
        diagnoses=dict(sorted(Counter(p.diagnosis for p in patients).items())),
        renamed=tuple(sorted(r.stored for r in recordings if r.stored != r.name)),
        audio_seconds=round(sum(r.duration for r in recordings), 3), seconds=seconds)


def _readme(s: SynthSummary) -> str:
    """The data set's README: loudly synthetic, deterministic (no timings, no dates)."""
    table = "\n".join(
        f"| {split} | {s.recordings_per_split[split]} | {s.patients_per_split[split]} | "
        + " | ".join(str(s.cycles_per_split[split][c]) for c in CLASSES) + " |"
        for split in ("train", "test"))
    return f"""# SYNTHETIC DATA: NOT the ICBHI 2017 Respiratory Sound Database

**Every sound in this folder is SYNTHETIC**, written by `{GENERATOR}` version {VERSION} with
seed {s.seed} ({s.recordings} recordings, {s.patients} made-up patients, {s.audio_seconds:.0f} s
of audio). No patient exists; no number measured on it says anything about real lungs or about
published ICBHI results. It copies the layout of the real download so that code written for
ICBHI runs on it unchanged. Regenerate it with `patchmix synth OUT --recordings {s.recordings}
--seed {s.seed}`: the same seed gives byte-identical files.

| split | recordings | patients | {" | ".join(CLASSES)} |
|---|---|---|---|---|---|---|
{table}

Devices: {", ".join(f"{d} {k}" for d, k in s.devices.items())}. Renamed recordings (stored
under an old device suffix, listed in `ICBHI_final_database/filename_differences.txt`):
{len(s.renamed)}. The split is patient-disjoint, unlike the official ICBHI split.

## Modelled
- patients with a diagnosis (COPD, Healthy, URTI, ...) driving the cycle classes, demographics
  plausible for age, several sessions and chest locations per patient, sc and mc modes;
- breathing cycles of 0.2-16 s (median ~2.5 s) tiling 20-60 s recordings;
- vesicular breath noise (most energy below 150 Hz, little above 500 Hz) or tracheal (louder,
  brighter, pause between phases), inspiration louder than expiration;
- crackles: fine (< 10 ms, late inspiration, several) and coarse (15-25 ms, lower, early
  inspiration/expiration) explosive transients;
- wheezes: 100-1000 Hz tonal events with harmonics, drift and vibrato, >= 100 ms, mostly
  expiratory; "both" cycles hold both;
- heart sounds (S1/S2, 20-150 Hz), unannotated clicks in every recording, friction/handling
  bursts, mains hum;
- four devices with their own sample rate (Litt3200 4 kHz), bit depth, band-pass colouring and
  noise floor;
- per-recording difficulty (noise floor and event loudness), renamed Meditron files;
- levels and spectra calibrated to real recordings (40 ICBHI recordings, SPRSound); wheezes
  stay about 13 dB more prominent than real ones.

## Not modelled
- real pathophysiology beyond these textbook cues; rhonchi, squawks, stridor, coughs, speech;
- annotator disagreement or labels that contradict the sound;
- the real split's patient overlap and device/split imbalance; recordings over 60 s.
"""
