"""SFT on a tiny model: the response-only loss mask, packing, learning a prompt -> response mapping, bad input."""

import json

import pytest
import torch
from killed_runs import interrupt_at

from prefer.config import SFTConfig, load_config
from prefer.data.formats import Demonstration, read_demonstrations, write_demonstrations
from prefer.data.tokenizer import train_tokenizer
from prefer.encoding import encode_prompt
from prefer.errors import PreferError
from prefer.models.build import build_model, load_model, load_tokenizer
from prefer.objectives import next_token_targets
from prefer.sampling import sample
from prefer.stages.sft import sft, tokenize_demonstrations
from prefer.training import read_metrics

LETTERS = "ABCDEFGH"


def tiny_lm(path, texts, *, context=32):
    """A randomly initialised tiny GPT-2 and a BPE trained on `texts`, saved as an HF directory."""
    tokenizer = train_tokenizer(texts, vocab_size=300)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=context)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def say_letter(tmp_path_factory):
    """Demonstrations whose response is a fixed function of the prompt ("say C" -> "CCCC") and a tiny LM."""
    tmp = tmp_path_factory.mktemp("sft")
    demonstrations = [Demonstration(f"say {c}", f" {c * 4}") for c in LETTERS] * 24
    write_demonstrations(tmp / "demos.jsonl", demonstrations)
    tiny_lm(tmp / "init", [d.prompt + d.response for d in demonstrations[:8]] * 20)
    return tmp


def test_loss_mask_covers_exactly_the_response_and_its_eos(say_letter):
    tokenizer = load_tokenizer(say_letter / "init")
    pairs = [Demonstration("say A:", " AAAA"), Demonstration("say B: now please", " B")]
    examples = tokenize_demonstrations(pairs, ["f:1", "f:2"], tokenizer, context=32, packing=False)
    eos = tokenizer.eos_token_id
    for row, pair in enumerate(pairs):
        prompt = [eos] + tokenizer(pair.prompt, add_special_tokens=False)["input_ids"]  # document start first
        response = tokenizer(pair.response, add_special_tokens=False)["input_ids"] + [eos]
        length = len(prompt) + len(response)
        assert examples.ids[row, :length].tolist() == prompt + response
        assert examples.loss_mask[row].tolist() == [False] * len(prompt) + [True] * len(response) + [False] * (
            examples.ids.shape[1] - length
        )
        assert examples.attention_mask[row].sum() == length
        targets, mask = next_token_targets(examples.ids[row : row + 1], examples.loss_mask[row : row + 1])
        assert targets[mask].tolist() == response  # the loss predicts the response and its eos, nothing else


def test_packing_keeps_every_loss_token_in_full_blocks(say_letter):
    tokenizer = load_tokenizer(say_letter / "init")
    pairs = [Demonstration(f"say {c}:", f" {c * 4}") for c in LETTERS]
    padded = tokenize_demonstrations(pairs, ["f"] * 8, tokenizer, context=16, packing=False)
    packed = tokenize_demonstrations(pairs, ["f"] * 8, tokenizer, context=16, packing=True)
    assert packed.ids.shape[1] == 16 and packed.attention_mask[:-1].all()  # only the last block is padded
    assert packed.loss_mask.sum() == padded.loss_mask.sum()
    assert packed.ids[packed.attention_mask].tolist() == padded.ids[padded.attention_mask].tolist()


