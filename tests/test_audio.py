"""Cycle waveforms: every step of docs/recipe.md#preprocessing (1-4) against hand-checked
values and against an independent pipeline built from torchaudio's own transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.transforms as T

from patchmix.config import FeatureConfig
from patchmix.data.audio import cut, fix_length, linear_fade, load_wav, recording_cycles
from patchmix.data.icbhi import read_icbhi


def reference_cycles(path, starts, ends, pad: str = "repeat") -> torch.Tensor:
    """The official recipe spelled out with torchaudio's transforms (no patchmix code)."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    x = torch.from_numpy(data.T.copy()).mean(0, keepdim=True)  # (1, samples)
    if rate != 16000:
        x = T.Resample(rate, 16000)(x)
    x = T.Fade(fade_in_len=1000, fade_out_len=1000, fade_shape="linear")(x)
    out = []
    for s, e in zip(starts, ends, strict=True):
        lo, hi = min(int(s * 16000), x.shape[1]), min(int(e * 16000), x.shape[1])
        c = x[:, lo:hi]
        if c.shape[1] > 128000:
            c = c[:, :128000]
        elif pad == "repeat":
            c = c.repeat(1, math.ceil(128000 / c.shape[1]))[:, :128000]
            c = T.Fade(fade_in_len=0, fade_out_len=1000, fade_shape="linear")(c)
        else:
            z = torch.zeros(1, 128000)
            d = 128000 - c.shape[1]
            z[:, d // 2: d // 2 + c.shape[1]] = c
            c = z
        out.append(c[0])
    return torch.stack(out)


def test_linear_fade_matches_torchaudio_fade():
    x = torch.randn(3000)
    ours = linear_fade(x, 1000, 1000)
    theirs = T.Fade(fade_in_len=1000, fade_out_len=1000, fade_shape="linear")(x[None])[0]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert ours[0] == 0 and ours[-1] == 0 and ours[1500] == x[1500]


def test_linear_fade_hand_values_and_short_input():
    torch.testing.assert_close(linear_fade(torch.ones(6), 3, 0),
                               torch.tensor([0.0, 0.5, 1.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(linear_fade(torch.ones(6), 0, 3),
                               torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 0.0]))
    assert linear_fade(torch.ones(2), 5, 5).shape == (2,)  # longer fades than input: no error


def test_cut_truncates_indices_and_clamps():
    x = torch.arange(100.0)
    assert cut(x, 0.0149, 0.0301, 1000).tolist() == list(range(14, 30))  # int(), not round()
    assert cut(x, 0.09, 0.5, 1000).tolist() == list(range(90, 100))  # end clamped
    assert cut(x, 0.2, 0.5, 1000).numel() == 0  # start clamped too


def test_fix_length_repeat_truncate_zero():
    c = torch.arange(1.0, 4.0)  # [1, 2, 3]
    r = fix_length(c, 8, "repeat", fade_samples=2)
    torch.testing.assert_close(r, torch.tensor([1.0, 2, 3, 1, 2, 3, 1, 0]))  # faded: x1, x0
    assert fix_length(torch.arange(10.0), 8, "repeat", 2).tolist() == list(range(8))  # no fade
    exact = fix_length(torch.ones(8), 8, "repeat", 2)  # exactly the length: still faded out
    assert exact.tolist() == [1, 1, 1, 1, 1, 1, 1, 0]
    z = fix_length(c, 8, "zero", 2)
    assert z.tolist() == [0, 0, 1, 2, 3, 0, 0, 0]  # centred: offset (8 - 3) // 2
    with pytest.raises(ValueError, match="empty cycle"):
        fix_length(torch.empty(0), 8)
    with pytest.raises(ValueError, match="pad"):
        fix_length(c, 8, "reflect")


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "PCM_U8", "FLOAT", "DOUBLE"])
def test_load_wav_any_subtype_scaled_like_torchaudio(tmp_path, subtype):
    x = np.sin(np.linspace(0, 60, 4000)) * 0.5
    path = tmp_path / "a.wav"
    sf.write(str(path), x, 4000, subtype=subtype)
    y, rate = load_wav(path)
    assert rate == 4000 and y.dtype == torch.float32 and y.shape == (4000,)
    tol = {"PCM_U8": 1e-2, "PCM_16": 1e-4}.get(subtype, 1e-6)
    assert np.abs(y.numpy() - x).max() < tol


def test_load_wav_averages_channels(tmp_path):
    x = np.stack([np.full(100, 0.5), np.full(100, -0.25)], axis=1)
    sf.write(str(tmp_path / "s.wav"), x, 8000, subtype="FLOAT")
    y, _ = load_wav(tmp_path / "s.wav")
    torch.testing.assert_close(y, torch.full((100,), 0.125))


@pytest.mark.parametrize("rate", [4000, 44100])
@pytest.mark.parametrize("pad", ["repeat", "zero"])
def test_recording_cycles_match_reference_synthetic(tmp_path, rate, pad):
    rng = np.random.default_rng(rate)
    path = tmp_path / "r.wav"
    sf.write(str(path), 0.2 * rng.standard_normal(rate * 12), rate, subtype="PCM_24")
    starts, ends = [0.0, 0.5, 2.25, 11.9], [0.5, 2.25, 11.9, 13.0]  # short, long (>8 s), past end
    ours = recording_cycles(path, starts, ends, FeatureConfig(pad=pad))
    assert ours.shape == (4, 128000) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference_cycles(path, starts, ends, pad), rtol=0, atol=0)


def test_recording_cycles_match_reference_on_real_recordings(icbhi_mini):
    df = read_icbhi(icbhi_mini)
    for rate in (4000, 44100):  # one Litt3200 (4 kHz) and one 44.1 kHz recording
        rec = df[df.sample_rate == rate].groupby("recording").head(100)
        path = rec["path"].iloc[0]
        rec = rec[rec.path == path]
        ours = recording_cycles(path, rec.start.tolist(), rec.end.tolist())
        ref = reference_cycles(path, rec.start.tolist(), rec.end.tolist())
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_recording_cycles_argument_errors(tmp_path):
    path = tmp_path / "r.wav"
    sf.write(str(path), np.zeros(4000), 4000)
    with pytest.raises(ValueError, match="2 starts but 1 ends"):
        recording_cycles(path, [0.0, 0.1], [0.2])
    with pytest.raises(ValueError, match=r"cycle 0 \[5.0, 6.0\) s: cannot pad an empty cycle"):
        recording_cycles(path, [5.0], [6.0])
