"""Capability measures: the KL estimator against an exactly known KL, the Hugging Face path with different
tokenizers, held-out loss per token and byte, parse rate and the prompted code scenario."""

import itertools

import numpy as np
import pytest
import torch

from prefer.controls import resolve_controls
from prefer.data.tokenizer import train_tokenizer
from prefer.errors import PreferError
from prefer.evaluation.capability import (
    code_completion_eval,
    cut_at_dedent,
    estimate_kl,
    function_prompts,
    heldout_loss_per_token_and_byte,
    kl_to_reference,
    parse_rate,
    text_logprobs,
)
from prefer.models.build import build_model
from prefer.scorers import pep8

# ------------------------------------------------------------------ a first-order Markov model with a known KL

EOS = 0


class Bigram:
    """Tokens 0 (end of text), 1..V-1. Row 0 of `table` is the first-token distribution (after the document start),
    row s the next-token distribution after token s. Sequences stop at end-of-text or after T tokens."""

    def __init__(self, table, T):
        self.table = np.asarray(table, dtype=float)
        self.T = T

    def sample(self, num_samples, *, seed):
        rng = np.random.default_rng(seed)
        cdf = self.table.cumsum(1)
        state = np.zeros(num_samples, dtype=int)  # the document start uses row 0
        alive = np.ones(num_samples, dtype=bool)
        tokens = [[] for _ in range(num_samples)]
        ended = np.zeros(num_samples, dtype=bool)
        for _ in range(self.T):
            nxt = (rng.random(num_samples)[:, None] > cdf[state]).sum(1)
            for i in np.flatnonzero(alive):
                if nxt[i] == EOS:
                    ended[i], alive[i] = True, False
                else:
                    tokens[i].append(int(nxt[i]))
            state = np.where(alive, nxt, 0)
        return [(tuple(t), bool(e)) for t, e in zip(tokens, ended)]

    def logprob(self, samples):
        out = []
        for tokens, ended in samples:
            path = [0, *tokens]
            value = sum(np.log(self.table[a, b]) for a, b in itertools.pairwise(path))
            out.append(value + (np.log(self.table[path[-1], EOS]) if ended else 0.0))
        return out


def exact_kl(p: Bigram, q: Bigram) -> float:
    """KL of the length-T-truncated processes: propagate the mass of still-running sequences over states."""
    row_kl = (p.table * np.log(p.table / q.table)).sum(1)  # KL of the next-token distributions, per state
    mass = np.eye(len(p.table))[0]  # all at the document start
    total = 0.0
    for _ in range(p.T):
        total += mass @ row_kl
        mass = mass @ p.table
        mass[EOS] = 0.0  # ended sequences contribute no more (and state 0 is never re-entered)
    return float(total)


P = Bigram([[0.05, 0.5, 0.3, 0.15], [0.2, 0.1, 0.6, 0.1], [0.1, 0.3, 0.3, 0.3], [0.3, 0.3, 0.2, 0.2]], T=6)
Q = Bigram([[0.1, 0.3, 0.3, 0.3], [0.1, 0.3, 0.3, 0.3], [0.25, 0.25, 0.25, 0.25], [0.1, 0.6, 0.2, 0.1]], T=6)


def test_exact_kl_by_propagation_equals_enumeration():
    """Sum over every sequence of at most T tokens of p(x) log p(x)/q(x) (4^6 paths)."""

    def enumerate_kl(p, q, state=0, depth=0, lp=0.0, lq=0.0):
        total = 0.0
        for token in range(4):
            a, b = lp + np.log(p.table[state, token]), lq + np.log(q.table[state, token])
            if token == EOS or depth + 1 == p.T:  # ended, or truncated at T tokens
                total += np.exp(a) * (a - b)
            else:
                total += enumerate_kl(p, q, token, depth + 1, a, b)
        return total

    assert exact_kl(P, Q) == pytest.approx(enumerate_kl(P, Q), rel=1e-12)


def test_estimate_matches_the_exact_kl_of_two_bigrams():
    exact = exact_kl(P, Q)  # 0.8030 nats per sequence
    result = estimate_kl(P.sample, P.logprob, Q.logprob, num_samples=20_000, seed=0)
    se = np.std(result["per_sample"]) / np.sqrt(result["num_samples"])
    assert result["ci"][0] <= exact <= result["ci"][1]
    assert abs(result["kl"] - exact) < 3 * se, (result["kl"], exact, se)
    assert 0.1 < result["fraction_ended"] < 0.9  # both ended and truncated samples are exercised


def test_end_of_text_term_is_counted_only_for_ended_samples():
    """Q2 differs from P only in how likely the text ends: the KL is all in the end-of-text terms."""
    table = P.table.copy()
    table[:, EOS] *= 0.5
    table[:, 1] += P.table[:, EOS] * 0.5
    q2 = Bigram(table, T=6)
    exact = exact_kl(P, q2)
    assert exact > 0.05
    result = estimate_kl(P.sample, P.logprob, q2.logprob, num_samples=20_000, seed=1)
    assert result["ci"][0] <= exact <= result["ci"][1]


