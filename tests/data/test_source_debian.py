"""Debian sources: changelog entries with their maintainer trailer, copyright stanzas."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefer.data.corpora import load_documents
from prefer.data.sources import debian
from prefer.data.sources.debian import DEBIAN_DOC, changelog_documents, split_stanzas
from prefer.errors import PreferError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "data"
CHANGELOG = FIXTURES / "changelogs" / "changelog.Debian.gz"


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


def test_system_changelogs_when_present():
    # Machine-dependent: only where Debian changelogs are installed.
    if not list(DEBIAN_DOC.glob("*/changelog.Debian.gz")):
        pytest.skip(f"no Debian changelogs under {DEBIAN_DOC} on this machine")
    docs, prov = load_documents("changelogs", max_bytes=300_000)
    assert prov["kind"] == "changelogs" and docs
    assert sum(d.segments[-1].startswith(" -- ") for d in docs) > 0.9 * len(docs)


def test_split_stanzas():
    text = "Files: *\nCopyright: 2020 Jane <jane@example.org>\n\n\nLicense: MIT\n text\n"
    assert split_stanzas(text) == [
        ("Files: *\n", "Copyright: 2020 Jane <jane@example.org>\n"),
        ("License: MIT\n", " text\n"),
    ]


def test_copyrights_source(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "copyright").write_text("Files: *\nCopyright: Jane\n\nLicense: MIT\n")
    (tmp_path / "pkg-alias").symlink_to(tmp_path / "pkg")  # one package directory under two names
    monkeypatch.setattr(debian, "DEBIAN_DOC", tmp_path)
    docs, prov = load_documents("copyrights")
    assert [(d.source, d.text) for d in docs] == [
        ("pkg/copyright", "Files: *\nCopyright: Jane\n"),
        ("pkg/copyright", "License: MIT\n"),
    ]
    assert prov["kind"] == "copyrights" and [s["file"] for s in prov["skipped"]] == ["pkg-alias/copyright"]
