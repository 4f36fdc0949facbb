"""DPO, IPO and listwise (Plackett-Luce) DPO on K-way rankings: hand-derived numbers, K = 2 listwise == pairwise,
the beta -> 0 limit, ties, padding, accumulation."""

import math

import pytest
import torch

from prefer.objectives import DPO_LOSSES, dpo_loss, ipo_loss, listwise_dpo_loss


def _one(h, ranks):
    """One prompt whose log-ratios are h: reference 0, policy h."""
    policy = torch.tensor([h], dtype=torch.float64, requires_grad=True)
    return policy, torch.zeros_like(policy), torch.tensor([ranks]), torch.ones((1, len(h)), dtype=torch.bool)


def test_dpo_by_hand_over_all_pairs_of_one_ranking():
    # policy [-1, -2, -4], reference [-2, -2, -2]: h = [1, 0, -2]; beta 0.5; ranking 0 > 1 > 2
    policy = torch.tensor([[-1.0, -2.0, -4.0]], dtype=torch.float64)
    reference = torch.full_like(policy, -2.0)
    loss, stats = dpo_loss(policy, reference, torch.tensor([[0, 1, 2]]), torch.ones((1, 3), dtype=torch.bool), beta=0.5)
    # margins beta (h_w - h_l): (0,1) 0.5, (0,2) 1.5, (1,2) 1.0; -log sigma(m) = log(1 + e^-m):
    # log(1 + 0.606531) = 0.474077, log(1 + 0.223130) = 0.201413, log(1 + 0.367879) = 0.313262; mean 0.329584
    assert loss.item() == pytest.approx(0.329584, abs=1e-6)
    assert stats["accuracy"].item() == 1.0 and stats["num_pairs"].item() == 3
    assert stats["margin_mean"].item() == pytest.approx(1.0)  # (0.5 + 1.5 + 1.0) / 3


def test_dpo_drops_ties_and_padding_and_means_per_prompt():
    # prompt 0: h = [1, 0, -2], ranks (0, 0, 1): pairs (0,2) and (1,2) only; prompt 1: K = 2 (slot 2 padding,
    # holding NaN), h = [0, 2] with response 0 ranked first: the policy has it the wrong way round.
    policy = torch.tensor([[1.0, 0.0, -2.0], [0.0, 2.0, float("nan")]], dtype=torch.float64)
    ranks, mask = torch.tensor([[0, 0, 1], [0, 1, 0]]), torch.tensor([[True, True, True], [True, True, False]])
    loss, stats = dpo_loss(policy, torch.zeros_like(policy), ranks, mask, beta=1.0)
    # prompt 0: (log(1 + e^-3) + log(1 + e^-2)) / 2 = (0.048587 + 0.126928) / 2 = 0.087757
    # prompt 1: log(1 + e^2) = 2.126928; mean over the 2 prompts: 1.107343
    assert loss.item() == pytest.approx(1.107343, abs=1e-6)
    assert stats["num_pairs"].item() == 3 and stats["accuracy"].item() == pytest.approx(2 / 3)


def test_ipo_by_hand():
    # h = [1, 0, -2], tau 0.5: target margin 1/(2 tau) = 1; margins 1, 3, 2 -> (0^2 + 2^2 + 1^2) / 3 = 5/3
    loss, stats = ipo_loss(*_one([1.0, 0.0, -2.0], [0, 1, 2]), tau=0.5)
    assert loss.item() == pytest.approx(5 / 3)
    assert stats["margin_mean"].item() == pytest.approx(0.5 * 2.0)  # implicit reward tau h: mean margin 2


def test_ipo_is_minimal_at_the_target_margin():
    policy, reference, ranks, mask = _one([0.75, 0.0], [0, 1])  # margin 1/(2 tau) = 0.75 with tau = 2/3
    loss, _ = ipo_loss(policy, reference, ranks, mask, tau=2 / 3)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12) and policy.grad.abs().max().item() < 1e-12


def test_listwise_by_hand_is_the_plackett_luce_likelihood_per_choice():
    # h = [1, 0, -2], beta 1, ranking 0 > 1 > 2. Choice 1: 1 - log(e + 1 + e^-2) = 1 - log(3.853617) = -0.349012;
    # choice 2: 0 - log(1 + e^-2) = -0.126928; NLL 0.475940 over 2 choices: 0.237970
    loss, stats = listwise_dpo_loss(*_one([1.0, 0.0, -2.0], [0, 1, 2]), beta=1.0)
    assert loss.item() == pytest.approx(0.237970, abs=1e-6)
    assert stats["num_pairs"].item() == 3 and stats["accuracy"].item() == 1.0


