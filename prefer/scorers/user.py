"""Scorers that users bring: by import path, by file path, or from an installed plugin package.

A user scorer is named by a string wherever a scorer name goes (docs/scorers.md):

    py:package.module:function          a callable score(texts) -> list[float], misalignment (lower is better)
    py:path/to/file.py:function         the same, loaded from a file
    py:package.module:Class(k=1, s='x') called with these keyword arguments (Python literals) to make the scorer
    NAME                                an entry point of the group `prefer.scorers` of an installed package
    reward:SPEC                         SPEC returns rewards (higher is better): misalignment = -reward
    SPEC@VERSION                        VERSION is part of annotation cache keys (change it when scores change)

The named object is resolved (imported, and called with its keyword arguments) as soon as the spec is, so a typo
stops a command before any model loads. What stages get is a `UserScorer`: it keeps only the spec string, so it
pickles to worker processes and is resolved again there by import (never a pickled closure), and it checks every
result: a scorer that raises, returns the wrong number of scores, a non-number, NaN or inf stops the command with
one PreferError line naming the spec (and the first bad index).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.metadata
import importlib.util
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefer.errors import PreferError

ENTRY_POINT_GROUP = "prefer.scorers"
REWARD_PREFIX = "reward:"
PY_PREFIX = "py:"

_VERSION = re.compile(r"@(?P<version>[A-Za-z0-9][A-Za-z0-9._+-]*)$")
_PLUGIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Spec:
    """A parsed user scorer spec. Exactly one of `module`, `file` and `plugin` is set."""

    text: str  # as the user wrote it: named in every error, part of every cache key
    attribute: str | None = None  # dotted attribute path in the module or file
    module: str | None = None
    file: str | None = None
    plugin: str | None = None
    kwargs: dict | None = None  # None: no parentheses; {} for `Class()`
    reward: bool = False
    version: str | None = None


def _kwargs(text: str, args: str) -> dict:
    """Keyword arguments `k=v, ...` whose values are Python literals (ast.literal_eval: nothing is executed)."""
    try:
        tree = ast.parse(f"f({args})", mode="eval")
    except SyntaxError as e:
        raise PreferError(f"scorer {text!r}: cannot read the arguments ({args}): {e.msg}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"):
        raise PreferError(f"scorer {text!r}: cannot read the arguments ({args})")
    if call.args or any(keyword.arg is None for keyword in call.keywords):
        raise PreferError(f"scorer {text!r}: write the arguments as keywords, k=v (Python literals)")
    out = {}
    for keyword in call.keywords:
        try:
            out[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise PreferError(
                f"scorer {text!r}: argument {keyword.arg}={ast.unparse(keyword.value)} is not a Python literal "
                "(numbers, strings, lists, dicts, True/False/None)"
            ) from None
    return out


def parse_spec(text: str) -> Spec:
    """The parts of a user scorer spec (see the module docstring); PreferError naming it if it is malformed.
    A bare NAME parses as a plugin whether or not one is installed (`resolve` looks it up)."""
    rest = text.strip()
    reward = rest.startswith(REWARD_PREFIX)
    rest = rest.removeprefix(REWARD_PREFIX)
    version = None
    if match := _VERSION.search(rest):
        version, rest = match["version"], rest[: match.start()]
    kwargs = None
    if rest.endswith(")"):
        opening = rest.find("(")
        if opening < 0:
            raise PreferError(f"scorer {text!r}: a ')' without its '('")
        kwargs, rest = _kwargs(text, rest[opening + 1 : -1]), rest[:opening]
    if rest.startswith(PY_PREFIX):
        where, colon, attribute = rest[len(PY_PREFIX) :].rpartition(":")
        if not colon or not where or not attribute or not all(part.isidentifier() for part in attribute.split(".")):
            raise PreferError(
                f"scorer {text!r}: write py:PACKAGE.MODULE:NAME or py:PATH/TO/FILE.py:NAME (NAME: a function, "
                "a class or an object in it)"
            )
        if where.endswith(".py") or "/" in where or os.sep in where:
            return Spec(text, attribute, file=where, kwargs=kwargs, reward=reward, version=version)
        if not all(part.isidentifier() for part in where.split(".")):
            raise PreferError(f"scorer {text!r}: {where!r} is not a module name (a file path ends in .py)")
        return Spec(text, attribute, module=where, kwargs=kwargs, reward=reward, version=version)
    if not _PLUGIN_NAME.match(rest):
        raise PreferError(f"scorer {text!r}: not a scorer name, py:MODULE:NAME or py:FILE.py:NAME")
    return Spec(text, plugin=rest, kwargs=kwargs, reward=reward, version=version)


def plugin_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Scorer plugins: the entry points of the group `prefer.scorers` of every installed distribution, by name
    (the first one found wins when two distributions use the same name)."""
    out: dict[str, importlib.metadata.EntryPoint] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(entry_point.name, entry_point)
    return out


def is_user_spec(name: str) -> bool:
    """Whether `name` is written as a user scorer (py:..., reward:...) or names an installed plugin."""
    if name.startswith((PY_PREFIX, REWARD_PREFIX)):
        return True
    try:
        spec = parse_spec(name)
    except PreferError:
        return False
    return spec.plugin in plugin_entry_points()


