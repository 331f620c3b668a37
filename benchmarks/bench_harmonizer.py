"""Steps per second of harmonized training steps against plain backward, side by side.

Each variant runs forward + backward (no optimizer step, so the ratio shows the harmonizer's
whole cost) on the tiny modality-agnostic VATT with VATT's two losses (NCE video-audio, MIL-NCE
video-text) in training mode. Variants are interleaved within every repeat (the order rotates
from one repeat to the next), and the median time of each is reported with its ratio to plain
``sum(losses).backward()``. Time is the process's CPU time by default (one thread), which stays
meaningful on a machine shared with other jobs; ``--clock wall`` measures wall time instead.
The ``floor`` row is a plain step plus the M - 1 extra backward passes to the encoder's layer
outputs that an exact per-sample step needs (`floor_step`): the ratio no such step can beat.
The ``floor with weight gradients`` row adds each extra loss's encoder weight gradient to those
passes (`floor_step` with ``weights=True``): the multiply-adds of materialized per-sample
gradients, which the conv stem's Grams cannot avoid (its patches-per-sample are far too many
for the ghost route).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_harmonizer.py --batch-sizes 32 128

``--breakdown`` also times the pieces of a ``parameters``-space step (median ms per piece, and
the peak memory growth once each is done);
``--memory`` adds each variant's peak memory growth during one step;
``--keep-freed-memory`` keeps freed memory in the process between steps, as ``harmonia train``
does on CPU (`harmonia.allocator`; `bench_allocator.py` compares both settings);
``--workload torch-transformer`` (or ``both``) times the tri-modal ``nn.TransformerEncoder`` of
`torch_transformer` instead, a model written the way PyTorch users write one;
``--workload vatt-raw-patches`` (or ``all``) VATT tiny with VATT's linear patches (`RAW_PATCHES`).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

import torch_transformer
from harmonia.allocator import keep_freed_memory
from harmonia.harmonization import Harmonizer
from harmonia.harmonization.capture import Capture
from harmonia.harmonization.encoder_grads import backward_without_encoder, encoder_gradients
from harmonia.harmonization.layer_grams import Kept, Traced
from harmonia.harmonization.rules import needs_outputs
from harmonia.harmonization.spaces import compute_dtype, released_gram, trace
from harmonia.losses import ContrastiveObjective, default_specs
from harmonia.models import VATT, ModelConfig, WordTokenizer
from harmonia.models.synthetic import WORDS, random_batch
from harness import peak_growth_mb, peak_rss_growth_mb, reset_peak

Step = Callable[[], None]
DEFAULT_GRID = (
    ("embedding", "none"),
    ("embedding", "pcgrad"),
    ("parameters", "none"),
    ("parameters", "pcgrad"),
    ("batch", "pcgrad"),
    ("parameters", "upgrad"),
)
"""(space, method) pairs timed by default."""
TRANSFORMER_GRID = [("embedding", "none"), ("parameters", "none"), ("parameters", "pcgrad")]
"""(space, method) pairs timed on the nn.TransformerEncoder workload."""
FLOOR = "floor: plain + M-1 passes"
"""The `floor_step` variant: no exact per-sample step on the same model can be faster."""
FLOOR_WEIGHTS = "floor with weight grads"
"""`floor_step` with the extra losses' encoder weight gradients: the floor of materialized Grams."""
RAW_PATCHES: dict[str, Any] = {
    "modalities": {
        "video": {"shape": [16, 64, 64, 3], "patch": [4, 16, 16], "drop_token": 0.25, "stem": None},
        "audio": {
            "shape": [32000],
            "patch": [640],
            "drop_token": 0.25,
            "features": "raw",
            "log_mel": None,
        },
    }
}
"""``--workload vatt-raw-patches``: VATT tiny as it was before the conv stem, the model the speed
goals of docs/harmonizer.md were first measured on: VATT's linear voxel patches (4x16x16 of a
16x64x64 clip) and 640-sample waveform patches (2 s at 16 kHz), DropToken 0.25 on both."""
VATT_WORKLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "vatt": ("", {}),
    "vatt-raw-patches": (", raw-signal patches", RAW_PATCHES),
}
"""VATT ``--workload`` names: (title suffix, `build` overrides)."""
WORKLOADS = {
    "both": ["vatt", "torch-transformer"],
    "all": [*VATT_WORKLOADS, "torch-transformer"],
}
"""``--workload`` names that run several workloads, one after the other."""


