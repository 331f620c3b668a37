"""WordTokenizer: building, encoding, padding and truncation, JSON round trip, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmonia.errors import CheckpointError
from harmonia.models import WordTokenizer
from harmonia.models.vocab import PAD, UNK


def test_build_orders_words_by_frequency_after_specials() -> None:
    tok = WordTokenizer.build(["The digit 3 moves left.", "the DIGIT 7 moves up", "a 3"])
    assert tok.vocab[:2] == (PAD, UNK)
    assert tok.vocab[2:6] == ("3", "digit", "moves", "the")
    assert WordTokenizer.build(["a a b c"], min_count=2).vocab == (PAD, UNK, "a")
    assert len(WordTokenizer.build(["a b c d"], max_words=2)) == 4


def test_encode_pads_truncates_and_maps_unknown_words() -> None:
    tok = WordTokenizer.build(["one two three"])
    ids = tok.encode(["one two", "three zebra one two", ""], max_length=3)
    assert ids.shape == (3, 3)
    assert ids[0].tolist() == [tok.index["one"], tok.index["two"], tok.pad_id]
    assert ids[1].tolist() == [tok.index["three"], tok.unk_id, tok.index["one"]]
    assert ids[2].tolist() == [tok.pad_id] * 3
    assert tok.encode(["", " "], max_length=5).shape == (2, 0)
    assert tok.decode(ids[0].tolist()) == "one two"


@given(captions=st.lists(st.text(max_size=30), max_size=8))
def test_save_load_round_trip(
    captions: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    tok = WordTokenizer.build(captions)
    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    tok.save(path)
    loaded = WordTokenizer.load(path)
    assert loaded == tok
    assert loaded.encode(captions, 7).tolist() == tok.encode(captions, 7).tolist()


def test_bad_vocabulary_files_raise_checkpoint_errors(tmp_path: Path) -> None:
    path = tmp_path / "vocab.json"
    good = WordTokenizer.build(["a b"]).to_dict()
    cases = {
        "not valid JSON": "{",
        "format/version": json.dumps({**good, "version": 2}),
        "special tokens": json.dumps({**good, "vocab": ["a", "b"]}),
        "more than once": json.dumps({**good, "vocab": [PAD, UNK, "a", "a"]}),
        "list of strings": json.dumps({**good, "vocab": [PAD, UNK, 3]}),
    }
    for message, text in cases.items():
        path.write_text(text)
        with pytest.raises(CheckpointError, match=message):
            WordTokenizer.load(path)
