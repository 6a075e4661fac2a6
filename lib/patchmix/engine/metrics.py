"""Scores (docs/evaluation.md): specificity, sensitivity, ICBHI's and SPRSound's Scores, and a
patient bootstrap.

Class 0 is *normal*; every other class is *abnormal*. With the 4 ICBHI classes (normal,
crackle, wheeze, both) the official Se counts an abnormal cycle as a hit only when it is
predicted as **exactly** its class; `icbhi_scores_2class_from_4` gives the lenient
normal-vs-abnormal reading of the same 4-class predictions, a different number that must not be
mixed into 4-class tables. All scores are percentages; a score whose denominator is empty is
NaN (no crash, no warning). `sprsound_scores` adds SPRSound's average and harmonic scores and
its challenge Score, from the same Sp and Se.

Labels may be lists, numpy arrays or torch tensors of integer class ids (1-D).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from patchmix.data.dataset import CLASSES, CLASSES_2
from patchmix.data.sprsound import EVENT_TYPES


def class_names(n_classes: int) -> tuple[str, ...]:
    """Names of the classes: the shared names for 4 and 2 classes, SPRSound's event types for
    7, ``class_<c>`` otherwise."""
    if n_classes == 4:
        return CLASSES
    if n_classes == 2:
        return CLASSES_2
    if n_classes == 7:
        return EVENT_TYPES
    return tuple(f"class_{c}" for c in range(n_classes))


def _labels(y: Any, name: str) -> np.ndarray:
    """A 1-D int64 numpy copy of integer class ids given as list, array or tensor."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(f"{name} must hold integer class ids, got non-integral values")
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")


