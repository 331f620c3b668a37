"""Native Gram rules for attention, convolutions and GroupNorm: exact, and no torch.func fallback.

Each case runs a small encoder through parameters space and compares the accumulated gradients
and the per-sample Grams with the brute-force reference (one autograd call per sample and loss,
float64), with `FallbackWarning` raised as an error so a silent fallback fails the test.
"""

from __future__ import annotations

import warnings

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch import Tensor, nn

from harmonia.harmonization import Harmonizer, attention, conv_grams, layer_grams
from harmonia.harmonization.capture import Capture
from harmonia.harmonization.rules import FallbackWarning, rule_for
from harmonizer_reference import assert_exact, harmonized_grads, make_problem

WIDTH = 8
STEPS = 5


class AttentionEncoder(nn.Module):
    """Linear -> MultiheadAttention (self or cross) -> pooled; options exercise every branch."""

    def __init__(
        self,
        *,
        bias: bool = True,
        kdim: int | None = None,
        cross: bool = False,
        twice: bool = False,
        need_weights: bool = False,
        mask: str = "none",
        frozen_in_proj: bool = False,
    ) -> None:
        super().__init__()
        self.inp = nn.Linear(3, WIDTH)
        self.memory = nn.Linear(3, kdim or WIDTH)
        self.attn = nn.MultiheadAttention(
            WIDTH, 2, bias=bias, kdim=kdim, vdim=kdim, batch_first=True
        )
        if frozen_in_proj:
            for name, p in self.attn.named_parameters():
                if not name.startswith("out_proj"):
                    p.requires_grad_(False)
        self.cross, self.twice, self.need_weights, self.mask = cross, twice, need_weights, mask

    def masks(self, x: Tensor) -> dict[str, Tensor]:
        batch, steps = x.shape[:2]
        causal = torch.triu(torch.ones(steps, steps, dtype=torch.bool), 1)
        padding = torch.zeros(batch, steps, dtype=torch.bool)
        padding[0, -2:] = True  # sample 0 ignores its last two keys
        if self.mask == "causal_bool":
            return {"attn_mask": causal, "is_causal": True}
        if self.mask == "float_and_padding":  # per-head float mask [B * heads, L, S] and padding
            gen = torch.Generator().manual_seed(5)
            bias = torch.randn(batch * 2, steps, steps, generator=gen, dtype=x.dtype)
            ignored = torch.zeros(padding.shape, dtype=x.dtype).masked_fill(padding, -torch.inf)
            return {"attn_mask": bias, "key_padding_mask": ignored}
        return {}

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        memory = self.memory(x.flip(1)) if self.cross else h
        out, weights = self.attn(h, memory, memory, need_weights=self.need_weights, **self.masks(x))
        if self.twice:
            out = out + self.attn(out, out, out, need_weights=False)[0]
        pooled = out.mean(1)
        if weights is not None:  # the returned weights are on the anchor path too
            pooled = pooled + weights.sum((1, 2))[:, None] * out[:, 0]
        return pooled


ATTENTION_CASES = {
    "self": {},
    "no_bias": {"bias": False},
    "cross_kdim": {"cross": True, "kdim": 6},
    "called_twice": {"twice": True},
    "cross_then_self": {"cross": True, "twice": True},  # separate and packed projections mix
    "need_weights": {"need_weights": True, "mask": "float_and_padding"},
    "causal_bool_mask": {"mask": "causal_bool"},
    "sdpa_float_and_padding": {"mask": "float_and_padding"},
    "frozen_in_proj": {"frozen_in_proj": True},
}


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_multihead_attention_is_exact_without_fallback(case: str) -> None:
    torch.manual_seed(0)
    encoder = AttentionEncoder(**ATTENTION_CASES[case])  # type: ignore[arg-type]
    assert_exact(make_problem(encoder=encoder, seed=11, steps=STEPS), native=True)


