"""`prefer ppo`: a tiny GPT-2 learns to please a toy scorer; the update does not depend on accumulation; rewards,
temperatures, the frozen reference, PPO-ptx, resume and bad input behave as the method requires."""

import copy
import json
import random

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

import prefer.rl.episodes
from prefer import scorers
from prefer.config import PPOConfig, build_config
from prefer.errors import PreferError
from prefer.models.build import build_model, load_model, load_tokenizer, train_tokenizer
from prefer.models.value import build_value_model
from prefer.objectives import mle_loss, next_token_targets
from prefer.rl import add_advantages, make_rollout, ppo_backward, ptx_backward
from prefer.sampling import sample
from prefer.stages.policy_gradient import ppo
from prefer.training import read_metrics, save_model

WORDS = ["banana", "apple", "cat", "dog", "sky", "blue", "java", "tree", "lamp", "road", "aa", "red", "sun"]


def _texts(count, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "." for _ in range(count)]


def not_a(texts):
    """Toy misalignment: the fraction of characters that are not the letter "a" (lower is better)."""
    return [sum(c != "a" for c in t) / max(1, len(t)) for t in texts]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def toy_scorer(monkeypatch):
    monkeypatch.setitem(scorers.SCORERS, "not-a", not_a)


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """A tiny GPT-2 with a BPE, briefly trained on short word lists: the "SFT" model, its prompts, a corpus."""
    root = tmp_path_factory.mktemp("ppo")
    torch.manual_seed(0)
    tokenizer = train_tokenizer(_texts(400, 0), vocab_size=300)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=64)
    ids = [tokenizer.eos_token_id]
    for text in _texts(600, 1):
        ids += tokenizer.encode(text) + [tokenizer.eos_token_id]
    blocks = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)  # [N, 32]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _step in range(60):
        batch = blocks[torch.randint(len(blocks), (16,))]
        (targets,) = next_token_targets(batch)
        loss, _ = mle_loss(model(batch).logits[:, :-1], targets, torch.ones_like(targets, dtype=torch.bool))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    save_model(root / "sft", model, tokenizer, info={"task": "toy"})
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": w}) + "\n" for w in WORDS + ["the", "a", "my"]))
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(800, 2)))
    return root


def _config(sft, out, **overrides):
    values = {
        "out_dir": out,
        "init_from": sft / "sft",
        "prompts": sft / "prompts.jsonl",
        "reward.scorer": "not-a",
        "train.iterations": 30,
        "train.batch_size": 16,
        "train.minibatch_size": 8,
        "rollout.max_new_tokens": 12,
        "optimizer.lr": 3e-3,
        "kl.coef": 0.02,
        "train.ppo_epochs": 2,
        "train.checkpoint_every": 10,
        "runtime.progress": False,
        "train.log_samples": 2,
    }
    values.update(overrides)
    return build_config(PPOConfig, values)


def _mean_reward(model_dir, sft, samples=4):
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir).eval()
    prompts = [json.loads(line)["prompt"] for line in (sft / "prompts.jsonl").read_text().splitlines()] * samples
    queries = [[tokenizer.eos_token_id, *tokenizer.encode(p)] for p in prompts]
    out = sample(
        model,
        queries,
        max_new_tokens=12,
        eos_token_id=tokenizer.eos_token_id,
        temperature=1.0,
        generator=torch.Generator().manual_seed(123),
    )
    texts = [p + tokenizer.decode(r, skip_special_tokens=True) for p, r in zip(prompts, out)]
    return -sum(not_a(texts)) / len(texts)


def _episodes(sft, lengths=(1, 3, 5, 2, 4, 6, 1, 5), temperature=1.0, **kwargs):
    """A Rollout over hand-made responses of known lengths, from the SFT model used as policy and reference."""
    tokenizer = load_tokenizer(sft / "sft")
    policy, reference = load_model(sft / "sft").eval(), load_model(sft / "sft").eval()
    value_model = build_value_model(str(sft / "sft"), None).eval()
    queries = [[tokenizer.eos_token_id, *tokenizer.encode(w)] for w in WORDS[: len(lengths)]]
    responses = [[(7 * i + 3 * t) % 200 + 3 for t in range(n)] for i, n in enumerate(lengths)]
    scores = torch.arange(1.0, len(lengths) + 1)
    rollout = make_rollout(
        policy,
        reference,
        value_model,
        queries,
        responses,
        rewards=scores,
        gold=torch.zeros(len(lengths)),
        temperature=temperature,
        pad_id=tokenizer.eos_token_id,
        batch_size=3,
        device=torch.device("cpu"),
        **kwargs,
    )
    return rollout, (policy, reference, value_model), queries, responses


