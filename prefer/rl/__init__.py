"""The pieces of policy-gradient RL that `prefer.stages.policy_gradient` composes, each once:

- `rollout`: the `Rollout` container (episodes as one typed batch), the forward passes that fill it, gathering the
  global batch across ranks, and the per-response KL every KL measure uses;
- `episodes`: seeded sampling on every rank, scoring, prompts, PPO-ptx blocks and gradients, the sample table;
- `algorithms`: PPO, RLOO and GRPO as rows of one table (critic or not, advantages, loss).
"""

# The public names of the three modules, re-exported as they declare them.
from prefer.rl import algorithms, episodes, rollout
from prefer.rl.algorithms import *  # noqa: F403
from prefer.rl.episodes import *  # noqa: F403
from prefer.rl.rollout import *  # noqa: F403

__all__ = [*algorithms.__all__, *episodes.__all__, *rollout.__all__]
