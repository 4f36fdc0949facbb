"""LoRA through peft: only adapters train, `final/` is the peft merge of the checkpointed adapters (a plain HF model),
checkpoints hold adapters only and resume exactly, and PPO's shared-trunk reference is the frozen SFT model."""

import shutil

import pytest
import torch
from lora_toys import LETTERS, random_adapters
from peft import PeftModel
from safetensors.torch import load_file
from toy_scorers import spec
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from prefer.config import LoRAConfig, PolicyGradientConfig, RewardConfig, SFTConfig, build_config, load_config
from prefer.errors import PreferError
from prefer.models.build import load_model, load_tokenizer
from prefer.models.lora import FrozenView, apply_lora, disabled_adapters, merged_state_dict, prepare
from prefer.models.value import build_value_model
from prefer.rl import make_rollout
from prefer.stages.policy_gradient import ppo
from prefer.stages.reward import reward
from prefer.stages.sft import sft
from prefer.training import make_optimizer, read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
NOT_CAPITAL_A = spec("not_capital_a")  # the toy reward, named as a user names their own scorer


def _sft_values(data, out, **extra):
    values = {
        "out_dir": out,
        "data.demonstrations": data / "demos.jsonl",
        "model.init_from": data / "init",
        "train.epochs": 1,
        "optimizer.lr": 1e-2,
        "train.batch_size": 16,
        "train.checkpoint_every": 2,
        "runtime.progress": False,
        "lora.r": 4,
        "data.validation_fraction": 0.1,
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def test_one_step_changes_only_the_adapters(lora_data):
    model = apply_lora(load_model(lora_data / "init"), LoRAConfig(r=4))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    optimizer = make_optimizer([model], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    ids = torch.randint(3, 200, (4, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= trainable  # weight decay leaves the frozen weights alone too
    assert any(".lora_A." in name for name in changed) and any(".lora_B." in name for name in changed)


def test_lora_sft_final_is_the_peft_merge_of_its_checkpoint(lora_data, tmp_path):
    final = sft(load_config(SFTConfig, overrides=_sft_values(lora_data, tmp_path / "run")))  # 4 steps
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000004" / "model"
    # The checkpoint: adapters only (a peft adapter directory), far smaller than the model.
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    assert not (checkpoint / "model.safetensors").exists()
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in key or ".lora_B." in key for key in adapter)
    # final/: a plain HF model, no peft needed, equal to peft's own merge of the checkpointed adapters.
    assert not (final / "adapter_config.json").exists()
    ours = AutoModelForCausalLM.from_pretrained(final).state_dict()
    by_peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lora_data / "init"), checkpoint)
    merged = by_peft.merge_and_unload().state_dict()
    assert set(ours) == set(merged)
    for key in ours:
        torch.testing.assert_close(ours[key], merged[key], rtol=0, atol=1e-7)
    # Merged: exactly the adapted projections moved; embeddings, norms and biases are the initial ones.
    initial = AutoModelForCausalLM.from_pretrained(lora_data / "init").state_dict()
    moved = {key for key in ours if not torch.equal(ours[key], initial[key])}
    targets = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    assert moved == {key for key in ours if key.endswith(targets)}


def test_merged_state_dict_leaves_the_model_as_it_was(lora_data):
    model = apply_lora(load_model(lora_data / "init"), LoRAConfig(r=2, target_modules=["c_attn"]))
    random_adapters(model)
    ids = torch.randint(3, 200, (2, 10))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        state = merged_state_dict(model)
        plain = load_model(lora_data / "init")
        plain.load_state_dict(state)
        torch.testing.assert_close(plain(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)  # merge = adapters
        assert torch.equal(model(input_ids=ids).logits, before)  # the wrapped model is untouched


def test_lora_sft_resume_gives_the_same_model(lora_data, tmp_path):
    values = _sft_values(lora_data, tmp_path / "run", **{"model.dropout": 0.1, "lora.dropout": 0.1})
    final = sft(load_config(SFTConfig, overrides=values))
    shutil.copytree(tmp_path / "run", tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed" / "final")
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "step_00000004")
    (tmp_path / "killed" / "checkpoints" / "latest").write_text("step_00000002\n")
    values[0] = f"out_dir={tmp_path / 'killed'}"
    resumed = sft(load_config(SFTConfig, overrides=values), resume=True)
    expected, got = load_file(final / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    with pytest.raises(PreferError, match="lora.r is 4 in the run being resumed, 8 now"):
        sft(load_config(SFTConfig, overrides=[*values, "lora.r=8"]), resume=True)


def test_shared_trunk_reference_is_exactly_the_frozen_sft_model(lora_data):
    tokenizer = load_tokenizer(lora_data / "init")
    policy = apply_lora(load_model(lora_data / "init"), LoRAConfig(r=4)).eval()
    random_adapters(policy)
    reference = FrozenView(policy)
    sft_model = load_model(lora_data / "init").eval()
    value_model = build_value_model(str(lora_data / "init"), None).eval()
    queries = [[tokenizer.eos_token_id, *tokenizer.encode(f"say {c}")] for c in LETTERS[:5]]
    responses = [[(5 * i + 3 * t) % 200 + 3 for t in range(n)] for i, n in enumerate((1, 4, 2, 6, 3))]
    kwargs = dict(
        rewards=torch.zeros(5),
        gold=torch.zeros(5),
        temperature=1.0,
        pad_id=tokenizer.eos_token_id,
        batch_size=2,
        device=torch.device("cpu"),
    )
    shared = make_rollout(policy, reference, value_model, queries, responses, **kwargs)
    separate = make_rollout(sft_model, sft_model, value_model, queries, responses, **kwargs)
    assert torch.equal(shared.ref_logprobs, separate.ref_logprobs)  # bit for bit
    assert not torch.allclose(shared.logprobs, shared.ref_logprobs)  # the adapters do act on the policy
    # The view holds no weights and leaves the adapters trainable after each use.
    assert list(reference.parameters()) == []
    with disabled_adapters(policy):
        pass
    assert all(p.requires_grad for name, p in policy.named_parameters() if "lora_" in name)


def test_lora_ppo_and_reward_write_plain_hugging_face_models(lora_data, tmp_path):
    config = build_config(
        PolicyGradientConfig,
        {
            "out_dir": tmp_path / "ppo",
            "model.init_from": lora_data / "init",
            "prompts": lora_data / "prompts.jsonl",
            "reward.scorer": NOT_CAPITAL_A,
            "train.iterations": 2,
            "train.batch_size": 8,
            "train.minibatch_size": 4,
            "rollout.max_new_tokens": 6,
            "optimizer.lr": 1e-2,
            "runtime.progress": False,
            "lora.r": 4,
        },
    )
    before = load_file(lora_data / "init" / "model.safetensors")
    final = ppo(config)
    metrics = read_metrics(tmp_path / "ppo")
    assert abs(metrics[0]["kl"]) < 1e-6  # the first rollout's policy is its own reference (B = 0)
    assert metrics[-1]["kl"] != 0  # after an update the adapters move the policy away from the reference
    assert not (final / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(final)
    after = load_file(lora_data / "init" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The reward model: adapters + a fully trained score head, merged into a plain sequence classifier.
    rm = reward(
        load_config(
            RewardConfig,
            overrides=[
                f"out_dir={tmp_path / 'rm'}",
                f"data.rankings={lora_data / 'rankings.jsonl'}",
                f"model.init_from={lora_data / 'init'}",
                "optimizer.lr=1e-2",
                "train.batch_size=8",
                "runtime.progress=false",
                "lora.r=4",
                "runtime.gradient_checkpointing=true",
            ],
        )
    )
    classifier = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1)
    adapter = load_file(tmp_path / "rm" / "checkpoints" / "step_00000004" / "model" / "adapter_model.safetensors")
    assert any(key.endswith("score.weight") for key in adapter)  # the head is saved with the adapters
    torch.testing.assert_close(classifier.score.weight, adapter["base_model.model.score.weight"])


def test_bad_lora_settings_are_one_line_errors(lora_data):
    with pytest.raises(PreferError, match="lora.r: must be >= 0"):
        LoRAConfig(r=-1)
    with pytest.raises(PreferError, match="lora.target_modules"):
        apply_lora(load_model(lora_data / "init"), LoRAConfig(r=2, target_modules=["no_such_proj"]))
    with pytest.raises(PreferError, match="runtime.parallel=fsdp"):
        build_config(
            SFTConfig,
            {"data.demonstrations": "d.jsonl", "model.init_from": "m", "lora.r": 4, "runtime.parallel": "fsdp"},
        )


@pytest.mark.parametrize("r", [0, 4])
def test_gradient_checkpointing_computes_the_same_step(lora_data, tmp_path, r):
    """Recomputing activations changes memory, not the gradient; with LoRA the frozen embeddings would otherwise
    leave the checkpointed blocks without a gradient path (a zero gradient norm)."""
    first = {}
    for flag in (False, True):
        sft(
            load_config(
                SFTConfig,
                overrides=_sft_values(
                    lora_data,
                    tmp_path / str(flag),
                    **{
                        "lora.r": r,
                        "runtime.gradient_checkpointing": flag,
                        "train.epochs": 0.25,
                        "optimizer.grad_clip": 1e9,
                    },
                ),
            )
        )
        first[flag] = read_metrics(tmp_path / str(flag))[0]
    assert first[True]["train/loss"] == pytest.approx(first[False]["train/loss"], rel=1e-6)
    assert first[True]["train/grad_norm"] == pytest.approx(first[False]["train/grad_norm"], rel=1e-4)
    assert first[True]["train/grad_norm"] > 0
    model = prepare(load_model(lora_data / "init"), LoRAConfig(r=r), gradient_checkpointing=True)
    assert (
        model.is_activation_checkpointing
        if hasattr(model, "is_activation_checkpointing")
        else model.is_gradient_checkpointing
    )


def test_shared_value_trunk_holds_one_model_and_resumes(lora_data, tmp_path):
    """value_trunk=shared with LoRA: policy, reference and critic are one set of weights; the critic's own
    parameters are its head's, the value loss reaches the policy's adapters, and a killed run resumes exactly."""
    from prefer.models.value import SharedTrunkValueModel

    policy = apply_lora(load_model(lora_data / "init"), LoRAConfig(r=4))
    critic = SharedTrunkValueModel(policy)
    assert [name for name, _ in critic.named_parameters()] == ["head.linear.weight", "head.linear.bias"]
    assert critic.trunk is policy.base_model
    tokenizer = load_tokenizer(lora_data / "init")
    episodes = make_rollout(
        policy.eval(),
        FrozenView(policy),
        critic,
        [[tokenizer.eos_token_id, 5, 6]],
        [[7, 8]],
        rewards=torch.ones(1),
        gold=torch.zeros(1),
        temperature=1.0,
        pad_id=tokenizer.eos_token_id,
        batch_size=1,
        device=torch.device("cpu"),
    )
    with torch.no_grad():
        critic.head.linear.weight.fill_(0.1)  # a zero head passes no gradient back to the trunk
    critic(episodes).sum().backward()
    assert all(p.grad is not None for name, p in policy.named_parameters() if "lora_A" in name)

    values = {
        "out_dir": tmp_path / "run",
        "model.init_from": lora_data / "init",
        "prompts": lora_data / "prompts.jsonl",
        "reward.scorer": NOT_CAPITAL_A,
        "train.iterations": 3,
        "train.batch_size": 8,
        "train.minibatch_size": 4,
        "rollout.max_new_tokens": 6,
        "optimizer.lr": 1e-2,
        "runtime.progress": False,
        "lora.r": 4,
        "value_trunk": "shared",
        "train.checkpoint_every": 1,
    }
    final = ppo(build_config(PolicyGradientConfig, values))
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000003" / "model"
    assert set(load_file(checkpoint / "value_model.safetensors")) == {"head.linear.weight", "head.linear.bias"}
    shutil.copytree(tmp_path / "run", tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed" / "final")
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "step_00000003")
    (tmp_path / "killed" / "checkpoints" / "latest").write_text("step_00000002\n")
    resumed = ppo(build_config(PolicyGradientConfig, {**values, "out_dir": tmp_path / "killed"}), resume=True)
    expected, got = load_file(final / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[key], got[key]) for key in expected)
