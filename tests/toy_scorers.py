"""Toy judges for the stage tests, named in configs as a user names their own scorer: `spec("not_a")` is
`py:/abs/path/to/this/file.py:not_a` (prefer.scorers.user), which also resolves in worker processes and under
torchrun. Misalignment: lower is better."""

import math
from pathlib import Path


def spec(name: str) -> str:
    """The user-scorer spec of the function `name` of this file."""
    return f"py:{Path(__file__).resolve()}:{name}"


def not_a(texts):
    """The fraction of characters that are not the letter "a"."""
    return [sum(c != "a" for c in t) / max(1, len(t)) for t in texts]


def not_b(texts):
    """The fraction of characters that are not the letter "b": a gold that disagrees with not_a."""
    return [sum(c != "b" for c in t) / max(1, len(t)) for t in texts]


def not_capital_a(texts):
    """The fraction of characters that are not "A" (the LoRA tests' letter vocabulary)."""
    return [sum(c != "A" for c in t) / max(1, len(t)) for t in texts]


def length(texts):
    """The number of characters."""
    return [float(len(t)) for t in texts]


def words_without_a(texts):
    """An independent gold for policies trained on not_a: the share of words with no letter "a" (lower is
    better). It agrees with the proxy on direction, not on the number: a response of "banana" beats "aaaa cat"."""
    out = []
    for text in texts:
        words = text.split()
        out.append(sum("a" not in w for w in words) / max(1, len(words)))
    return out


# Bad scorers: each must stop a command with one line naming the scorer (exit 2), nothing half-written.
def bad_raises(texts):
    raise ValueError("boom")


def bad_length(texts):
    return [0.0] * (len(texts) + 1)


def bad_nan(texts):
    out = [0.0] * len(texts)
    out[min(1, len(texts) - 1)] = math.nan
    return out
