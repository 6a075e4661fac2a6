"""Fine-tuning with cross-entropy: the reference every other method is compared with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from patchmix.methods.base import Method, Net, register_method


@register_method("ce", label="Fine-tuning (CE)", short="CE", baseline=True, role="reference")
class CrossEntropy(Method):
    """Plain fine-tuning: classify each cycle, cross-entropy against its label."""

    def loss(self, net: Net, x: Tensor, y: Tensor, g: torch.Generator) -> dict[str, Tensor]:
        return {"cross_entropy": F.cross_entropy(net.logits(x), y)}
