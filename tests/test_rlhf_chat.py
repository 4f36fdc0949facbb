"""`prefer rlhf` on chat prompts (`prompt_set: chat`), end to end at toy size on a tiny random chat-template model:
IFEval prompts rendered with the model's chat template in every stage, IFEval's strict verdict as the gold, the
evaluation prompts from held-out topics (and a held-out instruction type), and every row of the protocol's table.
The configs/rlhf-chat.yaml run is the same protocol on SmolLM2-135M-Instruct."""

import json
import random

import pytest
from models.tiny_architectures import tiny_model, tiny_tokenizer

from prefer.config import RLHFConfig, load_config
from prefer.config.chat import TOPICS
from prefer.encoding import render_generation_prompt
from prefer.errors import PreferError
from prefer.experiments.rlhf import rlhf
from prefer.models.saving import save_model
from prefer.scorers.instructions import followed, read_prompts

pytestmark = pytest.mark.usefixtures("one_thread")

# The random tiny model writes random bytes: lowercase is the type it passes on some samples and fails on others
# (a capital byte or not), so the gold separates its responses; the last type is held out.
TYPES = ["change_case:english_lowercase", "punctuation:no_comma"]
WORDS = ["banana", "apple", "cat", "dog", "sky", "blue", "tree", "lamp", "road", "red", "sun"]


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlhf_chat")
    tokenizer = tiny_tokenizer(chat=True)
    save_model(root / "model", tiny_model("llama", tokenizer, context=512), tokenizer, info={})
    rng = random.Random(0)  # the pretraining text of PPO-ptx and of the held-out loss (the alignment tax)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + ".\n" for _ in range(1500)]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return root


