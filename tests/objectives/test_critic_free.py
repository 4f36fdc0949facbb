"""RLOO and GRPO: hand-derived advantages and losses, the k3 estimator, clipping, accumulation."""

import math

import pytest
import torch

from prefer.objectives import grpo_advantages, grpo_loss, k3_kl, rloo_advantages, rloo_loss


def test_rloo_advantage_is_the_reward_minus_the_mean_of_the_others():
    # r = [1, 2, 3, 6]: the others' means are 11/3, 10/3, 3, 2
    advantages = rloo_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]]))
    torch.testing.assert_close(advantages[0], torch.tensor([1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0]))
    assert advantages[1].abs().max() == 0  # equal rewards: no signal
    assert advantages[0].sum().abs() < 1e-6  # K/(K-1) (r - mean): the baseline is unbiased, the advantages sum to 0


def test_grpo_advantage_is_normalised_by_the_group_std():
    # r = [1, 2, 3, 6]: mean 3, unbiased variance (4 + 1 + 0 + 9) / 3 = 14/3, std 2.160247
    advantages = grpo_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), eps=0.0)
    torch.testing.assert_close(advantages[0], torch.tensor([-2.0, -1.0, 0.0, 3.0]) / math.sqrt(14 / 3))
    assert grpo_advantages(torch.full((1, 3), 7.0)).abs().max() == 0
    torch.testing.assert_close(
        grpo_advantages(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), scale=False)[0], torch.tensor([-2.0, -1.0, 0.0, 3.0])
    )  # Dr. GRPO: centred only
    with pytest.raises(ValueError, match="K >= 2"):
        grpo_advantages(torch.ones(3, 1))


def test_k3_by_hand():
    # pi = 0.5, pi_ref = 0.25: pi_ref/pi = 0.5 -> 0.5 - log 0.5 - 1 = 0.193147; zero where pi = pi_ref
    kl = k3_kl(torch.tensor([math.log(0.5), math.log(0.3)]), torch.tensor([math.log(0.25), math.log(0.3)]))
    assert kl[0].item() == pytest.approx(0.193147, abs=1e-6) and kl[1].item() == pytest.approx(0.0, abs=1e-7)


def _rows():
    """Two responses of 2 and 1 tokens (column 1 of row 1 is padding, holding garbage)."""
    mask = torch.tensor([[True, True], [True, False]])
    logprobs = torch.tensor([[math.log(0.5), math.log(0.5)], [math.log(0.5), 123.0]], requires_grad=True)
    return logprobs, mask


def test_grpo_loss_by_hand_with_its_per_length_mean_and_the_k3_term():
    logprobs, mask = _rows()
    reference = torch.tensor([[math.log(0.25), math.log(0.5)], [math.log(0.5), 0.0]])
    advantages = torch.tensor([1.0, -2.0])
    loss, stats = grpo_loss(logprobs, logprobs.detach(), reference, advantages, mask, clip_range=0.2, kl_coef=0.1)
    # ratio 1 everywhere: policy loss -(1/2 (A_0 + A_0) / ... ) = -(A_0 + A_1) / 2 = 0.5
    # k3: row 0 [0.193147, 0] -> mean over its 2 tokens 0.0965736; row 1 0 -> 0.1 x 0.0965736 / 2 = 0.00482868
    assert stats["policy_loss"].item() == pytest.approx(0.5, abs=1e-6)
    assert stats["kl_loss"].item() == pytest.approx(0.00482868, abs=1e-7)
    assert stats["kl"].item() == pytest.approx(0.193147 / 2, abs=1e-6)  # summed per response, mean over 2
    loss.backward()
    # d policy term / d logp = -A_i / |o_i| / N: row 0 -1/2/2 = -0.25 per token, row 1 2/1/2 = 1.0;
    # d k3 / d logp = 1 - pi_ref/pi: row 0 token 0: 1 - 0.5 = 0.5, x 0.1 / 2 / 2 = 0.0125
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.25 + 0.0125, -0.25], [1.0, 0.0]]))


