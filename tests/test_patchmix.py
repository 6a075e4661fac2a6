"""Properties of Patch-Mix on patch tokens (docs/method.md#patch-mix-step-by-step)."""

from __future__ import annotations

import pytest
import torch

from patchmix.model.patchmix import PatchMixResult, patch_mix

GRID = (12, 79)  # the paper geometry: 948 tokens
N_TOKENS = GRID[0] * GRID[1]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_tokens(batch: int = 6, n: int = N_TOKENS, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, n, dim, generator=gen(1000 + seed))  # (B, N, D)


def check_mixing(tokens: torch.Tensor, res: PatchMixResult) -> None:
    """Sample i equals its partner's tokens where mask is True, its own tokens elsewhere."""
    expected_partner = tokens[res.index]  # (B, N, D)
    assert torch.equal(res.tokens[:, res.mask], expected_partner[:, res.mask])
    assert torch.equal(res.tokens[:, ~res.mask], tokens[:, ~res.mask])


def test_shapes_and_types() -> None:
    tokens = make_tokens()
    res = patch_mix(tokens, 0.7, gen())
    assert isinstance(res, PatchMixResult)
    assert res.tokens.shape == tokens.shape and res.tokens.dtype == tokens.dtype
    assert res.index.shape == (6,) and res.index.dtype == torch.int64
    assert sorted(res.index.tolist()) == list(range(6))  # a permutation of the batch
    assert res.mask.shape == (N_TOKENS,) and res.mask.dtype == torch.bool
    assert isinstance(res.lam, float)
    mixed, index, lam, mask = res  # unpacks like a tuple
    assert mixed is res.tokens and lam == res.lam


@pytest.mark.parametrize("lam", [i / 37 for i in range(38)] + [0.5, 1e-9, 1 - 1e-9, 0.123456])
def test_random_mode_counts_lambda_and_positions(lam: float) -> None:
    tokens = make_tokens(batch=5)
    res = patch_mix(tokens, lam, gen(3))
    m = int(N_TOKENS * (1.0 - lam))
    assert int(res.mask.sum()) == m
    assert res.lam == 1.0 - m / N_TOKENS
    check_mixing(tokens, res)
    # the moved positions are the same for every sample: a sample differs from its own tokens
    # only inside the (shared) mask, and wherever index[i] != i it differs everywhere inside it
    for i in range(tokens.shape[0]):
        changed = (res.tokens[i] != tokens[i]).any(dim=-1)  # (N,)
        assert not changed[~res.mask].any()
        if res.index[i] != i:
            assert torch.equal(changed, res.mask)


def test_lambda_one_is_identity_and_zero_moves_everything() -> None:
    tokens = make_tokens()
    res = patch_mix(tokens, 1.0, gen(1))
    assert res.lam == 1.0 and not res.mask.any()
    assert torch.equal(res.tokens, tokens)
    res = patch_mix(tokens, 0.0, gen(1))
    assert res.lam == 0.0 and res.mask.all()
    assert torch.equal(res.tokens, tokens[res.index])
    res_t = patch_mix(tokens, 0.0, gen(1), mode="time", grid=GRID)
    assert res_t.lam == 0.0 and res_t.mask.all()
    res_t = patch_mix(tokens, 1.0, gen(1), mode="time", grid=GRID)
    assert res_t.lam == 1.0 and torch.equal(res_t.tokens, tokens)


@pytest.mark.parametrize("lam", [i / 23 for i in range(24)] + [0.999, 0.001])
def test_time_mode_moves_whole_columns(lam: float) -> None:
    n_freq, n_time = GRID
    tokens = make_tokens(batch=4)
    res = patch_mix(tokens, lam, gen(5), mode="time", grid=GRID)
    m = int(n_time * (1.0 - lam))
    assert res.lam == 1.0 - m / n_time
    grid_mask = res.mask.reshape(n_freq, n_time)  # token k = T·f + t
    columns = grid_mask[0]  # (T,)
    assert int(columns.sum()) == m
    assert torch.equal(grid_mask, columns.expand(n_freq, n_time))  # all rows of a column
    check_mixing(tokens, res)
    mixed = res.tokens.reshape(4, n_freq, n_time, -1)
    source = tokens[res.index].reshape(4, n_freq, n_time, -1)
    own = tokens.reshape(4, n_freq, n_time, -1)
    assert torch.equal(mixed[:, :, columns], source[:, :, columns])
    assert torch.equal(mixed[:, :, ~columns], own[:, :, ~columns])


