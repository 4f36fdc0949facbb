"""A trained reward model as a scorer: misalignment = -reward (lower is better), like every other scorer.

`get_scorer("rm:/path/to/reward_model")` returns one. `score(texts)` reads whole texts (text + eos);
`score_pairs(prompts, responses)` tokenizes prompt and response separately, exactly as the reward model was
trained, which is what PPO needs (a whole text may tokenize differently across the prompt/response seam).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefer.devices import resolve_device
from prefer.errors import PreferError
from prefer.models.reward_model import load_reward_model


class RewardModelScorer:
    """score(texts) -> list[float] of -reward; the reward model stays loaded (eval mode) on `device`."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 32):
        self.path = Path(path)
        self.reward_model = load_reward_model(self.path, resolve_device(device))
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return self.score(texts)

    def score(self, texts: Sequence[str]) -> list[float]:
        return (-self.reward_model.rewards(list(texts), batch_size=self.batch_size)).tolist()

    def score_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise PreferError(f"score_pairs: {len(prompts)} prompts but {len(responses)} responses")
        pairs = list(zip(prompts, responses))
        return (-self.reward_model.rewards(pairs, batch_size=self.batch_size)).tolist()

    def check_same_tokenizer(self, policy_tokenizer) -> None:
        """PreferError unless the policy shares the reward model's vocabulary."""
        self.reward_model.check_same_tokenizer(policy_tokenizer)
