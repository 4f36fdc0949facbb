"""Fingerprints of tiny runs of every training stage, to show a refactor changed no number.

    python scripts/stage_fingerprints.py TREE OUT_DIR [RUN ...]

runs, with the `prefer` package of TREE (a checkout; e.g. a `git worktree` of an older commit beside this one),
tiny PPO (critic separate, shared, PPO-ptx, LoRA with adaptive KL), GRPO, GRPO-ptx, RLOO, Dr. GRPO with LoRA, SFT
(plain; LoRA + packing), reward models (plain; LoRA), DPO / IPO / listwise / DPO with LoRA and pretraining (MLE,
conditional, UL, AWR), and prints for each the sha256 prefix of its final weights and its last metrics record.
Two trees whose lines agree trained the same weights and logged the same numbers. The toy scorer ("not-a", the
share of characters that are not "a") is registered by name so that older trees without `py:` scorers run too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import sys
from pathlib import Path

ROOT, OUT = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import torch  # noqa: E402
from tiny_runs import tiny_overrides, write_pii_corpus  # noqa: E402

import prefer.config  # noqa: E402
from prefer import scorers  # noqa: E402
from prefer.config import (  # noqa: E402
    DPOConfig,
    LabelConfig,
    PretrainConfig,
    RewardConfig,
    SFTConfig,
    build_config,
    load_config,
)
from prefer.data.tokenizer import train_tokenizer  # noqa: E402
from prefer.labeling import label_synthetic  # noqa: E402
from prefer.models.build import build_model  # noqa: E402
from prefer.objectives import mle_loss, next_token_targets  # noqa: E402
from prefer.training import save_model  # noqa: E402

WORDS = ["banana", "apple", "cat", "dog", "sky", "blue", "java", "tree", "lamp", "road", "aa", "red", "sun"]


def texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "." for _ in range(count)]


def not_a(batch):
    return [sum(c != "a" for c in t) / max(1, len(t)) for t in batch]


def stage(name: str):
    """The stage function by its historical name (PPO and RLOO/GRPO were two modules before one loop)."""
    for module, function in {
        "ppo": [("prefer.stages.policy_gradient", "ppo"), ("prefer.stages.ppo", "ppo")],
        "group_rl": [("prefer.stages.policy_gradient", "group_rl"), ("prefer.stages.group_rl", "group_rl")],
    }.get(name, [(f"prefer.stages.{name}", name)]):
        try:
            return getattr(__import__(module, fromlist=[function]), function)
        except ImportError:
            continue
    raise ImportError(name)


def policy_gradient_config(values: dict):
    """A PPO / RLOO / GRPO config of TREE from the keys of one PolicyGradientConfig (`algorithm`, `model.init_from`,
    `train.epochs`), translated to the PPOConfig / GroupRLConfig of trees from before it."""
    if hasattr(prefer.config, "PolicyGradientConfig"):
        return build_config(prefer.config.PolicyGradientConfig, values)
    old = {key.removeprefix("model."): value for key, value in values.items()}  # init_from, reference
    algorithm = old.pop("algorithm")
    if algorithm == "ppo":
        if "train.epochs" in old:
            old["train.ppo_epochs"] = old.pop("train.epochs")
        return build_config(prefer.config.PPOConfig, old)
    return build_config(prefer.config.GroupRLConfig, {**old, "group.algorithm": algorithm})


def with_runtime(config_class, values: dict):
    """`values` built as config_class, with top-level `seed` / `device` moved into `runtime` where TREE keeps them
    there (they moved in LabelConfig)."""
    fields = config_class.__dataclass_fields__
    moved = {
        (f"runtime.{key}" if key in ("seed", "device") and key not in fields and "runtime" in fields else key): value
        for key, value in values.items()
    }
    return build_config(config_class, moved)


def sft_model(root: Path) -> Path:
    """A tiny GPT-2 briefly trained on word lists, its prompts and a corpus."""
    if (root / "sft").exists():
        return root
    torch.manual_seed(0)
    tokenizer = train_tokenizer(texts(400, 0), vocab_size=300)
    model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=64)
    ids = [tokenizer.eos_token_id]
    for text in texts(600, 1):
        ids += tokenizer.encode(text) + [tokenizer.eos_token_id]
    blocks = torch.tensor(ids[: len(ids) // 32 * 32]).view(-1, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        (targets,) = next_token_targets(batch := blocks[torch.randint(len(blocks), (16,))])
        loss, _ = mle_loss(model(batch).logits[:, :-1], targets, torch.ones_like(targets, dtype=torch.bool))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    save_model(root / "sft", model, tokenizer, info={"task": "toy"})
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": w}) + "\n" for w in WORDS))
    (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(800, 2)))
    return root


def runs(sft: Path, data: Path) -> dict:
    rl = {"model.init_from": sft / "sft", "prompts": sft / "prompts.jsonl", "reward.scorer": "not-a"}
    rl |= {"reward.gold_scorer": "not-a", "train.iterations": 3, "rollout.max_new_tokens": 10, "optimizer.lr": 3e-3}
    rl |= {"kl.coef": 0.02, "train.checkpoint_every": 2, "runtime.progress": False, "train.log_samples": 2}
    ptx = {"ptx.source": sft / "corpus.jsonl", "ptx.coef": 0.5, "ptx.batch_size": 4}
    ppo = {"algorithm": "ppo", "train.batch_size": 8, "train.minibatch_size": 4}
    group = {"algorithm": "grpo", "train.batch_size": 4, "group.size": 4}
    epochs = {"optimizer.lr": 3e-3, "train.checkpoint_every": 3, "train.eval_every": 2, "runtime.progress": False}
    epochs |= {"model.init_from": sft / "sft", "train.epochs": 1}
    demos = {"data.demonstrations": data / "demos.jsonl", "train.batch_size": 8, **epochs}
    ranks = {"data.rankings": data / "rankings.jsonl", "train.batch_size": 4, **epochs}
    table = {
        "ppo": ("ppo", None, {**rl, **ppo, "train.epochs": 2}),
        "ppo_shared": ("ppo", None, {**rl, **ppo, "value_trunk": "shared"}),
        "ppo_ptx": ("ppo", None, {**rl, **ppo, **ptx}),
        "ppo_lora_adaptive": ("ppo", None, {**rl, **ppo, "train.minibatch_size": 8, "lora.r": 4, "kl.target": 1}),
        "grpo": ("group_rl", None, {**rl, **group, "train.minibatch_size": 8, "train.epochs": 2}),
        "grpo_ptx": ("group_rl", None, {**rl, **group, "train.minibatch_size": 16, **ptx}),
        "rloo": ("group_rl", None, {**rl, **group, "train.minibatch_size": 16, "algorithm": "rloo"}),
        "drgrpo_lora": (
            "group_rl",
            None,
            {**rl, **group, "group.size": 2, "train.minibatch_size": 8, "group.scale": False, "lora.r": 4},
        ),
        "sft": ("sft", SFTConfig, demos),
        "sft_lora_pack": ("sft", SFTConfig, {**demos, "lora.r": 4, "data.packing": True, "train.micro_batch_size": 4}),
        "reward": ("reward", RewardConfig, ranks),
        "reward_lora": ("reward", RewardConfig, {**ranks, "lora.r": 4}),
        "dpo_lora": ("dpo", DPOConfig, {**ranks, "lora.r": 4}),
    }
    for loss in ("dpo", "ipo", "listwise"):
        table[f"dpo_{loss}"] = ("dpo", DPOConfig, {**ranks, "dpo.loss": loss, "eval.kl_samples": 4})
    return table


def main() -> None:
    torch.set_num_threads(1)
    scorers.SCORERS["not-a"] = not_a
    sft = sft_model(OUT / "sft")
    data = OUT / "data"
    data.mkdir(parents=True, exist_ok=True)
    prompts = WORDS + [" ".join(w) for w in itertools.product(WORDS[:6], repeat=2)]
    (data / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    label = {"model": sft / "sft", "prompts": data / "prompts.jsonl", "scorer": "not-a", "num_responses": 4}
    label |= {"rankings_out": data / "rankings.jsonl", "demonstrations_out": data / "demos.jsonl"}
    label |= {"generation.max_new_tokens": 10, "device": "cpu", "seed": 0}
    label_synthetic(with_runtime(LabelConfig, label), scorer=not_a, progress=False)
    corpus = write_pii_corpus(data / "pii.jsonl", documents=200)
    table = runs(sft, data)
    pretraining = [f"pretrain_{o}" for o in ("mle", "conditional", "ul", "awr")]
    for name in sys.argv[3:] or [*table, *pretraining]:
        if name.startswith("pretrain_"):
            overrides = {"objective.name": name.split("_", 1)[1], "train.tokens": 12_000}
            config = load_config(
                PretrainConfig, overrides=tiny_overrides(OUT / name, corpus, OUT / "cache", **overrides)
            )
            final = stage("pretrain")(config)
        else:
            function, config_class, values = table[name]  # config_class None: a policy-gradient config
            values = {**values, "out_dir": OUT / name}
            config = policy_gradient_config(values) if config_class is None else build_config(config_class, values)
            final = stage(function)(config)
        weights = next(f for f in ("model.safetensors", "adapter_model.safetensors") if (final / f).exists())
        digest = hashlib.sha256((final / weights).read_bytes()).hexdigest()[:16]
        last = json.loads((OUT / name / "metrics.jsonl").read_text().splitlines()[-1])
        last = {key: value for key, value in last.items() if not key.startswith("time/")}  # wall clock
        print(name, digest, json.dumps(last, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
