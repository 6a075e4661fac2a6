"""Calibration measurements: known signals give known numbers (spectral slope, roll-off, a tone's
prominence, a click's contrast), and the tables of a small synthetic set have the right shape."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from patchmix.companion import calibration as C
from patchmix.companion.explore import CRACKLE_THRESHOLD_DB, WHEEZE_PROMINENCE_DB
from patchmix.data.dataset import CLASSES, recognise
from patchmix.data.synth import make_synthetic_icbhi

RATE = 16_000


def shaped_noise(seconds: float, gain, seed: int = 0) -> np.ndarray:
    """Gaussian noise whose amplitude spectrum is multiplied by ``gain(freqs)``: (samples,)."""
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    x = np.fft.irfft(spectrum * gain(freqs), n)
    return x / x.std()


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> tuple[pd.DataFrame, C.Measured]:
    root = tmp_path_factory.mktemp("calibration") / "s"
    make_synthetic_icbhi(root, n_recordings=4, seed=0)
    cycles = recognise(root).read()
    return cycles, C.measure_cycles(cycles, "tiny synthetic")


@pytest.mark.parametrize(("exponent", "expected"), [(0.0, 0.0), (2.0, -6.02), (4.0, -12.04)])
def test_slope_of_power_law_noise(exponent, expected):
    # power ∝ f^-exponent is -3.01·exponent dB per octave
    x = shaped_noise(4.0, lambda f: np.maximum(f, 1.0) ** (-exponent / 2), seed=1)
    summary = C.spectral_summary(*C.cycle_spectrum(x, RATE))
    assert summary["slope_db_oct"] == pytest.approx(expected, abs=0.6)


def test_white_noise_centroid_median_and_rolloff_sit_where_the_band_puts_them():
    lo, hi = C.SUMMARY_BAND_HZ
    summary = C.spectral_summary(*C.cycle_spectrum(shaped_noise(4.0, np.ones_like), RATE))
    assert summary["centroid_hz"] == pytest.approx((lo + hi) / 2, rel=0.05)
    assert summary["median_hz"] == pytest.approx((lo + hi) / 2, rel=0.05)
    assert summary["rolloff_hz"] == pytest.approx(lo + 0.95 * (hi - lo), rel=0.03)


def test_lowpassed_noise_rolls_off_at_its_corner():
    x = shaped_noise(4.0, lambda f: (f <= 500.0).astype(float), seed=2)
    summary = C.spectral_summary(*C.cycle_spectrum(x, RATE))
    assert 440.0 <= summary["rolloff_hz"] <= 510.0
    assert summary["median_hz"] == pytest.approx(275.0, rel=0.08)
    freqs, psd = C.cycle_spectrum(x, RATE)
    in_band = (freqs >= C.SUMMARY_BAND_HZ[0]) & (freqs <= C.SUMMARY_BAND_HZ[1])
    assert np.sum(psd[in_band]) * (freqs[1] - freqs[0]) == pytest.approx(1.0)  # unit band power
    assert freqs.max() <= C.SPECTRUM_MAX_HZ


def test_a_short_cycle_has_no_spectrum_but_no_crash():
    x = shaped_noise(0.05, np.ones_like)  # shorter than one Welch segment and one tonal window
    row = C.measure_waveform(x, RATE)
    assert set(row) == set(C.MEASURE_COLUMNS)
    assert math.isnan(row["slope_db_oct"]) and math.isnan(row["tonal_peak_db"])


def test_a_tone_in_breath_noise_is_more_prominent_than_the_noise_alone():
    noise = shaped_noise(2.0, lambda f: 1.0 / np.sqrt(1 + (f / 300.0) ** 4), seed=3)
    t = np.arange(len(noise)) / RATE
    tone = np.where((t > 0.6) & (t < 1.4), 2.0 * np.sin(2 * np.pi * 400.0 * t), 0.0)
    alone, with_tone = C.measure_waveform(noise, RATE), C.measure_waveform(noise + tone, RATE)
    assert with_tone["tonal_peak_db"] > alone["tonal_peak_db"] + 8.0
    assert with_tone["wheezes"] >= 1 and alone["wheezes"] == 0
    assert with_tone["wheeze_prominence_db"] >= WHEEZE_PROMINENCE_DB
    assert math.isnan(alone["wheeze_prominence_db"])
    assert with_tone["wheeze_s"] == pytest.approx(0.8, abs=0.15)


def test_clicks_in_noise_are_counted_with_their_contrast():
    noise = 0.05 * shaped_noise(2.0, np.ones_like, seed=4)
    clicks = noise.copy()
    t = np.arange(int(0.006 * RATE)) / RATE
    click = np.exp(-t / 0.001) * np.sin(2 * np.pi * 700.0 * t)  # a fine crackle, ~3 ms
    for at in (0.3, 0.8, 1.3):
        clicks[int(at * RATE):int(at * RATE) + len(click)] += click
    alone, found = C.measure_waveform(noise, RATE), C.measure_waveform(clicks, RATE)
    assert found["crackles"] == 3
    assert found["crackle_contrast_db"] >= CRACKLE_THRESHOLD_DB
    assert found["contrast_peak_db"] > alone["contrast_peak_db"] + 10.0


def test_measured_table_and_spectra_line_up_with_the_cycles(measured):
    cycles, m = measured
    assert len(m.table) == len(cycles) > 0
    assert sorted(m.table["row"]) == sorted(cycles.index)
    assert {"recording", "split", "label", "class", "seconds", *C.MEASURE_COLUMNS} <= set(
        m.table.columns)
    by_row = cycles.loc[m.table["row"]]
    np.testing.assert_array_equal(m.table["label"], by_row["label"])
    ends = by_row["end"].clip(upper=by_row["duration"])  # a cut stops at the recording's end
    np.testing.assert_allclose(m.table["seconds"], ends - by_row["start"], atol=1e-9)
    assert m.spectra.shape == (len(cycles), len(m.freqs))
    assert np.all(np.diff(m.freqs) > 0) and m.freqs[-1] <= C.SPECTRUM_MAX_HZ
    assert (m.table["crackles"] >= 0).all() and (m.table["wheeze_s"] >= 0).all()


def test_class_summary_is_one_row_per_class_and_measure(measured):
    _, m = measured
    summary = C.class_summary(m)
    assert len(summary) == len(CLASSES) * len(C.MEASURES)
    assert set(summary["dataset"]) == {"tiny synthetic"}
    counts = summary[summary["measure"] == "seconds"].set_index("class")["n"]
    assert counts.to_dict() == m.table["class"].value_counts().reindex(
        list(CLASSES), fill_value=0).to_dict()
    spread = summary.dropna(subset=["q25", "q75"])
    assert (spread["q25"] <= spread["median"]).all() and (spread["median"] <= spread["q75"]).all()


def test_class_summary_numbers_on_a_hand_made_table():
    table = pd.DataFrame({"recording": list("aabbc"), "label": [0, 0, 2, 2, 2],
                          "class": ["normal", "normal", "wheeze", "wheeze", "wheeze"],
                          "seconds": [1.0, 3.0, 2.0, 4.0, 6.0]})
    for column in C.MEASURE_COLUMNS:
        table[column] = 0.0
    table["wheezes"] = [0, 1, 1, 0, 2]
    table["wheeze_prominence_db"] = [np.nan, 30.0, 14.0, np.nan, 20.0]
    m = C.Measured("hand", table, np.zeros(1), np.zeros((5, 1)))
    s = C.class_summary(m).set_index(["class", "measure"])
    assert s.loc[("wheeze", "wheeze_found_pct"), "median"] == pytest.approx(200 / 3)
    assert s.loc[("normal", "wheeze_found_pct"), "median"] == pytest.approx(50.0)
    row = s.loc[("wheeze", "wheeze_prominence_db")]
    assert (row["n"], row["median"], row["q25"], row["q75"]) == (2, 17.0, 15.5, 18.5)
    assert s.loc[("wheeze", "seconds"), "median"] == 4.0
    assert s.loc[("wheeze", "seconds"), "recordings"] == 2
    assert s.loc[("crackle", "seconds"), "n"] == 0
    assert math.isnan(s.loc[("crackle", "seconds"), "median"])


def test_subsample_caps_each_class_reproducibly():
    cycles = pd.DataFrame({"label": [0] * 50 + [1] * 5 + [2] * 20}, index=range(100, 175))
    a, b = C.subsample(cycles, 10, seed=0), C.subsample(cycles, 10, seed=0)
    assert a["label"].value_counts().to_dict() == {0: 10, 1: 5, 2: 10}
    assert a.index.equals(b.index) and a.index.is_monotonic_increasing
    assert not a.index.equals(C.subsample(cycles, 10, seed=1).index)


def test_mean_spectra_and_figure(measured):
    _, m = measured
    curve, summary = C.mean_spectra(m)
    assert list(curve.columns) == ["freq_hz", "power_db", "cycles"]
    assert summary["cycles"] == int((m.table["label"] == 0).sum())
    assert C.SUMMARY_BAND_HZ[0] < summary["median_hz"] < summary["rolloff_hz"]
    other = C.Measured("copy", m.table, m.freqs, m.spectra)
    fig = C.comparison_figure({"tiny synthetic": m, "copy": other})
    try:
        assert len(fig.axes) == 4
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["tiny synthetic", "copy"]
        assert all(ax.lines for ax in fig.axes)
    finally:
        plt.close(fig)


def test_calibrate_writes_the_side_by_side_table_and_figure(tmp_path, capsys):
    from patchmix.cli import main

    root = make_synthetic_icbhi(tmp_path / "s", n_recordings=3, seed=1, progress=False).root
    out = tmp_path / "report"
    assert main(["calibrate", f"one={root}", f"twice={root}+{root}", "--per-class", "4",
                 "--out", str(out)]) == 0
    table = pd.read_csv(out / "summary.csv")
    assert list(table.columns) == ["class", "measure", "one", "twice"]
    assert (out / "comparison.png").stat().st_size > 10_000 and (out / "summary.md").is_file()
    counted = table.set_index(["class", "measure"]).loc[("normal", "annotated cycle duration (s)")]
    n_one, n_twice = (int(cell.rsplit("(", 1)[1].rstrip(")")) for cell in counted)
    assert n_twice == 2 * n_one  # the two folders were measured as one set
    assert "one: " in capsys.readouterr().err
    assert main(["calibrate", "no-equals-sign", "--out", str(out)]) == 2
