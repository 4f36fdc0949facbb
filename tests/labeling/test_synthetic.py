"""Synthetic labelers: ranks follow the gold scorer, noise perturbs them, all-tie prompts are dropped and counted,
and the files are valid input for the reward model and SFT."""

import json

import numpy as np
import pytest
import torch

from prefer.config import LabelConfig, load_config
from prefer.data.formats import read_demonstrations, read_rankings
from prefer.data.tokenizer import train_tokenizer
from prefer.errors import PreferError
from prefer.labeling import label_synthetic, rank_by_scores
from prefer.models.build import build_model

PROMPTS = [f"write {i}:" for i in range(12)] + ["tie 1:", "tie 2:"]


def count_x(texts):
    """A hand-made gold scorer: the number of x's in the response; a prompt starting "tie" scores 0 throughout."""
    return [0.0 if text.startswith("tie") else float(text.split(":", 1)[1].count("x")) for text in texts]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("label")
    tokenizer = train_tokenizer(["xx ab x cd xa bx\n", "abc xyz xx\n", "write 1: tie 2:\n"] * 30, vocab_size=300)
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32)
    model.save_pretrained(tmp / "lm")
    tokenizer.save_pretrained(tmp / "lm")
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return tmp


def config(setup, tmp_path, **extra):
    values = {
        "model": setup / "lm",
        "prompts": setup / "prompts.jsonl",
        "rankings_out": tmp_path / "rankings.jsonl",
        "demonstrations_out": tmp_path / "demos.jsonl",
        "num_responses": 4,
        "generation.max_new_tokens": 12,
        "runtime.device": "cpu",
        "runtime.seed": 1,
    }
    values.update(extra)
    return load_config(LabelConfig, overrides=[f"{key}={value}" for key, value in values.items()])


def test_ranks_follow_the_gold_scorer_and_all_tie_prompts_are_dropped(setup, tmp_path):
    report = label_synthetic(config(setup, tmp_path), scorer=count_x, progress=False)
    comparisons = read_rankings(report.rankings)
    demonstrations = read_demonstrations(report.demonstrations)
    assert report.dropped_all_tied >= 2 and not any(c.prompt.startswith("tie") for c in comparisons)
    assert report.comparisons == len(comparisons) >= 5
    assert report.comparisons + report.dropped_all_tied + report.dropped_empty == len(PROMPTS)
    for comparison in comparisons:
        scores = count_x([comparison.prompt + r for r in comparison.responses])
        assert comparison.ranks == rank_by_scores(scores)
    best = {d.prompt: d.response for d in demonstrations}
    assert {"tie 1:", "tie 2:"} <= set(best)  # an all-tie prompt still has a best (any) response
    for comparison in comparisons:
        assert count_x([comparison.prompt + best[comparison.prompt]])[0] == min(
            count_x([comparison.prompt + r for r in comparison.responses])
        )
    assert report.gold_best_mean <= report.gold_mean


def test_noise_changes_some_rankings_and_is_seeded(setup, tmp_path):
    exact = read_rankings(label_synthetic(config(setup, tmp_path / "exact"), scorer=count_x, progress=False).rankings)
    noisy = read_rankings(
        label_synthetic(config(setup, tmp_path / "noisy", noise=2.0), scorer=count_x, progress=False).rankings
    )
    again = read_rankings(
        label_synthetic(config(setup, tmp_path / "again", noise=2.0), scorer=count_x, progress=False).rankings
    )
    assert noisy == again
    exact_by_prompt = {c.prompt: c for c in exact}
    changed = [c for c in noisy if c.prompt in exact_by_prompt and c.ranks != exact_by_prompt[c.prompt].ranks]
    assert changed and all(c.responses == exact_by_prompt[c.prompt].responses for c in changed)  # same samples


def test_nothing_to_rank_is_an_error_and_writes_nothing(setup, tmp_path):
    with pytest.raises(PreferError, match="no prompt got a ranking"):
        label_synthetic(config(setup, tmp_path), scorer=lambda texts: [1.0] * len(texts), progress=False)
    assert not (tmp_path / "rankings.jsonl").exists() and not (tmp_path / "demos.jsonl").exists()


def test_prompt_too_long_for_the_context_names_its_line(setup, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "write 1:"}) + "\n" + json.dumps({"prompt": "ab cd " * 20}) + "\n")
    with pytest.raises(PreferError, match=r"prompts\.jsonl:2: the prompt is \d+ tokens"):
        label_synthetic(config(setup, tmp_path, prompts=path), scorer=count_x, progress=False)


