"""One evaluation protocol for every RLHF policy (SFT, best-of-n, PPO, PPO-ptx) on held-out prompts.

    prompts -> the policy's own samples (no value model: nothing is trained here) -> per sample: gold misalignment,
    proxy rewards, KL to the SFT model (summed log-ratio over the response, nats), length
    -> gold mean [95% CI], proxy reward mean, KL mean, win rate against SFT judged by the gold scorer (same prompt,
    ties half, bootstrap interval over prompts), response length, distinct-n, held-out pretraining loss.

Best-of-n is evaluated from a pool of the SFT model's samples (`best_of_n_entry`): its KL is the analytic
log n - (n - 1) / n and its pretraining loss is the SFT model's. Everything is misalignment (lower is better)
except where a name says reward (reward = -misalignment, as PPO optimises it): a row's `gold_misalignment` is
written "gold" in the JSON table, and is minus what a `Rollout`'s gold reward holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from prefer.controls import SamplingControls, control_token_ids
from prefer.encoding import encode_prompt
from prefer.evaluation.logprobs import response_kl
from prefer.evaluation.metrics import bootstrap_ci, distinct_n
from prefer.evaluation.preference import best_of_n_kl, best_of_n_values, win_outcomes
from prefer.evaluation.prompts import Queries
from prefer.sampling import Decoding, sample_per_prompt

__all__ = [
    "BestOfN",
    "MeanInterval",
    "PolicyRow",
    "PolicySamples",
    "WinRate",
    "best_of_n_entry",
    "kl_to_sft",
    "policy_entry",
    "sample_policy",
]


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
    blocked = SamplingControls(prompt="none", block="both").blocked_ids(tokenizer)
    control = control_token_ids(tokenizer)
    decoding = Decoding(max_new_tokens, tokenizer.eos_token_id, temperature, 1.0, blocked, control, batch_size)
    queries = ids if rendered else [encode_prompt(tokenizer, p) for p in texts]
    outputs = sample_per_prompt(model, queries, decoding, k=samples_per_prompt, seed=seed, progress=progress)
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
    per response, the quantity PPO's penalty controls (prefer.evaluation.logprobs.response_kl: the log-prob path
    PPO's rollouts take, and the estimator of DPO's logged val/kl). No value model is involved."""
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


@dataclass(frozen=True)
class MeanInterval:
    """A mean with its 95% bootstrap interval [low, high]; JSON {"mean", "ci": [low, high]}."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: np.ndarray) -> MeanInterval:
        low, high = bootstrap_ci(values)
        return cls(float(values.mean()), low, high)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "ci": [self.low, self.high]}


@dataclass(frozen=True)
class WinRate:
    """How often a policy's sample beats the baseline's on the same prompt (ties half), per prompt averaged."""

    win_rate: float
    low: float
    high: float
    ties: float  # fraction of the comparisons that tied
    prompts: int

    def as_dict(self) -> dict:
        return {"win_rate": self.win_rate, "ci": [self.low, self.high], "ties": self.ties, "prompts": self.prompts}


@dataclass(frozen=True)
class BestOfN:
    n: int
    select_by: str  # the proxy that picks the best of n
    kl_analytic: float  # log n - (n - 1) / n


@dataclass(frozen=True)
class PolicyRow:
    """One policy's row of the RLHF results table. Gold and proxies are scored as misalignment (lower is better);
    proxy_reward is minus the proxies' misalignment. `as_dict` is the JSON row, whose keys keep their published
    names: gold_misalignment is "gold", per_sample_gold_misalignment "per_sample_gold"."""

    gold_misalignment: MeanInterval  # per-prompt means of the gold scorer's misalignment
    proxy_reward: dict[str, MeanInterval]
    kl: MeanInterval | None  # KL to the SFT model, nats per response (None: not measured)
    win_rate: WinRate | None  # against the SFT model (None for SFT itself)
    response_chars: float
    response_tokens: float
    ended: float  # fraction of samples that stopped with eos
    distinct_1: float
    distinct_2: float
    heldout: dict | None  # held-out pretraining loss (prefer.evaluation.capability)
    samples: int
    prompts: int
    per_sample_gold_misalignment: list[float] = field(repr=False)
    best_of_n: BestOfN | None = None

    def as_dict(self) -> dict:
        row = {
            "gold": self.gold_misalignment.as_dict(),
            "proxy_reward": {name: value.as_dict() for name, value in self.proxy_reward.items()},
            "kl": None if self.kl is None else self.kl.as_dict(),
            "win_rate": None if self.win_rate is None else self.win_rate.as_dict(),
            "response_chars": self.response_chars,
            "response_tokens": self.response_tokens,
            "ended": self.ended,
            "distinct_1": self.distinct_1,
            "distinct_2": self.distinct_2,
            "heldout": self.heldout,
            "samples": self.samples,
            "prompts": self.prompts,
            "per_sample_gold": list(self.per_sample_gold_misalignment),
        }
        if self.best_of_n is not None:
            row |= {"n": self.best_of_n.n, "select_by": self.best_of_n.select_by}
            row["kl_analytic"] = self.best_of_n.kl_analytic
        return row


def _per_prompt(values: np.ndarray, num_prompts: int) -> np.ndarray:
    """[P * S] prompt-major values -> [P] means over each prompt's samples (the bootstrap unit is the prompt)."""
    return np.asarray(values, dtype=float).reshape(num_prompts, -1).mean(axis=1)


