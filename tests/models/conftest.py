"""Fixtures of the model tests."""

import pytest
from lora_toys import write_lora_data


@pytest.fixture(scope="module")
def lora_data(tmp_path_factory):
    """A random tiny GPT-2 (init/) and the inputs of every LoRA stage test; see lora_toys.write_lora_data."""
    return write_lora_data(tmp_path_factory.mktemp("lora"))
