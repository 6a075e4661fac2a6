"""Patch-Mix CE, the Patch-Mix contrastive loss and the projector against direct formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from patchmix.config import MethodConfig
from patchmix.model.losses import (
    Projector,
    contrastive_target,
    patchmix_ce,
    patchmix_contrastive_loss,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inputs(batch: int = 6, dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(seed)
    mixed = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    clean = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return mixed, clean


def naive_loss(
    mixed: torch.Tensor,
    clean: torch.Tensor,
    index: list[int],
    lam: float,
    tau: float,
    labels: list[int] | None = None,
) -> torch.Tensor:
    """docs/method.md's L_CL written out with loops; ``labels`` switches on the diff_label
    denominator."""
    b = mixed.shape[0]
    p = [mixed[i] / mixed[i].norm() for i in range(b)]
    z = [clean[j] / clean[j].norm() for j in range(b)]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(b):
        s = [torch.dot(p[i], z[j]) / tau for j in range(b)]
        if labels is None:
            kept = list(range(b))
        else:
            kept = [j for j in range(b) if j in (i, index[i])
                    or (labels[j] != labels[i] and labels[j] != labels[index[i]])]
        denom = sum(torch.exp(s[j]) for j in kept)
        for j in range(b):
            m_ij = lam * (i == j) + (1 - lam) * (index[i] == j)
            if m_ij:
                total = total - m_ij * torch.log(torch.exp(s[j]) / denom)
    return total / b


INDICES = [
    [0, 1, 2, 3, 4, 5],  # all self-pairs
    [5, 4, 3, 2, 1, 0],  # a reversal: no self-pair
    [2, 1, 0, 4, 5, 3],  # one self-pair (1) among pairs and a 3-cycle
    [1, 2, 3, 4, 5, 0],  # a 6-cycle
]


@pytest.mark.parametrize("index", INDICES)
@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("tau", [MethodConfig.temperature, 0.2, 1.0])
def test_loss_and_gradient_match_naive_formula(index: list[int], lam: float, tau: float) -> None:
    mixed, clean = inputs(seed=len(index) + int(lam * 10))
    m1 = mixed.clone().requires_grad_(True)
    m2 = mixed.clone().requires_grad_(True)
    got = patchmix_contrastive_loss(m1, clean, torch.tensor(index), lam, tau)
    want = naive_loss(m2, clean, index, lam, tau)
    assert got.dtype == torch.float64
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    got.backward()
    want.backward()
    assert m1.grad is not None and m2.grad is not None
    assert torch.allclose(m1.grad, m2.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("index", INDICES[1:])
@pytest.mark.parametrize("lam", [0.3, 0.8])
def test_gradient_wrt_clean_without_stop_grad_matches_naive(index: list[int], lam: float) -> None:
    mixed, clean = inputs(seed=3)
    c1 = clean.clone().requires_grad_(True)
    c2 = clean.clone().requires_grad_(True)
    patchmix_contrastive_loss(mixed, c1, torch.tensor(index), lam, stop_grad=False).backward()
    naive_loss(mixed, c2, index, lam, MethodConfig.temperature).backward()
    assert c1.grad is not None and c2.grad is not None
    assert torch.allclose(c1.grad, c2.grad, rtol=1e-9, atol=1e-12)
    assert c1.grad.abs().sum() > 0


def test_gradcheck() -> None:
    mixed, clean = inputs(batch=4, dim=3, seed=11)
    idx = torch.tensor([2, 1, 3, 0])

    def f(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return patchmix_contrastive_loss(a, b, idx, 0.6, 0.3, stop_grad=False)

    assert torch.autograd.gradcheck(f, (mixed.requires_grad_(True), clean.requires_grad_(True)))


def test_self_pair_row_has_target_one_on_diagonal() -> None:
    # with index = identity every row's target is the diagonal whatever λ: the loss is λ-free
    mixed, clean = inputs(seed=4)
    ident = torch.arange(6)
    losses = [patchmix_contrastive_loss(mixed, clean, ident, lam) for lam in (0.0, 0.3, 1.0)]
    assert torch.allclose(losses[0], losses[1]) and torch.allclose(losses[1], losses[2])
    s = F.normalize(mixed, dim=1) @ F.normalize(clean, dim=1).T / MethodConfig.temperature
    assert torch.allclose(losses[0], F.cross_entropy(s, ident))


def test_stop_grad_blocks_clean_gradient() -> None:
    mixed, clean = inputs(seed=5)
    mixed.requires_grad_(True)
    clean.requires_grad_(True)
    idx = torch.tensor(INDICES[2])
    patchmix_contrastive_loss(mixed, clean, idx, 0.4).backward()
    assert clean.grad is None or not clean.grad.any()
    assert mixed.grad is not None and mixed.grad.abs().sum() > 0
    mixed.grad = None
    patchmix_contrastive_loss(mixed, clean, idx, 0.4, stop_grad=False).backward()
    assert clean.grad is not None and clean.grad.abs().sum() > 0


def test_invariant_to_feature_scale() -> None:
    mixed, clean = inputs(seed=6)
    idx = torch.tensor(INDICES[3])
    a = patchmix_contrastive_loss(mixed, clean, idx, 0.7)
    b = patchmix_contrastive_loss(3.0 * mixed, 0.01 * clean, idx, 0.7)
    assert torch.allclose(a, b)


LABELS = [0, 1, 0, 2, 3, 1]


@pytest.mark.parametrize("index", INDICES)
@pytest.mark.parametrize("lam", [0.0, 0.35, 0.8, 1.0])
@pytest.mark.parametrize("tau", [MethodConfig.temperature, 0.5])
def test_diff_label_matches_naive_and_backpropagates(
    index: list[int], lam: float, tau: float
) -> None:
    mixed, clean = inputs(seed=7)
    m1 = mixed.clone().requires_grad_(True)
    m2 = mixed.clone().requires_grad_(True)
    got = patchmix_contrastive_loss(m1, clean, torch.tensor(index), lam, tau,
                                    labels=torch.tensor(LABELS), negatives="diff_label")
    want = naive_loss(m2, clean, index, lam, tau, labels=LABELS)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    got.backward()
    want.backward()
    assert m1.grad is not None and m2.grad is not None
    assert torch.isfinite(m1.grad).all() and m1.grad.abs().sum() > 0
    assert torch.allclose(m1.grad, m2.grad, rtol=1e-9, atol=1e-12)


def test_diff_label_without_clean_gradient_block_also_backpropagates() -> None:
    mixed, clean = inputs(seed=8)
    clean.requires_grad_(True)
    loss = patchmix_contrastive_loss(mixed, clean, torch.tensor(INDICES[1]), 0.5,
                                     labels=torch.tensor(LABELS), negatives="diff_label",
                                     stop_grad=False)
    loss.backward()
    assert clean.grad is not None and torch.isfinite(clean.grad).all()
    assert clean.grad.abs().sum() > 0


def test_diff_label_removes_negatives_and_equals_all_with_distinct_labels() -> None:
    mixed, clean = inputs(seed=9)
    idx = torch.tensor(INDICES[1])
    full = patchmix_contrastive_loss(mixed, clean, idx, 0.5)
    distinct = patchmix_contrastive_loss(mixed, clean, idx, 0.5, labels=torch.arange(6),
                                         negatives="diff_label")
    assert torch.allclose(full, distinct)
    shared = patchmix_contrastive_loss(mixed, clean, idx, 0.5, labels=torch.tensor(LABELS),
                                       negatives="diff_label")
    assert shared < full  # fewer terms in each denominator
    one_class = torch.zeros(6, dtype=torch.long)
    same = patchmix_contrastive_loss(mixed, clean, idx, 0.5, labels=one_class,
                                     negatives="diff_label")
    assert torch.isfinite(same)  # only the positives left: still well defined


def test_large_logits_are_stable() -> None:
    g = gen(10)
    base = torch.randn(8, 16, generator=g)
    clean = base.clone()
    mixed = base + 1e-3 * torch.randn(8, 16, generator=g)  # p·z ≈ 1: logits ≈ 1000
    mixed.requires_grad_(True)
    idx = torch.tensor([3, 1, 0, 2, 5, 4, 7, 6])
    for tau in (1e-3, 1e-4):
        loss = patchmix_contrastive_loss(mixed, clean, idx, 0.3, tau)
        assert torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, mixed)
        assert torch.isfinite(grad).all()
        masked = patchmix_contrastive_loss(mixed, clean, idx, 0.3, tau, labels=torch.arange(8) % 3,
                                           negatives="diff_label")
        assert torch.isfinite(masked)
        (grad,) = torch.autograd.grad(masked, mixed)
        assert torch.isfinite(grad).all()
    # a naive exp(S) overflows here even in float64; the log-sum-exp form agrees with a
    # float64 evaluation of the same formula via log_softmax
    m64, c64 = mixed.detach().double(), clean.double()
    s = F.normalize(m64, dim=1) @ F.normalize(c64, dim=1).T / 1e-3
    target = 0.3 * torch.eye(8, dtype=torch.float64)
    target[torch.arange(8), idx] += 0.7
    ref = -(target * s.log_softmax(dim=1)).sum(dim=1).mean()
    got = patchmix_contrastive_loss(m64, c64, idx, 0.3, 1e-3)
    assert torch.allclose(got, ref, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_close_to_fp32(dtype: torch.dtype) -> None:
    g = gen(12)
    mixed = torch.randn(8, 32, generator=g)
    clean = torch.randn(8, 32, generator=g)
    idx = torch.tensor([1, 0, 3, 2, 4, 6, 7, 5])
    ref = patchmix_contrastive_loss(mixed, clean, idx, 0.6)
    low_m = mixed.to(dtype).requires_grad_(True)
    low = patchmix_contrastive_loss(low_m, clean.to(dtype), idx, 0.6)
    assert low.dtype == torch.float32
    # identical to fp32 on the rounded values, close to fp32 on the original ones
    same = patchmix_contrastive_loss(low_m.detach().float(), clean.to(dtype).float(), idx, 0.6)
    assert torch.allclose(low, same, rtol=1e-6)
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    assert torch.allclose(low, ref, rtol=tol)
    low.backward()
    assert low_m.grad is not None and low_m.grad.dtype == dtype
    assert torch.isfinite(low_m.grad.float()).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lam=1.2), "lam"),
        (dict(lam=0.5, temperature=0.0), "temperature"),
        (dict(lam=0.5, negatives="hard"), "negatives"),
        (dict(lam=0.5, negatives="diff_label"), "labels"),
        (dict(lam=0.5, negatives="diff_label", labels=torch.zeros(3)), "labels"),
        (dict(lam=0.5, index=torch.arange(5)), "index"),
        (dict(lam=0.5, clean_feat=torch.zeros(6, 4, dtype=torch.float64)), "B, D"),
    ],
)
def test_contrastive_validation(kwargs: dict, match: str) -> None:
    mixed, clean = inputs()
    args = dict(mixed_proj=mixed, clean_feat=clean, index=torch.arange(6))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        patchmix_contrastive_loss(**args)


def test_contrastive_target_types() -> None:
    with torch.random.fork_rng():  # seeded initialisation without touching the global RNG
        torch.manual_seed(0)
        proj = Projector(dim=5).double()
    _, clean = inputs(seed=13)
    clean.requires_grad_(True)

    target, stop = contrastive_target(clean)  # the paper's default: grad_block
    assert stop and not target.requires_grad and torch.equal(target, clean.detach())
    target, stop = contrastive_target(clean, target_type="grad_flow")
    assert not stop and target is clean
    before = proj.net[1].running_mean.clone()
    target, stop = contrastive_target(clean, proj, "project_block")
    assert stop and not target.requires_grad and target.shape == (6, 5)
    assert not torch.equal(proj.net[1].running_mean, before)  # BN statistics still update
    target, stop = contrastive_target(clean, proj, "project_flow")
    assert not stop and target.requires_grad
    target.sum().backward()
    assert clean.grad is not None and proj.net[0].weight.grad is not None
    with pytest.raises(ValueError, match="projector"):
        contrastive_target(clean, None, "project_flow")
    with pytest.raises(ValueError, match="target_type"):
        contrastive_target(clean, proj, "grad_stop")


def naive_ce(logits: torch.Tensor, y: list[int]) -> torch.Tensor:
    return -torch.stack([logits[i].exp().div(logits[i].exp().sum()).log()[y[i]]
                         for i in range(len(y))]).mean()


@pytest.mark.parametrize("lam", [0.0, 0.2, 0.77, 1.0])
def test_patchmix_ce_matches_direct_formula(lam: float) -> None:
    logits = torch.randn(6, 4, generator=gen(14), dtype=torch.float64)
    y = [0, 3, 1, 1, 2, 0]
    index = [2, 1, 0, 5, 3, 4]
    got = patchmix_ce(logits, torch.tensor(y), torch.tensor(index), lam)
    want = lam * naive_ce(logits, y) + (1 - lam) * naive_ce(logits, [y[k] for k in index])
    assert torch.allclose(got, want, rtol=1e-12)
    if lam == 1.0:
        assert torch.allclose(got, F.cross_entropy(logits, torch.tensor(y)))
    with pytest.raises(ValueError, match="lam"):
        patchmix_ce(logits, torch.tensor(y), torch.tensor(index), 1.5)


def test_projector_shapes_and_training() -> None:
    with torch.random.fork_rng():  # seeded initialisation without touching the global RNG
        torch.manual_seed(0)
        default = Projector()
        small = Projector(16, hidden=32, out=8)
        proj = Projector(16, hidden=32, out=8)
    assert default(torch.randn(3, 768, generator=gen(17))).shape == (3, 768)
    layers = [type(m).__name__ for m in default.net]
    assert layers == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert default.net[0].weight.shape == (768, 768) and default.net[3].weight.shape == (768, 768)
    assert small(torch.randn(4, 16, generator=gen(18))).shape == (4, 8)
    assert [type(m).__name__ for m in Projector(16, bn=False).net][1] == "Identity"

    x = torch.randn(32, 16, generator=gen(15))
    y = torch.randn(32, 8, generator=gen(16))
    opt = torch.optim.SGD(proj.parameters(), lr=0.1)
    proj.train()
    first = None
    for _ in range(30):
        loss = F.mse_loss(proj(x), y)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(F.mse_loss(proj(x), y).detach()) < 0.8 * first
    with pytest.raises(ValueError):
        # BatchNorm in train mode needs a batch of at least 2
        proj(torch.randn(1, 16, generator=gen(19)))
    proj.eval()
    assert proj(torch.randn(1, 16, generator=gen(20))).shape == (1, 8)


def test_the_paper_constants_are_the_defaults() -> None:
    assert MethodConfig.temperature == 0.06 and MethodConfig.alpha == 1.0
    mixed, clean = inputs()
    index, lam = torch.tensor([1, 0, 3, 2, 5, 4]), 0.7
    assert patchmix_contrastive_loss(mixed, clean, index, lam) == patchmix_contrastive_loss(
        mixed, clean, index, lam, 0.06)  # the default τ is the config's
