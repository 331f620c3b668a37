"""VATT forward: shapes and dtypes per size, masks, DropToken modes, backbones, anchor encoder."""

from __future__ import annotations

import copy

import pytest
import torch

from harmonia.errors import ConfigError
from harmonia.models import VATT, ModelConfig, WordTokenizer
from harmonia.models.droptoken import take
from harmonia.models.synthetic import WORDS, random_batch


@pytest.fixture(scope="module")
def words() -> WordTokenizer:
    return WordTokenizer.build([" ".join(WORDS)])


def tiny(words: WordTokenizer, **overrides: object) -> VATT:
    torch.manual_seed(0)
    return VATT(ModelConfig.named("tiny", **overrides), words)


def check_output(model: VATT, batch_size: int, k: int, dtype: torch.dtype) -> None:
    cfg = model.config
    out = model(random_batch(cfg, batch_size, captions=k))
    width = cfg.backbone.width
    assert out.anchor.shape == (batch_size, width) and out.anchor.dtype == dtype
    assert out.anchor is out.features[cfg.anchor]
    assert out.features["audio"].shape == (batch_size, width)
    assert out.features["text"].shape == (batch_size, k, width)
    for space, sc in cfg.spaces.items():
        assert set(out.embeddings[space]) == set(sc.heads)
        for name, emb in out.embeddings[space].items():
            lead = (batch_size, k) if name == "text" else (batch_size,)
            assert emb.shape == (*lead, sc.dim) and emb.dtype == dtype
            torch.testing.assert_close(emb.norm(dim=-1), torch.ones(lead, dtype=dtype))
    assert out.valid["text"].shape == (batch_size, k) and out.valid["text"].dtype == torch.bool
    assert out.valid["video"].shape == (batch_size,) and bool(out.valid["video"].all())


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_shapes_and_dtypes_per_size(size: str, words: WordTokenizer) -> None:
    model = VATT(ModelConfig.named(size), words).eval()
    with torch.no_grad():
        check_output(model, batch_size=3, k=2, dtype=torch.float32)


def test_base_size_forward_on_one_sample(words: WordTokenizer) -> None:
    cfg = ModelConfig.named("base")
    assert (cfg.backbone.width, cfg.backbone.depth, cfg.backbone.heads) == (768, 12, 12)
    model = VATT(cfg, words).eval()
    with torch.no_grad():
        check_output(model, batch_size=1, k=1, dtype=torch.float32)


def test_float64_model_gives_float64_outputs(words: WordTokenizer) -> None:
    model = tiny(words).double().eval()
    with torch.no_grad():
        check_output(model, batch_size=2, k=3, dtype=torch.float64)


def test_modality_specific_backbones(words: WordTokenizer) -> None:
    model = tiny(words, backbone={"kind": "modality_specific"})
    assert set(model.backbones) == {"video", "audio", "text"}
    shared = tiny(words)
    assert set(shared.backbones) == {"shared"}
    assert model.backbone_of("audio") is not model.backbone_of("video")
    assert shared.backbone_of("audio") is shared.backbone_of("video")
    check_output(model.eval(), batch_size=2, k=1, dtype=torch.float32)


def test_missing_inputs_are_masked(words: WordTokenizer) -> None:
    model = tiny(words).eval()
    batch = random_batch(model.config, 4, captions=2)
    batch["audio"][1] = 0.0
    batch["video"][3] = 0
    batch["text"] = [["one two", "three"], ["", "  "], [], ["four"]]
    out = model(batch)
    assert out.valid["audio"].tolist() == [True, False, True, True]
    assert out.valid["video"].tolist() == [True, True, True, False]
    assert out.valid["text"].tolist() == [
        [True, True],
        [False, False],
        [False, False],
        [True, False],
    ]
    for emb in (e for space in out.embeddings.values() for e in space.values()):
        assert torch.isfinite(emb).all()


def test_droptoken_only_in_training_mode(words: WordTokenizer) -> None:
    model = tiny(words, modalities={"video": {"drop_token": 0.5}, "audio": {"drop_token": 0.5}})
    batch = random_batch(model.config, 2)
    video = model.tokenizer_of("video")
    inputs = video.prepare(batch["video"], torch.device("cpu"), torch.float32).inputs
    model.train()
    assert video(inputs)[0].shape[1] == 1 + 32
    torch.manual_seed(1)
    first = model(batch).anchor
    torch.manual_seed(2)
    assert not torch.allclose(first, model(batch).anchor)
    model.eval()
    assert video(inputs)[0].shape[1] == 1 + 64
    torch.manual_seed(1)
    once = model(batch).anchor
    torch.manual_seed(2)
    assert torch.equal(once, model(batch).anchor)


