"""prefer.json read and written in one place: typed keys, the rest as written, atomic writes, clear errors."""

import json

import pytest

from prefer import checkpoint_record
from prefer.errors import PreferError

pytestmark = pytest.mark.unit


def test_a_record_round_trips_byte_for_byte_and_types_the_keys_read_back(tmp_path):
    info = {"stage": "sft", "task": "pii", "control_tokens_trained": True, "tokens": 12, "loss": "dpo", "beta": 0.1}
    checkpoint_record.write(tmp_path, info)
    # the bytes save_model wrote before the record existed: 2-space JSON and a final newline
    assert (tmp_path / "prefer.json").read_text() == json.dumps(info, indent=2) + "\n"
    record = checkpoint_record.read(tmp_path)
    assert (record.stage, record.task, record.tokens, record.control_tokens_trained) == ("sft", "pii", 12, True)
    assert record.get("beta") == 0.1 and list(record.as_dict()) == list(info)  # key order kept
    assert record.inherited() == {"task": "pii", "control_tokens_trained": True}
    assert not record.is_reward_model and record.reward_bias is None


def test_a_directory_prefer_did_not_write_has_an_empty_record(tmp_path):
    record = checkpoint_record.read(tmp_path)
    assert record.as_dict() == {} and not checkpoint_record.exists(tmp_path) and not record.control_tokens_trained


def test_a_reward_model_is_known_by_its_stage_or_its_bias(tmp_path):
    checkpoint_record.write(tmp_path, {"reward_bias": 0})
    assert checkpoint_record.read(tmp_path).is_reward_model and checkpoint_record.read(tmp_path).reward_bias == 0.0


@pytest.mark.parametrize(
    "text, message",
    [("[1, 2]", "expected a JSON object"), ("{", "not JSON"), ('{"tokens": "12"}', "tokens must be int"),
     ('{"control_tokens_trained": 1}', "control_tokens_trained must be bool"), ('{"tokens": true}', "tokens must")],
)  # fmt: skip
def test_a_bad_record_is_an_error_naming_the_file(tmp_path, text, message):
    (tmp_path / "prefer.json").write_text(text)
    with pytest.raises(PreferError, match=f"^{tmp_path / 'prefer.json'}: {message}"):
        checkpoint_record.read(tmp_path)