def _win(
    gold_misalignment: np.ndarray, baseline_gold_misalignment: np.ndarray | None, num_prompts: int
) -> WinRate | None:
    """Win rate against the baseline's samples on the same prompts: each of a prompt's samples against the
    baseline's samples of that prompt, ties half; averaged per prompt, interval by bootstrap over prompts."""
    if baseline_gold_misalignment is None:
        return None
    mine = np.asarray(gold_misalignment, dtype=float).reshape(num_prompts, -1)
    theirs = np.asarray(baseline_gold_misalignment, dtype=float).reshape(num_prompts, -1)
    outcomes = win_outcomes(
        np.repeat(mine, theirs.shape[1], axis=1).ravel(), np.tile(theirs, (1, mine.shape[1])).ravel()
    ).reshape(num_prompts, -1)
    per_prompt = outcomes.mean(axis=1)
    low, high = bootstrap_ci(per_prompt)
    return WinRate(float(per_prompt.mean()), low, high, float((outcomes == 0.5).mean()), num_prompts)


def gold_difference(
    gold_misalignment: Sequence[float], baseline_gold_misalignment: Sequence[float], num_prompts: int
) -> dict:
    """Mean over prompts of (policy's gold misalignment - baseline's), each averaged over its samples of the prompt,
    with a bootstrap interval over prompts ({"mean", "ci"}): an interval that excludes 0 says the policy changed
    the gold score."""
    diff = _per_prompt(gold_misalignment, num_prompts) - _per_prompt(baseline_gold_misalignment, num_prompts)
    return MeanInterval.of(diff).as_dict()


def policy_entry(
    samples: PolicySamples,
    *,
    gold_misalignment: np.ndarray,
    proxies: Mapping[str, np.ndarray],
    kl: np.ndarray | None,
    baseline_gold_misalignment: np.ndarray | None,
    heldout: dict | None,
) -> PolicyRow:
    """The protocol's numbers for one sampled policy. `gold_misalignment` and `proxies` are misalignment per sample
    (proxy rewards are reported as -misalignment), `kl` per sample (None = not measured),
    `baseline_gold_misalignment` the SFT model's on the same prompts (None for SFT itself), `heldout` its held-out
    pretraining loss."""
    prompts = len(samples) // samples.samples_per_prompt
    gold = np.asarray(gold_misalignment, dtype=float)
    lengths = np.array([len(r) for r in samples.responses], dtype=float)
    return PolicyRow(
        gold_misalignment=MeanInterval.of(_per_prompt(gold, prompts)),
        proxy_reward={
            name: MeanInterval.of(_per_prompt(-np.asarray(v, dtype=float), prompts)) for name, v in proxies.items()
        },
        kl=None if kl is None else MeanInterval.of(_per_prompt(kl, prompts)),
        win_rate=_win(gold, baseline_gold_misalignment, prompts),
        response_chars=float(lengths.mean()),
        response_tokens=float(np.mean([len(ids) for ids in samples.response_ids])),
        ended=float(np.mean(samples.ended)),
        distinct_1=distinct_n(samples.responses, 1),
        distinct_2=distinct_n(samples.responses, 2),
        heldout=heldout,
        samples=len(samples),
        prompts=prompts,
        per_sample_gold_misalignment=gold.tolist(),
    )


def best_of_n_entry(
    pool: PolicySamples,
    n: int,
    *,
    gold_misalignment: np.ndarray,
    proxies: Mapping[str, np.ndarray],
    select_by: str,
    baseline_gold_misalignment: np.ndarray,
    heldout: dict | None,
) -> PolicyRow:
    """Best-of-n against proxy `select_by`, from a pool of N samples per prompt of the SFT model: N // n disjoint
    draws per prompt, each the sample of n with the highest proxy reward. KL is the analytic log n - (n - 1)/n;
    the win rate compares every draw with the SFT model's evaluation samples of the same prompt."""
    prompts = len(pool) // pool.samples_per_prompt
    shape = (prompts, pool.samples_per_prompt)
    reward = -np.asarray(proxies[select_by], dtype=float).reshape(shape)
    pick = lambda values: best_of_n_values(np.asarray(values, dtype=float).reshape(shape), reward, n)
    chosen_gold = pick(gold_misalignment)  # [P, N // n]
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
    row = policy_entry(
        chosen,
        gold_misalignment=chosen_gold.ravel(),
        proxies={name: pick(v).ravel() for name, v in proxies.items()},
        kl=kl,
        baseline_gold_misalignment=baseline_gold_misalignment,
        heldout=heldout,
    )
    return replace(row, best_of_n=BestOfN(n, select_by, best_of_n_kl(n)))
