"""The InstructGPT reward model: a causal LM's trunk + a scalar head, read at the last real token.

On disk (`RewardModel.save`, docs/reward-models.md) it is a plain Hugging Face `AutoModelForSequenceClassification`
(num_labels=1) directory that plain transformers reads the way prefer does: its pad token is not eos (HF reads the
head at the rightmost non-pad token, which must be the final eos), its tokenizer adds prefer's document tokens
(eos + text + eos), and where the architecture allows it the bias sits in the weights. `prefer.json` beside it holds
`reward_bias` and how to read the directory back exactly as it was trained (`load_reward_model`).

Our code never uses HF's pooling: it takes the head's per-position scores and reads them at
`last_token_index(attention_mask)`. Every (prompt, response) pair becomes tokens as in SFT, the labelers and PPO
(`prefer.encoding`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from prefer import checkpoint_record
from prefer.devices import is_main_process
from prefer.encoding import encode_example, fit_to_context
from prefer.errors import PreferError
from prefer.files import atomic_path
from prefer.models.build import check_same_vocabulary, context_length, load_tokenizer
from prefer.models.saving import save_model
from prefer.models.sources import resolve_model_path
from prefer.objectives import last_token_index

TextOrPair = str | tuple[str, str]

PAD_TOKEN = "<|pad|>"  # added to a tokenizer whose pad is eos, so that HF's pooling finds the final eos
UNFOLDED = "prefer_unfolded.safetensors"  # the weights the bias was folded into, as trained (prefer reads these)
PROBES: tuple[TextOrPair, ...] = ("The reward model reads this.", ("A prompt:", " and its response."))


def right_pad(sequences: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] int64 and attention mask [B, T] bool (True = real token)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = True
    return ids, mask


class RewardModel(nn.Module):
    """r(x, y) = head(trunk(eos + prompt + response + eos))[last real token] + bias.

    model: an HF `...ForSequenceClassification` with num_labels=1 (trunk = `base_model`, head = `score`).
    bias:  a constant added to every reward (set after training so that the demonstrations score a mean of 0).
    """

    def __init__(self, model, tokenizer, *, bias: float = 0.0, path: str | Path | None = None):
        super().__init__()
        if getattr(model, "score", None) is None:
            raise PreferError(
                f"reward model: {type(model).__name__} has no `score` head; only HF sequence "
                "classifiers with a `score` linear layer are supported"
            )
        self.model, self.tokenizer, self.bias, self.path = model, tokenizer, float(bias), path
        self.context = context_length(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T], attention_mask [B, T] bool -> rewards [B] float32.

        Positions count real tokens only, so a row scores the same alone, right-padded (our batches) or
        left-padded (e.g. PPO rollouts: left-padded prompts followed by their responses)."""
        return raw_rewards(self.model, input_ids, attention_mask) + self.bias

    def encode(self, items: Sequence[TextOrPair], *, where: Sequence[str] | None = None) -> list[list[int]]:
        """Token ids of each text (text + eos) or (prompt, response) pair, cut to the context."""
        encoded = []
        for i, item in enumerate(items):
            prompt, response = (item, None) if isinstance(item, str) else item
            ids, prompt_length = encode_example(self.tokenizer, prompt, response)
            encoded.append(
                fit_to_context(ids, prompt_length, self.context, where=where[i] if where is not None else f"item {i}")
            )
        return encoded

    def rewards(self, items: Sequence[TextOrPair], *, batch_size: int = 32) -> torch.Tensor:
        """Rewards [B] (on the CPU) of texts or (prompt, response) pairs, in eval mode (dropout off)."""
        return self.rewards_of_ids(self.encode(items), batch_size=batch_size)

    @torch.no_grad()
    def rewards_of_ids(self, encoded: Sequence[list[int]], *, batch_size: int = 32) -> torch.Tensor:
        """Rewards [B] (on the CPU) of sequences already encoded (e.g. a chat rendering), in eval mode, in the order
        given. The sequences are batched longest first, so that each batch pads to lengths close to its own: 1.27-1.35x
        the responses/s of batches in arrival order on SmolLM2 (bench/rm_scoring_real.py). A row's reward depends on its
        batch only through float rounding (positions count real tokens, the padding is masked)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        rewards = torch.zeros(len(encoded))
        try:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                ids, mask = right_pad([encoded[i] for i in rows], self.tokenizer.pad_token_id)
                rewards[rows] = self(ids.to(device), mask.to(device)).cpu()
        finally:
            self.train(was_training)
        return rewards

    def check_same_tokenizer(self, policy_tokenizer) -> None:
        """PreferError unless the policy's vocabulary is the reward model's (its added `<|pad|>` aside): PPO hands it
        token ids."""
        check_same_vocabulary(policy_tokenizer, self.tokenizer, what=f"reward model {self.path or ''}".strip())

    def save(self, path: str | Path, info: dict) -> None:
        """The one place the saved format is decided (docs/reward-models.md): an HF sequence-classifier directory
        that plain transformers scores as prefer does (`export_for_transformers`), + prefer.json with `reward_bias`.
        A collective under torchrun (call it on every rank); rank 0 writes. The model in memory is not changed."""
        path = Path(path)
        plain = path.with_name(f".{path.name}.plain")
        save_model(plain, self.model, self.tokenizer, None, {**info, "reward_bias": self.bias})
        if is_main_process():
            try:
                export_for_transformers(plain, path)
            finally:
                shutil.rmtree(plain, ignore_errors=True)


def raw_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The score head of an HF sequence classifier read at the last real token of each row (no bias) -> [B] float32;
    position ids count real tokens only."""
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    hidden = model.base_model(
        input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids
    ).last_hidden_state
    scores = model.score(hidden).squeeze(-1).float()  # [B, T]: a reward for every prefix
    last = last_token_index(attention_mask)  # [B]: the eos (or the truncated sequence's last token)
    return scores[torch.arange(len(scores), device=scores.device), last]


