"""Small models, coupled contrastive losses and brute-force references for the Harmonizer tests.

Everything here is deliberately naive: per-sample gradients come from one autograd call per
sample and loss, and surgery runs on the flat vectors with the published algorithms written out
directly (no Gram-matrix tricks), so the tests compare two independent computations.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import hypothesis.strategies as st
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given
from scipy.optimize import nnls
from torch import Tensor, nn

from harmonia.harmonization import Harmonizer, HarmonizerStats
from harmonia.harmonization.methods.base import random_orders
from harmonia.harmonization.rules import FallbackWarning

# ----------------------------------------------------------------------------- vectors


def random_vectors(batch: int, tasks: int, dim: int, seed: int, scale: float = 1.0) -> Tensor:
    """Per-sample gradients ``[B, M, dim]`` (float64) for method-level tests."""
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(batch, tasks, dim, dtype=torch.float64, generator=gen)


def gram_of(vectors: Tensor) -> Tensor:
    return vectors @ vectors.transpose(1, 2)


VECTOR_CASES = given(
    seed=st.integers(0, 10_000),
    tasks=st.integers(2, 4),
    dim=st.integers(1, 6),
    scale=st.floats(1e-3, 1e3),
)
"""Hypothesis cases for method tests: includes rank-deficient ones (dim < tasks)."""


# ----------------------------------------------------------------------------- models


class Attention(nn.Module):
    def __init__(self, width: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, w))


class Encoder(nn.Module):
    """A one-block pre-LN transformer over ``[B, T, d_in]`` with a pooled token: ``[B, width]``.

    ``variant`` picks which layer kinds hold parameters: "transformer" uses only the natively
    covered layers (Linear, LayerNorm, Embedding); "fallback" adds a directly registered position
    parameter (broadcast over the batch), a Conv1d and an RMSNorm, which all went through the
    torch.func fallback before their native rules existed.
    """

    def __init__(self, d_in: int, steps: int, width: int = 8, variant: str = "transformer") -> None:
        super().__init__()
        self.variant = variant
        self.inp = nn.Linear(d_in, width)
        self.pos = nn.Embedding(steps, width)
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width)
        self.norm2: nn.Module = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        if variant == "fallback":
            self.extra = nn.Parameter(0.3 * torch.randn(steps, width))
            self.conv = nn.Conv1d(width, width, kernel_size=3, padding=1)
            self.norm2 = nn.RMSNorm(width)
        self.out = nn.LayerNorm(width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        h = self.inp(x) + self.pos(torch.arange(t).expand(b, t))
        if self.variant == "fallback":
            h = h + self.extra
            h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        h = h + self.attn(self.norm1(h))
        h = h + self.fc2(F.gelu(self.fc1(self.norm2(h))))
        return self.out(h).mean(1)


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.2) -> Tensor:
    """Symmetric InfoNCE with in-batch negatives (couples every sample to the whole batch)."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@dataclass
class Problem:
    """An anchor encoder, one head and one target tower per loss, and a fixed batch.

    With ``shared`` the encoder also encodes the first target modality (a modality-agnostic
    backbone called twice in one forward): that call's gradient must stay plain.
    """

    encoder: nn.Module
    heads: nn.ModuleList
    towers: nn.ModuleList
    x: Tensor
    targets: list[Tensor]
    names: list[str]
    shared: bool = False
    scales: list[float] = field(default_factory=list)

    def modules(self) -> list[nn.Module]:
        return [self.encoder, self.heads, self.towers]

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules() for p in m.parameters() if p.requires_grad]

    def forward(self) -> tuple[dict[str, Tensor], Tensor]:
        anchor = self.encoder(self.x)
        losses = {}
        for k, name in enumerate(self.names):
            if self.shared and k == 0:
                other = self.encoder(self.targets[0])[: len(anchor)]
            else:
                other = self.towers[k](self.targets[k])
            scale = self.scales[k] if self.scales else 1.0
            losses[name] = scale * info_nce(self.heads[k](anchor), other)
        return losses, anchor

    def permuted(self, order: Tensor) -> Problem:
        return Problem(
            self.encoder,
            self.heads,
            self.towers,
            self.x[order],
            [t[order] for t in self.targets],
            self.names,
            self.shared,
            self.scales,
        )


