"""WordTokenizer: captions -> word ids, with a vocabulary built from the training captions.

VATT embeds words from a fixed vocabulary; ours is built from the captions the model trains
on (lower-cased alphanumeric words), ordered by frequency, and saved with the model as JSON so a
loaded model reads text exactly as it was trained.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harmonia.errors import CheckpointError
from harmonia.files import parse_json, write_atomic

PAD = "[PAD]"
UNK = "[UNK]"
SPECIALS: tuple[str, ...] = (PAD, UNK)
FORMAT = "harmonia.word-tokenizer"
_WORD = re.compile(r"[^\W_]+")


class WordTokenizer:
    """Splits text into lower-cased words and maps them to ids (0 = padding, 1 = unknown)."""

    def __init__(self, words: Sequence[str]) -> None:
        vocab = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        if len(set(vocab)) != len(vocab):
            dup = next(w for w, n in Counter(vocab).items() if n > 1)
            raise ValueError(f"vocabulary lists {dup!r} more than once")
        self.vocab: tuple[str, ...] = tuple(vocab)
        self.index: dict[str, int] = {w: i for i, w in enumerate(self.vocab)}

    pad_id = 0
    unk_id = 1

    @staticmethod
    def split(text: str) -> list[str]:
        """The words of ``text``: lower-cased runs of letters and digits."""
        return _WORD.findall(text.lower())

    @classmethod
    def build(
        cls, captions: Iterable[str], *, min_count: int = 1, max_words: int | None = None
    ) -> WordTokenizer:
        """A vocabulary of the words seen at least ``min_count`` times, most frequent first."""
        counts = Counter(w for text in captions for w in cls.split(text))
        ranked = sorted(
            (w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls(ranked[:max_words] if max_words is not None else ranked)

    def __len__(self) -> int:
        return len(self.vocab)

    def ids(self, text: str) -> list[int]:
        """Word ids of one caption (unknown words -> ``unk_id``)."""
        return [self.index.get(w, self.unk_id) for w in self.split(text)]

    def encode(
        self, texts: Sequence[str], max_length: int, device: torch.device | str | None = None
    ) -> Tensor:
        """Ids [len(texts), L] padded with ``pad_id``; L = longest caption, at most ``max_length``."""
        rows = [self.ids(t)[:max_length] for t in texts]
        length = max((len(r) for r in rows), default=0)
        out = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out.to(device) if device is not None else out

    def decode(self, ids: Iterable[int]) -> str:
        """The words of ``ids`` joined by spaces (padding left out)."""
        return " ".join(self.vocab[i] for i in ids if i != self.pad_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "specials": list(SPECIALS),
            "vocab": list(self.vocab),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "vocabulary") -> WordTokenizer:
        """Read `to_dict` output back; anything else raises CheckpointError naming ``source``."""
        if data.get("format") != FORMAT or data.get("version") != 1:
            raise CheckpointError(f"{source}: not a harmonia word-tokenizer file (format/version)")
        vocab = data.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
            raise CheckpointError(f"{source}: 'vocab' must be a list of strings")
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS or data.get("specials") != list(SPECIALS):
            raise CheckpointError(f"{source}: special tokens must be {list(SPECIALS)} first")
        try:
            return cls(vocab[len(SPECIALS) :])
        except ValueError as err:
            raise CheckpointError(f"{source}: {err}") from None

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: cannot read vocabulary ({err})") from None
        try:
            data = parse_json(text)
        except ValueError as err:
            raise CheckpointError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object")
        return cls.from_dict(data, source=str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordTokenizer) and other.vocab == self.vocab

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"WordTokenizer({len(self)} words)"