# ---------------------------------------------------------------- behaviour


def test_ppo_raises_the_reward_of_the_sft_model(sft, tmp_path):
    before = load_file(sft / "sft" / "model.safetensors")
    final = ppo(_config(sft, tmp_path / "run"))
    before_reward, after_reward = _mean_reward(sft / "sft", sft), _mean_reward(final, sft)
    print(f"mean reward of samples: SFT {before_reward:.3f}, PPO {after_reward:.3f}")
    assert after_reward > before_reward + 0.05
    metrics = read_metrics(tmp_path / "run")
    assert len(metrics) == 30
    assert abs(metrics[0]["kl"]) < 1e-4  # the policy starts as the reference
    kls = torch.tensor([m["kl"] for m in metrics])
    assert torch.isfinite(kls).all() and metrics[-1]["kl"] > 0
    for key in (
        "reward/proxy",
        "kl_coef",
        "entropy",
        "response/length",
        "train/policy/clip_fraction",
        "train/value/loss",
        "value/explained_variance",
        "train/policy/loss",
    ):
        assert key in metrics[-1], key
    assert metrics[-1]["reward/proxy"] > metrics[0]["reward/proxy"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 60 and set(rows[0]) == {"iteration", "prompt", "response", "proxy", "gold"}
    after = load_file(sft / "sft" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the reference on disk is untouched
    assert json.loads((final / "prefer.json").read_text())["stage"] == "ppo"


def not_b(texts):
    return [sum(c != "b" for c in t) / max(1, len(t)) for t in texts]


def test_adaptive_kl_moves_beta_and_gold_is_logged_not_rewarded(sft, tmp_path, monkeypatch):
    monkeypatch.setitem(scorers.SCORERS, "not-b", not_b)
    monkeypatch.setitem(scorers.SCORERS, "length", lambda texts: [float(len(t)) for t in texts])
    for name, gold in (("b", "not-b"), ("length", "length")):
        ppo(_config(sft, tmp_path / name, **{"train.iterations": 3, "kl.target": 0.01, "reward.gold_scorer": gold}))
    metrics, other = read_metrics(tmp_path / "b"), read_metrics(tmp_path / "length")
    assert metrics[0]["kl_coef"] == 0.02 and metrics[-1]["kl_coef"] != 0.02
    # Logged: every sampled response's gold is the gold scorer's, its proxy the proxy's (and they differ)
    rows = [json.loads(line) for line in (tmp_path / "b" / "samples.jsonl").read_text().splitlines()]
    for row in rows:
        text = row["prompt"] + row["response"]
        assert row["gold"] == pytest.approx(-not_b([text])[0]) and row["proxy"] == pytest.approx(-not_a([text])[0])
    assert any(row["gold"] != pytest.approx(row["proxy"]) for row in rows)
    # Not rewarded: another gold scorer leaves the training exactly as it was
    assert [m["reward/gold"] for m in metrics] != [m["reward/gold"] for m in other]
    for a, b in zip(metrics, other):
        assert {k: v for k, v in a.items() if k != "reward/gold"} == {k: v for k, v in b.items() if k != "reward/gold"}


# ---------------------------------------------------------------- invariances and alignment


def test_one_minibatch_of_8_equals_8_micro_batches_of_1(sft):
    rollout, (policy, _, value_model), _, _ = _episodes(sft)
    rollout, _ = add_advantages(rollout, kl_coef=0.1, gamma=1.0, lam=0.95)
    grads, losses = [], []
    for micro in (8, 1):
        p, v = copy.deepcopy(policy), copy.deepcopy(value_model)
        stats = ppo_backward(
            p,
            v,
            rollout,
            micro_batch_size=micro,
            temperature=1.0,
            clip_range=0.2,
            value_clip_range=0.2,
            vf_coef=0.1,
            device=torch.device("cpu"),
            precision="fp32",
        )
        stats |= ptx_backward(
            p, rollout.query[:, :4], ptx_coef=2.0, micro_batch_size=micro, device=torch.device("cpu"), precision="fp32"
        )
        grads.append([param.grad.clone() for m in (p, v) for param in m.parameters() if param.grad is not None])
        losses.append(stats)
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        assert_close(a, b, atol=1e-6, rtol=1e-4)
    for key in ("policy/loss", "value/loss", "ptx/loss"):
        assert losses[0][key] == pytest.approx(losses[1][key], rel=1e-5, abs=1e-7)


def test_reward_lands_on_the_last_real_token_of_each_response(sft):
    lengths = (1, 3, 5, 2)
    rollout, _, _, _ = _episodes(sft, lengths)
    assert rollout.response_mask.sum(1).tolist() == list(lengths)
    plain, _ = add_advantages(rollout, kl_coef=0.0, gamma=1.0, lam=0.95)
    expected = torch.zeros(len(lengths), max(lengths))
    for row, n in enumerate(lengths):
        expected[row, n - 1] = row + 1.0  # the score, at the last real token; zero on padding
    assert_close(plain.token_rewards, expected)
    # with the KL penalty (policy == reference here) the score still sits on the same index
    penalized, _ = add_advantages(rollout, kl_coef=0.5, gamma=1.0, lam=0.95)
    assert_close(penalized.token_rewards, expected)


def test_logprobs_divide_the_logits_by_the_sampling_temperature(sft):
    rollout, (policy, reference, _), queries, responses = _episodes(sft, temperature=0.7)
    for row, (q, r) in enumerate(zip(queries, responses)):
        ids = torch.tensor([q + r])
        with torch.no_grad():
            logits = policy(ids).logits[0, len(q) - 1 : -1]  # [len(r), V] predicting r
        manual = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
        assert_close(rollout.logprobs[row, : len(r)], manual, atol=1e-5, rtol=1e-5)
    assert_close(rollout.ref_logprobs, rollout.logprobs)  # reference == policy before training


def test_the_reference_stays_frozen_while_the_policy_moves(sft, tmp_path, monkeypatch):
    import prefer.rl.episodes as stage  # where the loop builds its rollouts

    seen = {}
    original = stage.make_rollout

    def spy(policy, reference, *args, **kwargs):
        seen.setdefault("first", {k: v.clone() for k, v in reference.state_dict().items()})
        seen["last"], seen["policy"] = reference, policy
        return original(policy, reference, *args, **kwargs)

    monkeypatch.setattr(stage, "make_rollout", spy)
    ppo(_config(sft, tmp_path / "run", **{"train.iterations": 3}))
    reference, policy = seen["last"], seen["policy"]
    assert not reference.training and all(not p.requires_grad for p in reference.parameters())
    assert all(torch.equal(seen["first"][k], v) for k, v in reference.state_dict().items())
    assert any(not torch.equal(seen["first"][k], v) for k, v in policy.state_dict().items())


def test_ptx_keeps_the_pretraining_loss_lower(sft, tmp_path):
    common = {
        "train.iterations": 10,
        "train.checkpoint_every": 5,
        "ptx.source": sft / "corpus.jsonl",
        "ptx.batch_size": 8,
    }
    ppo(_config(sft, tmp_path / "plain", **{"ptx.coef": 0.0, **common}))
    ppo(_config(sft, tmp_path / "ptx", **{"ptx.coef": 1.0, **common}))
    plain, ptx = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "ptx")
    assert "train/ptx/loss" in ptx[-1] and "train/ptx/loss" not in plain[-1]
    print(f"held-out LM loss: PPO {plain[-1]['ptx/heldout_loss']:.3f}, PPO-ptx {ptx[-1]['ptx/heldout_loss']:.3f}")
    assert ptx[-1]["ptx/heldout_loss"] < plain[-1]["ptx/heldout_loss"]


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(sft, tmp_path, monkeypatch):
    ppo(_config(sft, tmp_path / "whole", **{"train.iterations": 6, "train.checkpoint_every": 2}))
    calls = {"n": 0}

    def crashing(texts):
        calls["n"] += 1
        if calls["n"] == 5:  # during iteration 5, after the checkpoint of iteration 4
            raise KeyboardInterrupt
        return not_a(texts)

    monkeypatch.setitem(scorers.SCORERS, "not-a", crashing)
    config = _config(sft, tmp_path / "cut", **{"train.iterations": 6, "train.checkpoint_every": 2})
    with pytest.raises(KeyboardInterrupt):
        ppo(config)
    ppo(config, resume=True)
    whole, cut = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "cut")
    assert [m["step"] for m in cut] == list(range(1, 7))
    for a, b in zip(whole, cut):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    wa, wb = (
        load_file(tmp_path / "whole" / "final" / "model.safetensors"),
        load_file(tmp_path / "cut" / "final" / "model.safetensors"),
    )
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