def _import_module(spec: Spec) -> Any:
    name = spec.module
    assert name is not None
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        missing_itself = e.name is not None and (name == e.name or name.startswith(e.name + "."))
        top, cwd = name.split(".")[0], os.getcwd()
        in_cwd = os.path.isdir(os.path.join(cwd, top)) or os.path.isfile(os.path.join(cwd, top + ".py"))
        if missing_itself and in_cwd and cwd not in sys.path:
            # Found as `python -m` finds it: in the working directory (the `prefer` script's sys.path starts
            # with the script's own directory instead).
            sys.path.append(cwd)
            return _import_module(spec)
        where = "" if missing_itself else f" (importing {name})"
        raise PreferError(
            f"scorer {spec.text!r}: no module named {e.name!r}{where}; install it or put its directory on PYTHONPATH"
        ) from None
    except SyntaxError as e:
        raise PreferError(f"scorer {spec.text!r}: {e.filename}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        raise PreferError(f"scorer {spec.text!r}: importing {name} raised {type(e).__name__}: {e}") from e


def _load_file(spec: Spec) -> Any:
    assert spec.file is not None
    path = Path(spec.file).expanduser().resolve()
    if not path.is_file():
        raise PreferError(f"scorer {spec.text!r}: {spec.file}: no such file")
    # A stable module name per file, registered in sys.modules: classes defined there pickle and dataclasses work.
    module_name = "_prefer_user_scorer_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
    if module_name in sys.modules:
        return sys.modules[module_name]
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise PreferError(f"scorer {spec.text!r}: {spec.file}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    try:
        loader_spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[module_name]
        raise PreferError(f"scorer {spec.text!r}: {spec.file}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        del sys.modules[module_name]
        raise PreferError(f"scorer {spec.text!r}: running {spec.file} raised {type(e).__name__}: {e}") from e
    return module


def _source_digest(module: Any) -> str | None:
    """sha256 (12 hex digits) of a module's source file: the default version of a scorer defined there."""
    path = getattr(module, "__file__", None)
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12] if path else None
    except OSError:
        return None


@dataclass(frozen=True)
class Resolved:
    """A resolved spec: the scorer object, whether it returns rewards, and the version that keys caches."""

    obj: Any
    reward: bool
    version: str


_RESOLVED: dict[str, Resolved] = {}  # per process: a class is instantiated (a model loaded) once per spec


def resolve(text: str) -> Resolved:
    """Import (or load the plugin of) the spec `text` and build its scorer object; cached per process."""
    if text in _RESOLVED:
        return _RESOLVED[text]
    spec = parse_spec(text)
    if spec.plugin is not None:
        entry_points = plugin_entry_points()
        if spec.plugin not in entry_points:
            raise PreferError(unknown_message(text, "scorer"))
        entry_point = entry_points[spec.plugin]
        dist = entry_point.dist
        origin = f"plugin {spec.plugin!r} ({entry_point.value}"
        origin += f" of {dist.name} {dist.version})" if dist is not None else ")"
        try:
            target = entry_point.load()
        except Exception as e:
            raise PreferError(f"scorer {text!r}: loading {origin} raised {type(e).__name__}: {e}") from e
        default_version = f"{dist.name}-{dist.version}" if dist is not None else entry_point.value
        module = None
    else:
        module = _load_file(spec) if spec.file is not None else _import_module(spec)
        target = module
        for part in (spec.attribute or "").split("."):
            if not hasattr(target, part):
                where = spec.file or spec.module
                raise PreferError(f"scorer {text!r}: {where} has no {spec.attribute!r}")
            target = getattr(target, part)
        origin = spec.attribute
        default_version = None
    if spec.kwargs is not None or isinstance(target, type):
        if not callable(target):
            raise PreferError(f"scorer {text!r}: {origin} is not callable, so it takes no arguments")
        try:
            obj = target(**(spec.kwargs or {}))
        except Exception as e:
            raise PreferError(f"scorer {text!r}: building it raised {type(e).__name__}: {e}") from e
    else:
        obj = target
    user_version = getattr(obj, "version", None)
    if spec.version is not None:
        user_version = spec.version
    elif not isinstance(user_version, str | int):
        user_version = None
    if user_version is not None:
        version = f"user-{user_version}" + (f"-{default_version}" if default_version else "")
    elif default_version is not None:
        version = f"plugin-{default_version}"
    else:
        digest = _source_digest(sys.modules.get(getattr(obj, "__module__", None) or "") or module)
        version = f"source-{digest}" if digest else "unversioned"
    reward = spec.reward or bool(getattr(obj, "higher_is_better", False))
    _RESOLVED[text] = resolved = Resolved(obj, reward, version)
    return resolved


def call_checked(name: str, fn: Callable, args: tuple, n: int, what: str, *, higher_is_better: bool) -> list[float]:
    """`fn(*args)` as n finite misalignment scores (rewards negated when `higher_is_better`); an exception or a bad
    result becomes one PreferError line naming the scorer `name`. The one check every user scorer goes through
    (`py:` specs, plugins, and `prefer.api.as_scorer`'s Python callables)."""
    if n == 0:
        return []
    try:
        out = fn(*args)
    except PreferError as e:
        raise PreferError(f"scorer {name!r}: {e}") from e
    except Exception as e:
        message = " ".join(str(e).split())[:300]
        raise PreferError(f"scorer {name!r} raised {type(e).__name__}: {message}") from e
    return _checked(name, out, n, what, -1.0 if higher_is_better else 1.0)


def _checked(spec: str, out: Any, n: int, what: str, sign: float) -> list[float]:
    """`out` as n finite floats (times sign); PreferError naming the spec and the first bad index otherwise."""
    if isinstance(out, str | bytes | dict) or not hasattr(out, "__len__") or not hasattr(out, "__iter__"):
        raise PreferError(f"scorer {spec!r} returned {type(out).__name__}, not a list of {n} numbers (one per {what})")
    values = list(out)
    if len(values) != n:
        raise PreferError(f"scorer {spec!r} returned {len(values)} scores for {n} {what}s")
    result = []
    for i, value in enumerate(values):
        try:
            if isinstance(value, str | bytes) or value is None:
                raise TypeError
            number = float(value)
        except (TypeError, ValueError):
            raise PreferError(
                f"scorer {spec!r} returned a non-number at index {i} of {n}: {str(value)[:40]!r}"
            ) from None
        if not math.isfinite(number):
            raise PreferError(f"scorer {spec!r} returned {number} at index {i} of {n}; scores must be finite")
        result.append(sign * number)
    return result


class UserScorer:
    """A user scorer by its spec: `scorer(texts) -> list[float]`, misalignment, lower is better, every result
    checked. Pickles as its spec alone and resolves again, by import, in the process that unpickles it.
    segments=True: the per-segment scorer (the object's `score_segments` when it has one, else the object)."""

    def __init__(self, spec: str, *, segments: bool = False):
        self.spec = spec
        self.segments = segments
        self._resolved: Resolved | None = None
        self._fn()  # import now: a typo fails here, before any model loads

    def _fn(self):
        if self._resolved is None:
            self._resolved = resolve(self.spec)
        obj = self._resolved.obj
        fn = getattr(obj, "score_segments", obj) if self.segments else obj
        if not callable(fn):
            raise PreferError(f"scorer {self.spec!r}: {type(obj).__name__} object is not callable")
        return fn

    @property
    def version(self) -> str:
        """Part of annotation cache keys (with the spec itself): the user's version (`@VERSION` or a `version`
        attribute), else the plugin's distribution and version, else a digest of the defining file."""
        self._fn()
        return self._resolved.version  # type: ignore[union-attr]

    @property
    def higher_is_better(self) -> bool:
        """Whether the user's object returns rewards; `self` returns misalignment (negated rewards) either way."""
        self._fn()
        return self._resolved.reward  # type: ignore[union-attr]

    def _call(self, method: str, args: tuple, n: int) -> list[float]:
        if n == 0:
            return []
        fn = self._fn()
        if method != "__call__":
            fn = getattr(self._resolved.obj, method)  # type: ignore[union-attr]
        what = "segment" if self.segments else "text" if method == "__call__" else "pair"
        return call_checked(self.spec, fn, args, n, what, higher_is_better=self.higher_is_better)

    def __call__(self, texts: Sequence[str]) -> list[float]:
        texts = list(texts)
        return self._call("__call__", (texts,), len(texts))

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "segments": self.segments}

    def __setstate__(self, state: dict) -> None:
        self.spec, self.segments, self._resolved = state["spec"], state["segments"], None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}{', segments=True' if self.segments else ''})"