def chat_overrides(root, out, **extra):
    values = {
        "out_dir": out,
        "prompt_set": "chat",
        "gold_scorer": "ifeval",
        "source": root / "corpus.jsonl",
        "init_from": root / "model",
        "chat.train_topics": 18,  # 18 topics x 1 trained type = 18 prompts: 14 label, 2 validation, 2 RL
        "chat.heldout_topics": 3,  # 3 topics x 2 types = 6 evaluation prompts
        "chat.instruction_types": json.dumps(TYPES),
        "chat.heldout_types": json.dumps(TYPES[-1:]),
        "label_prompts": 14,
        "validation_prompts": 2,
        "rl_prompts": 2,
        "eval.prompts": 6,
        "eval.samples": 2,
        "eval.max_new_tokens": 8,
        "eval.batch_size": 16,
        "eval.heldout_blocks": 4,
        "label.num_responses": 8,
        "label.generation.max_new_tokens": 12,
        "label_agreement": 0.726,
        "sft_epochs": "[1]",
        "sft.lora.r": 4,
        "reward.lora.r": 4,
        "reward.data.validation_fraction": 0.34,
        "best_of_n": "[1,2]",
        "best_of_n_prompts": 2,
        "ppo.train.iterations": 2,
        "ppo.train.batch_size": 2,
        "ppo.train.minibatch_size": 2,
        "ppo.rollout.max_new_tokens": 8,
        "ppo.lora.r": 4,
        "ppo.ptx.batch_size": 2,
        "kl_coefs": "[0.1]",
        "overopt_iterations": 2,
        "overopt_every": 2,
        "dpo_runs": "[dpo:0.1,kto:0.1]",
        "dpo.train.epochs": 1,
        "dpo.lora.r": 4,
        "group_algorithms": "[grpo]",
        "group.train.iterations": 1,
        "group.train.batch_size": 2,
        "group.rollout.max_new_tokens": 8,
        "group.lora.r": 4,
        "runtime.device": "cpu",
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def run(tiny_chat, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "rlhf"
    return rlhf(load_config(RLHFConfig, overrides=chat_overrides(tiny_chat, out))), out


def test_chat_prompts_are_rendered_with_the_template_and_held_out_by_topic_and_type(run, tiny_chat):
    results, out = run
    tokenizer = tiny_tokenizer(chat=True)
    judged = read_prompts(out / "prompts" / "instructions.jsonl")
    rendered = {render_generation_prompt(tokenizer, [{"role": "user", "content": p.text}]): p for p in judged}
    splits = {
        name: [json.loads(line)["prompt"] for line in (out / "prompts" / f"{name}.jsonl").read_text().splitlines()]
        for name in ("eval", "validation", "rl", "label")
    }
    assert {name: len(p) for name, p in splits.items()} == {"eval": 6, "validation": 2, "rl": 2, "label": 14}
    for prompts in splits.values():
        for prompt in prompts:  # the template's own rendering, ending in the assistant's generation prompt
            assert prompt in rendered and prompt.startswith("<|im_start|>user\n")
            assert prompt.endswith("<|im_start|>assistant\n")
    opening = "Write a short paragraph about "
    topic = {text: prompt.text.split(".")[0].removeprefix(opening) for text, prompt in rendered.items()}
    assert {topic[p] for p in splits["eval"]} == set(TOPICS[18:21])
    assert {topic[p] for name in ("validation", "rl", "label") for p in splits[name]} <= set(TOPICS[:18])
    trained = [rendered[p] for name in ("validation", "rl", "label") for p in splits[name]]
    assert all(p.instruction_ids[0] != TYPES[-1] for p in trained)  # the held-out type is asked in evaluation only
    assert TYPES[-1] in {rendered[p].instruction_ids[0] for p in splits["eval"]}
    # the labelers' rankings and the policies' logged rollouts carry the same rendered prompts
    ranked = [json.loads(line)["prompt"] for line in (out / "labels" / "rankings.jsonl").read_text().splitlines()]
    assert ranked and set(ranked) <= set(splits["label"])
    logged = [json.loads(line) for line in (out / "ppo_kl0.1" / "samples.jsonl").read_text().splitlines()]
    assert logged and {row["prompt"] for row in logged} <= set(splits["rl"])
    assert results["prompt_set"] == "chat" and results["gold"] == f"ifeval:{out / 'prompts' / 'instructions.jsonl'}"


def test_the_gold_is_ifeval_strict_on_every_logged_sample(run):
    results, out = run
    by_text = {p.text: p for p in read_prompts(out / "prompts" / "instructions.jsonl")}

    def strict(prompt: str, response: str) -> float:  # 1 - the share of the prompt's instructions followed
        (instruction,) = [p for text, p in by_text.items() if text in prompt]
        verdicts = followed(instruction, response)
        return 1.0 - sum(verdicts) / len(verdicts)

    checked = 0
    for name in results["policies"]:
        cached = json.loads((out / "evaluations" / f"{name}.json").read_text())["entry"]
        for example, gold in zip(cached["examples"], cached["per_sample_gold"]):
            assert gold == strict(example["prompt"], example["response"]), name
            checked += 1
    assert checked >= 4 * len(results["policies"])
    # PPO's logged gold of each rollout is the same verdict (as a reward: minus the misalignment)
    for row in (out / "ppo_kl0.1" / "samples.jsonl").read_text().splitlines():
        row = json.loads(row)
        assert row["gold"] == pytest.approx(-strict(row["prompt"], row["response"]))
    # the labelers' best-of-K demonstrations are no worse by the gold than their mean sample
    assert results["labels"]["gold_best_mean"] <= results["labels"]["gold_mean"]


def test_the_table_has_every_row_of_the_protocol(run):
    results, out = run
    assert set(results["policies"]) == {
        "sft",
        "pretrained",
        "ppo_kl0.1",
        "ppo_kl0.1_ptx",
        "dpo_b0.1",
        "kto_b0.1",
        "grpo_kl0.05",
    }
    table = (out / "results.md").read_text()
    for name in results["policies"]:
        assert f"| {name} " in table or f"| {name}|" in table, name
    for name, entry in results["policies"].items():
        assert entry["samples"] == 12 and entry["prompts"] == 6, name  # 6 held-out prompts x 2 samples
        if name not in ("sft",):
            assert entry["win_rate"] is not None and 0 <= entry["win_rate"]["win_rate"] <= 1
        assert entry["heldout"] is not None  # the alignment tax on the corpus's held-out text
    assert [point["iterations"] for point in results["overoptimisation"]] == [2]
    assert set(results["best_of_n"]) == {"rm", "rm_weak"}
    assert [entry["n"] for entry in results["best_of_n"]["rm"]] == [1, 2]


def test_chat_prompts_need_an_ifeval_gold_and_a_chat_model(tiny_chat, tmp_path):
    with pytest.raises(PreferError, match="gold_scorer"):
        load_config(RLHFConfig, overrides=chat_overrides(tiny_chat, tmp_path, gold_scorer="pii-entry"))
    with pytest.raises(PreferError, match="chat.heldout_types"):
        load_config(RLHFConfig, overrides=chat_overrides(tiny_chat, tmp_path, **{"chat.heldout_types": "[x]"}))
    with pytest.raises(PreferError, match="chat.heldout_topics"):
        load_config(RLHFConfig, overrides=chat_overrides(tiny_chat, tmp_path, **{"chat.heldout_topics": 40}))
    too_many = load_config(RLHFConfig, overrides=chat_overrides(tiny_chat, tmp_path, label_prompts=50))
    with pytest.raises(PreferError, match="label_prompts"):
        rlhf(too_many)
