"""The torch side of the labeling app's generation job (`prefer.labeling.app.jobs`): load a checkpoint, sample a
batch of responses. The app's import contract (pyproject.toml) forbids torch and transformers anywhere in
`prefer.labeling.app` and allows exactly one import across that line, the job's import of this module, made in the
job's thread when an admin asks for responses; so `prefer serve` starts, and serves labelers, without torch."""

from __future__ import annotations

import torch

from prefer.devices import resolve_device
from prefer.encoding import has_chat_template
from prefer.errors import PreferError
from prefer.labeling import responses
from prefer.models.build import load_checkpoint


def load(checkpoint: str, device: str):
    """(model, tokenizer) of a checkpoint on `device`; a PreferError names the checkpoint."""
    try:
        model, tokenizer, _ = load_checkpoint(checkpoint, resolve_device(device))
    except PreferError as error:
        message = str(error)
        raise PreferError(message if message.startswith("checkpoint") else f"checkpoint: {message}") from None
    return model, tokenizer


def chat_template(tokenizer) -> bool:
    """Whether the checkpoint's prompts are rendered with its chat template (`prefer.labeling.responses`)."""
    return has_chat_template(tokenizer)


def sample_batch(
    model, tokenizer, prompts: list[str], settings: dict, *, seed: int
) -> tuple[list[list[str]], dict[str, str]]:
    """(settings["num_responses"] responses to each prompt, in inference mode; prompt -> the text the model was
    prompted with). With a chat template each prompt is asked as one user turn with the generation prompt
    (`prefer.labeling.responses.text_queries`) and that rendering is returned, which the export writes as the prompt
    (as `prefer label --synthetic` does), so the reward model and DPO read what the policy saw; without one the
    prompt itself was the text and the mapping is empty."""
    queries = responses.text_queries(tokenizer, prompts)
    with torch.inference_mode():
        samples = responses.sample_queries(
            model,
            tokenizer,
            queries,
            k=settings["num_responses"],
            max_new_tokens=settings["max_new_tokens"],
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            block=settings["block"],
            seed=seed,
        )
    return samples, (dict(zip(prompts, queries.texts)) if has_chat_template(tokenizer) else {})