def make_problem(
    tasks: int = 2,
    batch: int = 5,
    seed: int = 0,
    variant: str = "transformer",
    shared: bool = False,
    dtype: torch.dtype = torch.float64,
    steps: int = 4,
    d_in: int = 3,
    encoder: nn.Module | None = None,
    x: Tensor | None = None,
    other_batch: int | None = None,
) -> Problem:
    """A random problem; ``encoder``/``x`` replace the default transformer and its input.

    ``other_batch`` (with ``shared``) gives the shared encoder's second call more rows than the
    anchor's (like K captions per sample); the loss uses the first ``batch`` of them.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if encoder is None:
            encoder = Encoder(d_in, steps, variant=variant)
        heads = nn.ModuleList(nn.Linear(8, 6) for _ in range(tasks))
        towers = nn.ModuleList(nn.Linear(d_in, 6) for _ in range(tasks))
        if shared:  # the shared encoder encodes target 0 (width 8); tower 0 is unused
            heads[0] = nn.Linear(8, 8)
    if x is None:
        x = torch.randn(batch, steps, d_in, generator=gen)
    rows = [(other_batch or batch) if (shared and k == 0) else batch for k in range(tasks)]
    targets = [torch.randn(n, steps, d_in, generator=gen) for n in rows]
    targets = [t if (shared and k == 0) else t.mean(1) for k, t in enumerate(targets)]
    problem = Problem(encoder, heads, towers, x, targets, [f"l{k}" for k in range(tasks)], shared)
    for m in problem.modules():
        m.to(dtype)
    problem.x = problem.x.to(dtype) if problem.x.is_floating_point() else problem.x
    problem.targets = [t.to(dtype) for t in problem.targets]
    return problem


def trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def zero_grads(problem: Problem) -> None:
    for p in problem.parameters():
        p.grad = None


def grads_of(problem: Problem) -> list[Tensor]:
    return [
        p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in problem.parameters()
    ]


def harmonized_grads(
    problem: Problem, harmonizer: Harmonizer, **backward: object
) -> tuple[list[Tensor], HarmonizerStats]:
    """Run the Harmonizer on a fresh forward; returns the accumulated grads and the stats."""
    zero_grads(problem)
    with harmonizer.capture(problem.encoder):
        losses, anchor = problem.forward()
    stats = harmonizer.backward(losses, anchor, **backward)  # type: ignore[arg-type]
    return grads_of(problem), stats


def plain_grads(problem: Problem) -> list[Tensor]:
    zero_grads(problem)
    losses, _ = problem.forward()
    sum(losses.values()).backward()  # type: ignore[union-attr]
    return grads_of(problem)


def max_deviation(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def assert_exact(problem: Problem, method: str = "pcgrad", native: bool = False) -> None:
    """Harmonized grads and parameter-space Grams equal the brute-force reference.

    With ``native`` no module may fall back to torch.func (a `FallbackWarning` fails the test).
    """
    with warnings.catch_warnings():
        if native:
            warnings.simplefilter("error", FallbackWarning)
        got, stats = harmonized_grads(problem, Harmonizer(method, "parameters"))
    batch = stats.gram.shape[0]
    orders = random_orders(
        batch, stats.gram.shape[1], torch.Generator().manual_seed(0), torch.device("cpu")
    )
    want = reference_grads(problem, "parameters", lambda v, i: pcgrad_flat(v, orders[i]))
    assert max_deviation(got, want) <= 1e-8
    per_sample = brute_force(problem).per_sample
    assert torch.allclose(stats.gram, per_sample @ per_sample.transpose(1, 2), atol=1e-8, rtol=0)


# ---------------------------------------------------------------- brute-force per-sample grads


def flat(parts: Sequence[Tensor | None], params: Sequence[Tensor]) -> Tensor:
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(parts, params, strict=True)
        ]
    )


@dataclass
class BruteForce:
    """Per-sample gradients computed one autograd call at a time."""

    u: Tensor  # [M, B, D]: dL_k / dZ
    per_sample: Tensor  # [B, M, P]: J_i^T u_ik over the encoder's parameters (P flat)
    rest: list[Tensor]  # plain grads of sum L for all parameters, minus the anchor path (flat each)


def brute_force(problem: Problem) -> BruteForce:
    losses, anchor = problem.forward()
    enc = trainable(problem.encoder)
    u = torch.stack(
        [torch.autograd.grad(loss, anchor, retain_graph=True)[0] for loss in losses.values()]
    )
    batch = anchor.shape[0]
    per_sample = torch.stack(
        [
            torch.stack(
                [
                    flat(
                        torch.autograd.grad(
                            anchor[i], enc, u[k, i], retain_graph=True, allow_unused=True
                        ),
                        enc,
                    )
                    for k in range(len(losses))
                ]
            )
            for i in range(batch)
        ]
    )
    total = torch.autograd.grad(
        torch.stack(list(losses.values())).sum(),
        problem.parameters(),
        retain_graph=True,
        allow_unused=True,
    )
    through_anchor = torch.autograd.grad(
        anchor, enc, u.sum(0), retain_graph=True, allow_unused=True
    )
    rest = [
        (t if t is not None else torch.zeros_like(p)).clone()
        for t, p in zip(total, problem.parameters(), strict=True)
    ]
    for j, g in enumerate(through_anchor):
        if g is not None:
            rest[j] = rest[j] - g
    return BruteForce(u, per_sample, rest)


def unflatten_into(vector: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for p in params:
        out.append(vector[start : start + p.numel()].view_as(p))
        start += p.numel()
    return out


def reference_grads(
    problem: Problem,
    space: str,
    surgery: Callable[[list[Tensor], int], Tensor],
    weights: Tensor | None = None,
) -> list[Tensor]:
    """The accumulated grads the Harmonizer must produce.

    ``surgery(vectors, sample)`` combines a sample's flat per-loss gradients (written naively).
    """
    bf = brute_force(problem)
    enc = trainable(problem.encoder)
    batch = bf.u.shape[1]
    w = torch.ones(batch, dtype=bf.u.dtype) if weights is None else weights
    if space == "parameters":
        total = sum(w[i] * surgery(list(bf.per_sample[i]), i) for i in range(batch))
        enc_grad = unflatten_into(total, enc)  # type: ignore[arg-type]
    elif space == "embedding":
        rows = torch.stack(
            [w[i] * surgery(list(bf.u[:, i].reshape(len(bf.u), -1)), i) for i in range(batch)]
        )
        _, anchor = problem.forward()
        enc_grad = [
            g if g is not None else torch.zeros_like(p)
            for g, p in zip(
                torch.autograd.grad(anchor, enc, rows.view_as(anchor), allow_unused=True),
                enc,
                strict=True,
            )
        ]
    elif space == "batch":
        total = surgery(list(bf.per_sample.sum(0)), 0)
        enc_grad = unflatten_into(total, enc)
    else:
        raise AssertionError(space)
    grads = list(bf.rest)
    for j in range(len(enc)):
        grads[j] = grads[j] + enc_grad[j]
    return grads


# ---------------------------------------------------------------- surgery on flat vectors


def plain_sum(vectors: list[Tensor], sample: int = 0) -> Tensor:
    return torch.stack(vectors).sum(0)


def pcgrad_flat(vectors: list[Tensor], orders: Tensor) -> Tensor:
    """Yu et al. 2020, Algorithm 1, on flat vectors; ``orders[i]`` is task i's visiting order."""
    out = torch.zeros_like(vectors[0])
    for i, g in enumerate(vectors):
        projected = g.clone()
        for j in orders[i].tolist():
            inner = projected @ vectors[j]
            if inner < 0:
                projected = projected - inner / (vectors[j] @ vectors[j]) * vectors[j]
        out = out + projected
    return out


