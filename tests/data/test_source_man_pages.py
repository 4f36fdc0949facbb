"""The man-pages source: the roff renderer, and which pages are read."""

from __future__ import annotations

import gzip

from prefer.data.corpora import load_documents
from prefer.data.sources import man_pages
from prefer.data.sources.man_pages import roff_to_text

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
        "-v, --verbose\n\nSay more.\n\n\u2022 A bullet.\n\nkeep  this\n  layout\n\nbar(1)\n"
    )


def test_man_pages_source(tmp_path, monkeypatch):
    (tmp_path / "man1").mkdir()
    for name, text in {
        "foo.1.gz": MAN_PAGE,
        "bar.1.gz": ".so man1/foo.1\n",
        "bsd.1.gz": ".Dd January 1, 2024\n.Dt BSD 1\n.Nm bsd\n",
    }.items():
        (tmp_path / "man1" / name).write_bytes(gzip.compress(text.encode()))
    (tmp_path / "man1" / "alias.1.gz").symlink_to(tmp_path / "man1" / "foo.1.gz")
    monkeypatch.setattr(man_pages, "MAN_DIR", tmp_path)
    [doc], prov = load_documents("man-pages")
    assert doc.source == "man/man1/foo.1.gz" and doc.text == roff_to_text(MAN_PAGE)
    assert "foo reads files. " in doc.segments
    assert prov["excluded"] == {
        "mdoc (BSD macros, not rendered)": 1,
        "redirect (.so)": 1,
        "symlink (another name of a page)": 1,
    }
