"""The method registry: a method added from outside the library trains like a built-in one, and
every registered method's parameters get gradients (timm-style, parametrised over the registry).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_data

from patchmix.cli import main
from patchmix.companion import notebook_runs
from patchmix.config import profile, with_values
from patchmix.engine import experiment
from patchmix.engine.train import Run, check_names
from patchmix.methods import (
    METHODS,
    Method,
    Net,
    baseline_methods,
    method_with_role,
    register_method,
)

# --- a method from outside the library (the example of docs/adding-a-method.md) -------------


class LabelSmoothing(Method):
    """Fine-tuning with a label-smoothed cross-entropy: 10 % of each target spread evenly."""
    terms = {"cross_entropy": "label-smoothed cross-entropy"}  # what each loss term is

    def loss(self, net, x, y, g):
        return {"cross_entropy": F.cross_entropy(net.logits(x), y, label_smoothing=0.1)}


@pytest.fixture
def label_smoothing():
    register_method("label_smoothing", label="CE, label smoothing 0.1", baseline=True)(
        LabelSmoothing)
    yield LabelSmoothing
    METHODS.remove("label_smoothing")


def test_a_method_registered_from_a_test_file_trains_through_the_run_cache(
        label_smoothing, smoke_data, tmp_path, capsys):
    cfg, data = smoke_data
    cfg = with_values(cfg, {"method.name": "label_smoothing", "train.epochs": 1})
    summary = experiment.run(cfg, data=data, root=tmp_path, progress=False)
    assert summary["finished"] and summary["method"] == "label_smoothing"
    history = experiment.history(summary["run_dir"])
    assert math.isfinite(history["train_loss"][0])
    assert history["loss_cross_entropy"][0] == history["train_loss"][0]  # its one term is the loss
    plain = experiment.run(with_values(cfg, {"method.name": "ce"}), data=data, root=tmp_path,
                           progress=False)
    assert experiment.history(plain["run_dir"])["train_loss"][0] != history["train_loss"][0]
    # everything that lists methods sees it: the name check, the command line, the baselines
    assert "label_smoothing" in METHODS.names() and label_smoothing in baseline_methods()
    check_names(cfg)
    assert [p.name for p in notebook_runs.baselines(cfg)][-1] == "label_smoothing"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "label_smoothing" in capsys.readouterr().out


def test_the_registry_refuses_duplicates_unknown_names_and_a_second_owner_of_a_role():
    with pytest.raises(ValueError, match="already registered"):
        register_method("ce", label="again")(LabelSmoothing)
    with pytest.raises(ValueError, match="role 'proposed' already belongs to method"):
        register_method("another_cl", label="x", role="proposed")(LabelSmoothing)
    assert "another_cl" not in METHODS.names()
    with pytest.raises(TypeError, match="not a subclass"):
        register_method("plain", label="x")(object)
    with pytest.raises(ValueError, match="unknown method 'svm'"):
        METHODS.get("svm")
    unknown = with_values(profile("smoke"), {"method.name": "svm"})  # a name, checked when used
    with pytest.raises(ValueError, match="unknown method 'svm'; choose from ce, weighted_ce"):
        check_names(unknown)
    assert method_with_role("reference").name == "ce"
    assert method_with_role("proposed").name == "patchmix_cl"


# --- gradients, for every registered method -------------------------------------------------


def _run(name: str, **values) -> tuple[Run, torch.Tensor, torch.Tensor]:
    cfg = with_values(profile("smoke"), {"method.name": name, **values})
    x = torch.randn(8, 798, 128, generator=torch.Generator().manual_seed(0))
    return Run(cfg, random_data(8), torch.device("cpu")), x, torch.arange(8) % 4


@pytest.mark.parametrize("name", METHODS.names())
def test_every_parameter_a_method_trains_gets_a_gradient(name):
    run, x, y = _run(name, **{"method.spec_augment": True})
    trained = [(f"{type(m).__name__}.{n}", p) for m in run.modules for n, p in
               m.named_parameters()]
    optimised = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert {id(p) for _, p in trained} == optimised  # the optimiser trains exactly these
    terms = run.objective(x, y, torch.Generator().manual_seed(1))
    assert terms and all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    missing = [n for n, p in trained if p.grad is None or not torch.isfinite(p.grad).all()
               or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("target, flows", [("grad_block", False), ("project_block", False),
                                           ("grad_flow", True), ("project_flow", True)])
def test_the_contrastive_target_gets_a_gradient_only_when_it_should(target, flows, monkeypatch):
    run, x, y = _run(method_with_role("proposed").name, **{"method.target_type": target})
    seen = {}
    features = run.net.features

    def recorded(*batches):
        out = features(*batches)
        for tensor in out:
            tensor.retain_grad()
        seen["clean"], seen["mixed"] = out
        return out

    monkeypatch.setattr(run.net, "features", recorded)
    terms = run.objective(x, y, torch.Generator().manual_seed(1))
    terms["contrastive"].backward()  # the contrastive term alone
    assert (seen["clean"].grad is not None) == flows  # a stopped target gets none
    assert seen["mixed"].grad is not None and seen["mixed"].grad.abs().sum() > 0
    # the classifier never sees a mixed feature: the contrastive term leaves it untouched
    assert all(p.grad is None for p in run.model.head.parameters())


def test_net_runs_several_token_batches_as_one_call_or_one_call_each():
    run, x, _ = _run("ce")
    net = Net(run.model)
    with torch.no_grad():
        tokens = net.embed(x)  # (8, N, D)
        other = tokens.flip(0)
        joint = net.features(tokens, other)
        net.batched = False
        separate = net.features(tokens, other)
        alone = net.features(tokens)
        pooled = run.model.forward_head(run.model.forward_features(x), pre_logits=True)
    assert len(joint) == len(separate) == 2 and alone.shape == (8, run.model.cfg.embed_dim)
    for a, b in zip(joint, separate, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone, pooled)
    torch.testing.assert_close(net.head(alone), net.logits(x))
    with pytest.raises(ValueError, match="one size"):
        net.features(tokens, tokens[:4])
