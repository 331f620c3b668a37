"""benchmarks/time_to_accuracy.py's table and benchmarks/performance_page.py's section splicing,
on made-up curves and pages (the training runs themselves are the benchmark)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def scripts() -> Iterator[tuple[ModuleType, ModuleType]]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import performance_page
        import time_to_accuracy

        yield time_to_accuracy, performance_page
    finally:
        sys.path.remove(str(BENCHMARKS))


def points(*rows: tuple[int, float, float]) -> list[dict[str, float]]:
    return [{"step": s, "elapsed": e, "zero_shot": z} for s, e, z in rows]


def test_the_time_to_a_target_is_the_first_checkpoint_reaching_it(
    scripts: tuple[ModuleType, ModuleType],
) -> None:
    tta, _ = scripts
    fast = points((100, 30.0, 0.4), (200, 60.0, 0.75), (300, 90.0, 0.7), (400, 120.0, 0.82))
    slow = points((100, 50.0, 0.3), (200, 100.0, 0.55), (300, 150.0, 0.6), (400, 200.0, 0.65))
    lines = tta.table({"baseline": [fast], "parameters pcgrad": [slow]}, [0.5, 0.7, 0.8])
    assert lines[0] == (
        "| arm | seeds | to 0.50 | to 0.70 | to 0.80 | final zero-shot | whole run |"
    )
    assert lines[2] == (
        "| baseline | 1 | 60 s (step 200) | 60 s (step 200) | 120 s (step 400) | 0.820 "
        "| 120 s (400 steps) |"
    )
    assert lines[3] == (
        "| parameters pcgrad | 1 | 100 s (step 200) | not reached | not reached | 0.650 "
        "| 200 s (400 steps) |"
    )


def test_seeds_are_averaged_and_runs_that_miss_a_target_are_counted(
    scripts: tuple[ModuleType, ModuleType],
) -> None:
    tta, _ = scripts
    a = points((100, 40.0, 0.6), (200, 80.0, 0.85))
    b = points((100, 60.0, 0.5), (200, 120.0, 0.75))
    (row,) = tta.table({"embedding pcgrad": [a, b]}, [0.8])[2:]
    assert row == (
        "| embedding pcgrad | 2 | 80 s (step 200), 1/2 runs | 0.800 +- 0.071 "
        "| 100 +- 28 s (200/200 steps) |"
    )


def test_a_new_section_goes_before_the_gpu_section_and_an_old_one_is_replaced(
    scripts: tuple[ModuleType, ModuleType],
) -> None:
    _, page = scripts
    text = "# P\n\n## Step\n\nold step\n\n## GPU\n\ngpu\n"
    added = page.replace_section(text, "New", "## New\n\nnew\n")
    assert added == "# P\n\n## Step\n\nold step\n\n## New\n\nnew\n\n## GPU\n\ngpu\n"
    replaced = page.replace_section(added, "Step", "## Step\n\nnew step\n")
    assert replaced == "# P\n\n## Step\n\nnew step\n\n## New\n\nnew\n\n## GPU\n\ngpu\n"


def test_column_aligned_output_goes_in_a_text_block_and_markdown_tables_do_not(
    scripts: tuple[ModuleType, ModuleType],
) -> None:
    _, page = scripts
    aligned = "variant      ratio\nplain        1.00x\n"
    table = "header line\n\n| arm | time |\n| --- | ---: |\n| baseline | 3 s |\n"
    boxed = page.section("T", "notes", "cmd", 2.0, aligned)
    assert "Output (2 s wall):\n\n```text\nvariant      ratio\nplain        1.00x\n```\n" in boxed
    pasted = page.section("T", "notes", "cmd", 2.0, table)
    assert pasted.endswith("Output (2 s wall):\n\n" + table.strip() + "\n")
    assert "```text" not in pasted
