"""RWR and AWR: hand-derived values, invariances, edge cases."""

import math

import pytest
import torch
from torch.testing import assert_close

from prefer.objectives import awr_loss, mle_loss, rwr_loss

LN2 = math.log(2.0)
LN3 = math.log(3.0)


def _quarter_logits(T):
    """[1, T, 2] logits [0, ln 3] at every position: p(0) = 1/4, p(1) = 3/4."""
    return torch.tensor([[0.0, LN3]], dtype=torch.float64).repeat(T, 1).unsqueeze(0)


def _random_batch(seed, B=8, T=6, V=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) < 0.6
    mask[2] = False  # a micro-batch without loss tokens
    mask[5] = True  # and one full one
    rewards = -torch.rand(B, T, generator=g, dtype=torch.float64)
    values = -torch.rand(B, T, generator=g, dtype=torch.float64)
    return logits, targets, mask, rewards, values


def _check_accumulation(fn, grad_inputs, other_inputs, mask):
    """1 call on 8 rows == 8 calls on 1 row each with num_tokens = total: loss and gradients."""
    full_leaves = [t.clone().requires_grad_() for t in grad_inputs]
    full, _ = fn(*full_leaves, *other_inputs, num_tokens=None)
    full.backward()
    micro_leaves = [t.clone().requires_grad_() for t in grad_inputs]
    total = float(mask.sum())
    accumulated = 0.0
    for i in range(mask.shape[0]):
        part, _ = fn(*(t[i : i + 1] for t in micro_leaves), *(t[i : i + 1] for t in other_inputs), num_tokens=total)
        part.backward()
        accumulated = accumulated + part.detach()
    assert_close(accumulated, full.detach())
    for a, b in zip(full_leaves, micro_leaves):
        assert_close(b.grad, a.grad)


def _awr(logits, values, targets, mask, rewards, num_tokens=None, alpha=0.5, beta=1.0, max_weight=1000.0):
    return awr_loss(
        logits, targets, mask, rewards, values, alpha=alpha, beta=beta, max_weight=max_weight, num_tokens=num_tokens
    )


# ---------------------------------------------------------------- RWR


def test_rwr_by_hand():
    logits = _quarter_logits(3)
    targets = torch.tensor([[1, 0, 1]])
    mask = torch.tensor([[True, True, False]])
    rewards = torch.tensor([[0.0, -LN2, 5.0]], dtype=torch.float64)
    loss, stats = rwr_loss(logits, targets, mask, rewards, beta=1.0)
    # token 1: p = 3/4, w = e^0 = 1       -> 1   * ln(4/3) = 0.287682
    # token 2: p = 1/4, w = e^-ln2 = 1/2  -> 1/2 * ln 4    = 0.693147
    # mean over 2 tokens = 0.980829 / 2 = 0.490415 (= ln(8/3) / 2)
    assert loss.item() == pytest.approx(math.log(8 / 3) / 2)
    assert stats["mean_weight"].item() == pytest.approx(0.75)
    assert stats["nll"].item() == pytest.approx((math.log(4 / 3) + math.log(4)) / 2)
    for v in stats.values():
        assert v.requires_grad is False and v.dim() == 0


def test_rwr_with_infinite_beta_is_mle():
    logits, targets, mask, rewards, _ = _random_batch(0)
    mle, _ = mle_loss(logits, targets, mask)
    exact, _ = rwr_loss(logits, targets, mask, rewards, beta=float("inf"))
    assert_close(exact, mle)
    near, _ = rwr_loss(logits, targets, mask, rewards, beta=1e9)
    assert_close(near, mle)


def test_rwr_weights_carry_no_gradient():
    logits, targets, mask, rewards, _ = _random_batch(1)
    r = rewards.clone().requires_grad_()
    loss, _ = rwr_loss(logits, targets, mask, r, beta=2.0)
    assert not loss.requires_grad  # the only path to the loss would be through the weights


def test_rwr_gradient_accumulation_is_exact():
    logits, targets, mask, rewards, _ = _random_batch(2)

    def fn(logits, targets, mask, rewards, num_tokens):
        return rwr_loss(logits, targets, mask, rewards, beta=0.5, num_tokens=num_tokens)

    _check_accumulation(fn, [logits], [targets, mask, rewards], mask)


def test_rwr_ignores_masked_positions():
    logits, targets, mask, rewards, _ = _random_batch(3)
    a = logits.clone().requires_grad_()
    b = torch.where(mask[..., None], logits, torch.randn_like(logits) * 1e4).requires_grad_()
    la, _ = rwr_loss(a, targets, mask, rewards, beta=0.5)
    lb, _ = rwr_loss(
        b,
        torch.where(mask, targets, -100),
        mask,
        torch.where(mask, rewards, torch.full_like(rewards, float("nan"))),
        beta=0.5,
    )
    la.backward()
    lb.backward()
    assert_close(lb, la)
    assert_close(b.grad, a.grad)


def test_rwr_rejects_non_positive_beta():
    logits, targets, mask, rewards, _ = _random_batch(4)
    with pytest.raises(ValueError, match="beta"):
        rwr_loss(logits, targets, mask, rewards, beta=0.0)


