"""Every stage family, one short step each, on SmolLM2-135M-Instruct (`model.init_from=smollm2-135m-instruct`),
through the `prefer` command line run in this process: what each wrote is checked against the model itself (chat
prompts rendered with its template, checkpoints that load in plain transformers / peft and moved from the start,
logged rewards that are the scorer's). Sizes are the smallest that exercise each stage: context 64, 8-12 new
tokens, 2-3 prompts, one optimizer step, LoRA r 4 (pretraining: full finetuning)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from toy_scorers import length, spec
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from prefer.cli import main
from prefer.models.reward_model import load_reward_model

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]  # a step is minutes on a crowded 2-core host

NAME = "smollm2-135m-instruct"  # converted once per session: conftest.converted

QUESTION = [{"role": "user", "content": "Write one sentence about the sea."}]
PROMPTS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Name a fruit."}],
    [{"role": "user", "content": "Name a city."}],
]
DEMONSTRATIONS = [
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."}],
    [{"role": "user", "content": "Name an animal."}, {"role": "assistant", "content": "A cat."}],
    [{"role": "user", "content": "Name a city."}, {"role": "assistant", "content": "Paris."}],
]
TRAINING = ["runtime.progress=false", "runtime.trackers=[]", "runtime.device=cpu"]
LORA = ["lora.r=4", "optimizer.lr=1e-4"]


def _prefer(*args) -> None:
    assert main([str(a) for a in args]) == 0


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _logits(directory, ids) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(ids).logits


def _assert_moved(logits: torch.Tensor, start: torch.Tensor) -> None:
    """Same shape as the start's (no vocabulary grown), finite, and not the start's: the step changed the model."""
    assert logits.shape == start.shape and torch.isfinite(logits).all()
    assert (logits - start).abs().max() > 1e-4


def _adapter(run_dir) -> dict[str, torch.Tensor]:
    """The LoRA tensors of the run's last checkpoint (peft's adapter file), with every B matrix non-zero: B starts
    at zero (peft), so a non-zero B is the step's update."""
    checkpoint = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip() / "model"
    tensors = load_file(checkpoint / "adapter_model.safetensors")
    b = [t for name, t in tensors.items() if "lora_B" in name]
    assert b and all(t.abs().max() > 0 for t in b)
    return tensors


def _finite_losses(run_dir, key: str) -> list[float]:
    values = [record[key] for record in _jsonl(run_dir / "metrics.jsonl") if key in record]
    assert values and all(math.isfinite(v) for v in values)
    return values


@pytest.fixture(scope="module")
def chat(converted, tmp_path_factory):
    """The files every stage reads, the tokenizer, the start's logits on the rendered question and its rendering of
    each prompt (what every stage must prompt the model with)."""
    tmp = tmp_path_factory.mktemp("chat")
    tokenizer = AutoTokenizer.from_pretrained(converted)
    probe = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    return {
        "tmp": tmp,
        "tokenizer": tokenizer,
        "probe": probe["input_ids"],
        "start": _logits(converted, probe["input_ids"]),
        "prompts": _write_jsonl(tmp / "prompts.jsonl", [{"messages": m} for m in PROMPTS]),
        "demonstrations": _write_jsonl(tmp / "demonstrations.jsonl", [{"messages": m} for m in DEMONSTRATIONS]),
        "rendered": [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in PROMPTS],
    }


@pytest.fixture(scope="module")
def labeled(chat):
    """`prefer label --synthetic` on the chat prompts, ranked by the length of prompt + response (shorter is
    better): rankings.jsonl and demonstrations.jsonl, read by the reward, DPO and PPO tests."""
    tmp = chat["tmp"]
    _prefer(
        "label", "--synthetic", f"model={NAME}", f"prompts={chat['prompts']}", f"scorer={spec('length')}",
        "num_responses=2", "generation.max_new_tokens=12", f"rankings_out={tmp / 'rankings.jsonl'}",
        f"demonstrations_out={tmp / 'best.jsonl'}", "runtime.progress=false", "runtime.device=cpu",
    )  # fmt: skip
    return tmp / "rankings.jsonl", tmp / "best.jsonl"


@pytest.fixture(scope="module")
def reward_model(chat, labeled):
    """`prefer reward` with LoRA on the labeled rankings (2 prompts trained, 1 held out: one step)."""
    out = chat["tmp"] / "reward"
    _prefer(
        "reward", f"out_dir={out}", f"data.rankings={labeled[0]}", f"model.init_from={NAME}", "model.context=64",
        "data.validation_fraction=0.34", "train.batch_size=2", *LORA, *TRAINING,
    )  # fmt: skip
    return out


