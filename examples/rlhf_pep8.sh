#!/usr/bin/env bash
# The InstructGPT pipeline on the CPU, with a synthetic labeler (the PEP 8 scorer) standing in for humans:
#
#   small model pretrained on the stdlib (PEP8 demo) -> prompts = stdlib function signatures
#   -> prefer label --synthetic (pep8 gold scorer, K = 4) -> demonstrations + rankings
#   -> prefer sft -> prefer reward -> prefer ppo (proxy = the reward model, gold = pep8, logged only)
#                                  -> prefer ppo with ptx_coef > 0 (PPO-ptx, stdlib as pretraining data)
#   -> summary on held-out prompts: gold misalignment, KL to SFT, reward-model accuracy, held-out LM loss
#
# Usage (from the repository root):   examples/rlhf_pep8.sh [PRETRAINED_MODEL_DIR]
#   PRETRAINED_MODEL_DIR  default runs/demo/pep8/mle/final (written by `prefer demo --task pep8`)
#   OUT=runs/rlhf         where everything goes; the summary is $OUT/summary.json and $OUT/summary.md
# Budgets are small (a demonstration, ~15 min on 2 CPU cores); scale them up for a real run.
set -euo pipefail

PRETRAINED=${1:-runs/demo/pep8/mle/final}
OUT=${OUT:-runs/rlhf}
PREFER=${PREFER:-prefer}
PYTHON=${PYTHON:-python}
# Budgets (environment overrides for a quick smoke run, e.g. N_LABEL=32 N_PPO=32 N_EVAL=8 PPO_ITERS=2)
N_LABEL=${N_LABEL:-960}   # prompts labelled (K = 4 samples each)
N_PPO=${N_PPO:-160}       # prompts PPO trains on
N_EVAL=${N_EVAL:-80}      # held-out prompts of the summary (2 samples each per model)
PPO_ITERS=${PPO_ITERS:-40}  # PPO iterations of 32 episodes
# One intra-op thread: these models are small, and on a shared 2-core machine two threads fight (~10x slower).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [[ ! -f "$PRETRAINED/config.json" ]]; then
  echo "rlhf_pep8.sh: $PRETRAINED is not a model directory; run \`prefer demo --task pep8\` first, or" >&2
  echo "  prefer pretrain data.task=pep8 model.size=small model.vocab_size=4096 train.tokens=500000 \\" >&2
  echo "    train.batch_size=8 train.lr=3e-3 out_dir=runs/rlhf/pretrain   and pass runs/rlhf/pretrain/final" >&2
  exit 2
fi
mkdir -p "$OUT"
rm -rf "$OUT"/sft "$OUT"/reward "$OUT"/ppo "$OUT"/ppo_ptx  # a fresh run each time (the stages refuse to overwrite)
started=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - started ))s)"; }

step "1. prompts: signatures of stdlib functions, split into label / PPO / held-out evaluation prompts"
"$PYTHON" - "$OUT" "$N_LABEL" "$N_PPO" "$N_EVAL" <<'EOF'
import ast, json, random, sys, sysconfig
from pathlib import Path, PurePosixPath

from prefer.data.corpora import _exclude_stdlib  # the same files as the pretraining corpus (no tests)

out = Path(sys.argv[1])
root = Path(sysconfig.get_paths()["stdlib"])
signatures = set()
for path in sorted(root.rglob("*.py")):
    rel = path.relative_to(root)
    if _exclude_stdlib(PurePosixPath(rel.as_posix())) is not None:
        continue
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        continue
    lines = source.splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.body and node.body[0].lineno > node.lineno:
            line = lines[node.lineno - 1].strip()
            if line.startswith("def ") and line.endswith(":") and len(line) <= 60 and not node.decorator_list:
                signatures.add(line + "\n")  # a prompt: the signature; the model writes the body
signatures = sorted(signatures)
random.Random(0).shuffle(signatures)
n_label, n_ppo, n_eval = map(int, sys.argv[2:5])
splits = {"label": signatures[:n_label], "ppo": signatures[n_label : n_label + n_ppo],
          "eval": signatures[n_label + n_ppo : n_label + n_ppo + n_eval]}
