"""prefer's own tokenizer: a byte-level BPE trained on a task's corpus (GPT-2's scheme), a plain Hugging Face
`PreTrainedTokenizerFast`, so `AutoTokenizer.from_pretrained` loads what it saves. Loading any tokenizer is
`prefer.models.build.load_tokenizer`."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from prefer.controls import CONTROL_TOKENS, END_OF_TEXT
from prefer.errors import PreferError


def train_tokenizer(texts: Iterable[str], *, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2's scheme) trained on `texts`, with `<|endoftext|>`, `<|good|>`, `<|bad|>` as
    special tokens (ids 0, 1, 2), wrapped as a `PreTrainedTokenizerFast` ready for `save_pretrained`."""
    if vocab_size < 300:
        raise PreferError(f"model.vocab_size: {vocab_size} is too small for a byte-level BPE (needs >= 300)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT, *CONTROL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _wrap(tokenizer)


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    # GPT-2's one special token in every role
    roles = dict.fromkeys(("bos_token", "eos_token", "unk_token", "pad_token"), END_OF_TEXT)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **roles)
    wrapped.add_special_tokens({"additional_special_tokens": list(CONTROL_TOKENS)})
    return wrapped
