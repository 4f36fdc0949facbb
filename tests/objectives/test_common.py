"""Shared numerics: masked reductions, log-probabilities, next-token alignment."""

import math

import pytest
import torch
from torch.testing import assert_close

from prefer.objectives import common
from prefer.objectives.common import (
    check_mask,
    masked_mean,
    masked_sum,
    masked_var,
    next_token_targets,
    token_logprobs,
)

LN3 = math.log(3.0)


# ---------------------------------------------------------------- masked reductions


def test_masked_sum_and_mean_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, False, True], [False, False, True]])
    # kept entries: 1, 3, 6 -> sum 10, count 3
    assert masked_sum(x, mask).item() == pytest.approx(10.0)
    assert_close(masked_sum(x, mask, dim=1), torch.tensor([4.0, 6.0]))  # 1 + 3, 6
    assert masked_mean(x, mask).item() == pytest.approx(10.0 / 3.0)
    # num_tokens replaces the denominator: 10 / 5 = 2
    assert masked_mean(x, mask, num_tokens=5).item() == pytest.approx(2.0)
    assert masked_mean(x, mask, num_tokens=torch.tensor(5.0)).item() == pytest.approx(2.0)


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    x = torch.ones(2, 3, requires_grad=True)
    out = masked_mean(x, torch.zeros(2, 3, dtype=torch.bool))
    assert out.item() == 0.0
    out.backward()
    assert torch.all(x.grad == 0)


def test_masked_entries_never_reach_result_or_gradient():
    x = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]], requires_grad=True)
    mask = torch.tensor([[True, False], [False, True]])
    out = masked_mean(x, mask)
    assert out.item() == pytest.approx(1.5)
    out.backward()
    assert_close(x.grad, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))


def test_masked_mean_gradient_accumulation_is_exact():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(8, 6, generator=g) < 0.5
    mask[2] = False
    mask[5] = True
    total = float(mask.sum())
    parts = sum(masked_mean(x[i : i + 1], mask[i : i + 1], num_tokens=total) for i in range(8))
    assert_close(parts, masked_mean(x, mask))


def test_masked_var_is_population_variance():
    x = torch.tensor([[1.0, 3.0, 100.0]])
    mask = torch.tensor([[True, True, False]])
    # mean 2, squared deviations 1 and 1 -> variance 1 (divided by n = 2, not n - 1)
    assert masked_var(x, mask).item() == pytest.approx(1.0)


def test_bad_masks_and_denominators_are_rejected():
    x = torch.ones(2, 2)
    with pytest.raises(TypeError, match="torch.bool"):
        masked_mean(x, torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.bool"):
        check_mask(torch.ones(2, 2))
    with pytest.raises(ValueError, match="shape mismatch"):
        masked_sum(x, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_tokens"):
        masked_mean(x, torch.ones(2, 2, dtype=torch.bool), num_tokens=0)


# ---------------------------------------------------------------- token_logprobs


def test_token_logprobs_by_hand():
    # logits [0, ln 3] -> p = [1/4, 3/4]
    logits = torch.tensor([[[0.0, LN3], [0.0, LN3]]])
    targets = torch.tensor([[0, 1]])
    assert_close(token_logprobs(logits, targets), torch.tensor([[math.log(0.25), math.log(0.75)]]))


def test_token_logprobs_temperature_by_hand():
    # logits / 2 = [0, ln sqrt 3] -> p = [1, sqrt 3] / (1 + sqrt 3)
    logits = torch.tensor([[[0.0, LN3]]], dtype=torch.float64)
    out = token_logprobs(logits, torch.tensor([[1]]), temperature=2.0)
    s3 = math.sqrt(3.0)
    assert out.item() == pytest.approx(math.log(s3 / (1.0 + s3)))


def test_token_logprobs_equals_log_softmax_gather():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 7, generator=g) * 5
    targets = torch.randint(0, 7, (3, 4), generator=g)
    for temperature in (1.0, 0.7):
        log_probs = torch.log_softmax(logits / temperature, -1)
        expected = log_probs.gather(-1, targets[..., None])[..., 0]
        assert_close(token_logprobs(logits, targets, temperature=temperature), expected)


def test_token_logprobs_upcasts_half_precision():
    logits = torch.tensor([[[0.0, LN3]]], dtype=torch.bfloat16)
    out = token_logprobs(logits, torch.tensor([[0]]))
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(math.log(0.25), abs=1e-2)


def _autograd_token_logprobs(logits, targets):
    """The expression token_logprobs computes, left to autograd (what it did before it worked slab by slab)."""
    return logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)


@pytest.mark.parametrize(
    ("shape", "dtype", "sliced"),
    [((5, 9, 1000), torch.float32, True), ((2, 5, 7), torch.float64, False), ((2, 3, 4, 11), torch.float32, False)],
)
def test_token_logprobs_matches_autograd_bit_for_bit(monkeypatch, shape, dtype, sliced):
    # Slabs of 20_000 elements: (5, 8, 1000) splits into slabs of 2 rows of 8 x 1000 (the last one short), the others
    # are one slab. A -inf logit and a row that is -inf but for one entry included; values and gradients must be
    # equal, not close.
    monkeypatch.setattr(common, "_SLAB_ELEMENTS", 20_000)
    g = torch.Generator().manual_seed(3)
    base = (torch.randn(shape, generator=g) * 5).to(dtype)
    base[0, 0, ..., 1] = float("-inf")
    base[1, 1, ..., :] = float("-inf")
    base[1, 1, ..., 0] = 2.0
    results = []
    for fn in (_autograd_token_logprobs, token_logprobs):
        x = base.clone().requires_grad_()
        view = x[:, :-1] if sliced else x
        targets = torch.randint(0, shape[-1], view.shape[:-1], generator=torch.Generator().manual_seed(4))
        targets[0, 0] = 0
        weights = torch.randn(targets.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
        out = fn(view, targets)
        (out * weights).sum().backward()
        results.append((out.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_token_logprobs_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), temperature=0.0)
    with pytest.raises(ValueError, match="targets"):
        token_logprobs(torch.zeros(1, 2, 2), torch.zeros(1, 3, dtype=torch.long))


# ---------------------------------------------------------------- next_token_targets


def test_next_token_targets_shifts_per_token_tensors_like_targets():
    input_ids = torch.tensor([[5, 6, 7, 8]])
    attention = torch.tensor([[True, True, True, False]])
    scores = torch.tensor([[0.5, 0.6, 0.7, 0.8]])  # score of each token
    targets, mask, shifted_scores = next_token_targets(input_ids, attention, scores)
    assert targets.tolist() == [[6, 7, 8]]
    assert mask.tolist() == [[True, True, False]]
    # the score at position t belongs to the token being predicted, targets[:, t]
    assert_close(shifted_scores, torch.tensor([[0.6, 0.7, 0.8]]))
    (only_targets,) = next_token_targets(input_ids)
    assert only_targets.tolist() == [[6, 7, 8]]


def test_next_token_targets_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        next_token_targets(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        next_token_targets(torch.zeros(4, dtype=torch.long))
