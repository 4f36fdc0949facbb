"""The .jsonl source: one document per record, and errors naming the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefer.data.documents import Document
from prefer.data.sources.jsonl import jsonl_documents
from prefer.errors import PreferError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "data"


def test_jsonl_documents_and_errors(tmp_path):
    docs = jsonl_documents(FIXTURES / "docs.jsonl")
    assert docs == [
        Document(("first line\n", "second line\n"), "a"),
        Document(("contact joe@example.com please",), "docs.jsonl:3"),
    ]  # empty text dropped
    for content, where in [
        ('{"text": "ok"}\n{oops\n', "bad.jsonl:2"),
        ('{"txt": "x"}\n', "bad.jsonl:1"),
        ('{"text": 3}\n', "bad.jsonl:1"),
        ('["text"]\n', "bad.jsonl:1"),
    ]:
        (tmp_path / "bad.jsonl").write_text(content)
        with pytest.raises(PreferError, match=where):
            jsonl_documents(tmp_path / "bad.jsonl")
