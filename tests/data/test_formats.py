"""Human-feedback files: round trips, and every bad line named by file and line."""

import pytest

from prefer.data.formats import (
    Comparison,
    Demonstration,
    read_demonstrations,
    read_prompts,
    read_rankings,
    write_demonstrations,
    write_rankings,
)
from prefer.errors import PreferError


def test_rankings_round_trip_with_ties(tmp_path):
    comparisons = [Comparison("p", ("a", "b", "c", "d"), (1, 2, 0, 1))]
    write_rankings(tmp_path / "r.jsonl", comparisons)
    assert '"ranking": [2, [0, 3], 1]' in (tmp_path / "r.jsonl").read_text()
    assert read_rankings(tmp_path / "r.jsonl") == comparisons


def test_demonstrations_and_prompts_round_trip(tmp_path):
    write_demonstrations(tmp_path / "d.jsonl", [Demonstration("q", "a")])
    assert read_demonstrations(tmp_path / "d.jsonl") == [Demonstration("q", "a")]
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n\n{"prompt": "y"}\n')
    assert [p.prompt for p in read_prompts(tmp_path / "p.jsonl")] == ["x", "y"]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "p", "responses": ["a"], "ranking": [0]}', "1 responses"),
        ('{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}', "twice"),
        ('{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 2]}', r"leaves out response\(s\) \[1\]"),
        ('{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 5]}', "out of range"),
        ('{"prompt": "p", "responses": ["a", ""], "ranking": [0, 1]}', "response 1 is empty"),
        ('{"prompt": "p", "responses": ["a", "b"], "ranking": [[0, 1]]}', "every response ties"),
        ('{"prompt": "p", "responses": ["a", "b"]}', "ranking"),
        ('{"prompt": 3, "responses": ["a", "b"], "ranking": [0, 1]}', "'prompt' must be a str"),
        ("not json", "invalid JSON"),
    ],
)
def test_bad_ranking_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "r.jsonl"
    path.write_text('{"prompt": "ok", "responses": ["a", "b"], "ranking": [1, 0]}\n' + line + "\n")
    with pytest.raises(PreferError, match=rf"r\.jsonl:2: .*{message}"):
        read_rankings(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(PreferError, match="no records"):
        read_prompts(tmp_path / "e.jsonl")
    with pytest.raises(PreferError, match="no such file"):
        read_demonstrations(tmp_path / "nope.jsonl")
    (tmp_path / "d.jsonl").write_text('{"prompt": "q", "response": "  "}\n')
    with pytest.raises(PreferError, match=r"d\.jsonl:1: field 'response' is empty"):
        read_demonstrations(tmp_path / "d.jsonl")