def test_self_attention_records_one_packed_projection() -> None:
    """Self-attention projects query, key and value in one product, as the module's own forward
    does, so its gradient arrives as one tensor; cross-attention keeps three projections."""
    torch.manual_seed(0)
    encoder = AttentionEncoder(cross=True, twice=True)
    x = torch.randn(4, STEPS, 3)
    capture = Capture(encoder)
    with capture:
        got = encoder(x)
    torch.testing.assert_close(got, encoder(x), rtol=1e-6, atol=1e-6)
    output = attention.PROJECTIONS.index("output")
    recorded = [c.positions for c in capture.calls if c.module is encoder.attn]
    assert recorded == [[0, 1, 2, output], [output, attention.PACKED]]


class TransformerTower(nn.Module):
    """How PyTorch users write it: nn.TransformerEncoder of norm-first layers, first token pooled."""

    def __init__(self, norm_first: bool = True) -> None:
        super().__init__()
        self.inp = nn.Linear(3, WIDTH)
        layer = nn.TransformerEncoderLayer(
            WIDTH, 2, dim_feedforward=16, dropout=0.0, batch_first=True, norm_first=norm_first
        )
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.inp(x))[:, 0]


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_encoder_layers_are_exact_without_fallback(norm_first: bool) -> None:
    torch.manual_seed(1)
    encoder = TransformerTower(norm_first)
    assert_exact(make_problem(encoder=encoder, seed=12, steps=STEPS), native=True)


def test_attention_in_training_mode_with_dropout_runs_natively() -> None:
    """Dropout inside attention cannot be replayed per sample, and the native rule never needs to."""
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(WIDTH, 2, 16, dropout=0.3, batch_first=True)
    encoder = nn.Sequential(nn.Linear(3, WIDTH), layer, nn.Flatten(), nn.Linear(WIDTH * 4, WIDTH))
    problem = make_problem(encoder=encoder, seed=13)
    encoder.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        got, stats = harmonized_grads(problem, Harmonizer("pcgrad", "parameters"))
    assert all(bool(torch.isfinite(g).all()) for g in got)
    assert bool((stats.gram.diagonal(dim1=1, dim2=2) > 0).all())


def test_batch_second_attention_is_a_clear_error_naming_the_layer() -> None:
    layer = nn.TransformerEncoderLayer(WIDTH, 2, 16, dropout=0.0)  # batch_first=False
    encoder = nn.Sequential(nn.Linear(3, WIDTH), layer, nn.Flatten(), nn.Linear(WIDTH * 4, WIDTH))
    assert rule_for(layer.self_attn).__name__ == "functional_gram"
    with pytest.raises(ValueError, match=r"1\.self_attn .*batch_first=True"):
        harmonized_grads(make_problem(encoder=encoder, seed=14), Harmonizer("pcgrad", "parameters"))


CONV_CASES = {
    "conv1d_stride2_dilation2": (nn.Conv1d, {"kernel_size": 3, "stride": 2, "dilation": 2}),
    "conv1d_same_reflect": (nn.Conv1d, {"kernel_size": 4, "padding": "same", "padding_mode": "reflect"}),
    "conv2d_groups_stride": (nn.Conv2d, {"kernel_size": (3, 2), "stride": (2, 1), "groups": 2, "padding": 1}),
    "conv2d_circular_no_bias": (nn.Conv2d, {"kernel_size": 3, "padding": 1, "padding_mode": "circular", "bias": False}),
    "conv3d_full_kernel": (nn.Conv3d, {"kernel_size": 3, "padding": 1, "stride": (1, 2, 2)}),
    "conv3d_replicate_groups": (nn.Conv3d, {"kernel_size": (2, 3, 3), "padding": (0, 1, 1), "padding_mode": "replicate", "groups": 4}),
}  # fmt: skip


