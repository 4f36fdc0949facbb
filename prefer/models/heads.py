"""Scalar heads on a causal LM's final hidden state."""

from __future__ import annotations

import torch
from torch import nn


class ValueHead(nn.Module):
    """V(prefix): one scalar per position from the final hidden state [B, T, H] -> [B, T].
    Starts at zero so that early advantages are the rewards themselves."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)
