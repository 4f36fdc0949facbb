"""`prefer demo --pipeline chat`: GRPO on a pretrained chat model against IFEval's instruction checkers, then the
held-out verdict of the same checkers on the starting model and on the policy.

    fixed prompts (topic x instruction type; train topics / held-out topics)
    -> GRPO with LoRA, reward = -(share of the prompt's instructions not followed, strict)
    -> on the held-out prompts, the starting model and the policy sampled alike: instructions followed (strict and
       loose, mean over prompts [95% CI]), win rate against the starting model (same prompt, ties half), KL to it,
       response length, and per instruction type

The judge is Google's code (through `if-verifiable`), not prefer's, and the held-out topics were never trained on:
the win rate is measured against a judge the policy could not have been fitted to beyond what the instructions ask.
A killed run resumes: GRPO from its last checkpoint; the evaluation is re-run.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from prefer.config.chat import TOPICS, ChatConfig
from prefer.devices import resolve_device
from prefer.evaluation.policy import kl_to_sft, policy_entry, sample_policy
from prefer.evaluation.prompts import read_prompt_file, render_queries
from prefer.experiments.rlhf_data import run_stage
from prefer.files import write_json_atomic, write_text_atomic
from prefer.models.build import load_checkpoint
from prefer.models.sources import resolve_model_path
from prefer.scorers.instructions import followed, instruction_prompts, write_prompts
from prefer.stages.policy_gradient import policy_gradient


def chat(config: ChatConfig) -> dict:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    seed, types = config.runtime.seed, config.instruction_types
    train_topics = TOPICS[: config.train_topics]
    heldout_topics = TOPICS[config.train_topics : config.train_topics + config.heldout_topics]
    train = instruction_prompts(train_topics, types, seed=seed)
    heldout = instruction_prompts(heldout_topics, types, seed=seed + 1)
    write_prompts(train, out / "prompts_train.jsonl")
    write_prompts(heldout, out / "prompts_heldout.jsonl")

    start = resolve_model_path(config.init_from, field="init_from")
    grpo = replace(
        config.grpo,
        out_dir=str(out / "grpo"),
        prompts=str(out / "prompts_train.jsonl"),
        # the judge by name, so that the saved config resumes on its own (`prefer grpo --resume`)
        reward=replace(
            config.grpo.reward, scorer=f"{'ifeval-loose' if config.loose else 'ifeval'}:{out / 'prompts_train.jsonl'}"
        ),
        model=replace(config.grpo.model, init_from=str(start)),
        runtime=replace(config.grpo.runtime, seed=seed, device=config.runtime.device),
    )
    trained = time.time()
    final = run_stage(policy_gradient, grpo)
    trained = time.time() - trained

    results = evaluate_chat(config, start, final, heldout, out)
    results["wall_seconds"] = {"grpo": round(trained, 1), "total": round(time.time() - started, 1)}
    write_json_atomic(out / "results.json", results)
    table = chat_table(results)
    write_text_atomic(out / "table.md", table)
    write_text_atomic(out / "samples.md", samples_markdown(results))
    print(table)
    return results


def _verdicts(prompts, samples, *, loose: bool) -> np.ndarray:
    """Per sample: the share of its prompt's instructions followed (samples are prompt-major)."""
    k = samples.samples_per_prompt
    shares = [
        float(np.mean(followed(prompts[i // k], response, loose=loose))) for i, response in enumerate(samples.responses)
    ]
    return np.array(shares)


def evaluate_chat(config: ChatConfig, start: Path, final: Path, heldout, out: Path) -> dict:
    """The starting model and the policy on the held-out prompts, sampled alike (same seed, same settings)."""
    device = resolve_device(config.runtime.device)
    reference, tokenizer, _ = load_checkpoint(start, device)
    policy, _, _ = load_checkpoint(final, device)
    prompts, where = read_prompt_file(str(out / "prompts_heldout.jsonl"))
    queries = render_queries(tokenizer, prompts, where)
    settings = dict(
        samples_per_prompt=config.eval.samples,
        max_new_tokens=config.eval.max_new_tokens,
        temperature=config.eval.temperature,
        seed=config.runtime.seed,
        batch_size=config.eval.batch_size,
        progress=config.runtime.progress,
    )
    samples = {"start": sample_policy(reference, tokenizer, queries, **settings)}
    samples["grpo"] = sample_policy(policy, tokenizer, queries, **settings)
    strict = {name: _verdicts(heldout, s, loose=False) for name, s in samples.items()}
    loose = {name: _verdicts(heldout, s, loose=True) for name, s in samples.items()}
    kl = kl_to_sft(policy, reference, tokenizer, samples["grpo"], temperature=config.eval.temperature, batch_size=8)
    rows = {
        "start": policy_entry(
            samples["start"],
            gold_misalignment=1 - strict["start"],
            proxies={"loose": 1 - loose["start"]},
            kl=None,
            baseline_gold_misalignment=None,
            heldout=None,
        ),
        "grpo": policy_entry(
            samples["grpo"],
            gold_misalignment=1 - strict["grpo"],
            proxies={"loose": 1 - loose["grpo"]},
            kl=kl,
            baseline_gold_misalignment=1 - strict["start"],
            heldout=None,
        ),
    }
    k = config.eval.samples
    by_type = {
        kind: {
            name: float(np.mean([v for i, v in enumerate(strict[name]) if heldout[i // k].instruction_ids[0] == kind]))
            for name in samples
        }
        for kind in config.instruction_types
    }
    shown = [
        {
            "prompt": heldout[i // k].text,
            **{name: samples[name].responses[i] for name in samples},
            **{f"{name}_followed": float(strict[name][i]) for name in samples},
        }
        for i in range(0, min(config.eval.show * k, len(heldout) * k), k)
    ]
    return {
        "model": str(start),
        "prompts": {"train": config.train_topics * len(config.instruction_types), "heldout": len(heldout)},
        "rows": {name: row.as_dict() for name, row in rows.items()},
        "by_type": by_type,
        "samples": shown,
    }


def _percent(interval: dict) -> str:
    low, high = interval["ci"]
    return f"{100 * (1 - interval['mean']):.1f}% [{100 * (1 - high):.1f}, {100 * (1 - low):.1f}]"


def chat_table(results: dict) -> str:
    """Markdown: the two rows (followed strict/loose, win rate, KL, length), then per instruction type."""
    lines = [
        "| model | followed, strict | followed, loose | win rate vs start | KL to start (nats) | tokens |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results["rows"].items():
        win = row.get("win_rate")
        win_text = f"{100 * win['win_rate']:.1f}% [{100 * win['ci'][0]:.1f}, {100 * win['ci'][1]:.1f}]" if win else "-"
        kl = row.get("kl")
        kl_text = f"{kl['mean']:.2f} [{kl['ci'][0]:.2f}, {kl['ci'][1]:.2f}]" if kl else "-"
        loose = row["proxy_reward"]["loose"]
        loose_text = f"{100 * (1 + loose['mean']):.1f}%"  # proxy "reward" = -misalignment = followed share - 1
        tokens = f"{row['response_tokens']:.1f}"
        lines.append(f"| {name} | {_percent(row['gold'])} | {loose_text} | {win_text} | {kl_text} | {tokens} |")
    lines += ["", "| instruction type (held-out topics) | start | grpo |", "| --- | --- | --- |"]
    for kind, rates in results["by_type"].items():
        lines.append(f"| {kind} | {100 * rates['start']:.0f}% | {100 * rates['grpo']:.0f}% |")
    return "\n".join(lines) + "\n"


def samples_markdown(results: dict) -> str:
    blocks = []
    for row in results["samples"]:
        blocks.append(
            f"**{row['prompt']}**\n\n- start ({row['start_followed']:.0f}): {json.dumps(row['start'])}\n"
            f"- grpo ({row['grpo_followed']:.0f}): {json.dumps(row['grpo'])}\n"
        )
    return "\n".join(blocks)
