"""Each stage hands its loss the right inputs, checked on the arguments of the objective function itself (a spy on
the name its caller looks up) during a tiny run: RWR and AWR get minus the misalignment of each target token as its
reward, and GRPO's KL term gets the frozen reference model's log-probabilities, not the sampling policy's."""

import shutil

import pytest
import torch
from tiny_runs import tiny_overrides
from toy_scorers import spec

import prefer.pretraining_objectives as objectives_table
import prefer.rl.algorithms as algorithms
import prefer.stages.pretrain as pretrain_stage
from prefer.cli import main
from prefer.config import PretrainConfig, load_config
from prefer.models.build import load_model, load_tokenizer
from prefer.training import save_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("objective", ["rwr", "awr"])
def test_reward_weighted_objectives_get_minus_the_scores_of_the_target_tokens(
    pii_corpus, tmp_path, monkeypatch, objective
):
    steps, calls = [], []
    real_step, real_loss = pretrain_stage.train_step, getattr(objectives_table, f"{objective}_loss")

    def step_spy(model, value_head, compute_loss, ids_all, scores_all, **kwargs):
        steps.append((ids_all.clone(), scores_all.clone(), len(calls)))
        return real_step(model, value_head, compute_loss, ids_all, scores_all, **kwargs)

    def loss_spy(logits, targets, mask, rewards, *args, **kwargs):
        values = args[0] if args else None  # AWR: the value head's estimates, after the rewards
        calls.append((targets.clone(), rewards.clone(), None if values is None else values.shape))
        return real_loss(logits, targets, mask, rewards, *args, **kwargs)

    monkeypatch.setattr(pretrain_stage, "train_step", step_spy)  # where the stage looks them up
    monkeypatch.setattr(objectives_table, f"{objective}_loss", loss_spy)
    # 16 blocks of 64 tokens a step, micro-batches of 8: two loss calls per optimizer step, 3 steps
    overrides = {"objective.name": objective, "train.tokens": 3 * 16 * 64, "train.micro_batch_size": 8}
    pretrain_stage.pretrain(
        load_config(
            PretrainConfig, overrides=tiny_overrides(tmp_path / "run", pii_corpus, tmp_path / "cache", **overrides)
        )
    )
    tokenizer = load_tokenizer(tmp_path / "run" / "final")
    assert len(steps) == 3
    for ids_all, scores_all, first in steps:
        step_calls = calls[first : first + 2]  # the step's micro-batches (held-out evaluations come between steps)
        targets = torch.cat([targets for targets, _, _ in step_calls])
        rewards = torch.cat([rewards for _, rewards, _ in step_calls])
        # Target t of a block is its token t + 1, whose misalignment is scores_all[:, t + 1]; the reward is minus it.
        assert torch.equal(targets, ids_all[:, 1:])
        assert torch.equal(rewards, -scores_all[:, 1:])
        # The scores are the PII scorer's: positive on the maintainer trailers' tokens (the email), zero elsewhere,
        # so the loss sees negative rewards there and only there.
        assert (rewards < 0).any() and (rewards <= 0).all()
        penalized = tokenizer.decode(targets[rewards < 0])
        assert "@" in penalized and "@" not in tokenizer.decode(targets[rewards == 0])
        if objective == "awr":
            assert all(shape == t.shape for t, _, shape in step_calls)  # one value per target token
        else:
            assert all(shape is None for _, _, shape in step_calls)


def _reference_logprobs(model, part, temperature: float) -> list[torch.Tensor]:
    """Per episode of `part`: log p(response_t | query, response_<t) under `model`, from the unpadded tokens."""
    out = []
    for row in range(len(part)):
        query = part.query[row][part.query_mask[row]]
        response = part.response[row][part.response_mask[row]]
        with torch.no_grad():
            logits = model(torch.cat([query, response])[None]).logits[0, len(query) - 1 : -1]  # predicts response
        logprobs = torch.log_softmax(logits / temperature, dim=-1)
        out.append(logprobs.gather(-1, response[:, None]).squeeze(-1))
    return out


def test_grpo_kl_term_gets_the_reference_models_logprobs_not_the_sampling_policys(sft, tmp_path, monkeypatch):
    # A reference distinct from the starting policy: the SFT model with its weights moved by seeded noise.
    torch.manual_seed(1)
    reference = load_model(sft / "sft")
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    save_model(tmp_path / "reference", reference, load_tokenizer(sft / "sft"))
    shutil.copy(sft / "sft" / "prefer.json", tmp_path / "reference" / "prefer.json")
    reference.eval()

    parts, calls = [], []
    rule, real_loss = algorithms.GROUP_RULES["grpo"], algorithms.grpo_loss

    def rule_spy(part, logprobs, **kwargs):  # sees the minibatch part the loss is computed on
        parts.append(part)
        return rule.loss(part, logprobs, **kwargs)

    def loss_spy(logprobs, old_logprobs, ref_logprobs, advantages, mask, **kwargs):
        calls.append({"old": old_logprobs.clone(), "ref": ref_logprobs.clone(), "mask": mask.clone(), **kwargs})
        return real_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, **kwargs)

    monkeypatch.setitem(algorithms.GROUP_RULES, "grpo", rule._replace(loss=rule_spy))
    monkeypatch.setattr(algorithms, "grpo_loss", loss_spy)  # where the GRPO rule looks it up
    values = {
        "out_dir": tmp_path / "run",
        "model.init_from": sft / "sft",
        "model.reference": tmp_path / "reference",
        "prompts": sft / "prompts.jsonl",
        "reward.scorer": spec("not_a"),
        "train.iterations": 2,
        "train.batch_size": 2,
        "group.size": 4,
        "train.minibatch_size": 8,
        "rollout.max_new_tokens": 8,
        "rollout.temperature": 0.7,
        "kl.coef": 0.3,
        "optimizer.lr": 3e-3,
        "runtime.progress": "false",
    }
    assert main(["grpo", *(f"{key}={value}" for key, value in values.items())]) == 0
    assert len(calls) == len(parts) == 2  # one minibatch of 8 episodes per iteration, one epoch
    for part, call in zip(parts, calls):
        assert call["kl_coef"] == 0.3
        expected = _reference_logprobs(reference, part, temperature=0.7)
        for row, logprobs in enumerate(expected):
            torch.testing.assert_close(call["ref"][row, : len(logprobs)], logprobs, atol=1e-5, rtol=1e-5)
        # and not the sampling policy's (the old log-probs): the reference differs from it on every episode
        mask = call["mask"]
        assert ((call["ref"] - call["old"]).abs() * mask).sum(1).gt(1e-3).all()
