"""PPO rollouts: sampled episodes as one typed batch, and the forward passes that score them token by token.

An episode is a prompt (query) and the policy's response to it. Queries are LEFT-padded and responses RIGHT-padded,
so that every response starts at the same column Q of the concatenated sequence and one slice of the logits,
`[:, Q - 1 : -1]`, predicts every response token of every row. Position ids count real tokens only, as in
`prefer.sampling`, so a padded row sees the positions it saw when it was sampled.

The reward arithmetic (KL penalty, score on the last real token, GAE, whitening) is `prefer.objectives.ppo`;
this module only lines tensors up.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from prefer.models.heads import ValueHead
from prefer.objectives import entropy, gae, kl_penalized_rewards, token_logprobs, whiten
from prefer.training import autocast

__all__ = ["Rollout", "ValueModel", "SharedTrunkValueModel", "collate", "policy_logits", "make_rollout",
           "add_advantages"]


@dataclass(frozen=True)
class Rollout:
    """B episodes. Q = longest query, R = longest response; everything [B, R] is zero outside `response_mask`.

    query:          [B, Q] int64  prompt ids, left-padded (pad = eos)
    query_mask:     [B, Q] bool   real prompt tokens
    response:       [B, R] int64  response ids, right-padded (pad = eos); ends with eos when the sample stopped
    response_mask:  [B, R] bool   real response tokens (one contiguous block from column 0, at least one token)
    logprobs:       [B, R] float  log pi_old(response_t | query, response_<t) at the sampling temperature
    ref_logprobs:   [B, R] float  the same under the frozen reference (SFT) model
    values:         [B, R] float  V(query, response_<t) at rollout time
    entropy:        [B, R] float  entropy of pi_old's sampling distribution at each response position
    episode_rewards: [B]   float  proxy reward of each response (-misalignment, minus any missing-eos penalty)
    gold:           [B]    float  gold reward (-gold misalignment), never trained on; NaN without a gold scorer
    token_rewards:  [B, R] float  per-token KL penalty, episode reward added at the last real token (Ouyang et al.
                                  2022, Eq. 2)
    advantages:     [B, R] float  GAE advantages, whitened over the batch
    returns:        [B, R] float  GAE returns (advantages before whitening + values): the value targets
    """

    query: torch.Tensor
    query_mask: torch.Tensor
    response: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor
    episode_rewards: torch.Tensor
    gold: torch.Tensor
    token_rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.query.shape[0]

    def select(self, rows: torch.Tensor | slice) -> Rollout:
        """The episodes `rows` (an index tensor or a slice), every field alike."""
        return Rollout(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[rows])
                          for f in fields(self)})


def collate(queries: list[list[int]], responses: list[list[int]], *, pad_id: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token lists -> (query [B, Q], query_mask [B, Q], response [B, R], response_mask [B, R])."""
    if any(not r for r in responses):
        raise ValueError("every response needs at least one token (the eos of an empty response counts)")
    batch, width, length = len(queries), max(map(len, queries)), max(map(len, responses))
    query = torch.full((batch, width), pad_id, dtype=torch.long)
    response = torch.full((batch, length), pad_id, dtype=torch.long)
    for row, (q, r) in enumerate(zip(queries, responses)):
        query[row, width - len(q):] = torch.tensor(q, dtype=torch.long)  # left padding
        response[row, :len(r)] = torch.tensor(r, dtype=torch.long)  # right padding
    query_lengths = torch.tensor([len(q) for q in queries])
    response_lengths = torch.tensor([len(r) for r in responses])
    query_mask = torch.arange(width)[None, :] >= (width - query_lengths)[:, None]
    response_mask = torch.arange(length)[None, :] < response_lengths[:, None]
    return query, query_mask, response, response_mask


def _sequence(query, query_mask, response, response_mask):
    """Concatenated inputs [B, Q + R]: ids, attention mask, position ids over real tokens only."""
    ids = torch.cat([query, response], dim=1)
    attention = torch.cat([query_mask, response_mask], dim=1).long()
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    return ids, attention, positions


