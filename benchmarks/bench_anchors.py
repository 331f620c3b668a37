"""harmonia's exact per-sample harmonization beside the nearest public routes, in one interleaved run.

No public library harmonizes per sample across losses coupled through in-batch negatives, so
each anchor is the closest route it supports, timed as a whole forward + backward step of the
tiny VATT (no optimizer step) and reported as a ratio to plain backward of the same model:

- torchjd's autogram (`torchjd.autogram.Engine`): the Gramian of the pseudo-losses
  ``<Z_i, u_ik>`` (``u_ik``: loss ``k``'s gradient at sample ``i``'s anchor, detached) over the
  anchor encoder's parameters; each sample's ``M x M`` block is that sample's per-sample Gram,
  the same PCGrad coefficients follow, and one backward applies them. Exact, like harmonia.
- Opacus (`opacus.GradSampleModule`): per-sample gradients of ONE of the two losses' pseudo-loss,
  then a plain backward. Opacus accumulates per-sample gradients over every call of a module,
  so it cannot separate the anchor call of a modality-agnostic (shared) backbone: this route
  runs on the modality-specific VATT, beside harmonia and plain backward on that same model. It
  is a lower bound of an Opacus route (a second loss would need a second pass, and the Gram).

Each route runs on its own copy of the model (torchjd and Opacus keep hooks on the modules), on
six VATT tiny variants: the shipped one (conv video stem), one with linear video patches, one
with VATT's raw-signal patches (`bench_harmonizer.RAW_PATCHES`: the model before the conv stem),
and the same three with modality-specific backbones (what torchjd and Opacus can run). A route
that cannot run a model says why and is left out of that table.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_anchors.py --batch-sizes 32 128 --keep-freed-memory

Opacus is an optional extra (``pip install -c constraints.txt -e '.[bench]'``); without it
that route is skipped and said so.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bench_harmonizer import RAW_PATCHES, anchor_grads, build, measure, report
from harmonia.allocator import keep_freed_memory
from harmonia.harmonization import Harmonizer
from harmonia.harmonization.methods import PCGrad
from harmonia.losses import ContrastiveObjective
from harmonia.models import VATT

Step = Callable[[], None]


def _losses(
    model: VATT, objective: ContrastiveObjective, batch: dict[str, Any]
) -> tuple[dict[str, Tensor], Tensor]:
    out = model(batch)
    return objective.reduce(objective(out), out), out.anchor


def plain_step(model: VATT, objective: ContrastiveObjective, batch: dict[str, Any]) -> Step:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        losses, _ = _losses(model, objective, batch)
        sum(losses.values()).backward()  # type: ignore[union-attr]

    return step


def harmonia_step(model: VATT, objective: ContrastiveObjective, batch: dict[str, Any]) -> Step:
    harmonizer = Harmonizer("pcgrad", "parameters")
    encoder = model.anchor_encoder()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with harmonizer.capture(encoder):
            losses, anchor = _losses(model, objective, batch)
        harmonizer.backward(losses, anchor)

    return step


def _apply(losses: dict[str, Tensor], anchor: Tensor, grads: Tensor, gram: Tensor) -> None:
    """PCGrad coefficients from per-sample Grams; one backward with the combined anchor gradient."""
    coefficients = PCGrad().combine(gram.double(), torch.Generator().manual_seed(0)).coefficients
    combined = torch.einsum("bk,kb...->b...", coefficients.to(grads.dtype), grads)
    anchor.register_hook(lambda _: combined)
    sum(losses.values()).backward()  # type: ignore[union-attr]


def torchjd_step(model: VATT, objective: ContrastiveObjective, batch: dict[str, Any]) -> Step:
    from torchjd.autogram import Engine

    engine = Engine(model.anchor_encoder(), batch_dim=0)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        losses, anchor = _losses(model, objective, batch)
        grads = anchor_grads(list(losses.values()), anchor)
        pseudo = torch.stack([(anchor * u.detach()).flatten(1).sum(1) for u in grads], 1)
        batch_size, tasks = pseudo.shape
        gramian = engine.compute_gramian(pseudo).view(batch_size, tasks, batch_size, tasks)
        index = torch.arange(batch_size)
        _apply(losses, anchor, grads, gramian[index, :, index, :])

    return step


def opacus_step(model: VATT, objective: ContrastiveObjective, batch: dict[str, Any]) -> Step:
    from opacus import GradSampleModule

    encoder = model.anchor_encoder()
    sampled = GradSampleModule(encoder, loss_reduction="sum")  # hooks on the encoder's layers

    def step() -> None:
        model.zero_grad(set_to_none=True)
        for p in encoder.parameters():
            p.grad_sample = None  # type: ignore[attr-defined]
        sampled.enable_hooks()
        losses, anchor = _losses(model, objective, batch)
        first = next(iter(losses.values()))
        u = torch.autograd.grad(first, anchor, retain_graph=True)[0]
        (anchor * u.detach()).sum().backward(retain_graph=True)
        sampled.disable_hooks()  # one backward per forward is what its hooks expect
        model.zero_grad(set_to_none=True)  # keep grad_sample, drop the pseudo-loss's .grad
        sum(losses.values()).backward()  # type: ignore[union-attr]

    return step


MODELS: dict[str, dict[str, Any]] = {
    "tiny (shipped: conv video stem)": {},
    "tiny, linear video patches (no stem)": {"modalities": {"video": {"stem": None}}},
    "tiny, modality-specific backbones": {"backbone": {"kind": "modality_specific"}},
    "tiny, modality-specific, linear video patches": {
        "backbone": {"kind": "modality_specific"},
        "modalities": {"video": {"stem": None}},
    },
    "tiny, raw-signal patches (before the stem)": RAW_PATCHES,
    "tiny, modality-specific, raw-signal patches": {
        **RAW_PATCHES,
        "backbone": {"kind": "modality_specific"},
    },
}
"""Config overrides of each model; every route runs on each model it supports."""

ROUTES: dict[str, Callable[[VATT, ContrastiveObjective, dict[str, Any]], Step]] = {
    "plain backward": plain_step,
    "harmonia parameters pcgrad": harmonia_step,
    "torchjd autogram + pcgrad": torchjd_step,
    "opacus 1 loss + backward": opacus_step,
}


def supported(route: str, model: str) -> bool:
    """Opacus only without a shared backbone; every other route everywhere."""
    return "opacus" not in route or "specific" in model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="call harmonia.keep_freed_memory() first, as `harmonia train` does on CPU",
    )
    args = parser.parse_args()
    kept = args.keep_freed_memory and keep_freed_memory()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), train mode, forward + backward, "
        f"cpu time, median of {args.repeats} interleaved repeats, "
        f"{'keep_freed_memory' if kept else 'default'} allocator"
    )
    if importlib.util.find_spec("opacus") is None:
        print("opacus is not installed (extra 'bench'): its route is skipped")
        ROUTES.pop("opacus 1 loss + backward")
    for batch_size in args.batch_sizes:
        steps: dict[tuple[str, str], Step] = {}
        for title, overrides in MODELS.items():
            model, objective, batch = build(batch_size, "tiny", **overrides)
            for route, make in ROUTES.items():
                if not supported(route, title):
                    continue
                own = model if route.startswith(("plain", "harmonia")) else copy.deepcopy(model)
                step = make(own, objective, batch)
                try:
                    step()
                except (RuntimeError, ValueError) as error:  # a route that cannot run this model
                    print(f"B={batch_size}, {title}: {route} fails: {str(error).splitlines()[0]}")
                    continue
                steps[title, route] = step
        times = measure(
            {f"{t} / {r}": s for (t, r), s in steps.items()},
            args.repeats,
            args.warmup,
            time.process_time,
        )
        for title in MODELS:
            mine = {r: times[f"{t} / {r}"] for (t, r) in steps if t == title}
            print(f"\nB={batch_size}, {title} (ratios to its plain backward)")
            print("\n".join(report(mine, "plain backward")))


if __name__ == "__main__":
    main()
