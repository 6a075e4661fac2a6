"""The registry of backbones: ``model.backbone`` names one, `build_model` builds it.

A backbone is a function ``ModelConfig → model`` registered by name with `register_backbone`
(the AST is ``ast``, in `patchmix.model.ast`). The model it returns provides what the methods
call, with the shapes of `patchmix.model.ast.AST`: `embed` (fbank → patch tokens), `encode`
(tokens → output tokens), `forward_head` (with ``pre_logits``), `head`, `grid` and `forward`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from patchmix.config import ModelConfig
from patchmix.registry import Registry

Builder = Callable[[ModelConfig], nn.Module]

BACKBONES: Registry[Builder] = Registry("backbone")
"""The registered backbones; `patchmix.model` imports the built-in ones."""


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    """Function decorator: register a builder ``ModelConfig → model`` as
    ``model.backbone=<name>``."""
    def add(builder: Builder) -> Builder:
        return BACKBONES.add(name, builder)
    return add


def build_model(cfg: ModelConfig) -> nn.Module:
    """The backbone ``cfg.backbone`` built (and initialised) from `cfg`; an unknown name is a
    ValueError listing the registered ones."""
    return BACKBONES.get(cfg.backbone)(cfg)
