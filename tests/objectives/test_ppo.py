"""PPO pieces: rewards, GAE, whitening, clipped losses, adaptive KL."""

import math

import pytest
import torch
from torch.testing import assert_close

from prefer.objectives import (
    adaptive_kl_coef,
    gae,
    kl_penalized_rewards,
    last_token_index,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)

NAN = float("nan")


def _random_batch(seed, B=8, T=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[2] = 0  # a micro-batch without response tokens (for the loss tests)
    lengths[5] = T
    mask = torch.arange(T)[None, :] < lengths[:, None]  # right-padded
    x = [torch.randn(B, T, generator=g, dtype=torch.float64) for _ in range(4)]
    return mask, *x


def _check_accumulation(fn, grad_input, other_inputs, mask):
    """1 call on 8 rows == 8 calls on 1 row each with num_tokens = total: loss and gradient."""
    full_leaf = grad_input.clone().requires_grad_()
    full, _ = fn(full_leaf, *other_inputs, mask, num_tokens=None)
    full.backward()
    micro_leaf = grad_input.clone().requires_grad_()
    total = float(mask.sum())
    accumulated = 0.0
    for i in range(mask.shape[0]):
        part, _ = fn(micro_leaf[i : i + 1], *(t[i : i + 1] for t in other_inputs), mask[i : i + 1], num_tokens=total)
        part.backward()
        accumulated = accumulated + part.detach()
    assert_close(accumulated, full.detach())
    assert_close(micro_leaf.grad, full_leaf.grad)


# ---------------------------------------------------------------- last_token_index


def test_last_token_index_rows_of_different_lengths():
    mask = torch.tensor(
        [
            [True, True, False, False],  # right-padded, length 2
            [True, True, True, True],  # full
            [False, True, True, False],  # prompt position first, then padding
            [True, False, False, False],  # one token
        ]
    )
    assert last_token_index(mask).tolist() == [1, 3, 2, 0]


def test_last_token_index_rejects_empty_rows():
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"\[1\]"):
        last_token_index(mask)
    with pytest.raises(TypeError):
        last_token_index(mask.long())


# ---------------------------------------------------------------- kl_penalized_rewards


def test_kl_penalized_rewards_by_hand():
    scores = torch.tensor([1.0, 2.0], dtype=torch.float64)
    logprobs = torch.tensor([[0.1, -0.2, 9.0], [0.3, 0.0, 0.5]], dtype=torch.float64)
    ref = torch.zeros(2, 3, dtype=torch.float64)
    ref[0, 2] = NAN  # padding garbage
    mask = torch.tensor([[True, True, False], [True, True, True]])
    rewards, stats = kl_penalized_rewards(scores, logprobs, ref, mask, kl_coef=0.5)
    # row 0: -0.5 * [0.1, -0.2] = [-0.05, 0.1]; score 1 on index 1 -> [-0.05, 1.1, 0]
    # row 1: -0.5 * [0.3, 0, 0.5] = [-0.15, 0, -0.25]; score 2 on index 2 -> [-0.15, 0, 1.75]
    expected = torch.tensor([[-0.05, 1.1, 0.0], [-0.15, 0.0, 1.75]], dtype=torch.float64)
    assert_close(rewards, expected)
    # kl per sequence: -0.1 and 0.8 -> mean 0.35; non-score reward -0.5 * 0.35 = -0.175
    assert stats["kl"].item() == pytest.approx(0.35)
    assert stats["non_score_reward"].item() == pytest.approx(-0.175)
    assert stats["score_mean"].item() == pytest.approx(1.5)
    assert stats["reward_mean"].item() == pytest.approx(1.5 - 0.175)
    for v in stats.values():
        assert v.requires_grad is False and v.dim() == 0


