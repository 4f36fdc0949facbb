"""LoRA in `prefer dpo` and `prefer grpo`: only the adapters train, the reference is the policy's trunk with the
adapters off (exactly the frozen SFT model, no second model loaded), `final/` is a plain HF model and resumable
checkpoints (adapters + optimizer) resume exactly."""

import shutil

import pytest
import torch
from lora_toys import random_adapters
from peft import PeftModel
from safetensors.torch import load_file
from toy_scorers import spec
from transformers import AutoModelForCausalLM

import prefer.rl.policy_models
import prefer.stages.dpo as dpo_stage
import prefer.stages.policy_gradient as group_stage
from prefer.config import DPOConfig, LoRAConfig, PolicyGradientConfig, build_config
from prefer.data.formats import read_rankings, record_locations
from prefer.data.splits import split_validation
from prefer.errors import PreferError
from prefer.models.build import load_model, load_tokenizer, set_dropout
from prefer.models.lora import FrozenView, apply_lora
from prefer.training import load_trainer_state, read_metrics
from prefer.training.preference_batches import encode_rankings, reference_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")
TARGETS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _dpo_values(data, out, **extra):
    values = {
        "out_dir": out,
        "data.rankings": data / "rankings.jsonl",
        "model.init_from": data / "init",
        "optimizer.lr": 1e-2,
        "train.batch_size": 8,
        "train.checkpoint_every": 2,
        "train.eval_every": 2,
        "eval.kl_samples": 4,
        "eval.max_new_tokens": 4,
        "runtime.progress": False,
        "lora.r": 4,
    }  # 32 rankings, 3 held out: 29 / 8 -> 4 steps
    return {**values, **extra}


def _grpo_values(data, out, **extra):
    values = {
        "out_dir": out,
        "algorithm": "grpo",
        "model.init_from": data / "init",
        "prompts": data / "prompts.jsonl",
        "reward.scorer": spec("not_capital_a"),  # the toy reward, as a user names their own
        "train.iterations": 3,
        "train.batch_size": 2,
        "group.size": 4,
        "train.minibatch_size": 8,
        "rollout.max_new_tokens": 6,
        "optimizer.lr": 1e-2,
        "train.checkpoint_every": 1,
        "runtime.progress": False,
        "lora.r": 4,
    }
    return {**values, **extra}


def _counting_loads(monkeypatch, stage):
    loaded = []
    monkeypatch.setattr(stage, "load_model", lambda *a, **k: loaded.append(a[0]) or load_model(*a, **k))
    return loaded


def _assert_plain_merge_of_adapters(data, final, checkpoint):
    """final/ loads without peft, equals peft's merge of the checkpointed adapters, and differs from the initial
    model exactly in the adapted projections (embeddings, norms, biases untouched)."""
    assert not (final / "adapter_config.json").exists()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    assert not (checkpoint / "model.safetensors").exists()
    assert all(".lora_A." in key or ".lora_B." in key for key in load_file(checkpoint / "adapter_model.safetensors"))
    ours = AutoModelForCausalLM.from_pretrained(final).state_dict()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(data / "init"), checkpoint)
    merged = merged.merge_and_unload().state_dict()
    for key in ours:
        torch.testing.assert_close(ours[key], merged[key], rtol=0, atol=1e-7)
    initial = AutoModelForCausalLM.from_pretrained(data / "init").state_dict()
    assert {key for key in ours if not torch.equal(ours[key], initial[key])} == {
        key for key in ours if key.endswith(TARGETS)
    }


def test_adapters_off_reference_is_exactly_the_frozen_init_model(lora_data):
    """The DPO reference table from the policy's trunk with trained-looking adapters (and the policy in train mode
    with dropout) is bit for bit the initial model's table: the view disables the adapters and the dropout."""
    tokenizer = load_tokenizer(lora_data / "init")
    path = lora_data / "rankings.jsonl"
    rankings = encode_rankings(read_rankings(path)[:6], record_locations(path)[:6], tokenizer, context=32)
    policy = apply_lora(load_model(lora_data / "init"), LoRAConfig(r=4))
    random_adapters(policy)
    set_dropout(policy, 0.2)
    policy.train()
    kwargs = dict(batch_size=4, pad_id=tokenizer.eos_token_id, device=torch.device("cpu"), precision="fp32")
    shared = reference_logprobs(FrozenView(policy), rankings, **kwargs)
    frozen = reference_logprobs(load_model(lora_data / "init").eval(), rankings, **kwargs)
    assert torch.equal(shared, frozen)
    assert policy.training  # the view restores the policy's mode
    with torch.no_grad():
        policy.eval()
        adapted = reference_logprobs(policy, rankings, **kwargs)
    assert not torch.allclose(adapted, frozen)  # the adapters do act on the policy


