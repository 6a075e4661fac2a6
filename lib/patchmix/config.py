"""Frozen configuration dataclasses, profiles, overrides and their stable hashes.

This module is the one home of every default and every list of options: the other modules read
them from here (``MethodConfig.temperature``, `MIX_MODES`, …) instead of repeating them. Every
cached artefact (features, runs) is keyed by the hash of the configuration that produced it, so
configurations are immutable and serialise to plain JSON.

Three ways to change a configuration, all validated when the new one is built:

- ``with_overrides(cfg, ["train.epochs=3"])``: ``key=value`` text, as on the command line;
- ``with_values(cfg, {"train.epochs": 3})``: typed values, as notebooks and the run plan use;
- the notebooks' named knobs (``EPOCHS``, ``TEMPERATURE``, …), which
  `patchmix.companion.knobs` turns into typed values.

Names of registered entries (``method.name``, ``model.backbone``) are only checked to be
names here; whether one is registered is checked where it is resolved (`patchmix.registry`),
before any feature is computed. This module imports nothing of the project.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

PadMode = Literal["repeat", "zero"]
PosEmbedRule = Literal["ast", "official"]
Weights = Literal["none", "imagenet", "audioset"]
Activations = Literal["store", "lean", "checkpoint"]
Gate = Literal["official", "always"]
MixMode = Literal["random", "time"]
TargetType = Literal["grad_block", "grad_flow", "project_block", "project_flow"]
Negatives = Literal["all", "diff_label"]
Precision = Literal["auto", "fp32", "bf16"]
Device = Literal["auto", "cpu", "cuda"]

PROFILES: tuple[str, ...] = ("smoke", "demo", "paper")
POS_EMBED_RULES: tuple[str, ...] = typing.get_args(PosEmbedRule)
GATES: tuple[str, ...] = typing.get_args(Gate)
MIX_MODES: tuple[str, ...] = typing.get_args(MixMode)
TARGET_TYPES: tuple[str, ...] = typing.get_args(TargetType)
NEGATIVES: tuple[str, ...] = typing.get_args(Negatives)

# AudioSet statistics of the Kaldi fbank used by AST and by the official Patch-Mix code.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


@dataclass(frozen=True)
class _Range:
    """The values a numeric field may take: [low, high], either end open or absent."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        return ((self.low is None or value > self.low or (value == self.low
                                                          and not self.open_low))
                and (self.high is None or value < self.high or (value == self.high
                                                                and not self.open_high)))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low}"
        return (f"in {'(' if self.open_low else '['}{self.low}, {self.high}"
                f"{')' if self.open_high else ']'}")


POSITIVE = _Range(0, open_low=True)
NON_NEGATIVE = _Range(0)
AT_LEAST_1 = _Range(1)
AT_LEAST_2 = _Range(2)
UNIT = _Range(0, 1, open_high=True)  # [0, 1)
SEED_RANGE = _Range(0, 2**32 - 1)  # what torch and numpy take, with room for per-epoch seeds


@functools.cache
def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """The options of each ``Literal``-typed field of a config class."""
    return {name: typing.get_args(hint) for name, hint in typing.get_type_hints(cls).items()
            if typing.get_origin(hint) is Literal}


def _check(cfg: Any) -> None:
    """A ValueError naming the field unless every field of `cfg` holds a valid value: one of
    its options (``Literal`` fields), a finite number (floats), within the class's `_RANGES`.
    One check for every field of every config class."""
    for name, options in _choices(type(cfg)).items():
        value = getattr(cfg, name)
        if value not in options:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, "
                             f"not {value!r}")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, not {value!r}")
    for name, allowed in getattr(cfg, "_RANGES", {}).items():
        value = getattr(cfg, name)
        if value not in allowed:
            raise ValueError(f"{name} must be {allowed}, not {value!r}")


def _check_name(value: Any, what: str) -> None:
    """A ValueError unless `value` can name a registered entry: a non-empty string. Whether
    one is registered under it is checked where it is resolved (`patchmix.registry`)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")


@dataclass(frozen=True)
class FeatureConfig:
    """Preprocessing of a respiratory cycle, from recording to normalised fbank.

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

    _RANGES: ClassVar[dict[str, _Range]] = {
        "sample_rate": POSITIVE, "fade_samples": NON_NEGATIVE, "cycle_seconds": POSITIVE,
        "n_mels": POSITIVE, "frame_shift_ms": POSITIVE, "frame_length_ms": POSITIVE,
        "norm_std": POSITIVE}

    def __post_init__(self) -> None:
        _check(self)
        if self.frame_length_ms > 1000 * self.cycle_seconds:
            raise ValueError(f"frame_length_ms {self.frame_length_ms:g} is longer than a "
                             f"cycle ({self.cycle_seconds:g} s)")
        if int(self.sample_rate * self.frame_shift_ms / 1000) < 1:
            raise ValueError(f"frame_shift_ms {self.frame_shift_ms:g} is shorter than one "
                             f"sample at {self.sample_rate} Hz")

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


