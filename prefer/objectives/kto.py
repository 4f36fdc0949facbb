"""KTO (Ethayarajh et al. 2024, arXiv:2402.01306): a loss on unpaired binary feedback (one response, good or bad).

Each example is one (prompt, completion, label) triple, TRL's unpaired preference format. Its implicit reward is the
summed log-ratio of its completion under the policy and the frozen reference::

    r(x, y) = log pi_theta(y|x) - log pi_ref(y|x)

KTO (the paper's Eq. 7, the equation TRL's ``KTOTrainer`` cites) values r against a reference point z0, the policy's
KL from the reference, with a sigmoid value function and separate weights for gains and losses::

    desirable y:    loss = lambda_D (1 - sigma(beta (r - z0)))
    undesirable y:  loss = lambda_U (1 - sigma(beta (z0 - r)))
    loss            = (sum over the batch) / number of examples

z0 is not a function of the labelled examples: it is estimated, as in the paper and TRL, from *mismatched* pairs
(prompt x_i with another example's completion y_j)::

    z0 = max(0, mean_i [log pi_theta(y_j|x_i) - log pi_ref(y_j|x_i)])

and no gradient flows through it. TRL builds the mismatched pairs by rotating the completions of each batch by one,
(x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}) (``kto_mismatched_index``), averages the policy-minus-reference log-ratio
over them (``kto_kl_estimate``), averages that over the ranks when distributed, and only then clamps at 0. So
``kto_loss`` does the clamping itself: pass it the (rank-averaged) mean, not a clamped one. Each micro-batch of an
accumulated step has its own z0 in TRL.

The loss is ``KTOTrainer``'s ``loss_type="kto"`` to float64 rounding (``scripts/kto_vs_trl.py`` runs TRL's own
``_compute_loss`` on the same inputs). TRL takes the mean over a micro-batch; ``num_examples`` (the examples of the
whole optimizer step) makes gradient accumulation exact, as ``num_prompts`` does for ``dpo_loss``. The paper's advice
on the weights (its Eq. 8, repeated by TRL's warning): choose them so that lambda_D n_D / (lambda_U n_U) lies in
[1, 4/3], where n_D and n_U count the desirable and undesirable examples.
"""

from __future__ import annotations

import torch

from prefer.objectives.common import check_same_shape, masked_mean

__all__ = ["kto_kl_estimate", "kto_loss", "kto_mismatched_index"]


