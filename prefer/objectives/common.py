"""Shared numerics of every objective: masking, normalisation, log-probabilities, shifting.

Each piece of arithmetic that more than one loss needs lives here exactly once, so that the
losses cannot drift apart (e.g. one loss averaging over padding and another not).

Conventions used throughout ``prefer.objectives``:

- ``B`` batch, ``T`` time (tokens), ``V`` vocabulary, ``K`` responses per prompt.
- A ``mask`` is a ``torch.bool`` tensor; ``True`` = this entry is in the loss. Values at
  ``False`` positions are never read into a result: they may hold padding, ``-100`` targets or
  other garbage (NaN is only safe in per-token tensors such as scores/rewards/values, not in
  logits: a NaN logit poisons the softmax backward pass of its own row).
- Gradient-accumulation-safe normalisation: token-level losses divide a masked *sum* by
  ``num_tokens``, the number of loss tokens in the whole optimizer step (all micro-batches,
  all ranks). With ``num_tokens=None`` the denominator is this call's ``mask.sum()``. Summing
  the losses of micro-batches that were all called with the same ``num_tokens`` therefore
  gives exactly the loss, and the gradient, of one call on the full batch.
"""

from __future__ import annotations

import torch

__all__ = [
    "check_mask",
    "check_same_shape",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "next_token_targets",
    "token_logprobs",
]


def check_mask(mask: torch.Tensor, name: str = "mask") -> None:
    """Raise ``TypeError`` unless ``mask`` is a bool tensor (0/1 ints read like weights)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(
            f"{name} must be a torch.bool tensor (True = in the loss), got {got}; convert with {name}.bool()"
        )


def check_same_shape(tensors: dict[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` naming every argument unless all tensors share one shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {described}")


def masked_sum(x: torch.Tensor, mask: torch.Tensor, *, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over the ``True`` entries of ``mask``.

    Args:
        x: any shape, e.g. [B, T].
        mask: bool, same shape as ``x``.
        dim: reduce only this dimension (e.g. ``dim=1`` gives per-sequence sums [B]);
            ``None`` reduces everything to a scalar.

    Masked-out entries are replaced by 0 with ``torch.where`` (not multiplied by 0), so a
    NaN/inf there neither reaches the result nor its gradient.
    """
    check_mask(mask)
    check_same_shape({"x": x, "mask": mask})
    zeroed = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return zeroed.sum() if dim is None else zeroed.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, *, num_tokens: float | torch.Tensor | None = None) -> torch.Tensor:
    """``masked_sum(x, mask) / denominator``, a scalar.

    Args:
        x: any shape, e.g. per-token losses [B, T].
        mask: bool, same shape as ``x``.
        num_tokens: the denominator. Pass the number of loss tokens of the WHOLE optimizer
            step (all micro-batches, all ranks) to make gradient accumulation exact. ``None``
            uses this call's ``mask.sum()``; an all-False mask then gives 0 (not NaN).
    """
    total = masked_sum(x, mask)
    if num_tokens is None:
        denominator = mask.sum().clamp(min=1).to(total.dtype)
    else:
        if float(num_tokens) <= 0:
            raise ValueError(f"num_tokens must be > 0, got {float(num_tokens)}")
        denominator = num_tokens
    return total / denominator


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance (no Bessel correction) of ``x`` over the ``True`` entries, a scalar."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """log p(target) per position: ``log_softmax(logits / temperature)`` gathered at ``targets``.

    Args:
        logits: [B, T, V], already aligned with ``targets`` (position t predicts targets[:, t]).
        targets: [B, T] integer token ids in ``[0, V)`` (callers sanitise masked positions).
        temperature: divide logits by the sampling temperature first (PPO ratios must use the
            temperature the rollouts were sampled with).

    Returns:
        [B, T] float32 (float64 if the logits are float64) log-probabilities.

    Computed as ``gather(z) - logsumexp(z)`` with ``z = logits / temperature``: the same
    number as ``log_softmax(z).gather(...)`` without materialising a second [B, T, V]
    log-softmax tensor. Half-precision logits are upcast to float32 first.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {list(logits.shape)} must be targets {list(targets.shape)} + [V]")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def next_token_targets(input_ids: torch.Tensor, *per_token: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Align a causal LM's inputs with its outputs: ``logits[:, :-1]`` predict ``input_ids[:, 1:]``.

    Args:
        input_ids: [B, T] token ids fed to the model.
        *per_token: [B, T, ...] tensors attached to the TOKENS (attention/loss masks,
            per-token scores or rewards). Each is shifted the same way as the targets, so the
            value at position t belongs to the token being PREDICTED (input_ids[:, t + 1]),
            never to the one being read.

    Returns:
        ``(targets, *shifted)``: ``targets = input_ids[:, 1:]`` [B, T-1] and every per-token
        tensor ``[:, 1:]``. Pair them with ``logits[:, :-1]`` (and with a value head's
        ``values[:, :-1]``: predictor-side tensors are shifted like the logits, not like
        the tokens).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, T], got {list(input_ids.shape)}")
    for i, t in enumerate(per_token):
        if tuple(t.shape[:2]) != tuple(input_ids.shape):
            raise ValueError(
                f"per_token[{i}] {list(t.shape)} does not start with input_ids shape {list(input_ids.shape)}"
            )
    return (input_ids[:, 1:], *(t[:, 1:] for t in per_token))