@pytest.mark.parametrize("stem", [True, False])
def test_tokens_are_dropped_before_the_projection_with_the_same_result(
    words: WordTokenizer, stem: bool
) -> None:
    """Tokenizers project only the kept patches; that equals projecting all and dropping."""
    video_cfg: dict[str, object] = (
        {"drop_token": 0.5} if stem else {"drop_token": 0.5, "stem": None}
    )
    model = tiny(words, modalities={"video": video_cfg, "audio": {"drop_token": 0.5}}).train()
    batch = random_batch(model.config, 3)
    for name in ("video", "audio"):
        tokenizer = model.tokenizer_of(name)
        inputs = tokenizer.prepare(batch[name], torch.device("cpu"), torch.float32).inputs
        torch.manual_seed(4)
        got, _ = tokenizer(inputs)
        torch.manual_seed(4)
        tokenizer.drop.eval()  # every token, then the same draw as in training
        everything, _ = tokenizer(inputs)
        tokenizer.drop.train()
        keep = tokenizer.drop.keep(3, everything.shape[1] - 1, everything.device)
        assert keep is not None
        expected = torch.cat([everything[:, :1], take(everything[:, 1:], keep)], 1)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected)


def test_anchor_encoder_holds_exactly_the_parameters_behind_the_anchor(
    words: WordTokenizer,
) -> None:
    model = tiny(words)
    out = model(random_batch(model.config, 2))
    (out.anchor * torch.randn_like(out.anchor)).sum().backward()
    with_grad = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    encoder = {id(p) for p in model.anchor_encoder().parameters()}
    assert with_grad == encoder
    assert model.anchor_encoder() is model.anchor_encoder()
    names = {n for n, _ in model.named_parameters()}
    assert not any("_encoders" in n for n in names)


def test_encode_gives_the_forward_embeddings(words: WordTokenizer) -> None:
    model = tiny(words).eval()
    batch = random_batch(model.config, 3, captions=2)
    out = model(batch)
    torch.testing.assert_close(model.encode("audio", batch["audio"]), out.embeddings["va"]["audio"])
    torch.testing.assert_close(
        model.encode("video", batch["video"], space="vt"), out.embeddings["vt"]["video"]
    )
    torch.testing.assert_close(model.encode("text", batch["text"]), out.embeddings["vt"]["text"])
    one = model.encode("text", [c[0] for c in batch["text"]])
    torch.testing.assert_close(one, out.embeddings["vt"]["text"][:, 0])
    with pytest.raises(ConfigError, match="say which"):
        model.encode("video", batch["video"])
    with pytest.raises(ConfigError, match="no embedding in space"):
        model.encode("audio", batch["audio"], space="vt")


def test_a_fourth_modality_is_a_config_change(words: WordTokenizer) -> None:
    depth = {
        "kind": "video",
        "shape": [8, 32, 32, 1],
        "patch": [4, 16, 16],
        "mean": 0.0,
        "std": 1.0,
    }
    model = tiny(
        words,
        modalities={"depth": depth},
        spaces={"vd": {"dim": 16, "heads": {"video": {"source": "va"}, "depth": {"kind": "mlp"}}}},
    )
    batch = random_batch(model.config, 2)
    assert batch["depth"].shape == (2, 8, 32, 32, 1)
    out = model(batch)
    assert out.embeddings["vd"]["depth"].shape == (2, 16)
    assert out.features["depth"].shape == (2, 64)


def test_batch_that_does_not_fit_the_config_names_the_field(words: WordTokenizer) -> None:
    model = tiny(words)
    batch = random_batch(model.config, 2)
    batch["video"] = batch["video"][:, :4]
    with pytest.raises(ConfigError, match=r"modalities\.video\.shape"):
        model(batch)
    with pytest.raises(ConfigError, match="anchor"):
        model({"audio": batch["audio"]})


def test_parameter_counts_per_size(words: WordTokenizer) -> None:
    counts = {s: VATT(ModelConfig.named(s), words).num_parameters() for s in ("tiny", "small")}
    assert 100_000 < counts["tiny"] < 1_000_000
    assert counts["tiny"] < counts["small"]


def test_video_patches_are_normalized_voxel_blocks(words: WordTokenizer) -> None:
    vatt_patches = {"mean": 0.2, "patch": [2, 8, 8], "stem": None}  # VATT's linear front end
    model = tiny(words, modalities={"video": vatt_patches})
    video = random_batch(model.config, 2)["video"]
    patches = model.tokenizer_of("video").prepare(video, torch.device("cpu"), torch.float64).inputs
    assert patches.shape == (2, 64, 2 * 8 * 8 * 3)
    for t, h, w in ((0, 0, 0), (1, 2, 3), (3, 3, 1)):
        block = video[1, 2 * t : 2 * t + 2, 8 * h : 8 * h + 8, 8 * w : 8 * w + 8].double()
        want = (block / 255 - 0.2) / 0.3
        torch.testing.assert_close(patches[1, (t * 4 + h) * 4 + w], want.flatten())
    as_float = model.tokenizer_of("video").prepare(
        video.double() / 255, torch.device("cpu"), torch.float64
    )
    torch.testing.assert_close(as_float.inputs, patches)


def test_copies_keep_their_encoders_tied_to_their_own_modules(words: WordTokenizer) -> None:
    model = tiny(words)
    twin = copy.deepcopy(model)
    assert twin.anchor_encoder().backbone is twin.backbones["shared"]
    assert twin.anchor_encoder().tokenizer is twin.tokenizers["video"]
    assert twin.anchor_encoder().backbone is not model.backbones["shared"]
