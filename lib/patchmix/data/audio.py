"""Waveforms of respiratory cycles: steps 1-4 of the recipe (docs/recipe.md#preprocessing).

1. load a recording (any WAV subtype soundfile reads; stereo is averaged to mono) and resample it
   to 16 kHz with torchaudio's `Resample` transform (default windowed-sinc settings);
2. linear fade in and out of 1,000 samples over the whole recording;
3. cut each cycle ``[int(start·16000), int(end·16000))``, clamped to the recording;
4. fix its length to 8 s: longer cycles keep their first 8 s; shorter ones (and exactly 8 s) are
   tiled, truncated and faded out over 1,000 samples — or, with ``pad="zero"``, centred in zeros.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as T

from patchmix.config import FeatureConfig
from patchmix.data.errors import DataError


@dataclass(frozen=True)
class WavInfo:
    """What the reader needs of a WAV header."""

    sample_rate: int
    channels: int
    frames: int
    subtype: str  # soundfile's name, e.g. "PCM_16", "PCM_24", "FLOAT"

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    @property
    def bits(self) -> str:
        """Bit depth as a label: "16", "24", "32", "8" or "float"/"double"."""
        if self.subtype.startswith("PCM_"):
            return self.subtype[4:]
        if self.subtype == "PCM_U8":
            return "8"
        return self.subtype.lower()


def wav_info(path: str | os.PathLike) -> WavInfo:
    """Header facts of an audio file; a clear `DataError` for unreadable or truncated files."""
    path = Path(path)
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as err:
        raise DataError(f"{path}: unreadable audio file ({_short(err)})") from None
    declared, available = _riff_data_sizes(path)
    if declared is not None and available is not None and available < declared:
        raise DataError(
            f"{path}: truncated WAV: the header declares {declared} bytes of audio, "
            f"the file holds {available}"
        )
    if info.frames <= 0 or info.samplerate <= 0:
        raise DataError(f"{path}: the WAV holds no audio")
    return WavInfo(info.samplerate, info.channels, info.frames, info.subtype)


def _short(err: Exception) -> str:
    return str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__


def _riff_data_sizes(path: Path) -> tuple[int | None, int | None]:
    """(declared, available) bytes of a RIFF WAV's data chunk; (None, None) if not plain RIFF."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None, None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                if chunk_size == 0xFFFFFFFF:  # streamed WAV with no size
                    return None, None
                return chunk_size, size - pos - 8
            pos += 8 + chunk_size + (chunk_size & 1)
    return None, None


