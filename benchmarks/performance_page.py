"""Run the CPU benchmarks and write docs/PERFORMANCE.md from their own output.

    .venv/bin/python benchmarks/performance_page.py [--data DATASET_DIR] [--out docs/PERFORMANCE.md]
    .venv/bin/python benchmarks/performance_page.py --only pipeline   # rerun one section
    .venv/bin/python benchmarks/performance_page.py --only time-to-accuracy --source ../shared/data

The time-to-accuracy section trains the demo config 12 times (four arms, three seeds; with the
conv video stem a `parameters pcgrad` run takes about 6 minutes on 2 cores and the twelve about
65 minutes; finished runs are reused); the rest of the page takes about 55 minutes.

Each benchmark runs in its own process with ``OMP_NUM_THREADS=1``; its markdown output is pasted
under the command that produced it, with the wall time it took.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import machine_line

HERE = Path(__file__).resolve().parent
GPU_COMMAND = "python benchmarks/gpu_bench.py"

INTRO = """# Performance

Numbers on this page are pasted from the benchmark scripts' own output by
`benchmarks/performance_page.py`; rerun it to refresh them. Every script prints markdown and runs
on its own: the command above each section reproduces it.

**Read ratios, not absolute numbers.** The development machine is a small VM shared with other
engineers' builds and tests while these ran (its load average is in each script's first line), so
absolute speeds move by large factors from one minute to the next. Every script therefore runs
the variants it compares side by side, interleaved within each repeat with a rotating order, on
one thread (`OMP_NUM_THREADS=1`), and reports medians of paired ratios (with their interquartile
range where shown). Step times are the process's CPU time unless a script says wall time.

Peak memory on CPU is the growth of the process's resident set (RSS) during one step: the
kernel's high-water mark is reset to the current RSS (`/proc/self/clear_refs`) after trimming the
C heap, and read back after the step (`benchmarks/harness.py`). It includes PyTorch's allocations
(which `tracemalloc` would not see) and, like any RSS figure, memory the allocator keeps from
earlier steps is not counted again, so treat it as a comparison between variants, not as an
absolute footprint.
"""

GPU = f"""## GPU

No GPU was available in this session, so there are no GPU figures yet. On a GPU machine, one
command (VATT-Base dims, bf16 autocast, `torch.compile` where it applies, sized to finish in under 10
minutes, not yet run on a GPU; `--peak-tflops` for a card missing from its table) prints samples/s,
model FLOPs utilization, the harmonization overhead per space and peak memory:

```bash
{GPU_COMMAND}
```

`tests/test_benchmarks_gpu_smoke.py` runs it on CPU (`--device cpu --size tiny --steps 2`) in the
default test suite, so the command keeps working.
"""


def run(title: str, args: list[str], notes: str) -> str:
    """Run one benchmark script; its section of the page."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(HERE / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{done.stderr}")
    command = " ".join(["OMP_NUM_THREADS=1 .venv/bin/python", f"benchmarks/{args[0]}", *args[1:]])
    print(f"{args[0]}: {seconds:.0f} s", file=sys.stderr, flush=True)
    return section(title, notes, command, seconds, done.stdout)


def section(title: str, notes: str, command: str, seconds: float, output: str) -> str:
    """One section of the page. Output with markdown tables is pasted as it is; any other output
    (column-aligned text) goes in a text block, which keeps its columns when rendered."""
    output = output.strip()
    if not any(line.startswith("| ") for line in output.splitlines()):
        output = f"```text\n{output}\n```"
    return (
        f"## {title}\n\n{notes}\n\n```bash\n{command}\n```\n\n"
        f"Output ({seconds:.0f} s wall):\n\n{output}\n"
    )


