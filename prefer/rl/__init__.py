"""The pieces of policy-gradient RL that `prefer.stages.policy_gradient` composes, each once:

- `rollout`: the `Rollout` container (episodes as one typed batch), the forward passes that fill it, gathering the
  global batch across ranks, and the per-response KL every KL measure uses;
- `episodes`: seeded sampling on every rank, scoring, prompts, PPO-ptx blocks and gradients, the sample table;
- `algorithms`: PPO, RLOO and GRPO as rows of one table (critic or not, advantages, loss).
"""

from prefer.rl.algorithms import (
    ALGORITHMS,
    GROUP_RULES,
    Algorithm,
    GroupRule,
    PTXBatches,
    group_advantages,
    group_backward,
    ppo_advantages,
    ppo_backward,
    update_on_batch,
)
from prefer.rl.episodes import (
    ScoredEpisodes,
    log_samples,
    pretraining_blocks,
    ptx_backward,
    read_queries,
    rollout_batch,
    sample_responses,
    samples_log,
    sampling_chunk,
    score_episodes,
)
from prefer.rl.rollout import (
    Rollout,
    add_advantages,
    collate,
    gather_rollout,
    make_rollout,
    policy_logits,
    response_kl,
)

__all__ = [
    "ALGORITHMS",
    "GROUP_RULES",
    "Algorithm",
    "GroupRule",
    "PTXBatches",
    "Rollout",
    "ScoredEpisodes",
    "add_advantages",
    "collate",
    "gather_rollout",
    "group_advantages",
    "group_backward",
    "log_samples",
    "make_rollout",
    "policy_logits",
    "ppo_advantages",
    "ppo_backward",
    "pretraining_blocks",
    "ptx_backward",
    "read_queries",
    "response_kl",
    "rollout_batch",
    "sample_responses",
    "samples_log",
    "sampling_chunk",
    "score_episodes",
    "update_on_batch",
]
