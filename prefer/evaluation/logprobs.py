"""Log-probabilities of sampled responses, the one path every per-response KL takes.

    response_logprobs   [B, R] log pi(y_t | x, y_<t) of episodes (left-padded queries, right-padded responses) at a
                        temperature: the forward pass and read-out of PPO's rollouts (prefer.rl.make_rollout), so a
                        KL measured here is the number PPO's penalty sums
    response_kl         [B] sum_t log pi(y_t) - log pi_ref(y_t) over each response: on samples of pi, the k1
                        Monte-Carlo estimate of KL(pi || pi_ref) in nats per response

Which estimator each table reports (they are different quantities, kept apart on purpose):

    RLHF results table `kl` (prefer.evaluation.policy.kl_to_sft)     response_kl, policy samples, KL(pi || pi_SFT)
    `prefer dpo`'s logged val/kl (direct_preference.kl_on_samples)   response_kl, policy samples, KL(pi || pi_ref)
    PHF table `kl` (prefer.evaluation.capability.kl_to_reference)    capability.text_logprobs: KL(reference || model)
        on REFERENCE samples, re-tokenized text (the two may have different tokenizers), control tokens
        renormalised out (see that module's docstring)
    held-out loss per token and byte (capability)                   capability.text_logprobs on documents
    `prefer dpo`'s val/accuracy, margin, loss                       prefer.training.preference_batches'
        ranking_logprobs: DPO's own training objective on held-out rankings
"""

from __future__ import annotations

import torch
from torch import nn

from prefer.models.value import response_logits
from prefer.objectives import masked_sum, token_logprobs
from prefer.rl.rollout import collate
from prefer.training import autocast

__all__ = ["response_kl", "response_logprobs"]


def response_logprobs(
    model: nn.Module,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    response: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float,
    device: torch.device,
    precision: str = "fp32",
) -> torch.Tensor:
    """[B, R] log-probability of every response token (query [B, Q] left-padded, response [B, R] right-padded, both
    on `device`) at `temperature`, position ids over real tokens only (as the sampler saw them); padding columns
    hold the log-probability of the pad id, to be masked by `response_mask`."""
    with autocast(device, precision):
        logits = response_logits(model, query, query_mask, response, response_mask).float()
    return token_logprobs(logits, response, temperature=temperature)


@torch.no_grad()
def response_kl(
    policy: nn.Module,
    reference: nn.Module,
    queries: list[list[int]],
    responses: list[list[int]],
    *,
    temperature: float,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> torch.Tensor:
    """[B] sum over each response's tokens (its eos included where it stopped) of log pi(y_t) - log pi_ref(y_t) at
    `temperature`, `batch_size` episodes per forward pass: on samples of the policy, a Monte-Carlo estimate of
    KL(pi || pi_ref) in nats per response (the k1 estimator PPO's penalty sums). Both models in eval mode."""
    out = []
    for start in range(0, len(queries), batch_size):
        part = slice(start, start + batch_size)
        episode = [t.to(device) for t in collate(queries[part], responses[part], pad_id=pad_id)]
        logprobs = response_logprobs(policy, *episode, temperature=temperature, device=device, precision=precision)
        ref = response_logprobs(reference, *episode, temperature=temperature, device=device, precision=precision)
        out.append(masked_sum(logprobs - ref, episode[3], dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0)
