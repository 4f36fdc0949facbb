"""The changelog snapshot shipped with prefer ("changelogs-snapshot"): loads offline, matches its manifest, refuses a
corrupted copy in one line, is the demos' default, and does not change when the machine installs packages."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from prefer import cli
from prefer.config import RLHFConfig, load_config
from prefer.data.corpora import load_documents
from prefer.data.sources import debian, snapshot
from prefer.errors import PreferError

REPO = Path(__file__).resolve().parents[2]
DATA, MANIFEST = snapshot.snapshot_paths()
CHANGELOG = REPO / "tests" / "fixtures" / "data" / "changelogs" / "changelog.Debian.gz"


def _manifest() -> dict:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def test_snapshot_loads_offline_with_its_manifest_hash_verified(monkeypatch):
    # No machine file is read: with /usr/share/doc pointed at nothing, the snapshot still loads.
    monkeypatch.setattr(debian, "DEBIAN_DOC", Path("/nonexistent"))
    docs, prov = load_documents("changelogs-snapshot")
    manifest = _manifest()
    assert len(docs) == manifest["documents"] == prov["documents"]
    assert prov["kind"] == "changelogs-snapshot" and prov["duplicate_documents"] == 0
    assert prov["snapshot"]["sha256"] == manifest["sha256"] and prov["snapshot"]["sha256_verified"] is True
    assert prov["snapshot"]["version"] == snapshot.CHANGELOGS_SNAPSHOT_VERSION == manifest["version"]
    assert prov["bytes"] == prov["document_bytes"] == manifest["document_bytes"]
    # Documents are changelog entries of the manifest's packages, each ending in its maintainer trailer (almost all:
    # an entry may lack one), with the host source's "PKG/changelog.Debian.gz" names.
    assert {d.source for d in docs} <= {p["changelog"] for p in manifest["packages"]}
    assert sum(d.segments[-1].startswith(" -- ") for d in docs) > 0.95 * len(docs)


def test_snapshot_hash_is_the_manifests_and_the_records_round_trip():
    raw = gzip.decompress(DATA.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == _manifest()["sha256"]
    docs, _ = load_documents("changelogs-snapshot")
    assert snapshot.snapshot_records(docs) == raw  # what loads is exactly what was hashed


def test_manifest_records_every_package_with_version_and_licences():
    manifest = _manifest()
    names = [p["package"] for p in manifest["packages"]]
    assert names == sorted(names) and len(names) == len(set(names))
    assert not any(n.startswith(("chromium", "postgresql")) for n in names)  # installed later on the build host
    assert all(p["version"] and p["priority"] for p in manifest["packages"])
    assert sum(bool(p["licences"]) for p in manifest["packages"]) > 0.9 * len(names)
    assert sum(p["entries"] for p in manifest["packages"]) == manifest["documents"]
    assert DATA.stat().st_size < 1_000_000  # small enough to ship in the wheel


def _copy_snapshot(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    shutil.copy(DATA, tmp_path / DATA.name)
    shutil.copy(MANIFEST, tmp_path / MANIFEST.name)
    monkeypatch.setattr(snapshot, "SNAPSHOT_DIR", tmp_path)
    return tmp_path / DATA.name, tmp_path / MANIFEST.name


def test_corrupted_snapshot_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    data, _ = _copy_snapshot(tmp_path, monkeypatch)
    raw = bytearray(gzip.decompress(data.read_bytes()))
    raw[raw.index(b"@")] = ord("#")  # one changed character: still valid gzip and JSON, another hash
    data.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(PreferError, match="does not match") as error:
        load_documents("changelogs-snapshot")
    assert "\n" not in str(error.value)
    # Through the CLI: exit code 2 and one line on stderr, before anything is scored.
    code = cli.main(["corpus", "data.source=changelogs-snapshot", f"data.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "sha256" in err
    assert not (tmp_path / "cache").exists()


def test_truncated_snapshot_is_a_one_line_error(tmp_path, monkeypatch):
    data, _ = _copy_snapshot(tmp_path, monkeypatch)
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(PreferError, match="cannot read the snapshot") as error:
        load_documents("changelogs-snapshot")
    assert "\n" not in str(error.value)


def test_snapshot_budget_takes_whole_changelogs():
    docs, prov = load_documents("changelogs-snapshot", max_bytes=300_000)
    full, _ = load_documents("changelogs-snapshot")
    assert 0 < prov["bytes"] <= 300_000 and prov["left_out_by_budget"] > 0
    kept = {d.source for d in docs}
    assert docs == [d for d in full if d.source in kept]  # every entry of a chosen changelog, in order


def test_installing_a_package_changes_the_host_source_not_the_snapshot(tmp_path, monkeypatch):
    doc = tmp_path / "doc"
    (doc / "hello").mkdir(parents=True)
    shutil.copy(CHANGELOG, doc / "hello" / "changelog.Debian.gz")
    monkeypatch.setattr(debian, "DEBIAN_DOC", doc)
    host_before, _ = load_documents("changelogs")
    snapshot_before, prov_before = load_documents("changelogs-snapshot")
    # "apt install" a second package: its changelog appears under /usr/share/doc.
    (doc / "newpkg").mkdir()
    text = gzip.decompress(CHANGELOG.read_bytes()).decode().replace("hello (", "newpkg (")
    (doc / "newpkg" / "changelog.Debian.gz").write_bytes(gzip.compress(text.encode()))
    host_after, _ = load_documents("changelogs")
    snapshot_after, prov_after = load_documents("changelogs-snapshot")
    assert len(host_before) == 3 and len(host_after) == 6  # the fixture has 3 entries
    assert snapshot_after == snapshot_before and prov_after == prov_before


def _captured_demo_config(monkeypatch, argv: list[str]):
    captured = {}
    if "rlhf" in argv:
        monkeypatch.setattr("prefer.experiments.rlhf.rlhf", lambda config: captured.setdefault("config", config))
    else:
        monkeypatch.setattr("prefer.experiments.experiment", lambda config: captured.setdefault("config", config))
    assert cli.main(argv) == 0
    return captured["config"]


def test_demos_default_to_the_snapshot(monkeypatch):
    assert _captured_demo_config(monkeypatch, ["demo"]).pretrain.data.source == "changelogs-snapshot"
    assert _captured_demo_config(monkeypatch, ["demo", "--task", "pii"]).pretrain.data.source == "changelogs-snapshot"
    assert _captured_demo_config(monkeypatch, ["demo", "--pipeline", "rlhf"]).source == "changelogs-snapshot"
    assert load_config(RLHFConfig, yaml_path=REPO / "configs" / "rlhf-demo.yaml").source == "changelogs-snapshot"
    # The machine's changelogs stay an explicit choice; other tasks keep their own corpus.
    host = _captured_demo_config(monkeypatch, ["demo", "pretrain.data.source=changelogs"])
    assert host.pretrain.data.source == "changelogs"
    assert _captured_demo_config(monkeypatch, ["demo", "--task", "pep8"]).pretrain.data.source is None
    assert _captured_demo_config(monkeypatch, ["demo", "task=toxicity"]).pretrain.data.source is None


def _build_script():
    spec = importlib.util.spec_from_file_location(
        "build_corpus_snapshot", REPO / "scripts" / "build_corpus_snapshot.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_snapshot_selection_is_the_standard_system_and_its_dependencies():
    def package(priority: str, depends: str = "", pre: str = "", provides: str = "") -> dict[str, str]:
        return {"Priority": priority, "Depends": depends, "Pre-Depends": pre, "Provides": provides}

    installed = {
        "bash": package("required", pre="libc6 (>= 2.36)"),
        "libc6": package("optional", depends="libgcc-s1"),
        "libgcc-s1": package("optional"),
        "man-db": package("important", depends="missing-pkg | groff-base, mail-transport-agent"),
        "groff-base": package("optional"),
        "exim4": package("optional", provides="mail-transport-agent"),
        "postfix": package("optional", provides="mail-transport-agent"),
        "chromium": package("optional", depends="libc6"),  # installed on top: depends on the base, not needed by it
        "postgresql": package("optional"),
    }
    # exim4 is the alphabetically first provider of the virtual package.
    assert _build_script().standard_system(installed) == ["bash", "exim4", "groff-base", "libc6", "libgcc-s1", "man-db"]
