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
    "LossAndStats",
    "check_mask",
    "check_positive",
    "check_same_shape",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "next_token_targets",
    "token_logprobs",
    "zero_outside",
]

# What every loss returns: the scalar loss, with gradient, and its stats for logging (detached scalar tensors).
LossAndStats = tuple[torch.Tensor, dict[str, torch.Tensor]]


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` unless the hyperparameter ``value`` is > 0 (a NaN is not)."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def zero_outside(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with every ``False`` entry of ``mask`` replaced by 0 (``torch.where``: a NaN there does not survive)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


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
    zeroed = zero_outside(x, mask)
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
    if logits.numel() == 0 or logits.dim() < 2:
        picked = logits.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    return _TokenLogprobs.apply(logits, targets.long())


# Elements of one [rows, V] slab of the vocabulary work in `_TokenLogprobs` (8 MB of float32): its temporaries stay
# in cache and are reused by the allocator instead of three fresh [B, T, V] tensors per call.
_SLAB_ELEMENTS = 1 << 21


def _slabs(logits: torch.Tensor):
    """Views of `logits` [..., V] split along dim 0 into slabs of about `_SLAB_ELEMENTS` elements."""
    per_row = max(1, logits[0].numel())
    step = max(1, _SLAB_ELEMENTS // per_row)
    return [slice(start, start + step) for start in range(0, logits.shape[0], step)]


def _logsumexp_into(lse: torch.Tensor, logits: torch.Tensor) -> None:
    """`lse[...] = torch.logsumexp(logits, -1)` slab by slab, with torch's own operations in torch's own order
    (amax, the infinite maxima set to 0, sum of exp(x - max), log, + max), so the numbers are torch's bit for bit."""
    for rows in _slabs(logits):
        x = logits[rows]
        maxes = torch.amax(x, dim=-1, keepdim=True)
        maxes.masked_fill_(maxes.abs() == float("inf"), 0)
        total = torch.sub(x, maxes).exp_().sum(dim=-1)
        lse[rows] = total.log_().add_(maxes.squeeze(-1))


class _TokenLogprobs(torch.autograd.Function):
    """``gather(logits, targets) - logsumexp(logits)`` with the same numbers as autograd gives that expression, in
    value and in gradient (``g * onehot - g * exp(logits - lse)``), computed slab by slab: no [B, T, V] temporaries
    in the forward pass and one [B, T, V] tensor (the gradient itself) in the backward pass, where autograd made
    five (tests/objectives/test_common.py compares both bit for bit)."""

    @staticmethod
    def forward(ctx, logits, targets):
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        lse = torch.empty_like(picked)
        _logsumexp_into(lse, logits)
        ctx.save_for_backward(logits, targets, lse)
        return picked - lse

    @staticmethod
    def backward(ctx, grad):
        logits, targets, lse = ctx.saved_tensors
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        minus = (-grad).unsqueeze(-1)
        lse = lse.unsqueeze(-1)
        for rows in _slabs(logits):
            out = grad_logits[rows]
            torch.sub(logits[rows], lse[rows], out=out)
            out.exp_().mul_(minus[rows])
        grad_logits.scatter_add_(-1, targets.unsqueeze(-1), grad.unsqueeze(-1).to(grad_logits.dtype))
        return grad_logits, None


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
