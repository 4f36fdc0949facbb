"""Every post-training stage on tiny random Llama, Qwen2 and GPT-2 models built in the test (no downloads): SFT
(Qwen2 on ChatML conversations through its chat template), a LoRA reward model, LoRA PPO against it with the value
model from it. Each writes a plain Hugging Face directory of the same architecture."""

import json

import pytest
import torch
from tiny_architectures import ARCHITECTURES, save_tiny, tiny_model, tiny_tokenizer  # tests/models/
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from prefer.config import PolicyGradientConfig, RewardConfig, SFTConfig, build_config
from prefer.data.formats import (
    Comparison,
    Demonstration,
    read_demonstrations,
    record_locations,
    write_demonstrations,
    write_rankings,
)
from prefer.models.build import load_tokenizer
from prefer.stages.policy_gradient import ppo
from prefer.stages.reward import reward
from prefer.stages.sft import sft, tokenize_demonstrations
from prefer.training import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
LETTERS = "ABCD"


@pytest.fixture(scope="module", params=ARCHITECTURES)
def architecture(request):
    return request.param


@pytest.fixture(scope="module")
def data(tmp_path_factory, architecture):
    root = tmp_path_factory.mktemp(architecture)
    chat = architecture == "qwen2"
    save_tiny(root / "init", architecture, chat=chat)
    if chat:
        lines = [
            {"messages": [{"role": "user", "content": f"say {c}"}, {"role": "assistant", "content": f" {c} {c}"}]}
            for c in LETTERS
        ] * 8
        (root / "demos.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    else:
        write_demonstrations(root / "demos.jsonl", [Demonstration(f"say {c}", f" {c} {c}") for c in LETTERS] * 8)
    write_rankings(
        root / "rankings.jsonl", [Comparison(f"say {c}", (f" {c} please", f" {c} red"), (0, 1)) for c in LETTERS] * 8
    )
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"say {c}"}) + "\n" for c in LETTERS))
    return root


def test_sft_reward_and_ppo_run_on_the_architecture(data, architecture, tmp_path):
    common = {"runtime.progress": False, "train.batch_size": 8, "optimizer.lr": 3e-3}
    sft_final = sft(
        build_config(
            SFTConfig,
            {
                **common,
                "out_dir": tmp_path / "sft",
                "data.demonstrations": data / "demos.jsonl",
                "model.init_from": data / "init",
                "train.epochs": 1,
                "data.validation_fraction": 0.1,
                "runtime.gradient_checkpointing": True,
            },
        )
    )
    assert AutoModelForCausalLM.from_pretrained(sft_final).config.model_type == architecture
    assert read_metrics(tmp_path / "sft")[-1]["val/loss"] > 0
    rm_final = reward(
        build_config(
            RewardConfig,
            {
                **common,
                "out_dir": tmp_path / "rm",
                "data.rankings": data / "rankings.jsonl",
                "model.init_from": sft_final,
                "lora.r": 4,
            },
        )
    )
    assert AutoModelForSequenceClassification.from_pretrained(rm_final, num_labels=1).config.model_type == architecture
    ppo_final = ppo(
        build_config(
            PolicyGradientConfig,
            {
                **common,
                "out_dir": tmp_path / "ppo",
                "model.init_from": sft_final,
                "prompts": data / "prompts.jsonl",
                "reward.model": rm_final,
                "train.iterations": 2,
                "train.batch_size": 4,
                "train.minibatch_size": 4,
                "rollout.max_new_tokens": 6,
                "lora.r": 4,
            },
        )
    )
    policy = AutoModelForCausalLM.from_pretrained(ppo_final)
    assert policy.config.model_type == architecture and not (ppo_final / "adapter_config.json").exists()
    metrics = read_metrics(tmp_path / "ppo")
    assert abs(metrics[0]["kl"]) < 1e-5 and all(torch.isfinite(torch.tensor(m["reward/proxy"])) for m in metrics)


def test_sft_masks_follow_the_tokenizers_chat_template(data, architecture):
    tokenizer = load_tokenizer(data / "init")
    path = data / "demos.jsonl"
    examples = tokenize_demonstrations(
        read_demonstrations(path, conversations=True), record_locations(path), tokenizer, context=64, packing=False
    )
    trained = tokenizer.decode(examples.ids[0][examples.loss_mask[0]])
    if architecture == "qwen2":  # ChatML: the assistant's content and the <|im_end|> and newline closing its turn
        assert examples.ids[0][examples.attention_mask[0]].tolist() == list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": "say A"}, {"role": "assistant", "content": " A A"}]
            )["input_ids"]
        )
        assert trained == " A A<|im_end|>\n"
    else:  # no template: prefer's (prompt, response) encoding, the response and its eos
        assert trained == " A A<|endoftext|>"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_response_logits_keep_only_the_response_columns_and_equal_the_full_forward(architecture):
    """The head runs on the last R + 1 positions only (`logits_to_keep`); the kept columns are bit for bit those of
    the full forward's [B, Q + R, V] sliced at Q - 1 .. Q + R - 2, left-padded queries and right-padded responses
    included, and a model that ignores `logits_to_keep` gives the same columns."""
    from prefer.models.value import response_logits, sequence_inputs

    tokenizer = tiny_tokenizer()
    model = tiny_model(architecture, tokenizer).eval()
    generator = torch.Generator().manual_seed(1)
    query = torch.randint(3, len(tokenizer), (3, 7), generator=generator)
    response = torch.randint(3, len(tokenizer), (3, 5), generator=generator)
    query_mask = torch.arange(7)[None, :] >= torch.tensor([0, 2, 4])[:, None]  # left padding
    response_mask = torch.arange(5)[None, :] < torch.tensor([5, 3, 1])[:, None]  # right padding
    with torch.no_grad():
        kept = response_logits(model, query, query_mask, response, response_mask)
        ids, attention, positions = sequence_inputs(query, query_mask, response, response_mask)
        full = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits[:, 6:-1]

        class IgnoresKeep(torch.nn.Module):
            def forward(self, logits_to_keep=None, **inputs):
                return model(**inputs)

        ignored = response_logits(IgnoresKeep(), query, query_mask, response, response_mask)
    assert kept.shape == (3, 5, len(tokenizer))
    assert torch.equal(kept, full) and torch.equal(ignored, full)
