"""Safe files: atomic writes, one writer per folder, no temporaries left behind, space first.

Results, checkpoints and caches go through here, so a crash or an interrupt never leaves a
half-written file under its final name:

- `atomic_path` yields a temporary path beside the target (named after this process) and
  renames it onto the target only when the block succeeds; a failing block removes it.
- `exclusive` holds a folder's lock for as long as one process writes into it (a run folder, a
  synthetic data set); a second process gets a one-line error instead of mixing its files in.
- `clean_temporaries` removes what a killed process (SIGKILL leaves no chance to clean up)
  left: temporaries of processes that no longer run, or all of them in a folder one holds.
- `ensure_space` says how much space a write needs before it starts, instead of the write
  failing half-way (or, for a memory map, the process dying of SIGBUS).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9a-f]{32}\.tmp$")
LOCK_NAME = ".lock"


class FolderBusy(ValueError):
    """Another process holds the folder's lock; the message names the folder and the process."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds,
    remove it if the block raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def clean_temporaries(folder: str | os.PathLike, *, all_of_them: bool = False) -> int:
    """Remove the temporaries of `atomic_path` in `folder` whose process no longer runs (all
    of them with `all_of_them`, for a folder this process holds with `exclusive`); return how
    many. Temporaries without a process id (older versions) count as stale."""
    removed = 0
    for path in Path(folder).glob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if all_of_them or match is None or not _running(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextmanager
def exclusive(folder: str | os.PathLike, what: str = "another process", *,
              wait: bool = False) -> Iterator[Path]:
    """Hold `folder`'s lock (``.lock``, created with the folder) while the block runs.

    Raises `FolderBusy` naming the folder and the holder's process id when another process
    holds it, or with `wait` waits for it. The lock is the kernel's (``flock``): it goes with
    the process, however it ends.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise FolderBusy(f"{folder}: {what} (process {holder}) is writing into this "
                             "folder; wait for it to finish or use another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock


def ensure_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """An OSError (ENOSPC) saying how much `what` needs unless `folder`'s file system has
    `needed` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"no space left on device for {what}: needs "
                      f"{_size(needed)}, {_size(free)} free in {folder}")


def reserve(path: str | os.PathLike, size: int, what: str) -> None:
    """Allocate `size` bytes of `path` on disk now (``posix_fallocate``), so that writing into
    them later (a memory map) cannot find the disk full; ENOSPC says how much was needed."""
    if not hasattr(os, "posix_fallocate"):  # not on macOS: the free-space check must do
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise OSError(errno.ENOSPC, f"no space left on device for {what}: needs "
                      f"{_size(size)} in {Path(path).parent}") from None
    finally:
        os.close(fd)


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
