from __future__ import annotations

import logging
import math
import warnings
from dataclasses import replace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from prefer.errors import PreferError
from prefer.sampling import filter_probs, sample

VOCAB = 50
EOS = 49


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: one intra-op thread is faster, and avoids thread spin under a busy CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(seed: int = 0, attn_implementation: str = "sdpa") -> GPT2LMHeadModel:
    # Untied head and a wider init: with tied embeddings and the default init a model this small
    # greedily repeats its last input token forever, which would make the equality tests vacuous.
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=EOS,
        tie_word_embeddings=False,
        initializer_range=0.2,
        attn_implementation=attn_implementation,
    )
    return GPT2LMHeadModel(config).eval()


def fixed_distribution_model(probs: dict[int, float], floor: float = -1e4) -> GPT2LMHeadModel:
    """A model whose next-token distribution is `probs` at every position (zero head weight,
    bias = log p; unlisted tokens get a logit of `floor`)."""
    model = tiny_model()
    head = torch.nn.Linear(model.config.n_embd, VOCAB, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(floor)
        for token, p in probs.items():
            head.bias[token] = math.log(p)
    model.lm_head = head
    return model


def naive_greedy(model, prompt: list[int], max_new_tokens: int, eos: int) -> list[int]:
    """Reference: recompute the whole sequence at every step, no cache, no padding."""
    ids = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            token = int(logits.argmax())
            if token == eos:
                break
            out.append(token)
            ids.append(token)
    return out


PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10, 11], [12, 13, 14, 15, 16]]


def test_kv_cached_greedy_matches_full_recomputation():
    model = tiny_model()
    expected = [naive_greedy(model, prompt, 30, EOS) for prompt in PROMPTS]
    got = [sample(model, [p], max_new_tokens=30, eos_token_id=EOS, temperature=0)[0] for p in PROMPTS]
    assert got == expected
    assert len({tuple(e) for e in expected}) == len(PROMPTS)  # non-trivial outputs


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padded_batch_equals_each_prompt_alone(attn):
    model = tiny_model(attn_implementation=attn)
    alone = [sample(model, [p], max_new_tokens=25, eos_token_id=EOS, temperature=0)[0] for p in PROMPTS]
    batched = sample(model, PROMPTS, max_new_tokens=25, eos_token_id=EOS, temperature=0)
    assert batched == alone
    # also across uneven batch boundaries
    assert sample(model, PROMPTS, max_new_tokens=25, eos_token_id=EOS, temperature=0, batch_size=3) == alone
    assert all(len(out) == 25 for out in alone)  # EOS=49 never greedy here: full-length rows


def test_blocked_ids_never_sampled_even_when_dominant():
    model = tiny_model()
    with torch.no_grad():
        model.lm_head.weight[7] = 0.0
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(VOCAB))
        model.lm_head.bias[7] = 20.0  # token 7 would take ~all the mass
    unblocked = sample(model, [[1]] * 4, max_new_tokens=5, eos_token_id=EOS, temperature=0)
    assert unblocked == [[7] * 5] * 4
    gen = torch.Generator().manual_seed(0)
    outs = sample(
        model,
        [[1], [2, 3]] * 32,
        max_new_tokens=20,
        eos_token_id=EOS,
        temperature=1.0,
        blocked_token_ids=[7, 3],
        generator=gen,
    )
    tokens = [t for out in outs for t in out]
    assert len(tokens) > 500
    assert 7 not in tokens and 3 not in tokens
    greedy = sample(model, [[1]], max_new_tokens=5, eos_token_id=EOS, temperature=0, blocked_token_ids=[7])
    assert 7 not in greedy[0]


GOOD, BAD, A, B, C = 45, 46, 10, 11, 12
# good 0.87, a 0.06, b 0.03, eos 0.02, c 0.01, bad 0.01 (sums to 1)
PROBS = {GOOD: 0.87, A: 0.06, B: 0.03, EOS: 0.02, C: 0.01, BAD: 0.01}


def _vec(d: dict[int, float]) -> torch.Tensor:
    v = torch.zeros(VOCAB)
    for k, p in d.items():
        v[k] = p
    return v


def _mask(ids) -> torch.Tensor:
    m = torch.zeros(VOCAB, dtype=torch.bool)
    m[list(ids)] = True
    return m