# ---------------------------------------------------------------- reward model as critic, bad input


def _reward_model(sft, path):
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(str(sft / "sft"), num_labels=1)
    rm.config.pad_token_id = rm.config.eos_token_id
    rm.save_pretrained(path)
    load_tokenizer(sft / "sft").save_pretrained(path)
    return rm.eval()


def test_value_model_starts_from_the_reward_model(sft, tmp_path):
    rm = _reward_model(sft, tmp_path / "rm")
    value_model = build_value_model(str(sft / "sft"), str(tmp_path / "rm")).eval()
    ids = torch.tensor([[0, 5, 9, 11, 4]])
    with torch.no_grad():
        expected = rm.score(rm.transformer(ids).last_hidden_state).squeeze(-1)  # [1, 5]
        got = value_model.head(value_model.trunk(input_ids=ids).last_hidden_state)
    assert_close(got, expected)
    ppo(_config(sft, tmp_path / "run", **{"train.iterations": 2, "reward.model": str(tmp_path / "rm")}))


def test_reward_model_with_another_tokenizer_is_refused(sft, tmp_path):
    _reward_model(sft, tmp_path / "rm")
    train_tokenizer(_texts(200, 9) + ["zzz qqq"], vocab_size=320).save_pretrained(tmp_path / "rm")
    with pytest.raises(PreferError, match="tokenizer"):
        ppo(_config(sft, tmp_path / "run", **{"reward.model": str(tmp_path / "rm")}))


