"""Corpus sources, one module per family, each a `Source` that builds documents and a `Provenance`:
code (stdlib, site-packages, a directory of .py), debian (changelogs, copyrights), python_metadata, fortunes,
man_pages (with a roff renderer), hub (hf:NAME[:SPLIT] through `datasets`), jsonl. `prefer.data.corpora`
dispatches a `data.source` to them."""

from prefer.data.sources.base import Provenance, Source

__all__ = ["Provenance", "Source"]