def test_cli_labels_with_a_named_scorer_and_needs_synthetic(setup, tmp_path, capsys):
    from prefer.cli import main

    args = [
        f"model={setup / 'lm'}",
        f"prompts={setup / 'prompts.jsonl'}",
        "scorer=pii",
        "generation.max_new_tokens=8",
        f"rankings_out={tmp_path / 'r.jsonl'}",
        f"demonstrations_out={tmp_path / 'd.jsonl'}",
        "runtime.device=cpu",
    ]
    assert main(["label", *args]) == 2
    assert "pass --synthetic" in capsys.readouterr().err
    assert main(["label", "--synthetic", *args, "scorer=nope"]) == 2
    assert "unknown scorer 'nope'" in capsys.readouterr().err


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_conversations_are_labelled_in_the_chat_format_the_policy_is_prompted_with(tmp_path):
    """A {"messages"} prompt is rendered with the model's chat template, exactly as PPO renders it (read_queries);
    the scorer reads that rendering + the response, and the rankings and demonstrations carry it, so the reward
    model and DPO train on the format the policy saw (not `User: ...\\nAssistant: `)."""
    from prefer.controls import BAD, GOOD
    from prefer.rl import read_queries
    from prefer.sampling import sample

    tokenizer = train_tokenizer(["say a red cat and a blue dog x xx\n"] * 30, vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=64)
    model.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    prompts = tmp_path / "prompts.jsonl"
    questions = [[{"role": "user", "content": f"say {word}"}] for word in ("a red cat", "a blue dog", "x x")]
    prompts.write_text("".join(json.dumps({"messages": q}) + "\n" for q in questions))
    read = []

    def count_x_seen(texts):
        read.extend(texts)
        return [float(t.count("x")) for t in texts]

    values = {"model": tmp_path / "lm", "prompts": prompts, "rankings_out": tmp_path / "r.jsonl"}
    values |= {"demonstrations_out": tmp_path / "d.jsonl", "generation.max_new_tokens": 8, "runtime.device": "cpu"}
    values |= {"num_responses": 3, "runtime.seed": 3}
    cfg = load_config(LabelConfig, overrides=[f"{key}={value}" for key, value in values.items()])
    report = label_synthetic(cfg, scorer=count_x_seen, progress=False)  # seed 3: 1 ranking, 2 prompts all tied
    texts, queries = read_queries(str(prompts), tokenizer, max_length=64)  # PPO's rendering of the same file
    assert texts[0] == "<|im_start|>user\nsay a red cat<|im_end|>\n<|im_start|>assistant\n"
    # the labelers' samples are the policy's answers to PPO's queries: K per prompt, one generator seeded 3
    vocab = tokenizer.get_vocab()
    expected = sample(
        model.eval(),
        [q for q in queries for _ in range(3)],
        max_new_tokens=8,
        eos_token_id=tokenizer.eos_token_id,
        blocked_token_ids=[vocab[GOOD], vocab[BAD]],
        control_token_ids=[vocab[GOOD], vocab[BAD]],
        generator=torch.Generator().manual_seed(3),
    )
    responses = [tokenizer.decode(ids) for ids in expected]
    assert read == [texts[i // 3] + r for i, r in enumerate(responses) if r.strip()]  # rendered prompt + response
    comparisons = read_rankings(report.rankings)
    assert len(comparisons) == report.comparisons >= 1
    for comparison in comparisons:
        assert comparison.prompt in texts and set(comparison.responses) <= set(responses)
    assert {d.prompt for d in read_demonstrations(report.demonstrations)} == set(texts)


def test_binary_labels_split_at_the_median_and_a_tie_goes_where_the_good_share_is_nearer_half():
    from prefer.labeling.synthetic import binary_labels

    # continuous scores: at most the median is good (3 of 5, the median itself included)
    assert binary_labels(np.array([0.3, 0.1, 0.5, 0.2, 0.4])).tolist() == [True, True, False, True, False]
    # a pass/fail judge where 4 of 5 fail (misalignment 1): the median is 1, and "at most" it would make all 5
    # good; below it, the one pass is good (1 of 5 is nearer half than 5 of 5)
    assert binary_labels(np.array([1.0, 0.0, 1.0, 1.0, 1.0])).tolist() == [False, True, False, False, False]
    # 4 of 5 pass: the median is 0, and "below" it would make none good; at most it, the 4 passes are
    assert binary_labels(np.array([0.0, 0.0, 1.0, 0.0, 0.0])).tolist() == [True, True, False, True, True]
    # an empty response (NaN) is neither and does not count towards the half
    assert binary_labels(np.array([1.0, np.nan, 0.0, 1.0])).tolist() == [False, False, True, False]
