"""A user's model with tied input/output embeddings (SmolLM2, Qwen2-0.5B, Gemma): its vocabulary stays as it is
unless control tokens are asked for, and where they are added LoRA still saves, resumes and merges.

The model is a tiny random Llama with `tie_word_embeddings=True` and a ChatML-style vocabulary without
`<|good|>`/`<|bad|>` (as SmolLM2-135M-Instruct's), built in the test: no downloads."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from prefer.config import LoRAConfig
from prefer.controls import CONTROL_TOKENS
from prefer.errors import PreferError
from prefer.models.build import load_model, load_tokenizer, reset_control_embeddings
from prefer.models.lora import apply_lora, load_adapter, save_adapter
from prefer.models.saving import save_model

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = ["say", "A", "B", "C", "please", "red", "blue", "cat", "dog", "sun"]


def _chat_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE whose special tokens are ChatML's and an end-of-text, none of prefer's control tokens."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator([" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(6)) for i in range(40)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    path = tmp_path_factory.mktemp("tied-llama")
    tokenizer = _chat_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _random_adapters(model, seed=1):
    """lora_B starts at zero (the wrapped model is the base model): make it not, as if trained."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def _rows(model) -> int:
    return model.get_input_embeddings().weight.shape[0]


def test_a_users_vocabulary_is_left_alone_unless_control_tokens_are_asked_for(tied):
    vocabulary = len(AutoModelForCausalLM.from_pretrained(tied).get_input_embeddings().weight)
    tokenizer = load_tokenizer(tied)
    assert len(tokenizer) == vocabulary and not any(t in tokenizer.get_vocab() for t in CONTROL_TOKENS)
    assert _rows(load_model(tied, tokenizer=tokenizer)) == vocabulary  # no 49,152 -> 49,154 here
    with pytest.raises(PreferError, match="control_tokens=True"):  # never the unknown token's row in their place
        reset_control_embeddings(load_model(tied), tokenizer)

    conditional = load_tokenizer(tied, control_tokens=True)
    assert len(conditional) == vocabulary + 2
    model = load_model(tied, tokenizer=conditional)
    assert _rows(model) == vocabulary + 2
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied


def test_lora_saves_resumes_and_merges_a_tied_model_with_added_tokens(tied, tmp_path):
    """Before the fix, save_adapter raised safetensors' "Some tensors share memory" (peft picks the resized
    embedding and head to save, and they are one tensor under two names)."""
    tokenizer = load_tokenizer(tied, control_tokens=True)
    model = apply_lora(load_model(tied, tokenizer=tokenizer), LoRAConfig(r=4))
    _random_adapters(model)
    with torch.no_grad():  # the new rows should not be all alike: give them values a reload must bring back
        model.get_input_embeddings().weight[-2:] = torch.randn(2, 32, generator=torch.Generator().manual_seed(2))
    model.eval()
    ids = torch.tensor([[1, 5, 40, len(tokenizer) - 2, 7, len(tokenizer) - 1, 2]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits

    save_adapter(model, tmp_path / "adapter")  # a resumable checkpoint's model/ (the crash)
    again = apply_lora(load_model(tied, tokenizer=tokenizer), LoRAConfig(r=4))
    load_adapter(again, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(input_ids=ids).logits, expected, rtol=0, atol=0)

    save_model(tmp_path / "final", model, tokenizer)  # `final/`: adapters merged into a plain HF model
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    assert _rows(plain) == len(tokenizer) and plain.config.vocab_size == len(tokenizer)
    assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
