"""The RLHF evaluation protocol: win rate over several samples per prompt, KL to SFT on a policy's own samples
(0 for the SFT model itself, no value model), best-of-n from a pool."""

import numpy as np
import pytest
import torch

from prefer.data.tokenizer import train_tokenizer
from prefer.evaluation.policy import (
    PolicySamples,
    _win,
    best_of_n_entry,
    kl_to_sft,
    policy_entry,
    sample_policy,
)
from prefer.models.build import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_win_rate_compares_every_sample_of_a_prompt_with_every_baseline_sample_of_it():
    # prompt 0: policy [1, 3] vs baseline [2, 2]: 1<2 win twice, 3>2 loss twice -> 2/4 = 0.5
    # prompt 1: policy [0, 0] vs baseline [0, 5]: tie, win, tie, win -> (0.5 + 1 + 0.5 + 1) / 4 = 0.75
    result = _win(np.array([1, 3, 0, 0]), np.array([2, 2, 0, 5]), 2)
    assert result.win_rate == pytest.approx((0.5 + 0.75) / 2)
    assert result.ties == pytest.approx(2 / 8)
    assert _win(np.array([1.0]), None, 1) is None


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = train_tokenizer(["the cat sat on the mat.", "a dog ran in the sun."] * 20, vocab_size=300)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32).eval()
    return model, tokenizer


def test_kl_of_the_sft_model_to_itself_is_zero_and_to_another_model_positive(tiny):
    model, tokenizer = tiny
    samples = sample_policy(
        model,
        tokenizer,
        ["the cat", "a dog"],
        samples_per_prompt=3,
        max_new_tokens=8,
        temperature=1.0,
        seed=0,
        batch_size=4,
    )
    assert len(samples) == 6 and samples.prompts[:3] == ["the cat"] * 3
    assert np.all(kl_to_sft(model, model, tokenizer, samples, temperature=1.0, batch_size=4) == 0.0)
    other = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5 * torch.randn_like(p))
    kl = kl_to_sft(model, other, tokenizer, samples, temperature=1.0, batch_size=4)
    assert kl.shape == (6,) and kl.mean() > 0  # a Monte-Carlo estimate of a positive KL


def test_best_of_n_keeps_the_proxy_favourite_of_each_group_and_states_its_kl():
    # 1 prompt, 4 samples; proxy misalignment [3, 1, 2, 0] -> rewards [-3, -1, -2, 0]; n = 2: groups (0, 1), (2, 3)
    # keep samples 1 and 3, gold [0.4, 0.1] -> mean 0.25; KL log 2 - 1/2
    pool = PolicySamples(["p"] * 4, ["a", "bb", "ccc", "dddd"], [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]], [True] * 4, 4)
    gold = np.array([0.9, 0.4, 0.8, 0.1])
    entry = best_of_n_entry(
        pool,
        2,
        gold_misalignment=gold,
        proxies={"rm": np.array([3.0, 1.0, 2.0, 0.0])},
        select_by="rm",
        baseline_gold_misalignment=np.array([0.3]),
        heldout=None,
    ).as_dict()
    assert entry["gold"]["mean"] == pytest.approx(0.25)
    assert entry["proxy_reward"]["rm"]["mean"] == pytest.approx(-0.5)
    assert entry["kl"]["mean"] == pytest.approx(np.log(2) - 0.5)
    assert entry["response_chars"] == pytest.approx(3.0)  # "bb" and "dddd"
    assert entry["win_rate"]["win_rate"] == pytest.approx(0.5)  # 0.4 loses to 0.3, 0.1 wins


def test_policy_entry_reports_the_protocol(tiny):
    samples = PolicySamples(["p", "q"], ["x y", "x z"], [[1, 2], [1]], [True, False], 1)
    entry = policy_entry(
        samples,
        gold_misalignment=np.array([0.0, 0.2]),
        proxies={"rm": np.array([1.0, -1.0])},
        kl=np.array([0.5, 1.5]),
        baseline_gold_misalignment=np.array([0.1, 0.1]),
        heldout={"loss_per_token": 3.0},
    )
    row, entry = entry, entry.as_dict()
    assert entry["gold"]["mean"] == pytest.approx(0.1) and entry["kl"]["mean"] == pytest.approx(1.0)
    assert entry["proxy_reward"]["rm"]["mean"] == pytest.approx(0.0)  # rewards -1 and +1
    assert entry["win_rate"]["win_rate"] == pytest.approx(0.5) and entry["ended"] == 0.5
    assert entry["distinct_1"] == pytest.approx(3 / 4)  # x, y, x, z
    # the typed row names what the JSON calls "gold": misalignment (a Rollout's gold is a reward, its negative)
    assert row.gold_misalignment.mean == entry["gold"]["mean"] and entry["per_sample_gold"] == [0.0, 0.2]


