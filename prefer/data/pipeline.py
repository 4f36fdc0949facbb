"""corpus -> documents -> scored segments -> train/validation split, and the tokenizer trained on it.

The scored corpus and the tokenizer are cached on disk (keyed by their inputs), so the second run of anything on
the same corpus starts training at once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from prefer.data.annotate import (
    AnnotatedDocument,
    annotate,
    annotate_shard,
    merge_shards,
    score_summary,
)
from prefer.data.corpora import load_documents, split_by_source
from prefer.data.tokenizer import train_tokenizer
from prefer.files import atomic_path
from prefer.models.build import load_tokenizer
from prefer.tasks import Task


@dataclass(frozen=True)
class ScoredCorpus:
    """A scored corpus split by source file. `provenance` says where it came from; `summary` how it scores."""

    train: list[AnnotatedDocument]
    validation: list[AnnotatedDocument]
    provenance: dict
    summary: dict

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for document in self.train + self.validation:
            digest.update(document.source.encode())
            digest.update("".join(document.segments).encode())
        return digest.hexdigest()[:16]


def build_corpus(
    task: Task,
    *,
    source: str | None,
    max_bytes: int | None,
    validation_fraction: float,
    cache_dir: str | Path,
    workers: int | None,
    threshold: float,
    progress: bool = True,
    num_shards: int = 1,
) -> ScoredCorpus:
    """num_shards > 1: the scores are put together from the shard files that `score_shard` wrote (PreferError
    naming any that are missing) instead of being computed here."""
    documents, provenance = load_documents(
        source or task.corpus, max_bytes=max_bytes, cache_dir=Path(cache_dir) / "sentences"
    )
    if num_shards > 1:
        scored = merge_shards(documents, task.scorer, num_shards=num_shards, cache_dir=Path(cache_dir) / "annotated")
    else:
        scored = annotate(
            documents, task.scorer, cache_dir=Path(cache_dir) / "annotated", workers=workers, progress=progress
        )
    train, validation = split_by_source(scored, validation_fraction=validation_fraction)
    summary = score_summary(scored, threshold=threshold)
    return ScoredCorpus(train=train, validation=validation, provenance=provenance, summary=summary)


def score_shard(
    task: Task,
    *,
    source: str | None,
    max_bytes: int | None,
    cache_dir: str | Path,
    workers: int | None,
    shard_index: int,
    num_shards: int,
    progress: bool = True,
) -> dict:
    """Score shard `shard_index` of `num_shards` of the task's corpus (one machine's part of a sharded run) and
    write its shard file; returns what it did. `build_corpus(..., num_shards=N)` merges the shards."""
    documents, provenance = load_documents(
        source or task.corpus, max_bytes=max_bytes, cache_dir=Path(cache_dir) / "sentences"
    )
    path = annotate_shard(
        documents,
        task.scorer,
        shard_index=shard_index,
        num_shards=num_shards,
        cache_dir=Path(cache_dir) / "annotated",
        workers=workers,
        progress=progress,
    )
    return {
        "shard_index": shard_index,
        "num_shards": num_shards,
        "path": str(path),
        "corpus_documents": len(documents),
        "provenance": provenance,
    }


def corpus_tokenizer(corpus: ScoredCorpus, *, vocab_size: int, cache_dir: str | Path):
    """A byte-level BPE trained on the training split, cached by (corpus fingerprint, vocabulary size)."""
    key = hashlib.sha256(json.dumps([corpus.fingerprint(), vocab_size, "bpe-v1"]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "tokenizers" / key
    if not (path / "tokenizer.json").exists():
        tokenizer = train_tokenizer(("".join(d.segments) for d in corpus.train), vocab_size=vocab_size)
        with atomic_path(path) as tmp:
            tokenizer.save_pretrained(tmp)
    return load_tokenizer(path)
