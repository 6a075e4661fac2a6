"""Fbank features (steps 5-6 of docs/recipe.md#preprocessing) and the on-disk feature cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

import patchmix.data.audio
import patchmix.data.features as features
from patchmix.config import FeatureConfig
from patchmix.data.audio import recording_cycles
from patchmix.data.features import cache_key, cycle_features, fbank
from patchmix.data.icbhi import read_icbhi


def direct_fbank(w: torch.Tensor) -> torch.Tensor:
    """Steps 5-6 of docs/recipe.md#preprocessing written out with the paper's exact arguments."""
    f = kaldi.fbank(w[None], htk_compat=True, sample_frequency=16000, use_energy=False,
                    window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
    return (f - (-4.2677393)) / (4.5689974 * 2)


def test_fbank_matches_direct_kaldi_call_on_a_real_recording(icbhi_mini):
    df = read_icbhi(icbhi_mini)
    rec = df[df.recording == "104_1b1_Ar_sc_Litt3200"]  # 4 kHz, 16-bit
    waves = recording_cycles(rec.path.iloc[0], rec.start.tolist()[:3], rec.end.tolist()[:3])
    ours = fbank(waves)
    assert ours.shape == (3, 798, 128) and ours.dtype == torch.float32
    for i in range(3):
        torch.testing.assert_close(ours[i], direct_fbank(waves[i]), rtol=0, atol=0)


def test_fbank_shape_and_errors():
    assert FeatureConfig().n_frames == 798 and FeatureConfig().cycle_samples == 128000
    assert fbank(torch.zeros(0, 128000)).shape == (0, 798, 128)
    with pytest.raises(ValueError, match=r"expected \(n, samples\)"):
        fbank(torch.zeros(128000))


@pytest.fixture(scope="module")
def mini_cycles(icbhi_mini):
    return read_icbhi(icbhi_mini)


def test_cache_cold_then_warm_without_touching_audio(mini_cycles, tmp_path, monkeypatch):
    df = mini_cycles
    cold = cycle_features(df, cache_dir=tmp_path, workers=2, progress=False)
    assert cold.shape == (93, 798, 128) and isinstance(cold, np.memmap)
    assert not cold.flags.writeable
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")

    def no_audio(*args, **kwargs):
        raise AssertionError("a warm cache must not read audio")

    monkeypatch.setattr(patchmix.data.audio, "load_wav", no_audio)
    monkeypatch.setattr(features, "recording_cycles", no_audio)
    warm = cycle_features(df, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(np.asarray(warm), np.asarray(cold))


def test_cache_rows_follow_the_table_and_match_direct_computation(mini_cycles, tmp_path):
    df = mini_cycles.sample(frac=1.0, random_state=0).head(12)  # shuffled subset, odd index
    array = cycle_features(df, cache_dir=tmp_path, workers=0, progress=False)
    for i in (0, 5, 11):
        row = df.iloc[i]
        wave = recording_cycles(row.path, [row.start], [row.end])
        np.testing.assert_array_equal(array[i], fbank(wave)[0].numpy())


def test_parallel_and_serial_fill_are_identical(mini_cycles, tmp_path):
    df = mini_cycles.head(30)
    a = cycle_features(df, cache_dir=tmp_path / "a", workers=2, progress=False)
    b = cycle_features(df, cache_dir=tmp_path / "b", workers=0, progress=False)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cache_key_follows_config_rows_and_file_identity(make_data):
    root = make_data({"101_1b1_Al_sc_Meditron": "test", "103_2b2_Ar_mc_LittC2SE": "train"})
    df = read_icbhi(root)
    key = cache_key(df, FeatureConfig())
    assert cache_key(df, FeatureConfig()) == key
    assert cache_key(df, FeatureConfig(pad="zero")) != key
    assert cache_key(df.iloc[::-1], FeatureConfig()) != key  # row order matters
    moved = df.assign(end=df.end + 0.01)
    assert cache_key(moved, FeatureConfig()) != key
    path = df.path.iloc[0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched file
    assert cache_key(df, FeatureConfig()) != key


def test_damaged_cache_file_is_recomputed(make_data, tmp_path):
    df = read_icbhi(make_data({"103_2b2_Ar_mc_LittC2SE": "train"}))
    first = np.asarray(cycle_features(df, cache_dir=tmp_path / "c", progress=False)).copy()
    npy = next((tmp_path / "c").glob("*.npy"))
    npy.write_bytes(npy.read_bytes()[:1000])  # truncated
    again = cycle_features(df, cache_dir=tmp_path / "c", progress=False)
    np.testing.assert_array_equal(np.asarray(again), first)


def test_failure_leaves_no_partial_or_final_file(make_data, tmp_path):
    df = read_icbhi(make_data({"103_2b2_Ar_mc_LittC2SE": "train"}))
    df.loc[0, "start"] = 9.0  # past the end of the 3 s recording: an empty cycle
    with pytest.raises(ValueError, match="empty cycle"):
        cycle_features(df, cache_dir=tmp_path / "c", workers=0, progress=False)
    assert list((tmp_path / "c").iterdir()) == []


def test_missing_columns_are_an_error(mini_cycles, tmp_path):
    with pytest.raises(ValueError, match=r"lacks columns \['end'\]"):
        cycle_features(mini_cycles.drop(columns="end"), cache_dir=tmp_path)


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PATCHMIX_CACHE", str(tmp_path))
    assert features.default_cache_dir() == tmp_path
    monkeypatch.delenv("PATCHMIX_CACHE")
    assert features.default_cache_dir().parts[-2:] == (".cache", "patchmix")