def benchmarks(data: str | None, source: str | None) -> dict[str, tuple[str, list[str], str]]:
    """Section key -> (title, script and arguments, notes)."""
    return {
        "step": (
            "Training step: plain vs every Harmonizer space and method",
            ["bench_step.py"],
            "Forward + losses + backward of VATT tiny and small (no optimizer step), every "
            "space x method against plain `sum(losses).backward()`. VATT small at B = 128 gets "
            "3 repeats instead of 5 (about a second per step on one CPU thread).",
        ),
        "scaling": (
            "Cost of harmonization vs batch size and number of losses",
            ["bench_scaling.py"],
            "PCGrad in each space on VATT tiny; extra time per step over plain backward.",
        ),
        "pipeline": (
            "Data pipeline vs training-step consumption",
            ["bench_pipeline.py"] + (["--data", data] if data else []),
            "The trainer's loader against what the demo configs' training step consumes.",
        ),
        "harmonizer": (
            "Parameters space: speed floor, pieces of a step, memory",
            [
                *["bench_harmonizer.py", "--workload", "all", "--batch-sizes", "32", "128"],
                *["--repeats", "5", "--warmup", "1", "--no-torchjd", "--breakdown", "--memory"],
                "--keep-freed-memory",
            ],
            "VATT tiny (conv video stem), VATT tiny with VATT's raw-signal patches (the model "
            "before the conv stem: `RAW_PATCHES` in the script) and the tri-modal "
            "`nn.TransformerEncoder` of `benchmarks/torch_transformer.py`, with freed memory "
            "kept between steps as "
            "`harmonia train` does on CPU (next section). The floor row is a plain step plus the "
            "M - 1 extra backward passes to the encoder's layer outputs that an exact per-sample "
            "step needs, with no Gram at all: no `parameters` step on that model can beat it. "
            "The floor with weight grads also forms each extra loss's encoder weight gradient in "
            "those passes: the multiply-adds of materializing the per-sample weight gradients, "
            "which a conv stem's Grams cannot avoid.",
        ),
        "allocator": (
            "Keeping freed memory between steps: glibc's default against keep_freed_memory",
            [
                *["bench_allocator.py", "--workloads", "vatt", "torch-transformer"],
                *["--batch-sizes", "32", "128", "--repeats", "5"],
            ],
            "Each repeat is a fresh process per setting (`harmonia.keep_freed_memory` changes "
            "the whole process), timing plain backward and `parameters` PCGrad interleaved; "
            "minor page faults per step and the resident set after the steps show what the "
            "setting trades.",
        ),
        "anchors": (
            "Against the nearest public routes: torchjd autogram and Opacus",
            ["bench_anchors.py", "--batch-sizes", "32", "128", "--keep-freed-memory"],
            "Each public library in the one configuration it supports (the script's docstring "
            "says which); Opacus is the optional `bench` extra.",
        ),
        "time-to-accuracy": (
            "Time to accuracy: the demo config to zero-shot digit 0.5 / 0.7 / 0.8",
            ["time_to_accuracy.py", "--seeds", "0", "1", "2"]
            + (["--source", source] if source else []),
            "Wall time of training on 2 threads, one run at a time, until a checkpoint's "
            "zero-shot digit accuracy on the unseen test speaker reaches each target. Finished "
            "runs in the script's --work folder are reused, so the wall time under the command "
            "can be far below the runs' own.",
        ),
    }


def replace_section(page: str, title: str, section: str) -> str:
    """``page`` with its section headed ``## title`` (up to the next ``## ``) replaced, or the
    section added before the GPU section when the page has none yet."""
    start = page.find(f"## {title}\n")
    if start < 0:
        start = end = page.index("## GPU\n")
        return page[:start] + section + "\n" + page[end:]
    end = page.find("\n## ", start + 1)
    return page[:start] + section + (page[end:] if end >= 0 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="a built dataset for the pipeline benchmark")
    parser.add_argument("--source", help="source data for time_to_accuracy.py's clean build")
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "PERFORMANCE.md"))
    parser.add_argument(
        "--only", choices=list(benchmarks(None, None)), help="rerun one section of the page"
    )
    args = parser.parse_args()
    out = Path(args.out)
    table = benchmarks(args.data, args.source)
    if args.only:
        title, script, notes = table[args.only]
        page = replace_section(out.read_text(encoding="utf-8"), title, run(title, script, notes))
    else:
        sections = [INTRO, f"Machine: {machine_line()} (nproc {os.cpu_count()}).\n"]
        sections += [run(*entry) for entry in table.values()]
        page = "\n".join([*sections, GPU])
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
