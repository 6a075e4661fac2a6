"""Frozen configuration dataclasses and their stable hashes.

Every cached artefact (features, runs) is keyed by the hash of the configuration that produced
it, so configurations are immutable and serialise to plain JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

PadMode = Literal["repeat", "zero"]

# AudioSet statistics of the Kaldi fbank used by AST and by the official Patch-Mix code.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


@dataclass(frozen=True)
class FeatureConfig:
    """Preprocessing of a respiratory cycle: PAPER.md §3 steps 1-6.

    The defaults are the official recipe: 16 kHz, 1,000-sample linear fades, 8 s cycles made by
    repeat padding, Kaldi fbank with 128 mel bins and a 10 ms shift, AudioSet normalisation.
    """

    sample_rate: int = 16_000  # Hz, every recording is resampled to this
    fade_samples: int = 1_000  # linear fade in/out of the recording, fade-out after padding
    cycle_seconds: float = 8.0  # fixed cycle length (128,000 samples at 16 kHz)
    pad: PadMode = "repeat"  # "repeat": tile + fade-out (official); "zero": centred zeros
    n_mels: int = 128
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    norm_mean: float = AUDIOSET_MEAN
    norm_std: float = AUDIOSET_STD

    def __post_init__(self) -> None:
        if self.pad not in ("repeat", "zero"):
            raise ValueError(f"pad must be 'repeat' or 'zero', not {self.pad!r}")
        if self.sample_rate <= 0 or self.cycle_seconds <= 0 or self.n_mels <= 0:
            raise ValueError("sample_rate, cycle_seconds and n_mels must be positive")
        if self.fade_samples < 0:
            raise ValueError("fade_samples must be >= 0")

    @property
    def cycle_samples(self) -> int:
        """Samples in one fixed-length cycle (128,000 for the defaults)."""
        return int(round(self.cycle_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """Fbank frames of one cycle (798 for the defaults), Kaldi's snip_edges rule."""
        window = int(self.sample_rate * self.frame_length_ms / 1000)
        shift = int(self.sample_rate * self.frame_shift_ms / 1000)
        return 1 + (self.cycle_samples - window) // shift


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config (possibly nested) as a plain, JSON-serialisable dict."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return dataclasses.asdict(cfg)


def config_hash(obj: Any, length: int = 16) -> str:
    """Stable hex digest of a config dataclass or of any JSON-serialisable value."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {"__class__": type(obj).__name__, **to_dict(obj)}
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


PosEmbedRule = Literal["ast", "official"]
Weights = Literal["none", "imagenet", "audioset"]


@dataclass(frozen=True)
class ModelConfig:
    """Geometry and initialisation of the Audio Spectrogram Transformer (PAPER.md §4).

    The defaults are the ``paper`` geometry: DeiT-base distilled (768-d, 12 layers, 12 heads),
    16 × 16 patches with stride 10 on the 128 mel × 798 frame image → 12 × 79 = 948 tokens.
    CPU profiles use smaller widths/depths and may use a larger stride.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    stride: int = 10  # the same in frequency and time
    n_mels: int = 128
    n_frames: int = 798
    n_classes: int = 4
    # "ast": the AST rule (keep the 12 rows, cut the middle time columns); "official": the
    # official code's swapped-dimension adaptation (PAPER.md §4), needed for the published numbers
    pos_embed: PosEmbedRule = "ast"
    weights: Weights = "none"  # "imagenet": DeiT; "audioset": ImageNet + AudioSet AST
    imagenet_checkpoint: str = ""  # local DeiT file; "" → timm's download (online only)
    audioset_checkpoint: str = ""  # local audioset_10_10_0.4593.pth (official key format)

    def __post_init__(self) -> None:
        if self.pos_embed not in ("ast", "official"):
            raise ValueError(f"pos_embed must be 'ast' or 'official', not {self.pos_embed!r}")
        if self.weights not in ("none", "imagenet", "audioset"):
            raise ValueError(f"weights must be 'none', 'imagenet' or 'audioset', "
                             f"not {self.weights!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by "
                             f"num_heads {self.num_heads}")
        if min(self.n_mels, self.n_frames) < self.patch_size:
            raise ValueError("the input is smaller than one patch")

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (frequency rows, time columns): (12, 79) for the paper geometry."""
        return ((self.n_mels - self.patch_size) // self.stride + 1,
                (self.n_frames - self.patch_size) // self.stride + 1)

    @property
    def n_tokens(self) -> int:
        """Patch tokens (948 for the paper geometry), CLS and DIST not counted."""
        f, t = self.grid
        return f * t