class ConvEncoder(nn.Module):
    """A conv over a grid built from the input, GroupNorm, GELU, pooled to the anchor width."""

    def __init__(self, conv: type[nn.Module], options: dict[str, object]) -> None:
        super().__init__()
        self.dims = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[conv]
        self.inp = nn.Linear(3, 4 * 6 ** (self.dims - 1))
        self.conv = conv(4, WIDTH, **options)
        self.norm = nn.GroupNorm(2, WIDTH)

    def forward(self, x: Tensor) -> Tensor:
        batch, steps = x.shape[:2]
        grid = self.inp(x).view(batch, steps, 4, *[6] * (self.dims - 1)).transpose(1, 2)
        if self.dims == 1:
            grid = grid.reshape(batch, 4, steps)
        return F.gelu(self.norm(self.conv(self.layout(grid)))).flatten(2).mean(-1)

    def layout(self, grid: Tensor) -> Tensor:
        return grid


class ChannelsLastConvEncoder(ConvEncoder):
    """`ConvEncoder` with the conv's input, and so its output and gradients, channels-last."""

    def layout(self, grid: Tensor) -> Tensor:
        formats = {2: torch.channels_last, 3: torch.channels_last_3d}
        return grid.contiguous(memory_format=formats[self.dims])


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_convolutions_are_exact_without_fallback(case: str) -> None:
    torch.manual_seed(3)
    conv, options = CONV_CASES[case]
    assert_exact(make_problem(encoder=ConvEncoder(conv, options), seed=15, steps=6), native=True)


@pytest.mark.parametrize("case", ["conv2d_groups_stride", "conv3d_full_kernel"])
def test_channels_last_convolutions_are_exact(case: str) -> None:
    """VATT's video stem runs channels-last (the clip is decoded ``[T, H, W, C]``)."""
    torch.manual_seed(3)
    conv, options = CONV_CASES[case]
    encoder = ChannelsLastConvEncoder(conv, options)
    assert_exact(make_problem(encoder=encoder, seed=15, steps=6), native=True)


