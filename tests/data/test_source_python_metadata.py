"""The python-metadata source: one METADATA document per installed distribution."""

from __future__ import annotations

from prefer.data.corpora import load_documents


def test_python_metadata_source():
    docs, prov = load_documents("python-metadata")
    pysbd_docs = [d for d in docs if d.source.startswith("pysbd-")]
    assert len(pysbd_docs) == 1 and pysbd_docs[0].segments[0].startswith("Metadata-Version:")
    assert prov["kind"] == "python-metadata" and prov["files"] == len(docs) + prov["duplicate_documents"]