def policy_logits(model: nn.Module, episodes: Rollout) -> torch.Tensor:
    """[B, R, V] logits of a causal LM aligned with `episodes.response`: column Q - 1 + t predicts response[:, t]."""
    ids, attention, positions = _sequence(episodes.query, episodes.query_mask, episodes.response,
                                          episodes.response_mask)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits  # [B, Q + R, V]
    return logits[:, episodes.query.shape[1] - 1: -1]


class ValueModel(nn.Module):
    """V(query, response_<t): a transformer trunk and a scalar head per position, separate from the policy.

    InstructGPT initialises it from the reward model (its trunk and score head); without one it is the SFT trunk
    with a zero head, so that the first advantages are the rewards themselves."""

    def __init__(self, trunk: nn.Module, head: ValueHead):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, episodes: Rollout) -> torch.Tensor:
        """[B, R] values aligned like `policy_logits`: the value of the state before response token t."""
        ids, attention, positions = _sequence(episodes.query, episodes.query_mask, episodes.response,
                                              episodes.response_mask)
        hidden = self.trunk(input_ids=ids, attention_mask=attention, position_ids=positions).last_hidden_state
        return self.head(hidden)[:, episodes.query.shape[1] - 1: -1]  # [B, Q + R] -> [B, R]


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


@torch.no_grad()
def make_rollout(policy: nn.Module, reference: nn.Module, value_model: nn.Module | None, queries: list[list[int]],
                 responses: list[list[int]], *, rewards: torch.Tensor, gold: torch.Tensor, temperature: float,
                 pad_id: int, batch_size: int, device: torch.device, precision: str = "fp32") -> Rollout:
    """Episodes -> a Rollout with old log-probs, reference log-probs, values and entropy (rewards not yet).

    Every model must be in eval mode (dropout off), as it is during sampling and the PPO update: the ratio of the
    first minibatch is then exactly 1, and the KL to the reference measures the policy, not dropout noise.
    `value_model=None` (evaluation, best-of-n: nothing is trained, so there is no critic) leaves the values 0."""
    query, query_mask, response, response_mask = collate(queries, responses, pad_id=pad_id)
    empty = torch.zeros(response.shape, dtype=torch.float32)
    episodes = Rollout(query.to(device), query_mask.to(device), response.to(device), response_mask.to(device),
                       empty, empty, empty, empty, rewards.float().to(device), gold.float().to(device))
    parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "ref_logprobs": [], "values": [], "entropy": []}
    for start in range(0, len(episodes), batch_size):
        part = episodes.select(slice(start, start + batch_size))
        with autocast(device, precision):
            logits = policy_logits(policy, part).float()
            ref_logits = policy_logits(reference, part).float()
            values = (value_model(part).float() if value_model is not None
                      else torch.zeros(part.response.shape, device=device))
        parts["logprobs"].append(token_logprobs(logits, part.response, temperature=temperature))
        parts["ref_logprobs"].append(token_logprobs(ref_logits, part.response, temperature=temperature))
        parts["values"].append(values)
        parts["entropy"].append(entropy(logits, temperature=temperature))
    return replace(episodes, **{name: torch.cat(chunks) for name, chunks in parts.items()})


def add_advantages(rollout: Rollout, *, kl_coef: float, gamma: float, lam: float
                   ) -> tuple[Rollout, dict[str, torch.Tensor]]:
    """Per-token rewards (KL penalty + score at the last real token), GAE, whitened advantages
    (Ouyang et al. 2022, Eq. 2; Schulman et al. 2016). Whitening is over the whole batch, before minibatches."""
    mask = rollout.response_mask
    token_rewards, kl_stats = kl_penalized_rewards(rollout.episode_rewards, rollout.logprobs, rollout.ref_logprobs,
                                                   mask, kl_coef=kl_coef)
    advantages, returns = gae(token_rewards, rollout.values, mask, gamma=gamma, lam=lam)
    return replace(rollout, token_rewards=token_rewards, advantages=whiten(advantages, mask), returns=returns), kl_stats
