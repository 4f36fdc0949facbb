"""Segment scorers for the annotation tests, named as users name theirs: `spy_spec("Constant(value=0.5)", "a")` is
`py:/path/to/this/file.py:Constant(value=0.5)@a`. A spec is resolved once per process (prefer.scorers.user), so
`spy(spec)` is the very object annotation calls: it records each call, and a test may tell it to fail."""

from pathlib import Path

from prefer.scorers import pep8
from prefer.scorers.user import resolve


def spy_spec(constructor: str, version: str) -> str:
    """The spec of `constructor` (a class of this file with its keyword arguments); the version keeps each test's
    scorer object, and its annotation cache, its own."""
    return f"py:{Path(__file__).resolve()}:{constructor}@{version}"


def spy(spec: str):
    """The scorer object of `spec` in this process (what annotation calls)."""
    return resolve(spec).obj


class Constant:
    """Scores every segment `value`; `calls` holds the number of segments of each call."""

    def __init__(self, value: float = 0.0):
        self.value, self.calls = value, []

    def score_segments(self, segments):
        self.calls.append(len(segments))
        return [self.value] * len(segments)


class Pep8:
    """The built-in pep8 segment scores; `calls` holds each call's segments. `interrupt_on_call` (1-based): raise
    KeyboardInterrupt then, as a killed run would stop; `failing`: fail on any call."""

    def __init__(self, interrupt_on_call: int | None = None):
        self.interrupt_on_call, self.failing, self.calls = interrupt_on_call, False, []

    def score_segments(self, segments):
        if self.failing:
            raise AssertionError("the scorer was called; the annotation should have come from the cache")
        if self.interrupt_on_call == len(self.calls) + 1:
            raise KeyboardInterrupt
        self.calls.append(list(segments))
        return pep8.score_segments(segments)
