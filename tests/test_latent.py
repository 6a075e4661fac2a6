"""Where mixed features land (λ against similarity, the projected view, the joined UMAP), and
attention rollout on small models."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from patchmix.companion.latent import (
    Encoded,
    contrasted,
    lambda_correlation,
    lambda_similarity_figure,
    load_projector,
    mix_alignment,
    mix_numbers,
    mix_similarity,
    pick_joined,
    umap_figure,
)
from patchmix.companion.saliency import attention_rollout, first_agreed, rollout_figure
from patchmix.config import ModelConfig, with_overrides
from patchmix.engine.experiment import load_trained
from patchmix.engine.train import fit
from patchmix.model.ast import AST
from patchmix.model.losses import Projector


def _mixed(lam: np.ndarray, partner: np.ndarray, dim: int = 6) -> Encoded:
    """Orthonormal clean features and mixed ones that are exactly λ·own + (1 − λ)·partner."""
    clean = np.eye(len(lam), dim)
    mixed = lam[:, None] * clean + (1 - lam[:, None]) * clean[partner]
    return Encoded(clean, mixed, partner, lam)


def test_mix_similarity_of_exact_mixtures():
    lam = np.array([0.9, 0.6, 0.3, 0.8, 0.5])
    partner = np.array([1, 0, 3, 3, 2])  # row 3 drew itself: left out
    sims = mix_similarity(_mixed(lam, partner), labels=np.array([0, 0, 1, 2, 2]))
    assert sims["row"].tolist() == [0, 1, 2, 4]
    # cos(λe_i + (1−λ)e_j, e_i) = λ / √(λ² + (1−λ)²)
    norm = np.hypot(lam, 1 - lam)[[0, 1, 2, 4]]
    np.testing.assert_allclose(sims["sim_own"], lam[[0, 1, 2, 4]] / norm)
    np.testing.assert_allclose(sims["sim_partner"], (1 - lam[[0, 1, 2, 4]]) / norm)
    assert (np.sign(sims["difference"]) == np.sign(sims["lam"] - 0.5)).all()
    assert sims["same_class"].tolist() == [True, True, False, False]
    assert "same_class" not in mix_similarity(_mixed(lam, partner))


def test_lambda_correlation_and_mix_numbers():
    lam = np.linspace(0.05, 0.95, 10)
    partner = np.roll(np.arange(10), 1)
    enc = _mixed(lam, partner, dim=10)
    assert lambda_correlation(mix_similarity(enc)) == pytest.approx(1.0)
    swapped = _mixed(1 - lam, partner, dim=10)  # mixed with the shares the wrong way round
    backwards = Encoded(swapped.clean, swapped.mixed, partner, lam)
    assert lambda_correlation(mix_similarity(backwards)) == pytest.approx(-1.0)
    assert mix_alignment(backwards) == 0.0
    one_lam = _mixed(np.full(10, 0.7), partner, dim=10)
    assert math.isnan(lambda_correlation(mix_similarity(one_lam)))  # λ constant
    numbers = mix_numbers(enc, "_x")
    assert set(numbers) == {"mix_closer_to_dominant_source_x", "lambda_rank_correlation_x"}
    assert numbers["mix_closer_to_dominant_source_x"] == mix_alignment(enc) == 100.0


def test_contrasted_uses_the_projected_query_and_the_loss_target():
    torch.manual_seed(0)
    projector = Projector(6, out=6).eval()
    enc = _mixed(np.array([0.7, 0.4, 0.8]), np.array([1, 2, 0]))
    raw_target = contrasted(enc, projector, "grad_block")
    with torch.no_grad():
        query = projector(torch.from_numpy(enc.mixed).float()).numpy()
        projected_clean = projector(torch.from_numpy(enc.clean).float()).numpy()
    np.testing.assert_allclose(raw_target.mixed, query, rtol=1e-6)
    np.testing.assert_allclose(raw_target.clean, enc.clean)  # the paper: raw clean feature
    np.testing.assert_array_equal(raw_target.partner, enc.partner)
    np.testing.assert_allclose(contrasted(enc, projector, "project_block").clean,
                               projected_clean, rtol=1e-6)


def test_load_projector_reads_the_trained_projector(smoke_data, tmp_path):
    cfg, data = smoke_data
    cl = with_overrides(cfg, ["method.name=patchmix_cl", "epochs=1"])
    fit(cl, data, tmp_path / "cl", progress=False)
    projector, target_type = load_projector(tmp_path / "cl")
    assert not projector.training and target_type == cl.method.target_type
    saved = torch.load(tmp_path / "cl" / "last.pt", weights_only=False)["state"]["method"]
    torch.testing.assert_close(projector.net[0].weight, saved["projector.net.0.weight"])
    torch.testing.assert_close(projector.net[1].running_mean, saved["projector.net.1.running_mean"])
    assert not torch.equal(saved["projector.net.1.running_mean"],
                           torch.zeros(cl.model.embed_dim))  # trained, not a fresh BatchNorm
    fit(with_overrides(cfg, ["method.name=ce", "epochs=1"]), data, tmp_path / "ce",
        progress=False)
    assert load_projector(tmp_path / "ce") is None  # fine-tuning has no projector
    model, _ = load_trained(tmp_path / "cl" / "final.pt")
    assert model.cfg.embed_dim == projector.net[0].in_features


def test_pick_joined_spans_lambda_with_pairs_of_two_sources():
    rng = np.random.default_rng(0)
    n = 64
    lam = np.repeat(rng.uniform(0, 1, 8).round(2), 8)  # one λ per batch of 8, as encoded
    partner = np.array([b * 8 + p for b in range(8) for p in rng.permutation(8)])
    labels = rng.integers(0, 4, n)
    enc = Encoded(np.zeros((n, 2)), np.zeros((n, 2)), partner, lam)
    rows = pick_joined(enc, 4, labels=labels, lam_range=(0.0, 1.0))
    assert len(rows) == 4 and (partner[rows] != rows).all()
    assert (labels[rows] != labels[partner[rows]]).all()
    assert len(set(lam[rows])) == 4 and (np.diff(lam[rows]) > 0).all()  # one per λ, spread
    assert len(pick_joined(enc, 100)) == int((partner != np.arange(n)).sum())
    assert (pick_joined(enc, 4) == pick_joined(enc, 4)).all()


def test_lambda_and_umap_figures_draw_what_they_say():
    lam = np.repeat(np.linspace(0.1, 0.9, 5), 4)
    partner = np.array([b * 4 + (i + 1) % 4 for b in range(5) for i in range(4)])
    enc = _mixed(lam, partner, dim=20)
    sims = mix_similarity(enc, labels=np.arange(20) % 2)
    fig = lambda_similarity_figure({"a": sims, "b": sims}, temperatures={"b": 0.1})
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(fig.axes[1].lines) == len(fig.axes[0].lines) + 1  # + the loss-optimum curve
    plt.close(fig)

    points = np.random.default_rng(0).normal(size=(40, 2))
    joined = pick_joined(enc, 3)
    fig = umap_figure({"m": (points, enc)}, np.array(["normal", "wheeze"] * 10),
                      np.array(["Meditron"] * 20), joined)
    mixed_panel = fig.axes[2]
    assert len(mixed_panel.lines) == 2 * len(joined)  # a solid and a dashed line per sample
    assert sum(line.get_linestyle() == "--" for line in mixed_panel.lines) == len(joined)
    legend = [t.get_text() for t in mixed_panel.get_legend().get_texts()]
    assert {"joined mixed sample (λ beside)", "→ own source (share λ)",
            "→ partner (share 1 − λ)"} <= set(legend)
    plt.close(fig)


def _tiny(stride: int = 32, depth: int = 2) -> AST:
    torch.manual_seed(0)
    return AST(ModelConfig(embed_dim=16, depth=depth, num_heads=2, stride=stride)).eval()


def test_attention_rollout_on_a_smoke_model_and_the_paper_grid():
    x = torch.randn(3, 798, 128)
    model = _tiny()
    maps = attention_rollout(model, x)
    assert maps.shape == (3, *model.grid) == (3, 4, 25)  # the smoke profile's grid
    assert np.isfinite(maps).all() and (maps >= 0).all()
    assert (maps.sum((1, 2)) <= 1 + 1e-5).all()
    assert all(block.attn.fused_attn for block in model.blocks)  # the setting is restored
    paper = _tiny(stride=10, depth=1)
    assert attention_rollout(paper, x[:1]).shape == (1, 12, 79)
    assert attention_rollout(model, x.numpy()).shape == (3, 4, 25)  # numpy input too
    # residual 1: attention is ignored, CLS and DIST only draw from themselves
    assert np.abs(attention_rollout(model, x, residual=1.0)).max() == 0.0


def test_attention_rollout_of_one_block_is_its_head_averaged_attention():
    model = _tiny(depth=1)
    x = torch.randn(2, 798, 128)
    block = model.blocks[0]
    with torch.no_grad():
        tokens = model.embed(x)
        prefix = torch.cat([model.cls_token, model.dist_token], 1).expand(2, -1, -1)
        h = block.norm1(torch.cat([prefix, tokens], 1) + model.pos_embed)  # (B, 2 + N, D)
        q, k, _ = block.attn.qkv(h).reshape(2, h.shape[1], 3, 2, 8).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1).mean(1)  # (B, 2 + N, 2 + N)
    expected = attn[:, :2, 2:].mean(1).reshape(2, *model.grid).numpy()
    np.testing.assert_allclose(attention_rollout(model, x, residual=0.0), expected, rtol=1e-4,
                               atol=1e-7)
    with torch.no_grad():  # the rollout leaves the model's output as it was
        before = model(x)
        attention_rollout(model, x)
        torch.testing.assert_close(model(x), before)


def test_first_agreed_prefers_cycles_both_models_get_right():
    labels = np.array([0, 1, 1, 2, 2, 1])
    a = np.array([0, 0, 1, 2, 0, 1])
    b = np.array([0, 1, 0, 1, 2, 1])
    assert first_agreed(labels, [a, b], [1, 2, 3]) == {1: 5, 2: 3}  # no one agrees on 2: first
    assert first_agreed(labels, [a], [2]) == {2: 3}


def test_rollout_figure_has_a_row_per_model():
    model = _tiny()
    x = np.random.default_rng(0).normal(size=(2, 798, 128)).astype(np.float32)
    maps = attention_rollout(model, x)
    fig = rollout_figure(x, {"A": maps, "B": maps}, model.cfg, titles=["crackle", "wheeze"],
                         captions={"A": ["predicts crackle", "predicts normal"]},
                         cycle_seconds=[2.5, 9.0])
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 6
    assert panels[2].get_title(loc="left") == "A: predicts crackle"
    assert len(panels[0].lines) == 1 and len(panels[1].lines) == 0  # 9 s: no repeat to mark
    plt.close(fig)
