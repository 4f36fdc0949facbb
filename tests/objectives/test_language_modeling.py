"""MLE and unlikelihood: hand-derived values, invariances, edge cases."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from prefer.objectives import mle_loss, unlikelihood_loss

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
    scores = torch.rand(B, T, generator=g, dtype=torch.float64)
    return logits, targets, mask, scores


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


def _ul(logits, targets, mask, scores, num_tokens=None, threshold=0.3, alpha=0.5):
    return unlikelihood_loss(logits, targets, mask, scores, threshold=threshold, alpha=alpha, num_tokens=num_tokens)


# ---------------------------------------------------------------- MLE


def test_mle_by_hand():
    logits = _quarter_logits(3)
    targets = torch.tensor([[1, 0, 1]])
    mask = torch.tensor([[True, True, False]])
    loss, stats = mle_loss(logits, targets, mask)
    # -log(3/4) = ln(4/3) = 0.28768, -log(1/4) = ln 4 = 1.38629; mean of two = 0.83699
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(4)) / 2)
    assert stats["num_tokens"].item() == 2
    # num_tokens = 4: same sum over a larger step denominator: 1.67398 / 4
    loss4, _ = mle_loss(logits, targets, mask, num_tokens=4)
    assert loss4.item() == pytest.approx((math.log(4 / 3) + math.log(4)) / 4)


def test_mle_equals_cross_entropy_with_ignore_index():
    logits, targets, mask, _ = _random_batch(0)
    loss, _ = mle_loss(logits, targets, mask)
    expected = F.cross_entropy(logits.flatten(0, 1), torch.where(mask, targets, -100).flatten(), ignore_index=-100)
    assert_close(loss, expected)


def test_mle_gradient_accumulation_is_exact():
    logits, targets, mask, _ = _random_batch(1)
    _check_accumulation(mle_loss, [logits], [targets, mask], mask)


def test_mle_ignores_masked_positions():
    logits, targets, mask, _ = _random_batch(2)
    garbage_logits = torch.where(mask[..., None], logits, torch.randn_like(logits) * 1e4)
    garbage_targets = torch.where(mask, targets, -100)
    a = logits.clone().requires_grad_()
    b = garbage_logits.clone().requires_grad_()
    la, _ = mle_loss(a, targets, mask)
    lb, _ = mle_loss(b, garbage_targets, mask)
    la.backward()
    lb.backward()
    assert_close(lb, la)
    assert_close(b.grad, a.grad)
    assert torch.all(b.grad[~mask] == 0)


def test_mle_stats_are_detached_scalars():
    logits, targets, mask, _ = _random_batch(3)
    _, stats = mle_loss(logits.requires_grad_(), targets, mask)
    assert set(stats) == {"loss", "num_tokens"}
    for v in stats.values():
        assert v.requires_grad is False and v.dim() == 0


def test_mle_rejects_non_bool_mask():
    logits, targets, mask, _ = _random_batch(4)
    with pytest.raises(TypeError, match="bool"):
        mle_loss(logits, targets, mask.long())


# ---------------------------------------------------------------- unlikelihood


def test_unlikelihood_by_hand():
    logits = _quarter_logits(4)
    targets = torch.tensor([[1, 0, 1, 0]])
    mask = torch.tensor([[True, True, True, False]])
    scores = torch.tensor([[0.0, 0.5, 0.5, 9.0]], dtype=torch.float64)
    loss, stats = _ul(logits, targets, mask, scores, threshold=0.1, alpha=0.5)
    # token 1: good, p = 3/4          -> -ln(3/4)              = 0.287682
    # token 2: bad,  p = 1/4          -> -0.5 * ln(1 - 1/4)    = 0.143841
    # token 3: bad,  p = 3/4          -> -0.5 * ln(1 - 3/4)    = 0.693147
    # token 4: masked.   mean over 3 = 1.124670 / 3            = 0.374890
    expected = (-math.log(0.75) - 0.5 * math.log(0.75) - 0.5 * math.log(0.25)) / 3
    assert loss.item() == pytest.approx(expected)
    assert stats["good_nll"].item() == pytest.approx(-math.log(0.75))
    # bad_unlikelihood is -ln(1 - p) before alpha: (ln(4/3) + ln 4) / 2
    assert stats["bad_unlikelihood"].item() == pytest.approx((math.log(4 / 3) + math.log(4)) / 2)
    assert stats["fraction_bad"].item() == pytest.approx(2 / 3)
    for v in stats.values():
        assert v.requires_grad is False


def test_unlikelihood_threshold_zero_is_exact():
    logits = _quarter_logits(3)
    targets = torch.tensor([[1, 1, 1]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    scores = torch.tensor([[0.0, 1e-9, 1e-30]], dtype=torch.float64)
    loss, stats = _ul(logits, targets, mask, scores, threshold=0.0, alpha=1.0)
    # score 0 is good: -ln(3/4); 1e-9 and 1e-30 are bad: -ln(1/4) each (no soft weighting)
    expected = (-math.log(0.75) - 2 * math.log(0.25)) / 3
    assert loss.item() == pytest.approx(expected)
    assert stats["fraction_bad"].item() == pytest.approx(2 / 3)


def test_unlikelihood_score_equal_to_threshold_is_good():
    logits = _quarter_logits(1)
    loss, stats = _ul(
        logits,
        torch.tensor([[1]]),
        torch.ones(1, 1, dtype=torch.bool),
        torch.tensor([[0.25]]),
        threshold=0.25,
        alpha=1.0,
    )
    assert stats["fraction_bad"].item() == 0.0
    assert loss.item() == pytest.approx(-math.log(0.75))


def test_unlikelihood_with_alpha_zero_is_mle_on_good_tokens():
    logits, targets, mask, scores = _random_batch(5)
    good = mask & (scores <= 0.3)
    n = float(mask.sum())
    ul, _ = _ul(logits, targets, mask, scores, alpha=0.0, num_tokens=n)
    mle, _ = mle_loss(logits, targets, good, num_tokens=n)
    assert_close(ul, mle)
    # default denominator counts bad tokens too (paper: average over all non-padding tokens)
    ul_default, _ = _ul(logits, targets, mask, scores, alpha=0.0)
    mle_good, _ = mle_loss(logits, targets, good)
    assert_close(ul_default, mle_good * good.sum() / mask.sum())


def test_unlikelihood_all_good_equals_mle():
    logits, targets, mask, scores = _random_batch(6)
    ul, _ = _ul(logits, targets, mask, scores, threshold=2.0)
    mle, _ = mle_loss(logits, targets, mask)
    assert_close(ul, mle)


def test_unlikelihood_stays_finite_when_bad_token_has_probability_one():
    logits = torch.tensor([[[0.0, 100.0], [0.0, 30.0]]], dtype=torch.float32, requires_grad=True)
    targets = torch.tensor([[1, 1]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, _ = _ul(logits, targets, mask, torch.ones(1, 2), threshold=0.0, alpha=1.0)
    # 1 - p ~ e^-100 and e^-30 are both clamped to 1e-5: loss = -ln(1e-5) = 11.5129
    assert loss.item() == pytest.approx(-math.log(1e-5), rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_unlikelihood_log_one_minus_p_is_accurate_for_small_and_large_p():
    # p = 1 - 1e-3 (above the clamp) and p = 1e-7 (log(1 - p) ~ -1e-7 must not round to 0)
    for p in (1 - 1e-3, 1e-7):
        logits = torch.tensor([[[math.log(1 - p), math.log(p)]]], dtype=torch.float32)
        loss, _ = _ul(
            logits, torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1), threshold=0.0, alpha=1.0
        )
        assert loss.item() == pytest.approx(-math.log1p(-p), rel=1e-3)


def test_unlikelihood_gradient_accumulation_is_exact():
    logits, targets, mask, scores = _random_batch(7)
    _check_accumulation(_ul, [logits], [targets, mask, scores], mask)


def test_unlikelihood_ignores_masked_positions():
    logits, targets, mask, scores = _random_batch(8)
    garbage_logits = torch.where(mask[..., None], logits, torch.randn_like(logits) * 1e4)
    garbage_scores = torch.where(mask, scores, torch.full_like(scores, float("nan")))
    a = logits.clone().requires_grad_()
    b = garbage_logits.clone().requires_grad_()
    la, sa = _ul(a, targets, mask, scores)
    lb, sb = _ul(b, torch.where(mask, targets, -100), mask, garbage_scores)
    la.backward()
    lb.backward()
    assert_close(lb, la)
    assert_close(b.grad, a.grad)
    for k in sa:
        assert_close(sb[k], sa[k])


@pytest.mark.parametrize("scale", [2.0, 20.0])  # ordinary logits, and large ones (where 1 - exp(log p) failed)
def test_unlikelihood_float32_matches_float64_when_p_is_near_one(scale):
    # The bad target gets p = 1 - 1e-3 exactly: its logit is log(0.999) - log(1e-3) above the others' logsumexp.
    g = torch.Generator().manual_seed(0)
    B, T, V = 2, 3, 8192
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale
    targets = torch.randint(0, V, (B, T), generator=g)
    others = logits.scatter(-1, targets.unsqueeze(-1), float("-inf")).logsumexp(-1)
    logits.scatter_(-1, targets.unsqueeze(-1), (others + math.log(0.999) - math.log(1e-3)).unsqueeze(-1))
    mask = torch.ones(B, T, dtype=torch.bool)
    scores = torch.ones(B, T, dtype=torch.float64)  # every token bad: loss = mean -log(1 - p) = -log(1e-3)
    results = {}
    for dtype in (torch.float32, torch.float64):
        leaf = logits.to(dtype).requires_grad_()
        loss, _ = _ul(leaf, targets, mask, scores.to(dtype), threshold=0.0, alpha=1.0)
        loss.backward()
        results[dtype] = (loss.detach().double(), leaf.grad.double())
    assert results[torch.float64][0].item() == pytest.approx(-math.log(1e-3), rel=1e-9)
    # float32 rounding of 1e4-sized logits: ~1e-6 absolute; the old log p route was off by up to 3e-2 (0.24 at x20)
    assert abs(results[torch.float32][0] - results[torch.float64][0]).item() < 1e-5
    assert_close(results[torch.float32][1], results[torch.float64][1], atol=1e-6, rtol=1e-4)


def test_unlikelihood_log_share_of_the_others_matches_autograd_bit_for_bit(monkeypatch):
    # log(1 - p) above p = 1/2 is logsumexp(logits with the target at -inf) - logsumexp(logits); prefer computes it
    # slab by slab (slabs of 2 x 9 x 1000 here: 3 slabs) and must give autograd's numbers exactly, value and gradient.
    from prefer.objectives import common, language_modeling

    monkeypatch.setattr(common, "_SLAB_ELEMENTS", 20_000)
    g = torch.Generator().manual_seed(7)
    base = torch.randn(5, 10, 1000, generator=g) * 6
    base[0, 0, 3] = 40.0  # p ~ 1 on the target: the branch that reads the others' share
    targets = torch.randint(0, 1000, (5, 9), generator=g)
    targets[0, 0] = 3
    weights = torch.randn(5, 9, generator=g)
    results = []
    for share in (
        lambda x, t: torch.logsumexp(x.scatter(-1, t[..., None], float("-inf")), -1) - torch.logsumexp(x, -1),
        language_modeling._OthersLogShare.apply,
    ):
        x = base.clone().requires_grad_()
        out = share(x[:, :-1], targets)
        (out * weights).sum().backward()
        results.append((out.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert results[1][0][0, 0] < -10  # p ~ 1 on the target (logit 40, the others at most ~25): a tiny share


def test_unlikelihood_loss_stats_and_gradient_match_the_full_vocabulary_expression(monkeypatch):
    # prefer reads the others' share only at bad tokens with p > 1/2; the loss, its stats and the gradient must be
    # exactly those of computing it everywhere, as autograd would (`everywhere` is that expression).
    from prefer.objectives import language_modeling

    def everywhere(logits, targets, logp, needed=None):
        others = logits.scatter(-1, targets.unsqueeze(-1), float("-inf"))
        from_others = torch.logsumexp(others, dim=-1) - torch.logsumexp(logits, dim=-1)
        from_logp = torch.log1p(-torch.exp(logp.clamp(max=-math.log(2.0))))
        return torch.where(logp > -math.log(2.0), from_others, from_logp).clamp(min=math.log(1e-5))

    g = torch.Generator().manual_seed(8)
    base = torch.randn(4, 33, 300, generator=g) * 3
    base[:, :, 5] += 15  # p ~ 1 on token 5, the target of every third position
    targets = torch.randint(0, 300, (4, 32), generator=g)
    targets[:, ::3] = 5
    scores, mask = torch.rand(4, 32, generator=g), torch.rand(4, 32, generator=g) < 0.9
    results = []
    for log_one_minus_p in (everywhere, language_modeling._log_one_minus_p):
        monkeypatch.setattr(language_modeling, "_log_one_minus_p", log_one_minus_p)
        x = base.clone().requires_grad_()
        loss, stats = unlikelihood_loss(x[:, :-1], targets, mask, scores, threshold=0.5, alpha=1.0, num_tokens=100)
        loss.backward()
        results.append((loss.item(), {k: v.item() for k, v in stats.items()}, x.grad))
    assert results[0][:2] == results[1][:2]
    assert torch.equal(results[0][2], results[1][2])
    assert 0.2 < results[1][1]["fraction_bad"] < 0.8 and results[1][1]["bad_unlikelihood"] > 0