def test_kl_of_a_model_to_itself_is_exactly_zero():
    result = estimate_kl(P.sample, P.logprob, P.logprob, num_samples=500, seed=0)
    assert result["kl"] == 0.0 and result["ci"] == [0.0, 0.0]


def test_zero_probability_under_the_model_gives_infinity():
    table = Q.table.copy()
    table[0] = [0.1, 0.0, 0.6, 0.3]  # P starts with token 1 half the time
    with np.errstate(divide="ignore"):
        result = estimate_kl(P.sample, P.logprob, Bigram(table, T=6).logprob, num_samples=200, seed=0)
    assert result["kl"] == np.inf and result["ci"] == [np.inf, np.inf]


# ------------------------------------------------------------------ Hugging Face models, different tokenizers

PROSE = ["the cat sat on the mat.\n", "a dog ran in the park.\n", "we fixed the build again.\n"]
CODE = ["def add(a, b):\n    return a + b\n", "class Foo:\n    pass\n", "x = [1, 2, 3]\n"]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    t1 = train_tokenizer(PROSE * 20, vocab_size=300)
    t2 = train_tokenizer((PROSE + CODE) * 20, vocab_size=360)
    m1 = build_model("tiny", vocab_size=len(t1), eos_token_id=t1.eos_token_id, context=64).eval()
    with torch.no_grad():  # a peaked reference: its samples are far more likely under it than under a random model
        m1.transformer.wte.weight.mul_(4.0)
        m1.transformer.wte.weight[t1.eos_token_id] = 0.0  # ... that does not end at once
    m2 = build_model("tiny", vocab_size=len(t2), eos_token_id=t2.eos_token_id, context=48).eval()
    return (m1, t1), (m2, t2)


def test_hf_kl_to_itself_is_zero_and_positive_to_another_model(models):
    (m1, t1), (m2, t2) = models
    same = kl_to_reference(m1, t1, m1, t1, num_samples=24, max_new_tokens=20, batch_size=24, seed=0)
    assert abs(same["kl"]) < 1e-5 and max(map(abs, same["per_sample"])) < 1e-5
    other = kl_to_reference(m1, t1, m2, t2, num_samples=64, max_new_tokens=20, batch_size=64, seed=0)
    assert other["kl"] > 1.0 and other["ci"][0] > 0
    assert other["control_tokens_counted"] is False
    assert other["reference_prefix"] == ["<|endoftext|>"] and other["model_prefix"] == ["<|endoftext|>"]
    assert other["kl_per_byte"] == pytest.approx(sum(other["per_sample"]) / (other["mean_bytes"] * 64))
    conditional = kl_to_reference(
        m1,
        t1,
        m2,
        t2,
        num_samples=8,
        max_new_tokens=20,
        batch_size=8,
        seed=0,
        model_info={"control_tokens_trained": True},
    )
    assert conditional["model_prefix"] == ["<|endoftext|>", "<|good|>"]
    with pytest.raises(PreferError, match="model_prefix"):
        kl_to_reference(m1, t1, m2, t2, num_samples=2, max_new_tokens=4, batch_size=2, seed=0, model_prefix="x")


def test_sequence_logprob_by_hand(models):
    """Prefix not scored; control tokens renormalised away; end-of-text counted when ended."""
    (m1, t1), _ = models
    good = t1.convert_tokens_to_ids("<|good|>")
    text = "the cat"
    content = t1(text, add_special_tokens=False)["input_ids"] + [t1.eos_token_id]
    ids = torch.tensor([[t1.eos_token_id, good, *content]])
    with torch.no_grad():
        logits = m1(ids).logits[0, 1:-1].double()  # predictions of the content tokens
    logits[:, [good, t1.convert_tokens_to_ids("<|bad|>")]] = float("-inf")
    expected = torch.log_softmax(logits, -1)[torch.arange(len(content)), torch.tensor(content)].sum().item()
    values, counts, windowed = text_logprobs(
        m1, t1, [text, text], ended=[True, False], prefix_ids=[t1.eos_token_id, good], batch_size=2
    )
    assert values[0] == pytest.approx(expected, abs=1e-4)
    assert values[1] == pytest.approx(expected - torch.log_softmax(logits, -1)[-1, t1.eos_token_id].item(), abs=1e-4)
    assert counts.tolist() == [len(content), len(content) - 1] and windowed == 0


def test_long_texts_are_scored_in_windows(models):
    _, (m2, t2) = models
    text = " ".join(PROSE * 6)
    n = len(t2(text, add_special_tokens=False)["input_ids"])
    assert n > 48
    values, counts, windowed = text_logprobs(m2, t2, [text], ended=[False], prefix_ids=[t2.eos_token_id], batch_size=4)
    assert windowed == 1 and counts.tolist() == [n] and np.isfinite(values).all()