# ------------------------------------------------------------------ the saved format: plain transformers reads it


def final_norm(model, input_ids: torch.Tensor) -> tuple[str, nn.Module] | None:
    """(name, module) of the last module with weights whose output is the trunk's last hidden state (the final
    LayerNorm / RMSNorm), found by running the trunk once; None if there is none."""
    calls: list[tuple[nn.Module, object]] = []
    modules = {id(module): name for name, module in model.named_modules()}
    hooks = [
        module.register_forward_hook(lambda module, _, output: calls.append((module, output)))
        for module in model.base_model.modules()
        if module is not model.base_model and any(True for _ in module.parameters(recurse=False))
    ]
    try:
        with torch.no_grad():
            hidden = model.base_model(input_ids=input_ids).last_hidden_state
    finally:
        for hook in hooks:
            hook.remove()
    for module, output in reversed(calls):
        if isinstance(output, torch.Tensor) and output.shape == hidden.shape and torch.equal(output, hidden):
            return modules[id(module)], module
    return None


def _hf_scores(model, tokenizer, items: Sequence[TextOrPair]) -> torch.Tensor:
    """What a plain transformers user gets: the tokenizer's own encoding (texts, then pairs), right-padded, HF's own
    pooling -> [B] in the order of `items`."""
    texts = [i for i, item in enumerate(items) if isinstance(item, str)]
    pairs = [i for i, item in enumerate(items) if not isinstance(item, str)]
    scores = torch.zeros(len(items))
    for rows, arguments in (
        (texts, ([items[i] for i in texts],)),
        (pairs, ([items[i][0] for i in pairs], [items[i][1] for i in pairs])),
    ):
        if rows:
            with torch.no_grad():
                batch = tokenizer(*arguments, padding=True, return_tensors="pt")
                scores[rows] = model(**batch).logits[:, 0].float()
    return scores


