"""gather_with_grad: local losses over gathered negatives equal the single-process global loss."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from harmonia.losses import gather_with_grad, local_gather, milnce, nce


def global_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(5, 3, 4, generator=g, dtype=torch.float64), dim=-1)
    mask = torch.rand(5, 3, generator=g) < 0.7
    mask[0] = False
    return v, t, mask


def test_local_gather_is_the_identity() -> None:
    x = torch.randn(3, 2)
    out = local_gather(x)
    assert out.tensor is x and out.start == 0


def test_without_a_process_group_gather_with_grad_is_local() -> None:
    assert not dist.is_initialized()
    x = torch.randn(3, 2)
    assert gather_with_grad(x).tensor is x


@pytest.fixture()
def world_of_one(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("world_of_one")
def test_world_of_one_gives_the_plain_loss_and_gradient() -> None:
    v, t, mask = global_inputs()
    plain_v, plain_t = v.clone().requires_grad_(), t.clone().requires_grad_()
    dist_v, dist_t = v.clone().requires_grad_(), t.clone().requires_grad_()
    want = milnce(plain_v, plain_t, valid=mask, reduction="none")
    got = milnce(dist_v, dist_t, valid=mask, reduction="none", gather=gather_with_grad)
    assert torch.equal(got, want)
    want.sum().backward()
    got.sum().backward()
    assert plain_v.grad is not None and dist_v.grad is not None and dist_t.grad is not None
    torch.testing.assert_close(dist_v.grad, plain_v.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(dist_t.grad, plain_t.grad, atol=1e-12, rtol=0)


WORKER = textwrap.dedent(
    """
    import sys
    import torch, torch.distributed as dist
    from harmonia.losses import gather_with_grad, milnce, nce
    rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    data = torch.load(sys.argv[4], weights_only=True)
    rows = slice(0, 3) if rank == 0 else slice(3, 5)  # uneven on purpose
    v = data["v"][rows].clone().requires_grad_()
    t = data["t"][rows].clone().requires_grad_()
    mil = milnce(v, t, valid=data["mask"][rows], reduction="none", gather=gather_with_grad)
    pair = nce(v, t[:, 0], reduction="none", gather=gather_with_grad)
    (mil.sum() + pair.sum()).backward()
    torch.save({"mil": mil.detach(), "nce": pair.detach(), "gv": v.grad, "gt": t.grad}, out)
    dist.destroy_process_group()
    """
)


def test_two_processes_match_one_process_over_the_global_batch(tmp_path: Path) -> None:
    v, t, mask = global_inputs()
    torch.save({"v": v, "t": t, "mask": mask}, tmp_path / "data.pt")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(r),
                str(tmp_path / "store"),
                str(tmp_path / f"{r}.pt"),
                str(tmp_path / "data.pt"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    for p in procs:
        output, _ = p.communicate(timeout=120)
        assert p.returncode == 0, output
    parts = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(2)]

    gv, gt = v.clone().requires_grad_(), t.clone().requires_grad_()
    mil = milnce(gv, gt, valid=mask, reduction="none")
    pair = nce(gv, gt[:, 0], reduction="none")
    (mil.sum() + pair.sum()).backward()
    assert gv.grad is not None and gt.grad is not None
    for name, want in (("mil", mil), ("nce", pair), ("gv", gv.grad), ("gt", gt.grad)):
        got = torch.cat([p[name] for p in parts])
        torch.testing.assert_close(got, want.detach(), atol=1e-12, rtol=0, msg=name)
