"""A reward model trained by the real `prefer reward` stage scores the same through plain transformers
(AutoModelForSequenceClassification + AutoTokenizer, one text at a time or a padded batch, and `pipeline`) as
through prefer, on every architecture of the tests; prefer reads it back bit for bit; old directories still load.

Before the saved format (issue 22, defect 2) the config said pad = eos, so HF read the head at the token before the
final eos and never added the bias: `test_the_old_format_is_what_plain_transformers_misread` shows that failure."""

import json
import random

import pytest
import torch
from tiny_architectures import ARCHITECTURES, WORDS, save_tiny
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from prefer.config import RewardConfig, load_config
from prefer.data.formats import Comparison, write_rankings
from prefer.errors import PreferError
from prefer.models.build import load_tokenizer
from prefer.models.reward_model import PAD_TOKEN, build_reward_model, load_reward_model
from prefer.models.value import build_value_model
from prefer.stages.reward import reward
from prefer.training import save_model

pytestmark = pytest.mark.usefixtures("one_thread")

rng = random.Random(3)
PAIRS = [
    (f"say {rng.choice(WORDS)}", " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 7)))) for _ in range(10)
]
TEXTS = [prompt + response for prompt, response in PAIRS]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def trained(request, tmp_path_factory):
    """`prefer reward` for 8 steps on rankings where a response with "please" wins: the directory `final/`."""
    root = tmp_path_factory.mktemp(request.param)
    save_tiny(root / "init", request.param)
    words = [w for w in WORDS if w != "please"]
    comparisons = [
        Comparison(f"say {w}", (f" {w} please {v}", f" {w} {v} {u}"), (0, 1))
        for w, v, u in zip(words * 6, words[3:] + words[:3], words[5:] + words[:5])
    ]
    write_rankings(root / "rankings.jsonl", comparisons[:64])
    overrides = {
        "out_dir": root / "rm",
        "data.rankings": root / "rankings.jsonl",
        "model.init_from": root / "init",
        "optimizer.lr": 3e-3,
        "train.batch_size": 8,
        "runtime.progress": "false",
    }
    final = reward(load_config(RewardConfig, overrides=[f"{k}={v}" for k, v in overrides.items()]))
    return request.param, final


def plain(final):
    """The directory as any HF tool loads it: no prefer code."""
    return AutoModelForSequenceClassification.from_pretrained(str(final)).eval(), AutoTokenizer.from_pretrained(final)


def assert_same_order(a: torch.Tensor, b: torch.Tensor) -> None:
    """Every pair (i, j) is ordered the same way by both score lists."""
    assert torch.equal(torch.sign(a[:, None] - a[None, :]), torch.sign(b[:, None] - b[None, :]))


def test_plain_transformers_gives_prefers_reward_alone_and_in_padded_batches(trained):
    architecture, final = trained
    ours = load_reward_model(final)
    assert ours.bias != 0
    expected_pairs, expected_texts = ours.rewards(PAIRS), ours.rewards(TEXTS)
    assert torch.unique(expected_pairs).numel() == len(PAIRS)  # distinct scores: an order to keep
    model, tokenizer = plain(final)
    # GPT-2's final LayerNorm carries the bias; an RMSNorm model (Llama, Qwen2) cannot, and says what to add
    offset = model.config.reward_offset
    assert offset == (0.0 if architecture == "gpt2" else pytest.approx(ours.bias))
    assert tokenizer.pad_token == PAD_TOKEN and model.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    with torch.no_grad():
        alone = torch.cat([model(**tokenizer(t, return_tensors="pt")).logits[:, 0] for t in TEXTS])
        batch = tokenizer([p for p, _ in PAIRS], [r for _, r in PAIRS], padding=True, return_tensors="pt")
        assert (batch["attention_mask"] == 0).any()  # really padded (on the right, with the pad token)
        assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
        batched = model(**batch).logits[:, 0]
    torch.testing.assert_close(alone + offset, expected_texts, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched + offset, expected_pairs, atol=1e-5, rtol=0)
    assert_same_order(alone, expected_texts)
    assert_same_order(batched, expected_pairs)


def test_a_transformers_pipeline_gives_prefers_reward(trained):
    architecture, final = trained
    ours = load_reward_model(final)
    classify = pipeline("text-classification", model=str(final), device="cpu")
    offset = classify.model.config.reward_offset
    for options in ({"batch_size": 4}, {"batch_size": 1, "function_to_apply": "none"}):
        got = classify([{"text": p, "text_pair": r} for p, r in PAIRS], **options)
        assert {g["label"] for g in got} == {"reward"}
        scores = torch.tensor([g["score"] for g in got])  # the raw score: problem_type regression, no sigmoid
        torch.testing.assert_close(scores + offset, ours.rewards(PAIRS), atol=1e-5, rtol=0)
        assert_same_order(scores, ours.rewards(PAIRS))
    texts = torch.tensor([g["score"] for g in classify(TEXTS, batch_size=3)])
    torch.testing.assert_close(texts + offset, ours.rewards(TEXTS), atol=1e-5, rtol=0)


def test_the_critic_starts_from_the_reward_model_as_trained(trained):
    """PPO's value model reads the weights prefer trained (not the folded ones) plus the bias: V(eos) = reward."""
    _, final = trained
    ours = load_reward_model(final)
    critic = build_value_model(str(final), str(final)).eval()
    with torch.no_grad():
        for ids in ours.encode(PAIRS[:3]):
            value = critic.head(critic.trunk(input_ids=torch.tensor([ids])).last_hidden_state)[0, -1]
            torch.testing.assert_close(value, ours.rewards_of_ids([ids])[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_prefer_reads_its_saved_model_back_bit_for_bit_and_old_directories_as_before(architecture, tmp_path):
    reward_model = build_reward_model(save_tiny(tmp_path / "lm", architecture)).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        reward_model.model.score.weight.normal_()
    reward_model.bias = 0.375
    expected = reward_model.rewards(PAIRS, batch_size=4)
    reward_model.save(tmp_path / "rm", {"stage": "reward"})
    assert torch.equal(load_reward_model(tmp_path / "rm").rewards(PAIRS, batch_size=4), expected)
    info = json.loads((tmp_path / "rm" / "prefer.json").read_text())
    assert info["reward_bias"] == 0.375 and info["transformers"]["added_pad_token"] == PAD_TOKEN
    assert info["transformers"]["bias_in_weights"] == ("transformer.ln_f.bias" if architecture == "gpt2" else None)
    # the directory prefer wrote before this format: pad = eos, the bias in prefer.json only
    save_model(tmp_path / "old", reward_model.model, reward_model.tokenizer, None, {"reward_bias": 0.375})
    assert torch.equal(load_reward_model(tmp_path / "old").rewards(PAIRS, batch_size=4), expected)
    # the policy's vocabulary (without the added pad token) is the reward model's
    load_reward_model(tmp_path / "rm").check_same_tokenizer(load_tokenizer(tmp_path / "lm"))


def test_the_old_format_is_what_plain_transformers_misread(tmp_path):
    """The defect the format fixes, measured: pad = eos makes HF read the token before the final eos."""
    reward_model = build_reward_model(save_tiny(tmp_path / "lm", "gpt2")).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        reward_model.model.score.weight.normal_()
    save_model(tmp_path / "old", reward_model.model, reward_model.tokenizer, None, {"reward_bias": 0.0})
    model, tokenizer = plain(tmp_path / "old")
    ids = reward_model.encode(PAIRS[:1])[0]
    with torch.no_grad():
        read_by_hf = model(input_ids=torch.tensor([ids])).logits[0, 0]
        before_eos = reward_model.rewards_of_ids([ids[:-1]])[0]
    assert model.config.pad_token_id == tokenizer.eos_token_id
    torch.testing.assert_close(read_by_hf, before_eos, atol=1e-6, rtol=0)
    assert abs(float(read_by_hf - reward_model.rewards_of_ids([ids])[0])) > 1e-3


def test_a_language_model_is_refused_where_a_reward_model_is_meant(tmp_path):
    lm = save_tiny(tmp_path / "lm", "llama")
    (lm / "prefer.json").write_text(json.dumps({"stage": "sft", "reward_bias": 0.0}))
    with pytest.raises(PreferError, match=r"is a language model \(LlamaForCausalLM\), not a reward model"):
        load_reward_model(lm)
    with pytest.raises(PreferError, match=r"reward\.model: .* is a language model"):
        build_value_model(str(lm), str(lm))
