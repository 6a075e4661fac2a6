"""Kaldi filterbank features (steps 5-6 of docs/recipe.md#preprocessing) and their on-disk cache.

`fbank` turns 8 s cycles into normalised 798 × 128 log-mel images. `cycle_features` computes
them for a whole cycle table once, in parallel worker processes, and keeps them in a
memory-mapped ``.npy`` file keyed by the preprocessing config and the identity (name, size,
mtime) of every source WAV, so that a second call opens the file without touching any audio.

The cache is checked on every open against the CRC-32 written beside it (``.json``): a damaged
or altered file is rebuilt, never used. Its space is reserved on disk before it is filled, worker
processes die with their parent, and temporaries of killed runs are removed.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchaudio.compliance.kaldi as kaldi
from tqdm import tqdm

from patchmix.atomic import (
    atomic_path,
    clean_temporaries,
    ensure_space,
    reserve,
    write_json_atomic,
)
from patchmix.config import FeatureConfig, config_hash, to_dict
from patchmix.data.audio import recording_cycles
from patchmix.data.errors import DataError

CACHE_ENV = "PATCHMIX_CACHE"
# fork starts workers in milliseconds and needs no `if __name__ == "__main__"` guard in the
# caller's script; workers run single-threaded torch, as DataLoader workers do. Spawn elsewhere.
_START_METHOD = "fork" if sys.platform == "linux" else "spawn"
CACHE_VERSION = 1  # bump when the cached computation changes in a way the config does not show
_CHUNK = 1 << 24  # bytes per step of the checksum


def fbank(waveforms: torch.Tensor, cfg: FeatureConfig | None = None) -> torch.Tensor:
    """Normalised Kaldi fbank of each waveform: (n, samples) → (n, frames, n_mels).

    Exactly ``torchaudio.compliance.kaldi.fbank(x, htk_compat=True, sample_frequency=16000,
    use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)``
    per row, then ``(f - mean) / (2 · std)`` with the AudioSet statistics. For 8 s at 16 kHz
    that is (n, 798, 128).
    """
    cfg = cfg or FeatureConfig()
    if waveforms.ndim != 2:
        raise ValueError(f"expected (n, samples), got shape {tuple(waveforms.shape)}")
    out = [
        kaldi.fbank(
            w[None],  # (1, samples)
            htk_compat=True,
            sample_frequency=cfg.sample_rate,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=cfg.n_mels,
            dither=0.0,
            frame_shift=cfg.frame_shift_ms,
            frame_length=cfg.frame_length_ms,
        )
        for w in waveforms.float()
    ]  # n × (frames, n_mels)
    if not out:
        return torch.empty(0, cfg.n_frames, cfg.n_mels)
    return (torch.stack(out) - cfg.norm_mean) / (2 * cfg.norm_std)


def default_cache_dir() -> Path:
    """``$PATCHMIX_CACHE`` if set, else ``$XDG_CACHE_HOME/patchmix``, else
    ``~/.cache/patchmix``; a ValueError when none of them can be had (``HOME`` empty)."""
    for env, below in ((CACHE_ENV, ()), ("XDG_CACHE_HOME", ("patchmix",)),
                       ("HOME", (".cache", "patchmix"))):
        if os.environ.get(env):
            return Path(os.environ[env], *below)
    raise ValueError(f"no folder for the feature cache: HOME is empty; set {CACHE_ENV}")


def cache_key(cycles: pd.DataFrame, cfg: FeatureConfig) -> str:
    """Hash of the preprocessing config and of each row's source (file name, size, mtime) and
    cycle boundaries, in row order. Only `os.stat` is called: no audio is read."""
    stats: dict[str, list[int]] = {}
    for path in cycles["path"].unique():
        st = os.stat(path)
        stats[path] = [st.st_size, st.st_mtime_ns]
    rows = [
        [Path(p).name, *stats[p], repr(float(s)), repr(float(e))]
        for p, s, e in zip(cycles["path"], cycles["start"], cycles["end"], strict=True)
    ]
    return config_hash({"version": CACHE_VERSION, "features": to_dict(cfg), "rows": rows}, 24)


def cycle_features(cycles: pd.DataFrame, cfg: FeatureConfig | None = None, *,
                   cache_dir: str | os.PathLike | None = None, workers: int | None = None,
                   progress: bool = True) -> np.ndarray:
    """Features of every row of a cycle table (from `patchmix.data.icbhi.read_icbhi`), cached.

    Args:
        cycles: needs columns ``path``, ``start``, ``end``; row i of the result is row i here.
        cfg: preprocessing settings (the official recipe by default).
        cache_dir: where the cache lives (`default_cache_dir()` by default).
        workers: worker processes for a cold cache (default: all cores, at most one per
            recording); 0 or 1 computes in this process.
        progress: show a progress bar while computing.

    Returns:
        A read-only memory-mapped float32 array of shape (n, 798, 128) for the defaults.
    """
    cfg = cfg or FeatureConfig()
    missing = {"path", "start", "end"} - set(cycles.columns)
    if missing:
        raise ValueError(f"the cycle table lacks columns {sorted(missing)}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    shape = (len(cycles), cfg.n_frames, cfg.n_mels)
    key = cache_key(cycles, cfg)
    final = cache / f"features-{key}.npy"
    cached = _open_cached(final, shape)
    if cached is not None:
        return cached

    cache.mkdir(parents=True, exist_ok=True)
    clean_temporaries(cache)  # of killed runs only: another live process may be filling one
    groups = _recording_groups(cycles)
    n_workers = min(workers if workers is not None else (os.cpu_count() or 1), len(groups))
    nbytes = int(np.prod(shape)) * 4
    ensure_space(cache, nbytes + 2**20, f"the features of {len(cycles)} cycles")
    started = time.perf_counter()
    with atomic_path(final) as partial:
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=shape).flush()
        # on disk now, so that no write into the memory map can find the disk full (SIGBUS)
        reserve(partial, partial.stat().st_size, f"the features of {len(cycles)} cycles")
        with tqdm(total=len(cycles), desc="features", unit="cycle",
                  disable=not progress) as bar:
            if n_workers <= 1:
                for job in groups:
                    bar.update(_fill(str(partial), *job, cfg))
            else:
                _fill_in_workers(partial, groups, cfg, n_workers, bar)
        _fsync(partial)
        meta = {"key": key, "shape": list(shape), "features": to_dict(cfg),
                "crc32": _checksum(np.load(partial, mmap_mode="r")),
                "recordings": len(groups), "seconds": round(time.perf_counter() - started, 3)}
        write_json_atomic(final.with_suffix(".json"), meta)
    return np.load(final, mmap_mode="r")  # just written and checked: no second checksum


def _fill_in_workers(partial: Path, groups: list[tuple[str, list[int], list[float],
                                                      list[float]]],
                     cfg: FeatureConfig, n_workers: int, bar: tqdm) -> None:
    """`_fill` every recording group in `n_workers` worker processes, updating `bar`."""
    pool = None
    try:
        # the pool forks its workers and starts its thread in the first submit: an interrupt
        # in the middle of that leaves it unable to shut down, so Ctrl-C and SIGTERM wait
        # (held, not lost) until every job is queued
        with _interrupts_deferred():
            pool = ProcessPoolExecutor(n_workers, mp_context=get_context(_START_METHOD),
                                       initializer=_worker_init, initargs=(os.getpid(),))
            futures = [pool.submit(_fill, str(partial), *job, cfg) for job in groups]
        for future in as_completed(futures):
            bar.update(future.result())
    except BaseException:
        # a failed recording, Ctrl-C or SIGTERM: stop now. Waiting for the running jobs (what
        # `with` does) could take minutes, so the workers are killed (before Python 3.14 only
        # the pool's own `_processes` lists them)
        if pool is not None:
            workers = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in workers:
                worker.kill()
        raise
    pool.shutdown()


def _open_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array if it is there, whole and unchanged; None (after removing it) for a
    missing, malformed or altered file. Other errors (e.g. out of memory) are raised: a valid
    cache is never removed because of them."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, EOFError):  # not an .npy file, or cut short
        array = None
    meta = path.with_suffix(".json")
    try:
        expected = json.loads(meta.read_text()).get("crc32") if meta.is_file() else None
    except ValueError:  # a damaged meta file: the cache cannot be vouched for
        expected = None
    if (array is None or array.shape != shape or array.dtype != np.float32
            or expected is None or _checksum(array) != expected):
        path.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        return None
    return array


def _checksum(array: np.ndarray) -> int:
    """CRC-32 of the array's bytes (about 2 GB/s: a full read, once per open)."""
    view = memoryview(np.ascontiguousarray(array)).cast("B")
    crc = 0
    for start in range(0, len(view), _CHUNK):
        crc = zlib.crc32(view[start:start + _CHUNK], crc)
    return crc


