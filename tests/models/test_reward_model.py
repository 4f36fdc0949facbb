"""The reward model: read at the last real token of right-padded batches, a plain HF classifier on disk, its
bias, the scorer that negates it, and the tokenizer check PPO relies on."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from prefer.data.tokenizer import train_tokenizer
from prefer.encoding import encode_example
from prefer.errors import PreferError
from prefer.models.build import build_model
from prefer.models.reward_model import build_reward_model, load_reward_model, right_pad
from prefer.objectives import last_token_index
from prefer.scorers import get_scorer
from prefer.scorers.reward_model import RewardModelScorer

TEXTS = ["the cat sat on the mat\n", "please say hello to the dog\n", "red blue green\n"] * 20


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm")
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


PAIRS = [("the cat", " sat"), ("please say", " hello to the dog on the mat"), ("red", " blue green red blue")]


def test_reward_is_read_at_the_last_real_token_of_a_padded_batch(causal_lm):
    reward_model = build_reward_model(causal_lm).eval()
    encoded = reward_model.encode(PAIRS)
    ids, mask = right_pad(encoded, reward_model.tokenizer.pad_token_id)
    lengths = [len(e) for e in encoded]
    assert len(set(lengths)) == 3 and ids.shape[1] == max(lengths)
    assert last_token_index(mask).tolist() == [n - 1 for n in lengths]
    assert all(ids[row, n - 1] == reward_model.tokenizer.eos_token_id for row, n in enumerate(lengths))
    with torch.no_grad():
        batched = reward_model(ids, mask)
        alone = torch.cat([reward_model(*right_pad([e], 0)) for e in encoded])
        # the head's score at the eos of each row, computed by hand from the trunk
        hidden = reward_model.model.base_model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        by_hand = reward_model.model.score(hidden).squeeze(-1)[torch.arange(3), torch.tensor(lengths) - 1]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched, by_hand, atol=1e-6, rtol=1e-6)
    assert torch.unique(batched).numel() == 3  # not the same position read for every row
    torch.testing.assert_close(reward_model.rewards(PAIRS, batch_size=2), batched, atol=1e-5, rtol=1e-5)
    # left padding (as in PPO rollouts) reads the same rewards: positions count real tokens only
    left = torch.stack([torch.roll(row, int((~m).sum())) for row, m in zip(ids, mask)])
    left_mask = torch.stack([torch.roll(m, int((~m).sum())) for m in mask])
    assert last_token_index(left_mask).tolist() == [ids.shape[1] - 1] * 3
    with torch.no_grad():
        torch.testing.assert_close(reward_model(left, left_mask), batched, atol=1e-5, rtol=1e-5)


def test_rewards_are_batched_longest_first_and_returned_in_the_order_given(causal_lm, monkeypatch):
    from prefer.models import reward_model as module

    reward_model = build_reward_model(causal_lm).eval()
    items = [PAIRS[0], PAIRS[1], PAIRS[0], PAIRS[1], PAIRS[2]]  # short, long, short, long, middle
    lengths = [len(ids) for ids in reward_model.encode(items)]
    assert lengths[0] < lengths[4] < lengths[1]
    widths = []
    padded = module.right_pad
    spy = lambda rows, pad: widths.append([len(r) for r in rows]) or padded(rows, pad)  # noqa: E731
    monkeypatch.setattr(module, "right_pad", spy)
    rewards = reward_model.rewards(items, batch_size=2)
    # the two long rows together, then the middle one with a short one, then the other short one: no batch pads a
    # short row to the longest length, as batches in arrival order ([short, long], [short, long], [middle]) would
    assert widths == [[lengths[1]] * 2, [lengths[4], lengths[0]], [lengths[0]]]
    with torch.no_grad():
        alone = torch.cat([reward_model(*padded([ids], 0)) for ids in reward_model.encode(items)])
    torch.testing.assert_close(rewards, alone, atol=1e-5, rtol=1e-5)  # in the order given
    assert reward_model.rewards([], batch_size=2).shape == (0,)


def test_pairs_are_tokenized_as_document_start_prompt_response_eos(causal_lm):
    reward_model = build_reward_model(causal_lm)
    tokenizer = reward_model.tokenizer
    eos = tokenizer.eos_token_id
    ids, prompt_length = encode_example(tokenizer, "the cat", " sat")
    assert ids == [eos] + tokenizer("the cat", add_special_tokens=False)["input_ids"] + tokenizer(
        " sat", add_special_tokens=False
    )["input_ids"] + [eos]
    assert prompt_length == 1 + len(tokenizer("the cat", add_special_tokens=False)["input_ids"])
    assert encode_example(tokenizer, "the cat sat")[0] == [eos] + tokenizer("the cat sat")["input_ids"] + [eos]
    with pytest.raises(PreferError, match="prompts.jsonl:7: the prompt is"):
        reward_model.encode([("the cat " * 40, " sat")], where=["prompts.jsonl:7"])


def test_saved_model_is_hugging_face_with_its_bias_and_the_scorer_negates_it(causal_lm, tmp_path):
    reward_model = build_reward_model(causal_lm)
    reward_model.bias = 0.75
    reward_model.save(tmp_path / "rm", {"stage": "reward"})
    assert json.loads((tmp_path / "rm" / "prefer.json").read_text())["reward_bias"] == 0.75
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert plain.config.num_labels == 1
    loaded = load_reward_model(tmp_path / "rm")
    expected = reward_model.eval().rewards(PAIRS)
    assert torch.equal(loaded.rewards(PAIRS), expected)  # bit for bit (the saved format: test_reward_interop.py)
    with pytest.raises(PreferError, match="is a reward model written by `prefer reward`; start from"):
        build_reward_model(tmp_path / "rm")  # its weights hold the bias: not a starting point
    scorer = RewardModelScorer(tmp_path / "rm")
    prompts, responses = zip(*PAIRS)
    assert scorer.score_pairs(prompts, responses) == pytest.approx((-expected).tolist(), abs=1e-5)
    texts = ["the cat sat", "red blue"]
    by_name = get_scorer(f"rm:{tmp_path / 'rm'}")
    assert by_name(texts) == pytest.approx((-loaded.rewards(texts)).tolist(), abs=1e-5)
    with pytest.raises(PreferError, match="not a reward model directory"):
        RewardModelScorer(tmp_path / "missing")


def test_a_policy_with_another_tokenizer_is_refused(causal_lm, tmp_path):
    reward_model = build_reward_model(causal_lm)
    reward_model.check_same_tokenizer(reward_model.tokenizer)  # the same vocabulary passes
    other = train_tokenizer(["completely different words here\n"] * 30, vocab_size=320)
    with pytest.raises(PreferError, match="tokenizer differs from the policy's"):
        reward_model.check_same_tokenizer(other)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("pad", ["eos", "own"])
@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
def test_reward_is_read_at_the_last_real_token_whatever_the_padding(architecture, pad, padding_side, tmp_path):
    """The most common silent RLHF bug: reading the head one token off at eos/padding. Batches padded by the
    tokenizer itself, on either side, with pad = eos (eos also starts and ends every sequence) or a pad of its own,
    score every row exactly as it scores alone, at its final eos."""
    from tiny_architectures import save_tiny

    reward_model = build_reward_model(save_tiny(tmp_path / "lm", architecture)).eval()
    tokenizer = reward_model.tokenizer
    eos = tokenizer.eos_token_id
    if pad == "own":
        tokenizer.pad_token = "<|good|>"  # any token that is not eos
        assert tokenizer.pad_token_id != eos
    assert (tokenizer.pad_token_id == eos) == (pad == "eos")
    tokenizer.padding_side = padding_side
    encoded = reward_model.encode(PAIRS)
    batch = tokenizer.pad({"input_ids": encoded}, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    last = last_token_index(mask)
    assert ids[torch.arange(3), last].tolist() == [eos] * 3  # the final eos of each row, never a pad or a prompt token
    if padding_side == "left":
        assert last.tolist() == [ids.shape[1] - 1] * 3
    else:
        assert last.tolist() == [len(e) - 1 for e in encoded]
    with torch.no_grad():
        batched = reward_model(ids, mask)
        alone = torch.cat([reward_model(torch.tensor([e]), torch.ones(1, len(e), dtype=torch.bool)) for e in encoded])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert torch.unique(batched).numel() == 3