def test_lora_dpo_trains_only_adapters_against_its_own_trunk_and_resumes(lora_data, tmp_path, monkeypatch):
    loaded = _counting_loads(monkeypatch, dpo_stage)
    values = _dpo_values(lora_data, tmp_path / "run")
    final = dpo_stage.dpo(build_config(DPOConfig, values))
    assert loaded == [lora_data / "init"]  # the policy only: no second model for the reference
    _assert_plain_merge_of_adapters(lora_data, final, tmp_path / "run" / "checkpoints" / "step_00000004" / "model")
    metrics = read_metrics(tmp_path / "run")
    assert metrics[0]["train/accuracy"] <= 0.5 + 1e-6  # policy = reference at first: every margin is 0
    assert metrics[-1]["val/kl"] > 0  # the adapters moved the policy away from the trunk
    # The cached reference table is the frozen init model's, computed with the adapters off.
    state = load_trainer_state(tmp_path / "run" / "checkpoints" / "step_00000002")
    path, config = lora_data / "rankings.jsonl", build_config(DPOConfig, values)
    train_index, _ = split_validation(32, config.data.validation_fraction, config.runtime.seed)
    comparisons, locations = read_rankings(path), record_locations(path)
    tokenizer = load_tokenizer(lora_data / "init")
    train = encode_rankings(
        [comparisons[i] for i in train_index], [locations[i] for i in train_index], tokenizer, context=32
    )
    table = reference_logprobs(
        load_model(lora_data / "init").eval(),
        train,
        batch_size=8,
        pad_id=tokenizer.eos_token_id,
        device=torch.device("cpu"),
        precision="fp32",
    )
    torch.testing.assert_close(state["reference_logps"]["train"], table, rtol=0, atol=1e-5)
    assert state["optimizer"]["state"]  # the adapters' Adam moments travel with the checkpoint
    shutil.copytree(tmp_path / "run", tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed" / "final")
    for step in ("step_00000003", "step_00000004"):
        shutil.rmtree(tmp_path / "killed" / "checkpoints" / step, ignore_errors=True)
    (tmp_path / "killed" / "checkpoints" / "latest").write_text("step_00000002\n")
    monkeypatch.setattr(dpo_stage, "reference_logprobs", lambda *a, **k: pytest.fail("recomputed the reference"))
    resumed = dpo_stage.dpo(build_config(DPOConfig, {**values, "out_dir": tmp_path / "killed"}), resume=True)
    expected, got = load_file(final / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_lora_dpo_with_another_reference_loads_it(lora_data, tmp_path, monkeypatch):
    loaded = _counting_loads(monkeypatch, dpo_stage)
    values = _dpo_values(lora_data, tmp_path / "run", **{"model.reference": lora_data / "init", "train.epochs": 0.25})
    dpo_stage.dpo(build_config(DPOConfig, values))
    assert loaded == [lora_data / "init", str(lora_data / "init")]  # policy + the named reference


def test_lora_grpo_trains_only_adapters_against_its_own_trunk_and_resumes(lora_data, tmp_path, monkeypatch):
    loaded = _counting_loads(monkeypatch, prefer.rl.policy_models)  # where the loop's models are loaded
    values = _grpo_values(lora_data, tmp_path / "run")
    final = group_stage.group_rl(build_config(PolicyGradientConfig, values))
    assert loaded == [lora_data / "init"]  # no second model for the reference
    _assert_plain_merge_of_adapters(lora_data, final, tmp_path / "run" / "checkpoints" / "step_00000003" / "model")
    metrics = read_metrics(tmp_path / "run")
    assert abs(metrics[0]["kl"]) < 1e-6  # the first rollout's policy is its own reference (B = 0)
    assert metrics[-1]["kl"] != 0
    shutil.copytree(tmp_path / "run", tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed" / "final")
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "step_00000003")
    (tmp_path / "killed" / "checkpoints" / "latest").write_text("step_00000002\n")
    resumed = group_stage.group_rl(
        build_config(PolicyGradientConfig, {**values, "out_dir": tmp_path / "killed"}), resume=True
    )
    expected, got = load_file(final / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def test_lora_settings_of_dpo_and_grpo_are_checked(lora_data, tmp_path):
    with pytest.raises(PreferError, match="runtime.parallel=fsdp"):
        build_config(DPOConfig, _dpo_values(lora_data, tmp_path, **{"runtime.parallel": "fsdp"}))
    with pytest.raises(PreferError, match="runtime.gradient_checkpointing"):
        build_config(
            PolicyGradientConfig, _grpo_values(lora_data, tmp_path, **{"runtime.gradient_checkpointing": True})
        )
    with pytest.raises(PreferError, match="lora.r: must be >= 0"):
        build_config(PolicyGradientConfig, _grpo_values(lora_data, tmp_path, **{"lora.r": -1}))
