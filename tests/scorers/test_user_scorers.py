"""The user's own scorer wherever a scorer name goes: by import path, by file path, as a class with keyword
arguments, from a pip-installed plugin package (examples/prefer-example-scorer), as a reward (negated); checked
(a scorer that raises, returns the wrong length, a non-number or NaN stops the command with one line, exit 2),
resolved up front, picklable as its spec into fresh worker processes, and versioned in annotation cache keys."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch

from prefer.cli import main
from prefer.data.annotate import _score_chunk, annotate
from prefer.data.documents import Document
from prefer.data.formats import read_demonstrations, read_rankings
from prefer.data.tokenizer import train_tokenizer
from prefer.errors import PreferError
from prefer.labeling import rank_by_scores
from prefer.models.build import build_model
from prefer.scorers import PairScorer, get_scorer, get_segment_scorer, score_responses, scorer_names, scorer_version
from prefer.scorers.user import UserScorer

ROOT = Path(__file__).resolve().parents[2]
PREFER = Path(sys.executable).parent / "prefer"  # the console script of this environment

USER_SCORERS = '''
import math
import os


def at_sign(texts):
    """1.0 for a text with an '@', else 0.0."""
    return [float("@" in t) for t in texts]


def pid(texts):
    """The id of the process that scored (which process ran the scorer)."""
    return [float(os.getpid())] * len(texts)


def versioned(texts):
    return [0.0] * len(texts)


versioned.version = 3


def reward_x(texts):
    """A reward that declares itself: more x is better."""
    return [float(t.count("x")) for t in texts]


reward_x.higher_is_better = True


class Count:
    def __init__(self, char="x", weight=1.0):
        self.char, self.weight = char, weight

    def __call__(self, texts):
        return [self.weight * t.count(self.char) for t in texts]

    def score_segments(self, segments):  # used for corpus annotation instead of __call__
        return [-1.0 * s.count(self.char) for s in segments]


class PairsOnly:
    """Reads the response apart from its prompt; scoring the joined text is an error here."""

    def __call__(self, texts):
        raise RuntimeError("the joined text was scored")

    def score_pairs(self, prompts, responses):
        return [float(r.count("x")) for r in responses]


def bad_raises(texts):
    raise ValueError("boom")


def bad_length(texts):
    return [0.0] * (len(texts) + 1)


def bad_nan(texts):
    out = [0.0] * len(texts)
    out[min(1, len(texts) - 1)] = math.nan
    return out


def bad_inf(texts):
    return [math.inf] * len(texts)


def bad_string(texts):
    return ["low"] * len(texts)


def bad_none(texts):
    return None
'''


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    """user_scorers.py (a file, and an importable module `prefer_test_user_scorers` of the same text)."""
    tmp = tmp_path_factory.mktemp("user")
    (tmp / "user_scorers.py").write_text(USER_SCORERS)
    (tmp / "prefer_test_user_scorers.py").write_text(USER_SCORERS)
    return tmp


@pytest.fixture
def as_module(user_dir, monkeypatch) -> str:
    monkeypatch.syspath_prepend(str(user_dir))
    return "prefer_test_user_scorers"


def doc_lines(i: int) -> list[str]:
    return [f"entry {i}\n", "NOTE from ab\n", "mail ab@cd.org\n" if i % 2 == 0 else "no mail\n"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """10 documents of 3 lines: every line 2 is 'NOTE from ab' (4 of its 10 letters upper case), and the even
    documents' line 3 holds an '@' (5 of the 30 lines)."""
    path = tmp_path_factory.mktemp("corpus") / "notes.jsonl"
    path.write_text("".join(json.dumps({"text": "".join(doc_lines(i))}) + "\n" for i in range(10)))
    return path


def corpus_args(corpus: Path, cache: Path, scorer: str) -> list[str]:
    return [
        "corpus",
        "data.task=pii",
        f"data.source={corpus}",
        f"data.cache_dir={cache}",
        "data.workers=1",
        "data.max_bytes=null",
        "data.validation_fraction=0.1",
        "runtime.progress=false",
        f"data.scorer={scorer}",
    ]


def run_corpus(capsys, corpus, cache, scorer) -> dict:
    assert main(corpus_args(corpus, cache, scorer)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)["score_summary"]


@pytest.fixture
def plugin(plugin_site, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(plugin_site))
    return plugin_site


def one_error_line(err: str) -> str:
    """The one line of stderr that is not a progress bar; fails if there is any other."""
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and lines[0].startswith("prefer: error: "), err
    return lines[0]


