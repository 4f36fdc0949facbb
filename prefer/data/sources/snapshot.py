"""A fixed, versioned corpus shipped with prefer ("changelogs-snapshot"): the Debian changelog entries of a Debian
standard system, so that the PII demos read the same documents on every machine, whatever it has installed.

The snapshot is `prefer/data/snapshots/changelogs-<version>.jsonl.gz` (one record {"source", "text"} per changelog
entry, in the order and with the sources the host's "changelogs" source gives them, repeated entries already
dropped) and `changelogs-<version>.MANIFEST.json` beside it: how and where it was built, the sha256 of the
uncompressed JSONL, and per package its version and the licences its copyright file names. Loading checks the
sha256 and records it in the run's provenance. scripts/build_corpus_snapshot.py rebuilds both from a Debian host.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path

from prefer.data.documents import Document, split_lines
from prefer.data.sources.base import COMMON_FIELDS, Provenance, Source, budget, utf8_size
from prefer.errors import PreferError

SNAPSHOT_DIR = Path(__file__).resolve().parent.parent / "snapshots"
CHANGELOGS_SNAPSHOT_VERSION = "2026.12"
CHANGELOGS_SNAPSHOT_NAME = "changelogs-snapshot"
SNAPSHOT_LICENCE = (
    "Debian changelogs of the packages of a Debian standard system, each under its package's licence (listed per "
    "package in {manifest}); they name maintainers and their emails"
)


def snapshot_paths(version: str = CHANGELOGS_SNAPSHOT_VERSION, root: Path | None = None) -> tuple[Path, Path]:
    """(data file, manifest) of a changelog snapshot version, in root (None: the one shipped with prefer)."""
    root = SNAPSHOT_DIR if root is None else root
    return root / f"changelogs-{version}.jsonl.gz", root / f"changelogs-{version}.MANIFEST.json"


def snapshot_records(documents: list[Document]) -> bytes:
    """The uncompressed JSONL of a snapshot, whose sha256 the manifest records: one line per document, keys sorted,
    no ASCII escaping, so the bytes (and the hash) depend only on the documents."""
    lines = (
        json.dumps({"source": d.source, "text": "".join(d.segments)}, ensure_ascii=False, sort_keys=True) + "\n"
        for d in documents
    )
    return "".join(lines).encode("utf-8")


def read_snapshot(data_path: Path, manifest_path: Path) -> tuple[list[Document], dict, str]:
    """Documents of a snapshot, its manifest, and the sha256 checked against the manifest's; PreferError in one line
    when a file is missing, unreadable, or does not hash to the manifest's value."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PreferError(f"{manifest_path}: cannot read the snapshot's manifest ({type(e).__name__}: {e})") from None
    try:
        raw = gzip.decompress(data_path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise PreferError(
            f"{data_path}: cannot read the snapshot ({type(e).__name__}: {e}); reinstall prefer"
        ) from None
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise PreferError(
            f"{data_path}: sha256 {actual[:16]}... does not match {manifest_path.name}'s {expected[:16]}...: the "
            "snapshot is corrupted or was changed; reinstall prefer or rebuild it (scripts/build_corpus_snapshot.py)"
        )
    documents = []
    for line in raw.decode("utf-8").splitlines():
        record = json.loads(line)
        documents.append(Document(split_lines(record["text"]), record["source"]))
    return documents, manifest, actual


def _load_changelogs_snapshot(
    spec: str, max_bytes: int | None, cache_dir: Path | None
) -> tuple[list[Document], Provenance]:
    data_path, manifest_path = snapshot_paths()
    documents, manifest, sha256 = read_snapshot(data_path, manifest_path)
    # The budget takes whole changelog files, as the host's "changelogs" source does.
    by_source: dict[str, list[Document]] = {}
    for doc in documents:
        by_source.setdefault(doc.source, []).append(doc)
    kept, left_out = budget(by_source, lambda s: s, lambda s: sum(map(utf8_size, by_source[s])), max_bytes)
    docs = [d for source in kept for d in by_source[source]]
    return docs, Provenance(
        kind="changelogs-snapshot",
        licence=SNAPSHOT_LICENCE.format(manifest=manifest_path.name),
        path=str(data_path),
        files=len(kept),
        bytes=sum(map(utf8_size, docs)),
        left_out_by_budget=left_out,
        details={
            "snapshot": {
                "version": manifest.get("version"),
                "built": manifest.get("built"),
                "host": manifest.get("host"),
                "sha256": sha256,
                "sha256_verified": True,
                "manifest": str(manifest_path),
                "packages": len(manifest.get("packages", ())),
            }
        },
        key_order=("kind", "licence", "path", "snapshot", *COMMON_FIELDS[3:]),
    )


CHANGELOGS_SNAPSHOT = Source(CHANGELOGS_SNAPSHOT_NAME, _load_changelogs_snapshot)
