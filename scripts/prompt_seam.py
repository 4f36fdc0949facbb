"""How often a model answers a prompt with an immediate end of text, with and without the prompt's final newline.

    python scripts/prompt_seam.py MODEL_DIR PROMPTS.jsonl [--prompts-used 100] [--samples 4] [--max-new-tokens 64]

A byte-level BPE merges a newline with what follows it ("\\n\\n", "\\n  "), so a prompt that ends in a lone newline
is a token sequence the model rarely saw in training; `prefer rlhf` therefore cuts the final newline of its prompts
(prefer.experiments.rlhf.entry_prompt). PROMPTS.jsonl: {"prompt"} per line (e.g. runs/rlhf/pii/prompts/label.jsonl);
a newline is added to each prompt for the first condition.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from prefer.evaluation.policy import sample_policy
from prefer.models.build import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("prompts")
    parser.add_argument("--prompts-used", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    model, tokenizer, _ = load_checkpoint(args.model, "cpu")
    lines = Path(args.prompts).read_text().splitlines()
    prompts = [json.loads(line)["prompt"].rstrip("\n") for line in lines][: args.prompts_used]
    for label, variant in (("ending in a newline", [p + "\n" for p in prompts]), ("newline cut", prompts)):
        samples = sample_policy(
            model,
            tokenizer,
            variant,
            samples_per_prompt=args.samples,
            max_new_tokens=args.max_new_tokens,
            temperature=1.0,
            seed=0,
            batch_size=100,
        )
        empty = float(np.mean([not r.strip() for r in samples.responses]))
        print(
            f"prompts {label}: {100 * empty:.1f}% of {len(samples)} samples are empty "
            f"(an immediate end of text); {100 * np.mean(samples.ended):.1f}% ended"
        )


if __name__ == "__main__":
    main()
