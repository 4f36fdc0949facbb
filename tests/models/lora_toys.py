"""Shared pieces of the LoRA tests: a tiny model that learns to say a letter, its inputs, and adapters made to act."""

import json

import torch

from prefer.data.formats import Comparison, Demonstration, write_demonstrations, write_rankings
from prefer.data.tokenizer import train_tokenizer
from prefer.models.build import build_model

LETTERS = "ABCDEFGH"


def write_lora_data(root):
    """In `root`: a random tiny GPT-2 and its BPE (init/), demonstrations and rankings of "say X" -> " XXXX", and
    the prompts."""
    demonstrations = [Demonstration(f"say {c}", f" {c * 4}") for c in LETTERS] * 8
    write_demonstrations(root / "demos.jsonl", demonstrations)
    rankings = [
        Comparison(f"say {c}", (f" {c * 4}", f" {LETTERS[(i + 1) % 8] * 3}"), (0, 1)) for i, c in enumerate(LETTERS)
    ] * 4
    write_rankings(root / "rankings.jsonl", rankings)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"say {c}"}) + "\n" for c in LETTERS))
    tokenizer = train_tokenizer([d.prompt + d.response for d in demonstrations] * 5, vocab_size=300)
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32)
    model.save_pretrained(root / "init")
    tokenizer.save_pretrained(root / "init")
    return root


def random_adapters(model, seed=1):
    """Adapters as if trained: lora_B starts at zero (the wrapped model is the base model), so make it not."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
