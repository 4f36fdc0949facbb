"""Hugging Face data sets (through `datasets` with local json files, no download): source names, the scored
shard, code and prose schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefer.data.documents import Document, GivenScores
from prefer.data.sources.hub import hub_documents, parse_hub_source
from prefer.errors import PreferError


def _jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_hub_source_names():
    assert parse_hub_source("hf:tomekkorbak/detoxify-pile-chunk3-0-50000") == (
        "tomekkorbak/detoxify-pile-chunk3-0-50000",
        "train",
    )
    assert parse_hub_source("hf:codeparrot/codeparrot-clean:validation") == (
        "codeparrot/codeparrot-clean",
        "validation",
    )
    with pytest.raises(PreferError, match="hf:NAME"):
        parse_hub_source("hf:")


def test_hub_scored_shard_schema_keeps_its_scores(tmp_path):
    records = [
        {"texts": ["Hello there. ", "You fool."], "scores": [0.01, 0.9], "meta": {"pile_set_name": "x"}},
        {"texts": [], "scores": [], "meta": {"pile_set_name": "y"}},
    ]
    data = _jsonl(tmp_path / "pile.jsonl", records)
    docs, prov = hub_documents("json", data_files=data, cache_dir=str(tmp_path / "hf"), scores_of="toxicity")
    assert docs == [Document(("Hello there. ", "You fool."), "json:train:0")]  # the empty record is dropped
    assert docs[0].given_scores == GivenScores("toxicity", (0.01, 0.9))
    assert prov.details["schema"] == "texts" and prov.details["given_scores"] == "toxicity"
    assert prov.details["records"] == 2
    # Without a scorer for them the scores are ignored, and the provenance says so.
    docs, prov = hub_documents("json", data_files=data, cache_dir=str(tmp_path / "hf"))
    assert docs[0].given_scores is None and prov.details["scores_ignored"]
    _jsonl(tmp_path / "bad.jsonl", [{"texts": ["a", "b"], "scores": [0.0]}])
    with pytest.raises(PreferError, match="record 0: 1 scores for 2 texts"):
        hub_documents(
            "json", data_files=str(tmp_path / "bad.jsonl"), cache_dir=str(tmp_path / "hf"), scores_of="toxicity"
        )


def test_hub_code_and_prose_schemas(tmp_path):
    code = "import os\n\ndef f():\n    pass\n"
    data = _jsonl(tmp_path / "code.jsonl", [{"content": code, "repo_name": "r", "path": "a.py"}])
    docs, prov = hub_documents("json", data_files=data, cache_dir=str(tmp_path / "hf"))
    assert prov.details["schema"] == "content" and "".join(d.text for d in docs) == code
    assert all(d.context is not None and d.source == "json:train:0" for d in docs)
    data = _jsonl(tmp_path / "prose.jsonl", [{"text": "One. Two."}])
    docs, prov = hub_documents("json", data_files=data, cache_dir=str(tmp_path / "hf"))
    assert prov.details["schema"] == "text" and docs[0].segments == ("One. ", "Two.")
    _jsonl(tmp_path / "other.jsonl", [{"body": "x"}])
    with pytest.raises(PreferError, match="columns: body"):
        hub_documents("json", data_files=str(tmp_path / "other.jsonl"), cache_dir=str(tmp_path / "hf"))
    with pytest.raises(PreferError, match="hf:json:train: cannot load"):
        hub_documents("json", data_files=str(tmp_path / "missing.jsonl"), cache_dir=str(tmp_path / "hf"))