def test_kl_penalized_rewards_are_detached_and_score_lands_on_last_real_token():
    mask = torch.tensor([[False, True, True, False, False]])  # prompt, 2 response tokens, pad
    logprobs = torch.zeros(1, 5, requires_grad=True)
    scores = torch.tensor([3.0], requires_grad=True)
    rewards, _ = kl_penalized_rewards(scores, logprobs, torch.zeros(1, 5), mask, kl_coef=0.1)
    assert rewards.requires_grad is False
    assert rewards.tolist() == [[0.0, 0.0, 3.0, 0.0, 0.0]]


def test_kl_penalized_rewards_rejects_bad_scores_shape():
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="scores"):
        kl_penalized_rewards(torch.zeros(2, 1), torch.zeros(2, 3), torch.zeros(2, 3), mask, kl_coef=0.1)


# ---------------------------------------------------------------- GAE


def test_gae_by_hand_three_tokens():
    rewards = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.2, 0.4]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=2: delta = 1 + 1*0 (after last) - 0.4 = 0.6          A2 = 0.6
    # t=1: delta = 0 + 1*0.4 - 0.2 = 0.2;   A1 = 0.2 + 0.5*0.6 = 0.5
    # t=0: delta = 0 + 1*0.2 - 0.5 = -0.3;  A0 = -0.3 + 0.5*0.5 = -0.05
    # returns = A + V = [0.45, 0.7, 1.0]
    assert_close(advantages, torch.tensor([[-0.05, 0.5, 0.6]], dtype=torch.float64))
    assert_close(returns, torch.tensor([[0.45, 0.7, 1.0]], dtype=torch.float64))