@dataclass(frozen=True)
class ModelConfig:
    """Geometry and initialisation of the backbone, the Audio Spectrogram Transformer.

    The defaults are the ``paper`` geometry: DeiT-base distilled (768-d, 12 layers, 12 heads),
    16 × 16 patches with stride 10 on the 128 mel × 798 frame image → 12 × 79 = 948 tokens.
    CPU profiles use smaller widths/depths and may use a larger stride.
    """

    backbone: str = "ast"  # a name registered in `patchmix.model.backbone.BACKBONES`
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
    # official code's swapped-dimension adaptation, needed for the published numbers
    pos_embed: PosEmbedRule = "ast"
    weights: Weights = "none"  # "imagenet": DeiT; "audioset": ImageNet + AudioSet AST
    imagenet_checkpoint: str = ""  # local DeiT file; "" → timm's download (online only)
    audioset_checkpoint: str = ""  # local audioset_10_10_0.4593.pth (official key format)
    # what each transformer block keeps for the backward pass; the gradients are bit-identical
    # in all three. "store": everything autograd saves; "lean": the outputs of attention and of
    # the widening matmuls (qkv, fc1) only, LayerNorms, GELU, residual adds and proj recomputed
    # in backward; "checkpoint": the block input only, the whole block recomputed (least
    # memory). bench/README.md has the measured time and memory of each.
    activations: Activations = "lean"

    _RANGES: ClassVar[dict[str, _Range]] = {
        "embed_dim": AT_LEAST_1, "depth": AT_LEAST_1, "num_heads": AT_LEAST_1,
        "mlp_ratio": POSITIVE, "patch_size": AT_LEAST_1, "stride": AT_LEAST_1,
        "n_mels": AT_LEAST_1, "n_frames": AT_LEAST_1, "n_classes": AT_LEAST_2}

    def __post_init__(self) -> None:
        _check(self)
        _check_name(self.backbone, "backbone")
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


@dataclass(frozen=True)
class MethodConfig:
    """The training objective and its knobs; ``name`` picks a registered `patchmix.methods`."""

    name: str = "patchmix_cl"  # a name registered in `patchmix.methods.METHODS`
    spec_augment: bool = False  # SpecAugment on every training batch, whatever the method
    specaug_gate: Gate = "official"  # "official": fires where 1 >= N(0, 1), ~84 % of samples
    mix_beta: float = 1.0  # λ ~ Beta(β, β) for Mixup, CutMix and Patch-Mix
    mix_mode: MixMode = "random"  # Patch-Mix moves random positions or whole time columns
    temperature: float = 0.06  # τ of the contrastive softmax
    alpha: float = 1.0  # total loss = CE + α · L_CL
    target_type: TargetType = "grad_block"  # how the contrastive target is made (losses.py)
    negatives: Negatives = "all"  # which clean samples the contrastive softmax contrasts

    _RANGES: ClassVar[dict[str, _Range]] = {
        "mix_beta": POSITIVE, "temperature": POSITIVE, "alpha": NON_NEGATIVE}

    def __post_init__(self) -> None:
        _check(self)
        _check_name(self.name, "method name")


