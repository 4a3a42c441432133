"""Text columns as token ids: the tokenizer the agent applies before anything enters the sandbox.

Owns the two tokenizers a task may choose, neither of which needs a download or a file:
- UTF-8 bytes (``vocabulary`` None): each byte of the text is one token, id ``byte + RESERVED``
  (vocabulary size 256 + RESERVED). Same on every pod, whatever its text.
- a fixed word vocabulary signed in the task: the text lower-cased and split into words
  (``_WORD``), each word's id ``RESERVED + its index`` in the vocabulary, ``UNK`` when absent.
Ids ``PAD`` (0) fill a row up to ``max_tokens``; a longer text is cut. A missing value is all ``PAD``.
The ids are the same on every pod for the same task, which federated averaging of an embedding needs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pod_agent.errors import DataError

PAD, UNK = 0, 1
RESERVED = 2
_BYTE_VOCABULARY = 256 + RESERVED
_WORD = re.compile(r"\w+", flags=re.UNICODE)


@dataclass(frozen=True)
class TextTokens:
    """How a task's text column becomes ``[rows, max_tokens]`` ids."""

    max_tokens: int
    vocabulary: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.vocabulary is not None and len(set(self.vocabulary)) != len(self.vocabulary):
            raise DataError("task input: the task's vocabulary lists a word twice; list each word once")

    @property
    def vocab_size(self) -> int:
        return _BYTE_VOCABULARY if self.vocabulary is None else len(self.vocabulary) + RESERVED

    def encode(self, texts: Sequence[str | None]) -> np.ndarray:
        """int32 ``[len(texts), max_tokens]`` token ids."""
        out = np.full((len(texts), self.max_tokens), PAD, dtype=np.int32)
        index = None if self.vocabulary is None else {word: i + RESERVED for i, word in enumerate(self.vocabulary)}
        for row, text in enumerate(texts):
            if text is None:
                continue
            if index is None:
                ids = np.frombuffer(text.encode("utf-8")[: self.max_tokens], dtype=np.uint8).astype(np.int32) + RESERVED
            else:
                words = _WORD.findall(text.lower())[: self.max_tokens]
                ids = np.array([index.get(word, UNK) for word in words], dtype=np.int32)
            out[row, : len(ids)] = ids
        return out
