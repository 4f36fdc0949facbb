"""One evaluation protocol for every RLHF policy (SFT, best-of-n, PPO, PPO-ptx) on held-out prompts.

    prompts -> the policy's own samples (no value model: nothing is trained here) -> per sample: gold misalignment,
    proxy rewards, KL to the SFT model (summed log-ratio over the response, nats), length
    -> gold mean [95% CI], proxy reward mean, KL mean, win rate against SFT judged by the gold scorer (same prompt,
    ties half, bootstrap interval over prompts), response length, distinct-n, held-out pretraining loss.

Best-of-n is evaluated from a pool of the SFT model's samples (`best_of_n_entry`): its KL is the analytic
log n - (n - 1) / n and its pretraining loss is the SFT model's. Everything is misalignment (lower is better)
except where a name says reward (reward = -misalignment, as PPO optimises it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from prefer.data.encoding import encode_prompt
from prefer.evaluation.metrics import bootstrap_ci, distinct_n
from prefer.evaluation.misalignment import SamplingControls
from prefer.evaluation.preference import best_of_n_kl, best_of_n_values, win_outcomes
from prefer.evaluation.prompts import Queries
from prefer.models.build import control_token_ids
from prefer.rl import response_kl
from prefer.sampling import sample_per_prompt

__all__ = ["PolicySamples", "best_of_n_entry", "kl_to_sft", "policy_entry", "sample_policy"]


@dataclass(frozen=True)
class PolicySamples:
    """S samples per prompt, prompt-major: sample i answers prompts[i // S]."""

    prompts: list[str]  # one per sample
    responses: list[str]  # decoded, special tokens removed
    response_ids: list[list[int]]  # sampled ids, without the eos
    ended: list[bool]  # the sample stopped with eos before max_new_tokens
    samples_per_prompt: int
    queries: list[list[int]] | None = None  # one per sample: the ids it was prompted with; None = encode_prompt's

    def __len__(self) -> int:
        return len(self.responses)


def sample_policy(
    model,
    tokenizer,
    prompts: Sequence[str] | Queries,
    *,
    samples_per_prompt: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
    progress: bool = False,
) -> PolicySamples:
    """The policy's responses, prompted as SFT, the reward model and PPO see a prompt (text prompts: `encode_prompt`;
    rendered `Queries`, e.g. conversations: their ids), with the control tokens blocked (as the labelers sample), at
    `temperature` without top-p: the policy's own distribution."""
    rendered = isinstance(prompts, Queries)
    texts, ids = (prompts.texts, prompts.ids) if rendered else (list(prompts), None)
    outputs = sample_per_prompt(
        model,
        ids if rendered else [encode_prompt(tokenizer, p) for p in texts],
        k=samples_per_prompt,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        temperature=temperature,
        blocked_token_ids=SamplingControls(prompt="none", block="both").blocked_ids(tokenizer),
        control_token_ids=control_token_ids(tokenizer),
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    return PolicySamples(
        [p for p in texts for _ in range(samples_per_prompt)],
        [tokenizer.decode(out, skip_special_tokens=True) for out in outputs],
        outputs,
        [len(out) < max_new_tokens for out in outputs],
        samples_per_prompt,
        [q for q in ids for _ in range(samples_per_prompt)] if rendered else None,
    )


def kl_to_sft(
    policy, reference, tokenizer, samples: PolicySamples, *, temperature: float, batch_size: int
) -> np.ndarray:
    """Per sample: log pi(y|x) - log pi_SFT(y|x) summed over the response tokens (its eos included when it stopped),
    on the policy's own samples at the sampling temperature: a Monte-Carlo estimate of KL(pi || pi_SFT) in nats
    per response, the quantity PPO's penalty controls (prefer.rl.response_kl, the log-prob path PPO's rollouts
    take). No value model is involved."""
    eos = tokenizer.eos_token_id
    queries = samples.queries or [encode_prompt(tokenizer, p) for p in samples.prompts]
    responses = [ids + [eos] if ended else list(ids) for ids, ended in zip(samples.response_ids, samples.ended)]
    responses = [r if r else [eos] for r in responses]  # max_new_tokens >= 1, so only an immediate eos is empty
    kl = response_kl(
        policy,
        reference,
        queries,
        responses,
        temperature=temperature,
        pad_id=eos,
        batch_size=batch_size,
        device=next(policy.parameters()).device,
    )
    return kl.numpy().astype(float)


def _mean_ci(values: np.ndarray) -> dict:
    low, high = bootstrap_ci(values)
    return {"mean": float(values.mean()), "ci": [low, high]}


def _per_prompt(values: np.ndarray, num_prompts: int) -> np.ndarray:
    """[P * S] prompt-major values -> [P] means over each prompt's samples (the bootstrap unit is the prompt)."""
    return np.asarray(values, dtype=float).reshape(num_prompts, -1).mean(axis=1)


def _win(gold: np.ndarray, baseline_gold: np.ndarray | None, num_prompts: int) -> dict | None:
    """Win rate against the baseline's samples on the same prompts: each of a prompt's samples against the
    baseline's samples of that prompt, ties half; averaged per prompt, interval by bootstrap over prompts."""
    if baseline_gold is None:
        return None
    mine = np.asarray(gold, dtype=float).reshape(num_prompts, -1)
    theirs = np.asarray(baseline_gold, dtype=float).reshape(num_prompts, -1)
    outcomes = win_outcomes(
        np.repeat(mine, theirs.shape[1], axis=1).ravel(), np.tile(theirs, (1, mine.shape[1])).ravel()
    ).reshape(num_prompts, -1)
    per_prompt = outcomes.mean(axis=1)
    low, high = bootstrap_ci(per_prompt)
    return {
        "win_rate": float(per_prompt.mean()),
        "ci": [low, high],
        "ties": float((outcomes == 0.5).mean()),
        "prompts": num_prompts,
    }


def gold_difference(gold: Sequence[float], baseline_gold: Sequence[float], num_prompts: int) -> dict:
    """Mean over prompts of (policy's gold - baseline's gold), each averaged over its samples of the prompt, with a
    bootstrap interval over prompts: an interval that excludes 0 says the policy changed the gold score."""
    diff = _per_prompt(gold, num_prompts) - _per_prompt(baseline_gold, num_prompts)
    return _mean_ci(diff)


def policy_entry(
    samples: PolicySamples,
    *,
    gold: np.ndarray,
    proxies: Mapping[str, np.ndarray],
    kl: np.ndarray | None,
    baseline_gold: np.ndarray | None,
    heldout: dict | None,
) -> dict:
    """The protocol's numbers for one sampled policy. `gold` and `proxies` are misalignment per sample (proxy
    rewards are reported as -misalignment), `kl` per sample (None = not measured), `baseline_gold` the SFT
    model's gold misalignment on the same prompts (None for SFT itself), `heldout` its held-out pretraining loss."""
    prompts = len(samples) // samples.samples_per_prompt
    gold = np.asarray(gold, dtype=float)
    lengths = np.array([len(r) for r in samples.responses], dtype=float)
    entry = {
        "gold": _mean_ci(_per_prompt(gold, prompts)),
        "proxy_reward": {
            name: _mean_ci(_per_prompt(-np.asarray(v, dtype=float), prompts)) for name, v in proxies.items()
        },
        "kl": None if kl is None else _mean_ci(_per_prompt(kl, prompts)),
        "win_rate": _win(gold, baseline_gold, prompts),
        "response_chars": float(lengths.mean()),
        "response_tokens": float(np.mean([len(ids) for ids in samples.response_ids])),
        "ended": float(np.mean(samples.ended)),
        "distinct_1": distinct_n(samples.responses, 1),
        "distinct_2": distinct_n(samples.responses, 2),
        "heldout": heldout,
        "samples": len(samples),
        "prompts": prompts,
        "per_sample_gold": gold.tolist(),
    }
    return entry


def best_of_n_entry(
    pool: PolicySamples,
    n: int,
    *,
    gold: np.ndarray,
    proxies: Mapping[str, np.ndarray],
    select_by: str,
    baseline_gold: np.ndarray,
    heldout: dict | None,
) -> dict:
    """Best-of-n against proxy `select_by`, from a pool of N samples per prompt of the SFT model: N // n disjoint
    draws per prompt, each the sample of n with the highest proxy reward. KL is the analytic log n - (n - 1)/n;
    the win rate compares every draw with the SFT model's evaluation samples of the same prompt."""
    prompts = len(pool) // pool.samples_per_prompt
    shape = (prompts, pool.samples_per_prompt)
    reward = -np.asarray(proxies[select_by], dtype=float).reshape(shape)
    pick = lambda values: best_of_n_values(np.asarray(values, dtype=float).reshape(shape), reward, n)
    chosen_gold = pick(gold)  # [P, N // n]
    index = pick(np.arange(len(pool)).reshape(shape)).astype(int).ravel()
    chosen = PolicySamples(
        [pool.prompts[i] for i in index],
        [pool.responses[i] for i in index],
        [pool.response_ids[i] for i in index],
        [pool.ended[i] for i in index],
        chosen_gold.shape[1],
        None if pool.queries is None else [pool.queries[i] for i in index],
    )
    kl = np.full(len(chosen), best_of_n_kl(n))
    entry = policy_entry(
        chosen,
        gold=chosen_gold.ravel(),
        proxies={name: pick(v).ravel() for name, v in proxies.items()},
        kl=kl,
        baseline_gold=baseline_gold,
        heldout=heldout,
    )
    entry.update({"n": n, "select_by": select_by, "kl_analytic": best_of_n_kl(n)})
    return entry
