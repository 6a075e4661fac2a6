"""SpecAugment as a method: fine-tuning with SpecAugment on every batch.

The official recipe applies SpecAugment to every method already (``method.spec_augment``, on in
the ``paper`` and ``demo`` profiles); this method is the comparison for profiles that do not.
"""

from __future__ import annotations

from patchmix.methods.base import register_method
from patchmix.methods.ce import CrossEntropy


@register_method("specaug", label="SpecAugment", baseline=True)
class SpecAugmentCE(CrossEntropy):
    """Cross-entropy on SpecAugmented batches, whatever ``method.spec_augment`` says: two mel
    bands and two frame bands masked with the sample's mean (the gate is
    ``method.specaug_gate``)."""

    always_spec_augment = True
