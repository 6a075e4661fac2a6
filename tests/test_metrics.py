"""ICBHI Sp / Se / Score (docs/evaluation.md), per-class recall and the patient bootstrap."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch

from patchmix.engine.metrics import (
    confusion_matrix,
    format_scores,
    icbhi_scores,
    icbhi_scores_2class_from_4,
    patient_bootstrap_ci,
    per_class_recall,
    to_binary,
)


def from_confusion(cm: list[list[int]]) -> tuple[list[int], list[int]]:
    """Label lists whose confusion matrix (rows true, columns predicted) is ``cm``."""
    y_true, y_pred = [], []
    for t, row in enumerate(cm):
        for p, count in enumerate(row):
            y_true += [t] * count
            y_pred += [p] * count
    return y_true, y_pred


# 12 cycles. normal 5: 4 right, 1 called crackle        → Sp = 4/5 = 80 %
# crackle 3: 2 right, 1 called normal; wheeze 2: 1 right, 1 called crackle;
# both 2: 1 right, 1 called wheeze                      → Se = (2+1+1)/(3+2+2) = 4/7 = 57.142857 %
# Score = (80 + 57.142857)/2 = 68.571429 %
# Lenient 2-class Se: abnormal called abnormal = 2 + 2 + 2 = 6 of 7 = 85.714286 %,
# Score = (80 + 85.714286)/2 = 82.857143 %.
SMALL = [[4, 1, 0, 0],
         [1, 2, 0, 0],
         [0, 1, 1, 0],
         [0, 0, 1, 1]]


def test_hand_computed_four_class_scores():
    y_true, y_pred = from_confusion(SMALL)
    s = icbhi_scores(y_true, y_pred)
    assert s["sp"] == pytest.approx(80.0)
    assert s["se"] == pytest.approx(400 / 7)
    assert s["score"] == pytest.approx((80 + 400 / 7) / 2)
    assert s["score"] == pytest.approx(68.571429, abs=1e-6)
    assert s["n"] == 12
    assert s["confusion"] == SMALL
    assert s["per_class_recall"] == pytest.approx(
        {"normal": 80.0, "crackle": 200 / 3, "wheeze": 50.0, "both": 50.0})
    assert all(isinstance(s[k], float) for k in ("sp", "se", "score"))
    cm = confusion_matrix(y_true, y_pred, 4)
    assert cm.dtype == np.int64 and cm.tolist() == SMALL
    assert per_class_recall(y_true, y_pred) == s["per_class_recall"]


def test_paper_table_numbers_and_format():
    # ICBHI test counts 1579 / 649 / 385 / 143. Sp = 1218/1579 = 77.137 %,
    # Se = (300 + 150 + 44)/(649 + 385 + 143) = 494/1177 = 41.971 %, Score = 59.554 %:
    # the AST fine-tuning row of the paper.
    cm = [[1218, 361, 0, 0],
          [349, 300, 0, 0],
          [235, 0, 150, 0],
          [0, 0, 99, 44]]
    s = icbhi_scores(*from_confusion(cm))
    assert s["n"] == 2756
    assert format_scores(s) == "Sp 77.14 · Se 41.97 · Score 59.55"
    ci = {"sp": (75.0, 79.25), "se": (40, 44), "score": (58.1, 61.0)}
    assert format_scores(s, ci) == ("Sp 77.14 [75.00, 79.25] · Se 41.97 [40.00, 44.00] · "
                                    "Score 59.55 [58.10, 61.00]")


def test_two_class_scores():
    # normal 3 (2 right) → Sp 66.67; abnormal 2 (1 right) → Se 50; Score 58.33
    s = icbhi_scores([0, 0, 0, 1, 1], [0, 1, 0, 1, 0], n_classes=2)
    assert (s["sp"], s["se"], s["score"]) == pytest.approx((200 / 3, 50.0, 175 / 3))
    assert set(s["per_class_recall"]) == {"normal", "abnormal"}


def test_exact_class_versus_lenient_sensitivity():
    # one crackle predicted as wheeze: a miss for 4-class Se, a hit for normal-vs-abnormal Se
    y_true, y_pred = [0, 1], [0, 2]
    four = icbhi_scores(y_true, y_pred)
    two = icbhi_scores_2class_from_4(y_true, y_pred)
    assert (four["sp"], four["se"], four["score"]) == (100.0, 0.0, 50.0)
    assert (two["sp"], two["se"], two["score"]) == (100.0, 100.0, 100.0)
    # on the small example: Sp unchanged, Se 6/7 instead of 4/7
    y_true, y_pred = from_confusion(SMALL)
    two = icbhi_scores_2class_from_4(y_true, y_pred)
    assert two["sp"] == pytest.approx(80.0)
    assert two["se"] == pytest.approx(600 / 7)
    assert two["score"] == pytest.approx(82.857143, abs=1e-6)
    assert two["confusion"] == [[4, 1], [1, 6]]
    np.testing.assert_array_equal(to_binary([0, 1, 2, 3, 0]), [0, 1, 1, 1, 0])
    assert to_binary(torch.tensor([3, 0])).dtype == np.int64
    with pytest.raises(ValueError, match="outside 0..3"):
        to_binary([0, 4])


def test_empty_class_gives_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        no_normal = icbhi_scores([1, 2, 3], [1, 0, 3])
        no_abnormal = icbhi_scores([0, 0], [0, 1])
        nothing = icbhi_scores([], [])
        recall = per_class_recall([0, 1], [0, 1])
    assert math.isnan(no_normal["sp"]) and math.isnan(no_normal["score"])
    assert no_normal["se"] == pytest.approx(200 / 3)
    assert no_abnormal["sp"] == 50.0
    assert math.isnan(no_abnormal["se"]) and math.isnan(no_abnormal["score"])
    assert nothing["n"] == 0 and nothing["confusion"] == [[0] * 4] * 4
    assert all(math.isnan(nothing[k]) for k in ("sp", "se", "score"))
    assert math.isnan(recall["wheeze"]) and recall["crackle"] == 100.0
    assert format_scores(nothing) == "Sp nan · Se nan · Score nan"


def test_input_validation():
    with pytest.raises(ValueError, match="outside 0..3"):
        icbhi_scores([0, 4], [0, 1])
    with pytest.raises(ValueError, match="y_pred has label -1"):
        icbhi_scores([0, 1], [0, -1])
    with pytest.raises(ValueError, match="outside 0..1"):
        icbhi_scores([0, 2], [0, 1], n_classes=2)
    with pytest.raises(ValueError, match="differ in length"):
        icbhi_scores([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        icbhi_scores(np.zeros((2, 2), dtype=int), np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="non-integral"):
        icbhi_scores([0.0, 1.5], [0, 1])
    with pytest.raises(ValueError, match="integer class ids"):
        icbhi_scores(["normal"], [0])
    with pytest.raises(ValueError, match="n_classes"):
        icbhi_scores([0], [0], n_classes=1)


def test_list_array_and_tensor_inputs_agree():
    y_true, y_pred = from_confusion(SMALL)
    ref = icbhi_scores(y_true, y_pred)
    variants = [
        (np.array(y_true, dtype=np.int32), np.array(y_pred, dtype=np.uint8)),
        (torch.tensor(y_true), torch.tensor(y_pred)),
        (torch.tensor(y_true, dtype=torch.int32), y_pred),
        (np.array(y_true, dtype=np.float64), torch.tensor(y_pred, dtype=torch.float32)),
        (tuple(y_true), np.array(y_pred, dtype=np.int64)),
    ]
    for t, p in variants:
        assert icbhi_scores(t, p) == ref


def synthetic_cohort(n_patients: int = 126, seed: int = 0):
    """~7,000 cycles of realistic make-up: patients with 10-100 cycles, a patient-level
    tendency to abnormal sounds, a classifier right ~70 % of the time."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(10, 101, size=n_patients)
    patients = np.repeat(np.arange(n_patients), sizes)
    p_abnormal = rng.beta(2, 2, size=n_patients)[patients]
    abnormal = rng.random(len(patients)) < p_abnormal
    y_true = np.where(abnormal, rng.choice([1, 2, 3], size=len(patients), p=[0.55, 0.3, 0.15]), 0)
    right = rng.random(len(patients)) < 0.7
    y_pred = np.where(right, y_true, rng.integers(0, 4, size=len(patients)))
    return y_true, y_pred, patients


