"""Toy judges for the RL stage tests, named by file path (`py:PATH:function`) as a user names their own."""


def words_without_a(texts):
    """An independent gold for policies trained on "not-a": the share of words with no letter "a" (lower is
    better). It agrees with the proxy on direction, not on the number: a response of "banana" beats "aaaa cat"."""
    out = []
    for text in texts:
        words = text.split()
        out.append(sum("a" not in w for w in words) / max(1, len(words)))
    return out
