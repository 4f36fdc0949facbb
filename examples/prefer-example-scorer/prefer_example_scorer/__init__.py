"""Two prefer scorers: misalignment per text, lower is better (docs/scorers.md)."""

from collections.abc import Sequence


def shouting(texts: Sequence[str]) -> list[float]:
    """The share of a text's letters that are upper case (0 for a text without letters)."""
    out = []
    for text in texts:
        letters = [c for c in text if c.isalpha()]
        out.append(sum(c.isupper() for c in letters) / len(letters) if letters else 0.0)
    return out


shouting.version = "1"  # part of annotation cache keys: bump it when the scores change


class Keyword:
    """Occurrences of any of `words` (case-insensitive) times `weight`: `keyword(words=['spam'], weight=2.0)`."""

    def __init__(self, words: Sequence[str] = ("spam",), weight: float = 1.0):
        self.words = [w.lower() for w in words]
        self.weight = weight

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return [self.weight * sum(text.lower().count(w) for w in self.words) for text in texts]
