"""Tokenizers and models: special tokens, named sizes, control tokens added to an existing model."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from prefer.data.tokenizer import train_tokenizer
from prefer.errors import PreferError
from prefer.models.build import MODEL_SIZES, build_model, count_parameters, load_model, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["hello world\n", "def f():\n    pass\n"] * 20, vocab_size=300)


def test_bpe_has_the_special_tokens_and_round_trips(tokenizer, tmp_path):
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|good|>", "<|bad|>")] == [0, 1, 2]
    text = "<|good|>def f():\n    pass\n"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    tokenizer.save_pretrained(tmp_path)
    again = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert again("<|bad|>x")["input_ids"][0] == 2 and again.eos_token == "<|endoftext|>"


def test_named_sizes():
    tiny = build_model("tiny", vocab_size=8192, eos_token_id=0)
    assert count_parameters(tiny) < 1_000_000  # tests run in seconds, even with an 8k vocabulary
    assert MODEL_SIZES["gpt2-small"] == dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024)
    with pytest.raises(PreferError, match="model.size"):
        build_model("huge", vocab_size=10, eos_token_id=0)


def test_existing_model_gets_control_tokens_at_the_mean_embedding(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    # an "existing" model and tokenizer that know nothing of <|good|> / <|bad|>
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.add_tokens([chr(c) for c in range(97, 123)])
    plain = PreTrainedTokenizerFast(tokenizer_object=raw)
    plain.add_special_tokens({"eos_token": "<|endoftext|>"})
    plain.save_pretrained(tmp_path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(plain), n_layer=1, n_embd=16, n_head=2)).save_pretrained(tmp_path)

    assert len(load_tokenizer(tmp_path)) == len(plain)  # added only where an objective needs them
    tokenizer = load_tokenizer(tmp_path, control_tokens=True)
    assert len(tokenizer) == len(plain) + 2
    model = load_model(tmp_path, tokenizer=tokenizer)
    embeddings = model.get_input_embeddings().weight
    old_mean = AutoModelForCausalLM.from_pretrained(tmp_path).get_input_embeddings().weight.mean(0)
    for token in ("<|good|>", "<|bad|>"):
        torch.testing.assert_close(embeddings[tokenizer.convert_tokens_to_ids(token)], old_mean)


def test_missing_paths_are_clear_errors(tmp_path):
    with pytest.raises(PreferError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(PreferError, match="no config.json"):
        load_model(tmp_path)
