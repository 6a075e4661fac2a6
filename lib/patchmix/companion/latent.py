"""The latent space of a trained AST: clean and Patch-Mix features, UMAP, and numbers beside it.

`encode_cycles` gives the 768-d (or profile-sized) feature the classifier sees for each cycle,
and the feature of the same cycle Patch-Mixed with a partner; `knn_scores` and `silhouettes`
turn "the classes look separated" into numbers; `umap_2d` is the picture.

Where a mixed feature lands between its two sources: `mix_similarity` gives, per mixed sample,
its cosine similarity to its own clean feature and to its partner's; `mix_alignment` and
`mix_numbers` sum that up; `contrasted` swaps in what the contrastive loss compares (the
projected mixed feature against the clean target); `lambda_similarity_figure` and
`umap_figure` draw it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy.stats import spearmanr
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsClassifier

from patchmix.companion.plots import CLASS_COLORS, DEVICE_COLORS, PALETTE, scatter_2d
from patchmix.config import MethodConfig, config_from_dict
from patchmix.engine.metrics import icbhi_scores
from patchmix.engine.train import read_checkpoint
from patchmix.methods.base import Net
from patchmix.methods.patchmix_cl import mixed_pair
from patchmix.model.ast import AST
from patchmix.model.augment import sample_lambda
from patchmix.model.losses import Projector, contrastive_target


@dataclass
class Encoded:
    """Features of some cycles: clean, and mixed with a partner (row ``partner``) at ``lam``."""

    clean: np.ndarray  # (n, D)
    mixed: np.ndarray  # (n, D)
    partner: np.ndarray  # (n,) row (into these n) each mixed feature took patches from
    lam: np.ndarray  # (n,) share of a mixed sample's own patches


@torch.inference_mode()
def encode_cycles(model: AST, features: np.ndarray, rows: np.ndarray,
                  method: MethodConfig | None = None, *, seed: int = 0,
                  batch_size: int = 64) -> Encoded:
    """Clean and Patch-Mixed features of `features[rows]` (eval mode, no dropout anywhere).

    `method` is the trained run's method config (`patchmix.engine.experiment.load_trained` returns
    it): its ``mix_beta`` and ``mix_mode`` mix as its training did (default: `MethodConfig`'s).
    Batches are formed in row order; within a batch, partners and λ ~ Beta(β, β) are drawn
    from a generator seeded with `seed`, as a training step draws them.
    """
    method = method or MethodConfig()
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    net = Net(model)  # one process: the training step's view of the model, nothing sharded
    clean, mixed, partner, lam = [], [], [], []
    for start in range(0, len(rows), batch_size):
        x = torch.from_numpy(np.asarray(features[rows[start:start + batch_size]])).to(device)
        pair = mixed_pair(net, x, sample_lambda(method.mix_beta, g), g, method.mix_mode)
        clean.append(pair.clean.float().cpu())  # (b, D)
        mixed.append(pair.mixed.float().cpu())
        partner.append(pair.mix.index.cpu() + start)
        lam.append(torch.full((len(x),), float(pair.mix.lam)))
    return Encoded(torch.cat(clean).numpy(), torch.cat(mixed).numpy(),
                   torch.cat(partner).numpy(), torch.cat(lam).numpy())


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
               test_y: np.ndarray, k: int = 10) -> dict[str, float]:
    """ICBHI Sp/Se/Score and accuracy of a cosine k-NN classifier on frozen features.

    Fitted on the training cycles' features, scored on the test cycles': how much of the class
    structure the feature space holds without the trained head.
    """
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="cosine")
    pred = knn.fit(train_x, train_y).predict(test_x)  # cosine: no normalising needed
    scores = icbhi_scores(test_y, pred)
    return {"knn_sp": scores["sp"], "knn_se": scores["se"], "knn_score": scores["score"],
            "knn_accuracy": 100.0 * float(np.mean(pred == np.asarray(test_y)))}


def silhouettes(x: np.ndarray, **groupings: np.ndarray) -> dict[str, float]:
    """Cosine silhouette of `x` for each named grouping (NaN when it has < 2 groups).

    Near 1: tight, separated groups; near 0: mixed together. Comparing ``class`` with
    ``device`` shows whether the space is organised by sound class or by recording device.
    """
    out = {}
    for name, labels in groupings.items():
        labels = np.asarray(labels)
        ok = 2 <= len(np.unique(labels)) < len(labels)
        out[f"silhouette_{name}"] = (float(silhouette_score(x, labels, metric="cosine"))
                                     if ok else float("nan"))
    return out


def mix_similarity(enc: Encoded, labels: np.ndarray | None = None) -> pd.DataFrame:
    """Per mixed sample, its cosine similarity to its own clean feature and to its partner's.

    One row per mixed sample whose partner is another cycle (a sample that drew itself is
    left out: both similarities would be the same one): ``row`` (into the n encoded cycles),
    ``partner``, ``lam`` (share of its own patches), ``sim_own``, ``sim_partner`` and
    ``difference`` = own − partner, in [−2, 2]. With `labels` (n,): ``same_class``, whether
    both sources carry one label. ``enc.mixed`` and ``enc.clean`` may have other widths than
    the model's (`contrasted`), as long as both have the same.
    """
    own = np.arange(len(enc.mixed))
    keep = enc.partner != own
    rows, partner = own[keep], enc.partner[keep]
    m, c = _unit(enc.mixed[keep]), _unit(enc.clean)  # (k, D), (n, D)
    sim_own = (m * c[rows]).sum(1)  # (k,)
    sim_partner = (m * c[partner]).sum(1)  # (k,)
    out = pd.DataFrame({"row": rows, "partner": partner, "lam": enc.lam[keep],
                        "sim_own": sim_own, "sim_partner": sim_partner,
                        "difference": sim_own - sim_partner})
    if labels is not None:
        labels = np.asarray(labels)
        out["same_class"] = labels[rows] == labels[partner]
    return out


def mix_alignment(enc: Encoded) -> float:
    """Share (%) of mixed features closer (cosine) to their dominant source than to the other.

    The Patch-Mix CL loss asks a mixed feature to resemble its two sources in proportion λ;
    pairs where a sample drew itself as partner, or λ = 0.5 exactly, are left out.
    """
    return closer_share(mix_similarity(enc))


def closer_share(sims: pd.DataFrame) -> float:
    """`mix_alignment` of a `mix_similarity` table: % of rows (λ ≠ 0.5) whose mixed feature
    is nearer its dominant source; NaN without such a row."""
    sims = sims[sims["lam"] != 0.5]
    if sims.empty:
        return float("nan")
    # dominant = own source when λ > 0.5: its similarity must be the larger one
    closer = np.where(sims["lam"] > 0.5, sims["difference"] > 0, sims["difference"] < 0)
    return 100.0 * float(closer.mean())


def lambda_correlation(sims: pd.DataFrame) -> float:
    """Spearman rank correlation of λ with ``difference`` (a `mix_similarity` table).

    +1: the more of its own patches a mixed sample keeps, the nearer its own source it lies,
    monotonically; 0: λ says nothing about where it lies. NaN with fewer than 3 rows or a
    constant column (one λ for every pair).
    """
    if len(sims) < 3 or sims["lam"].nunique() < 2 or sims["difference"].nunique() < 2:
        return float("nan")
    return float(spearmanr(sims["lam"], sims["difference"]).statistic)


def mix_numbers(enc: Encoded, suffix: str = "") -> dict[str, float]:
    """The two numbers beside the λ figure, keyed for a table (`suffix` appended to each key):
    ``mix_closer_to_dominant_source`` (`mix_alignment`, %) and ``lambda_rank_correlation``
    (`lambda_correlation`)."""
    return {f"mix_closer_to_dominant_source{suffix}": mix_alignment(enc),
            f"lambda_rank_correlation{suffix}": lambda_correlation(mix_similarity(enc))}


def load_projector(run_dir: str | os.PathLike) -> tuple[Projector, str] | None:
    """The trained contrastive projector of a finished run and its ``target_type``, or None.

    Read from the run's ``final.pt`` (which holds the method's own modules beside the
    backbone), in eval mode: BatchNorm uses its running statistics. None when the run's
    method has no projector (fine-tuning).
    """
    saved = read_checkpoint(Path(run_dir) / "final.pt", ("method", "config"),
                            "run checkpoint (final.pt)")
    state = {k.removeprefix("projector."): v for k, v in saved["method"].items()
             if k.startswith("projector.")}
    if not state:
        return None
    cfg = config_from_dict(saved["config"])
    projector = Projector(cfg.model.embed_dim)
    projector.load_state_dict(state)
    return projector.eval(), cfg.method.target_type


@torch.inference_mode()
def contrasted(enc: Encoded, projector: Projector,
               target_type: str = MethodConfig.target_type) -> Encoded:
    """`enc` with the features the Patch-Mix contrastive loss compares: ``mixed`` becomes the
    projected query h(f̃) (n, out) and ``clean`` the loss's target, the raw clean feature for
    the ``grad_*`` target types (the paper's) or h(f) for ``project_*``
    (`patchmix.model.losses.contrastive_target`). The projector should be in eval mode."""
    dtype = next(projector.parameters()).dtype
    clean = torch.from_numpy(enc.clean).to(dtype)  # (n, D)
    target, _ = contrastive_target(clean, projector, target_type)  # (n, D) or (n, out)
    query = projector(torch.from_numpy(enc.mixed).to(dtype))  # (n, out)
    return dataclasses.replace(enc, clean=target.float().numpy(), mixed=query.float().numpy())


def umap_2d(x: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """A 2-D UMAP embedding (n, 2) of `x` with cosine distance, reproducible for a seed."""
    import umap  # noqa: PLC0415 - slow import (numba), only when a picture is asked for

    reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(x) - 1), min_dist=0.1,
                        metric="cosine", random_state=seed, n_jobs=1)
    threads = torch.get_num_threads()
    try:
        return reducer.fit_transform(x)
    finally:  # the fit leaves torch on as many threads as cores: what follows keeps its count
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- figures


def lambda_similarity_figure(panels: Mapping[str, pd.DataFrame], *,
                             temperatures: Mapping[str, float] | None = None,
                             sharey: bool | str = "row") -> Figure:
    """λ (x) against own − partner cosine similarity (y) of every mixed sample, a panel each.

    `panels` maps a title to a `mix_similarity` table (with ``same_class`` when known: pairs of
    one class are drawn in grey, since their two sources may look alike anyway). A line per
    group follows its median per λ bin (tenths); the panel's Spearman ρ and the share of mixed
    features nearer their dominant source are written in it.
    For the titles in `temperatures`, the dashed
    curve τ·ln(λ / (1 − λ)) is the difference at which the contrastive softmax over own and
    partner gives exactly the soft targets λ and 1 − λ (the loss's optimum for that pair).
    """
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.9 * n, 3.5), sharex=True, sharey=sharey,
                             squeeze=False)
    temperatures = temperatures or {}
    for ax, (title, sims) in zip(axes[0], panels.items(), strict=True):
        same = sims["same_class"].to_numpy() if "same_class" in sims else np.zeros(len(sims), bool)
        bins = np.linspace(0, 1, 11)
        centres = (bins[:-1] + bins[1:]) / 2
        for mask, colour, line, what in ((~same, PALETTE[0], "#004a75", "two classes"),
                                         (same, "#aaaaaa", "#555555", "one class")):
            if not mask.any():
                continue
            part = sims[mask]
            ax.scatter(part["lam"], part["difference"], s=6, alpha=0.45, color=colour, lw=0,
                       label=f"sources of {what}")
            which = np.clip(np.digitize(part["lam"], bins) - 1, 0, len(bins) - 2)
            median = part.groupby(which)["difference"].median()  # per λ bin with pairs
            ax.plot(centres[median.index], median.to_numpy(), color=line, lw=1.5,
                    label=f"median per λ bin, {what}")
        if title in temperatures:
            lam = np.linspace(0.02, 0.98, 97)
            ax.plot(lam, temperatures[title] * np.log(lam / (1 - lam)), color=PALETTE[3],
                    ls="--", lw=1.2, label=f"loss optimum, τ = {temperatures[title]:g}")
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.text(0.03, 0.97, f"ρ = {lambda_correlation(sims):.2f}\n"
                f"{closer_share(sims):.0f} % nearer the "
                f"dominant source\n{len(sims)} mixed samples", transform=ax.transAxes,
                va="top", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("λ (share of its own patches)")
        ax.set_xlim(0, 1)
    axes[0][0].set_ylabel("cos(own) − cos(partner)")
    handles = {label: h for ax in axes[0] for h, label in zip(*ax.get_legend_handles_labels(),
                                                               strict=True)}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center",
               ncols=min(len(handles), 4), frameon=False, markerscale=2)
    return fig


def pick_joined(enc: Encoded, k: int = 8, *, labels: np.ndarray | None = None,
                lam_range: tuple[float, float] = (0.2, 0.8)) -> np.ndarray:
    """Up to `k` mixed samples to join to their sources in a picture: rows (into ``enc``).

    Only samples mixed with another cycle, with λ in `lam_range` (both sources gave a fair
    share) when there are `k` of them; with `labels`, pairs of two classes first (their
    sources lie apart, so "in between" can be seen); one per λ value (a batch shares its λ)
    when there are `k` values. Evenly spaced in λ order, so the picks span the λ range;
    deterministic.
    """
    def prefer(rows: np.ndarray, keep: np.ndarray) -> np.ndarray:
        return rows[keep] if keep.sum() >= k else rows

    rows = np.flatnonzero(enc.partner != np.arange(len(enc.partner)))
    rows = prefer(rows, (enc.lam[rows] >= lam_range[0]) & (enc.lam[rows] <= lam_range[1]))
    if labels is not None:
        labels = np.asarray(labels)
        rows = prefer(rows, labels[rows] != labels[enc.partner[rows]])
    rows = rows[np.lexsort((rows, enc.lam[rows]))]  # by λ, then row
    first_of_lam = np.zeros(len(rows), bool)
    first_of_lam[np.unique(enc.lam[rows], return_index=True)[1]] = True
    rows = prefer(rows, first_of_lam)
    if len(rows) <= k:
        return rows
    return rows[np.round(np.linspace(0, len(rows) - 1, k)).astype(int)]


def umap_figure(maps: Mapping[str, tuple[np.ndarray, Encoded]], classes: Sequence[str],
                devices: Sequence[str], joined: np.ndarray) -> Figure:
    """Per model (a row): UMAP of the clean features by class and by device, and of the mixed
    features by the class of their dominant source, with the `joined` mixed samples linked to
    their own source (solid line, circle) and their partner (dashed line, square), λ written.

    `maps` maps a model name to (points (2n, 2), its `Encoded`): the 2-D embedding of the n
    clean features followed by the n mixed ones, fitted together (`umap_2d`). `classes` and
    `devices` (n,) name each encoded cycle's class and device.
    """
    classes, devices = np.asarray(classes), np.asarray(devices)
    fig, axes = plt.subplots(len(maps), 3, figsize=(13.5, 4.0 * len(maps)), squeeze=False)
    for (name, (points, enc)), ax_row in zip(maps.items(), axes, strict=True):
        clean_2d, mixed_2d = points[:len(enc.clean)], points[len(enc.clean):]
        dominant = np.where(enc.lam >= 0.5, np.arange(len(enc.lam)), enc.partner)
        scatter_2d(clean_2d, classes, title=f"{name}: clean, by class", palette=CLASS_COLORS,
                   ax=ax_row[0])
        scatter_2d(clean_2d, devices, title=f"{name}: clean, by device", palette=DEVICE_COLORS,
                   ax=ax_row[1])
        ax = ax_row[2]
        ax.scatter(clean_2d[:, 0], clean_2d[:, 1], s=5, color="#cccccc", lw=0,
                   label="clean (any class)")
        scatter_2d(mixed_2d, classes[dominant], palette=CLASS_COLORS, ax=ax,
                   title=f"{name}: mixed, by dominant source;\n{len(joined)} joined to "
                         "their sources")
        for i in joined:
            m, a, b = mixed_2d[i], clean_2d[i], clean_2d[enc.partner[i]]
            ax.plot(*zip(m, a, strict=True), color="black", lw=0.7)
            ax.plot(*zip(m, b, strict=True), color="black", lw=0.7, ls="--")
            ax.scatter(*a, s=28, facecolors="none", edgecolors="black", lw=0.9, marker="o")
            ax.scatter(*b, s=28, facecolors="none", edgecolors="black", lw=0.9, marker="s")
            ax.scatter(*m, s=22, color="black", marker="*")
            ax.annotate(f"{enc.lam[i]:.2f}", m, xytext=(3, 3), textcoords="offset points",
                        fontsize=7)
        handles, names = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="black", lw=0, marker="*"),
                    Line2D([], [], color="black", lw=0.7, marker="o", mfc="none"),
                    Line2D([], [], color="black", lw=0.7, ls="--", marker="s", mfc="none")]
        names += ["joined mixed sample (λ beside)", "→ own source (share λ)",
                  "→ partner (share 1 − λ)"]
        ax.legend(handles, names, frameon=False, fontsize=8, markerscale=1.5,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: the panel is busy
    return fig
