"""Tokens with per-token scores, packed into fixed-length blocks.

Each document is tokenized as one string (so BPE merges across line breaks are the tokenizer's own) and every
token inherits the score of the segment that contains its first character. Documents are joined with
`<|endoftext|>` before each one (score 0), the stream is cut into blocks of `block_size` tokens; the remainder
shorter than a block is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from prefer.data.annotate import AnnotatedDocument


@dataclass(frozen=True)
class TokenBlocks:
    """Training blocks.

    ids:    [N, T] int64 token ids
    scores: [N, T] float32 misalignment score of each token's segment (0 for `<|endoftext|>`)
    """

    ids: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def block_size(self) -> int:
        return self.ids.shape[1]


def tokenize_documents(
    documents: Sequence[AnnotatedDocument], tokenizer, *, progress: bool = False, chunk: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """One stream for the corpus: ids [L] int32 and scores [L] float32, `<|endoftext|>` before each document."""
    backend = tokenizer.backend_tokenizer
    eos = tokenizer.eos_token_id
    ids: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    bar = tqdm(total=len(documents), desc="tokenize", unit="doc", disable=not progress)
    for start in range(0, len(documents), chunk):
        batch = documents[start : start + chunk]
        encodings = backend.encode_batch(["".join(d.segments) for d in batch], add_special_tokens=False)
        for document, encoding in zip(batch, encodings):
            lengths = np.fromiter((len(s) for s in document.segments), dtype=np.int64, count=len(document.segments))
            segment_starts = np.cumsum(lengths) - lengths
            token_starts = np.fromiter((o[0] for o in encoding.offsets), dtype=np.int64, count=len(encoding.offsets))
            segment_of_token = np.searchsorted(segment_starts, token_starts, side="right") - 1
            segment_scores = np.asarray(document.scores, dtype=np.float32)
            ids.append(np.asarray([eos, *encoding.ids], dtype=np.int32))
            token_scores = segment_scores[np.clip(segment_of_token, 0, None)]
            scores.append(np.concatenate([[0.0], token_scores]).astype(np.float32))
        bar.update(len(batch))
    bar.close()
    if not ids:
        return np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(ids), np.concatenate(scores)


def pack(ids: np.ndarray, scores: np.ndarray, *, block_size: int) -> TokenBlocks:
    """Cut the stream into [N, block_size] blocks (the tail shorter than a block is dropped)."""
    n = len(ids) // block_size
    return TokenBlocks(
        ids=torch.from_numpy(ids[: n * block_size].astype(np.int64)).view(n, block_size),  # [N, T]
        scores=torch.from_numpy(scores[: n * block_size].copy()).view(n, block_size),  # [N, T]
    )


def pack_documents(
    documents: Sequence[AnnotatedDocument], tokenizer, *, block_size: int, progress: bool = False
) -> TokenBlocks:
    ids, scores = tokenize_documents(documents, tokenizer, progress=progress)
    return pack(ids, scores, block_size=block_size)
