"""Rebuild prefer's changelog snapshot ("changelogs-snapshot", prefer/data/snapshots/) from this Debian host.

    python scripts/build_corpus_snapshot.py                 # writes prefer/data/snapshots/changelogs-<version>.*
    python scripts/build_corpus_snapshot.py --out /tmp/s    # elsewhere, e.g. to compare with the shipped one

Which packages: the Debian standard system, i.e. every installed package of Priority required, important or
standard, and every installed package these depend on (Depends and Pre-Depends, recursively; of alternatives the
first installed one; a virtual package by the alphabetically first installed provider). Packages a user or a
test set-up installed on top (chromium, postgresql, compilers, ...) are not in it. Of each, the entries of
/usr/share/doc/PKG/changelog.Debian.gz, read as prefer's "changelogs" source reads them (one document per entry,
source "PKG/changelog.Debian.gz"), in package order, repeated entries dropped (libpam-* ship one changelog three
times). The output depends only on the installed versions of those packages: rerun on a host with the same
versions, it writes the same bytes (the manifest's `built` date aside) and prints the same sha256.

The manifest records per package its version, source package, priority, entries, and the licences named by its
/usr/share/doc/PKG/copyright (the "License:" short names of a machine-readable file; otherwise the
/usr/share/common-licenses/ files the text refers to, or nothing found). The shipped snapshot 2026.12 is what this
script wrote on 2026-12-07 on a Debian 12.11 (bookworm) amd64 host.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import platform
import re
import subprocess
import sys
from pathlib import Path

from prefer.data.corpora import dedupe
from prefer.data.sources.debian import DEBIAN_DOC, changelog_documents
from prefer.data.sources.snapshot import (
    CHANGELOGS_SNAPSHOT_NAME,
    CHANGELOGS_SNAPSHOT_VERSION,
    SNAPSHOT_DIR,
    snapshot_paths,
    snapshot_records,
)

SEED_PRIORITIES = ("required", "important", "standard")
FIELDS = ("Package", "Version", "Priority", "source:Package", "db:Status-Status", "Depends", "Pre-Depends", "Provides")
_COMMON_LICENCE = re.compile(r"/usr/share/common-licenses/([A-Za-z0-9][A-Za-z0-9.+_-]*[A-Za-z0-9+])")


def installed_packages() -> dict[str, dict[str, str]]:
    """dpkg's record of each installed package (architecture qualifiers dropped), by name."""
    fmt = "\t".join(f"${{{f}}}" for f in FIELDS) + "\n"
    out = subprocess.run(["dpkg-query", "-W", f"-f={fmt}"], capture_output=True, text=True, check=True).stdout
    packages = {}
    for line in out.splitlines():
        record = dict(zip(FIELDS, line.split("\t"), strict=True))
        if record["db:Status-Status"] == "installed":
            packages[record["Package"]] = record
    return packages


def _names(field: str) -> list[list[str]]:
    """A Depends-style field as clauses of alternatives, names only ("libc6 (>= 2.34) | foo:any" -> [libc6, foo])."""
    clauses = (c.strip() for c in field.split(","))
    return [[a.strip().split(" ")[0].split(":")[0] for a in c.split("|")] for c in clauses if c]


def standard_system(packages: dict[str, dict[str, str]]) -> list[str]:
    """The installed packages of Priority required/important/standard and their dependency closure, sorted."""
    providers: dict[str, list[str]] = {}
    for name, record in packages.items():
        for provided, *_ in _names(record["Provides"]):
            providers.setdefault(provided, []).append(name)
    todo = sorted(name for name, record in packages.items() if record["Priority"] in SEED_PRIORITIES)
    chosen = set(todo)
    while todo:
        record = packages[todo.pop()]
        for alternatives in _names(record["Depends"] + ", " + record["Pre-Depends"]):
            for name in alternatives:
                found = name if name in packages else min(providers.get(name, [""]))
                if found:
                    if found not in chosen:
                        chosen.add(found)
                        todo.append(found)
                    break
    return sorted(chosen)


def licences(copyright_file: Path) -> tuple[list[str], str]:
    """(licence names, how they were found) of a Debian copyright file."""
    if not copyright_file.is_file():
        return [], "no copyright file"
    text = copyright_file.read_text(encoding="utf-8", errors="replace")
    if text.startswith("Format:") or "\nFormat: " in text[:500]:
        names = [line[len("License:") :].strip() for line in text.splitlines() if line.startswith("License:")]
        return list(dict.fromkeys(n for n in names if n)), "machine-readable copyright (License: fields)"
    names = list(dict.fromkeys(_COMMON_LICENCE.findall(text)))
    return names, "free-form copyright: /usr/share/common-licenses references" if names else "free-form: none named"


def debian_version() -> str:
    return Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "unknown"


def build(out_dir: Path) -> dict:
    packages = installed_packages()
    names = [n for n in standard_system(packages) if (DEBIAN_DOC / n / "changelog.Debian.gz").is_file()]
    documents, duplicates = dedupe(changelog_documents([DEBIAN_DOC / n / "changelog.Debian.gz" for n in names]))
    records = snapshot_records(documents)
    entries: dict[str, int] = {}
    for doc in documents:
        entries[doc.source] = entries.get(doc.source, 0) + 1
    listed = []
    for name in names:
        found, method = licences(DEBIAN_DOC / name / "copyright")
        record = packages[name]
        listed.append(
            {
                "package": name,
                "version": record["Version"],
                "source_package": record["source:Package"],
                "priority": record["Priority"],
                "changelog": f"{name}/changelog.Debian.gz",
                "entries": entries.get(f"{name}/changelog.Debian.gz", 0),  # 0: all its entries repeat another's
                "licences": found,
                "licence_method": method,
            }
        )
    data_path, manifest_path = snapshot_paths(CHANGELOGS_SNAPSHOT_VERSION, out_dir)
    manifest = {
        "name": CHANGELOGS_SNAPSHOT_NAME,
        "version": CHANGELOGS_SNAPSHOT_VERSION,
        "built": datetime.date.today().isoformat(),
        "host": {"debian_version": debian_version(), "machine": platform.machine()},
        "script": "scripts/build_corpus_snapshot.py",
        "selection": "installed packages of Priority required/important/standard and their Depends/Pre-Depends "
        "closure; the entries of /usr/share/doc/PKG/changelog.Debian.gz, repeated entries dropped",
        "file": data_path.name,
        "sha256": hashlib.sha256(records).hexdigest(),  # of the uncompressed JSONL
        "documents": len(documents),
        "duplicate_entries_dropped": duplicates,
        "document_bytes": sum(len("".join(d.segments).encode("utf-8")) for d in documents),
        "jsonl_bytes": len(records),
        "packages": listed,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path.write_bytes(gzip.compress(records, compresslevel=9, mtime=0))
    manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SNAPSHOT_DIR, help="directory to write to (default: %(default)s)")
    args = parser.parse_args(argv)
    manifest = build(args.out)
    host = manifest["host"]["debian_version"]
    print(
        f"{manifest['name']} {manifest['version']}: {manifest['documents']} entries of {len(manifest['packages'])} "
        f"packages, {manifest['document_bytes']:,} bytes, sha256 {manifest['sha256']} (Debian {host}, "
        f"{manifest['built']}) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