@dataclass(frozen=True)
class DataConfig:
    """Where the cycles come from and how train is split for the honest `val` protocol."""

    root: str = ""  # a data set's folder; "" → `patchmix.data.dataset.find_folder`'s default
    val_fraction: float = 0.2  # patient-grouped validation carved from train; 0 → no val split
    val_seed: int = 0
    features: FeatureConfig = field(default_factory=FeatureConfig)

    _RANGES: ClassVar[dict[str, _Range]] = {"val_fraction": UNIT, "val_seed": SEED_RANGE}

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: Adam with coupled L2, per-epoch cosine, ma_update."""

    epochs: int = 50
    batch_size: int = 8  # drop_last, as the official loader
    eval_batch_size: int = 64
    lr: float = 5e-5
    min_lr: float = 5e-8  # η_min of the cosine schedule
    weight_decay: float = 1e-6  # Adam's coupled L2 (not AdamW)
    ma_beta: float = 0.5  # after each step: w ← β·w_old + (1−β)·w_new; 0 disables
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    device: Device = "auto"
    max_steps_per_epoch: int = 0  # 0: the whole training set every epoch
    # torch intra-op threads on CPU; 0 leaves torch's default. Not part of a run's key: it moves
    # only the last bits (`patchmix.engine.experiment.run_key`)
    threads: int = 0
    # torch.compile each transformer block in place (state_dict keys unchanged); off by default
    # until it is shown to help on the device at hand (bench/README.md)
    compile: bool = False

    _RANGES: ClassVar[dict[str, _Range]] = {
        "epochs": AT_LEAST_1, "batch_size": AT_LEAST_2, "eval_batch_size": AT_LEAST_1,
        "lr": POSITIVE, "min_lr": NON_NEGATIVE, "weight_decay": NON_NEGATIVE, "ma_beta": UNIT,
        "max_steps_per_epoch": NON_NEGATIVE, "threads": NON_NEGATIVE}

    def __post_init__(self) -> None:
        _check(self)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr {self.min_lr:g} is above lr {self.lr:g}: the cosine "
                             "schedule would raise the learning rate")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that decides a training run; its hash names the run's cache folder."""

    profile: str = "paper"  # the profile it was made from (`profile`), never overridden
    seed: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    _RANGES: ClassVar[dict[str, _Range]] = {"seed": SEED_RANGE}

    def __post_init__(self) -> None:
        _check(self)
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, "
                             f"not {self.profile!r}")



def result_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """`cfg` without what does not decide a run's reported numbers, the part a run is cached
    by: no data folder (``data.root``; `patchmix.data.loading.Data.identity` names the data, so
    the same recordings read from another folder or machine find the same run) and no thread
    count (``train.threads``: a sum split over other threads rounds differently in the last
    bits, noise like that of another CPU model's kernels: docs/evaluation.md#reproducing-a-run).
    """
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=""),
                               train=dataclasses.replace(cfg.train, threads=0))


def profile(name: str) -> ExperimentConfig:
    """A named profile.

    - ``paper``: the published recipe exactly: AST-base with ImageNet + AudioSet weights (set
      ``model.audioset_checkpoint``), the official positional-embedding quirk, SpecAugment with
      the official gate on every method, Adam 5e-5, batch 8, 50 epochs, ma_beta 0.5, trained on
      the whole official train split (``val_fraction=0``: the `val` protocol needs
      ``data.val_fraction`` > 0). A GPU job.
    - ``demo``: the same 798 × 128 features, a small AST (64-d, 2 layers, 2 heads, 32 × 32
      patches with stride 32 → 4 × 24 tokens, 0.17 M parameters) trained from scratch for 30
      epochs at a higher learning rate, SpecAugment on (as in ``paper``), and a 20 %
      patient-grouped validation split. 30 epochs: from scratch the test scores level off
      after about 20 (the demo's learning curves show it). Patches of 32, not the paper's 16:
      a quarter of the tokens makes a step about four times cheaper, which is what lets
      ``make reproduce`` train the 19 demo runs and run the notebooks within a quarter of an
      hour on two cores. Its blocks store their
      activations (``model.activations="store"``): at 64-d the recomputation of ``"lean"``
      saves nothing that matters. One intra-op thread per run (``train.threads=1``): CPU
      kernels split their sums by thread, so a pinned count gives the same bits on any
      number of cores (of one CPU model), and the pool trains one run per core
      (`patchmix.companion.plan.run_local`), which on two cores is faster than one two-thread run
      after another. About a minute per run on a laptop core.
    - ``smoke``: a tiny AST (32-d, 1 layer, stride 32), 2 epochs of 3 steps: seconds, for tests.
    """
    if name == "paper":
        return ExperimentConfig(
            profile="paper",
            data=DataConfig(val_fraction=0.0),
            model=ModelConfig(weights="audioset", pos_embed="official"),
            method=MethodConfig(spec_augment=True),
        )
    if name == "demo":
        return ExperimentConfig(
            profile="demo",
            model=ModelConfig(embed_dim=64, depth=2, num_heads=2, patch_size=32, stride=32,
                              activations="store"),
            method=MethodConfig(spec_augment=True),
            train=TrainConfig(epochs=30, batch_size=16, lr=1e-3, min_lr=1e-6, threads=1),
        )
    if name == "smoke":
        return ExperimentConfig(
            profile="smoke",
            model=ModelConfig(embed_dim=32, depth=1, num_heads=2, stride=32, activations="store"),
            train=TrainConfig(epochs=2, batch_size=8, lr=1e-3, min_lr=1e-5,
                              max_steps_per_epoch=3),
        )
    raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")


# --- changing a configuration ----------------------------------------------------------


