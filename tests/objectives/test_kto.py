"""KTO on unpaired binary feedback: hand-derived loss, gradients and stats; the reference point (clamped, detached);
weight and label invariances; TRL's mismatched pairing; accumulation; bad input."""

import pytest
import torch

from prefer.objectives import kto_kl_estimate, kto_loss, kto_mismatched_index

LABELS = torch.tensor([True, True, False, False])


def _batch(r, reference=-5.0):
    """Policy log-probs whose log-ratios against a constant reference are r (a leaf with gradient)."""
    policy = torch.tensor([reference + x for x in r], dtype=torch.float64, requires_grad=True)
    return policy, torch.full_like(policy.detach(), reference)


def test_kto_by_hand():
    # r = [2, -1, 1, -3], labels [good, good, bad, bad], beta 0.5, z0 = 1.
    # good: 1 - sigma(0.5 (r - 1)):  r = 2 -> 1 - sigma(0.5) = 0.377541;  r = -1 -> 1 - sigma(-1) = 0.731059
    # bad:  1 - sigma(0.5 (1 - r)):  r = 1 -> 1 - sigma(0) = 0.5;         r = -3 -> 1 - sigma(2) = 0.119203
    # mean over the 4 examples: 1.727802 / 4 = 0.431951
    policy, reference = _batch([2.0, -1.0, 1.0, -3.0])
    loss, stats = kto_loss(policy, reference, LABELS, beta=0.5, kl_estimate=1.0)
    assert loss.item() == pytest.approx(0.431951, abs=1e-6)
    # rewards beta r: good 0.5 * (2 - 1) / 2 = 0.25, bad 0.5 * (1 - 3) / 2 = -0.5, margin 0.75.
    # On their label's side of z0 = 1: r = 2 (good, > 1) and r = -3 (bad, < 1); r = -1 and r = 1 are not: 1/2.
    assert stats["rewards_chosen"].item() == pytest.approx(0.25)
    assert stats["rewards_rejected"].item() == pytest.approx(-0.5)
    assert stats["margin"].item() == pytest.approx(0.75)
    assert stats["accuracy"].item() == pytest.approx(0.5)
    assert stats["kl"].item() == 1.0 and stats["num_desirable"].item() == 2 and stats["num_undesirable"].item() == 2
    assert all(not s.requires_grad for s in stats.values())


def test_kto_weights_by_hand():
    # lambda_D = 2, lambda_U = 0.5 on the same batch: (2 (0.377541 + 0.731059) + 0.5 (0.5 + 0.119203)) / 4
    # = (2.217200 + 0.309601) / 4 = 0.631700
    policy, reference = _batch([2.0, -1.0, 1.0, -3.0])
    loss, _ = kto_loss(
        policy, reference, LABELS, beta=0.5, kl_estimate=1.0, desirable_weight=2.0, undesirable_weight=0.5
    )
    assert loss.item() == pytest.approx(0.631700, abs=1e-6)


def test_kto_gradients_by_hand_and_their_signs():
    # d loss_i / d r_i = -lambda beta s sigma(u) (1 - sigma(u)) / N with u = beta s (r - z0), s = +1 good / -1 bad:
    # good r = 2:  u = 0.5: -0.5 * 0.235004 / 4 = -0.0293755;   good r = -1: u = -1: -0.5 * 0.196612 / 4 = -0.0245765
    # bad r = 1:   u = 0:   +0.5 * 0.25 / 4     = +0.03125;     bad r = -3:  u = 2:  +0.5 * 0.104994 / 4 = +0.0131242
    policy, reference = _batch([2.0, -1.0, 1.0, -3.0])
    reference.requires_grad_(True)
    z0 = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    loss, _ = kto_loss(policy, reference, LABELS, beta=0.5, kl_estimate=z0)
    loss.backward()
    expected = torch.tensor([-0.0293755, -0.0245765, 0.03125, 0.0131242], dtype=torch.float64)
    assert torch.allclose(policy.grad, expected, atol=1e-7)
    # gradient descent raises the log-probability of good completions and lowers that of bad ones
    assert (policy.grad[LABELS] < 0).all() and (policy.grad[~LABELS] > 0).all()
    # neither the reference nor the reference point is trained
    assert reference.grad is None and z0.grad is None


def test_reference_point_is_clamped_at_zero():
    policy, reference = _batch([0.3, -0.2, 0.1, -0.4])
    negative, stats = kto_loss(policy, reference, LABELS, beta=0.1, kl_estimate=-2.0)
    zero, _ = kto_loss(policy, reference, LABELS, beta=0.1, kl_estimate=0.0)
    positive, _ = kto_loss(policy, reference, LABELS, beta=0.1, kl_estimate=0.5)
    assert negative.item() == zero.item() and stats["kl"].item() == 0.0
    assert positive.item() != zero.item()


def test_weights_scale_only_their_own_examples():
    policy, reference = _batch([0.7, -1.2, 0.4, 2.0])
    base, _ = kto_loss(policy, reference, LABELS, beta=0.3, kl_estimate=0.2)
    both, _ = kto_loss(
        policy, reference, LABELS, beta=0.3, kl_estimate=0.2, desirable_weight=3.0, undesirable_weight=3.0
    )
    assert both.item() == pytest.approx(3 * base.item(), rel=1e-12)
    bad_only = torch.zeros(4, dtype=torch.bool)
    one, _ = kto_loss(policy, reference, bad_only, beta=0.3, kl_estimate=0.2)
    other, _ = kto_loss(policy, reference, bad_only, beta=0.3, kl_estimate=0.2, desirable_weight=7.0)
    assert one.item() == other.item()