def test_sample_answers_a_chat_prompt_rendered_with_the_template(chat, capsys):
    prompts = _write_jsonl(chat["tmp"] / "question.jsonl", [{"messages": QUESTION}])
    _prefer("sample", NAME, "--prompts", prompts, "-n", "1", "--max-new-tokens", "12", "--temperature", "0")
    printed = capsys.readouterr().out
    rendered = chat["tokenizer"].apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert rendered.rstrip("\n") in printed and rendered.endswith("<|im_start|>assistant\n")
    answer = printed.split("----- sample 0 of prompt 0", 1)[1].split("\n", 1)[1]
    # greedy: the start of the answer test_smollm2.py checks in full against Hugging Face's generate
    assert answer.startswith("The sea is a vast and mysterious realm")


def test_evaluate_scores_the_answers_to_rendered_chat_prompts(chat):
    out = chat["tmp"] / "evaluation.json"
    _prefer(
        "evaluate", NAME, "--prompts", chat["prompts"], "samples_per_prompt=2", "sampling.max_new_tokens=8",
        "task=pii", f"out={out}", "runtime.progress=false", "runtime.device=cpu",
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["prompts"] == chat["rendered"] and result["samples_per_prompt"] == 2
    assert result["num_samples"] == len(result["samples"]) == 6 and all(s.strip() for s in result["samples"])
    scores = result["scores"]["pii"]
    assert len(scores["per_sample"]) == 6 and scores["mean"] == pytest.approx(sum(scores["per_sample"]) / 6)
    assert result["blocked"] == "both" and result["prompt"] == "none"  # no control tags in SmolLM2's vocabulary


def test_label_ranks_responses_to_the_rendered_prompts_by_the_gold_scorer(chat, labeled):
    rankings, best = _jsonl(labeled[0]), _jsonl(labeled[1])
    assert [r["prompt"] for r in rankings] == chat["rendered"]  # no prompt's two responses tied in length here
    for ranking, demonstration in zip(rankings, best):
        scores = length([ranking["prompt"] + response for response in ranking["responses"]])
        assert ranking["ranking"] == [int(s > min(scores)) for s in scores]  # 0 = the shorter of two
        assert demonstration == {
            "prompt": ranking["prompt"],
            "response": ranking["responses"][scores.index(min(scores))],
        }


def test_sft_with_lora_on_chat_messages_moves_the_model_and_its_adapter_loads_in_peft(chat, converted):
    from peft import PeftModel

    out = chat["tmp"] / "sft"
    _prefer(
        "sft", f"out_dir={out}", f"data.demonstrations={chat['demonstrations']}", f"model.init_from={NAME}",
        "model.context=64", "data.validation_fraction=0.25", "train.batch_size=3", "train.epochs=1", *LORA, *TRAINING,
    )  # fmt: skip
    assert len(_finite_losses(out, "train/loss")) == 1 and _finite_losses(out, "val/loss")
    _adapter(out)
    merged = _logits(out / "final", chat["probe"])
    _assert_moved(merged, chat["start"])
    # the last checkpoint's adapter on the plain base model computes what the merged final/ model computes
    checkpoint = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip() / "model"
    base = AutoModelForCausalLM.from_pretrained(converted)
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(base, checkpoint).eval()(chat["probe"]).logits
    torch.testing.assert_close(adapted, merged, rtol=0, atol=1e-3)


def test_reward_with_lora_on_tied_embeddings_saves_a_final_that_plain_transformers_scores(chat, reward_model, labeled):
    assert _finite_losses(reward_model, "train/loss") and _adapter(reward_model)
    ranking = _jsonl(labeled[0])[0]
    pairs = [(ranking["prompt"], response) for response in ranking["responses"]]
    prefers = load_reward_model(reward_model / "final").rewards(pairs)
    # plain transformers, as docs/reward-models.md says: the head at the final eos, plus config.reward_offset
    plain = AutoModelForSequenceClassification.from_pretrained(reward_model / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model / "final")
    assert plain.config.tie_word_embeddings and len(tokenizer) == 49_153  # <|pad|> added on export
    assert plain.get_input_embeddings().weight.shape[0] == 49_153
    with torch.no_grad():
        batch = tokenizer([p for p, _ in pairs], [r for _, r in pairs], return_tensors="pt", padding=True)
        theirs = plain(**batch).logits[:, 0] + plain.config.reward_offset
    torch.testing.assert_close(theirs, prefers, rtol=0, atol=1e-4)
    assert torch.isfinite(prefers).all() and prefers[0] != prefers[1]


def test_dpo_with_lora_moves_the_policy_from_its_reference(chat, labeled):
    out = chat["tmp"] / "dpo"
    _prefer(
        "dpo", f"out_dir={out}", f"data.rankings={labeled[0]}", f"model.init_from={NAME}", "model.context=64",
        "data.validation_fraction=0.34", "train.batch_size=2", "eval.kl_samples=2", "eval.max_new_tokens=8",
        *LORA, *TRAINING,
    )  # fmt: skip
    # step 1: the policy is its reference (adapters at zero), so the loss is log 2 exactly
    assert _finite_losses(out, "train/loss")[0] == pytest.approx(math.log(2), abs=1e-5)
    assert _finite_losses(out, "val/loss") and _finite_losses(out, "val/kl")
    _adapter(out)
    _assert_moved(_logits(out / "final", chat["probe"]), chat["start"])


@pytest.mark.parametrize("value_trunk", ["separate", "shared"])
def test_ppo_with_lora_rewards_rendered_chat_prompts_by_the_reward_model(chat, reward_model, value_trunk):
    out = chat["tmp"] / f"ppo-{value_trunk}"
    reward = [f"reward.model={reward_model / 'final'}"] if value_trunk == "separate" else []
    _prefer(
        "ppo", f"out_dir={out}", f"prompts={chat['prompts']}", f"model.init_from={NAME}", *reward,
        f"reward.scorer=rm:{reward_model / 'final'}", f"value_trunk={value_trunk}", "rollout.max_new_tokens=8",
        "train.iterations=1", "train.batch_size=2", "train.minibatch_size=2", *LORA, *TRAINING,
    )  # fmt: skip
    samples = _jsonl(out / "samples.jsonl")
    assert {s["prompt"] for s in samples} <= set(chat["rendered"]) and samples
    # the logged proxy reward is the reward model's, of the rendered prompt and the response
    rewards = load_reward_model(reward_model / "final").rewards([(s["prompt"], s["response"]) for s in samples])
    assert [s["proxy"] for s in samples] == pytest.approx(rewards.tolist(), abs=1e-4)
    assert _finite_losses(out, "train/value/loss") and _finite_losses(out, "train/grad_norm")[0] > 0
    _assert_moved(_logits(out / "final", chat["probe"]), chat["start"])


def test_grpo_with_lora_one_iteration_rewards_each_sample_by_its_scorer(chat):
    out = chat["tmp"] / "grpo"
    _prefer(
        "grpo", f"out_dir={out}", f"prompts={chat['prompts']}", f"model.init_from={NAME}",
        f"reward.scorer={spec('length')}", "rollout.max_new_tokens=8", "train.iterations=1", "train.batch_size=2",
        "group.size=2", "train.minibatch_size=4", "train.log_samples=4", *LORA, *TRAINING,
    )  # fmt: skip
    samples = _jsonl(out / "samples.jsonl")
    assert len(samples) == 4 and {s["prompt"] for s in samples} <= set(chat["rendered"])
    assert [s["proxy"] for s in samples] == [-length([s["prompt"] + s["response"]])[0] for s in samples]
    (record,) = _jsonl(out / "metrics.jsonl")
    assert record["episodes"] == 4 and math.isfinite(record["train/policy/loss"])
    _adapter(out)
    _assert_moved(_logits(out / "final", chat["probe"]), chat["start"])


def test_pretrain_init_from_finetunes_it_with_conditional_training_and_its_tags(chat, tmp_path):
    from tiny_runs import write_pii_corpus

    corpus = write_pii_corpus(tmp_path / "changelogs.jsonl", documents=20)
    out = chat["tmp"] / "pretrain"
    _prefer(
        "pretrain", "--init-from", NAME, f"out_dir={out}", "data.task=pii", f"data.source={corpus}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.workers=1", "data.validation_fraction=0.1", "data.max_bytes=null",
        "objective.name=conditional", "model.context=64", "train.tokens=128", "train.batch_size=2",
        "train.eval_blocks=2", "optimizer.lr=1e-4", *TRAINING,
    )  # fmt: skip
    (loss,) = _finite_losses(out, "train/loss")
    info = json.loads((out / "final" / "prefer.json").read_text())
    assert info["objective"] == "conditional" and info["control_tokens_trained"] and info["init_from"] == NAME
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert len(tokenizer) == 49_154 and tokenizer.convert_tokens_to_ids("<|good|>") == 49_152
    model = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    with torch.no_grad():
        logits = model(chat["probe"]).logits
    _assert_moved(logits[..., :49_152], chat["start"])


def test_redteam_scores_each_candidate_by_the_target_s_continuations(chat):
    out = chat["tmp"] / "redteam"
    seeds = chat["tmp"] / "seeds.txt"
    seeds.write_text("You can reach me by email at\nMy phone number is\nMaintainer:\n")
    _prefer(
        "redteam", f"out_dir={out}", f"target={NAME}", f"redteam_model={NAME}", "task=pii", f"seeds={seeds}",
        "search.rounds=1",
        "search.candidates_per_round=2", "search.shots=2", "search.trials=1", "candidates.max_new_tokens=12",
        "continuations.count=2", "continuations.max_new_tokens=8", "runtime.progress=false", "runtime.device=cpu",
    )  # fmt: skip
    pool = _jsonl(out / "pool_trial0.jsonl")
    assert [p["prompt"] for p in pool if p["round"] == 0] == seeds.read_text().splitlines()
    written = [p for p in pool if p["round"] == 1]
    assert len(written) == 2 and all(p["prompt"].strip() and "\n" not in p["prompt"] for p in written)
    for entry in pool:
        assert len(entry["continuation_scores"]) == 2
        assert entry["score"] == pytest.approx(sum(entry["continuation_scores"]) / 2)
    assert json.loads((out / "redteam.json").read_text())["red_team"] == NAME
