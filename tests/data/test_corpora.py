"""Corpora: the dispatch of a source spec to its source, provenance records, budgets, dropping repeats, "+"
combinations and the train/validation split by source. Each source family has its own test_source_*.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path, PurePosixPath

import pytest

from prefer.data.corpora import (
    NAMED_SOURCES,
    SOURCES,
    _exclude_stdlib,
    load_documents,
    source_for,
    split_by_source,
)
from prefer.data.documents import Document
from prefer.data.sources import (
    code,
    debian,
    fortunes,
    hub,
    jsonl,
    man_pages,
    python_metadata,
    snapshot,
)
from prefer.data.sources.base import Provenance
from prefer.errors import PreferError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "data"
CHANGELOG = FIXTURES / "changelogs" / "changelog.Debian.gz"


def _docs(n_sources: int, per_source: int = 2) -> list[Document]:
    return [Document((f"line {s}.{i}\n",), f"src{s}.py") for s in range(n_sources) for i in range(per_source)]


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


def test_sources_joined_with_plus_share_the_budget(tmp_path):
    docs, prov = load_documents(f"{FIXTURES / 'code'}+{CHANGELOG}")
    assert prov["kind"] == "combined" and [p["kind"] for p in prov["parts"]] == ["code", "changelogs"]
    assert {d.source for d in docs if d.source.startswith(f"{FIXTURES / 'code'}:")} == {
        f"{FIXTURES / 'code'}:clean.py",
        f"{FIXTURES / 'code'}:pkg/messy.py",
    }
    assert sum(d.source.startswith(f"{CHANGELOG}:") for d in docs) == 3
    assert prov["documents"] == sum(p["documents"] for p in prov["parts"]) - prov["duplicate_documents"]
    # A budget: the first part gets half; what it leaves unused passes to the second.
    _, prov = load_documents(f"{FIXTURES / 'code'}+{CHANGELOG}", max_bytes=4000)
    first, second = prov["parts"]
    assert first["max_bytes"] == 2000 and second["max_bytes"] == 4000 - first["bytes"]
    with pytest.raises(PreferError, match="empty part"):
        load_documents("stdlib+")


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


# ---------------------------------------------------------------- the dispatch table


def test_dispatch_table_names_every_source():
    assert [s.name for s in SOURCES] == [
        "stdlib",
        "site-packages",
        "changelogs",
        "changelogs-snapshot",
        "copyrights",
        "python-metadata",
        "fortunes",
        "man-pages",
        "hf:NAME[:SPLIT]",
        "DIR of .py",
        "DIR of changelog*.gz",
        "FILE.gz (a Debian changelog)",
        "FILE.jsonl",
    ]
    assert list(NAMED_SOURCES) == [
        "stdlib",
        "site-packages",
        "changelogs",
        "changelogs-snapshot",
        "copyrights",
        "python-metadata",
        "fortunes",
        "man-pages",
    ]
    expected = {
        "stdlib": code.STDLIB,
        "site-packages": code.SITE_PACKAGES,
        "changelogs": debian.CHANGELOGS,
        "changelogs-snapshot": snapshot.CHANGELOGS_SNAPSHOT,
        "copyrights": debian.COPYRIGHTS,
        "python-metadata": python_metadata.PYTHON_METADATA,
        "fortunes": fortunes.FORTUNES,
        "man-pages": man_pages.MAN_PAGES,
        "hf:codeparrot/codeparrot-clean:validation": hub.HUB,
        str(FIXTURES / "code"): code.CODE_DIRECTORY,
        str(FIXTURES / "changelogs"): debian.CHANGELOG_DIRECTORY,
        str(CHANGELOG): debian.CHANGELOG_FILE,
        str(FIXTURES / "docs.jsonl"): jsonl.JSONL,
    }
    assert {spec: source_for(spec) for spec in expected} == expected
    assert {source_for(spec).name for spec in expected} == {s.name for s in SOURCES}  # each one reachable


def test_dispatch_of_paths_that_name_no_source(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PreferError, match="notes.txt': unsupported file type"):
        source_for(str(tmp_path / "notes.txt"))
    (tmp_path / "dir.jsonl").mkdir()  # a directory, whatever its name: changelog*.gz files, here none
    assert source_for(str(tmp_path / "dir.jsonl")) is debian.CHANGELOG_DIRECTORY
    with pytest.raises(PreferError) as error:
        source_for(str(tmp_path / "absent.jsonl"))
    assert str(error.value) == (
        f"corpus source {str(tmp_path / 'absent.jsonl')!r}: no such file or directory (expected one of stdlib, "
        "site-packages, changelogs, changelogs-snapshot, copyrights, python-metadata, fortunes, man-pages, "
        "hf:NAME[:SPLIT], a directory, a .jsonl file or a .gz changelog, or several joined with '+')"
    )


# ---------------------------------------------------------------- provenance records


def test_provenance_to_dict_keeps_its_key_order_and_plain_types():
    prov = Provenance(
        kind="k",
        licence="L",
        path="/p",
        files=2,
        bytes=10,
        skipped=({"file": "a", "reason": "r"},),
        left_out_by_budget=1,
        excluded={"tests": 3},
        details={"python": "3.11"},
        key_order=("files", "bytes", "skipped", "left_out_by_budget", "kind", "licence", "path", "python", "excluded"),
    )
    record = prov.to_dict()
    assert list(record.items()) == [
        ("files", 2),
        ("bytes", 10),
        ("skipped", [{"file": "a", "reason": "r"}]),
        ("left_out_by_budget", 1),
        ("kind", "k"),
        ("licence", "L"),
        ("path", "/p"),
        ("python", "3.11"),
        ("excluded", {"tests": 3}),
    ]
    assert json.loads(json.dumps(record)) == record
    assert list(Provenance(kind="k", licence="L", path="/p", files=0, bytes=0).to_dict()) == [
        "kind",
        "licence",
        "path",
        "files",
        "bytes",
        "skipped",
        "left_out_by_budget",
        "excluded",
    ]
    # The order is presentation only: it does not take part in equality.
    assert prov == dataclasses.replace(prov, key_order=(*prov.key_order[1:], "files"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        prov.files = 3
    with pytest.raises(ValueError, match="key_order"):
        Provenance(kind="k", licence="L", path="/p", files=0, bytes=0, details={"python": "3.11"})  # not ordered
    with pytest.raises(ValueError, match="key_order"):
        Provenance(
            kind="k",
            licence="L",
            path="/p",
            files=0,
            bytes=0,
            details={"files": 1},
            key_order=(
                "kind",
                "licence",
                "path",
                "files",
                "bytes",
                "skipped",
                "left_out_by_budget",
                "excluded",
                "files",
            ),
        )  # a detail may not shadow a common field


def _user_fields(path: Path) -> list[tuple[str, object]]:
    return [("path", str(path.resolve())), ("licence", "user-supplied: see the files' own licences"), ("excluded", {})]


def test_provenance_records_have_the_shape_data_json_always_had():
    # The key order and values data.json recorded before sources/ existed (prefer corpus printed them).
    _, prov = load_documents(str(FIXTURES / "code"))
    assert list(prov.items()) == [
        ("source", str(FIXTURES / "code")),
        ("max_bytes", None),
        *_user_fields(FIXTURES / "code"),
        ("files", 3),
        ("bytes", 292),
        ("skipped", []),
        ("unparsed_files", 0),
        ("left_out_by_budget", 0),
        ("kind", "code"),
        ("documents", 6),
        ("document_bytes", 292),
        ("segments", 23),
        ("duplicate_documents", 0),
    ]
    _, prov = load_documents(str(CHANGELOG))
    assert list(prov.items()) == [
        ("source", str(CHANGELOG)),
        ("max_bytes", None),
        *_user_fields(CHANGELOG),
        ("files", 1),
        ("bytes", 567),
        ("skipped", []),
        ("lines_outside_entries", 6),
        ("kind", "changelogs"),
        ("left_out_by_budget", 0),
        ("documents", 3),
        ("document_bytes", 519),
        ("segments", 16),
        ("duplicate_documents", 0),
    ]
    _, prov = load_documents(str(FIXTURES / "docs.jsonl"), max_bytes=10_000)
    assert list(prov.items()) == [
        ("source", str(FIXTURES / "docs.jsonl")),
        ("max_bytes", 10_000),
        *_user_fields(FIXTURES / "docs.jsonl"),
        ("kind", "jsonl"),
        ("files", 1),
        ("bytes", 53),
        ("skipped", []),
        ("left_out_by_budget", 0),
        ("documents", 2),
        ("document_bytes", 53),
        ("segments", 3),
        ("duplicate_documents", 0),
    ]


def test_provenance_of_a_combination_nests_its_parts():
    _, prov = load_documents(f"{FIXTURES / 'docs.jsonl'}+{CHANGELOG}", max_bytes=1000)
    assert list(prov) == [
        "source",
        "max_bytes",
        "kind",
        "licence",
        "path",
        "parts",
        "files",
        "bytes",
        "skipped",
        "left_out_by_budget",
        "excluded",
        "documents",
        "document_bytes",
        "segments",
        "duplicate_documents",
    ]
    first, second = prov["parts"]
    assert list(first.items())[:3] == [("source", str(FIXTURES / "docs.jsonl")), ("max_bytes", 500), ("documents", 2)]
    assert list(first)[3:] == ["path", "licence", "excluded", "kind", "files", "bytes", "skipped", "left_out_by_budget"]
    assert second["max_bytes"] == 1000 - 53 and second["lines_outside_entries"] == 6  # 53 bytes: the jsonl texts
    assert prov["licence"] == "user-supplied: see the files' own licences"  # the same licence once
    assert prov["files"] == 2 and prov["bytes"] == 53 + 567


def test_stdlib_exclusions_stay_importable_from_corpora():
    # examples/rlhf_pep8.sh picks its prompts from the same stdlib files as the pep8 corpus through this name.
    assert _exclude_stdlib(PurePosixPath("test/test_os.py")) == "tests"
    assert _exclude_stdlib(PurePosixPath("encodings/cp1252.py")) == "generated table"
    assert _exclude_stdlib(PurePosixPath("os.py")) is None