def test_filter_probs_plain_nucleus_cuts_eos():
    # Plain top-p 0.9 (no control tokens), bad blocked: renormalised over 0.99,
    # good 0.87/0.99 = 0.879 < 0.9, + a 0.06/0.99 -> 0.939 >= 0.9: nucleus = {good, a}; eos cut.
    out = filter_probs(_vec(PROBS).unsqueeze(0), top_p=0.9, control_mask=None, blocked_mask=_mask([BAD]))[0]
    assert out[EOS] == 0
    assert set(out.nonzero().flatten().tolist()) == {GOOD, A}
    assert torch.allclose(out[GOOD], torch.tensor(0.87 / 0.93))
    assert torch.allclose(out.sum(), torch.tensor(1.0))


def test_filter_probs_control_aware_keeps_eos():
    # Text tokens without control mass: a .06, b .03, eos .02, c .01 (total .12)
    # -> renormalised a .5, b .25, eos .1667, c .0833; cumulative .5, .75, .9167 >= .9:
    # nucleus = {a, b, eos}, c cut. <|good|> (control, not blocked) kept; <|bad|> blocked.
    # Final: (.87, .06, .03, .02) / .98 = good .8878, a .0612, b .0306, eos .0204.
    out = filter_probs(_vec(PROBS), top_p=0.9, control_mask=_mask([GOOD, BAD]), blocked_mask=_mask([BAD]))
    assert set(out.nonzero().flatten().tolist()) == {GOOD, A, B, EOS}
    expected = {GOOD: 0.87 / 0.98, A: 0.06 / 0.98, B: 0.03 / 0.98, EOS: 0.02 / 0.98}
    for token, p in expected.items():
        assert out[token].item() == pytest.approx(p, rel=1e-5)
    # top_p = 1: nothing but blocked tokens removed
    full = filter_probs(_vec(PROBS), top_p=1.0, control_mask=_mask([GOOD, BAD]), blocked_mask=_mask([BAD]))
    assert full[BAD] == 0 and full[C].item() == pytest.approx(0.01 / 0.99, rel=1e-5)
    # all text mass zero: only the allowed control tokens remain
    only_control = filter_probs(
        _vec({GOOD: 0.5, BAD: 0.5}), top_p=0.9, control_mask=_mask([GOOD, BAD]), blocked_mask=_mask([BAD])
    )
    assert only_control[GOOD] == 1.0


def test_control_aware_top_p_lets_samples_end():
    model = fixed_distribution_model(PROBS)
    kwargs = dict(max_new_tokens=40, eos_token_id=EOS, temperature=1.0, top_p=0.9, blocked_token_ids=[BAD])
    prompts = [[0]] * 128
    aware = sample(model, prompts, control_token_ids=[GOOD, BAD], generator=torch.Generator().manual_seed(0), **kwargs)
    plain = sample(model, prompts, control_token_ids=[], generator=torch.Generator().manual_seed(0), **kwargs)
    # plain nucleus: only {good, a} can be drawn, no sample ever ends
    assert all(len(o) == 40 for o in plain)
    assert {t for o in plain for t in o} == {GOOD, A}
    # control-aware: P(eos) = 0.0204 per step, P(end within 40) = 1 - 0.9796^40 = 0.56 (~72 of 128)
    ended = sum(len(o) < 40 for o in aware)
    assert 40 < ended < 105
    assert {t for o in aware for t in o} <= {GOOD, A, B}


def test_same_seed_same_samples():
    model = tiny_model()
    kwargs = dict(max_new_tokens=20, eos_token_id=EOS, temperature=0.7, top_p=0.9, batch_size=3)
    one = sample(model, PROMPTS * 2, generator=torch.Generator().manual_seed(123), **kwargs)
    two = sample(model, PROMPTS * 2, generator=torch.Generator().manual_seed(123), **kwargs)
    other = sample(model, PROMPTS * 2, generator=torch.Generator().manual_seed(124), **kwargs)
    assert one == two
    assert one != other


def test_stops_at_eos_and_excludes_it():
    model = tiny_model()
    prompt = PROMPTS[0]
    free = sample(model, [prompt], max_new_tokens=20, eos_token_id=EOS, temperature=0)[0]
    assert EOS not in free and len(free) == 20
    eos = free[3]
    cut = free[: free.index(eos)]
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        got = sample(model, [prompt], max_new_tokens=20, eos_token_id=eos, temperature=0)[0]
    finally:
        handle.remove()
    assert got == cut
    assert len(calls) == len(cut) + 1  # stopped as soon as the only row was done
    # in a batch, the finished row stays frozen while the other runs on
    other = PROMPTS[1]
    other_alone = sample(model, [other], max_new_tokens=20, eos_token_id=eos, temperature=0)[0]
    assert sample(model, [prompt, other], max_new_tokens=20, eos_token_id=eos, temperature=0) == [cut, other_alone]


