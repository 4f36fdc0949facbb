"""A model directory as Hugging Face writes it (safetensors + tokenizer + prefer.json), gathered from FSDP2 shards
and with LoRA adapters merged where asked: what a finished stage saves (`save_model`) and what each checkpoint of
`prefer.training.checkpoints` holds, written by the same code, so that reward models and scorers save without
importing the training loop."""

from __future__ import annotations

from pathlib import Path

import torch

from prefer import checkpoint_record
from prefer.devices import is_main_process, is_sharded, unwrap
from prefer.files import atomic_path


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's whole state dict. FSDP2: a collective (call it on every rank) that gathers the shards onto
    rank 0's CPU; the other ranks get {}. Otherwise: its state dict as it is."""
    module = unwrap(module)
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Gathered copies no longer share storage, so tied weights (GPT-2's lm_head = wte) would be written twice:
    # keep each parameter under its first name only, as a single-process save_pretrained does.
    names: dict[int, list[str]] = {}
    for name, parameter in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    tied = {name for group in names.values() for name in group[1:]}
    return {key: value for key, value in state.items() if key not in tied}


def write_model(
    path: Path,
    model: torch.nn.Module,
    tokenizer,
    state: dict[str, torch.Tensor] | None,
    extra: dict[str, dict[str, torch.Tensor]],
    info: dict | None,
    *,
    merge: bool = True,
) -> None:
    """An HF model directory. A LoRA model is written with its adapters merged into the weights (`merge`: a plain
    HF model), or as a peft adapter directory (checkpoints: the trainable tensors only)."""
    from safetensors.torch import save_file

    module = unwrap(model)
    if hasattr(module, "peft_config"):  # LoRA (prefer.models.lora): merged weights, or the adapters alone
        from prefer.models.lora import merged_state_dict, save_adapter

        if merge:
            module.save_pretrained(path, state_dict=merged_state_dict(module))
        else:
            save_adapter(module, path)
    else:
        # a gathered state dict (FSDP2) replaces the model's own shards; save_pretrained edits the dict it is given
        module.save_pretrained(path, **({"state_dict": dict(state)} if state is not None else {}))
    tokenizer.save_pretrained(path)
    for name, tensors in extra.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, path / f"{name}.safetensors")
    if info is not None:
        checkpoint_record.write(path, info)


def gather_model(
    model: torch.nn.Module, extra: dict[str, torch.nn.Module] | None
) -> tuple[dict[str, torch.Tensor] | None, dict[str, dict[str, torch.Tensor]]]:
    state = full_state_dict(model) if is_sharded(model) else None
    return state, {name: full_state_dict(module) for name, module in (extra or {}).items()}


def save_model(
    path: Path,
    model: torch.nn.Module,
    tokenizer,
    extra: dict[str, torch.nn.Module] | None = None,
    info: dict | None = None,
) -> None:
    """A Hugging Face model directory (safetensors + tokenizer), written atomically; LoRA adapters are merged into
    the weights, so `AutoModelForCausalLM.from_pretrained` loads it without peft. `extra` modules (e.g. a value
    head) go beside it as `<name>.safetensors`; `info` as prefer.json (task, objective, control-token usage).
    Under torchrun only rank 0 writes; with FSDP2 it is a collective (shards are gathered): call it on every rank."""
    state, extra_states = gather_model(model, extra)
    if not is_main_process():
        return
    with atomic_path(path) as tmp:
        write_model(tmp, model, tokenizer, state, extra_states, info)
