"""The latent space of a trained AST: clean and Patch-Mix features, UMAP, and numbers beside it.

`encode_cycles` gives the 768-d (or profile-sized) feature the classifier sees for each cycle,
and the feature of the same cycle Patch-Mixed with a partner; `knn_scores` and `silhouettes`
turn "the classes look separated" into numbers; `umap_2d` is the picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsClassifier

from patchmix.augment import sample_lambda
from patchmix.config import MethodConfig
from patchmix.metrics import icbhi_scores
from patchmix.model import AST
from patchmix.patchmix import patch_mix


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

    `method` is the trained run's method config (`patchmix.experiment.load_trained` returns
    it): its ``mix_beta`` and ``mix_mode`` mix as its training did (default: `MethodConfig`'s).
    Batches are formed in row order; within a batch, partners and λ ~ Beta(β, β) are drawn
    from a generator seeded with `seed`, as a training step draws them.
    """
    method = method or MethodConfig()
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    clean, mixed, partner, lam = [], [], [], []
    for start in range(0, len(rows), batch_size):
        x = torch.from_numpy(np.asarray(features[rows[start:start + batch_size]])).to(device)
        tokens = model.embed(x)  # (b, N, D)
        mix = patch_mix(tokens, sample_lambda(method.mix_beta, g), g, method.mix_mode,
                        model.grid)
        feats = model.forward_head(model.encode(torch.cat([tokens, mix.tokens])),
                                   pre_logits=True)  # (2b, D)
        c, m = feats.float().cpu().chunk(2)
        clean.append(c)
        mixed.append(m)
        partner.append(mix.index.cpu() + start)
        lam.append(torch.full((len(x),), float(mix.lam)))
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


def mix_alignment(enc: Encoded) -> float:
    """Share of mixed features closer (cosine) to their dominant source than to the other.

    The Patch-Mix CL loss asks a mixed feature to resemble its two sources in proportion λ;
    pairs where a sample drew itself as partner, or λ = 0.5 exactly, are left out.
    """
    own = np.arange(len(enc.mixed))
    keep = (enc.partner != own) & (enc.lam != 0.5)
    if not keep.any():
        return float("nan")
    m, c = _unit(enc.mixed[keep]), _unit(enc.clean)
    dominant = np.where(enc.lam[keep] > 0.5, own[keep], enc.partner[keep])
    other = np.where(enc.lam[keep] > 0.5, enc.partner[keep], own[keep])
    closer = (m * c[dominant]).sum(1) > (m * c[other]).sum(1)
    return 100.0 * float(closer.mean())


def umap_2d(x: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """A 2-D UMAP embedding (n, 2) of `x` with cosine distance, reproducible for a seed."""
    import umap  # noqa: PLC0415 - slow import (numba), only when a picture is asked for

    reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(x) - 1), min_dist=0.1,
                        metric="cosine", random_state=seed, n_jobs=1)
    return reducer.fit_transform(x)