def export_for_transformers(plain: str | Path, out: str | Path) -> dict:
    """Write to `out` the reward model at `plain` (an HF classifier directory whose prefer.json holds
    `reward_bias`, as `save_model` writes it) so that plain transformers reads prefer's reward:

    - pad token: HF reads the head at the rightmost token that is not `config.pad_token_id`; with pad = eos that is
      the token before the final eos. A tokenizer whose pad is eos gets `<|pad|>` (one zero embedding row if the
      matrix has no spare one), a token that never comes out of a text; config and tokenizer name it; the
      tokenizer pads on the right.
    - the tokenizer adds prefer's document tokens (eos + text + eos, and eos + prompt + response + eos for a text
      pair) and returns no token_type_ids (GPT-2 would add their embeddings).
    - the bias: folded into the bias of the final norm when it has one (LayerNorm: GPT-2, GPT-NeoX, OPT, Phi):
      w . (norm(x) + b w / |w|^2) = w . norm(x) + b. An RMSNorm has no bias and HF's score head none either, so
      there (Llama, Qwen2, Mistral, Gemma) plain transformers gives reward - reward_bias: `config.reward_offset`
      holds what to add (0 when folded). The tensors as trained stay in `prefer_unfolded.safetensors`.

    Checks the result on `PROBES` through the saved files; returns prefer.json's `transformers` record."""
    from safetensors.torch import save_file
    from tokenizers.processors import TemplateProcessing

    plain, out = Path(plain), Path(out)
    info = checkpoint_record.read(plain).as_dict()
    bias = float(info["reward_bias"])
    tokenizer = AutoTokenizer.from_pretrained(str(plain))
    model = AutoModelForSequenceClassification.from_pretrained(str(plain), num_labels=1, dtype="auto").eval()
    # prefer's reward of the probes, from the weights as trained
    prefer_view = RewardModel(model, load_tokenizer(plain), bias=bias)
    expected = prefer_view.rewards(PROBES)

    eos, trained_pad = tokenizer.eos_token_id, model.config.pad_token_id
    added = None
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == eos:
        if PAD_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
            added = PAD_TOKEN
        else:
            tokenizer.pad_token = PAD_TOKEN
    pad = tokenizer.pad_token_id
    rows = model.get_input_embeddings().weight.shape[0]
    if pad >= rows:
        model.resize_token_embeddings(pad + 1, mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[rows:] = 0
    model.config.pad_token_id = pad
    tokenizer.padding_side = "right"
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    document = tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{document} $A {document}", pair=f"{document} $A $B {document}", special_tokens=[(document, eos)]
    )

    unfolded: dict[str, torch.Tensor] = {}
    found = final_norm(model, torch.tensor([prefer_view.encode(PROBES[:1])[0]]))
    norm_bias = getattr(found[1], "bias", None) if found else None
    w = model.score.weight[0].detach().double()
    if bias != 0 and isinstance(norm_bias, nn.Parameter) and norm_bias.shape == w.shape and float(w @ w) > 0:
        unfolded[f"{found[0]}.bias"] = norm_bias.detach().clone()
        with torch.no_grad():
            norm_bias += (bias * w / (w @ w)).to(norm_bias.dtype)
    model.config.problem_type = "regression"  # a pipeline's default function_to_apply is then "none"
    model.config.id2label, model.config.label2id = {0: "reward"}, {"reward": 0}

    with atomic_path(out) as tmp:
        folded = bool(unfolded)
        for _ in range(2):  # the second pass only if folding did not give the reward (it is then left out)
            model.config.reward_offset = 0.0 if folded else bias
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            got = _hf_scores(
                AutoModelForSequenceClassification.from_pretrained(str(tmp)).eval(),
                AutoTokenizer.from_pretrained(str(tmp)),
                PROBES,
            )
            error = float((got + model.config.reward_offset - expected).abs().max())
            if not folded or error <= 1e-4 * max(1.0, abs(bias)):
                break
            with torch.no_grad():  # undo the fold
                dict(model.named_parameters())[next(iter(unfolded))].copy_(next(iter(unfolded.values())))
            unfolded, folded = {}, False
        if unfolded:
            save_file({k: v.contiguous() for k, v in unfolded.items()}, tmp / UNFOLDED)
        record = {
            "pad_token": tokenizer.pad_token,
            "added_pad_token": added,
            "trained_pad_token_id": trained_pad,
            "bias_in_weights": next(iter(unfolded), None),
            "reward_offset": model.config.reward_offset,
            "max_probe_error": error,
        }
        checkpoint_record.write(tmp, {**info, "transformers": record})
    return record


