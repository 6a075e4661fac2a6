"""Input-level baselines: class weights, SpecAugment (docs/recipe.md#training), Mixup, CutMix."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from patchmix.model.augment import (
    apply_spec_augment,
    class_weights,
    cutmix,
    mixed_cross_entropy,
    mixup,
    sample_lambda,
    spec_augment,
    spec_augment_masks,
)

T, NF = 798, 128


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fbank_batch(b: int = 4, seed: int = 0) -> torch.Tensor:
    """Continuous random values: no element equals a mask mean by accident."""
    return torch.randn(b, T, NF, generator=gen(seed)) * 0.5 - 0.3  # (B, T, F)


# ---------------------------------------------------------------- class weights

def test_class_weights_on_the_official_train_counts():
    # 1/2063 + 1/1215 + 1/501 + 1/363 = 0.0060586; w_c = (1/n_c) / 0.0060586
    # → 0.08001, 0.13585, 0.32945, 0.45470
    labels = torch.repeat_interleave(torch.arange(4), torch.tensor([2063, 1215, 501, 363]))
    w = class_weights(labels)
    assert w.dtype == torch.float32 and w.shape == (4,)
    torch.testing.assert_close(w, torch.tensor([0.08001, 0.13585, 0.32945, 0.45470]),
                               atol=1e-5, rtol=0)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    products = w.double() * torch.tensor([2063.0, 1215, 501, 363])  # ∝ 1/n: constant
    assert float(products.max() - products.min()) < 1e-4
    assert torch.equal(class_weights(labels.numpy()), w)
    assert torch.equal(class_weights(labels.tolist()), w)
    torch.testing.assert_close(class_weights([0, 1, 1, 1], n_classes=2), torch.tensor([0.75, 0.25]))


def test_class_weights_errors():
    with pytest.raises(ValueError, match=r"\[2\] have no sample"):
        class_weights([0, 1, 3, 3])
    with pytest.raises(ValueError, match="0..3"):
        class_weights([0, 1, 2, 4])
    with pytest.raises(ValueError, match="no sample"):
        class_weights([])


# ---------------------------------------------------------------- SpecAugment

def test_spec_augment_never_writes_its_input():
    x = fbank_batch()
    before, version = x.clone(), x._version
    out = spec_augment(x, gen(0), gate="always")
    assert torch.equal(x, before) and x._version == version
    assert out.data_ptr() != x.data_ptr() and not torch.equal(out, x)
    # samples the gate skips come back as a copy, not as the input's storage
    skipped = spec_augment(x, gen(0), freq_width=1, time_width=1)
    assert torch.equal(skipped, x) and skipped.data_ptr() != x.data_ptr()


def test_spec_augment_on_a_read_only_memory_map(tmp_path):
    path = tmp_path / "features.npy"
    np.save(path, fbank_batch(3).numpy())
    arr = np.load(path, mmap_mode="r")  # read-only pages: a write would crash, not pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns about non-writable arrays
        x = torch.from_numpy(arr)
    out = spec_augment(x, gen(1), gate="always")
    assert out.shape == (3, T, NF)
    np.testing.assert_array_equal(np.load(path), arr)


def test_spec_augment_is_reproducible_and_composed_of_its_draws():
    x = fbank_batch()
    a = spec_augment(x, gen(5))
    assert torch.equal(a, spec_augment(x, gen(5)))
    assert not torch.equal(a, spec_augment(x, gen(6)))
    masks = spec_augment_masks(4, T, NF, gen(5))
    assert torch.equal(a, apply_spec_augment(x, masks))
    # the gate consumes the same draws either way: "always" keeps the official masks
    always = spec_augment_masks(4, T, NF, gen(5), gate="always")
    assert torch.equal(always.freq, masks.freq) and torch.equal(always.time, masks.time)


def test_masked_bands_hold_the_documented_means():
    # a tilt along the mel axis makes the mean move visibly when bins are masked
    x = fbank_batch(6, seed=2) + torch.linspace(-3.0, 3.0, NF)  # (B, T, F)
    masks = spec_augment_masks(6, T, NF, gen(11), gate="always")
    out = apply_spec_augment(x, masks)
    for i in range(6):
        fmask = torch.zeros(NF, dtype=torch.bool)
        for start, width in masks.freq[i].tolist():
            fmask[start:start + width] = True
        tmask = torch.zeros(T, dtype=torch.bool)
        for start, width in masks.time[i].tolist():
            tmask[start:start + width] = True
        assert fmask.any() and tmask.any()  # this seed draws non-empty masks
        mean_before = x[i].mean()
        after_freq = x[i].clone()
        after_freq[:, fmask] = mean_before
        mean_after = after_freq.mean()
        # time bands: whole frames (all 128 bins) hold one value, the mean recomputed after
        # the freq masks (equal up to float summation order)
        band = out[i][tmask]  # (frames masked, F)
        assert torch.equal(band, band[0, 0].expand_as(band))
        torch.testing.assert_close(band[0, 0], mean_after, rtol=0, atol=1e-6)
        # freq bands outside the time bands: whole bins hold the mean before any masking
        keep_t = ~tmask
        band = out[i][keep_t][:, fmask]  # (frames kept, bins masked)
        assert torch.equal(band, band[0, 0].expand_as(band))
        torch.testing.assert_close(band[0, 0], mean_before, rtol=0, atol=1e-6)
        # everything else untouched
        assert torch.equal(out[i][keep_t][:, ~fmask], x[i][keep_t][:, ~fmask])
        assert abs(float(mean_before - mean_after)) > 1e-2  # the two means differ


def test_mask_widths_and_starts_stay_in_range():
    m = spec_augment_masks(20000, T, NF, gen(3), gate="always")
    fs, fw = m.freq[..., 0], m.freq[..., 1]
    ts, tw = m.time[..., 0], m.time[..., 1]
    assert m.freq.shape == (20000, 2, 2) and m.time.shape == (20000, 2, 2)
    assert int(fw.min()) == 0 and int(fw.max()) == 47
    assert int(tw.min()) == 0 and int(tw.max()) == 159
    assert int(fs.min()) == 0 and int((fs + fw).max()) == NF and int(fs.max()) == NF
    assert int(ts.min()) == 0 and int((ts + tw).max()) == T
    assert abs(float(fw.double().mean()) - 23.5) < 0.5  # uniform on 0..47
    assert abs(float(tw.double().mean()) - 79.5) < 1.5  # uniform on 0..159


def test_official_gate_fires_with_probability_phi_of_one():
    n, p = 40000, 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # Φ(1) = 0.841345
    rate = float(spec_augment_masks(n, T, NF, gen(4)).apply.double().mean())
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)  # 5 sd = 0.009
    assert bool(spec_augment_masks(n, T, NF, gen(4), gate="always").apply.all())


def test_always_gate_masks_every_sample_with_a_nonzero_width():
    x = fbank_batch(16, seed=3)
    masks = spec_augment_masks(16, T, NF, gen(8), gate="always")
    out = apply_spec_augment(x, masks)
    changed = (out != x).flatten(1).any(dim=1)  # (B,)
    drawn = (masks.freq[..., 1] > 0).any(dim=1) | (masks.time[..., 1] > 0).any(dim=1)
    assert torch.equal(changed, drawn) and bool(drawn.all())
    # under the official gate exactly the non-gated samples are unchanged
    official = spec_augment_masks(16, T, NF, gen(8))
    out = apply_spec_augment(x, official)
    assert torch.equal((out != x).flatten(1).any(dim=1), official.apply & drawn)


def test_spec_augment_errors():
    with pytest.raises(ValueError, match=r"\(B, T, F\)"):
        spec_augment(torch.zeros(T, NF), gen(0))
    with pytest.raises(ValueError, match="gate"):
        spec_augment(torch.zeros(1, T, NF), gen(0), gate="sometimes")
    with pytest.raises(ValueError, match="freq_width"):
        spec_augment(torch.zeros(1, T, NF), gen(0), freq_width=0)


# ---------------------------------------------------------------- λ, Mixup, CutMix

def test_sample_lambda():
    lams = [sample_lambda(1.0, g) for g in [gen(0)] for _ in range(4000)]
    assert all(0.0 <= v < 1.0 for v in lams)
    assert abs(np.mean(lams) - 0.5) < 0.02 and abs(np.var(lams) - 1 / 12) < 0.01
    g = gen(1)
    lams = [sample_lambda(0.4, g) for _ in range(4000)]  # Beta(0.4, 0.4): var 1/(4·1.8)
    assert abs(np.mean(lams) - 0.5) < 0.03 and abs(np.var(lams) - 1 / 7.2) < 0.01
    assert sample_lambda(0.4, gen(9)) == sample_lambda(0.4, gen(9))
    assert sample_lambda(1.0, gen(9)) == sample_lambda(1.0, gen(9))
    with pytest.raises(ValueError, match="beta must be positive"):
        sample_lambda(0.0, gen(0))


def test_mixup():
    x, y = fbank_batch(8), torch.arange(8)
    mixed, y_a, y_b, index = mixup(x, y, 0.3, gen(2))
    assert mixed.shape == x.shape and sorted(index.tolist()) == list(range(8))
    assert torch.equal(y_a, y) and torch.equal(y_b, y[index])
    torch.testing.assert_close(mixed, 0.3 * x + 0.7 * x[index])
    again = mixup(x, y, 0.3, gen(2))
    assert torch.equal(again[0], mixed) and torch.equal(again[3], index)
    same, _, _, _ = mixup(x, y, 1.0, gen(2))
    assert torch.equal(same, x)
    other, _, _, idx = mixup(x, y, 0.0, gen(2))
    assert torch.equal(other, x[idx])
    with pytest.raises(ValueError, match="lam"):
        mixup(x, y, 1.5, gen(2))


def test_cutmix_box_and_lambda():
    x, y = fbank_batch(8, seed=1), torch.arange(8)
    for seed in range(30):
        lam = sample_lambda(1.0, gen(100 + seed))
        mixed, y_a, y_b, index, lam2 = cutmix(x, y, lam, gen(seed))
        assert mixed.shape == x.shape and torch.equal(y_b, y[index]) and torch.equal(y_a, y)
        movers = [i for i in range(8) if index[i] != i]
        if not movers:
            continue
        moved = movers[0]
        changed = mixed[moved] != x[moved]  # (T, F): exactly the pasted box
        rows, cols = changed.any(dim=1), changed.any(dim=0)
        assert int(changed.sum()) == int(rows.sum()) * int(cols.sum())  # a rectangle
        assert lam2 == pytest.approx(1 - int(changed.sum()) / (T * NF), abs=1e-12)
        assert torch.equal(mixed[moved][changed], x[index[moved]][changed])
        assert 0.0 <= lam2 <= 1.0
    assert torch.equal(cutmix(x, y, 0.4, gen(7))[0], cutmix(x, y, 0.4, gen(7))[0])
    same, _, _, _, lam1 = cutmix(x, y, 1.0, gen(7))
    assert torch.equal(same, x) and lam1 == 1.0
    before = x.clone()
    cutmix(x, y, 0.2, gen(7))
    assert torch.equal(x, before)


def test_cutmix_area_tracks_lambda_away_from_the_borders():
    # a box centred well inside: area = int(T·r)//2·2 × int(F·r)//2·2 with r = sqrt(1 − λ)
    x, y = fbank_batch(2), torch.tensor([0, 1])
    lam = 0.75  # r = 0.5 → 399 frames → 2·199 = 398, 64 bins → 64
    for seed in range(50):
        _, _, _, _, lam2 = cutmix(x, y, lam, gen(seed))
        if lam2 == pytest.approx(1 - 398 * 64 / (T * NF)):
            break
    else:
        pytest.fail("no unclipped box in 50 draws")


def test_mixed_cross_entropy_equals_the_direct_formula():
    logits = torch.randn(6, 4, generator=gen(0))
    y_a, y_b = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([3, 3, 0, 1, 2, 1])
    logp = F.log_softmax(logits, dim=1)
    rows = torch.arange(6)
    direct = -(0.3 * logp[rows, y_a] + 0.7 * logp[rows, y_b]).mean()
    torch.testing.assert_close(mixed_cross_entropy(logits, y_a, y_b, 0.3), direct)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    direct_w = (0.3 * -(w[y_a] * logp[rows, y_a]).sum() / w[y_a].sum()
                + 0.7 * -(w[y_b] * logp[rows, y_b]).sum() / w[y_b].sum())
    torch.testing.assert_close(mixed_cross_entropy(logits, y_a, y_b, 0.3, weight=w), direct_w)
    torch.testing.assert_close(mixed_cross_entropy(logits, y_a, y_b, 1.0),
                               F.cross_entropy(logits, y_a))
