"""K-way ranking loss of the reward model (Ouyang et al. 2022, Eq. (1))."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from prefer.objectives import ranking_loss

LN3 = math.log(3.0)
NAN = float("nan")


def _hand_batch():
    rewards = torch.tensor(
        [
            [LN3, 0.0, LN3],  # prompt 0: K = 3, responses 1 and 2 tied
            [0.0, LN3, NAN],  # prompt 1: K = 2, slot 2 is padding (garbage reward)
            [1.0, 2.0, 3.0],  # prompt 2: everything tied -> no pairs
        ],
        dtype=torch.float64,
    )
    ranks = torch.tensor([[0, 1, 1], [1, 0, 5], [0, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    return rewards, ranks, mask


def test_ranking_loss_by_hand_with_tie_padding_and_all_tied_prompt():
    rewards, ranks, mask = _hand_batch()
    r = rewards.clone().requires_grad_()
    loss, stats = ranking_loss(r, ranks, mask)
    # prompt 0: pairs (0 > 1): margin ln 3 -> -log sigmoid(ln 3) = -log(3/4) = 0.287682
    #           pairs (0 > 2): margin 0    -> -log sigmoid(0)    = ln 2      = 0.693147
    #           (1, 2) tied: dropped. n_0 = 2 -> loss_0 = 0.980829 / 2 = 0.490415
    # prompt 1: pair (1 > 0): margin ln 3 -> 0.287682; n_1 = 1 -> loss_1 = 0.287682
    # prompt 2: no pairs, not counted.  loss = (0.490415 + 0.287682) / 2 = 0.389048
    loss_0 = (math.log(4 / 3) + math.log(2)) / 2
    loss_1 = math.log(4 / 3)
    assert loss.item() == pytest.approx((loss_0 + loss_1) / 2)
    # accuracy over the 3 pairs: margins ln 3 > 0 yes, 0 > 0 no, ln 3 > 0 yes -> 2/3
    assert stats["accuracy"].item() == pytest.approx(2 / 3)
    assert stats["margin_mean"].item() == pytest.approx(2 * LN3 / 3)
    # real responses: ln3, 0, ln3, 0, ln3, 1, 2, 3 -> (3 ln 3 + 6) / 8
    assert stats["reward_mean"].item() == pytest.approx((3 * LN3 + 6) / 8)
    assert stats["num_pairs"].item() == 3
    assert stats["num_prompts"].item() == 2
    for v in stats.values():
        assert v.requires_grad is False and v.dim() == 0
    loss.backward()
    # d/dm [-log sigmoid(m)] = -sigmoid(-m): at m = ln 3 it is -1/4, at m = 0 it is -1/2.
    # prompt 0 (weight 1/2 per prompt * 1/2 per pair = 1/4):
    #   r0: (-1/4 - 1/2) / 4 = -3/16;  r1: +1/4 / 4 = 1/16;  r2: +1/2 / 4 = 1/8
    # prompt 1 (weight 1/2 * 1/1): r1: -1/4 / 2 = -1/8;  r0: +1/8;  padding: 0
    # prompt 2: 0
    expected = torch.tensor([[-3 / 16, 1 / 16, 1 / 8], [1 / 8, -1 / 8, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert_close(r.grad, expected)


def _naive(rewards, ranks, mask):
    per_prompt = []
    for b in range(rewards.shape[0]):
        real = [k for k in range(rewards.shape[1]) if mask[b, k]]
        terms = []
        for i, j in itertools.permutations(real, 2):
            if ranks[b, i] < ranks[b, j]:
                terms.append(-F.logsigmoid(rewards[b, i] - rewards[b, j]))
        if terms:
            per_prompt.append(torch.stack(terms).mean())
    return torch.stack(per_prompt).mean()


def _random_batch(seed, B=8, K=9):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, K, generator=g, dtype=torch.float64)
    ranks = torch.randint(0, 4, (B, K), generator=g)  # many ties
    sizes = torch.randint(2, K + 1, (B,), generator=g)
    mask = torch.arange(K)[None, :] < sizes[:, None]
    mask[3] = torch.tensor([True, True] + [False] * (K - 2))
    ranks[3, :2] = 0  # a prompt whose only pair is a tie
    return rewards, ranks, mask


def test_ranking_loss_matches_pairwise_loop():
    rewards, ranks, mask = _random_batch(0)
    a = rewards.clone().requires_grad_()
    b = rewards.clone().requires_grad_()
    loss, _ = ranking_loss(a, ranks, mask)
    expected = _naive(b, ranks, mask)
    loss.backward()
    expected.backward()
    assert_close(loss, expected)
    assert_close(a.grad, b.grad)


def test_each_prompt_counts_once_whatever_its_number_of_pairs():
    # prompt 0 has C(9, 2) = 36 pairs all at margin 0, prompt 1 one pair at margin ln 3
    rewards = torch.zeros(2, 9, dtype=torch.float64)
    rewards[1, 0] = LN3
    ranks = torch.arange(9).repeat(2, 1)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 2:] = False
    loss, stats = ranking_loss(rewards, ranks, mask)
    assert stats["num_pairs"].item() == 37
    assert loss.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)


def test_no_valid_pairs_gives_zero_loss_and_zero_gradient():
    r = torch.tensor([[1.0, NAN], [2.0, 2.0]], requires_grad=True)
    ranks = torch.tensor([[0, 1], [3, 3]])
    mask = torch.tensor([[True, False], [True, True]])
    loss, stats = ranking_loss(r, ranks, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(r.grad == 0)
    assert stats["accuracy"].item() == 0.0 and stats["num_prompts"].item() == 0


def test_padding_slots_have_no_effect():
    rewards, ranks, mask = _random_batch(1)
    garbage = torch.where(mask, rewards, torch.full_like(rewards, NAN))
    garbage_ranks = torch.where(mask, ranks, -1)
    a, sa = ranking_loss(rewards, ranks, mask)
    b, sb = ranking_loss(garbage, garbage_ranks, mask)
    assert_close(b, a)
    for k in sa:
        assert_close(sb[k], sa[k])


def test_ranking_gradient_accumulation_with_num_prompts_is_exact():
    rewards, ranks, mask = _random_batch(2)
    full = rewards.clone().requires_grad_()
    loss, stats = ranking_loss(full, ranks, mask)
    loss.backward()
    micro = rewards.clone().requires_grad_()
    total = float(stats["num_prompts"])
    accumulated = 0.0
    for i in range(rewards.shape[0]):
        part, _ = ranking_loss(micro[i : i + 1], ranks[i : i + 1], mask[i : i + 1], num_prompts=total)
        part.backward()
        accumulated = accumulated + part.detach()
    assert_close(accumulated, loss.detach())
    assert_close(micro.grad, full.grad)


def test_ranking_loss_rejects_bad_input():
    rewards, ranks, mask = _random_batch(3)
    with pytest.raises(TypeError, match="response_mask"):
        ranking_loss(rewards, ranks, mask.long())
    with pytest.raises(ValueError, match="shape"):
        ranking_loss(rewards, ranks[:, :-1], mask)
