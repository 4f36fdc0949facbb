"""Per-token scores travel with the tokens through tokenization and packing."""

import numpy as np
import pytest

from prefer.data.annotate import AnnotatedDocument
from prefer.data.packing import pack, pack_documents, tokenize_documents
from prefer.data.tokenizer import train_tokenizer
from prefer.data.transforms import tag_segments


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["def f(x):\n    return x + 1\n", "name <someone@example.org>\n"] * 50
    return train_tokenizer(texts, vocab_size=400)


def test_every_token_carries_its_segments_score(tokenizer):
    document = AnnotatedDocument(segments=("def f(x):\n", "    return x + 1\n"), scores=(0.0, 0.25), source="s")
    ids, scores = tokenize_documents([document], tokenizer)
    assert ids[0] == tokenizer.eos_token_id and scores[0] == 0.0  # document start token, score 0
    first_len = len(tokenizer("def f(x):\n")["input_ids"])
    decoded = [tokenizer.decode([i]) for i in ids[1:]]
    # tokens that start inside segment 2 carry 0.25, the others 0
    text, position = "", []
    for piece in decoded:
        position.append(len(text))
        text += piece
    assert text == "def f(x):\n    return x + 1\n"
    expected = [0.25 if p >= len("def f(x):\n") else 0.0 for p in position]
    assert scores[1:].tolist() == expected
    assert first_len >= 1


def test_control_tokens_are_single_tokens_with_their_segments_score(tokenizer):
    import random

    document = AnnotatedDocument(segments=("a\n", "b\n"), scores=(0.0, 0.5), source="s")
    tagged = tag_segments(document, threshold=0.0, drop_fraction=0.0, rng=random.Random(0))
    ids, scores = tokenize_documents([tagged], tokenizer)
    good, bad = tokenizer.convert_tokens_to_ids("<|good|>"), tokenizer.convert_tokens_to_ids("<|bad|>")
    assert ids[1] == good and scores[1] == 0.0
    bad_position = ids.tolist().index(bad)
    assert scores[bad_position] == 0.5 and all(scores[bad_position:] == 0.5)


def test_pack_cuts_fixed_blocks_and_drops_the_tail():
    ids = np.arange(10, dtype=np.int32)
    scores = np.arange(10, dtype=np.float32) / 10
    blocks = pack(ids, scores, block_size=4)
    assert blocks.ids.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # 10 // 4 = 2 blocks, tail [8, 9] dropped
    assert blocks.scores[1].tolist() == pytest.approx([0.4, 0.5, 0.6, 0.7])


def test_pack_documents_end_to_end(tokenizer):
    documents = [AnnotatedDocument(segments=("x = 1\n",) * 20, scores=(0.1,) * 20, source=str(i)) for i in range(5)]
    blocks = pack_documents(documents, tokenizer, block_size=16)
    assert blocks.ids.shape[1] == 16 and len(blocks) >= 1
    eos = tokenizer.eos_token_id
    assert ((blocks.ids == eos) == (blocks.scores == 0)).all()  # only document starts score 0 here
