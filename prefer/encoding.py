"""How a (prompt, response) pair becomes tokens, the same way in SFT, the reward model, the labelers, PPO and
evaluation: the document-start token (eos, as before every pretraining document and every evaluation sample),
prompt tokens, response tokens, eos; prompt and response are tokenized separately so that the split between them
is exact."""

from __future__ import annotations

from prefer.errors import PreferError


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """The document-start token (eos) + the prompt's tokens: what a policy is prompted with."""
    return [tokenizer.eos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, prompt: str, response: str | None = None) -> tuple[list[int], int]:
    """(encode_prompt(prompt) + response tokens + eos, number of prompt tokens including the document start).
    With no response, `prompt` is a whole text: document start + its tokens + eos, and the prompt length is 1."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    if response is None:
        return prompt_ids + [tokenizer.eos_token_id], 1
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return prompt_ids + response_ids + [tokenizer.eos_token_id], len(prompt_ids)


def fit_to_context(ids: list[int], prompt_length: int, context: int, *, where: str) -> list[int]:
    """Cut a sequence to `context` tokens (the response's tail goes). A prompt that leaves no room for a single
    response token is an error: a prompt longer than the context."""
    if prompt_length + 1 > context:
        raise PreferError(
            f"{where}: the prompt is {prompt_length} tokens; with a response it exceeds the "
            f"model's context of {context} tokens"
        )
    return ids[:context]


# ------------------------------------------------------------------ conversations ({"messages": [...]})


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer, messages, *, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def encode_conversation(tokenizer, messages, *, where: str = "conversation") -> tuple[list[int], list[bool]]:
    """(token ids, loss mask) of a conversation: the mask is True on the tokens of every assistant turn (its content
    and what the template closes the turn with, e.g. `<|im_end|>`), False on everything else.

    With a chat template the ids are exactly `tokenizer.apply_chat_template(messages)`'s; each assistant turn is the
    text between the rendering of the messages before it (with the generation prompt, so the `assistant` header is
    not trained on) and the rendering up to and including it; a token is trained on when it starts inside a turn.
    Without a template, plainly, as prefer's (prompt, response) pairs: eos (document start), then each message as
    `Role: content` on its own line, an assistant turn's content and its eos in the loss."""
    if not has_chat_template(tokenizer):
        return _encode_plain_conversation(tokenizer, messages)
    text = _render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = _render(tokenizer, messages[: i + 1])
        if not (text.startswith(upto) and upto.startswith(start)):
            raise PreferError(
                f"{where}: the tokenizer's chat template does not render the conversation turn by turn "
                "(a rendering of the first turns is not a prefix of the whole); cannot find the "
                "assistant turns to train on"
            )
        spans.append((len(start), len(upto)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [
        any(begin <= offset[0] < end for begin, end in spans) and offset[1] > offset[0]
        for offset in encoded["offset_mapping"]
    ]
    return list(encoded["input_ids"]), mask


def _encode_plain_conversation(tokenizer, messages) -> tuple[list[int], list[bool]]:
    eos = tokenizer.eos_token_id
    ids, mask = [eos], [False]
    for message in messages:
        header = tokenizer(f"{message['role'].capitalize()}: ", add_special_tokens=False)["input_ids"]
        content = tokenizer(message["content"], add_special_tokens=False)["input_ids"]
        if message["role"] == "assistant":
            ids += header + content + [eos]
            mask += [False] * len(header) + [True] * (len(content) + 1)
        else:
            newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
            ids += header + content + newline
            mask += [False] * (len(header) + len(content) + len(newline))
    return ids, mask


def encode_sft_example(tokenizer, example, *, context: int, where: str) -> tuple[list[int], list[bool]]:
    """(ids, loss mask) of one SFT example cut to `context`: a (prompt, response) demonstration (the loss on the
    response and its eos) or a conversation (the loss on the assistant turns)."""
    messages = getattr(example, "messages", None)
    if messages is None:
        ids, prompt_length = encode_example(tokenizer, example.prompt, example.response)
        ids = fit_to_context(ids, prompt_length, context, where=where)
        return ids, [False] * prompt_length + [True] * (len(ids) - prompt_length)
    ids, mask = encode_conversation(tokenizer, messages, where=where)
    if not any(mask[:context]):
        raise PreferError(f"{where}: no assistant token within the model's context of {context} tokens")
    return ids[:context], mask[:context]


# ------------------------------------------------------------------ conversational prompts and preference pairs


def _role_header(tokenizer, role: str) -> list[int]:
    return tokenizer(f"{role.capitalize()}: ", add_special_tokens=False)["input_ids"]


def plain_text(messages, *, add_generation_prompt: bool = False) -> str:
    """The plain rendering of messages as text (`Role: content` lines), for logs and files; `encode_*` tokenizes the
    same pieces one by one."""
    text = "".join(
        f"{m['role'].capitalize()}: {m['content']}" + ("" if m["role"] == "assistant" else "\n") for m in messages
    )
    return text + ("Assistant: " if add_generation_prompt else "")


def render_generation_prompt(tokenizer, messages) -> str:
    """The text a policy is prompted with for a conversation's next assistant turn: the chat template's rendering
    with the generation prompt, or plainly (`Role: content` lines, then `Assistant: `)."""
    if has_chat_template(tokenizer):
        return _render(tokenizer, messages, add_generation_prompt=True)
    return plain_text(messages, add_generation_prompt=True)


def encode_generation_prompt(tokenizer, messages) -> list[int]:
    """Token ids of `render_generation_prompt`: with a template exactly the tokenizer's own ids of that text (the
    template brings its own begin-of-text, if any); plainly the document start (eos), each message as SFT encodes it
    (prefer.encoding.encode_conversation) and the `Assistant: ` header."""
    if has_chat_template(tokenizer):
        return list(tokenizer(render_generation_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])
    return _encode_plain_conversation(tokenizer, messages)[0] + _role_header(tokenizer, "assistant")


def encode_query(tokenizer, prompt: str, messages=None) -> list[int]:
    """What a policy is prompted with: a conversation's generation prompt when `messages` is given, else
    `encode_prompt(prompt)` (eos + the prompt's tokens)."""
    return encode_generation_prompt(tokenizer, messages) if messages is not None else encode_prompt(tokenizer, prompt)


def encode_chat_example(tokenizer, prompt, response, *, where: str = "conversation") -> tuple[list[int], int]:
    """(ids, prompt length) of a conversational preference response: the prompt's messages followed by the
    response's (its assistant turn), as `encode_example` does for text. With a chat template the ids are exactly the
    tokenizer's rendering of the whole conversation and the prompt is the rendering of the prompt's messages with
    the generation prompt (the response's tokens, and what the template closes its turn with, follow); plainly, as
    SFT encodes a conversation, the prompt ending with the response's `Role: ` header."""
    messages = [*prompt, *response]
    if not has_chat_template(tokenizer):
        ids = _encode_plain_conversation(tokenizer, messages)[0]
        prompt_length = len(_encode_plain_conversation(tokenizer, prompt)[0]) + len(
            _role_header(tokenizer, response[0]["role"])
        )
        return ids, prompt_length
    start, text = _render(tokenizer, prompt, add_generation_prompt=True), _render(tokenizer, messages)
    if not text.startswith(start):
        raise PreferError(
            f"{where}: the tokenizer's chat template does not render the prompt (with the generation prompt) as a "
            "prefix of the whole conversation; cannot tell the response's tokens from the prompt's"
        )
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    prompt_length = sum(1 for begin, _ in encoded["offset_mapping"] if begin < len(start))
    return list(encoded["input_ids"]), prompt_length


def encode_comparison(tokenizer, comparison, *, where: str = "comparison") -> list[tuple[list[int], int]]:
    """(ids, prompt length) of every response of a ranking (prefer.data.formats.Comparison): `encode_example` for
    text, `encode_chat_example` for a conversational pair (one that carries `prompt_messages`)."""
    if getattr(comparison, "prompt_messages", None) is None:
        return [encode_example(tokenizer, comparison.prompt, response) for response in comparison.responses]
    return [
        encode_chat_example(tokenizer, comparison.prompt_messages, response, where=where)
        for response in comparison.response_messages
    ]
