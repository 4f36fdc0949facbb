"""Corpora: code splitting, changelog entries, JSONL, budgets, provenance, the source split."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefer.data.corpora import (
    DEBIAN_DOC,
    Document,
    changelog_documents,
    code_documents,
    jsonl_documents,
    load_documents,
    split_by_source,
    split_code,
    split_lines,
)
from prefer.errors import PreferError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "data"
CHANGELOG = FIXTURES / "changelogs" / "changelog.Debian.gz"


def _docs(n_sources: int, per_source: int = 2) -> list[Document]:
    return [Document((f"line {s}.{i}\n",), f"src{s}.py") for s in range(n_sources) for i in range(per_source)]


def test_split_lines_keeps_newlines_and_only_splits_on_newline():
    assert split_lines("a\n\x0cb\nc") == ("a\n", "\x0cb\n", "c")
    assert split_lines("") == ()
    assert "".join(split_lines("x\n\n")) == "x\n\n"


def test_code_split_at_top_level_definitions():
    pieces = ["".join(p) for p in split_code((FIXTURES / "code" / "clean.py").read_text())[0]]
    assert pieces[0] == '"""A tidy module."""\nimport os\n'
    # The comment and the blank lines above a definition go with it.
    assert pieces[1].startswith("\n\n# Attached to the function below.\ndef home():")
    # Decorator kept with its function; a "def" inside a string is not a boundary.
    assert pieces[2].startswith("\n\n@staticmethod\ndef decorated():") and "def not_a_definition" in pieces[2]
    # Methods stay inside their class.
    assert pieces[3] == "\n\nclass Thing:\n    def method(self):\n        return 1\n"
    assert len(pieces) == 4


def test_unparseable_code_falls_back_to_column_zero_lines():
    pieces, parsed = split_code("def f(:\n    x\n@d\ndef g(): pass\n")
    assert not parsed
    assert pieces == [("def f(:\n", "    x\n"), ("@d\n", "def g(): pass\n")]


def test_code_documents_sources_and_segments(tmp_path):
    docs = code_documents(FIXTURES / "code", strict=True)
    assert {d.source for d in docs} == {"clean.py", "pkg/messy.py"}  # empty __init__.py gives nothing
    for d in docs:
        assert d.text == "".join(d.segments)
        assert all(s.endswith("\n") for s in d.segments)
    messy = [d.text for d in docs if d.source == "pkg/messy.py"]
    assert messy == ["x=1\n", "def f( a ):\n    return a\n"]


def test_code_documents_skip_pycache_and_reject_non_utf8_when_strict(tmp_path):
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "junk.py").write_text("x = 1\n")
    (tmp_path / "ok.py").write_text("y = 2\n")
    assert [d.source for d in code_documents(tmp_path, strict=True)] == ["ok.py"]
    (tmp_path / "latin.py").write_bytes(b"s = '\xe9'\n")
    with pytest.raises(PreferError, match="latin.py"):
        code_documents(tmp_path, strict=True)
    assert [d.source for d in code_documents(tmp_path, strict=False)] == ["ok.py"]


def test_changelog_entries_keep_their_trailer():
    docs = changelog_documents([CHANGELOG])
    assert len(docs) == 3
    assert all(d.source == "changelogs/changelog.Debian.gz" for d in docs)
    first = docs[0]
    assert first.segments[0] == "hello (1.2-2) unstable; urgency=medium\n"
    assert first.segments[-1] == " -- Jane Maintainer <jane@example.org>  Mon, 01 Jan 2024 00:00:00 +0000\n"
    # The emacs footer after the last entry is not an entry.
    assert "Local variables" not in "".join(d.text for d in docs)


def test_changelog_that_is_not_gzip_is_an_error(tmp_path):
    bad = tmp_path / "changelog.Debian.gz"
    bad.write_text("not gzip")
    with pytest.raises(PreferError, match="changelog.Debian.gz"):
        changelog_documents([bad])


def test_jsonl_documents_and_errors(tmp_path):
    docs = jsonl_documents(FIXTURES / "docs.jsonl")
    assert docs == [Document(("first line\n", "second line\n"), "a"),
                    Document(("contact joe@example.com please",), "docs.jsonl:3")]  # empty text dropped
    for content, where in [('{"text": "ok"}\n{oops\n', "bad.jsonl:2"), ('{"txt": "x"}\n', "bad.jsonl:1"),
                           ('{"text": 3}\n', "bad.jsonl:1"), ('["text"]\n', "bad.jsonl:1")]:
        (tmp_path / "bad.jsonl").write_text(content)
        with pytest.raises(PreferError, match=where):
            jsonl_documents(tmp_path / "bad.jsonl")


def test_load_documents_dispatches_on_the_source(tmp_path):
    docs, prov = load_documents(str(FIXTURES / "code"))
    assert prov["kind"] == "code" and prov["files"] == 3 and prov["documents"] == len(docs) == 6
    docs, prov = load_documents(str(CHANGELOG))
    assert prov["kind"] == "changelogs" and len(docs) == 3
    docs, prov = load_documents(str(FIXTURES / "changelogs"))  # a directory of changelog*.gz
    assert prov["kind"] == "changelogs" and len(docs) == 3
    docs, prov = load_documents(str(FIXTURES / "docs.jsonl"))
    assert prov["kind"] == "jsonl" and len(docs) == 2
    for key in ("source", "kind", "licence", "files", "bytes", "documents", "skipped", "excluded"):
        assert key in prov


def test_load_documents_errors_name_the_source(tmp_path):
    with pytest.raises(PreferError, match="nowhere"):
        load_documents(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreferError, match="empty.*no documents"):
        load_documents(str(tmp_path / "empty"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PreferError, match="notes.txt"):
        load_documents(str(tmp_path / "notes.txt"))


def test_load_documents_drops_exact_repeats(tmp_path):
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text("x = 1\n")
    docs, prov = load_documents(str(tmp_path))
    assert [d.source for d in docs] == ["a.py"] and prov["duplicate_documents"] == 1


def test_budget_is_a_deterministic_subset_within_the_limit(tmp_path):
    for i in range(20):
        (tmp_path / f"m{i:02d}.py").write_text(f"x{i} = {i}\n" * 10)  # 80-90 bytes each
    docs, prov = load_documents(str(tmp_path), max_bytes=500)
    again, _ = load_documents(str(tmp_path), max_bytes=500)
    assert docs == again
    assert 0 < prov["bytes"] <= 500 and prov["left_out_by_budget"] == 20 - prov["files"]
    assert [d.source for d in docs] == sorted(d.source for d in docs)  # output keeps path order
    # Chosen by hash, not by name: not simply the first files alphabetically.
    assert {d.source for d in docs} != {f"m{i:02d}.py" for i in range(prov["files"])}


def test_stdlib_smoke():
    docs, prov = load_documents("stdlib", max_bytes=200_000)
    assert prov["kind"] == "stdlib" and "PSF" in prov["licence"]
    assert 0 < prov["bytes"] <= 200_000 and docs
    assert prov["excluded"].get("tests", 0) > 0
    assert not any(d.source.startswith(("encodings/", "pydoc_data/")) or "/test/" in f"/{d.source}"
                   for d in docs)


def test_system_changelogs_when_present():
    # Machine-dependent: only where Debian changelogs are installed.
    if not list(DEBIAN_DOC.glob("*/changelog.Debian.gz")):
        pytest.skip(f"no Debian changelogs under {DEBIAN_DOC} on this machine")
    docs, prov = load_documents("changelogs", max_bytes=300_000)
    assert prov["kind"] == "changelogs" and docs
    assert sum(d.segments[-1].startswith(" -- ") for d in docs) > 0.9 * len(docs)


def test_split_by_source_is_deterministic_and_keeps_files_together():
    docs = _docs(50)
    train, val = split_by_source(docs, validation_fraction=0.2, seed=3)
    assert (train, val) == split_by_source(docs, validation_fraction=0.2, seed=3)
    assert len(train) + len(val) == len(docs) and val
    assert not {d.source for d in train} & {d.source for d in val}
    assert train == [d for d in docs if d in train]  # input order kept
    assert split_by_source(docs, validation_fraction=0.2, seed=4) != (train, val)


def test_split_by_source_never_leaves_validation_empty_with_two_sources():
    train, val = split_by_source(_docs(2), validation_fraction=1e-9)
    assert len({d.source for d in val}) == 1 and len({d.source for d in train}) == 1
    train, val = split_by_source(_docs(2), validation_fraction=0.999999)
    assert len({d.source for d in val}) == 1 and len({d.source for d in train}) == 1
    train, val = split_by_source(_docs(2), validation_fraction=0.0)
    assert val == []
    with pytest.raises(PreferError, match="validation_fraction"):
        split_by_source(_docs(2), validation_fraction=1.0)
