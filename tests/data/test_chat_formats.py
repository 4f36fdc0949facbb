"""The ecosystem's data formats beside prefer's own: conversations (chat template, loss on assistant turns only),
prompt/completion, chosen/rejected pairs, data sets saved with `datasets`, and rankings written back as pairs."""

import json

import pytest

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
from prefer.data.tokenizer import train_tokenizer
from prefer.encoding import encode_comparison, encode_conversation, encode_sft_example
from prefer.errors import PreferError

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


# ------------------------------------------------------------------ conversational preference pairs and prompts

USER = [{"role": "user", "content": "hi there"}]
GOOD, BAD = [{"role": "assistant", "content": " A B"}], [{"role": "assistant", "content": " C"}]


def _write(path, *records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_conversational_pairs_read_as_one_ranking_of_two(tmp_path):
    explicit = {"prompt": USER, "chosen": GOOD, "rejected": BAD}
    implicit = {"chosen": USER + GOOD, "rejected": USER + BAD}  # the shared first turn is the prompt
    read = read_rankings(
        _write(tmp_path / "pairs.jsonl", explicit, implicit, {"prompt": "p", "chosen": " x", "rejected": " y"})
    )
    assert (
        read[0]
        == read[1]
        == Comparison(
            "User: hi there\nAssistant: ",
            ("Assistant:  A B", "Assistant:  C"),
            (0, 1),
            prompt_messages=tuple(USER),
            response_messages=(tuple(GOOD), tuple(BAD)),
        )
    )
    assert read[2] == Comparison("p", (" x", " y"), (0, 1))
    assert write_pairs(tmp_path / "back.jsonl", read) == 3  # the messages survive the round trip
    assert read_rankings(tmp_path / "back.jsonl") == read
    write_rankings(tmp_path / "rankings.jsonl", read)
    assert read_rankings(tmp_path / "rankings.jsonl") == read


def test_conversational_pairs_render_with_the_template_or_plainly(tokenizer):
    comparison = read_rankings_from({"prompt": USER, "chosen": GOOD, "rejected": BAD})
    eos = tokenizer.eos_token_id
    # No template: as SFT renders a conversation; the prompt ends with the response's "Assistant: " header.
    (ids, prompt_length), _ = encode_comparison(tokenizer, comparison)
    prompt = [eos] + _ids(tokenizer, "User: ") + _ids(tokenizer, "hi there") + _ids(tokenizer, "\n")
    prompt += _ids(tokenizer, "Assistant: ")
    assert ids == prompt + _ids(tokenizer, " A B") + [eos] and prompt_length == len(prompt)
    assert ids == encode_conversation(tokenizer, USER + GOOD)[0]
    # A template: exactly the tokenizer's own ids; the prompt is its rendering with the generation prompt.
    tokenizer.chat_template = TEMPLATE
    try:
        (ids, prompt_length), (rejected, rejected_prompt) = encode_comparison(tokenizer, comparison)
        assert ids == list(tokenizer.apply_chat_template(USER + GOOD, tokenize=True)["input_ids"])
        assert rejected == list(tokenizer.apply_chat_template(USER + BAD, tokenize=True)["input_ids"])
        with_header = tokenizer.apply_chat_template(USER, add_generation_prompt=True, tokenize=True)["input_ids"]
        assert prompt_length == rejected_prompt == len(with_header)  # "<|user|>hi there<|end|><|assistant|>"
        assert ids[prompt_length:] == _ids(tokenizer, " A B<|end|>")
    finally:
        tokenizer.chat_template = None


def read_rankings_from(record):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as directory:
        return read_rankings(_write(Path(directory) / "pairs.jsonl", record))[0]


@pytest.mark.parametrize(
    "bad,message",
    [
        (
            {"prompt": USER, "chosen": [{"role": "bot", "content": "x"}], "rejected": BAD},
            "field 'chosen': message 0 has role 'bot'",
        ),
        ({"prompt": USER, "chosen": GOOD, "rejected": " C"}, "field 'rejected' must be a non-empty list"),
        (
            {"prompt": [{"role": "user"}], "chosen": GOOD, "rejected": BAD},
            "field 'prompt': message 0 must be an object",
        ),
        (
            {"prompt": USER, "chosen": USER + GOOD, "rejected": BAD},
            "field 'chosen' must start with the assistant's turn",
        ),
        ({"chosen": GOOD, "rejected": BAD}, "share no first message, so there is no prompt"),
        ({"prompt": USER, "chosen": GOOD, "rejected": GOOD}, "the same conversation"),
    ],
)
def test_a_bad_conversational_pair_is_one_line_naming_file_line_and_field(tmp_path, capsys, bad, message):
    from prefer.cli import main

    path = _write(tmp_path / "pairs.jsonl", {"prompt": USER, "chosen": GOOD, "rejected": BAD}, bad)
    with pytest.raises(PreferError, match=rf"pairs\.jsonl:2: .*{__import__('re').escape(message)}"):
        read_rankings(path)
    for stage in ("reward", "dpo"):  # both read the rankings before loading a model
        args = [stage, f"data.rankings={path}", f"model.init_from={tmp_path}", f"out_dir={tmp_path / stage}"]
        assert main([*args, "optimizer.lr=0.1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pairs.jsonl:2: " in err[0] and message in err[0]


def test_chat_prompts_are_rendered_with_the_generation_prompt(tokenizer, tmp_path):
    from prefer.rl import read_queries

    chat = [{"role": "system", "content": "be brief"}, *USER]
    path = _write(tmp_path / "prompts.jsonl", {"messages": chat}, {"prompt": USER}, {"prompt": "plain"})
    eos = tokenizer.eos_token_id
    prompts, queries = read_queries(str(path), tokenizer, max_length=64)  # no template: plainly
    assert prompts[1] == "User: hi there\nAssistant: "
    assert queries[1] == encode_conversation(tokenizer, USER + GOOD)[0][: len(queries[1])]  # SFT's prefix
    assert queries[1][-len(_ids(tokenizer, "Assistant: ")) :] == _ids(tokenizer, "Assistant: ")
    assert queries[2] == [eos] + _ids(tokenizer, "plain")
    tokenizer.chat_template = TEMPLATE
    try:
        prompts, queries = read_queries(str(path), tokenizer, max_length=64)
        for messages, text, ids in zip((chat, USER), prompts, queries):
            assert text == tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            assert ids == _ids(tokenizer, text)
        assert prompts[0] == "<|system|>be brief<|end|><|user|>hi there<|end|><|assistant|>"
        assert queries[2] == [eos] + _ids(tokenizer, "plain")  # a text prompt stays as it was
    finally:
        tokenizer.chat_template = None
    _write(path, {"prompt": "ok"}, {"messages": [{"role": "robot", "content": "x"}]})
    with pytest.raises(PreferError, match=r"prompts\.jsonl:2: message 0 has role 'robot'"):
        read_queries(str(path), tokenizer, max_length=64)


def test_reward_and_dpo_train_on_conversational_pairs_through_the_template(tokenizer, tmp_path, monkeypatch):
    import math

    import torch

    import prefer.stages.dpo as dpo_stage
    import prefer.stages.reward as reward_stage
    from prefer.config import DPOConfig, RewardConfig, build_config
    from prefer.models.build import build_model
    from prefer.training import read_metrics

    tokenizer.chat_template = TEMPLATE
    try:
        torch.manual_seed(0)
        model = build_model("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, context=32)
        model.save_pretrained(tmp_path / "init")
        tokenizer.save_pretrained(tmp_path / "init")
        expected = list(tokenizer.apply_chat_template(USER + GOOD, tokenize=True)["input_ids"])
    finally:
        tokenizer.chat_template = None
    pairs = _write(tmp_path / "pairs.jsonl", *[{"prompt": USER, "chosen": GOOD, "rejected": BAD}] * 8)
    seen = []
    for stage in (dpo_stage, reward_stage):
        original = stage.encode_rankings
        monkeypatch.setattr(stage, "encode_rankings", lambda *a, _f=original, **k: seen.append(_f(*a, **k)) or seen[-1])
    common = {"data.rankings": pairs, "model.init_from": tmp_path / "init", "train.batch_size": 4}
    common |= {"train.epochs": 0.5, "runtime.progress": False, "optimizer.lr": 1e-3, "data.validation_fraction": 0.25}
    dpo_stage.dpo(
        build_config(DPOConfig, {**common, "out_dir": tmp_path / "dpo", "eval.kl_samples": 2, "eval.max_new_tokens": 4})
    )
    # one step on 6 pairs: the policy is its reference, so each margin is 0 and the loss -log sigmoid(0) = log 2
    assert read_metrics(tmp_path / "dpo")[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    reward_stage.reward(build_config(RewardConfig, {**common, "out_dir": tmp_path / "rm"}))
    # The bias is set on the best responses as they were trained on (the chat rendering): the 8 pairs are one
    # pair, so after it the chosen conversation scores exactly 0.
    from prefer.models.reward_model import load_reward_model

    assert load_reward_model(tmp_path / "rm" / "final").rewards_of_ids([expected]).item() == pytest.approx(0, abs=1e-5)
    for encoded in seen:  # dpo train and held out; reward train, held out and the bias's: K = 2 chat renderings
        assert all(len(responses) == 2 for responses in encoded.sequences)
        assert encoded.sequences[0][0] == expected
