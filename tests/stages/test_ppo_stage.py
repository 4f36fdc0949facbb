"""`prefer ppo`: a tiny GPT-2 learns to please a toy scorer; the update does not depend on accumulation; rewards,
temperatures, the frozen reference, PPO-ptx, resume and bad input behave as the method requires."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import computed
from torch.testing import assert_close
from toy_rl import hand_made_rollout, mean_reward, toy_texts
from toy_scorers import not_a, not_b, spec

import prefer.rl.episodes
from prefer.cli import main
from prefer.config import PolicyGradientConfig, build_config
from prefer.data.tokenizer import train_tokenizer
from prefer.errors import PreferError
from prefer.models.build import load_tokenizer
from prefer.models.value import build_value_model
from prefer.rl import add_advantages, ppo_backward, ptx_backward
from prefer.stages.policy_gradient import ppo
from prefer.training import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
NOT_A = spec("not_a")  # the toy reward, named as a user names their own scorer


def _config(sft, out, **overrides):
    values = {
        "out_dir": out,
        "algorithm": "ppo",
        "model.init_from": sft / "sft",
        "prompts": sft / "prompts.jsonl",
        "reward.scorer": NOT_A,
        "train.iterations": 30,
        "train.batch_size": 16,
        "train.minibatch_size": 8,
        "rollout.max_new_tokens": 12,
        "optimizer.lr": 3e-3,
        "kl.coef": 0.02,
        "train.epochs": 2,
        "train.checkpoint_every": 10,
        "runtime.progress": False,
        "train.log_samples": 2,
    }
    values.update(overrides)
    return build_config(PolicyGradientConfig, values)


# ---------------------------------------------------------------- behaviour


def test_ppo_raises_the_reward_of_the_sft_model(sft, tmp_path):
    before = load_file(sft / "sft" / "model.safetensors")
    final = ppo(_config(sft, tmp_path / "run"))
    before_reward, after_reward = mean_reward(sft / "sft", sft), mean_reward(final, sft)
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


def test_adaptive_kl_moves_beta_and_gold_is_logged_not_rewarded(sft, tmp_path):
    for name, gold in (("b", spec("not_b")), ("length", spec("length"))):
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
        a, b = computed(a), computed(b)  # wall-clock time/ keys aside
        assert {k: v for k, v in a.items() if k != "reward/gold"} == {k: v for k, v in b.items() if k != "reward/gold"}


# ---------------------------------------------------------------- invariances and alignment


def test_one_minibatch_of_8_equals_8_micro_batches_of_1(sft):
    rollout, (policy, _, value_model), _, _ = hand_made_rollout(sft)
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
    rollout, _, _, _ = hand_made_rollout(sft, lengths)
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
    rollout, (policy, reference, _), queries, responses = hand_made_rollout(sft, temperature=0.7)
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


def test_model_reference_is_the_kl_reference_instead_of_the_starting_point(sft, tmp_path):
    """PPO with model.reference: the KL is taken to that model. The policy starts at init_from, so the first
    iteration's KL is ~0 to its own start (test_ppo_raises_the_reward_of_the_sft_model) but not to another model."""
    import shutil

    from transformers import AutoModelForCausalLM

    other = tmp_path / "other"
    shutil.copytree(sft / "sft", other)  # the same tokenizer, other weights
    model = AutoModelForCausalLM.from_pretrained(other)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter) * parameter.std())
    model.save_pretrained(other)
    before = load_file(other / "model.safetensors")
    final = ppo(_config(sft, tmp_path / "run", **{"train.iterations": 1, "model.reference": str(other)}))
    assert read_metrics(tmp_path / "run")[0]["kl"] > 0.1
    assert json.loads((final / "prefer.json").read_text())["reference"] == str(other)
    after = load_file(other / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the reference on disk is untouched


REQUIRED = ["model.init_from=m", "prompts=p.jsonl", "reward.scorer=pii"]


def _command_config(argv: list[str]) -> PolicyGradientConfig:
    """The config a `prefer` command line would run (parsed, over the command's defaults; no run)."""
    from prefer.cli import _stage_config, build_parser

    return _stage_config(PolicyGradientConfig, build_parser().parse_args([*argv, *REQUIRED]))


def test_prefer_ppo_algorithm_grpo_is_prefer_grpo(tmp_path, capsys):
    grpo = _command_config(["grpo"])
    assert _command_config(["ppo", "algorithm=grpo"]) == grpo
    # GRPO's defaults (those of `prefer grpo` before one config), not PPO's; PPO's unchanged
    assert (grpo.algorithm, grpo.out_dir, grpo.kl.coef, grpo.train.batch_size) == ("grpo", "runs/grpo", 0.04, 16)
    ppo_config = _command_config(["ppo"])
    assert (ppo_config.algorithm, ppo_config.out_dir, ppo_config.kl.coef) == ("ppo", "runs/ppo", 0.02)
    assert (ppo_config.train.batch_size, ppo_config.group_size) == (64, 1)  # 64 prompts = 64 episodes, as before
    # the alias's algorithm is a default: an override or a YAML file chooses another; an explicit key always wins
    assert _command_config(["grpo", "algorithm=rloo"]) == _command_config(["ppo", "algorithm=rloo"])
    (tmp_path / "rloo.yaml").write_text("algorithm: rloo\n")
    from_file = _command_config(["grpo", "--config", str(tmp_path / "rloo.yaml")])
    assert (from_file.algorithm, from_file.kl.coef) == ("rloo", 0.04)
    assert _command_config(["ppo", "algorithm=grpo", "kl.coef=0.02"]).kl.coef == 0.02
    # `prefer config` and --help show each command's own defaults
    assert main(["config", "grpo"]) == 0
    printed = capsys.readouterr().out
    assert "algorithm: grpo" in printed and "out_dir: runs/grpo" in printed and "coef: 0.04" in printed
    with pytest.raises(SystemExit):
        main(["ppo", "--help"])
    printed = capsys.readouterr().out
    for key in ("algorithm=ppo", "model.init_from=", "model.reference=null", "train.epochs=1", "ppo.vf_coef=0.1"):
        assert f"  {key}" in printed, key
    assert "group.size=4" in printed and "kl.coef=0.02" in printed and "value_trunk=separate" in printed


@pytest.mark.parametrize(
    "argv,key,readers",
    [
        (["grpo", "ppo.vf_coef=0.5"], "ppo.vf_coef", "ppo"),
        (["ppo", "algorithm=rloo", "value_trunk=shared"], "value_trunk", "ppo"),
        (["ppo", "group.size=8"], "group.size", "rloo | grpo"),
        (["grpo", "algorithm=rloo", "group.scale=false"], "group.scale", "grpo"),
    ],
)
def test_a_key_only_another_algorithm_reads_is_refused_in_one_line(capsys, argv, key, readers):
    assert main([*argv, *REQUIRED]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"prefer: error: config: {key}: read by algorithm={readers} only") and "\n" not in error
    # at its default it is accepted: the section is every algorithm's, read or not
    default = {"ppo.vf_coef": "0.1", "value_trunk": "separate", "group.size": "4", "group.scale": "true"}[key]
    assert _command_config([*argv[:-1], f"{key}={default}"]).algorithm == (
        "rloo" if "algorithm=rloo" in argv else argv[0]
    )


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


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(sft, tmp_path):
    ppo(_config(sft, tmp_path / "whole", **{"train.iterations": 6, "train.checkpoint_every": 2}))
    calls = {"n": 0}

    def crashing(texts):
        calls["n"] += 1
        if calls["n"] == 5:  # during iteration 5, after the checkpoint of iteration 4
            raise KeyboardInterrupt
        return not_a(texts)

    config = _config(sft, tmp_path / "cut", **{"train.iterations": 6, "train.checkpoint_every": 2})
    with pytest.raises(KeyboardInterrupt):
        ppo(config, scorer=crashing)  # the Python API's callable stands in for reward.scorer (the same not_a)
    ppo(config, resume=True)  # reward.scorer again
    whole, cut = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "cut")
    assert [m["step"] for m in cut] == list(range(1, 7))
    for a, b in zip(whole, cut):
        assert a.keys() == b.keys()
        a, b = computed(a), computed(b)  # wall-clock time/ keys aside
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
    train_tokenizer(toy_texts(200, 9) + ["zzz qqq"], vocab_size=320).save_pretrained(tmp_path / "rm")
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

    def counting(policy, queries, *args, **kwargs):
        calls.append(len(queries))
        return real(policy, queries, *args, **kwargs)

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