def test_fixed_distribution_eos_ends_immediately_and_empty_results():
    model = fixed_distribution_model({EOS: 0.9, A: 0.1})
    assert sample(model, [[0], [1, 2]], max_new_tokens=5, eos_token_id=EOS, temperature=0) == [[], []]
    assert sample(model, [], max_new_tokens=5, eos_token_id=EOS) == []
    assert sample(model, [[0]], max_new_tokens=0, eos_token_id=EOS) == [[]]


def test_restores_training_mode_and_validates():
    model = tiny_model().train()
    sample(model, [[1]], max_new_tokens=3, eos_token_id=EOS, temperature=0)
    assert model.training
    model.eval()
    sample(model, [[1]], max_new_tokens=3, eos_token_id=EOS, temperature=0)
    assert not model.training
    with pytest.raises(PreferError):
        sample(model, [[]], max_new_tokens=3, eos_token_id=EOS)
    with pytest.raises(PreferError):
        sample(model, [[1] * 60], max_new_tokens=6, eos_token_id=EOS)
    # 60 + 5 - 1 = 64 positions: exactly fits
    assert len(sample(model, [[1] * 60], max_new_tokens=5, eos_token_id=EOS, temperature=0)[0]) <= 5
    with pytest.raises(PreferError):
        sample(model, [[1]], max_new_tokens=3, eos_token_id=VOCAB)
    with pytest.raises(PreferError):
        sample(model, [[1]], max_new_tokens=3, eos_token_id=EOS, top_p=0.0)
    with pytest.raises(PreferError):
        sample(model, [[1]], max_new_tokens=3, eos_token_id=EOS, blocked_token_ids=[VOCAB])


def test_progress_bar_runs():
    model = tiny_model()
    out = sample(model, PROMPTS, max_new_tokens=3, eos_token_id=EOS, temperature=0, batch_size=2, progress=True)
    assert len(out) == len(PROMPTS)


def _reference_filter(probs: torch.Tensor, top_p: float, control: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
    """Straightforward per-row version with a full argsort (the textbook nucleus)."""
    out = torch.zeros_like(probs)
    for r, row in enumerate(probs):
        p = row.clone()
        p[blocked] = 0
        text = p.clone()
        text[control] = 0
        q = text / text.sum()
        keep = (control & ~blocked).clone()
        mass = 0.0
        for j in torch.argsort(q, descending=True).tolist():
            if mass >= top_p or q[j] == 0:
                break
            keep[j] = True
            mass += q[j].item()
        out[r] = torch.where(keep, p, torch.zeros_like(p)) / p[keep].sum()
    return out


def test_filter_probs_matches_reference_on_random_rows():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(16, VOCAB, generator=gen) * 2, dim=-1).double()
    control, blocked = _mask([GOOD, BAD]), _mask([BAD, 3])
    for top_p in (0.3, 0.9, 0.99, 1.0):
        got = filter_probs(probs, top_p=top_p, control_mask=control, blocked_mask=blocked)
        ref = _reference_filter(probs.float(), top_p, control, blocked)
        assert torch.allclose(got, ref, atol=1e-6)


def test_sampled_frequencies_follow_the_distribution():
    model = fixed_distribution_model({A: 0.5, B: 0.3, C: 0.15, EOS: 0.05})
    outs = sample(
        model,
        [[0]] * 4000,
        max_new_tokens=1,
        eos_token_id=EOS,
        temperature=1.0,
        batch_size=1000,
        generator=torch.Generator().manual_seed(0),
    )
    counts = {t: 0 for t in (A, B, C)}
    for o in outs:
        for t in o:
            counts[t] += 1
    ended = sum(len(o) == 0 for o in outs)
    # binomial sd of a 0.5 frequency over 4000 draws is 0.008; allow ~4 sd
    for token, p in ((A, 0.5), (B, 0.3), (C, 0.15)):
        assert abs(counts[token] / 4000 - p) < 0.03
    assert abs(ended / 4000 - 0.05) < 0.015