def test_a_batch_of_only_desirable_examples():
    # r = [1, 3], beta 1, z0 = 0: (1 - sigma(1) + 1 - sigma(3)) / 2 = (0.268941 + 0.047426) / 2 = 0.158184
    policy, reference = _batch([1.0, 3.0])
    good = torch.ones(2, dtype=torch.bool)
    loss, stats = kto_loss(policy, reference, good, beta=1.0, kl_estimate=0.0, undesirable_weight=5.0)
    assert loss.item() == pytest.approx(0.158184, abs=1e-6)
    assert stats["num_undesirable"].item() == 0 and stats["rewards_rejected"].item() == 0.0
    assert stats["margin"].item() == 0.0 and stats["rewards_chosen"].item() == pytest.approx(2.0)
    assert stats["accuracy"].item() == 1.0


def test_flipping_a_label_mirrors_the_log_ratio_about_the_reference_point():
    # 1 - sigma(beta (r - z0)) for a good r equals 1 - sigma(beta (z0 - r')) for a bad r' = 2 z0 - r
    z0, r = 0.4, torch.tensor([1.5, -0.3, 0.9], dtype=torch.float64)
    zeros = torch.zeros(3, dtype=torch.float64)
    good, _ = kto_loss(r, zeros, torch.ones(3, dtype=torch.bool), beta=0.7, kl_estimate=z0)
    bad, _ = kto_loss(2 * z0 - r, zeros, torch.zeros(3, dtype=torch.bool), beta=0.7, kl_estimate=z0)
    assert good.item() == pytest.approx(bad.item(), rel=1e-12)


def test_accumulation_over_micro_batches_is_exact():
    torch.manual_seed(0)
    policy = torch.randn(6, dtype=torch.float64, requires_grad=True)
    reference = torch.randn(6, dtype=torch.float64)
    labels = torch.tensor([True, False, False, True, True, False])
    full, _ = kto_loss(policy, reference, labels, beta=0.2, kl_estimate=0.3, undesirable_weight=1.5)
    (full_grad,) = torch.autograd.grad(full, policy)
    halves = sum(
        kto_loss(policy[s], reference[s], labels[s], beta=0.2, kl_estimate=0.3, undesirable_weight=1.5, num_examples=6)[
            0
        ]
        for s in (slice(0, 2), slice(2, 6))
    )
    (halves_grad,) = torch.autograd.grad(halves, policy)
    assert halves.item() == pytest.approx(full.item(), rel=1e-12)
    assert torch.allclose(halves_grad, full_grad, rtol=1e-12, atol=0)


def test_mismatched_index_is_trls_rotation():
    # TRL: KL_completion_ids = [c[-1]] + c[:-1], so prompt i is paired with completion i - 1 (prompt 0 with the last)
    assert kto_mismatched_index(3).tolist() == [2, 0, 1]
    assert kto_mismatched_index(1).tolist() == [0]
    index = kto_mismatched_index(5)
    assert sorted(index.tolist()) == list(range(5)) and not (index == torch.arange(5)).any()


def test_kl_estimate_is_the_detached_mean_log_ratio():
    # log-ratios [-3 + 5, -5 + 5, -4 + 5] = [2, 0, 1]: mean 1
    policy = torch.tensor([-3.0, -5.0, -4.0], dtype=torch.float64, requires_grad=True)
    estimate = kto_kl_estimate(policy, torch.full((3,), -5.0, dtype=torch.float64))
    assert estimate.item() == 1.0 and not estimate.requires_grad
    # a negative estimate is returned as is (ranks average it first); kto_loss clamps
    assert kto_kl_estimate(torch.zeros(2), torch.ones(2)).item() == -1.0


def test_half_precision_is_computed_in_float32():
    policy = torch.tensor([0.5, -0.5], dtype=torch.bfloat16)
    loss, _ = kto_loss(
        policy, torch.zeros(2, dtype=torch.bfloat16), torch.tensor([True, False]), beta=1.0, kl_estimate=0.0
    )
    assert loss.dtype == torch.float32


def test_bad_input_is_refused():
    policy, reference = _batch([0.0, 0.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="labels must be a torch.bool"):
        kto_loss(policy, reference, LABELS.long(), beta=0.1, kl_estimate=0.0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        kto_loss(policy, reference, LABELS, beta=0.0, kl_estimate=0.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        kto_loss(policy, reference, LABELS, beta=0.1, kl_estimate=0.0, undesirable_weight=-1.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        kto_loss(policy, reference[:3], LABELS, beta=0.1, kl_estimate=0.0)
    with pytest.raises(ValueError, match="kl_estimate must be a scalar"):
        kto_loss(policy, reference, LABELS, beta=0.1, kl_estimate=torch.zeros(2))
    with pytest.raises(ValueError, match=r"must be \[B\]"):
        kto_loss(policy.detach().view(2, 2), reference.view(2, 2), LABELS.view(2, 2), beta=0.1, kl_estimate=0.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        kto_mismatched_index(0)
