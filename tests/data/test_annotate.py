"""Annotation: per-segment scores, the disk cache, parallel == serial, summaries, file round trip."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from prefer.data import annotate as annotate_mod
from prefer.data.annotate import AnnotatedDocument, annotate, load_annotated, save_annotated, score_summary
from prefer.data.corpora import Document, changelog_documents
from prefer.errors import PreferError
from prefer.scorers import SEGMENT_SCORERS

FIXTURES = Path(__file__).parent.parent / "fixtures" / "data"


def _code_docs() -> list[Document]:
    return [Document(("x=1\n", "y = 2\n"), "a.py"), Document(("def f():\n", "    return 1\n"), "b.py")]


def test_pep8_annotation_scores_each_line():
    [a, b] = annotate(_code_docs(), "pep8", workers=1, progress=False)
    assert a == AnnotatedDocument(("x=1\n", "y = 2\n"), (0.25, 0.0), "a.py")
    assert b.scores == (0.0, 0.0)


def test_pii_annotation_flags_changelog_trailers():
    docs = changelog_documents([FIXTURES / "changelogs" / "changelog.Debian.gz"])
    annotated = annotate(docs, "pii", workers=1, progress=False)
    for doc in annotated:
        bad = [seg for seg, s in zip(doc.segments, doc.scores) if s > 0]
        assert bad[-1].startswith(" -- ")  # the maintainer's email
    # The URL in the first entry is a match too; the spelled-out "at" in the last is not.
    assert sum(s > 0 for s in annotated[0].scores) == 2
    assert sum(s > 0 for s in annotated[2].scores) == 1


def test_unknown_scorer_is_a_prefer_error():
    with pytest.raises(PreferError, match="nope"):
        annotate(_code_docs(), "nope", progress=False)


def test_cache_hit_does_not_call_the_scorer(tmp_path, monkeypatch):
    calls = []

    def counting(segments):
        calls.append(len(segments))
        return [0.5] * len(segments)

    monkeypatch.setitem(SEGMENT_SCORERS, "pep8", counting)
    first = annotate(_code_docs(), "pep8", cache_dir=tmp_path, workers=1, progress=False)
    assert calls == [2, 2] and len(list(tmp_path.iterdir())) == 1
    second = annotate(_code_docs(), "pep8", cache_dir=tmp_path, workers=1, progress=False)
    assert second == first and calls == [2, 2]
    # Different inputs (another source name) miss the cache.
    changed = [Document(d.segments, d.source + "x") for d in _code_docs()]
    annotate(changed, "pep8", cache_dir=tmp_path, workers=1, progress=False)
    assert calls == [2, 2, 2, 2]


def test_damaged_cache_is_rebuilt(tmp_path):
    first = annotate(_code_docs(), "pep8", cache_dir=tmp_path, workers=1, progress=False)
    [cache] = tmp_path.iterdir()
    cache.write_bytes(b"garbage")
    assert annotate(_code_docs(), "pep8", cache_dir=tmp_path, workers=1, progress=False) == first
    assert load_annotated(cache) == first


def test_process_pool_gives_the_serial_result(monkeypatch):
    monkeypatch.setattr(annotate_mod, "_MIN_CHUNK_CHARS", 10)  # force several chunks on a tiny corpus
    docs = [Document((f"x{i}={i}\n", f"y{i} = {i}\n"), f"m{i}.py") for i in range(12)]
    serial = annotate(docs, "pep8", workers=1, progress=False)
    assert annotate(docs, "pep8", workers=2, progress=False) == serial


def test_score_summary_arithmetic():
    docs = [AnnotatedDocument(("a", "b"), (0.0, 0.4), "s1"), AnnotatedDocument(("c", "d"), (0.0, 0.0), "s2")]
    s = score_summary(docs, threshold=0.1)
    assert s["documents"] == 2 and s["segments"] == 4 and s["threshold"] == 0.1
    assert s["mean"] == pytest.approx(0.1) and s["pooled_per_char"] == pytest.approx(0.1)
    assert s["fraction_bad_segments"] == 0.25
    assert s["fraction_bad_documents"] == 0.5  # doc means 0.2 and 0.0
    assert s["quantiles"]["max"] == 0.4 and s["quantiles"]["0.5"] == 0.0
    assert set(s["quantiles"]) == {"0.5", "0.9", "0.99", "0.999", "max"}


def test_save_and_load_round_trip(tmp_path):
    docs = [AnnotatedDocument(("é\n", "b"), (1 / 3, 0.0), "s")]
    path = tmp_path / "sub" / "ann.jsonl.gz"
    save_annotated(path, docs)
    assert load_annotated(path) == docs
    assert [p.name for p in path.parent.iterdir()] == ["ann.jsonl.gz"]  # no temporary left behind


def test_load_annotated_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"source": "s", "segments": ["a"], "scores": [0.0]}\n{"source": "s", "segments": ["a"]}\n')
    with pytest.raises(PreferError, match="bad.jsonl.gz:2"):
        load_annotated(path)
    with pytest.raises(PreferError, match="missing"):
        load_annotated(tmp_path / "missing.jsonl.gz")
