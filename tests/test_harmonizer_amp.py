"""Mixed precision: bf16 autocast forward and GradScaler-scaled losses stay finite and correct."""

from __future__ import annotations

import pytest
import torch

from harmonia.harmonization import Harmonizer
from harmonizer_reference import grads_of, harmonized_grads, make_problem, zero_grads


@pytest.mark.parametrize("space", ["embedding", "parameters", "batch"])
@pytest.mark.parametrize("method", ["pcgrad", "upgrad"])
def test_autocast_bf16_with_grad_scaler(space: str, method: str) -> None:
    problem = make_problem(tasks=2, batch=8, seed=3, dtype=torch.float32)
    reference, _ = harmonized_grads(problem, Harmonizer(method, space))

    params = problem.parameters()
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    harmonizer = Harmonizer(method, space)
    zero_grads(problem)
    dtypes: list[torch.dtype] = []
    hook = problem.encoder.fc1.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    with harmonizer.capture(problem.encoder), torch.autocast("cpu", dtype=torch.bfloat16):
        losses, anchor = problem.forward()
    hook.remove()
    assert dtypes == [torch.bfloat16]  # the encoder's matmuls really ran in bf16
    stats = harmonizer.backward({k: scaler.scale(v) for k, v in losses.items()}, anchor)
    assert bool(stats.gram.isfinite().all()) and bool(stats.cosines.abs().le(1 + 1e-6).all())
    scaler.unscale_(optimizer)
    got = grads_of(problem)
    assert all(bool(g.isfinite().all()) for g in got)
    flat_got = torch.cat([g.flatten() for g in got])
    flat_ref = torch.cat([g.flatten() for g in reference])
    assert float(torch.nn.functional.cosine_similarity(flat_got, flat_ref, dim=0)) > 0.98
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 2.0**16  # no overflow detected: the step was taken
    assert any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_overflow_reaches_the_grad_scaler_as_non_finite_gradients() -> None:
    """A loss that overflows gives non-finite grads (so the scaler skips), not a crash."""
    problem = make_problem(tasks=2, batch=4, seed=4, dtype=torch.float32)
    harmonizer = Harmonizer("pcgrad", "parameters")
    with harmonizer.capture(problem.encoder):
        losses, anchor = problem.forward()
    first = next(iter(losses))
    losses[first] = losses[first] * 1e38 * 1e38  # inf
    stats = harmonizer.backward(losses, anchor)
    grads = grads_of(problem)
    assert not all(bool(g.isfinite().all()) for g in grads)
    assert stats.conflict.shape == (4,)