def build(
    batch_size: int, size: str, **overrides: Any
) -> tuple[VATT, ContrastiveObjective, dict[str, Any]]:
    """The VATT of ``size`` (config ``overrides`` merged in) in train mode, its losses, a batch."""
    torch.manual_seed(0)
    config = ModelConfig.named(size, **overrides)
    model = VATT(config, WordTokenizer.build([" ".join(WORDS)]))
    model.train()
    return (
        model,
        ContrastiveObjective(default_specs(config)),
        random_batch(config, batch_size, seed=1),
    )


def variants(
    model: VATT,
    objective: ContrastiveObjective,
    batch: dict[str, Any],
    torchjd: bool,
    grid: Sequence[tuple[str, str]] = DEFAULT_GRID,
) -> dict[str, Step]:
    """Plain backward, then one harmonized step per (space, method) of ``grid``."""
    encoder = model.anchor_encoder()

    def losses_of(out: Any) -> dict[str, torch.Tensor]:
        return objective.reduce(objective(out), out)

    def plain() -> None:
        model.zero_grad(set_to_none=True)
        out = model(batch)
        sum(losses_of(out).values()).backward()  # type: ignore[union-attr]

    def harmonized(method: str, space: str) -> Step:
        harmonizer = Harmonizer(method, space)

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with harmonizer.capture(encoder):
                out = model(batch)
            harmonizer.backward(losses_of(out), out.anchor)

        return step

    steps: dict[str, Step] = {"plain backward": plain}
    for space, method in grid:
        steps[f"{space} {method}"] = harmonized(method, space)
    if torchjd:
        steps["torchjd PCGrad (batch)"] = torchjd_step(model, encoder, batch, losses_of)
    return steps


def torchjd_step(
    model: VATT, encoder: torch.nn.Module, batch: dict[str, Any], losses_of: Any
) -> Step:
    """torchjd's batch-level PCGrad on the anchor encoder (reference point, not an oracle here)."""
    from torchjd.aggregation import PCGrad
    from torchjd.autojac import jac_to_grad, mtl_backward

    shared = [p for p in encoder.parameters() if p.requires_grad]
    shared_ids = {id(p) for p in shared}
    rest = [p for p in model.parameters() if id(p) not in shared_ids]
    aggregator = PCGrad()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(batch)
        losses = list(losses_of(out).values())
        mtl_backward(
            losses,
            features=out.anchor,
            shared_params=shared,
            tasks_params=[rest] * len(losses),
            retain_graph=True,
        )
        jac_to_grad(shared, aggregator)

    return step


def anchor_grads(losses: Sequence[torch.Tensor], anchor: torch.Tensor) -> torch.Tensor:
    """``[M, B, ...]``: each loss's gradient at the anchor (the graph is kept)."""
    return torch.stack([torch.autograd.grad(v, anchor, retain_graph=True)[0] for v in losses])


def floor_step(
    run: Callable[[], tuple[dict[str, torch.Tensor], torch.Tensor]],
    clear: Callable[[], None],
    encoder: torch.nn.Module,
    weights: bool = False,
) -> Step:
    """A plain step plus the M - 1 extra backward passes from the anchor to the encoder's layer
    outputs that any exact per-sample method of this kind needs: the speed it cannot exceed.

    Every Gram, realignment and the final backward's savings are left out, so the ratio of this
    step to plain backward is an upper bound for ``parameters`` space on the same model. With
    ``weights`` the extra passes also form the encoder's weight gradient of each extra loss:
    per-sample gradients materialized per loss take the same multiply-adds, so this bounds a
    step whose Grams materialize them (as conv Grams must when a sample has many positions).
    """
    params = [p for p in encoder.parameters() if p.requires_grad]

    def step() -> None:
        clear()
        capture = Capture(encoder, keep_outputs=needs_outputs)
        with capture:
            named, anchor = run()
        losses = list(named.values())
        if weights:
            for extra in anchor_grads(losses[1:], anchor):
                torch.autograd.grad(anchor, params, extra, retain_graph=True)
        else:
            trace(anchor, anchor_grads(losses[1:], anchor), capture.calls)
        torch.autograd.backward(losses)

    return step


