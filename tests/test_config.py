"""Typed configuration changes, the notebooks' knobs, and the one home of defaults and options."""

from __future__ import annotations

import inspect

import pytest

from patchmix.companion import latent
from patchmix.companion.knobs import KNOBS, knob_label, notebook_config
from patchmix.config import (
    GATES,
    MIX_MODES,
    NEGATIVES,
    TARGET_TYPES,
    MethodConfig,
    config_hash,
    get_value,
    profile,
    with_overrides,
    with_values,
)
from patchmix.model import augment, losses, patchmix


def test_typed_values_equal_the_parsed_text_and_are_type_checked():
    typed = with_values(profile("demo"), {"method.temperature": 0.3, "train.epochs": 3,
                                          "spec_augment": False, "model.pos_embed": "official"})
    text = with_overrides(profile("demo"), ["method.temperature=0.3", "train.epochs=3",
                                            "spec_augment=false", "model.pos_embed=official"])
    assert typed == text and config_hash(typed) == config_hash(text)
    assert with_values(profile("demo"), {"lr": 1}).train.lr == 1.0  # an int for a float field
    assert isinstance(with_values(profile("demo"), {"lr": 1}).train.lr, float)
    for key, value, expected in (("train.epochs", "3", "expected int"),
                                 ("train.epochs", 3.0, "expected int"),
                                 ("train.epochs", True, "expected int"),
                                 ("method.spec_augment", 1, "expected bool"),
                                 ("method.temperature", "0.3", "expected float")):
        with pytest.raises(ValueError, match=f"bad value .* for {key} \\({expected}\\)"):
            with_values(profile("demo"), {key: value})


@pytest.mark.parametrize("key, value", [
    ("train.precision", "fp16"), ("train.device", "tpu"), ("method.mix_mode", "columns"),
    ("method.target_type", "projected"), ("method.negatives", "some"),
    ("method.specaug_gate", "never"), ("model.pos_embed", "deit"), ("model.weights", "hub"),
    ("model.activations", "all"), ("data.features.pad", "mirror")])
def test_every_option_list_is_checked(key, value):
    with pytest.raises(ValueError, match=f"bad override \\({key}\\)"):
        with_values(profile("smoke"), {key: value})


@pytest.mark.parametrize("key, kind", [("method.name", "method"), ("model.backbone", "backbone")])
def test_registered_names_are_checked_where_they_are_resolved(key, kind):
    # config is a leaf: it holds a name as text, and training resolves it before any feature
    from patchmix.engine.train import check_names

    cfg = with_values(profile("smoke"), {key: "resnet"})
    assert get_value(cfg, key) == "resnet"
    with pytest.raises(ValueError, match=f"unknown {kind} 'resnet'; choose from"):
        check_names(cfg)
    with pytest.raises(ValueError, match="must be a non-empty string"):
        with_values(profile("smoke"), {key: ""})


def test_notebook_knobs_keep_the_profile_unless_set():
    demo = notebook_config("demo", knobs={name: None for name in KNOBS})
    assert demo == profile("demo")
    cfg = notebook_config("paper", knobs={"temperature": 0.3, "epochs": 5, "mix_mode": "time",
                                          "spec_augment": None})
    assert (cfg.method.temperature, cfg.train.epochs, cfg.method.mix_mode) == (0.3, 5, "time")
    assert cfg.method.spec_augment is profile("paper").method.spec_augment
    assert get_value(cfg, "method.temperature") == 0.3 and get_value(cfg, "epochs") == 5
    assert knob_label("method.alpha") == "loss weight α" and knob_label("seed") == "seed"
    with pytest.raises(ValueError, match="unknown knob"):
        notebook_config("demo", knobs={"tau": 0.3})
    for knob in KNOBS.values():  # every knob names a real field
        get_value(profile("demo"), knob.path)


def test_the_library_takes_its_defaults_and_options_from_the_config():
    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    m = MethodConfig
    assert default(losses.patchmix_contrastive_loss, "temperature") == m.temperature
    assert default(losses.patchmix_contrastive_loss, "negatives") == m.negatives
    assert default(losses.contrastive_target, "target_type") == m.target_type
    assert default(patchmix.patch_mix, "mode") == m.mix_mode
    assert default(augment.spec_augment, "gate") == m.specaug_gate
    assert "method" in inspect.signature(latent.encode_cycles).parameters
    assert (GATES, MIX_MODES) == (("official", "always"), ("random", "time"))
    assert TARGET_TYPES[0] == m.target_type and NEGATIVES[0] == m.negatives


def test_notebook_setup_refuses_a_seed_count_below_one():
    from patchmix.companion.notebooks import setup

    with pytest.raises(ValueError, match="SEEDS and ABLATION_SEEDS must be at least 1"):
        setup("02_baselines", seeds=0)  # refused before anything is read or moved