def gradvac_flat(vectors: list[Tensor], orders: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Wang et al. 2021, Algorithm 1, on flat vectors; returns the result and each pair's phi."""
    tasks = len(vectors)
    phis = torch.zeros(tasks, tasks, dtype=torch.float64)
    out = torch.zeros_like(vectors[0])
    for i, g in enumerate(vectors):
        corrected = g.clone()
        for j in orders[i].tolist():
            gj = vectors[j]
            phi = (corrected @ gj) / (corrected.norm() * gj.norm())
            phis[i, j] = phi
            goal = target[i, j]
            if phi < goal:
                w = corrected.norm() * (goal * (1 - phi**2).sqrt() - phi * (1 - goal**2).sqrt())
                w = w / (gj.norm() * (1 - goal**2).sqrt())
                corrected = corrected + w * gj
        out = out + corrected
    return out, phis


def upgrad_flat(vectors: list[Tensor], sample: int = 0) -> Tensor:
    """Quinton & Rey 2024: project each g_i onto the dual cone {v: Jv >= 0}, then add.

    The projection is ``g_i + J^T l`` with ``l = argmin_{l >= 0} |J^T l + g_i|^2``, an NNLS
    problem solved by scipy (Lawson-Hanson) on the flat vectors.
    """
    jac = torch.stack(vectors).numpy()
    out = np.zeros(jac.shape[1])
    for g in jac:
        lam, _ = nnls(jac.T, -g)
        out += g + jac.T @ lam
    return torch.from_numpy(out)


def upgrad_multiplier(vectors: list[Tensor]) -> float:
    """The largest NNLS multiplier of the dual-cone projections (how ill-conditioned they are)."""
    jac = torch.stack(vectors).numpy()
    return max(float(nnls(jac.T, -g)[0].max()) for g in jac)


def mgda_flat(vectors: list[Tensor], sample: int = 0) -> Tensor:
    """Min-norm point of the convex hull (Désidéri 2012), by trying every face with lstsq.

    Scaled by M, as the Harmonizer documents.
    """
    jac = torch.stack(vectors).numpy()
    tasks = len(vectors)
    best, best_norm = None, np.inf
    for code in range(1, 2**tasks):
        face = [k for k in range(tasks) if code >> k & 1]
        base = jac[face[0]]
        if len(face) == 1:
            point = base
        else:
            directions = (jac[face[1:]] - base).T
            coef, *_ = np.linalg.lstsq(directions, -base, rcond=None)
            bary = np.concatenate([[1 - coef.sum()], coef])
            if (bary < -1e-12).any():
                continue
            point = base + directions @ coef
        norm = float(point @ point)
        if norm < best_norm:
            best, best_norm = point, norm
    assert best is not None
    return torch.from_numpy(tasks * best)
