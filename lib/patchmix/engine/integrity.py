"""Whether a finished run's files agree with each other and, for shipped runs, with what was
shipped; and whether two runs' files are the same (`differing_files`).

Every table and figure is made from a run's files, and the notebooks read its scores from
``summary.json``. A summary edited by hand, a prediction file deleted or a weight file damaged
must therefore stop the reader with one line naming the run and the file, never reach a
table. Two checks, both cheap (a run's files are a few hundred kilobytes):

- `check_consistent`, for every finished run (run cache or shipped): each protocol's Sp, Se,
  Score, per-class recall and confusion in ``summary.json`` are recomputed from its
  ``predictions-<protocol>.csv`` and read back from ``metrics.jsonl`` at the epoch it chose;
- `verify_shipped`, for shipped runs: the SHA-256 of each file against the checksums that
  `patchmix.companion.plan.export` recorded in ``PROVENANCE.json`` (a run folder changed in any
  byte, weights included, or a file missing or added).

A run cache's weights are checked by neither (nothing but the run itself records them);
`differing_files`, which ``plan --compare`` uses, compares them with the twin's.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from patchmix.atomic import LOCK_NAME
from patchmix.engine.metrics import icbhi_scores

PROVENANCE = "PROVENANCE.json"  # beside shipped runs: where they come from (`plan.export`)
FILES = "files"  # the key of a shipped run's checksums in its PROVENANCE.json entry
RESTORE = "restore shipped/ (git checkout -- shipped) or retrain it (make reproduce)"


class RunIntegrityError(ValueError):
    """A finished run whose files disagree; the message names the run and the file."""


def checksums(run_dir: Path) -> dict[str, str]:
    """SHA-256 (hex) of every file in `run_dir`, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.iterdir()) if p.is_file()}