def test_rendered_prompts_are_sampled_and_measured_with_their_own_ids(tiny):
    """Queries (e.g. a conversation rendered with a chat template) keep their ids through sampling and the KL: the
    per-response KL is prefer.evaluation.logprobs.response_kl's on exactly the ids the policy was prompted with."""
    from prefer.evaluation.logprobs import response_kl
    from prefer.evaluation.prompts import Queries

    model, tokenizer = tiny
    other = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32).eval()
    ids = [tokenizer("the cat", add_special_tokens=False)["input_ids"], [tokenizer.eos_token_id] * 3]
    queries = Queries(["the cat", "<rendered>"], ids, ["a", "b"])
    samples = sample_policy(
        model, tokenizer, queries, samples_per_prompt=2, max_new_tokens=6, temperature=1.0, seed=1, batch_size=4
    )
    assert samples.prompts == ["the cat"] * 2 + ["<rendered>"] * 2 and samples.queries == [ids[0]] * 2 + [ids[1]] * 2
    eos = tokenizer.eos_token_id
    responses = [r + [eos] if e else r for r, e in zip(samples.response_ids, samples.ended)]
    expected = response_kl(
        model, other, samples.queries, responses, temperature=1.0, pad_id=eos, batch_size=3, device=torch.device("cpu")
    )
    kl = kl_to_sft(model, other, tokenizer, samples, temperature=1.0, batch_size=3)
    assert kl.tolist() == expected.tolist()
    # the first prompt without its document-start eos: not what encode_prompt("the cat") would have measured
    plain = PolicySamples(samples.prompts, samples.responses, samples.response_ids, samples.ended, 2)
    assert kl_to_sft(model, other, tokenizer, plain, temperature=1.0, batch_size=3)[0] != kl[0]


def test_dpos_logged_kl_is_the_mean_of_the_shared_per_response_kl(tiny):
    """DPO's val/kl and the results table's KL are one estimator (prefer.evaluation.logprobs.response_kl) on the
    policy's samples."""
    from prefer.encoding import encode_prompt
    from prefer.evaluation.direct_preference import kl_on_samples
    from prefer.evaluation.logprobs import response_kl
    from prefer.rl import sample_responses

    model, tokenizer = tiny
    other = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32).eval()
    eos, cpu = tokenizer.eos_token_id, torch.device("cpu")
    queries = [encode_prompt(tokenizer, p) for p in ("the cat", "a dog ran", "the")]
    kl = kl_on_samples(
        model, other, queries, seed=1, step=2, max_new_tokens=5, eos=eos, batch_size=3, device=cpu, precision="fp32"
    )
    sampled = sample_responses(
        model, queries, first=0, chunk=3, seed=1, iteration=2, max_new_tokens=5, eos_token_id=eos, temperature=1.0
    )
    responses = [r + [eos] if len(r) < 5 else r for r in sampled]
    expected = response_kl(model, other, queries, responses, temperature=1.0, pad_id=eos, batch_size=3, device=cpu)
    assert kl == expected.mean().item() and expected.abs().min() > 0  # a k1 estimate per response: any sign


def test_the_kl_measures_read_the_log_probs_ppo_s_rollouts_hold(tiny):
    """response_kl is, to the bit, the sum over each response of a PPO rollout's logprobs - ref_logprobs (the same
    forward pass and read-out, no Rollout built): the table's KL is the quantity PPO's penalty sums."""
    from prefer.evaluation.logprobs import response_kl
    from prefer.objectives import masked_sum
    from prefer.rl import make_rollout

    model, tokenizer = tiny
    other = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32).eval()
    eos, cpu = tokenizer.eos_token_id, torch.device("cpu")
    queries = [[eos, 5, 6], [eos], [eos, 7]]
    responses = [[8, 9, eos], [10], [11, 12, 13, 14]]  # different lengths: padding on both sides
    kl = response_kl(model, other, queries, responses, temperature=0.7, pad_id=eos, batch_size=3, device=cpu)
    zeros = torch.zeros(3)
    rollout = make_rollout(
        model, other, None, queries, responses, rewards=zeros, gold=zeros, temperature=0.7, pad_id=eos, batch_size=3,
        device=cpu,
    )  # fmt: skip
    per_response = masked_sum(rollout.logprobs - rollout.ref_logprobs, rollout.response_mask, dim=1)
    assert kl.tolist() == per_response.tolist() and kl.abs().min() > 0