def test_gae_by_hand_discount_and_padding():
    # gamma = 0.5, lam = 1: A_t = sum_l 0.5^l delta_{t+l} = discounted return - V_t
    rewards = torch.tensor([[1.0, 2.0, 99.0]], dtype=torch.float64)
    values = torch.tensor([[0.0, 1.0, 99.0]], dtype=torch.float64)  # position 2 is padding
    mask = torch.tensor([[True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=0.5, lam=1.0)
    # t=1: delta = 2 + 0.5*0 - 1 = 1            A1 = 1
    # t=0: delta = 1 + 0.5*1 - 0 = 1.5;  A0 = 1.5 + 0.5*1 = 2   (= 1 + 0.5*2 - 0)
    assert_close(advantages, torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64))
    assert_close(returns, torch.tensor([[2.0, 2.0, 0.0]], dtype=torch.float64))


def test_gae_matches_direct_sum_on_rows_of_different_lengths():
    mask, rewards, values, _, _ = _random_batch(0)
    mask[:, 0] &= torch.tensor([True, False] * 4)  # some rows start with a prompt position
    mask[2, 3:5] = True
    gamma, lam = 0.9, 0.8
    garbage_r = torch.where(mask, rewards, torch.full_like(rewards, NAN))
    garbage_v = torch.where(mask, values, torch.full_like(values, 1e6))
    advantages, returns = gae(garbage_r, garbage_v, mask, gamma=gamma, lam=lam)
    expected = torch.zeros_like(rewards)
    for b in range(mask.shape[0]):
        idx = mask[b].nonzero().flatten().tolist()
        deltas = []
        for n, t in enumerate(idx):
            v_next = values[b, idx[n + 1]] if n + 1 < len(idx) else 0.0
            deltas.append(rewards[b, t] + gamma * v_next - values[b, t])
        for n, t in enumerate(idx):
            expected[b, t] = sum((gamma * lam) ** k * d for k, d in enumerate(deltas[n:]))
    assert_close(advantages, expected)
    assert_close(returns, torch.where(mask, expected + values, 0.0))


# ---------------------------------------------------------------- whiten


def test_whiten_gives_mean_zero_std_one_over_masked_entries():
    mask, x, _, _, _ = _random_batch(1)
    x = x * 3 + 5
    out = whiten(torch.where(mask, x, torch.full_like(x, NAN)), mask)
    kept = out[mask]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert kept.std(correction=0).item() == pytest.approx(1.0, rel=1e-6)
    assert torch.all(out[~mask] == 0)


def test_whiten_without_shift_keeps_the_mean():
    x = torch.tensor([[1.0, 3.0, 50.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    # mean 2, population std 1 -> shifted [-1, 1]; unshifted (x - 2) / 1 + 2 = [1, 3]
    assert_close(whiten(x, mask), torch.tensor([[-1.0, 1.0, 0.0]], dtype=torch.float64))
    assert_close(whiten(x, mask, shift_mean=False), torch.tensor([[1.0, 3.0, 0.0]], dtype=torch.float64))


# ---------------------------------------------------------------- policy loss


def test_ppo_policy_loss_by_hand():
    ratios = torch.tensor([[1.5, 0.5, 1.1, 1.5, 7.0]], dtype=torch.float64)
    advantages = torch.tensor([[1.0, -1.0, 2.0, -1.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False]])
    logprobs = torch.log(ratios).requires_grad_()
    old = torch.zeros(1, 5, dtype=torch.float64)
    loss, stats = ppo_policy_loss(logprobs, old, advantages, mask, clip_range=0.2)
    # token 1: A=+1, r=1.5: max(-1.5, -1.2) = -1.2   (clipped)
    # token 2: A=-1, r=0.5: max( 0.5,  0.8) =  0.8   (clipped)
    # token 3: A=+2, r=1.1: max(-2.2, -2.2) = -2.2   (inside the range)
    # token 4: A=-1, r=1.5: max( 1.5,  1.2) =  1.5   (unclipped, pessimistic side)
    # mean over 4 = (-1.2 + 0.8 - 2.2 + 1.5) / 4 = -1.1 / 4 = -0.275
    assert loss.item() == pytest.approx(-0.275)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 1.1 + 1.5) / 4)
    logs = [math.log(1.5), math.log(0.5), math.log(1.1), math.log(1.5)]
    assert stats["approx_kl"].item() == pytest.approx(sum(0.5 * v * v for v in logs) / 4)
    for v in stats.values():
        assert v.requires_grad is False and v.dim() == 0
    loss.backward()
    # d/dlogp of -A * r = -A * r for unclipped tokens, 0 for clipped ones, / 4 tokens:
    # token 3: -2 * 1.1 / 4 = -0.55; token 4: +1 * 1.5 / 4 = 0.375
    assert_close(logprobs.grad, torch.tensor([[0.0, 0.0, -0.55, 0.375, 0.0]], dtype=torch.float64))


def test_ppo_policy_loss_is_minus_advantage_at_ratio_one():
    mask, logprobs, advantages, _, _ = _random_batch(2)
    loss, stats = ppo_policy_loss(logprobs, logprobs.clone(), advantages, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(-advantages[mask].mean().item())
    assert stats["clip_fraction"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0


def test_ppo_policy_loss_gradient_accumulation_is_exact():
    mask, logprobs, old, advantages, _ = _random_batch(3)
    old = logprobs + 0.3 * old  # ratios spread around 1, some clipped

    def fn(logprobs, old, advantages, mask, num_tokens):
        return ppo_policy_loss(logprobs, old, advantages, mask, clip_range=0.2, num_tokens=num_tokens)

    _check_accumulation(fn, logprobs, [old, advantages], mask)


def test_ppo_policy_loss_ignores_masked_positions():
    mask, logprobs, old, advantages, _ = _random_batch(4)
    nan = torch.full_like(old, NAN)
    a = logprobs.clone().requires_grad_()
    b = torch.where(mask, logprobs, torch.full_like(logprobs, 1e4)).requires_grad_()
    la, sa = ppo_policy_loss(a, old, advantages, mask, clip_range=0.2)
    lb, sb = ppo_policy_loss(b, torch.where(mask, old, nan), torch.where(mask, advantages, nan), mask, clip_range=0.2)
    la.backward()
    lb.backward()
    assert_close(lb, la)
    assert_close(b.grad, a.grad)
    for k in sa:
        assert_close(sb[k], sa[k])


# ---------------------------------------------------------------- value loss


def test_value_clip_fraction_ignores_rounding_inside_the_clip_range():
    # Every |V - old_V| < 0.2: nothing is clipped, though old + (V - old) differs from V in the last bit at places.
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(64, 32, generator=generator)
    old = 0.97 * values + 0.05 * torch.rand(64, 32, generator=generator)  # |V - old_V| < 0.2 everywhere
    assert ((values - old).abs() < 0.2).all()
    returns = torch.randn(64, 32, generator=generator)
    mask = torch.ones(64, 32, dtype=torch.bool)
    assert ((old + (values - old)) != values).any()  # the rounding the statistic must not count
    _, stats = ppo_value_loss(values, old, returns, mask, clip_range=0.2)
    assert stats["clip_fraction"].item() == 0.0


def test_ppo_value_loss_by_hand():
    values = torch.tensor([[0.5, 0.1, 0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 4, dtype=torch.float64)
    returns = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    loss, stats = ppo_value_loss(values, old, returns, mask, clip_range=0.2)
    # token 1: V=0.5, R=1: (V-R)^2 = 0.25; V_clip = 0.2: 0.64 -> 0.5 * 0.64 = 0.32  (clipped)
    # token 2: V=0.1, R=1: 0.81; V_clip = 0.1: 0.81         -> 0.5 * 0.81 = 0.405
    # token 3: V=0.5, R=0: 0.25; V_clip = 0.2: 0.04         -> 0.5 * 0.25 = 0.125
    # mean over 3 = 0.85 / 3 = 0.283333
    assert loss.item() == pytest.approx(0.85 / 3)
    assert stats["clip_fraction"].item() == pytest.approx(1 / 3)
    for v in stats.values():
        assert v.requires_grad is False and v.dim() == 0
    loss.backward()
    # token 1 clipped: 0 gradient; token 2: (V - R) / 3 = -0.3; token 3: 0.5 / 3
    assert_close(values.grad, torch.tensor([[0.0, -0.3, 0.5 / 3, 0.0]], dtype=torch.float64))


def test_ppo_value_loss_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    _, perfect = ppo_value_loss(returns, returns, returns, mask, clip_range=0.2)
    assert perfect["explained_variance"].item() == pytest.approx(1.0)
    # V = constant: Var[R - V] = Var[R] -> 0
    constant = torch.full_like(returns, 2.0)
    _, useless = ppo_value_loss(constant, constant, returns, mask, clip_range=0.2)
    assert useless["explained_variance"].item() == pytest.approx(0.0)
    # Var[R] = 0: undefined
    _, undefined = ppo_value_loss(constant, constant, constant, mask, clip_range=0.2)
    assert math.isnan(undefined["explained_variance"].item())


def test_ppo_value_loss_gradient_accumulation_is_exact():
    mask, values, old, returns, _ = _random_batch(5)
    old = values + 0.3 * old

    def fn(values, old, returns, mask, num_tokens):
        return ppo_value_loss(values, old, returns, mask, clip_range=0.2, num_tokens=num_tokens)

    _check_accumulation(fn, values, [old, returns], mask)


def test_ppo_value_loss_ignores_masked_positions():
    mask, values, old, returns, _ = _random_batch(6)
    nan = torch.full_like(old, NAN)
    a = values.clone().requires_grad_()
    b = torch.where(mask, values, nan).requires_grad_()
    la, sa = ppo_value_loss(a, old, returns, mask, clip_range=0.2)
    lb, sb = ppo_value_loss(b, torch.where(mask, old, nan), torch.where(mask, returns, nan), mask, clip_range=0.2)
    la.backward()
    lb.backward()
    assert_close(lb, la)
    assert_close(b.grad, a.grad)
    for k in sa:
        assert_close(sb[k], sa[k])


# ---------------------------------------------------------------- adaptive KL


def test_adaptive_kl_coef_by_hand():
    # KL 6 vs target 5: error = 6/5 - 1 = 0.2; 512 episodes / horizon 10000:
    # 0.1 * (1 + 0.2 * 0.0512) = 0.1 * 1.01024 = 0.101024
    assert adaptive_kl_coef(0.1, observed_kl=6.0, target_kl=5.0, horizon=10000, num_steps=512) == pytest.approx(
        0.101024
    )
    # KL 50: error 9 clipped to 0.2 -> same step
    assert adaptive_kl_coef(
        0.1, observed_kl=torch.tensor(50.0), target_kl=5.0, horizon=10000, num_steps=512
    ) == pytest.approx(0.101024)
    # KL 4.5: error -0.1 -> 0.1 * (1 - 0.1 * 0.0512) = 0.099488
    assert adaptive_kl_coef(0.1, observed_kl=4.5, target_kl=5.0, horizon=10000, num_steps=512) == pytest.approx(
        0.099488
    )
    # KL 0: error -1 clipped to -0.2 -> 0.1 * (1 - 0.2 * 0.0512) = 0.098976
    out = adaptive_kl_coef(0.1, observed_kl=0.0, target_kl=5.0, horizon=10000, num_steps=512)
    assert isinstance(out, float) and out == pytest.approx(0.098976)


def test_adaptive_kl_coef_rejects_bad_settings():
    with pytest.raises(ValueError, match="target_kl"):
        adaptive_kl_coef(0.1, observed_kl=1.0, target_kl=0.0, horizon=10, num_steps=1)
    with pytest.raises(ValueError, match="horizon"):
        adaptive_kl_coef(0.1, observed_kl=1.0, target_kl=1.0, horizon=0, num_steps=1)


# ---------------------------------------------------------------- entropy


def test_entropy_by_hand():
    from prefer.objectives import entropy

    # uniform over 4 tokens: log 4; a one-hot (other logits -inf): 0; logits [0, log 3] at T = 1:
    # p = [1/4, 3/4], H = -(1/4 log 1/4 + 3/4 log 3/4).
    logits = torch.tensor(
        [[[0.0, 0.0, 0.0, 0.0], [5.0, -math.inf, -math.inf, -math.inf], [0.0, math.log(3.0), -math.inf, -math.inf]]],
        dtype=torch.float64,
    )
    expected = torch.tensor(
        [[math.log(4.0), 0.0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]], dtype=torch.float64
    )
    assert_close(entropy(logits), expected)
    # temperature 2 divides the logits first: [0, log 3] / 2 -> p proportional to [1, sqrt 3].
    p = torch.tensor([1.0, math.sqrt(3.0)], dtype=torch.float64)
    p = p / p.sum()
    assert_close(entropy(logits, temperature=2.0)[0, 2], -(p * p.log()).sum())
    with pytest.raises(ValueError):
        entropy(logits, temperature=0.0)


def test_explained_variance_by_hand():
    from prefer.objectives import explained_variance

    returns = torch.tensor([[1.0, 3.0, 9.0]])
    mask = torch.tensor([[True, True, False]])  # the third token is not a response token
    # over the two tokens: Var[R] = ((1-2)^2 + (3-2)^2) / 2 = 1; V = (1, 1): Var[R - V] = Var[(0, 2)] = 1 -> 0
    assert explained_variance(torch.tensor([[1.0, 1.0, 5.0]]), returns, mask).item() == pytest.approx(0.0)
    # V = (1.5, 2.5): R - V = (-0.5, 0.5), Var = 0.25 -> 1 - 0.25 / 1 = 0.75
    assert explained_variance(torch.tensor([[1.5, 2.5, 0.0]]), returns, mask).item() == pytest.approx(0.75)


def test_proxy_rewards_negate_misalignment_and_penalise_responses_that_never_stop():
    from prefer.objectives import proxy_rewards

    stopped = torch.tensor([True, False])
    assert proxy_rewards([0.25, 0.5], stopped=stopped, missing_eos_penalty=None).tolist() == [-0.25, -0.5]
    # 0 - 0.25 for the stopped one; -0.5 - 1.0 for the one that ran out of tokens
    assert proxy_rewards([0.25, 0.5], stopped=stopped, missing_eos_penalty=1.0).tolist() == [-0.25, -1.5]