def test_a_prompt_longer_than_the_context_names_its_line(sft, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "cat"}) + "\n\n" + json.dumps({"prompt": "banana " * 60}) + "\n")
    with pytest.raises(PreferError, match=rf"{prompts}:3: .*context"):
        ppo(_config(sft, tmp_path / "run", prompts=str(prompts)))


def test_sample_batch_size_samples_the_batch_in_fewer_loops_and_must_divide_it(sft, tmp_path, monkeypatch):
    calls = []
    real = prefer.rl.episodes.sample

    def counting(policy, queries, **kwargs):
        calls.append(len(queries))
        return real(policy, queries, **kwargs)

    monkeypatch.setattr(prefer.rl.episodes, "sample", counting)
    ppo(_config(sft, tmp_path / "default", **{"train.iterations": 2}))
    assert calls == [8, 8, 8, 8]  # the micro-batch (= minibatch 8): two loops per batch of 16
    calls.clear()
    ppo(_config(sft, tmp_path / "whole", **{"train.iterations": 2, "rollout.sample_batch_size": 16}))
    assert calls == [16, 16]
    metrics = read_metrics(tmp_path / "whole")
    assert [m["step"] for m in metrics] == [1, 2] and all(m["episodes"] == 16 * m["step"] for m in metrics)
    with pytest.raises(PreferError, match=r"rollout.sample_batch_size 12 must divide .* \(16\)"):
        ppo(_config(sft, tmp_path / "bad", **{"rollout.sample_batch_size": 12}))
    with pytest.raises(PreferError, match="rollout.sample_batch_size"):
        _config(sft, tmp_path / "bad", **{"rollout.sample_batch_size": 0})