def load_wav(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """A recording as a float32 mono waveform in [-1, 1) and its sample rate.

    PCM is scaled by 2^(bits-1) as torchaudio does; float WAVs are read as they are; several
    channels are averaged. The file is checked first (`wav_info`: unreadable, truncated or
    empty is a `DataError` naming it), and so are its samples: NaN or infinity, which only a
    float WAV can hold, is a `DataError` too, never a silent NaN feature.
    """
    wav_info(path)
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise DataError(f"{path}: {bad} audio samples are not finite numbers (NaN or infinity)")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32)), int(rate)


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Resample the last axis exactly as ``torchaudio.transforms.Resample(orig, new)`` does.

    The transform's kernel is computed in float64 and cached as float32, which differs from
    `torchaudio.functional.resample` in the last bits; the official code uses the transform.
    """
    if orig_rate == new_rate:
        return waveform
    with torch.no_grad():
        return _resampler(orig_rate, new_rate)(waveform)


@functools.lru_cache(maxsize=8)
def _resampler(orig_rate: int, new_rate: int) -> T.Resample:
    return T.Resample(orig_rate, new_rate)  # default sinc_interp_hann, width 6, rolloff 0.99


def linear_fade(waveform: torch.Tensor, fade_in: int, fade_out: int) -> torch.Tensor:
    """Linear fade in over the first `fade_in` and out over the last `fade_out` samples.

    Ramps are ``linspace(0, 1, n)`` and ``1 - linspace(0, 1, n)``, bit for bit torchaudio's
    linear `Fade`: the first faded-in and the last faded-out sample are 0. Returns a new tensor.
    """
    n = waveform.shape[-1]
    gain = torch.ones(n, dtype=waveform.dtype, device=waveform.device)
    if fade_in > 0:
        k = min(fade_in, n)
        gain[:k] = torch.linspace(0.0, 1.0, fade_in, dtype=waveform.dtype)[:k]
    if fade_out > 0:
        k = min(fade_out, n)
        ramp = 1.0 - torch.linspace(0.0, 1.0, fade_out, dtype=waveform.dtype)  # bit-exact
        gain[n - k:] *= ramp[fade_out - k:]
    return waveform * gain


def cut(waveform: torch.Tensor, start_s: float, end_s: float, rate: int) -> torch.Tensor:
    """Samples ``[int(start·rate), int(end·rate))`` of the last axis, clamped to its length."""
    n = waveform.shape[-1]
    lo = min(int(start_s * rate), n)
    hi = min(int(end_s * rate), n)
    return waveform[..., lo:hi]


def cut_samples(start_s: float, end_s: float, duration_s: float,
                rate: int = FeatureConfig.sample_rate) -> int:
    """How many samples `cut` takes at `rate` for a span of a recording `duration_s` long (0:
    the span holds no sample, and there is nothing to cut)."""
    return int(min(end_s, duration_s) * rate) - int(start_s * rate)


def fix_length(cycle: torch.Tensor, n_samples: int, pad: str = FeatureConfig.pad,
               fade_samples: int = 1_000) -> torch.Tensor:
    """A 1-D cycle brought to exactly `n_samples` (step 4 of docs/recipe.md#preprocessing).

    Longer cycles keep their first `n_samples`. Otherwise ``pad="repeat"`` tiles the cycle
    ⌈n_samples / len⌉ times, truncates and applies a linear fade-out of `fade_samples` (also to a
    cycle of exactly `n_samples`, as the official code does); ``pad="zero"`` centres it in zeros.
    """
    n = cycle.shape[-1]
    if n == 0:
        raise ValueError("cannot pad an empty cycle (shorter than one sample after resampling)")
    if n > n_samples:
        return cycle[..., :n_samples]
    if pad == "repeat":
        tiled = cycle.repeat(math.ceil(n_samples / n))[:n_samples]
        return linear_fade(tiled, 0, fade_samples)
    if pad == "zero":
        out = torch.zeros(n_samples, dtype=cycle.dtype)
        offset = (n_samples - n) // 2
        out[offset:offset + n] = cycle
        return out
    raise ValueError(f"pad must be 'repeat' or 'zero', not {pad!r}")


def prepare_recording(waveform: torch.Tensor, rate: int,
                      cfg: FeatureConfig | None = None) -> torch.Tensor:
    """Steps 1-2 on a loaded waveform: resample to ``cfg.sample_rate`` and fade both ends."""
    cfg = cfg or FeatureConfig()
    x = resample(waveform, rate, cfg.sample_rate)  # (samples at 16 kHz,)
    return linear_fade(x, cfg.fade_samples, cfg.fade_samples)


def recording_cycles(wav_path: str | os.PathLike, starts: Sequence[float],
                     ends: Sequence[float], cfg: FeatureConfig | None = None) -> torch.Tensor:
    """The fixed-length cycles of one recording: steps 1-4 of docs/recipe.md#preprocessing.

    Args:
        wav_path: the recording (any rate, PCM 8-32 bit or float, mono or multichannel).
        starts, ends: cycle boundaries in seconds, as in the annotation file.
        cfg: preprocessing settings; the official recipe by default.

    Returns:
        Tensor of shape (n_cycles, cfg.cycle_samples) — (n, 128000) by default — float32.
    """
    cfg = cfg or FeatureConfig()
    if len(starts) != len(ends):
        raise ValueError(f"{len(starts)} starts but {len(ends)} ends")
    waveform, rate = load_wav(wav_path)
    x = prepare_recording(waveform, rate, cfg)  # (samples,)
    out = torch.empty(len(starts), cfg.cycle_samples, dtype=torch.float32)
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        piece = cut(x, float(start), float(end), cfg.sample_rate)
        try:
            out[i] = fix_length(piece, cfg.cycle_samples, cfg.pad, cfg.fade_samples)
        except ValueError as err:
            raise ValueError(f"{wav_path}: cycle {i} [{start}, {end}) s: {err}") from None
    return out