def get_value(cfg: Any, key: str) -> Any:
    """The value of a dotted field (``get_value(cfg, "method.temperature")``)."""
    value = cfg
    for name in resolve_key(cfg, key):
        value = getattr(value, name)
    return value


def with_overrides(cfg: ExperimentConfig, overrides: list[str] | tuple[str, ...]) -> Any:
    """A copy of `cfg` with ``key=value`` overrides applied and validated.

    Keys are dotted paths (``train.epochs=3``, ``method.name=ce``, ``data.features.pad=zero``) or
    a bare field name when it is unique (``epochs=3``). Values are parsed to the field's type.
    The overrides of one section are applied together, so ``embed_dim=99 num_heads=3`` is valid
    in ``demo`` even though 99 is not divisible by its 2 heads. An unknown key or a bad value is
    a ValueError naming it.
    """
    items = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not key=value")
        items[key.strip()] = text.strip()
    return _replace(cfg, items, _parse)


def overrides_between(base: Any, cfg: Any) -> list[str]:
    """The ``key=value`` items that `with_overrides` turns `base` into `cfg` with (dotted
    keys, in field order; booleans as ``true``/``false``): the inverse of `with_overrides`."""
    items = []
    for path in _field_paths(cfg):
        key = ".".join(path)
        value = get_value(cfg, key)
        if value != get_value(base, key):
            items.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    return items


def with_values(cfg: ExperimentConfig, values: dict[str, Any]) -> Any:
    """A copy of `cfg` with typed values (``{"method.temperature": 0.3}``) applied and validated.

    Keys as for `with_overrides`. A value must have its field's type (an int is taken for a
    float field); fields of one section are applied together.
    """
    return _replace(cfg, values, _coerce)


def _field_paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            paths += _field_paths(value, prefix + (f.name,))
        else:
            paths.append(prefix + (f.name,))
    return paths


def resolve_key(cfg: Any, key: str) -> tuple[str, ...]:
    """The field a dotted key or a unique bare name means (``"epochs"`` → ``("train",
    "epochs")``); a ValueError naming the key when there is none or several."""
    paths = _field_paths(cfg)
    parts = tuple(key.split("."))
    if parts in paths:
        return parts
    matches = [p for p in paths if p[-len(parts):] == parts]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(".".join(m) for m in matches)
        raise ValueError(f"override key {key!r} is ambiguous: {names}")
    raise ValueError(f"unknown override key {key!r}")


def _replace(cfg: Any, items: dict[str, Any], convert: Any) -> Any:
    """`cfg` with each ``{key: raw value}`` converted by ``convert(current, key, raw)``."""
    tree: dict[str, Any] = {}
    for key, raw in items.items():
        *parents, leaf = resolve_key(cfg, key)
        if (*parents, leaf) == ("profile",):
            raise ValueError("profile names the profile a configuration was made from: choose "
                             "another profile (--profile, PROFILE), do not override it")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = (key, raw)
    return _apply(cfg, tree, convert)


def _apply(obj: Any, tree: dict[str, Any], convert: Any) -> Any:
    """`obj` with the fields of `tree` replaced in one go (sub-dicts: nested dataclasses)."""
    changes = {}
    for name, node in tree.items():
        if isinstance(node, dict):
            changes[name] = _apply(getattr(obj, name), node, convert)
        else:
            changes[name] = convert(getattr(obj, name), *node)
    try:
        return dataclasses.replace(obj, **changes)
    except (ValueError, TypeError) as err:
        keys = ", ".join(n[0] for n in tree.values() if not isinstance(n, dict))
        raise ValueError(f"bad override ({keys}): {err}") from None


def _parse(current: Any, key: str, text: str) -> Any:
    """`text` parsed to the type of the field's current value."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        return text
    except ValueError:
        raise ValueError(f"bad value {text!r} for {key} "
                         f"(expected {type(current).__name__})") from None


def _coerce(current: Any, key: str, value: Any) -> Any:
    """`value` checked against the type of the field's current value (int → float allowed)."""
    kind = type(current)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ValueError(f"bad value {value!r} for {key} (expected {kind.__name__})")
    return value


def config_from_dict(d: dict[str, Any]) -> ExperimentConfig:
    """Inverse of `to_dict` for an `ExperimentConfig` (e.g. the one stored in a checkpoint)."""
    try:
        data = dict(d["data"])
        data["features"] = FeatureConfig(**data["features"])
        return ExperimentConfig(profile=d["profile"], seed=d["seed"], data=DataConfig(**data),
                                model=ModelConfig(**d["model"]),
                                method=MethodConfig(**d["method"]),
                                train=TrainConfig(**d["train"]))
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a patchmix experiment configuration ({err})") from None