def test_heldout_loss_per_token_and_byte(models):
    (m1, t1), _ = models
    texts = ["the cat sat on the mat.\n", "café au lait\n"]  # é is two UTF-8 bytes
    plain = heldout_loss_per_token_and_byte(m1, t1, texts, batch_size=2, control_tokens_trained=False)
    values, counts, _ = text_logprobs(m1, t1, texts, ended=[True, True], prefix_ids=[t1.eos_token_id], batch_size=2)
    assert plain["bytes"] == len(texts[0]) + len(texts[1]) + 1 and plain["tokens"] == counts.sum()
    assert plain["loss_per_token"] == pytest.approx(-values.sum() / counts.sum())
    assert plain["loss_per_byte"] == pytest.approx(plain["loss_per_token"] * plain["tokens"] / plain["bytes"])
    assert plain["bits_per_byte"] == pytest.approx(plain["loss_per_byte"] / np.log(2))
    conditional = heldout_loss_per_token_and_byte(m1, t1, texts, batch_size=2, control_tokens_trained=True)
    assert conditional["prefix"] == ["<|endoftext|>", "<|good|>"] and conditional["tokens"] == plain["tokens"]
    assert conditional["loss_per_token"] != plain["loss_per_token"]


def test_documents_start_after_end_of_text_when_bos_differs(models):
    """A Llama-style vocabulary (SmolLM2: bos <|im_start|>, eos <|im_end|>) finetuned by prefer saw end-of-text
    before every document (packing) and is sampled after it (prefer.controls): held-out loss and KL must score
    after that token too, not after a bos it never saw start a document."""
    (m1, t1), _ = models
    tokenizer = train_tokenizer(PROSE * 20, vocab_size=300)
    tokenizer.add_special_tokens({"bos_token": "<|start|>"})
    assert tokenizer.bos_token_id != tokenizer.eos_token_id
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=64).eval()
    sampler_prompt = tokenizer.convert_ids_to_tokens(
        resolve_controls(prompt="auto", block="auto", conditional=True).prompt_ids(tokenizer)
    )
    assert sampler_prompt == ["<|endoftext|>", "<|good|>"]
    held = heldout_loss_per_token_and_byte(model, tokenizer, PROSE, batch_size=3, control_tokens_trained=True)
    assert held["prefix"] == sampler_prompt
    kl = kl_to_reference(
        model, tokenizer, m1, t1, num_samples=4, max_new_tokens=8, batch_size=4, seed=0,
        model_info={"control_tokens_trained": True},
    )  # fmt: skip
    assert kl["reference_prefix"] == ["<|endoftext|>"] and kl["model_prefix"] == sampler_prompt


# ------------------------------------------------------------------ code


def test_parse_rate_is_exactly_as_written():
    texts = ["def f():\n    pass\n", "def f(:\n", "    x = 1\n", "x = 1", "a\x00b"]  # indented: not dedented
    assert parse_rate(texts) == pytest.approx(2 / 5)
    with pytest.raises(PreferError):
        parse_rate([])


MODULE = '''import os


@decorator
def first(a, b):
    """Doc."""
    return a + b


def second(
        x,
        y=1):
    return x


def one_liner(): return 1


class K:
    def method(self):
        pass


def first(a, b):
    return 0
'''


def test_function_prompts():
    prompts = function_prompts([MODULE, "def broken(:\n"])
    assert prompts == ["def first(a, b):\n", "def second(\n        x,\n        y=1):\n"]
    assert function_prompts([MODULE], limit=1) == ["def first(a, b):\n"]


def test_cut_at_dedent():
    assert cut_at_dedent("def f(a):\n", "    return a\nprint(1)\n") == "    return a\n"
    assert cut_at_dedent("def f(a):\n", "    x = 1\n\n    return x\n\nclass A:\n") == "    x = 1\n\n    return x\n\n"
    assert cut_at_dedent("def f(a):\n", "return a\n") == ""
    assert cut_at_dedent("def f(a", "):\n    pass") == "):\n    pass"


def test_code_completion_eval(models):
    _, (m2, t2) = models
    prompts = ["def add(a, b):\n", "class Foo:\n"]
    result = code_completion_eval(
        m2, t2, prompts, control_tokens_trained=False, samples_per_prompt=3, max_new_tokens=12, batch_size=8, seed=0
    )
    assert result["num_samples"] == 6 and result["prompt"] == "none" and result["blocked"] == "both"
    assert [t.split("\n")[0] + "\n" for t in result["texts"]] == [p for p in prompts for _ in range(3)]
    assert result["parse_rate"] == parse_rate(result["texts"])
    assert result["scores"]["pep8"]["mean"] == pytest.approx(np.mean(pep8.score(result["texts"])))
