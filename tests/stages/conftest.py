"""Fixtures of the stage tests."""

import pytest
from distributed_runs import write_distributed_data
from toy_rl import write_toy_sft


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """A tiny GPT-2 with a BPE, briefly trained on short word lists: the "SFT" model (sft/), its prompts
    (prompts.jsonl), a pretraining corpus (corpus.jsonl); see toy_rl.write_toy_sft."""
    return write_toy_sft(tmp_path_factory.mktemp("ppo"))


@pytest.fixture(scope="module")
def distributed_data(tmp_path_factory):
    """The torchrun tests' tiny GPT-2 (lm/), reward model (rm/) and stage inputs; see distributed_runs."""
    return write_distributed_data(tmp_path_factory.mktemp("distributed"))