def test_bootstrap_is_deterministic_and_contains_the_point_estimate():
    y_true, y_pred, patients = synthetic_cohort()
    point = icbhi_scores(y_true, y_pred)
    ci = patient_bootstrap_ci(y_true, y_pred, patients, seed=3)
    assert ci == patient_bootstrap_ci(y_true, y_pred, patients, seed=3)
    assert ci != patient_bootstrap_ci(y_true, y_pred, patients, seed=4)
    assert ci["n_boot"] == 1000 and ci["n_valid"] == 1000
    for key in ("sp", "se", "score"):
        lo, hi = ci[key]
        assert lo < point[key] < hi
        assert 0.5 < hi - lo < 15  # a real interval, not a degenerate or absurd one
    narrow = patient_bootstrap_ci(y_true, y_pred, patients, seed=3, level=0.5)
    assert ci["score"][0] < narrow["score"][0] < narrow["score"][1] < ci["score"][1]
    # string patient ids and tensor labels give the same answer
    same = patient_bootstrap_ci(torch.tensor(y_true), y_pred, [f"p{p:03d}" for p in patients],
                                seed=3)
    assert same == ci


def test_bootstrap_is_fast():
    y_true, y_pred, patients = synthetic_cohort()
    assert 6000 < len(y_true) < 8000
    start = time.perf_counter()
    patient_bootstrap_ci(y_true, y_pred, patients, n_boot=1000)
    assert time.perf_counter() - start < 2.0


