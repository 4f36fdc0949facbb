"""Value models (critics) for PPO: V(query, response_<t) per response position.

InstructGPT initialises the critic from the reward model (its trunk and score head); without one it is the SFT
trunk with a zero head, so that the first advantages are the rewards themselves. `SharedTrunkValueModel` puts the
head on the policy's own trunk instead (one model in memory)."""

from __future__ import annotations

import torch
from torch import nn

from prefer.models.build import load_model
from prefer.models.heads import ValueHead

__all__ = ["SharedTrunkValueModel", "ValueModel", "build_value_model", "response_logits", "sequence_inputs"]


def sequence_inputs(query, query_mask, response, response_mask):
    """Episodes (left-padded queries [B, Q], right-padded responses [B, R]) -> the concatenated inputs [B, Q + R]:
    ids, attention mask, and position ids over real tokens only (as the sampler saw them)."""
    ids = torch.cat([query, response], dim=1)
    attention = torch.cat([query_mask, response_mask], dim=1).long()
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    return ids, attention, positions


def response_logits(model: nn.Module, query, query_mask, response, response_mask) -> torch.Tensor:
    """[B, R, V] logits of a causal LM aligned with the response: column t (input column Q - 1 + t) predicts
    response[:, t]. The head runs on the last R + 1 positions only (`logits_to_keep`): no one reads the prompt's
    logits, which at SmolLM2's 49,152-token vocabulary are most of the head's work and of the logits' memory on a
    long prompt. The kept rows equal the full forward's up to float rounding: the head's matrix product has fewer
    rows, for which the BLAS may block the sum differently (the tiny test models give identical bits)."""
    ids, attention, positions = sequence_inputs(query, query_mask, response, response_mask)
    keep = response.shape[1] + 1
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=keep).logits
    return logits[:, -keep:-1]  # a model that ignores logits_to_keep returned every position: the same columns


class ValueModel(nn.Module):
    """V(query, response_<t): a transformer trunk and a scalar head per position, separate from the policy."""

    def __init__(self, trunk: nn.Module, head: ValueHead):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, episodes) -> torch.Tensor:
        """`episodes`: anything with query, query_mask [B, Q] and response, response_mask [B, R] (a `Rollout`) ->
        [B, R] values aligned like the policy's response logits: the value of the state before response token t."""
        ids, attention, positions = sequence_inputs(
            episodes.query, episodes.query_mask, episodes.response, episodes.response_mask
        )
        hidden = self.trunk(input_ids=ids, attention_mask=attention, position_ids=positions).last_hidden_state
        return self.head(hidden)[:, episodes.query.shape[1] - 1 : -1]  # [B, Q + R] -> [B, R]


class SharedTrunkValueModel(ValueModel):
    """V on the policy's own trunk: a zero-initialised head on the hidden states of the policy (with its adapters,
    under LoRA), so policy, reference (LoRA: adapters off) and critic hold one set of weights. The value loss then
    trains the policy's trunk too (a shared actor-critic). The policy stays outside this module's tree: its
    parameters are the head's only, so the optimizer and checkpoints see each weight once."""

    def __init__(self, policy: nn.Module):
        nn.Module.__init__(self)
        self.head = ValueHead(policy.config.hidden_size)
        self._policy = [policy]  # a list: not a submodule

    @property
    def trunk(self) -> nn.Module:
        return self._policy[0].base_model


def build_value_model(init_from: str, reward_model: str | None) -> ValueModel:
    """The critic: the reward model's trunk and score head (InstructGPT), else the SFT trunk and a zero head."""
    if reward_model is None:
        trunk = load_model(init_from).base_model
        return ValueModel(trunk, ValueHead(trunk.config.hidden_size))
    from prefer.models.reward_model import load_reward_classifier

    # the weights as prefer trained them (the saved format folds the bias into them where it can) and the bias
    rm, bias, _ = load_reward_classifier(reward_model, field="reward.model")
    head = ValueHead(rm.config.hidden_size)
    score = rm.score if hasattr(rm, "score") else rm.get_output_embeddings()
    with torch.no_grad():
        head.linear.weight.copy_(score.weight)
        if getattr(score, "bias", None) is not None:
            head.linear.bias.copy_(score.bias)
        head.linear.bias += bias
    return ValueModel(rm.base_model, head)