for name, prompts in splits.items():
    (out / f"prompts_{name}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
print(f"{len(signatures)} distinct one-line signatures; " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
EOF

step "2. synthetic labelers: K = 4 samples per label prompt, ranked by the pep8 scorer"
"$PREFER" label --synthetic model="$PRETRAINED" prompts="$OUT/prompts_label.jsonl" scorer=pep8 num_responses=4 \
  max_new_tokens=48 temperature=1.0 rankings_out="$OUT/rankings.jsonl" demonstrations_out="$OUT/demonstrations.jsonl" \
  seed=0 | tee "$OUT/label.json"

step "3. SFT on the best-of-4 demonstrations"
"$PREFER" sft out_dir="$OUT/sft" demonstrations="$OUT/demonstrations.jsonl" model.init_from="$PRETRAINED" \
  epochs=2 train.lr=3e-4 train.batch_size=16 train.eval_every=10 train.checkpoint_every=1000 train.progress=false

step "4. reward model on the rankings (trunk of the SFT model)"
"$PREFER" reward out_dir="$OUT/reward" rankings="$OUT/rankings.jsonl" demonstrations="$OUT/demonstrations.jsonl" \
  model.init_from="$OUT/sft/final" epochs=2 train.lr=3e-4 train.batch_size=8 train.eval_every=10 \
  validation_fraction=0.15 train.checkpoint_every=1000 train.progress=false

PPO_ARGS=(init_from="$OUT/sft/final" prompts="$OUT/prompts_ppo.jsonl" reward_model="$OUT/reward/final"
          gold_scorer=pep8 iterations="$PPO_ITERS" batch_size=32 minibatch_size=8 max_new_tokens=48 lr=1e-4 kl_coef=0.05
          ptx_source=stdlib ptx_max_bytes=1000000 ptx_batch_size=4 checkpoint_every=$(( (PPO_ITERS + 1) / 2 )) progress=false)
step "5. PPO against the reward model (ptx_coef 0; the stdlib only for the logged held-out LM loss)"
"$PREFER" ppo out_dir="$OUT/ppo" "${PPO_ARGS[@]}" ptx_coef=0

step "6. PPO-ptx: the same, plus ptx_coef x LM loss on stdlib blocks"
"$PREFER" ppo out_dir="$OUT/ppo_ptx" "${PPO_ARGS[@]}" ptx_coef=1.0

step "7. summary on the held-out evaluation prompts"
"$PYTHON" - "$OUT" "$PRETRAINED" <<'EOF'
import json, sys
from pathlib import Path

import numpy as np
import torch

from prefer.io import write_json_atomic, write_text_atomic
from prefer.models.build import control_token_ids
from prefer.models.reward_model import encode_prompt
from prefer.rollouts import make_rollout
from prefer.sampling import sample
from prefer.scorers import get_scorer
from prefer.stages.evaluate import load_checkpoint
from prefer.stages.ppo import _pretraining_blocks
from prefer.data.packing import TokenBlocks
from prefer.stages.pretrain import heldout_loss
from prefer.training import read_metrics

out, pretrained = Path(sys.argv[1]), Path(sys.argv[2])
device = torch.device("cpu")
prompts = [json.loads(line)["prompt"] for line in (out / "prompts_eval.jsonl").read_text().splitlines()] * 2
gold, proxy = get_scorer("pep8"), get_scorer(f"rm:{out / 'reward' / 'final'}")
models = {"pretrained": pretrained, "sft": out / "sft" / "final", "ppo": out / "ppo" / "final",
          "ppo_ptx": out / "ppo_ptx" / "final"}
reference, tokenizer, _ = load_checkpoint(models["sft"], device)
queries = [encode_prompt(tokenizer, p) for p in prompts]
_, val_blocks = _pretraining_blocks("stdlib", tokenizer, block_size=reference.config.n_positions, max_bytes=1_000_000)
val_blocks = val_blocks.ids[:32]  # the held-out blocks PPO logs (ptx_eval_blocks = 32)
zero_value = lambda episodes: torch.zeros(episodes.response.shape)  # noqa: E731 (make_rollout wants a critic)

rows = {}
for name, path in models.items():
    model, _, _ = load_checkpoint(path, device)
    row = {}
    for label, temperature, top_p in (("t1", 1.0, 1.0), ("t0.7", 0.7, 0.9)):
        outputs = sample(model, queries, max_new_tokens=48, eos_token_id=tokenizer.eos_token_id,
                         temperature=temperature, top_p=top_p, generator=torch.Generator().manual_seed(123))
        replies = [tokenizer.decode(ids, skip_special_tokens=True) for ids in outputs]
        row[f"gold_pep8_{label}"] = float(np.mean(gold([p + r for p, r in zip(prompts, replies)])))
        row[f"rm_reward_{label}"] = -float(np.mean(proxy.score_pairs(prompts, replies)))
        if label == "t1":  # KL(policy || SFT) per response, on the policy's own samples at temperature 1
            eos = tokenizer.eos_token_id
            responses = [ids + [eos] if len(ids) < 48 else ids for ids in outputs]
            responses = [r if r else [eos] for r in responses]
            rollout = make_rollout(model, reference, zero_value, queries, responses, scores=torch.zeros(len(queries)),
                                   gold=torch.zeros(len(queries)), temperature=1.0, pad_id=eos, batch_size=32,
                                   device=device)
            mask = rollout.response_mask
            row["kl_to_sft"] = float(((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1).mean())
            row["response_tokens"] = float(mask.sum(1).float().mean())
    row["heldout_lm_loss"] = heldout_loss(model, TokenBlocks(val_blocks, torch.zeros(val_blocks.shape)),
                                          control_ids=control_token_ids(tokenizer), batch_size=8,
                                          device=device, precision="fp32")
    rows[name] = row

reward_results = json.loads((out / "reward" / "results.json").read_text())
label = json.loads((out / "label.json").read_text())
training = {}
for run in ("ppo", "ppo_ptx"):
    metrics = read_metrics(out / run)
    training[run] = {k: metrics[-1].get(k) for k in ("reward/proxy", "reward/gold", "kl", "ptx/heldout_loss")}
    training[run] |= {"first_" + k: metrics[0].get(k) for k in ("reward/proxy", "reward/gold")}
summary = {"eval_prompts": len(prompts) // 2, "samples_per_model": len(prompts), "max_new_tokens": 48,
           "models": rows, "reward_model": {"heldout_pairwise_accuracy": reward_results["val_accuracy"],
                                            "heldout_pairs": reward_results["val_pairs"]},
           "labels": {k: label[k] for k in ("comparisons", "gold_mean", "gold_best_mean", "dropped_all_tied")},
           "ppo_training_logs": training}
write_json_atomic(out / "summary.json", summary)

lines = ["| model | pep8 misalignment (T=1) | pep8 misalignment (T=0.7, top-p 0.9) | RM reward (T=1) | "
         "KL to SFT (nats/response, T=1) | response tokens | held-out stdlib LM loss |", "|---" * 7 + "|"]
for name, r in rows.items():
    lines.append(f"| {name} | {r['gold_pep8_t1']:.4f} | {r['gold_pep8_t0.7']:.4f} | {r['rm_reward_t1']:+.3f} | "
                 f"{r['kl_to_sft']:.3f} | {r['response_tokens']:.1f} | {r['heldout_lm_loss']:.3f} |")
lines += ["", f"Reward model held-out pairwise accuracy: {reward_results['val_accuracy']:.3f} on "
          f"{reward_results['val_pairs']:.0f} pairs. Labels: {label['comparisons']} rankings; gold mean of all "
          f"samples {label['gold_mean']:.4f}, of the best-of-4 demonstrations {label['gold_best_mean']:.4f}.",
          f"Evaluation: {len(prompts) // 2} held-out signatures x 2 samples, same seed for every model."]
write_text_atomic(out / "summary.md", "\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo
echo "done in $(( $(date +%s) - started ))s; summary in $OUT/summary.json and $OUT/summary.md"