def _same(a: Any, b: Any) -> bool:
    """Equal numbers (NaN equal to NaN), to the rounding a JSON round trip may leave."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)


def _history(run_dir: Path) -> dict[Any, dict[str, Any]]:
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        return {e["epoch"]: e for e in map(json.loads, filter(str.strip, lines))}
    except (OSError, ValueError, KeyError, TypeError):
        raise RunIntegrityError(f"{run_dir}: metrics.jsonl is missing or not a per-epoch "
                                "history") from None


def check_consistent(run_dir: Path, summary: dict[str, Any]) -> None:
    """Raise RunIntegrityError unless every protocol of `summary` (the run's ``summary.json``)
    is what its prediction file and its per-epoch history say."""
    history = _history(run_dir)
    for protocol, reported in summary["protocols"].items():
        where = f"{run_dir}: summary.json's {protocol!r} protocol"
        path = run_dir / f"predictions-{protocol}.csv"
        try:
            frame = pd.read_csv(path, usecols=["label", "pred"])
            n_classes = len(reported["confusion"])
            scores = icbhi_scores(frame["label"].to_numpy(), frame["pred"].to_numpy(),
                                  n_classes)
        except (OSError, ValueError, KeyError, TypeError) as err:
            detail = "missing" if not path.is_file() else f"unreadable ({type(err).__name__})"
            raise RunIntegrityError(f"{where}: {path.name} is {detail}") from None
        for field in ("sp", "se", "score", "per_class_recall", "confusion"):
            if not _same(reported.get(field), scores[field]):
                raise RunIntegrityError(f"{where}: {field} {reported.get(field)!r} is not what "
                                        f"{path.name} gives ({scores[field]!r})")
        epoch = history.get(reported.get("epoch"))
        if epoch is None or not all(_same(reported[m], epoch.get(f"test_{m}"))
                                    for m in ("sp", "se", "score")):
            raise RunIntegrityError(f"{where}: its scores are not those metrics.jsonl holds "
                                    f"for epoch {reported.get('epoch')!r}")
    if "last" in summary["protocols"] and summary["protocols"]["last"]["epoch"] != max(history):
        raise RunIntegrityError(f"{run_dir}: summary.json's last epoch is not metrics.jsonl's")


@functools.lru_cache(maxsize=8)
def _manifest(path: Path, _mtime: int) -> dict[str, dict[str, Any]]:
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        return {r["run"]: r for r in runs}
    except (OSError, ValueError, KeyError, TypeError):
        raise RunIntegrityError(f"{path}: missing or not a shipped set's provenance") from None


def shipped_entry(folder: Path, key: str) -> dict[str, Any]:
    """The ``PROVENANCE.json`` entry of shipped run `key` in `folder` (label, seed, checksums)."""
    path = folder / PROVENANCE
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        raise RunIntegrityError(f"{folder}: no {PROVENANCE} beside the shipped runs") from None
    entry = _manifest(path, mtime).get(key)
    if entry is None or not isinstance(entry.get(FILES), dict):
        raise RunIntegrityError(f"{folder / key}: {PROVENANCE} records no checksums for it "
                                "(a set exported before they were recorded: make ship)")
    return entry


def verify_shipped(folder: Path, key: str) -> None:
    """Raise RunIntegrityError unless shipped run `key`'s files are byte for byte those
    exported (`checksums` recorded in `folder`'s ``PROVENANCE.json``)."""
    entry = shipped_entry(folder, key)
    run = f"{folder / key} ({entry.get('label', '?')} seed {entry.get('seed', '?')})"
    expected, actual = entry[FILES], checksums(folder / key)
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            raise RunIntegrityError(f"{run}: {name} is missing; {RESTORE}")
        if name not in expected:
            raise RunIntegrityError(f"{run}: {name} was not shipped with it; remove it")
        if expected[name] != actual[name]:
            raise RunIntegrityError(f"{run}: {name} has changed since it was shipped; "
                                    f"{RESTORE}")


TIMING = ("seconds_this_session",)  # summary.json fields that differ between equal runs


def differing_files(a: Path, b: Path, kept: Sequence[str] | None = None) -> list[str]:
    """The files of run folders `a` and `b` that are not equal to the last bit, by name: a
    file one has and the other lacks, a summary beyond its timing, a checkpoint by the
    tensors it holds, anything else by its bytes. `kept` (name patterns) limits the
    comparison to the files a shipped run keeps; weights only one side keeps then count
    as no difference. The folder's lock (`patchmix.atomic.LOCK_NAME`, the last writer's
    process id) is not a file of the run."""
    names = {p.name for folder in (a, b) for p in folder.iterdir()
             if p.is_file() and p.name != LOCK_NAME}
    if kept is not None:
        names = {n for n in names if any(fnmatch.fnmatch(n, k) for k in kept)}
        names -= {n for n in names if n.endswith(".pt")
                  and not ((a / n).is_file() and (b / n).is_file())}
    out = []
    for name in sorted(names):
        x, y = a / name, b / name
        if not (x.is_file() and y.is_file()):
            out.append(name)
        elif name == "summary.json":
            left, right = (json.loads(p.read_text(encoding="utf-8")) for p in (x, y))
            if ({k: v for k, v in left.items() if k not in TIMING}
                    != {k: v for k, v in right.items() if k not in TIMING}):
                out.append(name)
        elif name.endswith(".pt"):
            if not _same_contents(_load(x), _load(y)):
                out.append(name)
        elif x.read_bytes() != y.read_bytes():
            out.append(name)
    return out


def _load(path: Path) -> Any:
    import torch  # noqa: PLC0415 - only where checkpoints are compared

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - a damaged file differs from any readable one
        return path.read_bytes()


def _same_contents(a: Any, b: Any) -> bool:
    """Checkpoints compared by what they hold: `torch.save` writes a new serialization id
    each time, so two saves of equal weights are not equal bytes."""
    import torch  # noqa: PLC0415

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_contents(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_contents(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - e.g. arrays, whose == is elementwise
        return repr(a) == repr(b)
