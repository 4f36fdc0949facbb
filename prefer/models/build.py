"""Tokenizers and causal LMs: load any local HF tokenizer or model (prefer's own BPE is trained by
`prefer.data.tokenizer`), or build a GPT-2 from a named size.

Everything here produces and consumes plain Hugging Face objects, so a checkpoint written by `prefer`
loads with `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` and nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from prefer import checkpoint_record
from prefer.controls import CONTROL_TOKENS, END_OF_TEXT
from prefer.errors import PreferError
from prefer.models.sources import resolve_model_path

# Named GPT-2 sizes. `tiny` is for tests (< 1M parameters with a 2k vocabulary), `small` is the CPU default
# (a few M parameters: trains ~1M tokens in minutes on 2 cores), `gpt2-small` is GPT-2's 124M on a GPU.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, n_positions=128),
    "small": dict(n_layer=4, n_head=4, n_embd=128, n_positions=256),
    "medium-cpu": dict(n_layer=6, n_head=6, n_embd=384, n_positions=512),
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024),
}


def load_tokenizer(
    path: str | Path, *, field: str = "model.tokenizer", control_tokens: bool = False
) -> PreTrainedTokenizerFast:
    """Any local HF tokenizer (or a named source, `prefer.models.sources`); an end-of-text token is added if missing,
    and with `control_tokens` (conditional training and its evaluation only) `<|good|>` / `<|bad|>` too: a user's
    vocabulary, and so the model's embeddings, stay as they are otherwise. prefer's own tokenizers already hold both.
    `field`: the config field errors name."""
    path = resolve_model_path(path, field=field)
    if not path.exists():
        raise PreferError(f"{field}: {path} does not exist")
    if path.is_dir() and not any(
        (path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    ):
        raise PreferError(f"{field}: {path} holds no tokenizer (no tokenizer.json or tokenizer_config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as error:  # transformers raises many types here; the user needs the path and the cause
        raise PreferError(f"{field}: cannot load a tokenizer from {path}: {error}") from error
    if tokenizer.eos_token is None:
        tokenizer.add_special_tokens({"eos_token": END_OF_TEXT})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    missing = [token for token in CONTROL_TOKENS if token not in tokenizer.get_vocab()]
    if control_tokens and missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    return tokenizer


def check_same_vocabulary(policy_tokenizer, other_tokenizer, *, what: str) -> None:
    """PreferError unless two tokenizers map the same strings to the same ids: a reward model scores the policy's
    token ids, so a different vocabulary would silently score a different text. A pad token the other has beyond
    the policy's ids (a saved reward model's `<|pad|>`, prefer.models.reward_model) changes no id and is allowed."""
    ours, theirs = other_tokenizer.get_vocab(), policy_tokenizer.get_vocab()
    pad = getattr(other_tokenizer, "pad_token", None)
    if pad is not None and pad not in theirs and ours.get(pad, -1) >= len(theirs):
        ours = {token: i for token, i in ours.items() if token != pad}
    if ours == theirs:
        return
    only_ours = sorted(set(ours) - set(theirs))[:3]
    moved = sorted(t for t in set(ours) & set(theirs) if ours[t] != theirs[t])[:3]
    raise PreferError(
        f"{what}: its tokenizer differs from the policy's ({len(ours)} vs {len(theirs)} tokens; e.g. "
        f"only in {what}: {only_ours}, different ids: {moved}); train the reward model from the "
        "policy's (SFT) model"
    )


def build_model(size: str, *, vocab_size: int, eos_token_id: int, context: int | None = None, dropout: float = 0.0):
    """A freshly initialised GPT-2 of a named size."""
    if size not in MODEL_SIZES:
        raise PreferError(f"model.size: unknown size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    shape = dict(MODEL_SIZES[size])
    if context is not None:
        shape["n_positions"] = context
    dropouts = dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), dropout)
    config = GPT2Config(
        vocab_size=vocab_size, bos_token_id=eos_token_id, eos_token_id=eos_token_id, **dropouts, **shape
    )
    return GPT2LMHeadModel(config)


def check_causal_lm(path: str | Path, *, field: str = "model.init_from") -> None:
    """PreferError naming `field` when a model directory holds a sequence classifier (a reward model: its config's
    architectures end in ForSequenceClassification, or its prefer.json says stage reward) where a language model
    is meant: AutoModelForCausalLM would load its trunk without a word and start the LM head from nothing."""
    try:
        architectures = json.loads((Path(path) / "config.json").read_text()).get("architectures") or []
        record = checkpoint_record.read(path)
    except (OSError, ValueError, AttributeError, PreferError):
        return  # unreadable or not JSON: from_pretrained names the problem
    classifier = [a for a in architectures if isinstance(a, str) and a.endswith("ForSequenceClassification")]
    if classifier or record.is_reward_model:
        raise PreferError(
            f"{field}: {path} is a reward model ({classifier[0] if classifier else 'prefer.json: stage reward'}), "
            "not a language model; give the SFT or pretrained model (a reward model is named as a scorer: rm:DIR)"
        )


def check_model_dir(path: str | Path, *, field: str = "model.init_from", causal_lm: bool = False) -> None:
    """PreferError naming `field` unless `path` is a Hugging Face model directory (cheap: before any data work; a
    named source is converted here, once)."""
    path = resolve_model_path(path, field=field)
    if not Path(path).is_dir():
        raise PreferError(f"{field}: {path} is not a directory")
    if not (Path(path) / "config.json").is_file():
        raise PreferError(f"{field}: {path} is not a Hugging Face model directory (no config.json)")
    if causal_lm:  # a language model is meant, not a reward model
        check_causal_lm(path, field=field)


def load_model(path: str | Path, *, tokenizer=None, field: str = "model.init_from"):
    """Any local `from_pretrained` causal LM (or a named source, `prefer.models.sources`). With a tokenizer that has
    more tokens than the model (new control tokens), the embeddings grow and the new rows start at the mean of the
    existing ones (Korbak et al. 2023)."""
    path = resolve_model_path(path, field=field)
    if not (path / "config.json").exists():
        raise PreferError(f"model.init_from: {path} is not a Hugging Face model directory (no config.json)")
    check_causal_lm(path, field=field)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path))
    except Exception as error:
        raise PreferError(f"model.init_from: cannot load a causal LM from {path}: {error}") from error
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        grow_embeddings(model, len(tokenizer))
    return model


@torch.no_grad()
def grow_embeddings(model, new_size: int) -> None:
    """Resize the token embeddings to `new_size`, new rows at the mean of the old ones."""
    old = model.get_input_embeddings().weight
    old_size = old.shape[0]
    mean = old.mean(dim=0)
    model.resize_token_embeddings(new_size, mean_resizing=False)
    model.get_input_embeddings().weight[old_size:] = mean
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        output.weight[old_size:] = output.weight[:old_size].mean(dim=0)


@torch.no_grad()
def reset_control_embeddings(model, tokenizer) -> None:
    """Put the control tokens' embedding rows at the mean of the other rows. A model pretrained without tags never
    saw them as inputs, and (GPT-2 ties input and output embeddings) MLE pushed their logits down at every step;
    conditional training from such a model starts them where new tokens start (Korbak et al. 2023)."""
    missing = [token for token in CONTROL_TOKENS if token not in tokenizer.get_vocab()]
    if missing:  # convert_tokens_to_ids would give the unknown token's id, whose row would be overwritten
        raise PreferError(
            f"model: the tokenizer has no {missing}; load it with load_tokenizer(..., control_tokens=True)"
        )
    ids = [tokenizer.convert_tokens_to_ids(token) for token in CONTROL_TOKENS]
    weight = model.get_input_embeddings().weight
    keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    keep[ids] = False
    weight[ids] = weight[keep].mean(dim=0)
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != weight.data_ptr():
        output.weight[ids] = output.weight[keep].mean(dim=0)


def read_info(path: str | Path) -> dict:
    """What prefer recorded about a model directory (`prefer.json`: task, objective, tokens, ...); {} for a model
    prefer did not write (prefer.checkpoint_record, as a dict)."""
    return checkpoint_record.read(path).as_dict()


def inherited_info(path: str | Path) -> dict:
    """The part of a starting model's prefer.json that a model finetuned from it carries on."""
    return checkpoint_record.read(path).inherited()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def context_length(model) -> int:
    """Positions the model can read (GPT-2's n_positions, most others' max_position_embeddings)."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise PreferError(f"model: {type(model).__name__} has no n_positions / max_position_embeddings in its config")


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Every dropout of a loaded model at `p` (the paper's SFT uses 0.2), recorded in its saved config too."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout", "attention_dropout", "dropout"):
        if isinstance(getattr(model.config, name, None), float):
            setattr(model.config, name, p)


def load_checkpoint(path: str | Path, device) -> tuple[torch.nn.Module, object, dict]:
    """A model directory (ours or any HF causal LM, or a named source), its tokenizer, and what prefer recorded about
    it. The tokenizer is the directory's own: a model trained with control tokens saved them with it."""
    path = resolve_model_path(path, field="checkpoint")
    if not path.is_dir():
        raise PreferError(f"checkpoint: {path} is not a directory")
    if not (path / "config.json").is_file():  # before the tokenizer, whose error would not say what is wrong
        hint = f"; it is a run directory: pass {path / 'final'}" if (path / "final" / "config.json").is_file() else ""
        raise PreferError(f"checkpoint: {path} is not a model directory (no config.json){hint}")
    check_causal_lm(path, field="checkpoint")  # before the tokenizer loads
    tokenizer = load_tokenizer(path, field="checkpoint")
    model = load_model(path, tokenizer=tokenizer, field="checkpoint").to(device).eval()
    return model, tokenizer, read_info(path)