# ---------------------------------------------------------------- scoring a corpus (`prefer corpus data.scorer=`)


def test_a_file_scorer_scores_a_corpus(user_dir, corpus, tmp_path, capsys):
    summary = run_corpus(capsys, corpus, tmp_path, f"py:{user_dir / 'user_scorers.py'}:at_sign")
    # 5 of the 30 lines hold an '@' (score 1, the rest 0): mean 5/30; bad (> the pii threshold 0): 5 of 30 lines
    # and the 5 even documents of 10 (mean 1/3 > 0).
    assert summary["segments"] == 30 and summary["mean"] == pytest.approx(5 / 30)
    assert summary["fraction_bad_segments"] == pytest.approx(5 / 30)
    assert summary["fraction_bad_documents"] == pytest.approx(0.5)
    [cached] = (tmp_path / "annotated").glob("annotations-*.jsonl.gz")
    assert cached.name.startswith("annotations-py_") and ":" not in cached.name  # a file name, whatever the spec


def test_an_import_path_scorer_with_score_segments_and_reward_scores_a_corpus(as_module, corpus, tmp_path, capsys):
    # Count(char='a').score_segments is -1 x the a's of each line: 'NOTE from ab' 1 and 'mail ab@cd.org' 2 (5 lines),
    # 'no mail' 1 (5 lines), 'entry i' 0: -(10 + 10 + 5) / 30; `reward:` negates it back: +25/30.
    summary = run_corpus(capsys, corpus, tmp_path / "a", f"py:{as_module}:Count(char='a', weight=9.0)")
    assert summary["mean"] == pytest.approx(-25 / 30) and summary["fraction_bad_segments"] == 0
    summary = run_corpus(capsys, corpus, tmp_path / "b", f"reward:py:{as_module}:Count(char='a')")
    assert summary["mean"] == pytest.approx(25 / 30) and summary["fraction_bad_segments"] == pytest.approx(20 / 30)


def test_a_user_scorer_runs_in_forked_annotation_workers(user_dir, corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("prefer.data.annotate._MIN_CHUNK_CHARS", 50)  # ~10 chunks of this 300-character corpus
    args = corpus_args(corpus, tmp_path, f"py:{user_dir / 'user_scorers.py'}:pid")
    assert main([*args, "data.workers=2"]) == 0, capsys.readouterr().err
    [cached] = (tmp_path / "annotated").glob("annotations-*.jsonl.gz")
    with gzip.open(cached, "rt") as f:
        pids = {score for line in f for score in json.loads(line)["scores"]}
    assert float(os.getpid()) in pids and len(pids) >= 2  # the first chunk here, the others in workers


@pytest.mark.parametrize(
    "scorer, expected",
    [
        ("bad_raises", "raised ValueError: boom"),
        ("bad_length", "returned 4 scores for 3 segments"),
        ("bad_nan", "returned nan at index 1 of 3; scores must be finite"),
        ("bad_inf", "returned inf at index 0 of 3"),
        ("bad_string", "returned a non-number at index 0 of 3: 'low'"),
        ("bad_none", "returned NoneType, not a list of 3 numbers"),
    ],
)
def test_a_bad_scorer_stops_corpus_scoring_with_one_line_and_writes_no_annotation(
    user_dir, corpus, tmp_path, capfd, scorer, expected
):
    spec = f"py:{user_dir / 'user_scorers.py'}:{scorer}"
    capfd.readouterr()
    assert main(corpus_args(corpus, tmp_path, spec)) == 2
    line = one_error_line(capfd.readouterr().err)
    assert f"scorer {spec!r}" in line and expected in line
    assert not list((tmp_path / "annotated").glob("*.jsonl.gz"))


# ---------------------------------------------------------------- `prefer label --synthetic` gold


PROMPTS = [f"write {i}:" for i in range(8)]


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("label")
    texts = ["xx ab x cd xa bx\n", "abc xyz xx\n", "AB CD Xy ZZ x\n", "write 1: tie 2:\n"] * 30
    tokenizer = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32)
    model.save_pretrained(tmp / "lm")
    tokenizer.save_pretrained(tmp / "lm")
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return tmp


def label_args(lm: Path, out: Path, scorer: str) -> list[str]:
    return [
        "label",
        "--synthetic",
        f"model={lm / 'lm'}",
        f"prompts={lm / 'prompts.jsonl'}",
        f"scorer={scorer}",
        "num_responses=4",
        "generation.max_new_tokens=10",
        f"rankings_out={out / 'rankings.jsonl'}",
        f"demonstrations_out={out / 'demos.jsonl'}",
        "runtime.device=cpu",
        "runtime.seed=1",
    ]


