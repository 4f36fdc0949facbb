"""Hugging Face data sets ("hf:NAME[:SPLIT]"), loaded through the `datasets` library: the paper's scored Pile
shards (segments with their scores), codeparrot (Python files) or any data set with a text column."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prefer.data.documents import Document, GivenScores
from prefer.data.sources.base import Provenance, Source, budget, prose_documents
from prefer.data.sources.code import code_file_documents
from prefer.errors import PreferError

# A scored data set's "scores" are the numbers of the scorer named by a fragment of its name: the paper's
# shards are tomekkorbak/detoxify-pile-*, tomekkorbak/pii-pile-*, tomekkorbak/codeparrot-*-pep8-*.
HUB_SCORERS = {"detoxify": "toxicity", "toxic": "toxicity", "pii": "pii", "pep8": "pep8"}
# The column that holds a record's text, in order of preference, and how it becomes a document.
HUB_SCHEMAS = {
    "texts": "segments as given (the paper's scored shards: sentences or lines), scores from 'scores'",
    "content": "a Python file (codeparrot), split at top-level definitions, lines",
    "text": "prose, split into sentences",
}


def parse_hub_source(source: str) -> tuple[str, str]:
    """ "hf:NAME[:SPLIT]" -> (NAME, SPLIT); the split defaults to "train"."""
    name, _, split = source.removeprefix("hf:").partition(":")
    if not name:
        raise PreferError(f"corpus source {source!r}: expected hf:NAME[:SPLIT], e.g. hf:codeparrot/codeparrot-clean")
    return name, split or "train"


def check_hub_dataset(name: str, *, where: str) -> None:
    """One request (no retries) before `datasets.load_dataset` goes to the hub for `name`: that call retries a
    refused or timed-out connection five times over half a minute, logging each retry, before its one error. Here
    an unreachable hub or a missing data set is one PreferError at once. Offline (HF_HUB_OFFLINE=1, or datasets'
    HF_DATASETS_OFFLINE=1) nothing is asked: load_dataset then reads its cache."""
    from datasets import config as datasets_config
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE or datasets_config.HF_HUB_OFFLINE:
        return
    try:
        HfApi().dataset_info(name, timeout=15)
    except RepositoryNotFoundError:
        raise PreferError(
            f"{where}: no data set {name!r} on the hub ({constants.ENDPOINT}), or it is private: check the name, "
            "or log in (hf auth login)"
        ) from None
    except Exception as error:  # noqa: BLE001 -- httpx's, the hub client's and OS errors have no common base class
        first = (str(error).strip().splitlines() or [""])[0][:160]
        raise PreferError(
            f"{where}: cannot reach the hub at {constants.ENDPOINT} ({type(error).__name__}: {first}); check the "
            "network, or set HF_HUB_OFFLINE=1 to use a copy already in the cache"
        ) from None


def quiet_hub_logs():
    """A context in which huggingface_hub's and datasets' warnings (e.g. retry notices) are not printed: a failure
    still ends in one PreferError."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def quiet():
        loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)

    return quiet()


def hub_documents(
    name: str,
    *,
    split: str = "train",
    data_files: str | Sequence[str] | None = None,
    cache_dir: str | None = None,
    max_bytes: int | None = None,
    scores_of: str | None = None,
    sentence_cache: Path | None = None,
) -> tuple[list[Document], Provenance]:
    """Documents of a data set loaded with datasets.load_dataset(name, split=split, data_files=...) (the hub
    when online, or a local builder such as "json" with data_files). The schema is chosen by column
    (HUB_SCHEMAS): "texts" (a list of strings per record, the segments; with "scores", one float per segment,
    kept as GivenScores of the scorer `scores_of`, by default the one its name implies (HUB_SCORERS), so
    annotation does not rescore them; with neither, the scores are ignored and the provenance says so);
    "content" (Python code, split like the stdlib, with the file as context); "text" (prose, sentences).
    The document text of a "texts" record is its segments joined with nothing between them. Sources are
    "NAME:SPLIT:INDEX". max_bytes: a budget over records, by stable hash of their sources. cache_dir: the
    datasets library's cache (None: its default); sentence_cache: see split_sentences_many."""
    from datasets import load_dataset  # lazy: importing datasets takes seconds

    where = f"hf:{name}:{split}"
    try:
        with quiet_hub_logs():
            data = load_dataset(name, split=split, data_files=data_files, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 -- the hub's and the builders' errors have no common base class
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PreferError(f"{where}: cannot load the data set ({type(e).__name__}: {first})") from None
    column = next((c for c in HUB_SCHEMAS if c in data.column_names), None)
    if column is None:
        raise PreferError(
            f"{where}: no column {', '.join(map(repr, HUB_SCHEMAS))} (columns: {', '.join(data.column_names)})"
        )
    has_scores = column == "texts" and "scores" in data.column_names
    scorer = scores_of or next((s for fragment, s in HUB_SCORERS.items() if fragment in name.lower()), None)
    scorer = scorer if has_scores else None
    records = data.select_columns([column, "scores"] if has_scores else [column])

    def size(item: tuple) -> int:
        value = item[1][column]
        return len("".join(value).encode("utf-8")) if column == "texts" else len(value.encode("utf-8"))

    items = [(f"{name}:{split}:{i}", record) for i, record in enumerate(records)]
    items, left_out = budget(items, lambda item: item[0], size, max_bytes)
    docs, unparsed = [], 0
    if column == "texts":
        for source, record in items:
            segments = tuple(record["texts"] or ())
            if not all(isinstance(s, str) for s in segments):
                raise PreferError(
                    f"{where}: record {source.rsplit(':', 1)[1]}: field 'texts' must be a list of strings"
                )
            given = None
            if scorer is not None:
                values = tuple(float(v) for v in record["scores"] or ())
                if len(values) != len(segments):
                    raise PreferError(
                        f"{where}: record {source.rsplit(':', 1)[1]}: {len(values)} scores for {len(segments)} texts"
                    )
                given = GivenScores(scorer, values)
            if "".join(segments):
                docs.append(Document(segments, source, given_scores=given))
    elif column == "content":
        for source, record in items:
            pieces, parsed = code_file_documents(record["content"].replace("\r\n", "\n"), source)
            docs += pieces
            unparsed += not parsed
    else:
        docs, _ = prose_documents(
            [(source, record["text"]) for source, record in items if record["text"]], None, sentence_cache
        )
    licence = getattr(data.info, "license", None) or f"see the data set card of {name}"
    return docs, Provenance(
        kind="hub",
        licence=licence,
        path=where,
        files=1,
        bytes=sum(size(item) for item in items),
        skipped=(),
        left_out_by_budget=left_out,
        excluded={},
        details={
            "schema": column,
            "records": len(data),
            "given_scores": scorer,
            "scores_ignored": has_scores and scorer is None,
            "unparsed_files": unparsed,
        },
        key_order=(
            "kind",
            "licence",
            "path",
            "schema",
            "records",
            "given_scores",
            "scores_ignored",
            "files",
            "bytes",
            "skipped",
            "unparsed_files",
            "left_out_by_budget",
            "excluded",
        ),
    )


def _load_hub(spec: str, max_bytes: int | None, cache_dir: Path | None) -> tuple[list[Document], Provenance]:
    name, split = parse_hub_source(spec)
    check_hub_dataset(name, where=f"hf:{name}:{split}")
    return hub_documents(name, split=split, max_bytes=max_bytes, sentence_cache=cache_dir)


HUB = Source("hf:NAME[:SPLIT]", _load_hub, matches=lambda s: s.startswith("hf:"))
