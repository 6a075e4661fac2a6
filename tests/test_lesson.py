"""The lesson of notebook 03: Patch-Mix on two cycles, and the contrastive loss piece by piece."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from patchmix.companion.lesson import example_rows, loss_anatomy, mix_figure, mix_two_cycles
from patchmix.config import MethodConfig, ModelConfig
from patchmix.model.backbone import build_model
from patchmix.model.losses import Projector, patchmix_contrastive_loss

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _fbanks(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((798, 128), dtype=np.float32),
            rng.standard_normal((798, 128), dtype=np.float32) + 10.0)  # B is told apart by level


@pytest.mark.parametrize("stride", [10, 16])
def test_the_mixed_picture_takes_b_exactly_where_the_mask_says(stride):
    a, b = _fbanks()
    cfg = ModelConfig(stride=stride)
    pic = mix_two_cycles(a, b, 0.7, cfg, seed=0)
    n_f, n_t = cfg.grid
    assert pic.mask.shape == (n_f, n_t)
    assert pic.lam == pytest.approx(1 - pic.mask.sum() / pic.mask.size)  # λ from the mask
    assert 0.69 < pic.lam <= 0.7 + 1 / pic.mask.size
    assert pic.a.shape == pic.b.shape == pic.mixed.shape == (128, 798)  # mel rows × frames
    np.testing.assert_array_equal(pic.a, a.T)
    # each token's top-left cell (never overdrawn by a later patch) comes from its source
    for f in range(n_f):
        for t in range(n_t):
            cell = pic.mixed[f * stride:(f + 1) * stride, t * stride:(t + 1) * stride]
            source = (pic.b if pic.mask[f, t] else pic.a)[f * stride:(f + 1) * stride,
                                                          t * stride:(t + 1) * stride]
            np.testing.assert_array_equal(cell, source)
    covered = ((n_f - 1) * stride + cfg.patch_size, (n_t - 1) * stride + cfg.patch_size)
    assert np.isnan(pic.mixed[covered[0]:]).all() and np.isnan(pic.mixed[:, covered[1]:]).all()
    assert not np.isnan(pic.mixed[:covered[0], :covered[1]]).any()


def test_the_mix_always_pairs_a_with_b_and_says_which_draw_did():
    a, b = _fbanks(1)
    seeds = {mix_two_cycles(a, b, 0.5, seed=s).seed for s in range(6)}
    assert len(seeds) > 1  # draws that paired A with itself were skipped, not forced
    pic = mix_two_cycles(a, b, 0.5, mode="time", seed=0)
    assert (pic.mask == pic.mask[:1]).all()  # whole time columns
    assert mix_figure(pic).axes  # draws


def test_example_rows_take_one_per_class_then_fill_in_order():
    cycles = pd.DataFrame({"split": ["train", "test", "test", "test", "test", "test"],
                           "label": [1, 0, 0, 2, 0, 3]})
    assert list(example_rows(cycles, "test", (0, 1, 2, 3))) == [1, 3, 5]  # no test crackle
    assert list(example_rows(cycles, "test", (2, 0), n=4)) == [3, 1, 2, 4]


def test_the_anatomy_is_the_training_loss_row_by_row():
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=32, depth=1, num_heads=2, stride=32))
    projector = Projector(32).eval()
    x = np.random.default_rng(2).standard_normal((6, 798, 128), dtype=np.float32)
    y = np.array([0, 1, 2, 3, 0, 0])
    an = loss_anatomy(model, projector, x, y, 0.6, 0.1, MethodConfig(), seed=4)
    assert an.sim.shape == an.soft.shape == (6, 6) and an.per_row.shape == (6,)
    np.testing.assert_allclose(an.soft.sum(1), 1.0, rtol=1e-6)
    assert (an.per_row >= an.floor - 1e-5).all()  # cross-entropy ≥ entropy of the target
    # the same pieces through the training loss give its value
    with torch.inference_mode():
        tokens = model.embed(torch.from_numpy(x))
        clean = model.forward_head(model.encode(tokens), pre_logits=True)
        from patchmix.model.patchmix import patch_mix
        mix = patch_mix(tokens, 0.6, torch.Generator().manual_seed(4), "random", model.grid)
        mixed = model.forward_head(model.encode(mix.tokens), pre_logits=True)
        loss = patchmix_contrastive_loss(projector(mixed), clean, mix.index, mix.lam, 0.1)
    assert float(loss) == pytest.approx(float(an.per_row.mean()), rel=1e-5)
    np.testing.assert_array_equal(an.index, mix.index.numpy())
    # λ = 1: every target row is one-hot, the floor is 0
    assert np.allclose(loss_anatomy(model, projector, x, y, 1.0, 0.1).floor, 0.0)


def _tagged_cell(notebook: str, tag: str) -> str:
    cells = json.loads((NOTEBOOKS / notebook).read_text(encoding="utf-8"))["cells"]
    found = [c for c in cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(found) == 1, f"{notebook} should hold one cell tagged {tag!r}"
    return "".join(found[0]["source"])


def test_notebook_03s_plain_torch_step_gives_the_librarys_loss(capsys):
    """The cell tagged ``plain-torch-step`` spells the Patch-Mix CL step out in torch; on a
    model, projector and batch it must give what training computes (`mixed_pair`,
    `contrastive_terms`), S and M included, to float precision."""
    from patchmix.companion import lesson
    from patchmix.methods.base import Net
    from patchmix.methods.patchmix_cl import contrastive_terms, mixed_pair

    torch.manual_seed(1)
    model = build_model(ModelConfig(embed_dim=32, depth=2, num_heads=2, stride=32))
    projector = Projector(32)
    with torch.no_grad():  # BatchNorm running statistics away from the identity
        projector(torch.randn(64, 32) * 3 + 1)
    x = np.random.default_rng(5).standard_normal((6, 798, 128), dtype=np.float32)
    y = np.array([0, 1, 2, 3, 1, 0])
    cell = {"model": model, "projector": projector, "x": x, "y": y, "tau": 0.06,
            "LESSON_LAMBDA": 0.7, "lesson": lesson}
    exec(compile(_tagged_cell("03_patchmix_ablations.ipynb", "plain-torch-step"),
                 "plain-torch-step", "exec"), cell)
    with torch.no_grad():
        pair = mixed_pair(Net(model), torch.from_numpy(x), 0.7, torch.Generator().manual_seed(0),
                          "random")
        rows = contrastive_terms(pair, projector, torch.from_numpy(y), MethodConfig(), 0.06)
    np.testing.assert_array_equal(cell["mix"].index.numpy(), pair.mix.index.numpy())
    torch.testing.assert_close(cell["S"], rows.sim, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cell["M"], rows.soft)
    torch.testing.assert_close(cell["per_row"], rows.per_row, rtol=1e-5, atol=1e-6)
    assert float(cell["L_CL"]) == pytest.approx(float(rows.per_row.mean()), rel=1e-6)
    assert cell["L_CL"] > 0.5  # a real loss, not a degenerate zero
    assert "in plain torch" in capsys.readouterr().out  # the cell prints both values
