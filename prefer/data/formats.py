"""Human-feedback data files (InstructGPT): demonstrations, rankings and prompts, one JSON object per line.

    demonstrations.jsonl  {"prompt": str, "response": str}
    rankings.jsonl        {"prompt": str, "responses": [str, ... K = 2..9], "ranking": [...]}
    prompts.jsonl         {"prompt": str}

and beside them the formats of the rest of the ecosystem (TRL, the hub's chat and preference data sets):

    {"prompt": str, "completion": str}          a demonstration (prompt + completion)
    {"messages": [{"role", "content"}, ...]}    a conversation for SFT: the loss on the assistant turns only,
                                                rendered with the tokenizer's chat template (prefer.encoding)
    {"prompt": str, "chosen": str, "rejected": str}   a preference pair: a ranking of K = 2
    {"prompt": [messages], "chosen": [messages], "rejected": [messages]}   a conversational pair (TRL): the
                                                responses start with the assistant's turn; without "prompt" the
                                                conversations' shared first messages are the prompt
    {"messages": [...]} or {"prompt": [messages]}   a prompt as a conversation (PPO, GRPO): the next assistant turn

Records come from a JSONL file, from a Hugging Face data set saved with `save_to_disk` (a directory), or from the
hub (`hf:NAME[:SPLIT]`, when online); `where` is then `<name>[row N]`.

`ranking` orders the responses from best to worst by index; a tie is a list of indices that share a place:
`[2, [0, 3], 1]` says response 2 is best, 0 and 3 tie, 1 is worst. Every index appears exactly once.
Every reader checks every line and raises `PreferError("<file>:<line>: ...")` on the first bad one; writers are
atomic, so a killed labeler never leaves half a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from prefer.errors import PreferError
from prefer.files import atomic_path, read_error

MIN_RESPONSES, MAX_RESPONSES = 2, 9


@dataclass(frozen=True)
class Demonstration:
    prompt: str
    response: str


@dataclass(frozen=True)
class Comparison:
    """K responses to one prompt and their ranks: ranks[i] is the place of responses[i] (0 = best; equal
    places are ties). All C(K, 2) pairs of one Comparison form one reward-model batch element."""

    prompt: str
    responses: tuple[str, ...]
    ranks: tuple[int, ...]
    # a conversational pair: the prompt's messages and each response's (its assistant turn); prompt and responses
    # then hold their plain renderings, for logs (the encoders render the messages: prefer.encoding)
    prompt_messages: tuple[dict[str, str], ...] | None = None
    response_messages: tuple[tuple[dict[str, str], ...], ...] | None = None

    def ranking(self) -> list[int | list[int]]:
        """The file form: indices best to worst, ties grouped in lists."""
        places: dict[int, list[int]] = {}
        for index, rank in enumerate(self.ranks):
            places.setdefault(rank, []).append(index)
        return [group[0] if len(group) == 1 else group for _, group in sorted(places.items())]


@dataclass(frozen=True)
class Prompt:
    """A prompt for the policy; `messages`: a conversation whose next assistant turn the policy writes (`prompt` is
    then its plain rendering; prefer.encoding.encode_query renders it with the chat template)."""

    prompt: str
    messages: tuple[dict[str, str], ...] | None = None


def _jsonl_records(path: Path) -> Iterable[tuple[str, object]]:
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below; its errors are the user's to fix)
    except OSError as error:
        raise read_error(path, error) from None
    with handle:
        for number, raw in enumerate(_lines(handle, path), 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise PreferError(f"{where}: not UTF-8") from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                raise PreferError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from None


def _lines(handle, path: Path) -> Iterable[bytes]:
    """The lines of an open file; a read that fails (an I/O error, a directory's EISDIR) is a PreferError."""
    try:
        yield from handle
    except OSError as error:
        raise read_error(path, error) from None


def _dataset_records(path: str) -> Iterable[tuple[str, object]]:
    """Rows of a `datasets` data set: a `save_to_disk` directory (a DatasetDict: its train split) or hf:NAME[:SPLIT]."""
    import datasets  # lazy: importing datasets takes seconds

    try:
        if path.startswith("hf:"):
            from prefer.data.sources.hub import check_hub_dataset, quiet_hub_logs

            name, _, split = path.removeprefix("hf:").partition(":")
            check_hub_dataset(name, where=path)
            with quiet_hub_logs():
                data = datasets.load_dataset(name, split=split or "train")
        else:
            data = datasets.load_from_disk(path)
            if isinstance(data, datasets.DatasetDict):
                if "train" not in data:
                    raise PreferError(f"{path}: a DatasetDict without a 'train' split ({', '.join(data)})")
                data = data["train"]
    except PreferError:
        raise
    except Exception as error:  # noqa: BLE001 -- the hub's and the loaders' errors have no common base class
        first = (str(error).strip().splitlines() or [""])[0]
        raise PreferError(f"{path}: cannot load the data set ({type(error).__name__}: {first})") from None
    for row, record in enumerate(data):
        yield f"{path}[row {row}]", record


def read_records(path: str | Path, required: dict[str, type]) -> Iterable[tuple[str, dict]]:
    """(where, record) for each non-blank line of a JSONL file (or row of a data set directory, or of hf:NAME), with
    the required fields present and of the right type; `where` is "<file>:<line>" for error messages."""
    name = str(path)
    try:  # is_dir and is_file raise on a path whose directory cannot be searched (EACCES)
        if name.startswith("hf:") or Path(path).is_dir():
            records = _dataset_records(name)
        elif Path(path).is_file():
            records = _jsonl_records(Path(path))
        else:
            raise PreferError(f"{path}: no such file")
    except OSError as error:
        raise read_error(path, error) from None
    count = 0
    for where, record in records:
        if not isinstance(record, dict):
            raise PreferError(f"{where}: expected a JSON object")
        for field, kind in required.items():
            if not isinstance(record.get(field), kind):
                raise PreferError(f"{where}: field '{field}' must be a {kind.__name__}")
        count += 1
        yield where, record
    if count == 0:
        raise PreferError(f"{path}: no records")


def record_locations(path: str | Path) -> list[str]:
    """`<file>:<line>` of each record, in the order every reader returns them, for errors that only a later stage
    can detect (e.g. a prompt longer than the model's context)."""
    return [where for where, _ in read_records(path, {})]


def read_located(reader, path: str | Path) -> tuple[list, list[str]]:
    """(`reader(path)`'s records, the `<file>:<line>` of each): a data file read, and a bad line reported, before
    any model is loaded."""
    return reader(path), record_locations(path)


def _nonempty(where: str, field: str, text: str) -> str:
    if not text.strip():
        raise PreferError(f"{where}: field '{field}' is empty")
    return text


ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Conversation:
    """A chat for SFT: messages as ({"role", "content"}, ...); the loss is on the assistant turns only."""

    messages: tuple[dict[str, str], ...]


def parse_messages(
    where: str, messages: object, *, field: str = "messages", need_assistant: bool = True
) -> tuple[dict[str, str], ...]:
    """A list of {"role", "content"} messages, checked; errors name the field unless it is `messages`."""
    if not isinstance(messages, list) or not messages:
        raise PreferError(f'{where}: field \'{field}\' must be a non-empty list of {{"role", "content"}} objects')
    inside = "" if field == "messages" else f"field '{field}': "
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise PreferError(f"{where}: {inside}message {i} must be an object with a string 'content'")
        if message.get("role") not in ROLES:
            raise PreferError(
                f"{where}: {inside}message {i} has role {message.get('role')!r}; choose one of {', '.join(ROLES)}"
            )
        parsed.append({"role": message["role"], "content": message["content"]})
    if need_assistant and not any(m["role"] == "assistant" and m["content"].strip() for m in parsed):
        raise PreferError(f"{where}: {inside}no assistant message with content: nothing to train on")
    return tuple(parsed)


def _demonstration(where: str, record: dict, *, conversations: bool) -> Demonstration | Conversation:
    if "messages" in record:
        if not conversations:
            raise PreferError(f'{where}: a {{"messages"}} conversation; this file needs {{"prompt", "response"}}')
        return Conversation(parse_messages(where, record["messages"]))
    key = "completion" if "completion" in record and "response" not in record else "response"
    for field in ("prompt", key):
        if not isinstance(record.get(field), str):
            raise PreferError(
                f"{where}: field '{field}' must be a str (a demonstration is "
                '{"prompt", "response"}, {"prompt", "completion"} or {"messages"})'
            )
    return Demonstration(_nonempty(where, "prompt", record["prompt"]), _nonempty(where, key, record[key]))


def read_demonstrations(path: str | Path, *, conversations: bool = True) -> list[Demonstration | Conversation]:
    """Demonstrations {"prompt", "response"} or {"prompt", "completion"}, and {"messages": [...]} chats (SFT),
    returned as Conversation; `conversations=False` refuses chats (where (prompt, response) pairs are needed)."""
    return [_demonstration(w, r, conversations=conversations) for w, r in read_records(path, {})]


def _prompt(where: str, record: dict) -> Prompt:
    field = "messages" if "messages" in record else "prompt"
    if field == "messages" or isinstance(record.get("prompt"), list):
        from prefer.encoding import plain_text

        messages = parse_messages(where, record[field], field=field, need_assistant=False)
        return Prompt(plain_text(messages, add_generation_prompt=True), messages)
    if not isinstance(record.get("prompt"), str):
        raise PreferError(f"{where}: field 'prompt' must be a str")  # or a list of messages, or 'messages'
    return Prompt(_nonempty(where, "prompt", record["prompt"]))


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts {"prompt": str}, or conversations {"messages": [...]} / {"prompt": [messages]} to answer."""
    return [_prompt(where, record) for where, record in read_records(path, {})]


def parse_ranking(where: str, ranking: object, k: int) -> tuple[int, ...]:
    """File form -> ranks per response; the error names what is wrong with a non-permutation."""
    if not isinstance(ranking, list) or not ranking:
        raise PreferError(f"{where}: field 'ranking' must be a non-empty list of response indices")
    ranks: dict[int, int] = {}
    for place, entry in enumerate(ranking):
        group = entry if isinstance(entry, list) else [entry]
        if not group or not all(isinstance(i, int) and not isinstance(i, bool) for i in group):
            raise PreferError(f"{where}: 'ranking' entries must be indices or lists of tied indices, got {entry!r}")
        for index in group:
            if not 0 <= index < k:
                raise PreferError(f"{where}: 'ranking' index {index} is out of range for {k} responses")
            if index in ranks:
                raise PreferError(f"{where}: 'ranking' lists response {index} twice; it must be a permutation")
            ranks[index] = place
    missing = sorted(set(range(k)) - set(ranks))
    if missing:
        raise PreferError(f"{where}: 'ranking' leaves out response(s) {missing}; it must be a permutation")
    return tuple(ranks[i] for i in range(k))


PAIR_FORMATS = (
    'a preference pair is {"prompt", "chosen", "rejected"} of strings, or conversational: {"prompt": [messages], '
    '"chosen": [messages], "rejected": [messages]}, or {"chosen": [messages], "rejected": [messages]} that share '
    "their first turns (the prompt)"
)


def _text_pair(where: str, record: dict) -> Comparison:
    if not isinstance(record.get("prompt"), str):
        raise PreferError(f"{where}: field 'prompt' must be a str ({PAIR_FORMATS})")
    for field in ("chosen", "rejected"):
        if not isinstance(record.get(field), str) or not record[field].strip():
            raise PreferError(f"{where}: field '{field}' must be a non-empty string ({PAIR_FORMATS})")
    if record["chosen"] == record["rejected"]:
        raise PreferError(f"{where}: 'chosen' and 'rejected' are the same text; the pair carries no preference")
    return Comparison(_nonempty(where, "prompt", record["prompt"]), (record["chosen"], record["rejected"]), (0, 1))


def _conversational_pair(where: str, record: dict) -> Comparison:
    """TRL's conversational preference formats: an explicit prompt (a list of messages) and the responses as lists
    of messages (the assistant turn), or whole conversations whose shared first messages are the prompt."""
    from prefer.encoding import plain_text

    chosen, rejected = (parse_messages(where, record.get(f), field=f) for f in ("chosen", "rejected"))
    if "prompt" in record:
        prompt = parse_messages(where, record["prompt"], field="prompt", need_assistant=False)
    else:
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise PreferError(
                f"{where}: fields 'chosen' and 'rejected' share no first message, so there is no prompt; "
                "give 'prompt' as a list of messages"
            )
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if chosen == rejected:
        raise PreferError(f"{where}: 'chosen' and 'rejected' are the same conversation; the pair carries no preference")
    for field, response in (("chosen", chosen), ("rejected", rejected)):
        if not response or response[0]["role"] != "assistant" or not response[0]["content"].strip():
            raise PreferError(f"{where}: field '{field}' must start with the assistant's turn after the prompt")
    return Comparison(
        plain_text(prompt, add_generation_prompt=True),
        (plain_text(chosen), plain_text(rejected)),
        (0, 1),
        prompt_messages=prompt,
        response_messages=(chosen, rejected),
    )


def read_rankings(path: str | Path) -> list[Comparison]:
    """Rankings {"prompt", "responses", "ranking"}, or preference pairs (a ranking of K = 2: chosen best) of text,
    {"prompt", "chosen", "rejected"}, or conversational (lists of messages, TRL's format), in one file alike."""
    comparisons = []
    for where, record in read_records(path, {}):
        if "label" in record and "responses" not in record and "chosen" not in record:
            raise PreferError(f"{where}: key 'label' is unpaired binary feedback (dpo.loss=kto reads data.feedback)")
        if "chosen" in record or "rejected" in record:
            conversational = any(isinstance(record.get(f), list) for f in ("prompt", "chosen", "rejected"))
            comparisons.append((_conversational_pair if conversational else _text_pair)(where, record))
            continue
        if not isinstance(record.get("prompt"), str):
            raise PreferError(f"{where}: field 'prompt' must be a str")
        if not isinstance(record.get("responses"), list):
            raise PreferError(f"{where}: field 'responses' must be a list (or give a pair: 'chosen', 'rejected')")
        responses = record["responses"]
        if not MIN_RESPONSES <= len(responses) <= MAX_RESPONSES:
            raise PreferError(
                f"{where}: {len(responses)} responses; a ranking needs {MIN_RESPONSES} to {MAX_RESPONSES}"
            )
        for i, response in enumerate(responses):
            if not isinstance(response, str) or not response.strip():
                raise PreferError(f"{where}: response {i} is empty or not a string")
        ranks = parse_ranking(where, record.get("ranking"), len(responses))
        if len(set(ranks)) == 1:
            raise PreferError(f"{where}: every response ties; the ranking carries no preference")
        comparisons.append(Comparison(_nonempty(where, "prompt", record["prompt"]), tuple(responses), ranks))
    return comparisons


def write_jsonl(path: str | Path, records: Sequence[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")


def write_demonstrations(path: str | Path, demonstrations: Sequence[Demonstration]) -> None:
    write_jsonl(path, [asdict(d) for d in demonstrations])


def _pair_indices(comparison: Comparison) -> list[tuple[int, int]]:
    order = sorted(range(len(comparison.ranks)), key=lambda i: comparison.ranks[i])
    return [(a, b) for x, a in enumerate(order) for b in order[x + 1 :] if comparison.ranks[a] < comparison.ranks[b]]


def _pair_records(comparison: Comparison) -> list[dict]:
    """{"prompt", "chosen", "rejected"} for every non-tied pair; a conversational pair keeps its messages."""
    if comparison.prompt_messages is None:
        return [
            {"prompt": comparison.prompt, "chosen": comparison.responses[a], "rejected": comparison.responses[b]}
            for a, b in _pair_indices(comparison)
        ]
    messages = comparison.response_messages
    return [
        {"prompt": list(comparison.prompt_messages), "chosen": list(messages[a]), "rejected": list(messages[b])}
        for a, b in _pair_indices(comparison)
    ]


def write_rankings(path: str | Path, comparisons: Sequence[Comparison]) -> None:
    """Rankings JSONL; a conversational pair is written as one (the rankings readers take pairs too)."""
    write_jsonl(
        path,
        [
            {"prompt": c.prompt, "responses": list(c.responses), "ranking": c.ranking()}
            if c.prompt_messages is None
            else _pair_records(c)[0]
            for c in comparisons
        ],
    )


def ranking_pairs(comparison: Comparison) -> list[tuple[str, str]]:
    """Every non-tied (better, worse) pair of responses of a ranking, best pairs first: C(K, 2) minus the ties."""
    return [(comparison.responses[a], comparison.responses[b]) for a, b in _pair_indices(comparison)]


def write_pairs(path: str | Path, comparisons: Sequence[Comparison]) -> int:
    """Rankings as preference pairs {"prompt", "chosen", "rejected"} (TRL's format): every non-tied pair of each
    ranking (conversational pairs as messages). Returns the number of pairs written."""
    records = [record for c in comparisons for record in _pair_records(c)]
    write_jsonl(path, records)
    return len(records)