def _check_labels(labels: torch.Tensor) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.bool:
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"labels must be a torch.bool tensor (True = desirable), got {got}; convert with labels.bool()")


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def kto_mismatched_index(batch_size: int) -> torch.Tensor:
    """TRL's pairing for the KL estimate: prompt i gets completion ``index[i] = i - 1`` (prompt 0 gets the last one).

    ``completions[kto_mismatched_index(n)]`` is the rotation (y_n, y_1, ..., y_{n-1}), so every completion of the
    batch enters the estimate once, with another example's prompt. With ``batch_size`` 1 it is the matched pair.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return torch.roll(torch.arange(batch_size), shifts=1)


def kto_kl_estimate(policy_kl_logps: torch.Tensor, reference_kl_logps: torch.Tensor) -> torch.Tensor:
    """The detached mean log-ratio over the mismatched pairs, before the clamp at 0 (``kto_loss`` clamps).

    Args:
        policy_kl_logps: [M] summed log pi_theta(y_j | x_i) of the mismatched pairs (gradient, if any, is dropped).
        reference_kl_logps: [M] the same under the reference.

    Returns a scalar; average it over ranks (or micro-batches of equal size) before passing it to ``kto_loss``.
    """
    check_same_shape({"policy_kl_logps": policy_kl_logps, "reference_kl_logps": reference_kl_logps})
    if policy_kl_logps.dim() != 1 or policy_kl_logps.numel() == 0:
        raise ValueError(f"policy_kl_logps must be a non-empty [M] tensor, got {list(policy_kl_logps.shape)}")
    policy_kl_logps = _as_float(policy_kl_logps.detach())
    return (policy_kl_logps - reference_kl_logps.detach().to(policy_kl_logps.dtype)).mean()


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float,
    kl_estimate: float | torch.Tensor,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    num_examples: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO over a batch of labelled completions (Ethayarajh et al. 2024, Eq. 7)::

        z0      = max(0, kl_estimate)                          (detached)
        loss_i  = lambda_D (1 - sigma(beta (r_i - z0)))        if labels[i]   (desirable)
                  lambda_U (1 - sigma(beta (z0 - r_i)))        otherwise      (undesirable)
        loss    = sum_i loss_i / num_examples

    Args:
        policy_logps: [B] summed log pi_theta(y_i | x_i) over the completion tokens, with gradient.
        reference_logps: [B] the same under the frozen reference (detached here).
        labels: [B] bool, True = desirable (thumbs up), False = undesirable.
        beta: > 0, the KL-regularisation strength (TRL's default 0.1).
        kl_estimate: the mean policy-minus-reference log-ratio over mismatched pairs (``kto_kl_estimate``, averaged
            over ranks); clamped at 0 and detached here. Pass 0.0 for a fixed reference point at the reference policy.
        desirable_weight, undesirable_weight: lambda_D, lambda_U >= 0 (see the module docstring for the paper's rule).
        num_examples: examples in the whole optimizer step; None = this call's B (TRL's per-batch mean).

    Returns:
        ``(loss, stats)``; stats (detached): ``loss``, ``kl`` (z0 as used), ``rewards_chosen`` / ``rewards_rejected``
        (mean implicit reward beta r of the desirable / undesirable examples; 0 when there are none),
        ``margin`` (their difference; 0 unless both kinds are present), ``accuracy`` (examples whose r lies on
        their label's side of z0), ``num_desirable``, ``num_undesirable``.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not (desirable_weight >= 0 and undesirable_weight >= 0):
        raise ValueError(
            f"desirable_weight and undesirable_weight must be >= 0, got {desirable_weight}, {undesirable_weight}"
        )
    _check_labels(labels)
    check_same_shape({"policy_logps": policy_logps, "reference_logps": reference_logps, "labels": labels})
    if policy_logps.dim() != 1:
        raise ValueError(f"policy_logps must be [B], got {list(policy_logps.shape)}")
    policy_logps = _as_float(policy_logps)
    dtype, device = policy_logps.dtype, policy_logps.device
    z0 = torch.as_tensor(kl_estimate, dtype=dtype, device=device).detach()
    if z0.numel() != 1:
        raise ValueError(f"kl_estimate must be a scalar, got shape {list(z0.shape)}")
    z0 = z0.reshape(()).clamp(min=0)

    r = policy_logps - reference_logps.detach().to(dtype)
    # 1 - sigma(beta (r - z0)) for desirable, 1 - sigma(beta (z0 - r)) for undesirable: one sigmoid with a sign.
    sign = torch.where(labels, 1.0, -1.0).to(dtype)
    weight = torch.where(labels, float(desirable_weight), float(undesirable_weight)).to(dtype)
    per_example = weight * (1.0 - torch.sigmoid(beta * sign * (r - z0)))
    everyone = torch.ones_like(labels)
    loss = masked_mean(per_example, everyone, num_tokens=num_examples)

    with torch.no_grad():
        rewards = beta * r.detach()
        num_desirable, num_undesirable = labels.sum(), (~labels).sum()
        chosen = masked_mean(rewards, labels)
        rejected = masked_mean(rewards, ~labels)
        both = (num_desirable > 0) & (num_undesirable > 0)
        stats = {
            "loss": loss.detach(),
            "kl": z0,
            "rewards_chosen": chosen,
            "rewards_rejected": rejected,
            "margin": torch.where(both, chosen - rejected, torch.zeros((), dtype=dtype, device=device)),
            "accuracy": masked_mean((sign * (r.detach() - z0) > 0).to(dtype), everyone),
            "num_desirable": num_desirable.to(dtype),
            "num_undesirable": num_undesirable.to(dtype),
        }
    return loss, stats
