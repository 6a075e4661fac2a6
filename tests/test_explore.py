"""Data exploration tables and figures: counts agree with the cycle table and `summarize`, the
padding figure shows the pipeline's own 8 s waveform, examples cover every class present."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from patchmix import explore
from patchmix.audio import recording_cycles
from patchmix.datasets import CLASSES
from patchmix.icbhi import read_icbhi, summarize
from patchmix.synth import make_synthetic_icbhi


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
