"""Capability measures: KL from a reference LM, held-out loss per token and per byte, and code that parses.

KL(reference || model) = E_{x ~ reference}[log p_ref(x) - log p_model(x)] (Korbak et al. 2023 used GPT-3 as the
reference), a Monte-Carlo estimate on samples of the reference. The estimator (`estimate_kl`) only needs two small
protocols, so a test can run it on models whose KL is known exactly:

    SequenceSampler  (num_samples, seed) -> [(x, ended)]   x: any sequence object; ended: it stopped by itself
    SequenceLogprob  ([(x, ended)]) -> [log p(x, ended)]    log-prob of x, + the end-of-text term if ended

`kl_to_reference` plugs in Hugging Face models (`hf_sampler`, `hf_logprob`), which may have DIFFERENT tokenizers:
x is TEXT, and each model scores it through its own tokenizer.

What is counted, and why (pitfall 4 of the public code counted a control token's own log-prob):
- The prefix is never scored: `<|endoftext|>` for the reference; for the model `<|endoftext|>`, plus `<|good|>` when
  it was conditionally trained (`model_prefix="auto"` reads `model_info["control_tokens_trained"]`).
- Control tokens are outside the text: the reference samples with both of them blocked, and at every position both
  models' next-token distributions are renormalised without the control tokens (a conditional model would
  otherwise be charged for the `<|good|>` it expects after each newline). With no control tokens in a vocabulary
  this changes nothing.
- A sample that ended with end-of-text within max_new_tokens counts the end-of-text log-prob in both models; a
  truncated one counts no end term (its event is "the text starts with x"). With one tokenizer these events
  partition the sequences, so the estimate is exactly the KL between the two models' outputs truncated at
  max_new_tokens (>= 0 in expectation). With different tokenizers a text's log-prob is that of its canonical
  tokenization (other tokenizations of the same string are ignored), an approximation.
- Both models score the decoded text (re-tokenized), the reference included, so KL(m || m) is exactly 0. A sample
  that is not valid UTF-8 (a byte-level BPE can stop inside a character) decodes with U+FFFD replacement
  characters, and that decoded text is what both models score.
- A text longer than a model's context is scored in consecutive windows, each after the prefix (counted in the
  result as `windowed_sequences`).

`text_logprobs` is therefore a different quantity from the per-response KL of the RLHF table and of DPO
(prefer.evaluation.logprobs, on the policy's own token ids): kept apart on purpose; that module lists which
estimator each table reports.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from prefer.controls import BAD, GOOD, control_token_ids
from prefer.data.packing import TokenBlocks
from prefer.errors import PreferError
from prefer.evaluation.metrics import bootstrap_ci
from prefer.models.build import context_length
from prefer.objectives import mle_loss, next_token_targets
from prefer.sampling import Decoding, sample_per_prompt
from prefer.training import autocast

__all__ = [
    "code_completion_eval",
    "cut_at_dedent",
    "estimate_kl",
    "function_prompts",
    "heldout_block_loss",
    "heldout_loss_per_token_and_byte",
    "hf_logprob",
    "hf_sampler",
    "kl_to_reference",
    "parse_rate",
    "text_logprobs",
]

SequenceSampler = Callable[..., list[tuple[object, bool]]]
SequenceLogprob = Callable[[list[tuple[object, bool]]], Sequence[float]]


# ------------------------------------------------------------------ the estimator


def estimate_kl(
    sample_reference: SequenceSampler,
    reference_logprob: SequenceLogprob,
    model_logprob: SequenceLogprob,
    *,
    num_samples: int,
    seed: int,
) -> dict:
    """Monte-Carlo KL(reference || model) in nats per sequence: the mean over reference samples of
    log p_ref(x) - log p_model(x), with a 95% bootstrap interval. Returns {"kl", "ci", "num_samples",
    "fraction_ended", "per_sample"}."""
    if num_samples < 1:
        raise PreferError(f"num_samples must be >= 1, got {num_samples}")
    samples = sample_reference(num_samples, seed=seed)
    reference = np.asarray(reference_logprob(samples), dtype=np.float64)
    model = np.asarray(model_logprob(samples), dtype=np.float64)
    if not np.isfinite(reference).all():
        raise PreferError("the reference gives a sample of its own probability 0 (log-prob -inf)")
    per_sample = reference - model  # +inf where the model gives a reference sample probability 0
    low, high = bootstrap_ci(per_sample) if np.isfinite(per_sample).all() else (float("inf"), float("inf"))
    return {
        "kl": float(per_sample.mean()),
        "ci": [low, high],
        "num_samples": len(samples),
        "fraction_ended": float(np.mean([ended for _, ended in samples])),
        "per_sample": per_sample.tolist(),
    }


# ------------------------------------------------------------------ Hugging Face models


def _start_id(tokenizer) -> int:
    # The end-of-text token, as pretraining packs it before every document (prefer.data.packing) and the evaluation
    # sampler prompts with it (prefer.controls). Not bos first: GPT-2's bos is its eos, but a finetuned Llama-style
    # model (SmolLM2: bos <|im_start|>, eos <|im_end|>) would be scored after a token it never saw start a document.
    start = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    if start is None:
        raise PreferError("tokenizer: it has neither a bos nor an eos token to start a document with")
    return int(start)


def _encode(tokenizer, text: str) -> list[int]:
    # split_special_tokens: text that spells "<|good|>" is text, not the control token
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def hf_sampler(model, tokenizer, *, max_new_tokens: int, batch_size: int, progress: bool = False) -> SequenceSampler:
    """Samples of a causal LM from its document-start token at temperature 1, no top-p (the estimate needs the
    model's own distribution), control tokens blocked; (decoded text, ended on end-of-text)."""

    decoding = Decoding(max_new_tokens, tokenizer.eos_token_id, 1.0, 1.0, control_token_ids(tokenizer), (), batch_size)

    def draw(num_samples: int, *, seed: int) -> list[tuple[str, bool]]:
        start = [[_start_id(tokenizer)]]
        outputs = sample_per_prompt(model, start, decoding, k=num_samples, seed=seed, progress=progress)
        return [(tokenizer.decode(ids, skip_special_tokens=True), len(ids) < max_new_tokens) for ids in outputs]

    return draw


@torch.no_grad()
def text_logprobs(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    ended: Sequence[bool],
    prefix_ids: Sequence[int],
    batch_size: int,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per text: log p(text, + end-of-text if ended | prefix) summed over the text's tokens (the prefix is never
    scored), every next-token distribution renormalised without the control tokens. Returns (log-probs [N] float64,
    scored tokens [N] int64, number of texts scored in several context windows)."""
    if len(texts) != len(ended):
        raise PreferError(f"{len(texts)} texts but {len(ended)} ended flags")
    prefix = [int(i) for i in prefix_ids]
    window = context_length(model) - len(prefix)
    if window < 1:
        raise PreferError(f"the prefix of {len(prefix)} tokens fills the model's context")
    rows: list[tuple[int, list[int]]] = []  # (text index, content tokens scored after the prefix)
    counts = np.zeros(len(texts), dtype=np.int64)
    windowed = 0
    for index, (text, end) in enumerate(zip(texts, ended)):
        content = _encode(tokenizer, text) + ([tokenizer.eos_token_id] if end else [])
        counts[index] = len(content)
        windowed += len(content) > window
        rows += [(index, content[start : start + window]) for start in range(0, len(content), window)]
    device = next(model.parameters()).device
    excluded = torch.tensor(control_token_ids(tokenizer), dtype=torch.long, device=device)
    totals = np.zeros(len(texts), dtype=np.float64)
    rows = [row for row in rows if row[1]]  # an empty, unended text scores 0
    rows.sort(key=lambda row: len(row[1]))  # similar lengths together: less padding
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc="log-probs", unit="batch", disable=not progress):
            batch = rows[start : start + batch_size]
            width = len(prefix) + max(len(content) for _, content in batch)
            ids = torch.full((len(batch), width), int(tokenizer.eos_token_id), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, content) in enumerate(batch):
                ids[row, : len(prefix) + len(content)] = torch.tensor(prefix + content)
                mask[row, : len(prefix) + len(content)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # [B, W-1, V]
            if excluded.numel():
                logits[..., excluded] = float("-inf")
            targets = ids[:, 1:]
            logp = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)  # [B, W-1]
            scored = mask[:, 1:].bool()
            scored[:, : len(prefix) - 1] = False  # targets inside the prefix are never counted
            sums = torch.where(scored, logp, 0.0).sum(-1).double().cpu().numpy()
            for (index, _), value in zip(batch, sums):
                totals[index] += value
    finally:
        model.train(was_training)
    return totals, counts, windowed


def _prefix(tokenizer, prefix: str) -> list[int]:
    tags = {"none": [], "good": [GOOD], "bad": [BAD]}[prefix]
    vocab = tokenizer.get_vocab()
    missing = [t for t in tags if t not in vocab]
    if missing:
        raise PreferError(f"model_prefix: the tokenizer has no {missing[0]} token")
    return [_start_id(tokenizer)] + [vocab[t] for t in tags]


def hf_logprob(model, tokenizer, *, prefix: str = "none", batch_size: int, progress: bool = False) -> SequenceLogprob:
    """log p(text, ended) of a causal LM after its document-start token (+ `<|good|>`/`<|bad|>` for
    prefix="good"/"bad"), as `text_logprobs` computes it."""
    prefix_ids = _prefix(tokenizer, prefix)

    def logprob(samples: list[tuple[str, bool]]) -> np.ndarray:
        texts = [text for text, _ in samples]
        ended = [end for _, end in samples]
        return text_logprobs(
            model, tokenizer, texts, ended=ended, prefix_ids=prefix_ids, batch_size=batch_size, progress=progress
        )[0]

    return logprob


def _resolve_prefix(model_prefix: str, model_info: dict | None) -> str:
    if model_prefix == "auto":
        return "good" if (model_info or {}).get("control_tokens_trained") else "none"
    if model_prefix not in ("none", "good", "bad"):
        raise PreferError(f"model_prefix: unknown {model_prefix!r}; choose auto | none | good | bad")
    return model_prefix


def kl_to_reference(
    reference,
    reference_tokenizer,
    model,
    model_tokenizer,
    *,
    num_samples: int,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    model_prefix: str = "auto",
    model_info: dict | None = None,
    progress: bool = False,
) -> dict:
    """KL(reference || model) in nats per reference sample (see the module docstring for what is counted), from
    num_samples reference samples of at most max_new_tokens tokens. model_prefix: auto (`<|good|>` after
    `<|endoftext|>` when model_info["control_tokens_trained"]) | none | good | bad.

    Returns {"kl", "ci" (95% bootstrap), "kl_per_reference_token", "kl_per_byte", "num_samples",
    "max_new_tokens", "fraction_ended", "mean_reference_tokens", "mean_bytes", "control_tokens_counted": False,
    "reference_prefix", "model_prefix", "windowed_sequences", "per_sample"}."""
    prefix = _resolve_prefix(model_prefix, model_info)
    draw = hf_sampler(
        reference, reference_tokenizer, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
    drawn: list[tuple[str, bool]] = []

    def sample_reference(num: int, *, seed: int) -> list[tuple[str, bool]]:
        drawn.extend(draw(num, seed=seed))
        return drawn

    counts: dict[str, np.ndarray | int] = {}

    def reference_logprob(samples):
        values, counts["tokens"], counts["ref_windowed"] = text_logprobs(
            reference,
            reference_tokenizer,
            [t for t, _ in samples],
            ended=[e for _, e in samples],
            prefix_ids=_prefix(reference_tokenizer, "none"),
            batch_size=batch_size,
            progress=progress,
        )
        return values

    def model_logprob(samples):
        values, _, counts["model_windowed"] = text_logprobs(
            model,
            model_tokenizer,
            [t for t, _ in samples],
            ended=[e for _, e in samples],
            prefix_ids=_prefix(model_tokenizer, prefix),
            batch_size=batch_size,
            progress=progress,
        )
        return values

    result = estimate_kl(sample_reference, reference_logprob, model_logprob, num_samples=num_samples, seed=seed)
    tokens = np.asarray(counts["tokens"], dtype=np.float64)
    nbytes = np.array([len(text.encode("utf-8")) for text, _ in drawn], dtype=np.float64)
    total = float(np.sum(result["per_sample"]))
    result.update(
        {
            "kl_per_reference_token": total / max(1.0, float(tokens.sum())),
            "kl_per_byte": total / max(1.0, float(nbytes.sum())),
            "max_new_tokens": max_new_tokens,
            "mean_reference_tokens": float(tokens.mean()),
            "mean_bytes": float(nbytes.mean()),
            "control_tokens_counted": False,
            "reference_prefix": reference_tokenizer.convert_ids_to_tokens(_prefix(reference_tokenizer, "none")),
            "model_prefix": model_tokenizer.convert_ids_to_tokens(_prefix(model_tokenizer, prefix)),
            "windowed_sequences": {"reference": counts["ref_windowed"], "model": counts["model_windowed"]},
        }
    )
    return result


# ------------------------------------------------------------------ held-out loss


@torch.no_grad()
def heldout_block_loss(
    model, blocks: TokenBlocks, *, control_ids: list[int], batch_size: int, device, precision
) -> float:
    """Mean next-token loss over token blocks [N, T] (`blocks.ids`) on content tokens (control-token targets
    excluded, so that MLE and conditional models are compared on the same tokens)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    control = torch.tensor(control_ids, device=device)
    for start in range(0, len(blocks), batch_size):
        ids = blocks.ids[start : start + batch_size].to(device)
        (targets,) = next_token_targets(ids)
        mask = ~torch.isin(targets, control)
        with autocast(device, precision):
            logits = model(ids).logits[:, :-1]
        loss, _ = mle_loss(logits.float(), targets, mask, num_tokens=1.0)  # a sum over tokens
        total += loss.item()
        count += int(mask.sum())
    model.train(was_training)
    return total / max(1, count)


def heldout_loss_per_token_and_byte(
    model, tokenizer, texts: Sequence[str], *, batch_size: int, control_tokens_trained: bool, progress: bool = False
) -> dict:
    """Held-out loss of validation documents in nats per content token and per UTF-8 byte (the latter compares
    models with different tokenizers). Each document is scored after `<|endoftext|>` (+ `<|good|>` for a conditional
    model; the prefix is never scored), its closing end-of-text included (in the numerator; bytes count the text
    only), every next-token distribution renormalised without control tokens, as in `kl_to_reference`. (This
    differs from the training run's `val_loss`, which reads packed blocks and does not renormalise.)

    Returns {"loss_per_token", "loss_per_byte", "bits_per_byte", "tokens", "bytes", "documents", "prefix",
    "control_tokens_counted": False, "windowed_documents"}."""
    if not texts:
        raise PreferError("heldout loss needs at least one document")
    prefix = _prefix(tokenizer, "good" if control_tokens_trained else "none")
    logp, counts, windowed = text_logprobs(
        model,
        tokenizer,
        list(texts),
        ended=[True] * len(texts),
        prefix_ids=prefix,
        batch_size=batch_size,
        progress=progress,
    )
    nats = -float(logp.sum())
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "loss_per_token": nats / int(counts.sum()),
        "loss_per_byte": nats / max(1, nbytes),
        "bits_per_byte": nats / max(1, nbytes) / np.log(2),
        "tokens": int(counts.sum()),
        "bytes": nbytes,
        "documents": len(texts),
        "prefix": tokenizer.convert_ids_to_tokens(prefix),
        "control_tokens_counted": False,
        "windowed_documents": windowed,
    }


