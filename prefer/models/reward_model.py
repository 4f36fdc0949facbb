"""The InstructGPT reward model: a causal LM's trunk + a scalar head, read at the last real token.

On disk it is a plain Hugging Face `AutoModelForSequenceClassification` (num_labels=1) directory, so any HF tool
loads it; `prefer.json` beside it holds `reward_bias`. Our code never uses HF's pooling (it finds the last token
by looking for the pad id, and here pad == eos, which ends every sequence): it takes the head's per-position
scores and reads them at `last_token_index(attention_mask)`.

Every (prompt, response) pair becomes tokens as in SFT, the labelers and PPO (`prefer.data.encoding`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from prefer.data.encoding import encode_example, fit_to_context
from prefer.errors import PreferError
from prefer.models.build import check_same_vocabulary, context_length, load_tokenizer
from prefer.objectives import last_token_index
from prefer.training import save_model

TextOrPair = str | tuple[str, str]


def right_pad(sequences: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] int64 and attention mask [B, T] bool (True = real token)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = True
    return ids, mask


class RewardModel(nn.Module):
    """r(x, y) = head(trunk(eos + prompt + response + eos))[last real token] + bias.

    model: an HF `...ForSequenceClassification` with num_labels=1 (trunk = `base_model`, head = `score`).
    bias:  a constant added to every reward (set after training so that the demonstrations score a mean of 0).
    """

    def __init__(self, model, tokenizer, *, bias: float = 0.0, path: str | Path | None = None):
        super().__init__()
        if getattr(model, "score", None) is None:
            raise PreferError(
                f"reward model: {type(model).__name__} has no `score` head; only HF sequence "
                "classifiers with a `score` linear layer are supported"
            )
        self.model, self.tokenizer, self.bias, self.path = model, tokenizer, float(bias), path
        self.context = context_length(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T], attention_mask [B, T] bool -> rewards [B] float32.

        Positions count real tokens only, so a row scores the same alone, right-padded (our batches) or
        left-padded (e.g. PPO rollouts: left-padded prompts followed by their responses)."""
        position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.model.base_model(
            input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids
        ).last_hidden_state
        scores = self.model.score(hidden).squeeze(-1).float()  # [B, T]: a reward for every prefix
        last = last_token_index(attention_mask)  # [B]: the eos (or the truncated sequence's last token)
        return scores[torch.arange(len(scores), device=scores.device), last] + self.bias

    def encode(self, items: Sequence[TextOrPair], *, where: Sequence[str] | None = None) -> list[list[int]]:
        """Token ids of each text (text + eos) or (prompt, response) pair, cut to the context."""
        encoded = []
        for i, item in enumerate(items):
            prompt, response = (item, None) if isinstance(item, str) else item
            ids, prompt_length = encode_example(self.tokenizer, prompt, response)
            encoded.append(
                fit_to_context(ids, prompt_length, self.context, where=where[i] if where is not None else f"item {i}")
            )
        return encoded

    def rewards(self, items: Sequence[TextOrPair], *, batch_size: int = 32) -> torch.Tensor:
        """Rewards [B] (on the CPU) of texts or (prompt, response) pairs, in eval mode (dropout off)."""
        return self.rewards_of_ids(self.encode(items), batch_size=batch_size)

    @torch.no_grad()
    def rewards_of_ids(self, encoded: Sequence[list[int]], *, batch_size: int = 32) -> torch.Tensor:
        """Rewards [B] (on the CPU) of sequences already encoded (e.g. a chat rendering), in eval mode."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        results = []
        try:
            for start in range(0, len(encoded), batch_size):
                ids, mask = right_pad(encoded[start : start + batch_size], self.tokenizer.pad_token_id)
                results.append(self(ids.to(device), mask.to(device)).cpu())
        finally:
            self.train(was_training)
        return torch.cat(results) if results else torch.zeros(0)

    def check_same_tokenizer(self, policy_tokenizer) -> None:
        """PreferError unless the policy's vocabulary is the reward model's: PPO hands it token ids."""
        check_same_vocabulary(policy_tokenizer, self.tokenizer, what=f"reward model {self.path or ''}".strip())

    def save(self, path: str | Path, info: dict) -> None:
        """An HF directory (loads with AutoModelForSequenceClassification) + prefer.json with `reward_bias`."""
        save_model(Path(path), self.model, self.tokenizer, None, {**info, "reward_bias": self.bias})


def build_reward_model(causal_lm: str | Path) -> RewardModel:
    """A reward model whose trunk is the causal LM at `causal_lm` and whose scalar head is freshly initialised."""
    path = Path(causal_lm)
    if not (path / "config.json").exists():
        raise PreferError(f"model.init_from: {path} is not a Hugging Face model directory (no config.json)")
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    except Exception as error:  # transformers raises many types; the user needs the path and the cause
        raise PreferError(f"model.init_from: cannot build a reward model from {path}: {error}") from error
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise PreferError(
            f"model.init_from: {path}: the tokenizer has {len(tokenizer)} tokens but the model only "
            f"{model.get_input_embeddings().weight.shape[0]} embeddings; finetune it first (prefer sft)"
        )
    model.config.pad_token_id = tokenizer.pad_token_id  # HF's own pooling needs one; ours does not read it
    return RewardModel(model, tokenizer, path=path)


def load_reward_model(path: str | Path, device: torch.device | str = "cpu") -> RewardModel:
    """A reward model written by `prefer reward` (bias from prefer.json), in eval mode on `device`."""
    path = Path(path)
    info_path = path / "prefer.json"
    if not (path / "config.json").exists() or not info_path.exists():
        raise PreferError(f"reward model: {path} is not a reward model directory (needs config.json and prefer.json)")
    info = json.loads(info_path.read_text())
    if "reward_bias" not in info:
        raise PreferError(f"{info_path}: no 'reward_bias'; is {path} a reward model written by `prefer reward`?")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    except Exception as error:
        raise PreferError(f"reward model: cannot load {path}: {error}") from error
    reward_model = RewardModel(model, load_tokenizer(path), bias=info["reward_bias"], path=path)
    return reward_model.to(device).eval()