def _checked(y_true: Any, y_pred: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated (y_true, y_pred) as int64 arrays of equal length with ids in [0, n_classes)."""
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"y_true and y_pred differ in length: {len(t)} vs {len(p)}")
    for arr, name in ((t, "y_true"), (p, "y_pred")):
        bad = (arr < 0) | (arr >= n_classes)
        if bad.any():
            raise ValueError(
                f"{name} has label {int(arr[bad][0])} outside 0..{n_classes - 1} "
                f"({int(bad.sum())} such values)"
            )
    return t, p


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """100 · num / den elementwise, NaN where den == 0, without a division warning."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.where(den > 0, 100.0 * num / np.where(den > 0, den, 1.0), np.nan)


def _sp_se_score(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sp, Se, Score in percent from confusion matrices ``(..., n, n)`` (rows true)."""
    diag = np.diagonal(cm, axis1=-2, axis2=-1)  # (..., n)
    rows = cm.sum(axis=-1)  # (..., n) cycles per true class
    sp = _ratio(diag[..., 0], rows[..., 0])
    se = _ratio(diag[..., 1:].sum(axis=-1), rows[..., 1:].sum(axis=-1))
    return sp, se, (sp + se) / 2  # NaN propagates into Score


def _harmonic(sp: np.ndarray, se: np.ndarray) -> np.ndarray:
    """2·Sp·Se / (Sp + Se), 0 where both are 0, NaN where either is NaN."""
    total = sp + se
    return np.where(total > 0, 2 * sp * se / np.where(total > 0, total, 1.0), 0.0)


ALL = "all"  # the part (or split) label of rows that count every part together

SCORE_FAMILIES: tuple[str, ...] = ("icbhi", "sprsound")
"""How a Score is made of Sp and Se: ICBHI's mean, or SPRSound's mean of the mean (AS) and the
harmonic mean (HS)."""


def _family_scores(cm: np.ndarray, family: str) -> dict[str, np.ndarray]:
    """The scores of one family from confusion matrices ``(..., n, n)``, each ``(...)``."""
    if family not in SCORE_FAMILIES:
        raise ValueError(f"unknown score family {family!r}; choose from "
                         f"{', '.join(SCORE_FAMILIES)}")
    sp, se, average = _sp_se_score(cm)
    if family == "icbhi":
        return {"sp": sp, "se": se, "score": average}
    harmonic = _harmonic(sp, se)
    return {"sp": sp, "se": se, "as": average, "hs": harmonic, "score": (average + harmonic) / 2}


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int = 4) -> np.ndarray:
    """Confusion counts ``(n_classes, n_classes)`` int64: rows true class, columns predicted."""
    t, p = _checked(y_true, y_pred, n_classes)
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).astype(np.int64)


def per_class_recall(y_true: Any, y_pred: Any, n_classes: int = 4) -> dict[str, float]:
    """Recall of each class in percent, keyed by class name (NaN for a class with no cycle)."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    recall = _ratio(np.diagonal(cm), cm.sum(axis=1))
    return {name: float(r) for name, r in zip(class_names(n_classes), recall, strict=True)}


def icbhi_scores(y_true: Any, y_pred: Any, n_classes: int = 4) -> dict:
    """ICBHI Sp, Se and Score in percent, with the confusion matrix behind them.

    Sp = normal cycles predicted normal / normal cycles. Se = abnormal cycles predicted as
    exactly their own class / abnormal cycles (for ``n_classes=2``: abnormal predicted abnormal
    / abnormal). Score = (Sp + Se) / 2. Returns ``{"sp", "se", "score"}`` (floats, NaN when the
    denominator is empty), ``"n"`` (cycles), ``"per_class_recall"`` (name → percent) and
    ``"confusion"`` (list of lists, rows true, columns predicted).
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)  # (n, n)
    sp, se, score = _sp_se_score(cm)
    recall = _ratio(np.diagonal(cm), cm.sum(axis=1))
    return {
        "sp": float(sp),
        "se": float(se),
        "score": float(score),
        "n": int(cm.sum()),
        "per_class_recall": {
            name: float(r) for name, r in zip(class_names(n_classes), recall, strict=True)
        },
        "confusion": cm.tolist(),
    }


def sprsound_scores(y_true: Any, y_pred: Any, n_classes: int = 7) -> dict:
    """SPRSound's challenge scores in percent (Zhang et al., BioCAS 2022 Grand Challenge).

    Sp and Se as in `icbhi_scores` (class 0 is Normal; an adventitious event counts for Se only
    when predicted as exactly its class, so for 2 classes: adventitious predicted adventitious).
    AS = (Sp + Se) / 2 is the average score (ICBHI's Score), HS = 2·Sp·Se / (Sp + Se) the
    harmonic score, and Score = (AS + HS) / 2 the challenge's ranking score. Works for the seven
    event classes, the binary task and the four shared classes alike. Returns ``{"sp", "se",
    "as", "hs", "score", "n", "per_class_recall", "confusion"}``.
    """
    cm = confusion_matrix(y_true, y_pred, n_classes)  # (n, n)
    scores = {k: float(v) for k, v in _family_scores(cm, "sprsound").items()}
    recall = _ratio(np.diagonal(cm), cm.sum(axis=1))
    return {**scores, "n": int(cm.sum()),
            "per_class_recall": {name: float(r) for name, r in
                                 zip(class_names(n_classes), recall, strict=True)},
            "confusion": cm.tolist()}


def family_scores(y_true: Any, y_pred: Any, family: str = "icbhi", n_classes: int = 4) -> dict:
    """`icbhi_scores` or `sprsound_scores` by the family's name (`SCORE_FAMILIES`)."""
    if family not in SCORE_FAMILIES:
        raise ValueError(f"unknown score family {family!r}; choose from "
                         f"{', '.join(SCORE_FAMILIES)}")
    scorer = icbhi_scores if family == "icbhi" else sprsound_scores
    return scorer(y_true, y_pred, n_classes)


def scores_by_part(y_true: Any, y_pred: Any, parts: Any, families: Sequence[str] = ("icbhi",),
                   n_classes: int = 4) -> dict[str, dict[str, dict]]:
    """Scores of each part (e.g. ``test_intra`` and ``test_inter``) and, when there are
    several, of all of them together (``"all"``): ``{part: {family: scores}}``, parts in the
    order they first appear."""
    t, p = _checked(y_true, y_pred, n_classes)
    names = np.asarray(parts).astype(str)
    if len(names) != len(t):
        raise ValueError(f"parts must have one entry per cycle ({len(t)}), got {len(names)}")
    order = list(dict.fromkeys(names.tolist()))
    masks = {part: names == part for part in order}
    if len(order) > 1:
        masks[ALL] = np.ones(len(t), dtype=bool)
    return {part: {f: family_scores(t[m], p[m], f, n_classes) for f in families}
            for part, m in masks.items()}


def to_binary(y: Any) -> np.ndarray:
    """Map 4-class ICBHI labels to normal (0) vs abnormal (1) as an int64 array."""
    arr = _labels(y, "y")
    bad = (arr < 0) | (arr > 3)
    if bad.any():
        raise ValueError(f"y has label {int(arr[bad][0])} outside 0..3")
    return (arr != 0).astype(np.int64)


def icbhi_scores_2class_from_4(y_true4: Any, y_pred4: Any) -> dict:
    """Lenient scores of a 4-class model read as normal vs abnormal.

    Any abnormal cycle predicted as any abnormal class counts for Se (a crackle predicted as
    wheeze is a hit here but a miss in 4-class Se); Sp is the same as in 4-class scoring. This
    is the official code's ``--two_cls_eval``; the result has ``n_classes=2`` names.
    """
    t, p = _checked(y_true4, y_pred4, 4)
    return icbhi_scores(to_binary(t), to_binary(p), n_classes=2)


def patient_bootstrap_ci(
    y_true: Any,
    y_pred: Any,
    patients: Any,
    n_classes: int = 4,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    family: str = "icbhi",
) -> dict[str, Any]:
    """Percentile bootstrap intervals of Sp, Se and Score, resampling **patients**.

    Each replicate draws as many patients as there are, with replacement; every cycle of a
    drawn patient comes along (twice if the patient is drawn twice). A replicate whose Score is
    NaN (no normal or no abnormal cycle drawn) is skipped for all three metrics. Returns
    ``{"sp": (lo, hi), "se": (lo, hi), "score": (lo, hi), "n_valid": int, "n_boot": int}``;
    intervals are ``(nan, nan)`` when no replicate is valid. ``seed`` feeds a private
    ``numpy.random.Generator``, so a seed fixes the result. ``family="sprsound"`` gives
    intervals of SPRSound's scores instead (``sp``, ``se``, ``as``, ``hs``, ``score``).

    ``y_pred`` may also be (S, N): the predictions of S runs (e.g. seeds) on the same N cycles.
    A replicate then draws one set of patients for all runs and its metric is the mean of the
    runs' metrics: an interval for the seed-mean that tables report.
    """
    preds = y_pred.detach().cpu().numpy() if isinstance(y_pred, torch.Tensor) else y_pred
    preds = np.asarray(preds)
    runs = preds if preds.ndim == 2 else preds[None]  # (S, N)
    checked = [_checked(y_true, row, n_classes) for row in runs]
    t = checked[0][0]
    if isinstance(patients, torch.Tensor):
        patients = patients.detach().cpu().numpy()
    pid = np.asarray(patients)
    if pid.ndim != 1 or len(pid) != len(t):
        raise ValueError(f"patients must be 1-D with one entry per cycle ({len(t)}), "
                         f"got shape {pid.shape}")
    if len(t) == 0:
        raise ValueError("cannot bootstrap an empty set of cycles")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")

    _, group = np.unique(pid, return_inverse=True)  # (N,) patient index 0..P-1
    n_pat, k = int(group.max()) + 1, n_classes
    per_patient = np.stack([  # (S, P, k·k) confusion counts per run and patient
        np.bincount(group * k * k + t * k + p, minlength=n_pat * k * k).reshape(n_pat, k * k)
        for _, p in checked])

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_pat, size=(n_boot, n_pat))  # (n_boot, P) drawn patients
    offsets = (np.arange(n_boot) * n_pat)[:, None]
    times_drawn = np.bincount((draws + offsets).ravel(), minlength=n_boot * n_pat)
    times_drawn = times_drawn.reshape(n_boot, n_pat)  # (n_boot, P) multiplicity of each patient
    cms = (times_drawn @ per_patient).reshape(len(runs), n_boot, k, k)  # (S, n_boot, k, k)

    metrics = {k: m.mean(axis=0) for k, m in _family_scores(cms, family).items()}  # (n_boot,)
    valid = ~np.isnan(metrics["score"])  # means over runs
    alpha = (1.0 - level) / 2.0
    out: dict[str, Any] = {}
    for name, values in metrics.items():
        if valid.any():
            lo, hi = np.percentile(values[valid], [100 * alpha, 100 * (1 - alpha)])
            out[name] = (float(lo), float(hi))
        else:
            out[name] = (math.nan, math.nan)
    out["n_valid"] = int(valid.sum())
    out["n_boot"] = int(n_boot)
    return out


def format_scores(d: Mapping[str, Any], ci: Mapping[str, Sequence[float]] | None = None) -> str:
    """One line ``"Sp 77.14 · Se 41.97 · Score 59.55"``; with ``ci`` (from
    `patient_bootstrap_ci`) each value is followed by its interval, ``"Sp 77.14 [75.02, 79.31]"``.
    """
    parts = []
    for key, label in (("sp", "Sp"), ("se", "Se"), ("score", "Score")):
        text = f"{label} {float(d[key]):.2f}"
        if ci is not None and key in ci:
            lo, hi = ci[key]
            text += f" [{float(lo):.2f}, {float(hi):.2f}]"
        parts.append(text)
    return " · ".join(parts)
