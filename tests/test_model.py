"""The AST model (docs/recipe.md#the-model): shapes, token order, positional-embedding rules,
weights."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import patchmix.model.ast as model_mod
from patchmix.config import ModelConfig
from patchmix.model.ast import (
    AST,
    adapt_checkpoint_pos_embed,
    adapt_pos_embed,
    ast_from_checkpoint,
    audioset_grid,
    count_parameters,
    load_audioset_checkpoint,
    load_imagenet_checkpoint,
)
from patchmix.model.backbone import BACKBONES, build_model

TINY = ModelConfig(embed_dim=64, depth=2, num_heads=2, stride=16)  # grid (8, 49)
PAPER_BACKBONE_PARAMS = 85_984_512  # exact; derived from timm's DeiT in the test below


def tiny_model(seed: int = 0, **kw: object) -> AST:
    torch.manual_seed(seed)
    return AST(replace(TINY, **kw)).eval()


def backbone_names(model: AST) -> list[str]:
    return [k for k in model.state_dict() if not k.startswith("head.")]


def audioset_ckpt(cfg: ModelConfig, seed: int = 1, prefix: str = "module.") -> dict[str, Tensor]:
    """A random checkpoint in the official AudioSet AST key format for `cfg`'s backbone."""
    g = torch.Generator().manual_seed(seed)
    hs, ws = audioset_grid(cfg)
    d = cfg.embed_dim
    sd = {f"{prefix}v.{k}": torch.randn(v.shape, generator=g)
          for k, v in AST(cfg).state_dict().items() if not k.startswith("head.")}
    sd[f"{prefix}v.pos_embed"] = torch.randn(1, 2 + hs * ws, d, generator=g)
    sd[f"{prefix}v.head.weight"] = torch.randn(1000, d, generator=g)
    sd[f"{prefix}v.head.bias"] = torch.randn(1000, generator=g)
    sd[f"{prefix}v.head_dist.weight"] = torch.randn(1000, d, generator=g)
    sd[f"{prefix}v.head_dist.bias"] = torch.randn(1000, generator=g)
    sd[f"{prefix}mlp_head.0.weight"] = torch.randn(d, generator=g)
    sd[f"{prefix}mlp_head.0.bias"] = torch.randn(d, generator=g)
    sd[f"{prefix}mlp_head.1.weight"] = torch.randn(527, d, generator=g)
    sd[f"{prefix}mlp_head.1.bias"] = torch.randn(527, generator=g)
    return sd


def imagenet_ckpt(cfg: ModelConfig, seed: int = 2) -> dict[str, Tensor]:
    """A random DeiT-base distilled 384 state_dict (24 × 24 grid, RGB conv) for `cfg`'s width."""
    g = torch.Generator().manual_seed(seed)
    d, p = cfg.embed_dim, cfg.patch_size
    sd = {k: torch.randn(v.shape, generator=g)
          for k, v in AST(cfg).state_dict().items() if not k.startswith("head.")}
    sd["pos_embed"] = torch.randn(1, 2 + 24 * 24, d, generator=g)
    sd["patch_embed.proj.weight"] = torch.randn(d, 3, p, p, generator=g)
    for head in ("head", "head_dist"):
        sd[f"{head}.weight"] = torch.randn(1000, d, generator=g)
        sd[f"{head}.bias"] = torch.randn(1000, generator=g)
    return sd


# --- shapes, token order, forward ------------------------------------------------------------


def test_tiny_geometry_shapes():
    m = tiny_model()
    assert TINY.grid == (8, 49) and m.pos_embed.shape == (1, 2 + 8 * 49, 64)
    x = torch.randn(3, 798, 128)
    tokens = m.embed(x)
    assert tokens.shape == (3, 392, 64)
    assert m.encode(tokens).shape == (3, 394, 64) and m.forward_features(x).shape == (3, 394, 64)
    assert m.forward_head(m.forward_features(x), pre_logits=True).shape == (3, 64)
    assert m(x).shape == (3, 4)
    with pytest.raises(ValueError, match=r"\(B, 798, 128\)"):
        m(torch.randn(3, 128, 798))


