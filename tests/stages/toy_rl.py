"""Shared pieces of the RL and preference stage tests: a tiny GPT-2 "SFT" model trained on short word lists (the
`sft` fixture of conftest.py builds it), the mean toy reward of its samples, and a Rollout of hand-made responses."""

import itertools
import json
import random

import torch
from toy_scorers import not_a

from prefer.config import LabelConfig, build_config
from prefer.data.tokenizer import train_tokenizer
from prefer.labeling import label_synthetic
from prefer.models.build import build_model, load_model, load_tokenizer
from prefer.models.value import build_value_model
from prefer.objectives import mle_loss, next_token_targets
from prefer.rl import make_rollout
from prefer.sampling import sample
from prefer.training import save_model

WORDS = ["banana", "apple", "cat", "dog", "sky", "blue", "java", "tree", "lamp", "road", "aa", "red", "sun"]


def toy_texts(count, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "." for _ in range(count)]


def write_toy_sft(root):
    """In `root`: sft/ (a tiny GPT-2 with a BPE, briefly trained on short word lists), prompts.jsonl (one word
    each) and corpus.jsonl (pretraining text for PPO-ptx)."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer(toy_texts(400, 0), vocab_size=300)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=64)
    ids = [tokenizer.eos_token_id]
    for text in toy_texts(600, 1):
        ids += tokenizer.encode(text) + [tokenizer.eos_token_id]
    blocks = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)  # [N, 32]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _step in range(60):
        batch = blocks[torch.randint(len(blocks), (16,))]
        (targets,) = next_token_targets(batch)
        loss, _ = mle_loss(model(batch).logits[:, :-1], targets, torch.ones_like(targets, dtype=torch.bool))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    save_model(root / "sft", model, tokenizer, info={"task": "toy"})
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": w}) + "\n" for w in WORDS + ["the", "a", "my"]))
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in toy_texts(800, 2)))
    return root


def mean_reward(model_dir, sft, samples=4):
    """Mean -not_a of `samples` samples per prompt of `sft / prompts.jsonl` (12 new tokens, seed 123)."""
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir).eval()
    prompts = [json.loads(line)["prompt"] for line in (sft / "prompts.jsonl").read_text().splitlines()] * samples
    queries = [[tokenizer.eos_token_id, *tokenizer.encode(p)] for p in prompts]
    out = sample(
        model,
        queries,
        max_new_tokens=12,
        eos_token_id=tokenizer.eos_token_id,
        temperature=1.0,
        generator=torch.Generator().manual_seed(123),
    )
    texts = [p + tokenizer.decode(r, skip_special_tokens=True) for p, r in zip(prompts, out)]
    return -sum(not_a(texts)) / len(texts)


def hand_made_rollout(sft, lengths=(1, 3, 5, 2, 4, 6, 1, 5), temperature=1.0, **kwargs):
    """A Rollout over hand-made responses of known lengths, from the SFT model used as policy and reference:
    (rollout, (policy, reference, value model), queries, responses); rewards 1, 2, ..., len(lengths)."""
    tokenizer = load_tokenizer(sft / "sft")
    policy, reference = load_model(sft / "sft").eval(), load_model(sft / "sft").eval()
    value_model = build_value_model(str(sft / "sft"), None).eval()
    queries = [[tokenizer.eos_token_id, *tokenizer.encode(w)] for w in WORDS[: len(lengths)]]
    responses = [[(7 * i + 3 * t) % 200 + 3 for t in range(n)] for i, n in enumerate(lengths)]
    scores = torch.arange(1.0, len(lengths) + 1)
    rollout = make_rollout(
        policy,
        reference,
        value_model,
        queries,
        responses,
        rewards=scores,
        gold=torch.zeros(len(lengths)),
        temperature=temperature,
        pad_id=tokenizer.eos_token_id,
        batch_size=3,
        device=torch.device("cpu"),
        **kwargs,
    )
    return rollout, (policy, reference, value_model), queries, responses


def toy_label_config(sft, prompts, root, *, scorer: str) -> LabelConfig:
    """`prefer label --synthetic`'s config for the toy SFT model: K = 4 samples of 12 tokens of each prompt in the
    file `prompts`, ranked by `scorer` (a scorer name or spec), written to rankings.jsonl and demos.jsonl in `root`."""
    return build_config(
        LabelConfig,
        {
            "model": sft / "sft",
            "prompts": prompts,
            "scorer": scorer,
            "rankings_out": root / "rankings.jsonl",
            "demonstrations_out": root / "demos.jsonl",
            "num_responses": 4,
            "generation.max_new_tokens": 12,
            "runtime.device": "cpu",
            "runtime.seed": 0,
        },
    )


def label_toy_prompts(sft, root, *, feedback_out=None):
    """K = 4 samples of the SFT model for ~180 prompts (the words and their pairs) in `root`, ranked by how many of
    their characters are "a" (rankings.jsonl, demos.jsonl; with `feedback_out`, each response marked good or bad).
    Returns label_synthetic's report."""
    prompts = WORDS + [" ".join(words) for words in itertools.product(WORDS, repeat=2)]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return label_synthetic(
        toy_label_config(sft, root / "prompts.jsonl", root, scorer="not-a"),
        scorer=not_a,
        progress=False,
        feedback_out=feedback_out,
    )
