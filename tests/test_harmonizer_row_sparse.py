"""row_sparse: routed F.linear / scaled_dot_product_attention equal autograd's own, dead rows or not."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from torch import nn
from torch.autograd.graph import get_gradient_edge

from harmonia.harmonization import Harmonizer, row_sparse
from harmonia.harmonization.capture import Capture

DT = torch.float64


def _dead(grad: torch.Tensor, keep: list[int], dim: int) -> torch.Tensor:
    """``grad`` with every index of ``dim`` outside ``keep`` zeroed."""
    mask = torch.zeros(grad.shape[dim], dtype=torch.bool)
    mask[keep] = True
    shape = [1] * grad.dim()
    shape[dim] = -1
    return grad * mask.view(shape)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    rows=st.integers(1, 9),
    live=st.lists(st.integers(0, 8), max_size=9),
    bias=st.booleans(),
)
def test_linear_matches_autograd_for_any_row_sparse(
    seed: int, rows: int, live: list[int], bias: bool
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(3, rows, 5, dtype=DT, generator=gen, requires_grad=True)
    w = torch.randn(4, 5, dtype=DT, generator=gen, requires_grad=True)
    b = torch.randn(4, dtype=DT, generator=gen, requires_grad=True) if bias else None
    grad = _dead(torch.randn(3, rows, 4, dtype=DT, generator=gen), [i for i in live if i < rows], 1)
    wanted = [t for t in (x, w, b) if t is not None]
    reference = torch.autograd.grad(F.linear(x, w, b), wanted, grad)
    with row_sparse.RowSparse():
        out = F.linear(x, w, b)
    assert type(out.grad_fn).__name__ == "_LinearBackward"
    for got, ref in zip(torch.autograd.grad(out, wanted, grad), reference, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_a_nan_row_is_live() -> None:
    x = torch.randn(16, 3, dtype=DT, requires_grad=True)
    w = torch.randn(2, 3, dtype=DT, requires_grad=True)
    grad = torch.zeros(16, 2, dtype=DT)
    grad[5, 1] = torch.nan
    with row_sparse.RowSparse():
        out = F.linear(x, w)
    dx, dw = torch.autograd.grad(out, (x, w), grad)
    assert dx[5].isnan().all() and dw[1].isnan().all()
    assert (dx[torch.arange(16) != 5] == 0).all()


def test_a_pass_to_layer_outputs_skips_the_weight_gradient_and_a_pass_to_weights_does_not() -> None:
    x = torch.randn(6, 3, dtype=DT, requires_grad=True)
    w1, w2 = (torch.randn(3, 3, dtype=DT, requires_grad=True) for _ in range(2))
    with row_sparse.RowSparse():
        hidden = F.linear(x, w1)
        out = F.linear(torch.tanh(hidden), w2)
    calls: list[bool] = []
    real = row_sparse._will_run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(row_sparse, "_will_run", lambda edge: calls.append(real(edge)) or calls[-1])
        torch.autograd.grad(out.sum(), [get_gradient_edge(hidden)], retain_graph=True)
    # the second layer: its input is wanted, its weight is not (nor a bias: absent)
    assert calls[:2] == [True, False]
    (dw1,) = torch.autograd.grad(out.sum(), [w1], retain_graph=True)
    torch.testing.assert_close(
        dw1, torch.autograd.grad(F.linear(torch.tanh(x @ w1.T), w2).sum(), [w1])[0]
    )


@pytest.mark.parametrize("mask", [None, "bool", "float", "causal"])
@pytest.mark.parametrize("live", [[0], [1, 4], list(range(9))])
@pytest.mark.parametrize("sources", [9, 5])
def test_attention_matches_autograd(mask: str | None, live: list[int], sources: int) -> None:
    gen = torch.Generator().manual_seed(len(live) + sources)
    q = torch.randn(3, 2, 9, 4, dtype=DT, generator=gen, requires_grad=True)
    k = torch.randn(3, 2, sources, 4, dtype=DT, generator=gen, requires_grad=True)
    v = torch.randn(3, 2, sources, 6, dtype=DT, generator=gen, requires_grad=True)
    kwargs: dict[str, object] = {}
    if mask == "bool":
        allowed = torch.rand(9, sources, generator=gen) > 0.3
        allowed[:, 0] = True
        kwargs["attn_mask"] = allowed
    elif mask == "float":
        kwargs["attn_mask"] = torch.randn(3, 1, 9, sources, dtype=DT, generator=gen)
    elif mask == "causal":
        kwargs["is_causal"] = True
    grad = _dead(torch.randn(3, 2, 9, 6, dtype=DT, generator=gen), live, 2)
    reference = torch.autograd.grad(
        F.scaled_dot_product_attention(q, k, v, **kwargs), (q, k, v), grad
    )
    with row_sparse.RowSparse():
        out = F.scaled_dot_product_attention(q, k, v, **kwargs)
    assert type(out.grad_fn).__name__ == "_AttentionBackward"
    for got, ref in zip(torch.autograd.grad(out, (q, k, v), grad), reference, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_live_query_gradients_keep_the_layout_of_packed_projections() -> None:
    packed = torch.randn(2, 8, 3 * 12, dtype=DT, requires_grad=True)
    q, k, v = (t.view(2, 8, 3, 4).transpose(1, 2) for t in packed.chunk(3, -1))
    with row_sparse.RowSparse():
        out = F.scaled_dot_product_attention(q, k, v)
    grad = _dead(torch.randn(out.shape, dtype=DT), [0], 2)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)
    for g, t in zip((dq, dk, dv), (q, k, v), strict=True):
        order = sorted(range(4), key=lambda i: -t.stride(i))
        assert sorted(range(4), key=lambda i: -g.stride(i)) == order
    (whole,) = torch.autograd.grad(
        F.scaled_dot_product_attention(q, k, v), packed, grad, retain_graph=True
    )
    torch.testing.assert_close(torch.autograd.grad(out, packed, grad)[0], whole)


def test_double_backward_through_routed_calls() -> None:
    x = torch.randn(2, 5, 3, dtype=DT, requires_grad=True)
    w = torch.randn(3, 3, dtype=DT, requires_grad=True)

    def routed(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        with row_sparse.RowSparse():
            h = F.linear(x, w)
            q = h.view(2, 1, 5, 3)
            return F.scaled_dot_product_attention(q, q, q)[..., 0, :]  # one live query

    assert torch.autograd.gradcheck(routed, (x, w))
    assert torch.autograd.gradgradcheck(routed, (x, w))


def test_outputs_may_be_changed_in_place() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    layer = nn.Linear(3, 3)
    with row_sparse.RowSparse():
        out = layer(x).relu_()
    out.sum().backward()
    assert x.grad is not None


def test_autocast_dropout_and_no_grad_take_the_built_in_route() -> None:
    x = torch.randn(2, 1, 4, 3, requires_grad=True)
    layer = nn.Linear(3, 3)
    with row_sparse.RowSparse():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert type(layer(x).grad_fn).__name__ != "_LinearBackward"
        dropped = F.scaled_dot_product_attention(x, x, x, dropout_p=0.5)
        assert type(dropped.grad_fn).__name__ != "_AttentionBackward"
        with torch.no_grad():
            assert layer(x).grad_fn is None


class _Pooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.block = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.inp(x))[:, 0]


def test_capture_routes_only_inside_the_encoder_and_only_while_recording() -> None:
    encoder, outside = _Pooled(), nn.Linear(8, 2)
    x = torch.randn(4, 5, 3)
    with Capture(encoder):
        inside = encoder.inp(x)  # a submodule called on its own: not the encoder's call
        anchor = encoder(x)
        head = outside(anchor)
    assert type(inside.grad_fn).__name__ != "_LinearBackward"
    assert type(head.grad_fn).__name__ != "_LinearBackward"
    names, seen, stack = set(), set(), [anchor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            names.add(type(node).__name__)
            stack += [n for n, _ in node.next_functions]
    assert {"_LinearBackward", "_AttentionBackward"} <= names
    with Capture(encoder, record=False):
        plain = encoder.inp(x)
    assert type(plain.grad_fn).__name__ != "_LinearBackward"


def test_the_mode_is_left_when_the_encoder_raises() -> None:
    encoder = _Pooled()
    with pytest.raises(RuntimeError), Capture(encoder):
        encoder(torch.randn(4, 5, 7))  # wrong width
    out = nn.Linear(3, 3)(torch.randn(2, 3, requires_grad=True))
    assert type(out.grad_fn).__name__ != "_LinearBackward"


def test_harmonized_step_is_unchanged_by_row_sparse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same parameters-space step with live rows and with every route forced dense."""
    torch.manual_seed(0)
    encoder, heads = _Pooled().double(), nn.Linear(8, 4).double()
    x = torch.randn(6, 5, 3, dtype=DT)
    targets = torch.randn(6, 4, dtype=DT)

    def step() -> list[torch.Tensor]:
        encoder.zero_grad(set_to_none=True)
        harmonizer = Harmonizer("pcgrad", "parameters")
        with harmonizer.capture(encoder):
            anchor = encoder(x)
        out = heads(anchor)
        losses = {
            "a": (out[:, :2] - targets[:, :2]).pow(2).sum(),
            "b": (out @ targets.T).logsumexp(1).sum(),
        }
        harmonizer.backward(losses, anchor)
        return [p.grad.clone() for p in encoder.parameters()]  # type: ignore[union-attr]

    sparse = step()
    monkeypatch.setattr(row_sparse, "LINEAR_SPARSE", -1.0)
    monkeypatch.setattr(row_sparse, "ATTENTION_SPARSE", -1.0)
    for got, ref in zip(sparse, step(), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