def test_conv_weight_gradients_chunk_over_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small materialization budget splits the samples into chunks; the Gram is unchanged."""

    torch.manual_seed(4)
    conv, options = CONV_CASES["conv2d_groups_stride"]
    monkeypatch.setattr(layer_grams, "MATERIALIZE_BUDGET", 1)
    assert_exact(make_problem(encoder=ConvEncoder(conv, options), seed=16, steps=6), native=True)


def test_group_norm_without_affine_and_layer_norm_without_bias_are_exact() -> None:
    torch.manual_seed(5)
    encoder = ConvEncoder(nn.Conv2d, {"kernel_size": 3, "padding": 1})
    encoder.norm = nn.GroupNorm(4, WIDTH, affine=False)
    assert_exact(make_problem(encoder=encoder, seed=17, steps=6), native=True)


class DirectParameters(nn.Module):
    """Bare parameters on the encoder, used the ways transformers use them (or, with ``used_as``
    "matmul", in a way only torch.func covers)."""

    def __init__(self, used_as: str = "broadcasts") -> None:
        super().__init__()
        self.used_as = used_as
        self.token = nn.Parameter(torch.randn(WIDTH))
        self.positions = nn.Parameter(torch.randn(4 + 1, WIDTH))
        self.shift = nn.Parameter(torch.randn(1, 1, WIDTH))
        self.inp = nn.Linear(3, WIDTH)

    def forward(self, x: Tensor) -> Tensor:
        token = self.token.view(1, 1, -1).expand(len(x), -1, -1)  # open_clip's class token
        h = torch.cat([token, self.inp(x)], 1) + self.positions  # and its position table
        h = torch.sub(torch.tanh(h), self.shift, alpha=0.5)
        h = h - self.shift.expand(len(x), 1, -1)  # a second use of the same parameter
        if self.used_as == "matmul":
            h = h @ torch.diag(self.token)
        return h.mean(1)


def test_broadcast_parameters_are_exact_without_fallback() -> None:
    torch.manual_seed(6)
    assert_exact(make_problem(encoder=DirectParameters(), seed=18), native=True)


def test_a_fallback_is_reported_once_with_the_module_and_its_cost() -> None:
    torch.manual_seed(7)
    problem = make_problem(encoder=DirectParameters("matmul"), seed=19)
    harmonizer = Harmonizer("pcgrad", "parameters")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            harmonized_grads(problem, harmonizer)
    fallbacks = [w for w in caught if issubclass(w.category, FallbackWarning)]
    assert len(fallbacks) == 1
    message = str(fallbacks[0].message)
    assert "DirectParameters" in message and "token, positions, shift" in message
    assert " ms for 5 samples" in message
    assert_exact(problem)  # and it is still exact


def test_the_benchmarks_torch_transformer_workload_is_native_and_exact() -> None:
    """benchmarks/torch_transformer.py (nn.TransformerEncoder, open_clip-style tokens): per-sample
    Grams equal one autograd call per sample and loss, with no fallback."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_transformer.py"
    spec = importlib.util.spec_from_file_location("torch_transformer", path)
    assert spec is not None and spec.loader is not None
    workload = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workload)
    model, batch = workload.build(3)
    model.double()
    batch = {m: x.double() if x.is_floating_point() else x for m, x in batch.items()}
    tower = model.towers["video"]
    harmonizer = Harmonizer("pcgrad", "parameters")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)
        with harmonizer.capture(tower):
            losses, anchor = model(batch)
        stats = harmonizer.backward(losses, anchor, retain_graph=True)
    params = [p for p in tower.parameters() if p.requires_grad]
    u = [torch.autograd.grad(loss, anchor, retain_graph=True)[0] for loss in losses.values()]
    per_sample = torch.stack(
        [
            torch.stack(
                [
                    torch.cat(
                        [
                            (g if g is not None else torch.zeros_like(p)).flatten()
                            for g, p in zip(
                                torch.autograd.grad(
                                    anchor[i], params, uk[i], retain_graph=True, allow_unused=True
                                ),
                                params,
                                strict=True,
                            )
                        ]
                    )
                    for uk in u
                ]
            )
            for i in range(len(anchor))
        ]
    )
    want = per_sample @ per_sample.transpose(1, 2)
    assert torch.allclose(stats.gram, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize(
    ("encoder", "steps", "budget", "skipped"),
    [
        (lambda: TransformerTower(), STEPS, None, True),
        (lambda: ConvEncoder(nn.Conv3d, {"kernel_size": 3, "padding": 1}), 6, None, True),
        (lambda: ConvEncoder(nn.Conv3d, {"kernel_size": 3, "padding": 1}), 6, 0, True),
        (lambda: AttentionEncoder(cross=True, kdim=6, need_weights=True), STEPS, None, True),
        (lambda: DirectParameters(), 4, None, True),
        (lambda: DirectParameters("matmul"), 4, None, True),  # torch.func's gradients are kept
        (lambda: DirectParameters("matmul"), 4, 0, False),  # not kept: the full backward
    ],
    ids=[
        "transformer",
        "conv",
        "conv_unkept",
        "cross_attention",
        "broadcast",
        "fallback",
        "fallback_unkept",
    ],
)
def test_the_final_backward_skips_the_anchor_encoder_when_every_module_is_covered(
    encoder: object,
    steps: int,
    budget: int | None,
    skipped: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The encoder's realigned gradient comes from the per-loss passes and the per-sample
    gradients the Gram rules kept (none with a budget of 0); still exact. A kept module's
    output gradients are freed once its Gram is formed, the others' stay for the realignment."""
    from harmonia.harmonization import harmonizer as module

    formed = []
    released = []
    original = module.encoder_gradients

    def spy(traced: list[layer_grams.Traced], kept: layer_grams.Kept, scale: Tensor) -> object:
        for t in traced:
            freed = all(g is None for g in t.grads)
            released.append(freed)
            assert freed == (t.call.module in kept.by_module), t.call.name
        formed.append(original(traced, kept, scale))
        return formed[-1]

    monkeypatch.setattr(module, "encoder_gradients", spy)
    if budget is not None:
        monkeypatch.setattr(layer_grams, "KEEP_BUDGET", budget)
    torch.manual_seed(8)
    problem = make_problem(encoder=encoder(), seed=20, steps=steps)  # type: ignore[operator]
    assert_exact(problem)
    assert formed and (formed[-1] is not None) == skipped
    if isinstance(problem.encoder, ConvEncoder):  # a conv and a GroupNorm, kept unless budget 0
        assert any(released) == (budget is None)


@settings(max_examples=40, deadline=None)
@given(
    dims=st.integers(1, 3),
    groups=st.sampled_from([1, 2]),
    channels=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    padding=st.integers(0, 1),
    mode=st.sampled_from(["zeros", "reflect", "circular", "replicate"]),
    channels_last=st.booleans(),
    chunked=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_per_sample_conv_weight_gradients_match_autograd(
    dims: int,
    groups: int,
    channels: tuple[int, int],
    kernel: int,
    stride: int,
    dilation: int,
    padding: int,
    mode: str,
    channels_last: bool,
    chunked: bool,
    seed: int,
) -> None:
    """The im2col routes (`conv_grams.patches`, position-major for channels-last) against one
    autograd call per sample, float64; ``chunked`` takes one sample per chunk, so the patch
    buffer is refilled by each."""
    torch.manual_seed(seed)
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    conv = cls(
        groups * channels[0],
        groups * channels[1],
        kernel,
        stride,
        padding,
        dilation,
        groups,
        padding_mode=mode,
    ).double()
    x = torch.randn(3, groups * channels[0], *[7] * dims, dtype=torch.float64)
    formats = {2: torch.channels_last, 3: torch.channels_last_3d}
    if channels_last and dims in formats:  # the position-major route
        x = x.to(memory_format=formats[dims])
    y = conv(x)
    d = [torch.randn_like(y) for _ in range(2)]
    with pytest.MonkeyPatch.context() as patch:
        if chunked:
            patch.setattr(conv_grams, "COLUMNS_BUDGET", 1)
        got = conv_grams.conv_weight_grads(conv, x, d)
    want = torch.stack(
        [
            torch.stack(
                [
                    torch.autograd.grad(conv(x[i : i + 1]), conv.weight, dk[i : i + 1])[0].flatten()
                    for dk in d
                ]
            )
            for i in range(3)
        ]
    )
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 5)),
    seed=st.integers(0, 2**16),
)
def test_live_rows_are_the_rows_with_any_nonzero_or_nan_entry(
    shape: tuple[int, int, int], seed: int
) -> None:
    """`layer_grams.live_rows` against the plain definition, with negative-only rows, signed zeros
    and NaN (a NaN row must stay: dropping it would hide the NaN from the Gram)."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(shape, generator=gen)
    d[torch.rand(shape, generator=gen) < 0.6] = 0.0
    d[torch.rand(shape, generator=gen) < 0.1] = -0.0
    d[torch.rand(shape, generator=gen) < 0.2] = -1.0
    d[torch.rand(shape, generator=gen) < 0.05] = torch.nan
    want = (d.ne(0) | d.isnan()).any(-1).any(0)
    assert torch.equal(layer_grams.live_rows(d), want)


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(1, 4),
    tasks=st.integers(1, 3),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_stacked_gram_is_the_per_sample_gram_of_flattened_gradients(
    batch: int, tasks: int, shape: list[int], seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(batch, tasks, *shape, generator=gen, dtype=torch.float64)
    want = torch.stack(
        [
            torch.stack([(grads[b, k] * grads[b, m]).sum() for m in range(tasks)])
            for b in range(batch)
            for k in range(tasks)
        ]
    ).view(batch, tasks, tasks)
    torch.testing.assert_close(layer_grams.stacked_gram(grads), want, rtol=1e-12, atol=1e-12)
    other = torch.randn(batch, tasks, 3, generator=gen, dtype=torch.float64)
    both = layer_grams.params_gram({grads: grads, other: other})
    torch.testing.assert_close(both, want + layer_grams.stacked_gram(other), rtol=1e-12, atol=1e-12)