# ---------------------------------------------------------------- AWR


def test_awr_by_hand():
    logits = _quarter_logits(3)
    targets = torch.tensor([[1, 0, 0]])
    mask = torch.tensor([[True, True, False]])
    rewards = torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[-LN2, -1.0, 7.0]], dtype=torch.float64)
    loss, stats = _awr(logits, values, targets, mask, rewards, alpha=0.5, beta=1.0)
    # token 1: A = 0 - (-ln 2) = ln 2 -> w = 2; p = 3/4 -> w * NLL = 2 ln(4/3) = 0.575364
    # token 2: A = -1 - (-1)  = 0    -> w = 1; p = 1/4 -> w * NLL = ln 4      = 1.386294
    # lm_loss    = (0.575364 + 1.386294) / 2 = 0.980829
    # value_loss = ((-ln2 - 0)^2 + 0^2) / 2  = 0.480453 / 2 = 0.240227
    # loss       = 0.5 * 0.980829 + 0.5 * 0.240227 = 0.610528
    lm = (2 * math.log(4 / 3) + math.log(4)) / 2
    value = LN2**2 / 2
    assert stats["lm_loss"].item() == pytest.approx(lm)
    assert stats["value_loss"].item() == pytest.approx(value)
    assert loss.item() == pytest.approx(0.5 * lm + 0.5 * value)
    assert stats["mean_weight"].item() == pytest.approx(1.5)
    assert stats["advantage_mean"].item() == pytest.approx(LN2 / 2)
    assert stats["weight_clip_fraction"].item() == 0.0
    for v in stats.values():
        assert v.requires_grad is False and v.dim() == 0


def test_awr_weights_are_clamped_at_max_weight():
    logits = _quarter_logits(1)
    targets = torch.tensor([[0]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    # A / beta = 1000: exp overflows float64 to inf without the clamp
    loss, stats = _awr(
        logits,
        torch.zeros(1, 1, dtype=torch.float64),
        targets,
        mask,
        torch.tensor([[1000.0]], dtype=torch.float64),
        alpha=1.0,
        beta=1.0,
        max_weight=1000.0,
    )
    assert stats["mean_weight"].item() == pytest.approx(1000.0)
    assert stats["weight_clip_fraction"].item() == 1.0
    assert loss.item() == pytest.approx(1000.0 * math.log(4))  # w * -ln(1/4)


def test_awr_with_alpha_one_gives_value_head_zero_gradient():
    logits, targets, mask, rewards, values = _random_batch(5)
    v = values.clone().requires_grad_()
    loss, _ = _awr(logits.requires_grad_(), v, targets, mask, rewards, alpha=1.0)
    loss.backward()
    assert torch.all(v.grad == 0)


def test_awr_value_gradient_is_only_the_regression_term():
    # weights are constants: dloss/dV = (1 - alpha) * 2 (V - R) / N exactly
    logits, targets, mask, rewards, values = _random_batch(6)
    v = values.clone().requires_grad_()
    loss, _ = _awr(logits, v, targets, mask, rewards, alpha=0.3)
    loss.backward()
    expected = torch.where(mask, 0.7 * 2 * (values - rewards) / mask.sum(), 0.0)
    assert_close(v.grad, expected)


def test_awr_with_zero_values_and_alpha_one_is_rwr():
    logits, targets, mask, rewards, values = _random_batch(7)
    awr, _ = _awr(logits, torch.zeros_like(values), targets, mask, rewards, alpha=1.0, beta=0.5)
    rwr, _ = rwr_loss(logits, targets, mask, rewards, beta=0.5)
    assert_close(awr, rwr)


def test_awr_gradient_accumulation_is_exact():
    logits, targets, mask, rewards, values = _random_batch(8)
    _check_accumulation(_awr, [logits, values], [targets, mask, rewards], mask)


def test_awr_ignores_masked_positions():
    logits, targets, mask, rewards, values = _random_batch(9)
    nan = torch.full_like(rewards, float("nan"))
    a_logits, a_values = logits.clone().requires_grad_(), values.clone().requires_grad_()
    b_logits = torch.where(mask[..., None], logits, torch.randn_like(logits) * 1e4).requires_grad_()
    b_values = torch.where(mask, values, nan).requires_grad_()
    la, sa = _awr(a_logits, a_values, targets, mask, rewards)
    lb, sb = _awr(b_logits, b_values, torch.where(mask, targets, -100), mask, torch.where(mask, rewards, nan))
    la.backward()
    lb.backward()
    assert_close(lb, la)
    assert_close(b_logits.grad, a_logits.grad)
    assert_close(b_values.grad, a_values.grad)
    for k in sa:
        assert_close(sb[k], sa[k])


def test_awr_rejects_bad_hyperparameters():
    logits, targets, mask, rewards, values = _random_batch(10)
    with pytest.raises(ValueError, match="alpha"):
        _awr(logits, values, targets, mask, rewards, alpha=1.5)
    with pytest.raises(ValueError, match="beta"):
        _awr(logits, values, targets, mask, rewards, beta=-1.0)
    with pytest.raises(ValueError, match="shape"):
        _awr(logits, values[:, :-1], targets, mask, rewards)
