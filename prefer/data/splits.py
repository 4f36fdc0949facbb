"""The seeded train / validation split of a stage's examples (SFT, reward model, DPO), apart from the file formats
(`prefer.data.formats`) so that those stay torch-free: the labeling app reads and writes them without torch."""

from __future__ import annotations

import torch


def split_validation(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices: a seeded shuffle, `fraction` of them held out (none when there are too few)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = min(count - 1, round(fraction * count))
    return sorted(order[held_out:]), sorted(order[:held_out])
