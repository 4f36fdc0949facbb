"""Training objectives as pure functions of tensors.

Every loss returns ``(loss, stats)``: a scalar tensor with gradient and a dict of detached
scalar tensors for logging. Hyperparameters are keyword-only. Token-level losses take
``num_tokens`` (loss tokens in the whole optimizer step) so that gradient accumulation over
micro-batches and ranks is exact. Shared numerics (masking, normalisation, log-probabilities,
shifting) live once in ``common``.

- PHF (Korbak et al. 2023): ``mle_loss`` (also filtering / conditional training / SFT),
  ``unlikelihood_loss``, ``rwr_loss``, ``awr_loss``.
- InstructGPT (Ouyang et al. 2022): ``ranking_loss`` (reward model), and for PPO
  ``kl_penalized_rewards``, ``gae``, ``whiten``, ``ppo_policy_loss``, ``ppo_value_loss``,
  ``adaptive_kl_coef``, ``entropy``, ``explained_variance``, ``proxy_rewards``; PPO-ptx adds
  ``ptx_coef * mle_loss`` on pretraining data.
- Beyond PPO: ``dpo_loss``, ``ipo_loss``, ``listwise_dpo_loss`` on K-way rankings (``DPO_LOSSES`` by name), and
  the critic-free ``rloo_advantages``, ``rloo_loss``, ``grpo_advantages``, ``grpo_loss`` (k3 KL: ``k3_kl``).
- Binary feedback: ``kto_loss`` (Ethayarajh et al. 2024) on unpaired (prompt, completion, good/bad) examples,
  with its reference point from ``kto_kl_estimate`` over ``kto_mismatched_index`` pairs (``FEEDBACK_LOSSES`` by name).
"""

from prefer.objectives.common import (
    masked_mean,
    masked_sum,
    masked_var,
    next_token_targets,
    token_logprobs,
)
from prefer.objectives.critic_free import grpo_advantages, grpo_loss, k3_kl, rloo_advantages, rloo_loss
from prefer.objectives.kto import kto_kl_estimate, kto_loss, kto_mismatched_index
from prefer.objectives.language_modeling import mle_loss, unlikelihood_loss
from prefer.objectives.ppo import (
    adaptive_kl_coef,
    entropy,
    explained_variance,
    gae,
    kl_penalized_rewards,
    last_token_index,
    ppo_policy_loss,
    ppo_value_loss,
    proxy_rewards,
    whiten,
)
from prefer.objectives.preference import DPO_LOSSES, PreferenceLoss, dpo_loss, ipo_loss, listwise_dpo_loss
from prefer.objectives.ranking import ranking_loss
from prefer.objectives.reward_weighted import awr_loss, rwr_loss

# `prefer dpo`'s losses on unpaired binary feedback, by dpo.loss (DPO_LOSSES holds those on rankings)
FEEDBACK_LOSSES = {"kto": kto_loss}

__all__ = [
    "DPO_LOSSES",
    "FEEDBACK_LOSSES",
    "PreferenceLoss",
    "dpo_loss",
    "grpo_advantages",
    "grpo_loss",
    "ipo_loss",
    "k3_kl",
    "kto_kl_estimate",
    "kto_loss",
    "kto_mismatched_index",
    "listwise_dpo_loss",
    "rloo_advantages",
    "rloo_loss",
    "adaptive_kl_coef",
    "awr_loss",
    "entropy",
    "explained_variance",
    "gae",
    "kl_penalized_rewards",
    "last_token_index",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "mle_loss",
    "next_token_targets",
    "ppo_policy_loss",
    "ppo_value_loss",
    "proxy_rewards",
    "ranking_loss",
    "rwr_loss",
    "token_logprobs",
    "unlikelihood_loss",
    "whiten",
]