# ------------------------------------------------------------------ building and loading


def build_reward_model(causal_lm: str | Path) -> RewardModel:
    """A reward model whose trunk is the causal LM at `causal_lm` (a directory or a named source) and whose scalar
    head is freshly initialised."""
    path = resolve_model_path(causal_lm)
    if not (path / "config.json").exists():
        raise PreferError(f"model.init_from: {path} is not a Hugging Face model directory (no config.json)")
    if "transformers" in checkpoint_record.read(path):
        raise PreferError(
            f"model.init_from: {path} is a reward model written by `prefer reward`; start from the SFT model"
        )
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    except Exception as error:  # transformers raises many types; the user needs the path and the cause
        raise PreferError(f"model.init_from: cannot build a reward model from {path}: {error}") from error
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise PreferError(
            f"model.init_from: {path}: the tokenizer has {len(tokenizer)} tokens but the model only "
            f"{model.get_input_embeddings().weight.shape[0]} embeddings; finetune it first (prefer sft)"
        )
    model.config.pad_token_id = tokenizer.pad_token_id  # HF's own pooling needs one; ours does not read it
    return RewardModel(model, tokenizer, path=path)


def _check_is_classifier(path: Path, field: str) -> None:
    """PreferError when `path` holds a language model (its config names a causal LM) where a reward model is meant."""
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return  # from_pretrained names the problem
    names = [a for a in architectures if isinstance(a, str)]
    if names and not any(a.endswith("ForSequenceClassification") for a in names):
        raise PreferError(
            f"{field}: {path} is a language model ({names[0]}), not a reward model; train one with `prefer reward`"
        )


def load_reward_classifier(path: str | Path, *, field: str = "reward model"):
    """(HF sequence classifier, reward_bias, prefer.json) of a reward-model directory, its weights as prefer trained
    them: for a directory in the saved format (`export_for_transformers`) the folded tensors are put back and the
    embedding's padding_idx is the one it had (padding_idx only stops that row's gradient; a critic trained from the
    reward model trains as before). A directory without prefer.json (an HF classifier) has bias 0."""
    path = Path(path)
    _check_is_classifier(path, field)
    info = checkpoint_record.read(path).as_dict()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    except Exception as error:  # transformers raises many types; the user needs the path and the cause
        raise PreferError(f"{field}: cannot load a reward model from {path}: {error}") from error
    record = info.get("transformers")
    if record:
        if record.get("bias_in_weights"):
            from safetensors.torch import load_file

            parameters = dict(model.named_parameters())
            with torch.no_grad():
                for name, tensor in load_file(str(path / UNFOLDED)).items():
                    parameters[name].copy_(tensor)
        embeddings = model.get_input_embeddings()
        if getattr(embeddings, "padding_idx", None) is not None:
            embeddings.padding_idx = record.get("trained_pad_token_id")
    return model, float(info.get("reward_bias", 0.0)), info


def load_reward_model(path: str | Path, device: torch.device | str = "cpu") -> RewardModel:
    """A reward model written by `prefer reward` (bias from prefer.json), in eval mode on `device`; it scores
    exactly as the model that was saved (the format of before this one too: pad = eos, no `transformers` record)."""
    path = Path(path)
    info_path = checkpoint_record.path_of(path)
    if (path / "config.json").exists():
        _check_is_classifier(path, "reward model")
    if not (path / "config.json").exists() or not info_path.exists():
        raise PreferError(f"reward model: {path} is not a reward model directory (needs config.json and prefer.json)")
    if "reward_bias" not in checkpoint_record.read(path):
        raise PreferError(f"{info_path}: no 'reward_bias'; is {path} a reward model written by `prefer reward`?")
    model, bias, _ = load_reward_classifier(path)
    reward_model = RewardModel(model, load_tokenizer(path), bias=bias, path=path)
    return reward_model.to(device).eval()