def test_greedy_equals_transformers_generate():
    # The same model through Hugging Face generate (greedy, its own cache): the same tokens up to eos.
    from transformers import GenerationConfig

    model = tiny_model()
    config = GenerationConfig(do_sample=False, max_new_tokens=25, eos_token_id=EOS, pad_token_id=EOS)
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        expected = generated[0, len(prompt) :].tolist()
        expected = expected[: expected.index(EOS)] if EOS in expected else expected
        assert sample(model, [prompt], max_new_tokens=25, eos_token_id=EOS, temperature=0)[0] == expected
        assert len(expected) == 25  # EOS is never greedy here: whole rows are compared


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_sampling_emits_no_warning():
    # transformers 5 deprecates forward(past_key_values=...) with a FutureWarning, and logs a notice through its
    # own logger: the sampler uses the cache= API, so neither appears.
    model = tiny_model()
    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for temperature in (0.0, 0.7):
                sample(
                    model,
                    PROMPTS,
                    max_new_tokens=6,
                    eos_token_id=EOS,
                    temperature=temperature,
                    top_p=0.9,
                    generator=torch.Generator().manual_seed(0),
                )
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in handler.records] == []


def test_preallocated_cache_matches_a_dynamic_cache_step_by_step():
    # The logits of each cached step equal those of transformers' DynamicCache (same keys and values attended).
    from transformers import DynamicCache

    from prefer.sampling import _new_cache

    model = tiny_model()
    ids = torch.tensor([PROMPTS[0]])
    ours, theirs = _new_cache(model, len(PROMPTS[0]) + 5), DynamicCache(config=model.config)
    with torch.no_grad():
        for step in range(6):
            step_ids = ids if step == 0 else torch.tensor([[step + 3]])
            a = model(input_ids=step_ids, cache=ours, use_cache=True).logits
            b = model(input_ids=step_ids, cache=theirs, use_cache=True).logits
            assert torch.equal(a, b)
    assert ours.get_seq_length() == theirs.get_seq_length() == len(PROMPTS[0]) + 5


@pytest.mark.parametrize("temperature, batch_size", [(1.0, 64), (1.0, 4), (0.0, 5)])
def test_shared_prompt_cache_gives_the_same_samples(temperature, batch_size):
    # Each distinct prompt encoded once, its keys and values copied to its K rows: the same draws as encoding it
    # K times (batch_size 4 and 5 split a prompt's 3 rows across batches; PROMPTS have different lengths, so the
    # rows are left-padded too).
    from prefer.sampling import Decoding, sample_per_prompt

    model = tiny_model()
    decoding = Decoding(20, EOS, temperature, 1.0, batch_size=batch_size)
    plain = sample_per_prompt(model, PROMPTS, decoding, k=3, seed=5)
    shared = sample_per_prompt(model, PROMPTS, replace(decoding, share_prompt_cache=True), k=3, seed=5)
    assert shared == plain
    if temperature > 0:  # the K samples of a prompt differ: generated tokens are not shared
        assert all(len({tuple(s) for s in plain[p * 3 : p * 3 + 3]}) > 1 for p in range(len(PROMPTS)))


def test_shared_prompt_pass_matches_the_full_one_within_float_rounding():
    # The prompt pass over the distinct prompts, copied to every row, against the pass over all rows: logits and
    # cached keys/values agree to 1e-6 (bitwise on the CPU kernels measured; the kernel does not promise it).
    from prefer.sampling import _new_cache, _prefill_shared, _repeated_prompt_rows

    model = tiny_model()
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[2], PROMPTS[0]]
    ids = torch.tensor([p[-3:] for p in prompts])  # equal lengths: no padding needed for this comparison
    mask, positions = torch.ones_like(ids), torch.arange(3).expand(len(prompts), 3)
    full, shared = _new_cache(model, 8), _new_cache(model, 8)
    rows = _repeated_prompt_rows([p[-3:] for p in prompts], shared)
    assert rows is not None and rows[0].tolist() == [0, 1] and rows[1].tolist() == [0, 1, 0, 1, 0]
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=full).logits[:, -1]
        got = _prefill_shared(model, ids, mask, positions, shared, rows, {})
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    for a, b in zip(shared.layers, full.layers):
        torch.testing.assert_close(a.keys, b.keys, rtol=0, atol=1e-6)
        torch.testing.assert_close(a.values, b.values, rtol=0, atol=1e-6)
    assert _repeated_prompt_rows([[1], [2]], _new_cache(model, 4)) is None  # nothing repeats: the plain pass