def test_sft_learns_the_demonstrated_responses(say_letter, tmp_path):
    config = load_config(
        SFTConfig,
        overrides=[
            f"out_dir={tmp_path / 'run'}",
            f"data.demonstrations={say_letter / 'demos.jsonl'}",
            f"model.init_from={say_letter / 'init'}",
            "train.epochs=6",
            "optimizer.lr=5e-3",
            "train.batch_size=16",
            "train.micro_batch_size=8",
            "train.eval_every=10",
            "train.checkpoint_every=20",
            "runtime.progress=false",
            "data.validation_fraction=0.1",
        ],
    )
    final = sft(config)
    model, tokenizer = load_model(final), load_tokenizer(final)
    prompts = [encode_prompt(tokenizer, f"say {c}") for c in LETTERS]
    outputs = sample(model, prompts, max_new_tokens=8, eos_token_id=tokenizer.eos_token_id, temperature=0.0)
    assert [tokenizer.decode(ids) for ids in outputs] == [f" {c * 4}" for c in LETTERS]
    metrics = read_metrics(tmp_path / "run")
    assert metrics[-1]["val/loss"] < 0.2 < 2 < metrics[0]["train/loss"]
    info = json.loads((final / "prefer.json").read_text())
    assert info["stage"] == "sft" and info["val_loss"] == metrics[-1]["val/loss"]
    with pytest.raises(PreferError, match="already holds a run"):
        sft(config)


def test_prompt_longer_than_the_context_names_file_and_line(say_letter, tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text(
        json.dumps({"prompt": "say A:", "response": " AAAA"})
        + "\n\n"
        + json.dumps({"prompt": "say A: " * 40, "response": " AAAA"})
        + "\n"
    )
    assert len(read_demonstrations(path)) == 2
    config = load_config(
        SFTConfig,
        overrides=[
            f"out_dir={tmp_path / 'run'}",
            f"data.demonstrations={path}",
            f"model.init_from={say_letter / 'init'}",
            "runtime.progress=false",
        ],
    )
    with pytest.raises(PreferError, match=r"demos\.jsonl:3: the prompt is \d+ tokens"):
        sft(config)
    assert not (tmp_path / "run" / "final").exists()


def test_resume_after_a_kill_gives_the_same_model(say_letter, tmp_path):
    """With dropout on, so the restored RNG state matters too."""
    import shutil

    from safetensors.torch import load_file

    values = [
        f"out_dir={tmp_path / 'run'}",
        f"data.demonstrations={say_letter / 'demos.jsonl'}",
        f"model.init_from={say_letter / 'init'}",
        "train.epochs=1",
        "optimizer.lr=3e-3",
        "train.batch_size=16",
        "train.checkpoint_every=5",
        "runtime.progress=false",
        "model.dropout=0.1",
    ]
    final = sft(load_config(SFTConfig, overrides=values))  # 12 steps: checkpoints at 10 and 12 are kept
    shutil.copytree(tmp_path / "run", tmp_path / "killed")
    interrupt_at(tmp_path / "killed", 10)
    values[0] = f"out_dir={tmp_path / 'killed'}"
    resumed = sft(load_config(SFTConfig, overrides=values), resume=True)
    expected, got = load_file(final / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert read_metrics(tmp_path / "killed") == read_metrics(tmp_path / "run")  # steps 11, 12 logged once, alike


def test_gradient_accumulation_does_not_change_the_step(say_letter, tmp_path):
    """One optimizer step of 16 examples equals 8 micro-batches of 2 with different padding widths: the loss is
    normalised by the step's response tokens, not by each micro-batch's."""

    def one_step(name, micro):
        return sft(
            load_config(
                SFTConfig,
                overrides=[
                    f"out_dir={tmp_path / name}",
                    f"data.demonstrations={say_letter / 'demos.jsonl'}",
                    f"model.init_from={say_letter / 'init'}",
                    "train.epochs=0.05",
                    "optimizer.lr=1e-2",
                    "train.batch_size=16",
                    f"train.micro_batch_size={micro}",
                    "runtime.progress=false",
                    "optimizer.grad_clip=1e9",
                ],
            )
        )

    one_step("whole", 16)
    one_step("accumulated", 2)
    # Equal losses and equal norms of the accumulated gradient (logged before clipping). Weights after the step
    # are no test: Adam's first step divides each gradient by its own magnitude, so float noise in near-zero
    # gradients becomes a visible difference.
    whole, accumulated = read_metrics(tmp_path / "whole")[0], read_metrics(tmp_path / "accumulated")[0]
    assert whole["train/loss"] == pytest.approx(accumulated["train/loss"], rel=1e-5)
    assert whole["train/grad_norm"] == pytest.approx(accumulated["train/grad_norm"], rel=1e-4)
