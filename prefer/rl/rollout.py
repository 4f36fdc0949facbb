"""Episodes as one typed batch and the forward passes that score them token by token.

An episode is a prompt (query) and the policy's response to it. Queries are LEFT-padded and responses RIGHT-padded,
so that every response starts at the same column Q of the concatenated sequence and one slice of the logits,
`[:, Q - 1 : -1]`, predicts every response token of every row. Position ids count real tokens only, as in
`prefer.sampling`, so a padded row sees the positions it saw when it was sampled.

The reward arithmetic (KL penalty, score on the last real token, GAE, whitening) is `prefer.objectives`; this
module only lines tensors up.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.distributed as torch_dist
from torch import nn

from prefer.models.value import response_logits
from prefer.objectives import entropy, gae, kl_penalized_rewards, token_logprobs, whiten
from prefer.training import Distributed, all_gather_rows, autocast

__all__ = [
    "Rollout",
    "add_advantages",
    "collate",
    "gather_rollout",
    "make_rollout",
    "policy_logits",
]


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
        return Rollout(
            **{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[rows]) for f in fields(self)}
        )


def collate(
    queries: list[list[int]], responses: list[list[int]], *, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token lists -> (query [B, Q], query_mask [B, Q], response [B, R], response_mask [B, R])."""
    if any(not r for r in responses):
        raise ValueError("every response needs at least one token (the eos of an empty response counts)")
    batch, width, length = len(queries), max(map(len, queries)), max(map(len, responses))
    query = torch.full((batch, width), pad_id, dtype=torch.long)
    response = torch.full((batch, length), pad_id, dtype=torch.long)
    for row, (q, r) in enumerate(zip(queries, responses)):
        query[row, width - len(q) :] = torch.tensor(q, dtype=torch.long)  # left padding
        response[row, : len(r)] = torch.tensor(r, dtype=torch.long)  # right padding
    query_lengths = torch.tensor([len(q) for q in queries])
    response_lengths = torch.tensor([len(r) for r in responses])
    query_mask = torch.arange(width)[None, :] >= (width - query_lengths)[:, None]
    response_mask = torch.arange(length)[None, :] < response_lengths[:, None]
    return query, query_mask, response, response_mask


def policy_logits(model: nn.Module, episodes: Rollout) -> torch.Tensor:
    """[B, R, V] logits of a causal LM aligned with `episodes.response`: column Q - 1 + t predicts response[:, t]."""
    return response_logits(model, episodes.query, episodes.query_mask, episodes.response, episodes.response_mask)


@torch.no_grad()
def make_rollout(
    policy: nn.Module,
    reference: nn.Module,
    value_model: nn.Module | None,
    queries: list[list[int]],
    responses: list[list[int]],
    *,
    rewards: torch.Tensor,
    gold: torch.Tensor,
    temperature: float,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    policy_logprobs: bool = True,
) -> Rollout:
    """Episodes -> a Rollout with old log-probs, reference log-probs, values and entropy (rewards not yet).

    Every model must be in eval mode (dropout off), as it is during sampling and the PPO update: the ratio of the
    first minibatch is then exactly 1, and the KL to the reference measures the policy, not dropout noise.
    `value_model=None` (evaluation, best-of-n: nothing is trained, so there is no critic) leaves the values 0.
    `policy_logprobs=False` skips the policy's forward and leaves `logprobs` and `entropy` NaN, for the update to
    fill from its own forward (`update_on_batch(old_logprobs_from_update=True)`: one optimizer step per batch)."""
    query, query_mask, response, response_mask = collate(queries, responses, pad_id=pad_id)
    empty = torch.zeros(response.shape, dtype=torch.float32)
    episodes = Rollout(
        query.to(device),
        query_mask.to(device),
        response.to(device),
        response_mask.to(device),
        empty,
        empty,
        empty,
        empty,
        rewards.float().to(device),
        gold.float().to(device),
    )
    parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "ref_logprobs": [], "values": [], "entropy": []}
    for start in range(0, len(episodes), batch_size):
        part = episodes.select(slice(start, start + batch_size))
        with autocast(device, precision):
            logits = policy_logits(policy, part).float() if policy_logprobs else None
            ref_logits = policy_logits(reference, part).float()
            values = (
                value_model(part).float()
                if value_model is not None
                else torch.zeros(part.response.shape, device=device)
            )
        if policy_logprobs:
            parts["logprobs"].append(token_logprobs(logits, part.response, temperature=temperature))
            parts["entropy"].append(entropy(logits, temperature=temperature))
        else:
            unknown = torch.full(part.response.shape, float("nan"), device=device)
            parts["logprobs"].append(unknown)
            parts["entropy"].append(unknown)
        parts["ref_logprobs"].append(token_logprobs(ref_logits, part.response, temperature=temperature))
        parts["values"].append(values)
    return replace(episodes, **{name: torch.cat(chunks) for name, chunks in parts.items()})


def add_advantages(
    rollout: Rollout, *, kl_coef: float, gamma: float, lam: float
) -> tuple[Rollout, dict[str, torch.Tensor]]:
    """Per-token rewards (KL penalty + score at the last real token), GAE, whitened advantages
    (Ouyang et al. 2022, Eq. 2; Schulman et al. 2016). Whitening is over the whole batch, before minibatches."""
    mask = rollout.response_mask
    token_rewards, kl_stats = kl_penalized_rewards(
        rollout.episode_rewards, rollout.logprobs, rollout.ref_logprobs, mask, kl_coef=kl_coef
    )
    advantages, returns = gae(token_rewards, rollout.values, mask, gamma=gamma, lam=lam)
    return replace(rollout, token_rewards=token_rewards, advantages=whiten(advantages, mask), returns=returns), kl_stats


# ------------------------------------------------------------------ shared by the policy-gradient stages


def gather_rollout(rollout: Rollout, dist: Distributed, *, pad_id: int) -> Rollout:
    """Every rank's episodes, in rank order, on every rank: the iteration's global batch. Queries are left-padded
    and responses right-padded to the longest of any rank, as one process would have padded them. The tensors are
    small next to the models (a few numbers per token)."""
    if dist.world_size == 1:
        return rollout
    widths = torch.tensor([rollout.query.shape[1], rollout.response.shape[1]], device=rollout.query.device)
    torch_dist.all_reduce(widths, op=torch_dist.ReduceOp.MAX)
    query_width, response_width = widths.tolist()
    gathered = {}
    for field in fields(rollout):
        tensor = getattr(rollout, field.name)
        if tensor is not None and tensor.dim() == 2:  # [B, Q] or [B, R]
            left = field.name.startswith("query")
            filler = torch.full(
                (tensor.shape[0], (query_width if left else response_width) - tensor.shape[1]),
                pad_id if field.name in ("query", "response") else 0,
                dtype=tensor.dtype,
                device=tensor.device,
            )  # masks pad with False, per-token numbers with 0
            tensor = torch.cat([filler, tensor] if left else [tensor, filler], dim=1)
        gathered[field.name] = None if tensor is None else all_gather_rows(tensor, dist)
    return Rollout(**gathered)
