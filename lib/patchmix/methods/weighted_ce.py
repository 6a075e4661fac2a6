"""Fine-tuning with class-weighted cross-entropy: the official fine-tuning script's loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from patchmix.config import ExperimentConfig
from patchmix.methods.base import Method, Net, register_method
from patchmix.model.augment import class_weights


@register_method("weighted_ce", label="Fine-tuning (weighted CE)", short="weighted CE",
                 baseline=True, role="paper_baseline")
class WeightedCrossEntropy(Method):
    """Cross-entropy with class weights w_c ∝ 1 / n_c over the training cycles (normalised to
    sum 1), so that the rare classes weigh as much as the common ones in total."""

    terms = {"cross_entropy": "class-weighted cross-entropy"}

    def __init__(self, cfg: ExperimentConfig, train_labels: np.ndarray) -> None:
        super().__init__(cfg, train_labels)
        # a constant of the run, not a learned weight: moved with the method, never saved
        self.register_buffer("weight", class_weights(train_labels, cfg.model.n_classes),
                             persistent=False)

    def loss(self, net: Net, x: Tensor, y: Tensor, g: torch.Generator) -> dict[str, Tensor]:
        return {"cross_entropy": F.cross_entropy(net.logits(x), y, weight=self.weight)}