def test_grpo_clips_the_ratio_only_where_it_helps_the_objective():
    mask = torch.tensor([[True], [True]])
    old = torch.tensor([[math.log(0.4)], [math.log(0.4)]])
    logprobs = torch.tensor([[math.log(0.6)], [math.log(0.6)]], requires_grad=True)  # ratio 1.5 on both
    loss, stats = grpo_loss(
        logprobs, old, logprobs.detach(), torch.tensor([1.0, -1.0]), mask, clip_range=0.2, kl_coef=0.0
    )
    # A = 1: min(1.5, 1.2) = 1.2 (clipped, no gradient); A = -1: min(-1.5, -1.2) = -1.5 (not clipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2, abs=1e-6)
    assert stats["clip_fraction"].item() == 0.5
    loss.backward()
    assert logprobs.grad[0, 0].item() == 0.0 and logprobs.grad[1, 0].item() == pytest.approx(1.5 / 2, rel=1e-5)


def test_rloo_loss_by_hand():
    mask = torch.tensor([[True, True], [True, False]])
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, 99.0]], requires_grad=True)
    loss, stats = rloo_loss(logprobs, torch.tensor([2.0, -1.0]), mask)
    # sequence log-probs -3 and -0.5: -(2 x -3 + -1 x -0.5) / 2 = 2.75
    assert loss.item() == pytest.approx(2.75)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1.0, -1.0], [0.5, 0.0]]))  # -A_i / N per token


@pytest.mark.parametrize("which", ["grpo", "rloo"])
def test_accumulating_halves_with_the_step_count_equals_the_whole_batch(which):
    generator = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(6, 5, generator=generator, dtype=torch.float64)
    old = logprobs + 0.1 * torch.randn(6, 5, generator=generator, dtype=torch.float64)
    reference = logprobs + 0.1 * torch.randn(6, 5, generator=generator, dtype=torch.float64)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 1, 3, 2, 4, 5])[:, None]
    advantages = torch.randn(6, generator=generator, dtype=torch.float64)

    def loss(rows, count=None):
        if which == "rloo":
            return rloo_loss(logprobs[rows], advantages[rows], mask[rows], num_sequences=count)[0]
        return grpo_loss(
            logprobs[rows],
            old[rows],
            reference[rows],
            advantages[rows],
            mask[rows],
            clip_range=0.2,
            kl_coef=0.05,
            num_sequences=count,
        )[0]

    torch.testing.assert_close(loss(slice(0, 6)), loss(slice(0, 2), 6) + loss(slice(2, 6), 6))


def test_rloo_off_policy_minibatch_weights_each_response_by_its_clipped_sequence_ratio():
    """Two responses, each one token; logp = log 0.5 now. Response 0 was sampled at old logp log 0.4 (rho = 1.25 > 1.2,
    advantage +2: clipped, no gradient); response 1 at log 0.625 (rho = 0.8, advantage -1: inside [0.8, 1.2]? 0.8 is
    the edge, not below it, so kept with weight 0.8). Gradient of the loss w.r.t. logp: row 0: 0; row 1:
    -(-1 x 0.8) / 2 = 0.4. The loss keeps REINFORCE's value: -(2 x 0 x log 0.5 + -1 x 0.8 x log 0.5) / 2
    = 0.4 x log 0.5 = -0.27726."""
    logprobs = torch.full((2, 1), math.log(0.5), dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[math.log(0.4)], [math.log(0.625)]], dtype=torch.float64)
    mask = torch.ones(2, 1, dtype=torch.bool)
    loss, stats = rloo_loss(logprobs, torch.tensor([2.0, -1.0]), mask, old_logprobs=old, clip_range=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(0.4 * math.log(0.5))
    assert logprobs.grad[:, 0].tolist() == pytest.approx([0.0, 0.4])
    assert stats["clip_fraction"].item() == 0.5 and stats["ratio_mean"].item() == pytest.approx((1.25 + 0.8) / 2)


def test_rloo_on_the_sampling_policy_is_plain_reinforce():
    """With old = current log-probs (rho = 1) the ratio-weighted gradient equals plain REINFORCE's."""
    torch.manual_seed(0)
    base = torch.randn(3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    advantages = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    grads = []
    for old in (None, base.clone()):
        logprobs = base.clone().requires_grad_(True)
        rloo_loss(logprobs, advantages, mask, old_logprobs=old, clip_range=0.2)[0].backward()
        grads.append(logprobs.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-15)