def label(capsys, lm, out, scorer):
    assert main(label_args(lm, out, scorer)) == 0, capsys.readouterr().err
    capsys.readouterr()
    return read_rankings(out / "rankings.jsonl"), read_demonstrations(out / "demos.jsonl")


def x_count(prompt: str, response: str) -> float:
    return float((prompt + response).count("x"))  # the prompts hold no x


def test_label_synthetic_ranks_by_a_file_scorer_with_keyword_arguments(user_dir, lm, tmp_path, capsys):
    comparisons, demonstrations = label(capsys, lm, tmp_path, f"py:{user_dir / 'user_scorers.py'}:Count(char='x')")
    assert comparisons
    for c in comparisons:
        assert c.ranks == rank_by_scores([x_count(c.prompt, r) for r in c.responses])
    best = {d.prompt: d.response for d in demonstrations}
    assert all(x_count(c.prompt, best[c.prompt]) == min(x_count(c.prompt, r) for r in c.responses) for c in comparisons)


@pytest.mark.parametrize("scorer", ["reward:py:{module}:Count(char='x')", "py:{module}:reward_x"])
def test_label_synthetic_with_a_reward_ranks_the_most_rewarded_first(as_module, lm, tmp_path, capsys, scorer):
    comparisons, _ = label(capsys, lm, tmp_path, scorer.format(module=as_module))
    assert comparisons
    for c in comparisons:
        assert c.ranks == rank_by_scores([-x_count(c.prompt, r) for r in c.responses])


def test_label_synthetic_uses_score_pairs_of_a_user_pair_scorer(as_module, lm, tmp_path, capsys):
    scorer = get_scorer(f"py:{as_module}:PairsOnly")
    assert isinstance(scorer, PairScorer) and score_responses(scorer, ["p x:"], ["x y x"]) == [2.0]
    comparisons, _ = label(capsys, lm, tmp_path, f"py:{as_module}:PairsOnly")  # __call__ would raise
    for c in comparisons:
        assert c.ranks == rank_by_scores([float(r.count("x")) for r in c.responses])


@pytest.mark.parametrize(
    "scorer, expected",
    [
        ("bad_raises", "raised ValueError: boom"),
        ("bad_length", "scores for"),
        ("bad_nan", "returned nan at index 1 of"),
    ],
)
def test_a_bad_gold_scorer_stops_labeling_with_one_line_and_writes_nothing(
    user_dir, lm, tmp_path, capfd, scorer, expected
):
    spec = f"py:{user_dir / 'user_scorers.py'}:{scorer}"
    capfd.readouterr()
    assert main(label_args(lm, tmp_path, spec)) == 2
    line = one_error_line(capfd.readouterr().err)
    assert f"scorer {spec!r}" in line and expected in line
    assert not (tmp_path / "rankings.jsonl").exists() and not (tmp_path / "demos.jsonl").exists()


@pytest.mark.parametrize(
    "scorer, expected",
    [
        ("py:prefer_no_such_module:f", "no module named 'prefer_no_such_module'"),
        ("py:{file}:nope", "has no 'nope'"),
        ("py:{dir}/missing.py:f", "missing.py: no such file"),
        ("py:{file}:Count(char=__import__('os').getcwd())", "is not a Python literal"),
        ("py:{file}:Count('x')", "write the arguments as keywords"),
        ("py:{file}:Count(colour='x')", "building it raised TypeError"),
        ("py:{dir}/broken.py:f", "broken.py:2: syntax error"),
        ("py:just-a-module", "write py:PACKAGE.MODULE:NAME or py:PATH/TO/FILE.py:NAME"),
        ("nope", "unknown scorer 'nope'; choices: pep8, pep8-ruff"),
    ],
)
def test_a_scorer_that_cannot_be_resolved_stops_before_the_model_loads(user_dir, tmp_path, capsys, scorer, expected):
    (user_dir / "broken.py").write_text("def f(texts):\n    return [0.0 for t in texts\n")
    spec = scorer.format(file=user_dir / "user_scorers.py", dir=user_dir)
    args = label_args(tmp_path / "no-model", tmp_path, spec)  # a model that does not exist is never reached
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert expected in line and "no-model" not in line


# ---------------------------------------------------------------- the installed plugin package


def test_an_installed_plugin_scores_a_corpus_in_a_real_process(plugin_site, corpus, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(plugin_site), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [PREFER, *corpus_args(corpus, tmp_path, "shouting")], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)["score_summary"]
    # 'NOTE from ab': 4 of 10 letters upper case, on 10 of the 30 lines; every other line has none.
    assert summary["mean"] == pytest.approx(10 * 0.4 / 30) and summary["quantiles"]["max"] == pytest.approx(0.4)
    assert summary["fraction_bad_documents"] == 1.0


