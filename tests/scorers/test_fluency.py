"""The fluency judge: NLL per response token under a frozen LM, and the scorer that adds it to another one."""

import math

import pytest
import torch

from prefer.data.tokenizer import train_tokenizer
from prefer.errors import PreferError
from prefer.models.build import build_model
from prefer.scorers import get_scorer
from prefer.scorers.fluency import parse_spec
from prefer.training import save_model

TEXTS = ["the cat sat on the mat\n", "a dog ran in the park\n", "the sun is red\n"] * 10


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32)
    path = tmp_path_factory.mktemp("judge") / "lm"
    save_model(path, model, tokenizer, info={"task": "toy"})
    return path, model.eval(), tokenizer


def test_the_judge_scores_the_mean_nll_of_the_response_tokens_given_the_prompt(judge_dir):
    path, model, tokenizer = judge_dir
    scorer = get_scorer(f"pii+0.5*nll:{path}")
    prompts, responses = ["the cat", "a dog ran", "x"], [" sat on the mat", " in the park", ""]
    # By hand: document start (eos) + prompt tokens + response tokens; the NLL of each response token given all
    # before it, averaged over the response; an empty response scores 0.
    expected = []
    for prompt, response in zip(prompts, responses):
        p = [tokenizer.eos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"]
        if not r:
            expected.append(0.0)
            continue
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + r])).logits[0].double(), -1)
        expected.append(-sum(logp[len(p) - 1 + i, t].item() for i, t in enumerate(r)) / len(r))
    pii = get_scorer("pii")([p + r for p, r in zip(prompts, responses)])
    got = scorer.score_pairs(prompts, responses)
    assert got == pytest.approx([b + 0.5 * e for b, e in zip(pii, expected)], rel=1e-5)
    assert expected[0] > 0 and math.isfinite(expected[1])
    # batching (right padding) does not change a score
    assert scorer.score_pairs(prompts[:1], responses[:1]) == pytest.approx(got[:1], rel=1e-5)


def test_the_weight_zero_is_the_base_scorer(judge_dir):
    path, _, _ = judge_dir
    texts = ["mail me at a@b.com please", "nothing here"]
    assert get_scorer(f"pii+0*nll:{path}")(texts) == get_scorer("pii")(texts)


@pytest.mark.parametrize(
    "name, message",
    [
        ("pii+-1*nll:x", "must be >= 0"),
        ("pii+abc*nll:x", "write a fluency-weighted scorer"),
        ("pii+0.1*nll:no/such/dir", "is not a directory"),
        ("no-such+0.1*nll:x", "unknown scorer 'no-such'"),
    ],
)
def test_a_bad_spec_is_one_clear_error(name, message):
    with pytest.raises(PreferError, match=message):
        get_scorer(name)


def test_parse_spec():
    assert parse_spec("pii-entry+2e-4*nll:runs/x/final") == ("pii-entry", 2e-4, "runs/x/final")
    assert parse_spec("pii-entry") is None
