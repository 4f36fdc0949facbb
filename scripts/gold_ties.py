"""How often a gold scorer ties two samples of one prompt, and how far a fluency judge separates them.

    python scripts/gold_ties.py MODEL_DIR PROMPTS.jsonl [--scorer pii-entry] [--judge MODEL_DIR] [--prompts-used 150]

Two samples per prompt at temperature 1 (at most 64 new tokens) from MODEL_DIR; prints the share of prompts whose
two samples the scorer scores equal, the share of samples that score 0, the spread (std) of the difference between
the two samples' scores and of their NLL per response token under the judge (default: MODEL_DIR itself). This is
how `fluency_weight` of configs/rlhf-pii.yaml was chosen (README, "The InstructGPT half"). PROMPTS.jsonl:
{"prompt"} per line, e.g. runs/rlhf/pii/prompts/label.jsonl.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from prefer.evaluation.policy import sample_policy
from prefer.models.build import load_checkpoint
from prefer.scorers import get_scorer, score_responses
from prefer.scorers.fluency import LanguageModelJudge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("prompts")
    parser.add_argument("--scorer", default="pii-entry")
    parser.add_argument("--judge", default=None)
    parser.add_argument("--prompts-used", type=int, default=150)
    args = parser.parse_args()
    lines = Path(args.prompts).read_text().splitlines()[: args.prompts_used]
    prompts = [json.loads(line)["prompt"] for line in lines]
    model, tokenizer, _ = load_checkpoint(args.model, "cpu")
    samples = sample_policy(
        model, tokenizer, prompts, samples_per_prompt=2, max_new_tokens=64, temperature=1.0, seed=0, batch_size=128
    )
    gold = np.asarray(score_responses(get_scorer(args.scorer), samples.prompts, samples.responses)).reshape(-1, 2)
    judge = LanguageModelJudge(args.judge or args.model, device="cpu")
    nll = np.asarray(judge.nll_pairs(samples.prompts, samples.responses)).reshape(-1, 2)
    both = np.array([bool(r.strip()) for r in samples.responses]).reshape(-1, 2).all(1)
    print(f"{len(prompts)} prompts x 2 samples; both samples non-empty for {both.mean():.1%}")
    print(f"{args.scorer}: ties {np.mean(gold[both, 0] == gold[both, 1]):.1%} of those prompts")
    print(f"{args.scorer}: samples scoring 0: {np.mean(gold[both] == 0):.1%}")
    print(f"{args.scorer}: std of the difference between the two samples {np.std(gold[both, 0] - gold[both, 1]):.3g}")
    print(f"judge NLL per response token: mean {nll[both].mean():.2f}, std {nll[both].std():.2f}")
    print(f"judge NLL: std of the difference between the two samples {np.std(nll[both, 0] - nll[both, 1]):.2f}")


if __name__ == "__main__":
    main()
