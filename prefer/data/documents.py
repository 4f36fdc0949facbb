"""Documents: text split into segments (lines for code and metadata, sentences for prose), with the file it came
from, and the two hash helpers every source shares."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FileContext:
    """The file a code document was cut from. pycodestyle's blank-line rules (E301-E306) look across top-level
    definitions, so annotation scores the whole file once and each document takes its slice of the scores."""

    segments: tuple[str, ...]  # the file's lines; one tuple shared by all documents of the file
    start: int  # index in `segments` of the document's first segment


@dataclass(frozen=True)
class GivenScores:
    """Segment scores that came with the data (the paper's scored Pile shards carry Detoxify, scrubadub or
    pycodestyle scores per sentence or line). Annotation uses them instead of scoring when the task's segment
    scorer is `scorer`, and scores the document itself otherwise."""

    scorer: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class Document:
    """One document. `segments` concatenate exactly to its text; for code, changelogs and metadata each
    segment is one line with its trailing newline, for prose one sentence with the whitespace after it.
    `source` is the file (or record) it came from: provenance, and the unit of the train/validation split.
    `context`: for code, the whole file, so that scorers see the definitions around it. `given_scores`: scores
    that came with the data."""

    segments: tuple[str, ...]
    source: str
    # Neither takes part in equality: two documents are equal when their text and source are.
    context: FileContext | None = field(default=None, compare=False, repr=False)
    given_scores: GivenScores | None = field(default=None, compare=False, repr=False)

    @property
    def text(self) -> str:
        return "".join(self.segments)


def split_lines(text: str) -> tuple[str, ...]:
    """Lines of `text`, each with its trailing "\\n" (the last may lack one). Only "\\n" splits:
    form feeds and other Unicode line breaks stay inside a line, as for Python's tokenizer."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return tuple(lines)


def stable_hash(*parts: object) -> float:
    """A number in [0, 1) from sha256 of the parts: the same on every machine and every run
    (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