# ------------------------------------------------------------------ code


def parse_rate(texts: Sequence[str]) -> float:
    """Fraction of texts that `ast.parse` accepts exactly as written (no dedent, no repair)."""
    if not texts:
        raise PreferError("parse_rate needs at least one text")
    ok = 0
    for text in texts:
        try:
            ast.parse(text)
            ok += 1
        except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: null bytes
            pass
    return ok / len(texts)


def function_prompts(texts: Sequence[str], *, limit: int | None = None) -> list[str]:
    """Signatures of the top-level functions in `texts` (modules), each "def name(args):\\n" exactly as written
    (possibly over several lines; decorators left out), distinct, in order of appearance. Modules that do not parse
    are skipped; a signature is kept only if it parses with a `pass` body."""
    prompts: list[str] = []
    seen: set[str] = set()
    for text in texts:
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        lines = text.splitlines(keepends=True)
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.body[0].lineno <= node.lineno:
                continue  # a one-line `def f(): return 1` has no signature-only prefix
            signature = "".join(lines[node.lineno - 1 : node.body[0].lineno - 1])
            if not signature.endswith("\n"):
                signature += "\n"
            try:
                ast.parse(signature + "    pass\n")
            except SyntaxError:
                continue  # comments or a docstring-less oddity between the colon and the body
            if signature not in seen:
                seen.add(signature)
                prompts.append(signature)
                if limit is not None and len(prompts) >= limit:
                    return prompts
    return prompts


