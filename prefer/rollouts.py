"""Rollouts of every policy-gradient stage (PPO, RLOO, GRPO): sampled episodes as one typed batch, the forward passes
that score them token by token, and the pieces those stages share (seeded sampling on every rank, gathering the
global batch, prompts, PPO-ptx blocks and gradients, the sample table).

An episode is a prompt (query) and the policy's response to it. Queries are LEFT-padded and responses RIGHT-padded,
so that every response starts at the same column Q of the concatenated sequence and one slice of the logits,
`[:, Q - 1 : -1]`, predicts every response token of every row. Position ids count real tokens only, as in
`prefer.sampling`, so a padded row sees the positions it saw when it was sampled.

The reward arithmetic (KL penalty, score on the last real token, GAE, whitening) is `prefer.objectives.ppo`;
this module only lines tensors up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from prefer.data.annotate import AnnotatedDocument
from prefer.data.corpora import load_documents, split_by_source
from prefer.data.encoding import encode_query, render_generation_prompt
from prefer.data.formats import read_prompts, record_locations
from prefer.data.packing import TokenBlocks, pack_documents
from prefer.errors import PreferError
from prefer.files import atomic_path
from prefer.models.heads import ValueHead
from prefer.objectives import (
    entropy,
    gae,
    kl_penalized_rewards,
    mle_loss,
    next_token_targets,
    proxy_rewards,
    token_logprobs,
    whiten,
)
from prefer.sampling import sample
from prefer.scorers import score_responses
from prefer.training import Distributed, MetricsLog, accumulate_stats, all_gather_rows, autocast, gradient_sync

__all__ = [
    "Rollout",
    "ValueModel",
    "SharedTrunkValueModel",
    "collate",
    "policy_logits",
    "make_rollout",
    "add_advantages",
    "ptx_backward",
    "sample_responses",
    "sampling_chunk",
    "gather_rollout",
    "read_queries",
    "pretraining_blocks",
    "samples_log",
    "log_samples",
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


def _sequence(query, query_mask, response, response_mask):
    """Concatenated inputs [B, Q + R]: ids, attention mask, position ids over real tokens only."""
    ids = torch.cat([query, response], dim=1)
    attention = torch.cat([query_mask, response_mask], dim=1).long()
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    return ids, attention, positions


def policy_logits(model: nn.Module, episodes: Rollout) -> torch.Tensor:
    """[B, R, V] logits of a causal LM aligned with `episodes.response`: column Q - 1 + t predicts response[:, t]."""
    ids, attention, positions = _sequence(
        episodes.query, episodes.query_mask, episodes.response, episodes.response_mask
    )
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits  # [B, Q + R, V]
    return logits[:, episodes.query.shape[1] - 1 : -1]


class ValueModel(nn.Module):
    """V(query, response_<t): a transformer trunk and a scalar head per position, separate from the policy.

    InstructGPT initialises it from the reward model (its trunk and score head); without one it is the SFT trunk
    with a zero head, so that the first advantages are the rewards themselves."""

    def __init__(self, trunk: nn.Module, head: ValueHead):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, episodes: Rollout) -> torch.Tensor:
        """[B, R] values aligned like `policy_logits`: the value of the state before response token t."""
        ids, attention, positions = _sequence(
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
) -> Rollout:
    """Episodes -> a Rollout with old log-probs, reference log-probs, values and entropy (rewards not yet).

    Every model must be in eval mode (dropout off), as it is during sampling and the PPO update: the ratio of the
    first minibatch is then exactly 1, and the KL to the reference measures the policy, not dropout noise.
    `value_model=None` (evaluation, best-of-n: nothing is trained, so there is no critic) leaves the values 0."""
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
            logits = policy_logits(policy, part).float()
            ref_logits = policy_logits(reference, part).float()
            values = (
                value_model(part).float()
                if value_model is not None
                else torch.zeros(part.response.shape, device=device)
            )
        parts["logprobs"].append(token_logprobs(logits, part.response, temperature=temperature))
        parts["ref_logprobs"].append(token_logprobs(ref_logits, part.response, temperature=temperature))
        parts["values"].append(values)
        parts["entropy"].append(entropy(logits, temperature=temperature))
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


def ptx_backward(
    policy,
    blocks: torch.Tensor,
    *,
    ptx_coef: float,
    micro_batch_size: int,
    device,
    precision: str,
    num_tokens: float | None = None,
) -> dict[str, float]:
    """Accumulate the gradient of ptx_coef x (mean NLL of pretraining blocks [N, T]): minimising it maximises
    gamma E_pretrain[log pi(x)] of Ouyang et al. 2022, Eq. 2. Normalised by `num_tokens`, the step's pretraining
    tokens (None = N x (T - 1); under torchrun: all ranks' blocks, divided by the number of ranks). The policy's
    gradients are reduced over the ranks in the last micro-batch."""
    num_tokens = blocks.shape[0] * (blocks.shape[1] - 1) if num_tokens is None else num_tokens
    totals: dict[str, float] = {}
    starts = range(0, blocks.shape[0], micro_batch_size)
    for start in starts:
        ids = blocks[start : start + micro_batch_size].to(device)
        (targets,) = next_token_targets(ids)  # [N, T - 1]
        with gradient_sync([policy], sync=start == starts[-1]):
            with autocast(device, precision):
                logits = policy(ids).logits[:, :-1]
            loss, _ = mle_loss(
                logits.float(), targets, torch.ones_like(targets, dtype=torch.bool), num_tokens=num_tokens
            )
            (ptx_coef * loss).backward()
        accumulate_stats(totals, {"ptx/loss": loss.detach()}, fraction=1.0)
    return totals


def sampling_chunk(sample_batch_size: int | None, *, micro_batch_size: int, episodes_per_rank: int) -> int:
    """Episodes per KV-cached sampling loop: `rollout.sample_batch_size`, or the micro-batch when unset. It must
    divide each rank's episodes, so that every chunk (and its generator's seed) is the same on any number of ranks."""
    chunk = sample_batch_size or micro_batch_size
    if episodes_per_rank % chunk:
        raise PreferError(
            f"config: rollout.sample_batch_size {chunk} must divide each rank's episodes per iteration "
            f"({episodes_per_rank})"
        )
    return chunk


def sample_responses(
    policy,
    queries: list[list[int]],
    *,
    first: int,
    chunk: int,
    seed: int,
    iteration: int,
    max_new_tokens: int,
    eos_token_id: int,
    temperature: float,
) -> list[list[int]]:
    """Responses to `queries`, the episodes first, first + 1, ... of an iteration's global batch, sampled in chunks
    of `chunk` episodes, each chunk with its own generator seeded by (seed, iteration, chunk's index in the global
    batch). An episode's response therefore depends on the run's seed and sampling chunk (`sampling_chunk`), not on
    how many ranks share the batch nor which one draws it; `first` must be a multiple of `chunk`."""
    responses: list[list[int]] = []
    for start in range(0, len(queries), chunk):
        index = (first + start) // chunk
        entropy = np.random.SeedSequence([seed, iteration, index]).generate_state(1, dtype=np.uint64)[0]
        responses += sample(
            policy,
            queries[start : start + chunk],
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            temperature=temperature,
            top_p=1.0,
            batch_size=chunk,
            generator=torch.Generator().manual_seed(int(entropy)),
        )
    return responses


@dataclass(frozen=True)
class ScoredEpisodes:
    """Sampled responses made into episodes and scored (N episodes).

    responses: N token lists, eos appended where the policy stopped (stopping is an action; its reward lands there)
    texts:     N strings, prompt + decoded response (what a text scorer and the gold scorer read)
    stopped:   [N] bool, the response ended before max_new_tokens
    rewards:   [N] float, proxy reward: -misalignment, less the missing-eos penalty
    gold:      [N] float, -gold misalignment (logged, never rewarded); NaN without a gold scorer
    """

    responses: list[list[int]]
    texts: list[str]
    stopped: torch.Tensor
    rewards: torch.Tensor
    gold: torch.Tensor


def score_episodes(
    sampled: list[list[int]],
    prompts: list[str],
    tokenizer,
    *,
    scorer,
    gold_scorer,
    max_new_tokens: int,
    missing_eos_penalty: float | None,
) -> ScoredEpisodes:
    """The step between sampling and the rollout, shared by PPO and the critic-free stages. A reward model reads
    (prompt, response) tokenized apart, exactly as it was trained and as the labelers score (the joined text can
    tokenize differently across the seam, e.g. "):\n" + "    return"): `score_responses`."""
    eos = tokenizer.eos_token_id
    stopped = torch.tensor([len(r) < max_new_tokens for r in sampled])
    responses = [r + [eos] if s else r for r, s in zip(sampled, stopped.tolist())]
    replies = [tokenizer.decode(r, skip_special_tokens=True) for r in sampled]
    texts = [prompt + reply for prompt, reply in zip(prompts, replies)]
    rewards = proxy_rewards(
        score_responses(scorer, prompts, replies), stopped=stopped, missing_eos_penalty=missing_eos_penalty
    )
    gold = (
        -torch.tensor(gold_scorer(texts), dtype=torch.float32)
        if gold_scorer is not None
        else torch.full_like(rewards, float("nan"))
    )
    return ScoredEpisodes(responses, texts, stopped, rewards, gold)


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


def read_queries(path: str, tokenizer, *, max_length: int) -> tuple[list[str], list[list[int]]]:
    """Prompts and their token ids: eos (the document start the model was trained with) + the prompt's tokens, or
    for a conversation its rendering with the chat template and the generation prompt (plainly without a template;
    prefer.data.encoding.encode_query). The returned texts are what the scorers see as the prompt."""
    prompts, queries = [], []
    for prompt, where in zip(read_prompts(path), record_locations(path)):
        ids = encode_query(tokenizer, prompt.prompt, prompt.messages)
        if len(ids) > max_length:
            raise PreferError(
                f"{where}: the prompt is {len(ids)} tokens; with max_new_tokens it must fit "
                f"the model's context (at most {max_length} prompt tokens)"
            )
        prompts.append(
            prompt.prompt if prompt.messages is None else render_generation_prompt(tokenizer, prompt.messages)
        )
        queries.append(ids)
    return prompts, queries


def pretraining_blocks(
    source: str, tokenizer, *, block_size: int, max_bytes: int | None
) -> tuple[TokenBlocks, TokenBlocks]:
    """(train, held-out) blocks of a pretraining corpus for PPO-ptx; scores are unused (zero)."""
    documents, _ = load_documents(source, max_bytes=max_bytes)
    annotated = [AnnotatedDocument(d.segments, (0.0,) * len(d.segments), d.source) for d in documents]
    train, validation = split_by_source(annotated, validation_fraction=0.05)
    blocks = (
        pack_documents(train, tokenizer, block_size=block_size),
        pack_documents(validation, tokenizer, block_size=block_size),
    )
    if len(blocks[0]) == 0 or len(blocks[1]) == 0:
        raise PreferError(
            f"ptx_source: {source!r} is too small for one training and one held-out block of {block_size} tokens"
        )
    return blocks


def samples_log(run_dir: Path, *, resume_step: int | None) -> Path:
    """samples.jsonl, trimmed like metrics.jsonl on resume (iterations after the checkpoint are about to rerun)."""
    path = run_dir / "samples.jsonl"
    if path.exists():
        kept = (
            [line for line in path.read_text().splitlines() if json.loads(line)["iteration"] <= resume_step]
            if resume_step is not None
            else []
        )
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
    return path


def log_samples(
    path: Path, log: MetricsLog, iteration: int, prompts: list[str], texts: list[str], rollout: Rollout, count: int
) -> None:
    rows = [
        {
            "iteration": iteration,
            "prompt": prompt,
            "response": text[len(prompt) :],
            "proxy": rollout.episode_rewards[i].item(),
            "gold": None if rollout.gold[i].isnan() else rollout.gold[i].item(),
        }
        for i, (prompt, text) in enumerate(zip(prompts[:count], texts[:count]))
    ]
    with path.open("a") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if log.writer is not None and rows:
        table = "\n\n".join(
            f"**proxy {r['proxy']:.3f}, gold {r['gold']}** `{r['prompt']}` -> `{r['response']}`" for r in rows
        )
        log.writer.add_text("samples", table, iteration)