def test_listwise_ties_leave_tied_peers_out_of_each_choice():
    # ranks (0, 0, 1), h = [1, 0, -2]: response 0 chooses among {0, 2}: log(e + e^-2) - 1 = 1.048587 - 1 = 0.048587;
    # response 1 among {1, 2}: log(1 + e^-2) = 0.126928; response 2 has nothing below it. Mean: 0.087757
    loss, _ = listwise_dpo_loss(*_one([1.0, 0.0, -2.0], [0, 0, 1]), beta=1.0)
    assert loss.item() == pytest.approx(0.087757, abs=1e-6)


def test_listwise_with_two_responses_equals_pairwise_dpo_exactly():
    generator = torch.Generator().manual_seed(0)
    policy = torch.randn(16, 2, generator=generator, dtype=torch.float64) * 3
    reference = torch.randn(16, 2, generator=generator, dtype=torch.float64) * 3
    ranks = torch.stack([torch.randperm(2, generator=generator) for _ in range(16)])
    mask = torch.ones((16, 2), dtype=torch.bool)
    results = []
    for loss_fn in (dpo_loss, listwise_dpo_loss):
        p = policy.clone().requires_grad_(True)
        loss, stats = loss_fn(p, reference, ranks, mask, beta=0.3)
        loss.backward()
        results.append((loss, p.grad, stats))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-12)
    assert results[0][2]["accuracy"] == results[1][2]["accuracy"]


def test_dpo_as_beta_goes_to_zero():
    """log sigma(beta m) = -log 2 + beta m / 2 + O(beta^2): the loss tends to log 2 per pair and its slope in beta to
    minus half the mean log-ratio margin; listwise tends to the mean log of each choice's size."""
    h = [1.0, 0.0, -2.0]
    for beta in (1e-3, 1e-5):
        loss, _ = dpo_loss(*_one(h, [0, 1, 2]), beta=beta)
        # mean margin of h: (1 + 3 + 2) / 3 = 2 -> slope -1
        assert (loss.item() - math.log(2)) / beta == pytest.approx(-1.0, abs=10 * beta)
        listwise, _ = listwise_dpo_loss(*_one(h, [0, 1, 2]), beta=beta)
        assert listwise.item() == pytest.approx((math.log(3) + math.log(2)) / 2, abs=10 * beta)
    # and the gradient vanishes linearly: d loss / d h_0 = -beta/2 * (2 pairs with 0 the winner) / 3 pairs
    policy, reference, ranks, mask = _one(h, [0, 1, 2])
    loss, _ = dpo_loss(policy, reference, ranks, mask, beta=1e-6)
    loss.backward()
    assert policy.grad[0, 0].item() / 1e-6 == pytest.approx(-1 / 3, rel=1e-4)


@pytest.mark.parametrize("name", sorted(DPO_LOSSES))
def test_accumulating_halves_with_the_step_denominator_equals_the_whole_batch(name):
    loss_fn, hyperparameter = DPO_LOSSES[name]
    generator = torch.Generator().manual_seed(1)
    policy = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    reference = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    ranks = torch.randint(0, 3, (6, 4), generator=generator)
    ranks[:, 0], ranks[:, 1] = 0, 3  # every prompt has a non-tied pair
    mask = torch.ones((6, 4), dtype=torch.bool)
    mask[2, 3] = mask[4, 2:] = False
    whole, _ = loss_fn(policy, reference, ranks, mask, **{hyperparameter: 0.4})
    halves = sum(
        loss_fn(policy[s], reference[s], ranks[s], mask[s], **{hyperparameter: 0.4}, num_prompts=6)[0]
        for s in (slice(0, 3), slice(3, 6))
    )
    torch.testing.assert_close(whole, halves)


def test_the_reference_gets_no_gradient_and_bad_hyperparameters_are_refused():
    policy, _, ranks, mask = _one([1.0, 0.0], [0, 1])
    reference = torch.zeros_like(policy, requires_grad=True)
    dpo_loss(policy, reference, ranks, mask, beta=0.1)[0].backward()
    assert reference.grad is None
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(policy, reference, ranks, mask, beta=0.0)
    with pytest.raises(ValueError, match="tau"):
        ipo_loss(policy, reference, ranks, mask, tau=-1.0)