def measure(
    steps: dict[str, Step], repeats: int, warmup: int, clock: Callable[[], float]
) -> dict[str, list[float]]:
    """Seconds per step of every variant in every repeat (variants interleaved, order rotating)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            steps[name]()
            times[name].append(clock() - start)
    return times


def report(times: dict[str, list[float]], baseline: str) -> list[str]:
    """Median steps/s per variant and the median over repeats of the paired ratio to baseline.

    Pairing each repeat's variant with the same repeat's baseline cancels slow drifts in the
    load of a shared machine; the spread is the interquartile range of those ratios.
    """
    lines = [f"{'variant':<26} {'steps/s':>8} {'ratio':>6}  {'IQR of ratio':>13}"]
    for name, seconds in times.items():
        ratios = sorted(b / s for b, s in zip(times[baseline], seconds, strict=True))
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        lines.append(
            f"{name:<26} {1.0 / statistics.median(seconds):>8.2f} "
            f"{statistics.median(ratios):>5.2f}x  {q1:>5.2f}-{q3:.2f}x"
        )
    return lines


def breakdown(
    run: Callable[[], tuple[dict[str, torch.Tensor], torch.Tensor]],
    params: Callable[[], None],
    encoder: torch.nn.Module,
    repeats: int,
    clock: Callable[[], float],
) -> list[str]:
    """Median per-step time of each piece of a parameters-space step (after one warm-up step),
    and the step's peak memory growth (MiB) once each piece is done, in the last repeat.

    ``run()`` is a forward returning the losses and the anchor; ``params()`` clears the grads.
    The pieces are the Harmonizer's own stages, run one by one; Gram rules are summed per kind
    of layer, with wide input projections (far more inputs than outputs) listed apart.
    """
    parts: dict[str, list[float]] = defaultdict(lambda: [0.0] * (repeats + 1))
    peaks: dict[str, float] = {}
    since: float | None = None  # the step's resident size when its peak was reset

    @contextmanager
    def piece(name: str, repeat: int) -> Iterator[None]:
        start = clock()
        yield
        parts[name][repeat] += clock() - start
        if repeat == repeats:
            peaks[name] = peak_growth_mb(since)

    for r in range(repeats + 1):
        params()
        if r == repeats:
            since = reset_peak()
        with piece("plain forward", r):
            plain, _ = run()
        with piece("plain backward", r):
            torch.stack(list(plain.values())).sum().backward()
        params()
        if r == repeats:
            since = reset_peak()
        capture = Capture(encoder, keep_outputs=needs_outputs)
        with piece("forward with capture", r), capture:
            named, anchor = run()
        losses = list(named.values())
        with piece("anchor gradients (loss side)", r):
            grads = anchor_grads(losses, anchor)
        with piece("backward passes to layer outputs", r):
            traced = trace(anchor, grads, capture.calls)
        groups: dict[int, list[Traced]] = defaultdict(list)
        for t in traced:
            groups[id(t.call.module)].append(t)
        kept = Kept()
        for group in groups.values():
            module = group[0].call.module
            name = f"Grams of {type(module).__name__} layers"
            if isinstance(module, torch.nn.Linear) and module.in_features > 4 * module.out_features:
                name = f"Gram of Linear {module.in_features}->{module.out_features}"
            with piece(name, r):
                released_gram(module, group, compute_dtype(grads), kept)
        with piece("encoder's realigned gradient", r), torch.no_grad():
            scale = torch.ones(anchor.shape[0], len(losses), dtype=torch.float64)
            found = encoder_gradients(traced, kept, scale)
        with piece("final backward", r):
            if found is None:
                torch.autograd.backward(losses)
            else:
                backward_without_encoder(losses, anchor, found)
    lines = [f"{'piece':<38} {'ms':>8} {'peak MiB':>9}"]
    for name, per_step in parts.items():
        ms = 1000 * statistics.median(per_step[1:])
        lines.append(f"{name:<38} {ms:>8.1f} {peaks[name]:>9.0f}")
    return lines


Pieces = tuple[
    Callable[[], tuple[dict[str, torch.Tensor], torch.Tensor]], Callable[[], None], torch.nn.Module
]
"""A workload as ``(run, clear, encoder)``: forward to (losses, anchor), zero the grads, the
anchor's encoder."""


