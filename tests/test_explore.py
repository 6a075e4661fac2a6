"""Data exploration tables and figures: counts agree with the cycle table and `summarize`, the
padding figure shows the pipeline's own 8 s waveform, examples cover every class present."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from patchmix.companion import explore
from patchmix.data.audio import recording_cycles
from patchmix.data.dataset import CLASSES
from patchmix.data.icbhi import read_icbhi, summarize
from patchmix.data.synth import make_synthetic_icbhi


@pytest.fixture(scope="module")
def synthetic_cycles(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("explore") / "s"
    make_synthetic_icbhi(root, n_recordings=8, seed=0)
    return read_icbhi(root)


@pytest.fixture(scope="module")
def mini_cycles(icbhi_mini) -> pd.DataFrame:
    return read_icbhi(icbhi_mini)


@pytest.fixture(params=["mini", "synthetic"])
def cycles(request) -> pd.DataFrame:
    return request.getfixturevalue(f"{request.param}_cycles")


def test_class_counts_sum_to_the_table_and_equal_summarize(cycles):
    counts = explore.class_counts(cycles)
    per_split = counts[counts["split"] != explore.ALL]
    assert per_split["cycles"].sum() == len(cycles)
    expected = summarize(cycles)["cycles"]
    got = {s: dict(zip(g["class"], g["cycles"], strict=True))
           for s, g in per_split.groupby("split", sort=False)}
    assert got == expected
    overall = counts[counts["split"] == explore.ALL].set_index("class")["cycles"]
    assert overall.to_dict() == {c: int((cycles["label"] == i).sum())
                                 for i, c in enumerate(CLASSES)}
    assert len(counts) == 4 * (len(expected) + 1)  # every class, zeros included
    np.testing.assert_allclose(counts.groupby("split")["percent"].sum(), 100.0)


def test_overview_devices_and_formats_agree_with_summarize(cycles):
    summary = summarize(cycles)
    table = explore.overview(cycles).set_index("split")
    for split, n in summary["recordings"].items():
        assert table.loc[split, "recordings"] == n
        assert table.loc[split, "patients"] == summary["patients"][split]
    assert table.loc[explore.ALL, "cycles"] == len(cycles)
    assert table.loc[explore.ALL, "recordings"] == cycles["recording"].nunique()

    devices = explore.device_counts(cycles)
    assert devices["cycles"].sum() == len(cycles)
    for split, per_device in summary["devices"].items():
        part = devices[(devices["split"] == split) & (devices["recordings"] > 0)]
        assert dict(zip(part["device"], part["recordings"], strict=True)) == per_device
    np.testing.assert_allclose(devices.groupby("split")["percent_of_split_cycles"].sum(), 100.0)

    formats = explore.audio_formats(cycles)
    assert formats["recordings"].sum() == cycles["recording"].nunique()
    assert formats["cycles"].sum() == len(cycles)
    rates = formats.groupby("sample_rate")["recordings"].sum()
    expected = pd.Series(0, index=rates.index)
    for per_rate in summary["sample_rates"].values():
        for rate, n in per_rate.items():
            expected[int(rate)] += n
    assert rates.to_dict() == expected.to_dict()


def test_duration_summary_matches_summarize(cycles):
    table = explore.duration_summary(cycles).set_index("class")
    stats = summarize(cycles)["cycle_seconds"]
    assert table.loc[list(CLASSES), "cycles"].sum() == len(cycles)
    assert table.loc[explore.ALL, "over_8s"] == stats["over_8s"]
    assert round(table.loc[explore.ALL, "median_s"], 3) == pytest.approx(stats["median"])
    assert round(table.loc[explore.ALL, "max_s"], 3) == pytest.approx(stats["max"])
    assert (explore.cycle_seconds(cycles) > 0).all()


def test_count_figures_draw_the_table_counts(cycles):
    counts = explore.class_counts(cycles)
    fig = explore.class_counts_figure(counts)
    left = fig.axes[0]
    heights = sorted(int(p.get_height()) for p in left.patches)
    assert heights == sorted(counts[counts["split"] != explore.ALL]["cycles"])
    plt.close(fig)

    devices = explore.device_counts(cycles)
    fig = explore.device_figure(devices)
    assert sum(p.get_height() for p in fig.axes[0].patches) == len(cycles)
    plt.close(fig)

    fig = explore.duration_figure(cycles)
    for i, ax in enumerate(fig.axes[:len(CLASSES)]):  # every cycle falls into a bin
        assert sum(p.get_height() for p in ax.patches) == (cycles["label"] == i).sum()
    plt.close(fig)


def test_shared_patients(make_data, mini_cycles):
    assert explore.shared_patients(mini_cycles).empty
    root = make_data({"101_1b1_Al_sc_Meditron": "test", "101_1b1_Ar_sc_Meditron": "train",
                      "103_2b2_Ar_mc_LittC2SE": "train"})
    table = explore.shared_patients(read_icbhi(root))
    assert table["patient"].tolist() == [101, 101]
    assert table["split"].tolist() == ["train", "test"]
    assert table["recordings"].tolist() == [1, 1]
    assert table["cycles"].tolist() == [2, 2]


def test_pick_examples_one_per_present_class_and_reproducible(mini_cycles):
    a = explore.pick_examples(mini_cycles, seed=0)
    assert a["label"].tolist() == sorted(set(mini_cycles["label"]))
    assert a.equals(explore.pick_examples(mini_cycles, seed=0))
    assert ((a["seconds"] >= 1.0) & (a["seconds"] <= 6.0)).all()
    only_normal = mini_cycles[mini_cycles["label"] == 0]
    assert explore.pick_examples(only_normal, seed=3)["label"].tolist() == [0]
    assert explore.pick_examples(mini_cycles, seed=0, min_s=100, max_s=200).shape[0] == len(a)


def test_padded_versions_are_the_pipeline_cycle(mini_cycles):
    row = explore.pick_examples(mini_cycles, seed=0, max_s=2.5).iloc[0]
    w = explore.padded_versions(row)
    n = len(w["cycle"])
    assert 0 < n < 128_000 - 1_000
    assert w["repeat"].shape == w["zero"].shape == (128_000,)
    np.testing.assert_array_equal(w["repeat"][:n], w["cycle"])  # tiled copies ...
    np.testing.assert_array_equal(w["repeat"][n:2 * n], w["cycle"])
    assert w["repeat"][-1] == 0  # ... faded out at the end
    offset = (128_000 - n) // 2
    np.testing.assert_array_equal(w["zero"][offset:offset + n], w["cycle"])
    assert not w["zero"][:offset].any() and not w["zero"][offset + n:].any()
    pipeline = recording_cycles(row["path"], [row["start"]], [row["end"]])[0]
    torch.testing.assert_close(torch.from_numpy(w["repeat"]), pipeline, rtol=0, atol=0)
    assert explore.spectrogram(w["repeat"]).shape == (798, 128)


def test_padding_figure_shows_the_128000_sample_repeat(mini_cycles):
    row = explore.pick_examples(mini_cycles, seed=0, max_s=2.5).iloc[0]
    w = explore.padded_versions(row)
    fig = explore.padding_figure(row)
    lines = [line for ax in fig.axes for line in ax.get_lines()
             if len(line.get_ydata()) == 128_000]
    labels = {line.get_label() for line in lines}
    assert {"repeat-padded (8 s)", "zero-padded (8 s)"} <= labels
    repeat = next(line for line in lines if line.get_label() == "repeat-padded (8 s)")
    np.testing.assert_array_equal(repeat.get_ydata(), w["repeat"])
    assert repeat.get_xdata()[-1] == pytest.approx(8.0, abs=1e-3)
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert [im.get_array().shape for im in images] == [(128, 798), (128, 798)]
    plt.close(fig)


def test_examples_figure_one_row_per_example(cycles):
    examples = explore.pick_examples(cycles, seed=1)
    fig = explore.examples_figure(examples)
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == len(examples) == cycles["label"].nunique()
    assert all(im.get_array().shape == (128, 798) for im in images)
    titles = " ".join(ax.get_title(loc="left") for ax in fig.axes)
    assert all(CLASSES[label] in titles for label in examples["label"])
    plt.close(fig)


# ----------------------------------------------------------------------------- split contrasts


def test_split_shift_and_the_printed_lines(mini_cycles):
    table = pd.DataFrame({"split": ["train"] * 4 + ["test"] * 4,
                          "device": ["a", "a", "b", "b", "a", "a", "b", "b"],
                          "label": [0, 0, 0, 0, 1, 1, 1, 1]})
    assert explore.split_shift(table, "device") == 0.0  # same mix
    assert explore.split_shift(table, "label") == 100.0  # nothing in common
    assert np.isnan(explore.split_shift(table[table["split"] == "train"], "label"))

    line = explore.device_split_line(mini_cycles)  # the ten real recordings' split
    assert "AKGC417L train only (3)" in line and "Litt3200 test only (2)" in line
    assert "Meditron 1 / 2" in line
    assert f"{explore.split_shift(mini_cycles, 'device'):.0f} points" in line
    assert "normal 30 % / 76 %" in explore.class_mix_line(mini_cycles)  # 14/47 and 35/46
    assert "median cycle" in explore.duration_line(mini_cycles)


# ----------------------------------------------------------------------------- event detector

RATE = 16_000


def _breath(seconds: float, rate: int = RATE, seed: int = 0, rms: float = 0.05) -> np.ndarray:
    """Band-limited noise (80-250 Hz, where vesicular breath sound is loudest) standing in for
    breath sounds: (samples,)."""
    from scipy import signal

    sos = signal.butter(2, [80, 250], "bandpass", fs=rate, output="sos")
    x = signal.sosfilt(sos, np.random.default_rng(seed).standard_normal(int(seconds * rate)))
    return rms * x / x.std()


def _click(rate: int, freq: float, tau_s: float) -> np.ndarray:
    """A crackle-like transient: a sudden deflection ringing down at `freq`."""
    t = np.arange(int(6 * tau_s * rate)) / rate
    return np.exp(-t / tau_s) * np.sin(2 * np.pi * freq * t)


@pytest.mark.parametrize("rate", [16_000, 44_100])
def test_a_click_train_is_found_as_crackles_at_the_right_times(rate):
    x = _breath(2.0, rate)
    onsets = [0.30, 0.55, 0.80, 1.20, 1.60]
    for k, onset in enumerate(onsets):  # fine clicks (700 Hz) and one coarse one (250 Hz)
        click = _click(rate, 250.0, 0.006) if k == 3 else _click(rate, 700.0, 0.0015)
        i = int(onset * rate)
        x[i:i + len(click)] += 0.5 * click
    found = explore.detect_crackles(x, rate)
    assert len(found) == len(onsets)
    np.testing.assert_allclose(found, onsets, atol=0.004)  # the energy peak, within 4 ms
    assert len(explore.detect_wheezes(x, rate)) == 0


def test_a_tone_sweep_is_a_wheeze_and_no_crackle():
    x = _breath(2.0)
    t = np.arange(int(0.6 * RATE)) / RATE
    freq = 250.0 + (700.0 - 250.0) * t / 0.6  # a 0.6 s glide from 250 to 700 Hz
    ramp = np.minimum(1.0, np.minimum(t, 0.6 - t) / 0.02)  # 20 ms on and off
    i = int(0.7 * RATE)
    x[i:i + len(t)] += 0.2 * ramp * np.sin(2 * np.pi * np.cumsum(freq) / RATE)
    events = explore.detect_events(x, RATE)
    assert len(events.crackles) == 0
    assert events.wheezes.shape == (1, 3)
    start, end, pitch = events.wheezes[0]
    assert start == pytest.approx(0.7, abs=0.05) and end == pytest.approx(1.3, abs=0.05)
    assert 250.0 < pitch < 700.0


@pytest.mark.parametrize("seed", range(4))
def test_white_noise_is_neither(seed):
    x = 0.1 * np.random.default_rng(seed).standard_normal(3 * RATE)
    events = explore.detect_events(x, RATE)
    assert len(events.crackles) == 0 and len(events.wheezes) == 0


def test_silence_and_tiny_cycles_give_no_events():
    for x in (np.zeros(2 * RATE), np.ones(40), np.zeros(0)):
        events = explore.detect_events(x, RATE)
        assert events.crackles.shape == (0,) and events.wheezes.shape == (0, 3)


def test_detection_rates_count_each_class_and_use_the_given_detector(synthetic_cycles):
    rates = explore.detection_rates(synthetic_cycles, max_cycles=10_000)
    assert rates["class"].tolist() == list(CLASSES)
    assert rates["cycles"].sum() == len(synthetic_cycles)  # every cycle was read
    assert rates.attrs["recordings"] == synthetic_cycles["recording"].nunique()
    by = rates.set_index("class")
    # the wheeze rule fires where the labels say wheezes are; the crackle rule fires in every
    # class (clicks are everywhere, as in real recordings) but finds more in crackle cycles
    assert by.loc["wheeze", "with_wheezes_pct"] > 50 > 5 > by.loc["normal", "with_wheezes_pct"]
    assert by.loc["crackle", "crackles_per_cycle"] > 1.5 * by.loc["normal", "crackles_per_cycle"]
    line = explore.detection_line(rates)
    assert f"on {len(synthetic_cycles)} cycles ({rates.attrs['recordings']} recordings)" in line
    wheeze = by.loc["wheeze", "with_wheezes_pct"]
    assert f"with a wheeze mark: normal {by.loc['normal', 'with_wheezes_pct']:.0f} %" in line
    assert f"wheeze {wheeze:.0f} %" in line.split("with a wheeze mark")[1]

    def always(x: np.ndarray, rate: int) -> explore.Events:
        return explore.Events(np.array([0.0]), np.zeros((0, 3)))

    few = explore.detection_rates(synthetic_cycles, max_cycles=1, detector=always)
    assert few.attrs["recordings"] == 1  # whole recordings, as few as reach max_cycles
    present = few[few["cycles"] > 0]
    assert (present["with_crackles_pct"] == 100).all() and (present["with_wheezes_pct"] == 0).all()


def test_examples_figure_marks_the_detected_events_on_every_copy(synthetic_cycles):
    examples = explore.pick_examples(synthetic_cycles, seed=0)
    fig = explore.examples_figure(examples)
    spectra = [ax for ax in fig.axes if ax.get_images()]
    for ax, (_, row) in zip(spectra, examples.iterrows(), strict=True):
        cycle = explore.padded_versions(row)["cycle"]
        events = explore.detect_events(cycle, RATE)
        shifts = explore.copy_starts(len(cycle))
        expected = np.sort(np.concatenate([events.crackles + s for s in shifts]))
        expected = expected[expected < 8.0]
        marks = [line for line in ax.get_lines() if line.get_marker() == "v"]
        shown = np.sort(np.concatenate([m.get_xdata() for m in marks])) if marks else []
        np.testing.assert_allclose(shown, expected)
        bars = [line for line in ax.get_lines() if line.get_linewidth() == 3.5]
        assert len(bars) == sum(s + w[0] < 8.0 for s in shifts for w in events.wheezes)
        assert ax.get_xlim() == pytest.approx((0.0, 7.98))  # marks do not widen the image
    assert "NOT annotated" in fig.legends[0].get_title().get_text()
    plt.close(fig)
    plain = explore.examples_figure(examples, events=False)
    assert not any(line.get_marker() == "v" for ax in plain.axes for line in ax.get_lines())
    plt.close(plain)


def test_copy_starts():
    from patchmix.config import FeatureConfig

    np.testing.assert_allclose(explore.copy_starts(48_000), [0.0, 3.0, 6.0])
    np.testing.assert_allclose(explore.copy_starts(48_000, FeatureConfig(pad="zero")), [2.5])
    np.testing.assert_allclose(explore.copy_starts(200_000), [0.0])  # truncated: one copy


# ----------------------------------------------------------------------------- listening


@pytest.mark.parametrize("pad", ["repeat", "zero"])
def test_listening_clips_are_the_cut_and_the_model_input(synthetic_cycles, pad):
    from patchmix.config import FeatureConfig

    cfg = FeatureConfig(pad=pad)
    row = explore.pick_examples(synthetic_cycles, seed=0, max_s=2.5).iloc[0]
    clips = explore.listening_clips(row, cfg)
    cycle, rate = clips["cycle"]
    model_input, input_rate = clips["model input"]
    assert rate == input_rate == 16_000
    assert model_input.shape == (128_000,)  # 8 s at 16 kHz
    pipeline = recording_cycles(row["path"], [row["start"]], [row["end"]], cfg)[0]
    np.testing.assert_array_equal(model_input, pipeline.numpy())  # what the fbank is made of
    np.testing.assert_array_equal(cycle, explore.padded_versions(row, cfg)["cycle"])
    assert len(cycle) == int(row["end"] * rate) - int(row["start"] * rate)


def test_audio_players_embed_labelled_16khz_wavs(synthetic_cycles):
    import base64
    import io
    import re

    import soundfile as sf

    examples = explore.pick_examples(synthetic_cycles, seed=0)
    html = explore.audio_players(examples).data
    assert html.count("<audio") == 2 * len(examples)
    for _, row in examples.iterrows():
        assert f"{row['recording']}, cycle {row['cycle']}" in html
        assert CLASSES[int(row["label"])] in html and f"{row['seconds']:.2f} s" in html
    wavs = re.findall(r"data:audio/wav;base64,([A-Za-z0-9+/=]+)", html)
    assert len(wavs) == 2 * len(examples)
    first = examples.iloc[0]
    played, rate = sf.read(io.BytesIO(base64.b64decode(wavs[1])))  # row 1, model input
    assert rate == 16_000 and played.shape == (128_000,)
    expected = explore.listening_clips(first)["model input"][0]
    np.testing.assert_allclose(played, expected / np.abs(expected).max(), atol=2e-4)