def test_time_mode_small_grid_by_hand() -> None:
    # (F, T) = (2, 3); tokens hold their own coordinates so the moved cells are readable
    b, n_freq, n_time = 3, 2, 3
    tokens = torch.arange(b * n_freq * n_time, dtype=torch.float32).reshape(b, n_freq * n_time, 1)
    res = patch_mix(tokens, 0.4, gen(2), mode="time", grid=(n_freq, n_time))
    m = int(3 * 0.6)
    assert res.lam == 1 - m / 3
    grid_mask = res.mask.reshape(n_freq, n_time)
    assert torch.equal(grid_mask[0], grid_mask[1]) and int(grid_mask[0].sum()) == m


def test_same_seed_same_result_different_seed_differs() -> None:
    tokens = make_tokens(batch=8)
    for mode, grid in (("random", None), ("time", GRID)):
        a = patch_mix(tokens, 0.5, gen(42), mode=mode, grid=grid)
        b = patch_mix(tokens, 0.5, gen(42), mode=mode, grid=grid)
        c = patch_mix(tokens, 0.5, gen(43), mode=mode, grid=grid)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.index, b.index)
        assert torch.equal(a.mask, b.mask) and a.lam == b.lam
        assert not torch.equal(a.mask, c.mask)


def test_generator_advances_independently_of_lambda() -> None:
    g1, g2 = gen(9), gen(9)
    patch_mix(make_tokens(), 0.1, g1)
    patch_mix(make_tokens(), 0.9, g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_input_not_modified() -> None:
    tokens = make_tokens()
    before = tokens.clone()
    res = patch_mix(tokens, 0.3, gen())
    res_t = patch_mix(tokens, 0.3, gen(), mode="time", grid=GRID)
    assert torch.equal(tokens, before)
    assert res.tokens.data_ptr() != tokens.data_ptr()
    assert res_t.tokens.data_ptr() != tokens.data_ptr()


@pytest.mark.parametrize("mode", ["random", "time"])
def test_gradient_reaches_sample_and_partner(mode: str) -> None:
    tokens = make_tokens(batch=5, dim=4).requires_grad_(True)
    seed = next(s for s in range(100)
                if not torch.equal(torch.randperm(5, generator=gen(s)), torch.arange(5)))
    res = patch_mix(tokens, 0.5, gen(seed), mode=mode, grid=GRID)
    assert not torch.equal(res.index, torch.arange(5))
    weight = torch.randn(res.tokens.shape, generator=gen(7))  # (B, N, D)
    (res.tokens * weight).sum().backward()
    # token (i, k) comes from (index[i], k) where masked, from (i, k) elsewhere
    source = torch.where(res.mask[None, :], res.index[:, None], torch.arange(5)[:, None])  # (B, N)
    expected = torch.zeros_like(tokens)
    k = torch.arange(N_TOKENS).expand(5, N_TOKENS)
    expected.index_put_((source, k), weight, accumulate=True)
    assert tokens.grad is not None
    assert torch.allclose(tokens.grad, expected)
    moved = res.mask.nonzero()[:, 0]
    i = int((res.index != torch.arange(5)).nonzero()[0, 0])
    assert tokens.grad[res.index[i], moved].abs().sum() > 0  # the partner's tokens get gradient


def test_batch_of_one_pairs_with_itself() -> None:
    tokens = make_tokens(batch=1)
    res = patch_mix(tokens, 0.2, gen())
    assert res.index.tolist() == [0]
    assert torch.equal(res.tokens, tokens)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lam=1.5), "lam"),
        (dict(lam=-0.1), "lam"),
        (dict(lam=float("nan")), "lam"),
        (dict(lam=0.5, mode="freq"), "mode"),
        (dict(lam=0.5, mode="time"), "grid"),
        (dict(lam=0.5, mode="time", grid=(12, 78)), "grid"),
        (dict(lam=0.5, grid=(10, 79)), "grid"),
        (dict(lam=0.5, mode="time", grid=(0, 79)), "grid"),
    ],
)
def test_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        patch_mix(make_tokens(batch=2), generator=gen(), **kwargs)


def test_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match="B, N, D"):
        patch_mix(torch.zeros(2, 948), 0.5, gen())
