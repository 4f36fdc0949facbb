"""Annotation: per-segment scores, whole-file scoring, given scores, the disk cache, resuming, shards,
parallel == serial, summaries, file round trip."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from annotation_spies import spy, spy_spec

from prefer.data import annotate as annotate_mod
from prefer.data.annotate import (
    AnnotatedDocument,
    annotate,
    annotate_shard,
    annotation_path,
    cache_key,
    load_annotated,
    merge_shards,
    save_annotated,
    score_summary,
    shard_of,
)
from prefer.data.documents import Document, FileContext, GivenScores, split_lines
from prefer.data.sources.code import code_documents, code_file_documents
from prefer.data.sources.debian import changelog_documents
from prefer.errors import PreferError

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


def test_cache_hit_does_not_call_the_scorer(tmp_path):
    scorer = spy_spec("Constant(value=0.5)", "cache-hit")
    calls = spy(scorer).calls
    first = annotate(_code_docs(), scorer, cache_dir=tmp_path, workers=1, progress=False)
    assert calls == [2, 2] and len(list(tmp_path.iterdir())) == 1
    second = annotate(_code_docs(), scorer, cache_dir=tmp_path, workers=1, progress=False)
    assert second == first and calls == [2, 2]
    # Different inputs (another source name) miss the cache.
    changed = [Document(d.segments, d.source + "x") for d in _code_docs()]
    annotate(changed, scorer, cache_dir=tmp_path, workers=1, progress=False)
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


# ---------------------------------------------------------------- whole-file scoring


def test_pieces_are_scored_in_their_file():
    # One blank line between two functions: E302 on the second def. Scored alone, the second piece starts at
    # the top of a "file" and pycodestyle cannot see it.
    docs, _ = code_file_documents("def a():\n    pass\n\ndef b():\n    pass\n", "f.py")
    assert [d.segments for d in docs] == [("def a():\n", "    pass\n"), ("\n", "def b():\n", "    pass\n")]
    first, second = annotate(docs, "pep8", workers=1, progress=False)
    assert first.scores == (0.0, 0.0)
    assert second.scores == (0.0, 1 / len("def b():\n"), 0.0)  # one violation on the def line
    alone = annotate([Document(d.segments, d.source) for d in docs], "pep8", workers=1, progress=False)
    assert alone[1].scores == (0.0, 0.0, 0.0)  # the blind spot this fixes


def test_a_file_is_scored_once_for_all_its_pieces():
    scorer = spy_spec("Constant()", "file-once")
    docs, _ = code_file_documents("import os\n\n\ndef a():\n    pass\n\n\ndef b():\n    pass\n", "f.py")
    annotate(docs + _code_docs(), scorer, workers=1, progress=False)
    assert spy(scorer).calls == [9, 2, 2]  # the file's 9 lines once, then the two documents without a file


def test_a_document_that_is_not_its_files_lines_is_an_error():
    text = "x = 1\n"
    bad = Document(("y = 2\n",), "f.py", context=FileContext(split_lines(text), 0))
    with pytest.raises(PreferError, match="f.py: the document is not lines 1-1 of its file"):
        annotate([bad], "pep8", workers=1, progress=False)


def test_the_file_context_is_part_of_the_cache_key():
    docs, _ = code_file_documents("def a():\n    pass\n\ndef b():\n    pass\n", "f.py")
    alone = [Document(d.segments, d.source) for d in docs]
    assert alone == docs and cache_key(alone, "pep8") != cache_key(docs, "pep8")
    other, _ = code_file_documents("def a():\n    pass\n\ndef b():\n    pass\n\n\nz = 1\n", "f.py")
    assert cache_key(other[:2], "pep8") != cache_key(docs, "pep8")  # same pieces, another file


# ---------------------------------------------------------------- given scores


def test_given_scores_of_the_scorer_are_kept_and_others_rescored():
    scorer = spy_spec("Constant(value=0.5)", "given")
    given = Document(("a. ", "b."), "hub:0", given_scores=GivenScores(scorer, (0.0, 0.25)))
    foreign = Document(("c.",), "hub:1", given_scores=GivenScores("toxicity", (0.9,)))
    kept, rescored = annotate([given, foreign], scorer, workers=1, progress=False)
    assert kept.scores == (0.0, 0.25) and rescored.scores == (0.5,) and spy(scorer).calls == [1]
    with pytest.raises(PreferError, match="hub:2: 1 given scores for 2 segments"):
        annotate([Document(("a", "b"), "hub:2", given_scores=GivenScores(scorer, (0.0,)))], scorer, progress=False)


# ---------------------------------------------------------------- shards and resuming


def _corpus() -> list[Document]:
    docs = code_documents(FIXTURES / "code", strict=True)
    docs += [Document((f"x{i}={i}\n", f"y{i} = {i}\n"), f"m{i}.py") for i in range(20)]
    return docs


def test_two_shards_merged_equal_the_unsharded_annotation(tmp_path):
    docs, scorer = _corpus(), spy_spec("Pep8()", "shards")
    unsharded = annotate(docs, scorer, workers=1, progress=False)
    paths = [
        annotate_shard(docs, scorer, shard_index=i, num_shards=2, cache_dir=tmp_path, workers=1, progress=False)
        for i in range(2)
    ]
    sizes = [len(load_annotated(p)) for p in paths]
    assert sum(sizes) == len(docs) and min(sizes) > 0
    # Every document of a file lands in the same shard.
    assert all(len({shard_of(d.source, 2) for d in docs if d.source == s}) == 1 for s in {d.source for d in docs})
    assert merge_shards(docs, scorer, num_shards=2, cache_dir=tmp_path) == unsharded

    spy(scorer).failing = True  # merged shards should be in the cache
    assert annotate(docs, scorer, cache_dir=tmp_path, progress=False) == unsharded
    # A shard file already written is not scored again.
    assert annotate_shard(docs, scorer, shard_index=0, num_shards=2, cache_dir=tmp_path, progress=False) == paths[0]


def test_merge_names_missing_shards(tmp_path):
    docs = _corpus()
    annotate_shard(docs, "pep8", shard_index=1, num_shards=3, cache_dir=tmp_path, workers=1, progress=False)
    with pytest.raises(PreferError, match="shards 0, 2 of 3 are not scored yet"):
        merge_shards(docs, "pep8", num_shards=3, cache_dir=tmp_path)
    with pytest.raises(PreferError, match="shard_index"):
        annotate_shard(docs, "pep8", shard_index=3, num_shards=3, cache_dir=tmp_path, progress=False)


def test_an_interrupted_run_resumes_from_its_finished_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(annotate_mod, "_MIN_CHUNK_CHARS", 1)  # one job per chunk
    docs = [Document((f"x{i}={i}\n",), f"m{i}.py") for i in range(10)]
    expected = annotate(docs, "pep8", workers=1, progress=False)
    scorer = spy_spec("Pep8(interrupt_on_call=5)", "resume")  # the built-in pep8's scores, killed on call 5
    with pytest.raises(KeyboardInterrupt):
        annotate(docs, scorer, cache_dir=tmp_path, workers=1, progress=False)
    [partial] = tmp_path.iterdir()
    assert partial.name.endswith(".partial") and len(list(partial.iterdir())) == 4

    spy(scorer).calls.clear()
    spy(scorer).interrupt_on_call = None
    assert annotate(docs, scorer, cache_dir=tmp_path, workers=1, progress=False) == expected
    assert len(spy(scorer).calls) == 6  # only the chunks the first run had not finished
    final = annotation_path(tmp_path, docs, scorer).name
    assert [p.name for p in tmp_path.iterdir()] == [final] and cache_key(docs, scorer) in final


def test_corpus_pipeline_scores_shards_then_merges_them(tmp_path):
    from prefer.data.pipeline import build_corpus, score_shard
    from prefer.tasks import get_task

    task, source = get_task("pep8"), str(FIXTURES / "code")
    common = {"source": source, "max_bytes": None, "cache_dir": tmp_path, "workers": 1, "progress": False}
    with pytest.raises(PreferError, match="not scored yet"):
        build_corpus(task, validation_fraction=0.5, threshold=0.0, num_shards=2, **common)
    shards = [score_shard(task, shard_index=i, num_shards=2, **common) for i in range(2)]
    assert all(Path(s["path"]).exists() and s["corpus_documents"] == 6 for s in shards)
    merged = build_corpus(task, validation_fraction=0.5, threshold=0.0, num_shards=2, **common)
    plain = build_corpus(task, validation_fraction=0.5, threshold=0.0, **common | {"cache_dir": tmp_path / "other"})
    assert (merged.train, merged.validation, merged.summary) == (plain.train, plain.validation, plain.summary)
