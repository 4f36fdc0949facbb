"""The models a policy-gradient run holds: the policy, its frozen reference, the critic (PPO), the tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from prefer.errors import PreferError
from prefer.models.build import check_same_vocabulary, context_length, load_model, load_tokenizer
from prefer.models.lora import FrozenView, model_source, prepare
from prefer.models.value import SharedTrunkValueModel, build_value_model
from prefer.training import Distributed, check_checkpoint_vocabulary, wrap_model

__all__ = ["PolicyModels", "load_policy_models"]


@dataclass
class PolicyModels:
    """The policy (wrapped for DDP / FSDP2), its frozen reference, the critic (None without one), the tokenizer, and
    the policy's context length."""

    policy: torch.nn.Module
    reference: torch.nn.Module
    value_model: torch.nn.Module | None
    tokenizer: object
    context: int

    @property
    def trained(self) -> list[torch.nn.Module]:
        return [self.policy] + ([self.value_model] if self.value_model is not None else [])


def load_policy_models(
    init_from: str,
    *,
    reference: str | None,
    lora,
    critic: str | None,
    reward_model: str | None,
    reward_scorer: str,
    checkpoint: Path | None,
    dist: Distributed,
    device: torch.device,
    parallel: str,
) -> PolicyModels:
    """The policy starts as the SFT model `init_from`, which (or `reference`) stays as the frozen reference; with
    LoRA (`lora`, a LoRAConfig) and no other reference, the reference is the policy's trunk with its adapters off.
    `critic`: None (RLOO, GRPO), "separate" (PPO's critic: the reward model's trunk and head, or the SFT trunk with a
    zero head) or "shared" (a head on the policy's trunk). `checkpoint`: a run being resumed. Every tokenizer that
    hands token ids to another model (reference, reward model, `rm:` scorer) must be the policy's. All models in
    eval mode (dropout off: the first ratio is 1 and the KL measures the policy), wrapped for the ranks."""
    tokenizer = load_tokenizer(init_from, field="model.init_from")
    if checkpoint is not None:
        check_checkpoint_vocabulary(checkpoint, load_tokenizer(checkpoint / "model", field="checkpoint"), tokenizer)
    reference_path = reference or init_from
    if reference is not None:
        check_same_vocabulary(tokenizer, load_tokenizer(reference_path), what=f"model.reference {reference_path}")
    if reward_model is not None:
        check_same_vocabulary(tokenizer, load_tokenizer(reward_model), what=f"reward.model {reward_model}")
    if reward_scorer.startswith("rm:") and reward_scorer != f"rm:{reward_model}":
        rm_tokenizer = load_tokenizer(reward_scorer.removeprefix("rm:"))
        check_same_vocabulary(tokenizer, rm_tokenizer, what=f"reward {reward_scorer}")
    policy = prepare(
        load_model(model_source(init_from, checkpoint, lora), tokenizer=tokenizer), lora, checkpoint=checkpoint
    )
    frozen = (
        FrozenView(policy) if lora.enabled and reference is None else load_model(reference_path, tokenizer=tokenizer)
    )
    frozen.requires_grad_(False)
    value_model = None
    if critic == "shared":
        if dist.world_size > 1:
            raise PreferError("config: value_trunk: shared runs in one process; under torchrun use separate")
        value_model = SharedTrunkValueModel(policy)
    elif critic is not None:
        value_model = build_value_model(init_from, reward_model)
        prepare(value_model.trunk, lora)  # its own adapters; the head stays trainable
    if checkpoint is not None and value_model is not None:
        from safetensors.torch import load_file

        value_model.load_state_dict(load_file(checkpoint / "model" / "value_model.safetensors"))
    for model in [policy, frozen] + ([value_model] if value_model is not None else []):
        model.to(device).eval()  # gradients still flow in eval mode
    context = context_length(policy)
    policy = wrap_model(policy, dist, device, parallel=parallel)
    if value_model is not None:
        value_model = wrap_model(value_model, dist, device, parallel=parallel)
    if parallel == "fsdp":  # no gradients, so nothing for DDP to do; FSDP2 shards its weights too
        frozen = wrap_model(frozen, dist, device, parallel="fsdp")
    return PolicyModels(policy, frozen, value_model, tokenizer, context)
