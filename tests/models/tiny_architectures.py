"""Tiny random models of the architectures users bring (Llama, Qwen2, GPT-2), built in the test: no downloads.
A plain module, not a conftest: shared helpers live in modules of their own (tests/tiny_runs.py, ...)."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from prefer.data.tokenizer import train_tokenizer

ARCHITECTURES = ("llama", "qwen2", "gpt2")
WORDS = ["say", "A", "B", "C", "D", "please", "red", "blue", "cat", "dog", "sun", "tree"]
# ChatML, the template of Qwen2's instruct models (shortened: no default system prompt)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(*, chat: bool = False):
    """A byte-level BPE (eos = pad = <|endoftext|>, as prefer trains them); with `chat`: ChatML tokens, template."""
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8)) for i in range(60)]
    tokenizer = train_tokenizer(texts * 4, vocab_size=300)
    if chat:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tokenizer.chat_template = CHATML
    return tokenizer


def tiny_model(architecture: str, tokenizer, *, context: int = 64):
    """A randomly initialised 2-layer model of the architecture, vocabulary of the tokenizer."""
    torch.manual_seed(0)
    vocab, eos = len(tokenizer), tokenizer.eos_token_id
    if architecture == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab,
                n_embd=32,
                n_layer=2,
                n_head=2,
                n_positions=context,
                bos_token_id=eos,
                eos_token_id=eos,
            )
        )
    shape = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    if architecture == "llama":
        return LlamaForCausalLM(LlamaConfig(**shape))
    if architecture == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=True))
    raise ValueError(architecture)


def save_tiny(path, architecture: str, *, chat: bool = False):
    tokenizer = tiny_tokenizer(chat=chat)
    tiny_model(architecture, tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
