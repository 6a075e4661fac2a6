"""The backbone: Audio Spectrogram Transformer on timm blocks, and its pretrained weights.

`AST` is a DeiT-base distilled backbone (timm `Block`s) over a 1-channel, stride-10 patch
embedding of the 128 mel × 798 frame fbank: 12 × 79 = 948 tokens, frequency-major. It speaks
timm's language — `forward_features(x)` returns the tokens (B, 2 + N, D), `forward_head(x,
pre_logits=False)` pools them (mean of the CLS and DIST outputs) and classifies — and splits
`forward_features` where Patch-Mix acts: `embed` (the patch conv only) and `encode` (CLS + DIST,
positional embedding, blocks, final norm), so tokens can be mixed in between and a clean and a
mixed batch can share one `encode` call. What each block keeps for the backward pass is
`ModelConfig.activations`: everything (``"store"``), only the outputs of attention and of the
widening matmuls (``"lean"``, selective activation checkpointing) or only its input
(``"checkpoint"``); the gradients are the same.

It is the backbone ``ast`` of the registry `patchmix.model.backbone.BACKBONES`. Positional
embeddings of a pretrained grid are fitted to ours by `adapt_pos_embed`, with the AST rule
(``"ast"``, correct) or the official code's swapped-dimension quirk (``"official"``). Weights come
only from local files in the official key formats (the AudioSet AST checkpoint
``audioset_10_10_0.4593.pth`` and a DeiT ImageNet checkpoint) and load strictly: every backbone
tensor is filled and every checkpoint tensor is used or is a known classifier head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from patchmix.config import ModelConfig, PosEmbedRule
from patchmix.model.backbone import register_backbone

N_PREFIX = 2  # CLS and DIST tokens
DEIT_NAME = "deit_base_distilled_patch16_384"
AUDIOSET_INPUT = (128, 1024)  # (mel bins, frames) the AudioSet AST was trained on → 12 × 101
# Checkpoint tensors that are classifier heads of the source task: dropped, never an error.
_DISCARDED_HEADS = ("head.", "head_dist.")  # DeiT's ImageNet heads (under `v.` in AudioSet)
_AUDIOSET_HEAD = "mlp_head."  # the 527-class AudioSet head


class PatchEmbed(nn.Module):
    """1-channel conv patch embedding; `proj` keeps the official key `patch_embed.proj.*`."""

    def __init__(self, embed_dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, F) fbank → (B, F'·T', D) tokens, frequency-major (token k = T'·f + t)."""
        p, s = self.proj.kernel_size[0], self.proj.stride[0]
        if p == s:  # non-overlapping patches: the same sums as one matmul (see `_tile`)
            w = self.proj.weight[:, 0].transpose(1, 2).flatten(1)  # (D, P·P) over (time, freq)
            return F.linear(_tile(x, p), w, self.proj.bias)  # (B, F'·T', D)
        x = x.unsqueeze(1).transpose(2, 3)  # (B, 1, F, T): rows frequency, columns time
        x = self.proj(x)  # (B, D, F', T')
        return x.flatten(2).transpose(1, 2)  # (B, F'·T', D)


def _tile(x: Tensor, p: int) -> Tensor:
    """(B, T, F) → (B, F'·T', P·P): the non-overlapping P × P patches of the (F, T) image,
    frequency-major, each flattened over (time, frequency) so that the copy moves whole runs
    of P bins; frames and bins left over at the end are dropped, as the conv drops them.

    Why not the conv: on CPU its backward (the weight gradient) and the transposed input's copy
    cost a third of a small model's training step, and this route needs neither."""
    b, t, f = x.shape
    tt, ff = t // p, f // p
    x = x[:, :tt * p, :ff * p].reshape(b, tt, p, ff, p)  # (B, T', time in, F', freq in)
    return x.permute(0, 3, 1, 2, 4).reshape(b, ff * tt, p * p)  # (B, F'·T', P·P)


