"""LoRA through `peft`: adapters injected into a plain Hugging Face model, so every stage keeps handling the model
it loaded (same class, same `base_model`, same `score` head), and every forward pass goes through the adapters.

    apply_lora(model, config)      adapters on the architecture's projections; everything else frozen
    disabled_adapters(model)       the frozen model the adapters started from (the RL and DPO reference: one trunk)
    merged_state_dict(model)       the weights with the adapters folded in: what `final/` holds (a plain HF model)
    adapter_state_dict(model)      the trainable tensors only: what a resumable checkpoint holds
    save_adapter / load_adapter    a peft adapter directory (adapter_config.json + adapter_model.safetensors)

The adapters are vanilla LoRA (Hu et al. 2021): W x + (alpha / r) B A x, B initialised at zero, so a wrapped model
starts as the model it wraps.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from prefer.config import LoRAConfig
from prefer.errors import PreferError
from prefer.models.sources import resolve_model_path

ADAPTER = "default"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # how PeftModel names the tensors of the model it wraps

# Every projection of attention and MLP (QLoRA, Dettmers et al. 2023: adapting all linear layers matters more than
# the rank); model_type -> module names. Unknown architectures: peft's "all-linear" (every linear but the output).
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    **{
        name: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        for name in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "qwen2_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "phi3",
        )
    },
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # Conv1D layers (weights stored transposed: peft's fan_in_fan_out)
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


def target_modules(model: nn.Module, config: LoRAConfig) -> list[str] | str:
    if config.target_modules is not None:
        return list(config.target_modules)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return DEFAULT_TARGET_MODULES.get(model_type, "all-linear")


def is_lora(model: nn.Module) -> bool:
    """Whether adapters were injected into the model (or a module inside it)."""
    return any(_is_lora_layer(module) for module in model.modules())


def _is_lora_layer(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def apply_lora(model: nn.Module, config: LoRAConfig, *, trainable: tuple[str, ...] = ()) -> nn.Module:
    """Inject adapters into `model` in place (returned for chaining); only the adapters and the modules named in
    `trainable` (a reward model's `score` head) stay trainable. A `trainable` module is trained whole, as peft's
    `modules_to_save` would, and saved with the adapters."""
    from peft import LoraConfig, inject_adapter_in_model

    width = getattr(getattr(model, "config", None), "hidden_size", None)
    if isinstance(width, int) and config.r > width:  # a rank above the width adds nothing but memory and time
        raise PreferError(f"config: lora.r: {config.r} is larger than the model's width ({width}); choose r <= {width}")
    targets = target_modules(model, config)
    fan_in_fan_out = getattr(getattr(model, "config", None), "model_type", None) == "gpt2"
    peft_config = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
    )
    try:
        inject_adapter_in_model(peft_config, model, adapter_name=ADAPTER)
    except ValueError as error:  # peft: no module matched the names
        raise PreferError(
            f"config: lora.target_modules: {targets} do not fit {type(model).__name__}: {str(error).splitlines()[0]}"
        ) from None
    for name in trainable:
        getattr(model, name).requires_grad_(True)
    model._prefer_lora_trainable = tuple(trainable)  # noqa: SLF001 (recorded for adapter_state_dict)
    return model


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """HF gradient checkpointing (non-reentrant), for every stage that trains in train mode. With frozen embeddings
    (LoRA) the blocks' inputs do not require grad; `enable_input_require_grads` makes them, which reentrant
    checkpointing (a model may force it) needs to give the adapters a gradient."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise PreferError(f"runtime.gradient_checkpointing: {type(model).__name__} does not support it")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 (the old name is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if is_lora(model):
        model.enable_input_require_grads()


@contextlib.contextmanager
def disabled_adapters(model: nn.Module):
    """Inside, the model computes exactly the frozen model it wraps (each LoRA layer returns its base layer's
    output). peft's toggle also freezes the adapters; they are made trainable again on exit."""
    layers = [module for module in model.modules() if _is_lora_layer(module)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for parameter in trainable:
            parameter.requires_grad_(True)


class FrozenView(nn.Module):
    """The model a LoRA-wrapped model started from, as a module of its own: the frozen reference of PPO, GRPO and
    DPO on the policy's trunk. It holds no weights of its own (the policy is kept outside the module tree), never
    builds a graph and always runs in eval mode (no dropout), whatever mode the policy is training in."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._wrapped = [model]  # a list: not a submodule, so .to() / .parameters() / DDP never see it twice

    @property
    def config(self):
        return self._wrapped[0].config

    def forward(self, *args, **kwargs):
        model = self._wrapped[0]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), disabled_adapters(model):
                return model(*args, **kwargs)
        finally:
            model.train(was_training)


def model_source(init_from: str | Path, checkpoint: Path | None, config: LoRAConfig) -> Path:
    """Where a stage loads its model's weights: the checkpoint being resumed (full finetuning), else `init_from`
    (LoRA: a checkpoint holds the adapters only; `prepare` loads them on top). A named source (`smollm2-135m-instruct`,
    `gguf:...`) resolves to its converted directory."""
    if checkpoint is not None and not config.enabled:
        return checkpoint / "model"
    return resolve_model_path(init_from)


def prepare(
    model: nn.Module,
    config: LoRAConfig,
    *,
    checkpoint: Path | None = None,
    gradient_checkpointing: bool = False,
    trainable: tuple[str, ...] = (),
) -> nn.Module:
    """A stage's loaded model made ready to train: adapters when `config.r > 0` (their state from `checkpoint` when
    resuming), gradient checkpointing when asked. The same object is returned."""
    if config.enabled:
        apply_lora(model, config, trainable=trainable)
        if checkpoint is not None:
            load_adapter(model, checkpoint / "model")
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


# ------------------------------------------------------------------ saving and loading


def _lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules() if _is_lora_layer(module)}


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the plain model with every adapter folded into its base weight, W + (alpha / r) B A, named
    as in the model before injection; the model itself is not changed (peft's merge_and_unload would mutate it)."""
    layers = _lora_modules(model)
    merged: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        owner = next((name for name in layers if key.startswith(name + ".")), None)
        if owner is None:
            merged[key] = value
            continue
        rest = key[len(owner) + 1 :]
        if rest.startswith("base_layer."):
            merged[f"{owner}.{rest.removeprefix('base_layer.')}"] = value
    for name, layer in layers.items():
        base = layer.get_base_layer()
        merged[f"{name}.weight"] = base.weight + layer.get_delta_weight(ADAPTER).to(base.weight.dtype)
    return merged


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters (peft's names: `...q_proj.lora_A.weight`) and the trainable heads, prefixed as PeftModel saves
    them, so `PeftModel.from_pretrained(base, directory)` loads the adapters. Embeddings resized since loading (added
    tokens) are part of it, as peft decides; a tied output embedding is kept once, under the input embedding's name
    (safetensors refuses two names for one storage; loading it fills both)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    full = model.state_dict()
    for name in getattr(model, "_prefer_lora_trainable", ()):
        state.update({key: value for key, value in full.items() if key.startswith(name + ".")})
    first = _first_names(model)
    return {
        PEFT_PREFIX + key: value.detach().contiguous()
        for key, value in state.items()
        if first.get(key, key) == key or first[key] not in state
    }


def _first_names(model: nn.Module) -> dict[str, str]:
    """Each parameter name -> the first name of the same parameter (tied weights: lm_head.weight -> the input
    embedding's name)."""
    groups: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(parameter), []).append(name)
    return {name: group[0] for group in groups.values() for name in group}


def save_adapter(model: nn.Module, path: Path) -> None:
    """A peft adapter directory: adapter_config.json + adapter_model.safetensors (trainable tensors only)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    config = model.peft_config[ADAPTER]
    config.base_model_name_or_path = getattr(model, "name_or_path", None)
    config.save_pretrained(str(path))
    save_file(adapter_state_dict(model), str(path / ADAPTER_WEIGHTS))


def load_adapter(model: nn.Module, path: Path) -> None:
    """Adapters (and trainable heads) from a directory `save_adapter` wrote, into a model `apply_lora` wrapped the
    same way. Every tensor must find its place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = Path(path) / ADAPTER_WEIGHTS
    if not file.is_file():
        raise PreferError(f"{path}: no {ADAPTER_WEIGHTS}; this checkpoint was not written with LoRA (lora.r>0)")
    state = {key.removeprefix(PEFT_PREFIX): value for key, value in load_file(str(file)).items()}
    heads = tuple(getattr(model, "_prefer_lora_trainable", ()))
    head_state = {k: v for k, v in state.items() if k.startswith(tuple(name + "." for name in heads))}
    result = set_peft_model_state_dict(
        model, {k: v for k, v in state.items() if k not in head_state}, adapter_name=ADAPTER
    )
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise PreferError(f"{file}: tensors that fit no adapter of the model: {unexpected[:3]}")
    if head_state:
        model.load_state_dict(head_state, strict=False)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