def vatt_pieces(model: VATT, objective: ContrastiveObjective, batch: dict[str, Any]) -> Pieces:
    """The VATT workload as `Pieces`."""

    def run() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        out = model(batch)
        return objective.reduce(objective(out), out), out.anchor

    def clear() -> None:
        model.zero_grad(set_to_none=True)

    return run, clear, model.anchor_encoder()


def transformer_pieces(model: torch_transformer.TriModal, batch: dict[str, torch.Tensor]) -> Pieces:
    """The nn.TransformerEncoder workload as `Pieces`."""

    def clear() -> None:
        model.zero_grad(set_to_none=True)

    return lambda: model(batch), clear, model.towers["video"]


def memory(steps: dict[str, Step], baseline: str) -> list[str]:
    """Peak resident-set growth of one step per variant (`harness.peak_rss_growth_mb`)."""
    grown = {name: peak_rss_growth_mb(step) for name, step in steps.items()}
    lines = [f"{'variant':<26} {'MiB':>8} {'ratio':>6}"]
    for name, mib in grown.items():
        lines.append(f"{name:<26} {mib:>8.0f} {mib / grown[baseline]:>5.2f}x")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--size", default="tiny")
    parser.add_argument(
        "--workload",
        choices=[*VATT_WORKLOADS, "torch-transformer", *WORKLOADS],
        default="vatt",
        help="harmonia's VATT (shipped, or with VATT's raw-signal patches: RAW_PATCHES), the "
        "tri-modal nn.TransformerEncoder of torch_transformer.py, or several (both: vatt and "
        "torch-transformer; all: the three)",
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--no-torchjd", action="store_true", help="skip the torchjd reference")
    parser.add_argument("--breakdown", action="store_true", help="time a parameters step's pieces")
    parser.add_argument(
        "--memory", action="store_true", help="peak RSS growth of one step of each variant"
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="call harmonia.keep_freed_memory() first, as `harmonia train` does on CPU",
    )
    args = parser.parse_args()
    kept = args.keep_freed_memory and keep_freed_memory()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{args.threads} thread(s), train mode, forward + backward, "
        f"{args.clock} time, median of {args.repeats} interleaved repeats, "
        f"{'keep_freed_memory' if kept else 'default'} allocator"
    )
    for workload in WORKLOADS.get(args.workload, [args.workload]):
        for batch_size in args.batch_sizes:
            if workload in VATT_WORKLOADS:
                suffix, overrides = VATT_WORKLOADS[workload]
                title = f"VATT {args.size}{suffix}"
                model, objective, batch = build(batch_size, args.size, **overrides)
                steps = variants(model, objective, batch, not args.no_torchjd)
                steps[FLOOR] = floor_step(*vatt_pieces(model, objective, batch))
                steps[FLOOR_WEIGHTS] = floor_step(*vatt_pieces(model, objective, batch), True)
            else:
                title = "tri-modal nn.TransformerEncoder"
                tri, inputs = torch_transformer.build(batch_size)
                steps = torch_transformer.steps(tri, inputs, TRANSFORMER_GRID)
                steps[FLOOR] = floor_step(*transformer_pieces(tri, inputs))
                steps[FLOOR_WEIGHTS] = floor_step(*transformer_pieces(tri, inputs), True)
            times = measure(steps, args.repeats, args.warmup, clock)
            print(f"\n{title}, B={batch_size}")
            print("\n".join(report(times, "plain backward")))
            if args.memory:
                print(f"\n{title}, B={batch_size}, peak RSS growth of one step (MiB, vs plain)")
                print("\n".join(memory(steps, "plain backward")))
            if not args.breakdown:
                continue
            print(f"\n{title}, B={batch_size}, parameters space, pieces of one step (median)")
            if workload in VATT_WORKLOADS:
                pieces = vatt_pieces(model, objective, batch)
            else:
                pieces = transformer_pieces(tri, inputs)
            lines = breakdown(*pieces, args.repeats, clock)
            print("\n".join(lines))


if __name__ == "__main__":
    main()
