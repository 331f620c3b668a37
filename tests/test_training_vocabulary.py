"""`data.vocabulary`: which training-caption words get their own embedding row."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from harmonia.errors import ConfigError
from harmonia.models import VATT, WordTokenizer
from harmonia.training.config import load_train_config
from harmonia.training.data import split_captions
from harmonia.training.layout import MODEL_DIR
from harmonia.training.loop import train

BASE = ["data.batch_size=8", "train.steps=1", "train.checkpoint_every=1", "train.progress=false"]


def test_the_vocabulary_keeps_the_most_frequent_words_seen_often_enough(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    captions = split_captions(tiny_dataset, "train")
    counts = Counter(w for text in captions for w in WordTokenizer.split(text))
    overrides = [*BASE, "data.vocabulary.min_count=2", "data.vocabulary.max_words=4"]
    train(load_train_config("demo", overrides), tmp_path / "run", data_dir=tiny_dataset)
    model = VATT.from_pretrained(tmp_path / "run" / MODEL_DIR)
    frequent = sorted((w for w, n in counts.items() if n >= 2), key=lambda w: (-counts[w], w))
    assert model.tokenizer is not None
    assert list(model.tokenizer.vocab[2:]) == frequent[:4]  # after padding and unknown
    assert len(frequent) > 4  # the limit did cut something


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("data.vocabulary.min_count=0", "data.vocabulary.min_count"),
        ("data.vocabulary.max_words=0", "data.vocabulary.max_words"),
        ("data.vocabulary.max_words=many", "data.vocabulary.max_words"),
    ],
)
def test_a_bad_vocabulary_option_names_its_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_train_config("demo", [override])