def test_an_installed_plugin_is_a_gold_scorer_and_help_and_an_unknown_name_list_it(plugin, lm, tmp_path, capsys):
    assert {"shouting", "keyword"} <= set(scorer_names())
    with pytest.raises(SystemExit):
        main(["label", "--help"])
    help_text = capsys.readouterr().out
    assert "installed plugins: keyword, shouting" in help_text  # the help of every scorer key lists them
    assert "py:PACKAGE.MODULE:NAME" in help_text and "docs/scorers.md" in help_text
    comparisons, _ = label(capsys, lm, tmp_path, "keyword(words=['x'], weight=2.0)")
    for c in comparisons:
        # keyword is case-insensitive: X counts too
        assert c.ranks == rank_by_scores([2.0 * (c.prompt + r).lower().count("x") for r in c.responses])
    assert main(label_args(lm, tmp_path, "nope")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "plugins (prefer.scorers entry points): keyword, shouting" in line
    shouting = get_scorer("shouting")
    assert shouting(["ABcd", "", "a!"]) == [0.5, 0.0, 0.0]  # 2 of 4 letters; no letters; 0 of 1
    assert shouting.version == "user-1-prefer-example-scorer-0.1.0"  # its `version` and its distribution's


# ---------------------------------------------------------------- worker processes, versions


def test_a_user_scorer_pickles_as_its_spec_and_resolves_again_in_a_fresh_process(user_dir):
    file = user_dir / "user_scorers.py"
    scorer = get_scorer(f"py:{file}:Count(char='a', weight=2.0)")
    assert b"Count" in pickle.dumps(scorer) and len(pickle.dumps(scorer)) < 400  # the spec, not the object
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # a fresh interpreter
        assert pool.submit(scorer, ["aa b", "b"]).result() == [4.0, 0.0]
        assert pool.submit(_score_chunk, f"py:{file}:at_sign", [("a@b\n", "c\n")]).result() == [[1.0, 0.0]]
        [[child]] = pool.submit(_score_chunk, f"py:{file}:pid", [("x",)]).result()
        assert child != os.getpid()
        with pytest.raises(PreferError, match="raised ValueError: boom"):
            pool.submit(get_scorer(f"py:{file}:bad_raises"), ["a"]).result()


def test_the_version_keys_the_annotation_cache(user_dir, tmp_path):
    file = user_dir / "user_scorers.py"
    assert scorer_version(f"py:{file}:versioned") == "user-3"  # its `version` attribute
    assert scorer_version(f"py:{file}:at_sign@2024-06") == "user-2024-06"  # @VERSION
    copy = tmp_path / "copy.py"
    copy.write_text(USER_SCORERS)
    unversioned = scorer_version(f"py:{copy}:at_sign")
    assert unversioned.startswith("source-")  # a digest of the file: editing it changes the key
    edited = tmp_path / "edited.py"
    edited.write_text(USER_SCORERS + "\n# edited\n")
    assert scorer_version(f"py:{edited}:at_sign") != unversioned

    documents = [Document(tuple(doc_lines(i)), f"doc{i}") for i in range(3)]
    for spec in (f"py:{file}:at_sign", f"py:{file}:at_sign", f"py:{file}:at_sign@2"):
        annotate(documents, spec, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert len(list((tmp_path / "cache").glob("annotations-*.jsonl.gz"))) == 2  # the second run read the cache


def test_get_segment_scorer_takes_score_segments_and_plain_callables(as_module):
    assert get_segment_scorer(f"py:{as_module}:Count(char='a')")(["aa", "b"]) == [-2.0, 0.0]  # score_segments
    assert get_segment_scorer(f"py:{as_module}:at_sign")(("a@", "b")) == [1.0, 0.0]  # each segment alone
    assert isinstance(get_segment_scorer(f"py:{as_module}:at_sign"), UserScorer)
    assert get_scorer(f"py:{as_module}:at_sign")([]) == []  # nothing to score: the scorer is not called


def test_a_module_in_the_working_directory_is_found_by_the_console_script(user_dir, corpus, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(user_dir / "user_scorers.py", work / "my_scorers.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [PREFER, *corpus_args(corpus, tmp_path / "cache", "py:my_scorers:at_sign")],
        env=env,
        capture_output=True,
        text=True,
        cwd=work,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["score_summary"]["mean"] == pytest.approx(5 / 30)
