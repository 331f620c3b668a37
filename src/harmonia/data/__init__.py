"""AV-MNIST-T: a tri-modal (video, audio, text) dataset of moving handwritten digits, noisy by design.

Build it (`build_dataset` / `harmonia data build`), then read it back with the random-access
`ShardDataset` + `make_loader` or the streaming `StreamingDataset` + `make_stream_loader`;
both yield the batch dict of docs/data.md ("Read it back") through `collate`. Labels are only in the index
(`load_labels`), for evaluation.
"""

from __future__ import annotations

from harmonia.data.builder import build_dataset
from harmonia.data.captions import digits_in_caption, motions_in_caption
from harmonia.data.config import BuildConfig
from harmonia.data.describe import describe
from harmonia.data.index import load_labels, load_media_spec, load_summary, read_index
from harmonia.data.mapstyle import ShardDataset, make_loader
from harmonia.data.samples import collate, decode_members
from harmonia.data.source_data import SourceData
from harmonia.data.sources import resolve_source
from harmonia.data.spec import DIGIT_WORDS, MOTIONS, MediaSpec
from harmonia.data.streaming import StreamingDataset, make_stream_loader

__all__ = [
    "DIGIT_WORDS",
    "MOTIONS",
    "BuildConfig",
    "MediaSpec",
    "ShardDataset",
    "SourceData",
    "StreamingDataset",
    "build_dataset",
    "collate",
    "decode_members",
    "describe",
    "digits_in_caption",
    "load_labels",
    "load_media_spec",
    "load_summary",
    "make_loader",
    "make_stream_loader",
    "motions_in_caption",
    "read_index",
    "resolve_source",
]