def test_token_order_is_frequency_major():
    m = tiny_model(embed_dim=8, depth=1, num_heads=1, stride=10)  # paper grid (12, 79)
    assert m.grid == (12, 79)
    with torch.no_grad():
        m.patch_embed.proj.weight.zero_()
        m.patch_embed.proj.weight[:, 0, 0, 0] = 1.0  # reads the top-left cell of each patch
        m.patch_embed.proj.bias.zero_()
    for f, t in [(0, 0), (3, 5), (11, 78), (7, 40)]:
        x = torch.zeros(1, 798, 128)  # (B, time, mel)
        x[0, 10 * t, 10 * f] = 1.0
        tokens = m.embed(x)[0, :, 0]  # (948,)
        assert torch.nonzero(tokens).flatten().tolist() == [79 * f + t]


@pytest.mark.parametrize("patch", [16, 32])
def test_non_overlapping_patches_are_the_conv_as_one_matmul(patch):
    """stride = patch size (the demo: 32): the tiled matmul route gives the
    conv's tokens to float rounding, with and without leftover frames, and the conv's
    weight gradient; the weights keep the conv's key and shape."""
    m = tiny_model(patch_size=patch, stride=patch)
    x = torch.randn(3, 798, 128)
    conv = m.patch_embed.proj
    with torch.no_grad():
        reference = conv(x.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2)
    tokens = m.embed(x)  # (3, F'·T', D)
    assert tokens.shape == reference.shape == (3, m.cfg.n_tokens, 64)
    torch.testing.assert_close(tokens, reference, atol=2e-5, rtol=1e-5)
    tokens.sum().backward()
    via_tiles = conv.weight.grad.clone()
    conv.weight.grad = None
    conv(x.unsqueeze(1).transpose(2, 3)).sum().backward()
    torch.testing.assert_close(via_tiles, conv.weight.grad, atol=1e-3, rtol=1e-5)
    assert set(m.state_dict()) >= {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    assert m.state_dict()["patch_embed.proj.weight"].shape == (64, 1, patch, patch)


def test_forward_head_pools_the_mean_of_cls_and_dist_after_final_norm():
    m = tiny_model()
    x = torch.randn(2, 798, 128)
    manual = copy.deepcopy(m)
    for block in manual.blocks:
        block.attn.fused_attn = False  # the explicit softmax(QKᵀ/√d)V path
    with torch.no_grad():
        tokens = manual.patch_embed(x)  # (2, 392, 64)
        seq = torch.cat([manual.cls_token.expand(2, -1, -1), manual.dist_token.expand(2, -1, -1),
                         tokens], dim=1) + manual.pos_embed
        for block in manual.blocks:
            seq = block(seq)
        seq = manual.norm(seq)  # (2, 394, 64)
        expected = (seq[:, 0] + seq[:, 1]) / 2
        torch.testing.assert_close(m.forward_features(x), seq, atol=1e-5, rtol=1e-5)
        feat = m.forward_head(m.forward_features(x), pre_logits=True)
        torch.testing.assert_close(feat, expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(feat, seq[:, 0], atol=1e-3)
        torch.testing.assert_close(m(x), manual.head(expected), atol=1e-5, rtol=1e-5)


def test_batched_encode_equals_separate_calls():
    m = tiny_model()
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 392, 64, generator=g), torch.randn(2, 392, 64, generator=g)
    with torch.no_grad():
        joint = m.encode(torch.cat([a, b]))
        torch.testing.assert_close(joint, torch.cat([m.encode(a), m.encode(b)]),
                                   atol=1e-5, rtol=1e-5)


def test_no_dropout_train_mode_equals_eval_mode():
    m = tiny_model()
    x = torch.randn(2, 798, 128)
    with torch.no_grad():
        out_eval = m(x)
        m.train()
        torch.testing.assert_close(m(x), out_eval, atol=1e-6, rtol=1e-6)


def test_attention_goes_through_fused_sdpa(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    m = tiny_model()
    assert all(block.attn.fused_attn for block in m.blocks)
    with torch.no_grad():
        m(torch.randn(2, 798, 128))
    assert calls == [torch.Size([2, 2, 394, 32])] * 2  # (B, heads, N + 2, head_dim) per block


# --- positional embedding -----------------------------------------------------------------


def coded_grid(rows: int, cols: int) -> Tensor:
    """(1, 1, rows, cols) grid whose value is 100·row + col."""
    r = torch.arange(rows, dtype=torch.float32)[:, None]
    c = torch.arange(cols, dtype=torch.float32)[None, :]
    return (100 * r + c)[None, None]


def test_pos_embed_rules_by_hand():
    # Source 2 rows × 6 cols, target (F=2, T=3).
    grid = coded_grid(2, 6)
    # ast: T=3 ≤ 6 → columns from 3 − 1 = 2: 2, 3, 4; F=2 ≤ 2 → rows from 1 − 1 = 0: both rows.
    ast = adapt_pos_embed(grid, (2, 3), "ast")
    torch.testing.assert_close(ast, torch.tensor([[[2.0], [3], [4], [102], [103], [104]]]))
    # official: resize to the swapped (3, 2): columns from 3 − 1 = 2: 2, 3; then 3 rows > 2 →
    # bilinear rows 2 → 3 (align_corners=False): sources −1/6 → row 0, 1/2 → mean, 7/6 → row 1.
    # Grid [[2, 3], [52, 53], [102, 103]] read row-major over the tokens (f, t) in order.
    official = adapt_pos_embed(grid, (2, 3), "official")
    torch.testing.assert_close(official, torch.tensor([[[2.0], [3], [52], [53], [102], [103]]]))

    # Source 2 × 2 [[0, 1], [100, 101]], target (F=1, T=3).
    grid = coded_grid(2, 2)
    # ast: T=3 > 2 → columns interpolated to 3: [0, .5, 1] / [100, 100.5, 101];
    # F=1 ≤ 2 → row from 1 − 0 = 1.
    torch.testing.assert_close(adapt_pos_embed(grid, (1, 3), "ast"),
                               torch.tensor([[[100.0], [100.5], [101]]]))
    # official: swapped (3, 1): column from 1 − 0 = 1 → [1, 101]; rows 2 → 3 → [1, 51, 101].
    torch.testing.assert_close(adapt_pos_embed(grid, (1, 3), "official"),
                               torch.tensor([[[1.0], [51], [101]]]))
    with pytest.raises(ValueError, match="rule"):
        adapt_pos_embed(grid, (1, 3), "swap")  # type: ignore[arg-type]


def test_pos_embed_rules_on_the_real_audioset_grid():
    grid = torch.randn(1, 3, 12, 101)  # (1, D, 12 freq, 101 time)
    flat = lambda g: g.flatten(2).transpose(1, 2)  # noqa: E731
    ast = adapt_pos_embed(grid, (12, 79), "ast")
    assert ast.shape == (1, 948, 3)
    torch.testing.assert_close(ast, flat(grid[:, :, :, 11:90]), rtol=0, atol=0)
    official = adapt_pos_embed(grid, (12, 79), "official")
    expected = F.interpolate(grid[:, :, :, 44:56], size=(79, 12), mode="bilinear",
                             align_corners=False)
    torch.testing.assert_close(official, flat(expected), rtol=0, atol=0)
    # The quirk's time code repeats every 12 tokens; ast's runs across the 79 columns.
    assert not torch.allclose(ast, official)


def test_pos_embed_rules_on_the_real_imagenet_grid():
    grid = torch.randn(1, 3, 24, 24)
    flat = lambda g: g.flatten(2).transpose(1, 2)  # noqa: E731
    # ast: T=79 > 24 → interpolate to (24, 79); F=12 ≤ 24 → rows from 12 − 6 = 6.
    wide = F.interpolate(grid, size=(24, 79), mode="bilinear", align_corners=False)
    torch.testing.assert_close(adapt_pos_embed(grid, (12, 79), "ast"),
                               flat(wide[:, :, 6:18]), rtol=0, atol=0)
    # official: swapped (79, 12): columns from 12 − 6 = 6, then rows 24 → 79.
    tall = F.interpolate(grid[:, :, :, 6:18], size=(79, 12), mode="bilinear",
                         align_corners=False)
    torch.testing.assert_close(adapt_pos_embed(grid, (12, 79), "official"), flat(tall),
                               rtol=0, atol=0)


def test_checkpoint_pos_embed_keeps_cls_and_dist():
    pe = torch.randn(1, 2 + 12 * 101, 4)
    out = adapt_checkpoint_pos_embed(pe, (12, 101), (12, 79), "official")
    assert out.shape == (1, 950, 4)
    torch.testing.assert_close(out[:, :2], pe[:, :2], rtol=0, atol=0)


# --- weights ------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["ast", "official"])
@pytest.mark.parametrize("prefix", ["module.", ""])
def test_load_audioset_checkpoint_paper_width(tmp_path: Path, rule: str, prefix: str):
    cfg = ModelConfig(depth=1)  # paper width and grid, one layer
    sd = audioset_ckpt(cfg, prefix=prefix)
    assert sd[f"{prefix}v.pos_embed"].shape == (1, 1214, 768)
    path = tmp_path / "audioset_10_10_0.4593.pth"
    torch.save(sd, path)
    torch.manual_seed(0)
    m = AST(cfg)
    head = copy.deepcopy(m.head.state_dict())
    load_audioset_checkpoint(m, path, rule=rule)
    state = m.state_dict()
    for k in backbone_names(m):
        expected = sd[f"{prefix}v.{k}"]
        if k == "pos_embed":
            expected = adapt_checkpoint_pos_embed(expected, (12, 101), (12, 79), rule)
        torch.testing.assert_close(state[k], expected, rtol=0, atol=0)
    for k, v in head.items():  # the classifier stays freshly initialised
        torch.testing.assert_close(m.head.state_dict()[k], v, rtol=0, atol=0)
    assert m.weights == "audioset:audioset_10_10_0.4593.pth"


@pytest.mark.parametrize("rule", ["ast", "official"])
def test_load_imagenet_checkpoint_paper_width(tmp_path: Path, rule: str):
    cfg = ModelConfig(depth=1)
    sd = imagenet_ckpt(cfg)
    path = tmp_path / "deit_base_distilled_patch16_384-d0272ac0.pth"
    torch.save({"model": sd}, path)  # the layout facebookresearch/deit distributes
    m = load_imagenet_checkpoint(AST(cfg), path, rule=rule)
    state = m.state_dict()
    for k in backbone_names(m):
        expected = sd[k]
        if k == "pos_embed":
            expected = adapt_checkpoint_pos_embed(expected, (24, 24), (12, 79), rule)
        elif k == "patch_embed.proj.weight":
            expected = expected.sum(dim=1, keepdim=True)  # RGB → 1 channel
        torch.testing.assert_close(state[k], expected, rtol=0, atol=0)
    assert state["patch_embed.proj.weight"].shape == (768, 1, 16, 16)


def test_checkpoint_rejections(tmp_path: Path):
    good = audioset_ckpt(TINY)

    def load(sd: dict[str, Tensor], name: str) -> None:
        torch.save(sd, tmp_path / name)
        load_audioset_checkpoint(AST(TINY), tmp_path / name)

    missing = {k: v for k, v in good.items() if k != "module.v.blocks.1.mlp.fc1.weight"}
    with pytest.raises(ValueError, match=r"missing\.pth.*missing keys.*1: blocks\.1\.mlp\.fc1"
                                         r"\.weight; unexpected keys 0"):
        load(missing, "missing.pth")
    extra = {**good, "module.v.fc_norm.weight": torch.ones(64), "module.other": torch.ones(1)}
    with pytest.raises(ValueError, match=r"extra\.pth.*missing keys \(model names\) 0; "
                                         r"unexpected keys 2: module\.other, module\.v\.fc_norm"):
        load(extra, "extra.pth")
    bad = {**good, "module.v.norm.weight": torch.ones(65)}
    with pytest.raises(ValueError, match=r"module\.v\.norm\.weight: checkpoint \(65,\), "
                                         r"model \(64,\)"):
        load(bad, "shape.pth")
    bad_pe = {**good, "module.v.pos_embed": torch.randn(1, 100, 64)}
    with pytest.raises(ValueError, match=r"module\.v\.pos_embed.*\(1, 100, 64\)"):
        load(bad_pe, "pe.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_audioset_checkpoint(AST(TINY), tmp_path / "nowhere.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_audioset_checkpoint(AST(TINY), tmp_path / "junk.pth")
    # ImageNet: a key missing is as strict
    deit = {k: v for k, v in imagenet_ckpt(TINY).items() if k != "dist_token"}
    torch.save(deit, tmp_path / "deit.pth")
    with pytest.raises(ValueError, match=r"deit\.pth.*missing keys \(model names\) 1: dist_token"):
        load_imagenet_checkpoint(AST(TINY), tmp_path / "deit.pth")


def test_backbone_names_are_resolved_when_the_model_is_built():
    # the configuration holds a name; the registry says whether it is one
    cfg = replace(TINY, backbone="no_such_backbone")
    assert "ast" in BACKBONES
    with pytest.raises(ValueError, match="unknown backbone 'no_such_backbone'; choose from ast"):
        build_model(cfg)
    with pytest.raises(ValueError, match="backbone 'ast' is already registered"):
        BACKBONES.add("ast", lambda cfg: None)


def test_build_model_weights(tmp_path: Path):
    torch.save(audioset_ckpt(TINY), tmp_path / "as.pth")
    torch.save(imagenet_ckpt(TINY), tmp_path / "deit.pth")
    assert build_model(TINY).weights == "none"
    for rule in ("ast", "official"):
        cfg = replace(TINY, weights="audioset", pos_embed=rule,
                      audioset_checkpoint=str(tmp_path / "as.pth"))
        m = build_model(cfg)
        expected = adapt_checkpoint_pos_embed(audioset_ckpt(TINY)["module.v.pos_embed"],
                                              audioset_grid(TINY), TINY.grid, rule)
        torch.testing.assert_close(m.pos_embed.data, expected, rtol=0, atol=0)
    cfg = replace(TINY, weights="imagenet", imagenet_checkpoint=str(tmp_path / "deit.pth"))
    assert build_model(cfg).weights == "imagenet:deit.pth"
    with pytest.raises(ValueError, match="audioset_checkpoint"):
        build_model(replace(TINY, weights="audioset"))
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        build_model(replace(TINY, weights="imagenet",
                            imagenet_checkpoint=str(tmp_path / "gone.pth")))


def test_imagenet_download_failure_is_a_clear_error(monkeypatch):
    import timm

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ValueError, match="no network: pass a local DeiT checkpoint file"):
        load_imagenet_checkpoint(AST(TINY), None)


# --- the paper geometry -------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A full-size random AudioSet checkpoint (12 × 768), from a model's own state_dict."""
    torch.manual_seed(5)
    sd = {f"module.v.{k}": v for k, v in AST(ModelConfig()).state_dict().items()
          if not k.startswith("head.")}
    sd["module.v.pos_embed"] = torch.randn(1, 1214, 768)
    sd["module.mlp_head.0.weight"], sd["module.mlp_head.0.bias"] = torch.ones(768), torch.zeros(768)
    sd["module.mlp_head.1.weight"] = torch.zeros(527, 768)
    sd["module.mlp_head.1.bias"] = torch.zeros(527)
    path = tmp_path_factory.mktemp("ckpt") / "audioset_10_10_0.4593.pth"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def paper_model(paper_checkpoint: tuple[Path, dict]) -> AST:
    """`ast_from_checkpoint` on the full-size checkpoint, with the official quirk."""
    return ast_from_checkpoint(paper_checkpoint[0], n_classes=4, pos_embed="official").eval()


def test_ast_from_checkpoint_paper_geometry(paper_checkpoint, paper_model):
    path, sd = paper_checkpoint
    m = paper_model
    assert m.cfg == ModelConfig(pos_embed="official", weights="audioset",
                                audioset_checkpoint=str(path))
    assert m.grid == (12, 79) and m.pos_embed.shape == (1, 950, 768)
    torch.testing.assert_close(m.blocks[11].mlp.fc2.weight.data,
                               sd["module.v.blocks.11.mlp.fc2.weight"], rtol=0, atol=0)
    torch.testing.assert_close(
        m.pos_embed.data,
        adapt_checkpoint_pos_embed(sd["module.v.pos_embed"], (12, 101), (12, 79), "official"),
        rtol=0, atol=0)
    x = torch.randn(1, 798, 128)
    with torch.inference_mode():
        assert m.embed(x).shape == (1, 948, 768)
        assert m.forward_features(x).shape == (1, 950, 768)
        logits = m(x)
    assert logits.shape == (1, 4) and torch.isfinite(logits).all()


def test_paper_parameter_count(paper_model):
    import timm

    m = paper_model
    backbone = count_parameters(m)
    # From timm's DeiT-base distilled 384 (87.63 M with its heads): drop the two 1000-way heads,
    # the conv goes RGB → 1 channel, the pos_embed 578 → 950 tokens.
    with torch.device("meta"):
        deit = timm.create_model(model_mod.DEIT_NAME, pretrained=False)
    deit_total = sum(p.numel() for p in deit.parameters())
    assert deit_total == 87_630_032
    expected = deit_total - 2 * (768 * 1000 + 1000) - 768 * 2 * 16 * 16 + (950 - 578) * 768
    assert backbone == expected == PAPER_BACKBONE_PARAMS
    print(f"paper-geometry backbone parameters: {backbone:,}")  # 85.98 M
    assert count_parameters(m, backbone_only=False) == backbone + 2 * 768 + 768 * 4 + 4


def test_backbone_names_and_shapes_are_the_official_checkpoint_keys():
    """Written out by hand from the official format (docs/recipe.md#pretrained-weights), not
    derived from our model."""
    per_block = {
        "norm1.weight": (768,), "norm1.bias": (768,),
        "attn.qkv.weight": (2304, 768), "attn.qkv.bias": (2304,),
        "attn.proj.weight": (768, 768), "attn.proj.bias": (768,),
        "norm2.weight": (768,), "norm2.bias": (768,),
        "mlp.fc1.weight": (3072, 768), "mlp.fc1.bias": (3072,),
        "mlp.fc2.weight": (768, 3072), "mlp.fc2.bias": (768,),
    }
    expected = {
        "cls_token": (1, 1, 768), "dist_token": (1, 1, 768), "pos_embed": (1, 950, 768),
        "patch_embed.proj.weight": (768, 1, 16, 16), "patch_embed.proj.bias": (768,),
        "norm.weight": (768,), "norm.bias": (768,),
        **{f"blocks.{i}.{k}": s for i in range(12) for k, s in per_block.items()},
    }
    with torch.device("meta"):
        model = AST(ModelConfig())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert got == expected
    assert {k: tuple(v.shape) for k, v in model.head.state_dict().items()} == {
        "0.weight": (768,), "0.bias": (768,), "1.weight": (4, 768), "1.bias": (4,)}


class _CountOps(TorchDispatchMode):
    """Counts the aten ops that run (below autograd) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket).removeprefix("aten.")] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_modes_give_bit_identical_gradients_and_lean_recomputes_little(precision):
    torch.manual_seed(0)
    geometry = dict(embed_dim=32, depth=2, num_heads=2, stride=32)
    models = {mode: AST(ModelConfig(**geometry, activations=mode))
              for mode in ("store", "lean", "checkpoint")}
    for model in models.values():
        model.load_state_dict(models["store"].state_dict())
    x = torch.randn(3, 798, 128)
    grads, backward_ops = {}, {}
    for mode, model in models.items():
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(x).float().square().sum()
        with _CountOps() as count:
            loss.backward()
        grads[mode] = [p.grad for p in model.parameters()]
        backward_ops[mode] = count.ops
    for mode in ("lean", "checkpoint"):
        for a, b in zip(grads["store"], grads[mode], strict=True):
            assert torch.equal(a, b), mode
    store, lean, ckpt = backward_ops["store"], backward_ops["lean"], backward_ops["checkpoint"]
    # lean recomputes the 2 LayerNorms, the GELU and the proj matmul of each block, nothing more
    assert store["native_layer_norm"] == store["gelu"] == 0
    assert lean["native_layer_norm"] == 2 * 2 and lean["gelu"] == 2
    assert lean["mm"] + lean["addmm"] == store["mm"] + store["addmm"] + 2
    # checkpoint recomputes each block's 4 linear layers as well (3 without fc2: early stop)
    assert ckpt["addmm"] + ckpt["mm"] > store["addmm"] + store["mm"]
    with torch.no_grad():
        torch.testing.assert_close(models["store"](x), models["lean"](x), rtol=0, atol=0)


def test_activations_mode_is_validated():
    with pytest.raises(ValueError, match="activations"):
        ModelConfig(activations="none")


def test_compiled_blocks_are_recognised_so_lean_leaves_them_to_the_compiler():
    # `encode` skips the lean checkpoint wrapper for compiled blocks; that rests on
    # `_is_compiled`, which reads a private torch attribute set by `Module.compile()`
    model = AST(ModelConfig(embed_dim=32, depth=1, num_heads=2, stride=32))
    block = model.blocks[0]
    assert not model_mod._is_compiled(block)
    block.compile()  # lazy: nothing is compiled until the block is called
    assert model_mod._is_compiled(block)