def test_bootstrap_resamples_patients_not_cycles():
    # Patient "A" holds all 10 abnormal cycles; B, C, D hold 10 normal cycles each. A replicate
    # draws 4 patients; it misses A with probability (3/4)^4 = 31.6 %, and then has no abnormal
    # cycle: Se and Score are NaN and the replicate is skipped. Resampling the 40 cycles instead
    # would miss all abnormal ones with probability (3/4)^40 ≈ 1e-5.
    y_true = [1] * 10 + [0] * 30
    y_pred = [1] * 5 + [2] * 5 + [0] * 25 + [3] * 5
    patients = ["A"] * 10 + ["B"] * 10 + ["C"] * 10 + ["D"] * 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ci = patient_bootstrap_ci(y_true, y_pred, patients, n_boot=2000, seed=1)
    skipped = 1 - ci["n_valid"] / ci["n_boot"]
    assert 0.28 < skipped < 0.35
    # Se of A's cycles is 50 % whatever the multiplicity: a drawn patient brings all its cycles
    assert ci["se"] == (50.0, 50.0)
    # Sp moves by patient: D's 10 normal cycles are 5 right, B's and C's all right
    lo, hi = ci["sp"]
    assert lo == 50.0 and hi == 100.0


def test_bootstrap_degenerate_inputs():
    y_true, y_pred = from_confusion(SMALL)
    point = icbhi_scores(y_true, y_pred)
    one = patient_bootstrap_ci(y_true, y_pred, [7] * len(y_true), n_boot=50)
    assert one["n_valid"] == 50
    for key in ("sp", "se", "score"):
        assert one[key] == pytest.approx((point[key], point[key]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        only_normal = patient_bootstrap_ci([0, 0, 0], [0, 1, 0], [1, 1, 2], n_boot=20)
    assert only_normal["n_valid"] == 0
    assert all(math.isnan(v) for k in ("sp", "se", "score") for v in only_normal[k])
    with pytest.raises(ValueError, match="patients"):
        patient_bootstrap_ci([0, 1], [0, 1], [1])
    with pytest.raises(ValueError, match="empty"):
        patient_bootstrap_ci([], [], [])
    with pytest.raises(ValueError, match="level"):
        patient_bootstrap_ci([0, 1], [0, 1], [1, 2], level=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        patient_bootstrap_ci([0, 1], [0, 1], [1, 2], n_boot=0)


def test_bootstrap_of_several_runs_is_that_of_their_mean():
    y_true, y_pred, patients = synthetic_cohort()
    single = patient_bootstrap_ci(y_true, y_pred, patients, seed=3)
    # one run given as (1, N), or the same run twice: the single run's interval exactly
    assert patient_bootstrap_ci(y_true, y_pred[None], patients, seed=3) == single
    assert patient_bootstrap_ci(y_true, np.stack([y_pred, y_pred]), patients, seed=3) == single
    # a run that is always right and one that is the cohort's: each replicate averages them,
    # so the interval lies between the perfect run's (100, 100) and the other's
    both = patient_bootstrap_ci(y_true, np.stack([y_true, y_pred]), patients, seed=3)
    for key in ("sp", "se", "score"):
        lo, hi = both[key]
        assert single[key][0] < lo < hi < 100.0
        assert hi - lo == pytest.approx((single[key][1] - single[key][0]) / 2, rel=0.25)
    with pytest.raises(ValueError, match="differ in length"):
        patient_bootstrap_ci(y_true, np.stack([y_pred, y_pred])[:, :-1], patients)
