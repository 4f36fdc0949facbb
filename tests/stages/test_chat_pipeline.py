"""`prefer demo --pipeline chat` on a tiny random chat model: the IFEval judge (Google's checkers through
if-verifiable) is what GRPO is rewarded by and what the held-out table reports, wired the same way in both."""

import json
from dataclasses import replace

import pytest
from models.tiny_architectures import tiny_model, tiny_tokenizer

from prefer.cli import main
from prefer.config.chat import TOPICS, ChatConfig, ChatEvalConfig
from prefer.config.common import InferenceRuntimeConfig
from prefer.errors import PreferError
from prefer.experiments.chat import chat
from prefer.models.saving import save_model
from prefer.scorers.instructions import (
    InstructionFollowing,
    followed,
    instruction_prompts,
    read_prompts,
)

TYPES = ["change_case:english_lowercase", "punctuation:no_comma"]


def test_the_judge_is_ifeval_s_checkers_on_the_prompt_s_own_instruction():
    lowercase, no_comma = instruction_prompts(["the ocean"], TYPES, seed=0)
    assert "lowercase" in lowercase.text and "commas" in no_comma.text
    assert followed(lowercase, "the sea is calm.") == [True]
    assert followed(lowercase, "The sea is calm.") == [False]
    assert followed(no_comma, "calm, blue sea") == [False]
    judge = InstructionFollowing([lowercase, no_comma])
    # the rendered prompt holds the user turn: misalignment = 1 - the share of its instructions followed
    rendered = f"<|im_start|>user\n{no_comma.text}<|im_end|>\n<|im_start|>assistant\n"
    assert judge.score_pairs([rendered, rendered], ["calm blue sea", "calm, blue sea"]) == [0.0, 1.0]
    with pytest.raises(PreferError, match="no known instruction prompt"):
        judge.score_pairs(["something else"], ["x"])
    with pytest.raises(PreferError, match="pairs, not texts"):
        judge(["x"])


def test_the_prompt_set_is_fixed_by_its_arguments_and_round_trips(tmp_path):
    first = instruction_prompts(["trains", "snow"], ["keywords:existence", "startend:end_checker"], seed=3)
    again = instruction_prompts(["trains", "snow"], ["keywords:existence", "startend:end_checker"], seed=3)
    assert first == again and first != instruction_prompts(["trains", "snow"], ["keywords:existence"] * 2, seed=4)
    path = tmp_path / "prompts.jsonl"
    from prefer.scorers.instructions import write_prompts

    write_prompts(first, path)
    assert [(p.instruction_ids, p.kwargs, p.text) for p in read_prompts(path)] == [
        (p.instruction_ids, p.kwargs, p.text) for p in first
    ]
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(PreferError, match=r"prompts.jsonl:1"):
        read_prompts(path)


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_model")
    tokenizer = tiny_tokenizer(chat=True)
    save_model(root / "model", tiny_model("llama", tokenizer, context=256), tokenizer, info={})
    return root / "model"


def test_chat_pipeline_rewards_grpo_with_the_judge_and_reports_it_on_held_out_topics(tmp_path, tiny_chat_model):
    config = ChatConfig(
        out_dir=str(tmp_path / "chat"),
        init_from=str(tiny_chat_model),
        train_topics=2,
        heldout_topics=2,
        instruction_types=TYPES,
        eval=ChatEvalConfig(samples=2, max_new_tokens=6, batch_size=8, show=2),
        runtime=InferenceRuntimeConfig(progress=False),
    )
    config = replace(
        config,
        grpo=replace(
            config.grpo,
            train=replace(config.grpo.train, iterations=2, batch_size=2, minibatch_size=8, checkpoint_every=1),
            rollout=replace(config.grpo.rollout, max_new_tokens=6),
            lora=replace(config.grpo.lora, r=4),
        ),
    )
    results = chat(config)
    out = tmp_path / "chat"
    heldout = read_prompts(out / "prompts_heldout.jsonl")
    # TOPICS[2:4] are held out, one prompt per instruction type each; the training prompts are TOPICS[:2]'s
    assert [p.text.split(".")[0] for p in heldout] == [
        f"Write a short paragraph about {t}" for t in TOPICS[2:4] for _ in TYPES
    ]
    assert {p.text.split(".")[0] for p in read_prompts(out / "prompts_train.jsonl")} == {
        f"Write a short paragraph about {t}" for t in TOPICS[:2]
    }
    assert len(read_prompts(out / "prompts_train.jsonl")) == 4
    # GRPO's logged reward of each sample is minus the judge's misalignment of that (prompt, response)
    judge = InstructionFollowing(read_prompts(out / "prompts_train.jsonl"))
    logged = [json.loads(line) for line in (out / "grpo" / "samples.jsonl").read_text().splitlines()]
    assert logged
    for row in logged:
        assert row["proxy"] == pytest.approx(-judge.score_pairs([row["prompt"]], [row["response"]])[0])
    # the table's strict rate is the checkers' verdict on the shown responses
    for shown in results["samples"]:
        prompt = next(p for p in heldout if p.text == shown["prompt"])
        for name in ("start", "grpo"):
            assert shown[f"{name}_followed"] == float(followed(prompt, shown[name])[0])
    start, grpo = results["rows"]["start"], results["rows"]["grpo"]
    assert start["samples"] == grpo["samples"] == 8 and start["prompts"] == 4
    assert grpo["win_rate"] is not None and 0 <= grpo["win_rate"]["win_rate"] <= 1 and grpo["kl"] is not None
    assert set(results["by_type"]) == set(TYPES)
    assert "| start |" in (out / "table.md").read_text() and (out / "samples.md").is_file()


def test_chat_config_refuses_paths_the_command_fills_in():
    with pytest.raises(PreferError, match="grpo.prompts"):
        ChatConfig(grpo=replace(ChatConfig().grpo, prompts="mine.jsonl"))
    with pytest.raises(PreferError, match="heldout_topics"):
        ChatConfig(train_topics=35, heldout_topics=10)


def test_prefer_demo_chat_reads_its_config_and_refuses_a_task(tmp_path, capsys):
    assert main(["demo", "--pipeline", "chat", "--task", "pii"]) == 2
    assert "leave out --task" in capsys.readouterr().err
    assert main(["demo", "--pipeline", "chat", "train_topics=0"]) == 2
    assert "train_topics" in capsys.readouterr().err
