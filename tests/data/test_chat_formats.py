"""The ecosystem's data formats beside prefer's own: conversations (chat template, loss on assistant turns only),
prompt/completion, chosen/rejected pairs, data sets saved with `datasets`, and rankings written back as pairs."""

import json

import pytest

from prefer.data.encoding import encode_conversation, encode_sft_example
from prefer.data.formats import (
    Comparison,
    Conversation,
    Demonstration,
    ranking_pairs,
    read_demonstrations,
    read_rankings,
    write_pairs,
    write_rankings,
)
from prefer.errors import PreferError
from prefer.models.build import train_tokenizer

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi there"},
    {"role": "assistant", "content": " A B"},
    {"role": "user", "content": "more"},
    {"role": "assistant", "content": " C"},
]


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = train_tokenizer(["hi there A B C more words be brief"] * 20, vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]})
    return tokenizer


@pytest.fixture
def chat_tokenizer(tokenizer):
    tokenizer.chat_template = TEMPLATE
    yield tokenizer
    tokenizer.chat_template = None


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_chat_rendering_is_the_tokenizers_own_token_for_token(chat_tokenizer):
    ids, mask = encode_conversation(chat_tokenizer, CHAT)
    assert ids == list(chat_tokenizer.apply_chat_template(CHAT, tokenize=True)["input_ids"])
    assert len(mask) == len(ids)


def test_loss_mask_is_on_the_assistant_turns_only(chat_tokenizer):
    ids, mask = encode_conversation(chat_tokenizer, CHAT)
    token = chat_tokenizer.convert_tokens_to_ids
    system, user, assistant, end = (token(t) for t in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"))
    # By hand: the special tokens split the text, so each piece tokenizes on its own. The assistant header is the
    # generation prompt (not trained on); each assistant content and the <|end|> that closes it are.
    pieces = [
        ([system], False),
        (_ids(chat_tokenizer, "be brief"), False),
        ([end], False),
        ([user], False),
        (_ids(chat_tokenizer, "hi there"), False),
        ([end], False),
        ([assistant], False),
        (_ids(chat_tokenizer, " A B"), True),
        ([end], True),
        ([user], False),
        (_ids(chat_tokenizer, "more"), False),
        ([end], False),
        ([assistant], False),
        (_ids(chat_tokenizer, " C"), True),
        ([end], True),
    ]
    assert ids == [t for piece, _ in pieces for t in piece]
    assert mask == [flag for piece, flag in pieces for _ in piece]
    assert chat_tokenizer.decode([t for t, m in zip(ids, mask) if m]) == " A B<|end|> C<|end|>"


def test_without_a_template_a_conversation_renders_plainly(tokenizer):
    assert not tokenizer.chat_template
    ids, mask = encode_conversation(tokenizer, CHAT[1:3])
    eos = tokenizer.eos_token_id
    expected = (
        [eos]
        + _ids(tokenizer, "User: ")
        + _ids(tokenizer, "hi there")
        + _ids(tokenizer, "\n")
        + _ids(tokenizer, "Assistant: ")
        + _ids(tokenizer, " A B")
        + [eos]
    )
    assert ids == expected
    trained = len(_ids(tokenizer, " A B")) + 1  # the content and its eos
    assert mask == [False] * (len(expected) - trained) + [True] * trained


def test_sft_examples_of_both_kinds_are_cut_to_the_context(chat_tokenizer):
    ids, mask = encode_sft_example(chat_tokenizer, Conversation(tuple(CHAT)), context=13, where="f:1")
    assert len(ids) == 13 and mask == encode_conversation(chat_tokenizer, CHAT)[1][:13]
    with pytest.raises(PreferError, match="f:2: no assistant token within the model's context of 5"):
        encode_sft_example(chat_tokenizer, Conversation(tuple(CHAT)), context=5, where="f:2")
    ids, mask = encode_sft_example(chat_tokenizer, Demonstration("hi", " A"), context=32, where="f:3")
    assert mask == [False] * (1 + len(_ids(chat_tokenizer, "hi"))) + [True] * (len(_ids(chat_tokenizer, " A")) + 1)


def test_every_format_is_read_and_bad_lines_are_named(tmp_path):
    path = tmp_path / "sft.jsonl"
    lines = [{"prompt": "p", "response": " r"}, {"prompt": "p", "completion": " c"}, {"messages": CHAT}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    read = read_demonstrations(path, conversations=True)
    assert read == [Demonstration("p", " r"), Demonstration("p", " c"), Conversation(tuple(CHAT))]
    with pytest.raises(PreferError, match=r"sft\.jsonl:3: a \{\"messages\"\} conversation"):
        read_demonstrations(path, conversations=False)  # the reward model's bias needs (prompt, response) pairs
    for bad, message in [
        ({"messages": [{"role": "user", "content": "x"}]}, ":2: no assistant message"),
        ({"messages": [{"role": "bot", "content": "x"}]}, ":2: message 0 has role 'bot'"),
        ({"prompt": "p"}, ":2: field 'response' must be a str"),
    ]:
        path.write_text(json.dumps(lines[0]) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(PreferError, match=message):
            read_demonstrations(path, conversations=True)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"prompt": "p", "chosen": " good", "rejected": " bad"})
        + "\n"
        + json.dumps({"prompt": "q", "responses": [" x", " y", " z"], "ranking": [2, 0, 1]})
        + "\n"
    )
    assert read_rankings(pairs) == [
        Comparison("p", (" good", " bad"), (0, 1)),
        Comparison("q", (" x", " y", " z"), (1, 2, 0)),
    ]
    pairs.write_text(json.dumps({"prompt": "p", "chosen": " same", "rejected": " same"}) + "\n")
    with pytest.raises(PreferError, match=r"pairs\.jsonl:1: 'chosen' and 'rejected' are the same"):
        read_rankings(pairs)


def test_a_saved_data_set_directory_reads_like_its_jsonl(tmp_path):
    import datasets

    rows = [{"prompt": "p", "chosen": " good", "rejected": " bad"}, {"prompt": "q", "chosen": " yes", "rejected": ""}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "prefs"))
    with pytest.raises(PreferError, match=r"prefs\[row 1\]: field 'rejected' must be a non-empty string"):
        read_rankings(tmp_path / "prefs")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:1])}).save_to_disk(str(tmp_path / "dict"))
    assert read_rankings(tmp_path / "dict") == [Comparison("p", (" good", " bad"), (0, 1))]


def test_rankings_convert_to_pairs_for_other_tools(tmp_path):
    # K = 4 with a tie: ranks (0, 1, 1, 2) -> C(4, 2) = 6 pairs minus the 1 tied pair = 5
    ranking = Comparison("q", (" a", " b", " c", " d"), (0, 1, 1, 2))
    assert ranking_pairs(ranking) == [(" a", " b"), (" a", " c"), (" a", " d"), (" b", " d"), (" c", " d")]
    write_rankings(tmp_path / "rankings.jsonl", [ranking, Comparison("p", (" x", " y"), (1, 0))])
    count = write_pairs(tmp_path / "pairs.jsonl", read_rankings(tmp_path / "rankings.jsonl"))
    assert count == 6
    back = read_rankings(tmp_path / "pairs.jsonl")
    assert back[-1] == Comparison("p", (" y", " x"), (0, 1))
    from prefer.cli import main

    assert main(["convert", str(tmp_path / "rankings.jsonl"), "--to", "pairs", "-o", str(tmp_path / "cli.jsonl")]) == 0
    assert (tmp_path / "cli.jsonl").read_text() == (tmp_path / "pairs.jsonl").read_text()