class AST(nn.Module):
    """Audio Spectrogram Transformer: DeiT distilled backbone + LayerNorm/Linear classifier.

    Parameter names follow the official checkpoints without their `module.v.` prefix
    (`cls_token`, `dist_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.{i}.*`, `norm.*`);
    the classifier is `head` (= the official `mlp_head`). No dropout, no drop-path.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.grid = cfg.grid  # (12, 79) for the paper geometry
        self.patch_embed = PatchEmbed(d, cfg.patch_size, cfg.stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_tokens + N_PREFIX, d))  # (1, 950, D)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)  # DeiT's LayerNorm
        self.blocks = nn.Sequential(*[
            Block(d, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(cfg.depth)
        ])
        self.set_fused_attention(True)  # whatever TIMM_FUSED_ATTN says
        self.norm = norm_layer(d)
        # Official mlp_head: LayerNorm (PyTorch's eps) + Linear, PyTorch's default init.
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.n_classes))
        self.weights = "none"  # which pretrained weights were loaded, set by the loaders
        self._init_backbone()

    def _init_backbone(self) -> None:
        """timm's DeiT initialisation (the from-scratch starting point)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def embed(self, x: Tensor) -> Tensor:
        """Patch embedding only: fbank (B, T, F) → tokens (B, N, D), frequency-major."""
        expected = (self.cfg.n_frames, self.cfg.n_mels)
        if x.ndim != 3 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"expected fbank of shape (B, {expected[0]}, {expected[1]}), "
                             f"got {tuple(x.shape)}")
        return self.patch_embed(x)  # (B, 948, D)

    def encode(self, tokens: Tensor) -> Tensor:
        """Patch tokens (B, N, D) → output tokens (B, 2 + N, D): CLS/DIST, pos_embed, blocks,
        final norm."""
        b = tokens.shape[0]
        prefix = torch.cat([self.cls_token, self.dist_token], dim=1).expand(b, -1, -1)  # (B, 2, D)
        x = torch.cat([prefix, tokens], dim=1) + self.pos_embed  # (B, 950, D)
        mode = self.cfg.activations
        if mode == "store" or not torch.is_grad_enabled() or _is_compiled(self.blocks[0]):
            x = self.blocks(x)  # (compiled blocks: the compiler plans what to recompute itself)
        else:
            lean = {"context_fn": _lean_contexts} if mode == "lean" else {}
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False, **lean)
        return self.norm(x)  # (B, 950, D)

    def forward_features(self, x: Tensor) -> Tensor:
        """Fbank (B, T, F) → output tokens (B, 2 + N, D) = `encode(embed(x))`."""
        return self.encode(self.embed(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Output tokens (B, 2 + N, D) → the feature (B, D), the mean of the CLS and DIST
        outputs (``pre_logits=True``), or its logits (B, n_classes)."""
        feature = (x[:, 0] + x[:, 1]) / 2  # (B, D)
        return feature if pre_logits else self.head(feature)

    def forward(self, x: Tensor) -> Tensor:
        """Fbank (B, T, F) → logits (B, n_classes)."""
        return self.forward_head(self.forward_features(x))

    def set_fused_attention(self, fused: bool) -> None:
        """Fused ``F.scaled_dot_product_attention`` (the default) or timm's manual attention,
        ``softmax(q·kᵀ/√d)·v`` with the (B, H, N, N) matrix materialised, in every block."""
        for block in self.blocks:
            block.attn.fused_attn = fused


# --- activation memory ---------------------------------------------------------------------

_aten = torch.ops.aten
_ATTENTION_OPS = frozenset(
    getattr(_aten, name).default for name in (
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
    if hasattr(_aten, name))


def _lean_policy(ctx: object, op: object, *args: object, **kwargs: object) -> CheckpointPolicy:
    """What a ``"lean"`` block keeps for backward: the fused attention's outputs and the outputs
    of the two widening matmuls, qkv (D → 3D) and fc1 (D → 4D): 9 of the 16 activation tensors
    per token that a plain block stores. Everything else is recomputed in backward from those
    and the block input: LayerNorms, GELU, views, residual adds, and proj (D → D, 1/12 of the
    block's linear FLOPs). fc2 (4D → D) is marked for recomputation but never rerun: no backward
    needs its output, and the non-reentrant checkpoint stops recomputing once it has every
    tensor the backward asked for."""
    if op in _ATTENTION_OPS:
        return CheckpointPolicy.MUST_SAVE
    if op is _aten.addmm.default or op is _aten.mm.default:
        n_in, n_out = args[-1].shape  # linear's transposed weight (in, out)
        if n_out > n_in:
            return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _lean_contexts() -> tuple[object, object]:
    return create_selective_checkpoint_contexts(_lean_policy)


def _is_compiled(module: nn.Module) -> bool:
    """Whether `module.compile()` was called (torch keeps the compiled forward there)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def count_parameters(model: nn.Module, backbone_only: bool = True) -> int:
    """Number of parameters, without the classifier `head.*` when `backbone_only`."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not (backbone_only and name.startswith("head.")))


# --- positional embedding ------------------------------------------------------------------


def _fit_grid(grid: Tensor, rows: int, cols: int) -> Tensor:
    """The AST resize of a (1, D, Hs, Ws) grid to (1, D, rows, cols): columns then rows.

    A dimension no larger than the source is cut from its middle, starting at
    ``int(S/2) - int(n/2)``; a larger one is bilinearly interpolated (align_corners=False). This
    is AST's ImageNet rule verbatim and equals its AudioSet rule (which interpolates at n == S:
    a same-size bilinear resize is the identity, as is the full-width cut).
    """
    _, _, hs, ws = grid.shape
    if cols <= ws:
        start = ws // 2 - cols // 2
        grid = grid[:, :, :, start:start + cols]  # (1, D, Hs, cols)
    else:
        grid = F.interpolate(grid, size=(hs, cols), mode="bilinear", align_corners=False)
    if rows <= hs:
        start = hs // 2 - rows // 2
        grid = grid[:, :, start:start + rows, :]  # (1, D, rows, cols)
    else:
        grid = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=False)
    return grid


def adapt_pos_embed(grid_pe: Tensor, target_grid: tuple[int, int],
                    rule: PosEmbedRule = ModelConfig.pos_embed) -> Tensor:
    """Fit a pretrained positional grid (1, D, Hs, Ws) to our tokens: → (1, F·T, D).

    ``target_grid`` is (F, T), frequency rows × time columns. Rule ``"ast"`` resizes the grid to
    (F, T) (`_fit_grid`: for AudioSet's 12 × 101 and (12, 79), keep the rows and take time
    columns 11..89) and flattens it frequency-major, as the tokens are. Rule ``"official"``
    reproduces the official code, which passes the dims swapped: it resizes to (T, F) — for
    AudioSet, columns 44..55 then the 12 rows interpolated to 79 — flattens that row-major and
    lays the F·T vectors over the tokens in token order, so the time code repeats every F tokens.
    """
    if grid_pe.ndim != 4 or grid_pe.shape[0] != 1:
        raise ValueError(f"expected a (1, D, H, W) grid, got {tuple(grid_pe.shape)}")
    f, t = target_grid
    if rule == "ast":
        grid = _fit_grid(grid_pe, f, t)  # (1, D, F, T)
    elif rule == "official":
        grid = _fit_grid(grid_pe, t, f)  # (1, D, T, F), read as F·T tokens
    else:
        raise ValueError(f"rule must be 'ast' or 'official', not {rule!r}")
    return grid.flatten(2).transpose(1, 2).contiguous()  # (1, F·T, D)


def adapt_checkpoint_pos_embed(pos_embed: Tensor, source_grid: tuple[int, int],
                               target_grid: tuple[int, int], rule: PosEmbedRule) -> Tensor:
    """A checkpoint's (1, 2 + Hs·Ws, D) pos_embed → ours (1, 2 + F·T, D); CLS/DIST kept as is."""
    hs, ws = source_grid
    d = pos_embed.shape[-1]
    grid = pos_embed[:, N_PREFIX:].transpose(1, 2).reshape(1, d, hs, ws)  # (1, D, Hs, Ws)
    return torch.cat([pos_embed[:, :N_PREFIX], adapt_pos_embed(grid, target_grid, rule)], dim=1)


def audioset_grid(cfg: ModelConfig) -> tuple[int, int]:
    """Token grid of the AudioSet AST for `cfg`'s patch and stride: (12, 101) for the paper."""
    n_mels, n_frames = AUDIOSET_INPUT
    return ((n_mels - cfg.patch_size) // cfg.stride + 1,
            (n_frames - cfg.patch_size) // cfg.stride + 1)


# --- checkpoints ---------------------------------------------------------------------------


def _read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (a state_dict, or one under "model"/"state_dict")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state_dict of tensors")
    return dict(obj)


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


def _key_list(keys: set[str]) -> str:
    return f"{len(keys)}: {', '.join(sorted(keys))}" if keys else "0"


def _load_backbone(model: AST, tensors: dict[str, tuple[str, Tensor]], unexpected: set[str],
                   source: str, source_grid: tuple[int, int] | None,
                   rule: PosEmbedRule) -> None:
    """Strictly copy checkpoint tensors into `model`'s backbone; adapt pos_embed.

    ``tensors`` maps our parameter name → (checkpoint key, tensor); ``unexpected`` holds
    checkpoint keys that map to no name. ``source_grid`` None means a square grid (DeiT). Raises
    ValueError naming the missing and unexpected keys (sorted, counted) or the key and both
    shapes of a mismatch.
    """
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing = set(own) - set(tensors)
    unexpected = unexpected | {tensors[k][0] for k in set(tensors) - set(own)}
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint does not match the model; missing keys (model "
                         f"names) {_key_list(missing)}; unexpected keys {_key_list(unexpected)}")
    state = model.state_dict()
    for name, target in own.items():
        key, value = tensors[name]
        if name == "pos_embed":
            d = target.shape[-1]
            n = value.shape[1] - N_PREFIX if value.ndim == 3 else -1
            hs, ws = source_grid or (math.isqrt(max(n, 0)),) * 2
            if value.ndim != 3 or value.shape[0] != 1 or value.shape[2] != d or hs * ws != n:
                raise ValueError(f"{source}: shape mismatch for {key}: checkpoint "
                                 f"{tuple(value.shape)}, expected (1, {N_PREFIX} + {hs}·{ws}, "
                                 f"{d}) for a {hs} × {ws} source grid")
            value = adapt_checkpoint_pos_embed(value.float(), (hs, ws), model.grid, rule)
        elif value.shape != target.shape:
            raise ValueError(f"{source}: shape mismatch for {key}: checkpoint "
                             f"{tuple(value.shape)}, model {tuple(target.shape)}")
        state[name] = value.to(target.dtype)
    model.load_state_dict(state, strict=True)


def load_audioset_checkpoint(model: AST, path: str | Path, *,
                             rule: PosEmbedRule = ModelConfig.pos_embed,
                             source_grid: tuple[int, int] | None = None) -> AST:
    """Load the official AudioSet AST checkpoint (``audioset_10_10_0.4593.pth``) into `model`.

    Keys ``module.v.<name>`` (``module.`` optional) fill the backbone; ``v.head*``,
    ``v.head_dist*`` and ``mlp_head*`` are discarded; the classifier `head` stays as it is. The
    pos_embed grid (12 × 101 for the paper stride; ``audioset_grid(model.cfg)`` in general, or
    ``source_grid``) is adapted by `rule`. Anything else missing, extra or misshapen is a
    ValueError naming the file and the keys.
    """
    tensors: dict[str, tuple[str, Tensor]] = {}
    unexpected: set[str] = set()
    for key, value in _read_state_dict(path).items():
        name = _strip(key, "module.")
        if name.startswith("v."):
            if not name[2:].startswith(_DISCARDED_HEADS):
                tensors[name[2:]] = (key, value)
        elif not name.startswith(_AUDIOSET_HEAD):
            unexpected.add(key)
    _load_backbone(model, tensors, unexpected, str(path),
                   source_grid or audioset_grid(model.cfg), rule)
    model.weights = f"audioset:{Path(path).name}"
    return model


def _load_imagenet_state(model: AST, state: Mapping[str, Tensor], source: str,
                         rule: PosEmbedRule) -> None:
    """DeiT state_dict → `model`: RGB conv summed to 1 channel, square pos grid adapted."""
    tensors: dict[str, tuple[str, Tensor]] = {}
    for key, value in state.items():
        name = _strip(key, "module.")
        if name == "patch_embed.proj.weight" and value.ndim == 4:
            value = value.float().sum(dim=1, keepdim=True)  # (D, 3, p, p) → (D, 1, p, p)
        if not name.startswith(_DISCARDED_HEADS):
            tensors[name] = (key, value)
    _load_backbone(model, tensors, set(), source, None, rule)


def load_imagenet_checkpoint(model: AST, path: str | Path | None, *,
                             rule: PosEmbedRule = ModelConfig.pos_embed) -> AST:
    """Load DeiT-base distilled 384 ImageNet weights into `model`'s backbone.

    ``path``: a local DeiT checkpoint (a state_dict or ``{"model": state_dict}``, keys
    ``cls_token``, ``pos_embed`` (1, 578, 768), ``patch_embed.proj.weight`` (768, 3, 16, 16), …;
    ``head*``/``head_dist*`` discarded). None fetches them through timm, which needs the network.
    The RGB conv weight is summed over its input channels; the 24 × 24 pos grid is adapted by
    `rule`. Strict, like `load_audioset_checkpoint`.
    """
    if path is None:
        try:
            import timm

            state = timm.create_model(DEIT_NAME, pretrained=True).state_dict()
        except Exception as err:  # offline: the download fails
            raise ValueError(f"could not obtain {DEIT_NAME} weights through timm "
                             f"({type(err).__name__}); no network: pass a local DeiT checkpoint "
                             "file (model.imagenet_checkpoint=FILE)") from None
        _load_imagenet_state(model, state, f"timm:{DEIT_NAME}", rule)
        model.weights = f"imagenet:timm:{DEIT_NAME}"
    else:
        _load_imagenet_state(model, _read_state_dict(path), str(path), rule)
        model.weights = f"imagenet:{Path(path).name}"
    return model


# --- the backbone ``ast`` -----------------------------------------------------------------


@register_backbone("ast")
def build_ast(cfg: ModelConfig) -> AST:
    """The AST of `cfg`, initialised as ``cfg.weights`` says, pos_embed by ``cfg.pos_embed``.

    ``"none"``: timm's DeiT initialisation. ``"imagenet"``: DeiT weights from
    ``cfg.imagenet_checkpoint`` (empty: timm's download, online only). ``"audioset"``: the
    paper's ImageNet → AudioSet initialisation; the AudioSet checkpoint overwrites every backbone
    tensor (the official code, too, builds its AudioSet model without ImageNet weights), so only
    ``cfg.audioset_checkpoint`` is read.
    """
    model = AST(cfg)
    if cfg.weights == "imagenet":
        path = cfg.imagenet_checkpoint or None
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"imagenet_checkpoint not found: {path}")
        load_imagenet_checkpoint(model, path, rule=cfg.pos_embed)
    elif cfg.weights == "audioset":
        if not cfg.audioset_checkpoint:
            raise ValueError("weights='audioset' needs audioset_checkpoint: the path of a local "
                             "audioset_10_10_0.4593.pth")
        if not Path(cfg.audioset_checkpoint).is_file():
            raise FileNotFoundError(f"audioset_checkpoint not found: {cfg.audioset_checkpoint}")
        load_audioset_checkpoint(model, cfg.audioset_checkpoint, rule=cfg.pos_embed)
    return model


def ast_from_checkpoint(path: str | Path, *, n_classes: int = 4,
                        pos_embed: PosEmbedRule = ModelConfig.pos_embed) -> AST:
    """The paper-geometry AST (ModelConfig defaults) from an official AudioSet checkpoint."""
    cfg = ModelConfig(n_classes=n_classes, pos_embed=pos_embed, weights="audioset",
                      audioset_checkpoint=str(path))
    return build_ast(cfg)