class UserPairScorer(UserScorer):
    """A user scorer whose object also has `score_pairs(prompts, responses)` (a PairScorer)."""

    def score_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise PreferError(f"scorer {self.spec!r}: {len(prompts)} prompts for {len(responses)} responses")
        return self._call("score_pairs", (prompts, responses), len(prompts))


def user_scorer(spec: str, *, segments: bool = False) -> UserScorer:
    """The checked scorer of a user spec, resolved now (PreferError naming it if it cannot be)."""
    obj = resolve(spec).obj
    if not segments and callable(getattr(obj, "score_pairs", None)):
        return UserPairScorer(spec)
    return UserScorer(spec, segments=segments)


def plugin_names() -> list[str]:
    return sorted(plugin_entry_points())


def unknown_message(name: str, what: str, builtins: Sequence[str] = ()) -> str:
    """One line: the name is unknown; the built-in names, the installed plugins and the user forms."""
    plugins = plugin_names()
    listed = f"; choices: {', '.join(sorted(builtins))}" if builtins else ""
    listed += f"; plugins ({ENTRY_POINT_GROUP} entry points): {', '.join(plugins)}" if plugins else ""
    return (
        f"unknown {what} {name!r}{listed}; or your own: py:MODULE:NAME, py:FILE.py:NAME, reward:..., "
        "NAME(k=v) (docs/scorers.md)"
    )