_INTERRUPTS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back (blocked, delivered on leaving) while the block runs."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _INTERRUPTS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_init(parent: int) -> None:
    """A feature worker: single-threaded torch (as DataLoader workers), and dies with its
    parent, however the parent ends (Linux: the kernel sends SIGKILL when it goes)."""
    # forked with the parent's handlers and with interrupts held: the parent handles Ctrl-C
    # (it reaches the whole terminal group) and SIGTERM ends a worker at once
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _INTERRUPTS)
    torch.set_num_threads(1)
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _recording_groups(cycles: pd.DataFrame) -> list[tuple[str, list[int], list[float],
                                                          list[float]]]:
    """(path, row positions, starts, ends) per recording, largest first (better load balance)."""
    positions = pd.Series(np.arange(len(cycles)), index=cycles.index)
    groups = []
    for path, frame in cycles.groupby("path", sort=True):
        groups.append((str(path), positions[frame.index].tolist(),
                       frame["start"].astype(float).tolist(), frame["end"].astype(float).tolist()))
    return sorted(groups, key=lambda g: -len(g[1]))


def _fill(array_path: str, wav_path: str, rows: Sequence[int], starts: Sequence[float],
          ends: Sequence[float], cfg: FeatureConfig) -> int:
    """Compute one recording's cycles and write them into their rows of the array."""
    feats = fbank(recording_cycles(wav_path, starts, ends, cfg), cfg)  # (k, frames, mels)
    if not torch.isfinite(feats).all():
        raise DataError(f"{wav_path}: its features are not finite numbers (check "
                        "data.features: norm_std, frame settings)")
    array = np.load(array_path, mmap_mode="r+")
    array[np.asarray(rows)] = feats.numpy()
    array.flush()
    del array
    return len(rows)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