def cut_at_dedent(prompt: str, completion: str) -> str:
    """The completion up to the first line it starts at column 0 (the function has ended), that newline kept."""
    full = prompt + completion
    match = re.compile(r"\n(?=\S)").search(full, max(0, len(prompt) - 1))
    return completion if match is None else full[len(prompt) : match.start() + 1]


def code_completion_eval(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    control_tokens_trained: bool,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float = 0.9,
    batch_size: int = 64,
    seed: int = 0,
    stop_at_dedent: bool = True,
) -> dict:
    """The prompted code scenario: complete function signatures (`function_prompts`), score prompt + completion.
    Controls as at evaluation (`<|good|>` prompt and `<|bad|>` blocked for a conditional model, both tags blocked
    otherwise). With stop_at_dedent the completion ends at its first column-0 line (HumanEval-style stop).

    Returns {"num_prompts", "num_samples", "parse_rate", "scores": {"pep8": ..., "pep8-style": ...} as
    `score_texts` reports them, "texts"}."""
    from prefer.controls import resolve_controls
    from prefer.evaluation.misalignment import score_texts
    from prefer.scorers import get_scorer

    if not prompts:
        raise PreferError("code_completion_eval needs at least one prompt")
    controls = resolve_controls(prompt="auto", block="auto", conditional=control_tokens_trained)
    prefix = controls.prompt_ids(tokenizer)
    owners = [p for p in prompts for _ in range(samples_per_prompt)]
    blocked, control = controls.blocked_ids(tokenizer), control_token_ids(tokenizer)
    decoding = Decoding(max_new_tokens, tokenizer.eos_token_id, temperature, top_p, blocked, control, batch_size)
    queries = [prefix + _encode(tokenizer, p) for p in prompts]
    outputs = sample_per_prompt(model, queries, decoding, k=samples_per_prompt, seed=seed)
    completions = [tokenizer.decode(ids, skip_special_tokens=True) for ids in outputs]
    if stop_at_dedent:
        completions = [cut_at_dedent(p, c) for p, c in zip(owners, completions)]
    texts = [p + c for p, c in zip(owners, completions)]
    scored = score_texts(texts, {name: get_scorer(name) for name in ("pep8", "pep8-style")}, threshold=0.0)
    return {
        "num_prompts": len(prompts),
        "num_samples": len(texts),
        "parse_rate": parse_rate(texts),
        "prompt": controls.prompt,
        "blocked": controls.block,
        "scores": scored["scores"],
        "texts": texts,
    }
