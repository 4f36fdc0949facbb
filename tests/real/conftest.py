"""The `real` tier's shared model: SmolLM2-135M-Instruct converted once per session into a fresh cache, which
PREFER_CACHE names until the session ends, so every test (and every stage a test runs in-process) resolves
`smollm2-135m-instruct` to the same directory."""

import importlib.metadata
import importlib.util
import os

import pytest

from prefer.models.sources import NAMED_MODELS, resolve_model_path

NAME = "smollm2-135m-instruct"
SOURCE = NAMED_MODELS[NAME]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """The converted directory, converted in this session into a fresh cache (the conversion is under test too),
    which PREFER_CACHE names until the session ends."""
    if not _installed(SOURCE.distribution):
        if os.environ.get("PREFER_ALLOW_NO_REAL") == "1":
            pytest.skip(f"{SOURCE.distribution} is not installed and PREFER_ALLOW_NO_REAL=1")
        pytest.fail(
            f"the real tier needs {SOURCE.distribution}: {SOURCE.install} (or set PREFER_ALLOW_NO_REAL=1 to skip it)",
            pytrace=False,
        )
    if importlib.util.find_spec("gguf") is None:
        pytest.fail("the real tier needs the gguf package: pip install 'gguf>=0.19,<1'", pytrace=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFER_CACHE", str(tmp_path_factory.mktemp("prefer-cache")))
        path = resolve_model_path(NAME)
        assert resolve_model_path(NAME) == path  # the second resolution finds the cache
        yield path
