"""Config fuzzing (hypothesis): config files and ``key=value`` overrides through the real CLI.

Every case runs `harmonia.cli.main` in this process with stdout/stderr captured: ``config show``
for overrides and for config files, ``train`` (its training function replaced by a recorder)
for overrides. An invalid config must exit 2 with exactly one line on stderr that names the
field (a dotted config key, the malformed override, or the file); a valid one must exit 0 and
round-trip (the printed or recorded YAML loads back to an equal config). Any exception that
escapes `main` fails the test: a traceback is never an answer.

The default suite tries 1000 cases in all (``HARMONIA_FUZZ_EXAMPLES`` changes the total); the
slow test tries 10 times as many.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faults import record
from harmonia.cli import main
from harmonia.harmonization.curriculum import CURRICULA
from harmonia.harmonization.methods import METHODS
from harmonia.models.sizes import SIZES
from harmonia.training import loop
from harmonia.training.config import (
    CONFIGS_DIR,
    TrainConfig,
    load_train_config,
    shipped_configs,
    train_config_from_dict,
)
from harmonia.typed_config import field_paths, parse_yaml, to_dict, to_yaml

TOTAL = int(os.environ.get("HARMONIA_FUZZ_EXAMPLES", "1000"))
SHARES = {"overrides": 0.45, "files": 0.35, "train": 0.20}


def _paths(tree: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a plain config tree (sections and leaves)."""
    out: list[str] = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.append(f"{prefix}{key}")
            out += _paths(value, f"{prefix}{key}.")
    return out


def _get(tree: Any, path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


TREE = to_dict(load_train_config("demo"))
LEAVES = {p: _get(TREE, p) for p in _paths(TREE) if not isinstance(_get(TREE, p), dict)}
KNOWN = sorted(
    set(_paths(TREE))
    | set(field_paths(TrainConfig))
    | {"model.size", "harmonize.options.beta"}
    | {f"harmonize.curriculum.{k}" for k in ("name", "start", "end", "warmup", "temperature")}
)
CHOICES: dict[str, Sequence[Any]] = {
    "harmonize.method": [*METHODS, "pcgard", "PCGrad"],
    "harmonize.space": ["embedding", "parameters", "batch", "params"],
    "harmonize.curriculum.name": [*CURRICULA, "treshold"],
    "harmonize.sampler.shape": ["linear", "cosine", "cos"],
    "optim.schedule": ["cosine", "constant", "step"],
    "train.device": ["auto", "cpu", "cuda", "cuda:1", "gpu"],
    "model.size": [*SIZES, "huge"],
    "model.backbone.kind": ["modality_agnostic", "modality_specific", "shared"],
    "model.anchor": ["video", "audio", "text", "image"],
}
TRICKY = [
    "", "[", "{", "{a: 1", "'", "%TAG", "---", "- a", ": b", "*x", "&a [*a]", ".inf", "-.nan",
    "1e400", "0x1F", "1_000", "~", "yes", "null", "[1, 2", "!!python/object/apply:os.system [ls]",
    "!!binary aGVsbG8=", "? [a]\n: b", "\t1", "\x00", "\ud800",
]  # fmt: skip


def _flow(value: Any) -> str:
    """A value as one YAML flow expression (what a user types after ``=``)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, allow_unicode=True)
    return text[: -len("\n...\n")] if text.endswith("\n...\n") else text.rstrip("\n")


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 400),
    st.integers(),
    st.floats(),
    st.floats(-2, 2),
    st.text(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["name", "beta", "x", "start", "0", ""]), inner, max_size=3
        )
    ),
    max_leaves=6,
)


def _like(current: Any) -> st.SearchStrategy[Any]:
    """Values of the same shape as a config's current value (often valid, sometimes not)."""
    if isinstance(current, bool):
        return st.booleans()
    if isinstance(current, int):
        return st.integers(-2, 2 * current + 8)
    if isinstance(current, float):
        return st.one_of(st.floats(-0.5, 1.5), st.floats(0, 2 * current + 1))
    if isinstance(current, list):
        inner = _like(current[0]) if current else _scalars
        return st.lists(inner, min_size=max(0, len(current) - 1), max_size=len(current) + 1)
    return _scalars


@st.composite
def typo(draw: st.DrawFn, key: str) -> str:
    i = draw(st.integers(0, max(0, len(key) - 1)))
    edit = draw(st.sampled_from(["drop", "double", "swap", "deeper", "prefix", "case"]))
    if edit == "drop":
        return key[:i] + key[i + 1 :]
    if edit == "double":
        return key[: i + 1] + key[i:]
    if edit == "swap" and i + 1 < len(key):
        return key[:i] + key[i + 1] + key[i] + key[i + 2 :]
    if edit == "deeper":
        return f"{key}.{draw(st.sampled_from(['x', 'name', 'lr', '0', 'enabled']))}"
    if edit == "prefix":
        return draw(st.sampled_from(["x.", "train.", "model.", "data.build."])) + key
    return key.upper()


@st.composite
def override(draw: st.DrawFn) -> tuple[str, str]:
    """(key, ``key=value`` text); the key is what the error must name ('' for malformed text)."""
    kind = draw(st.sampled_from(["typed"] * 5 + ["any"] * 2 + ["typo", "random", "raw"]))
    if kind == "raw":
        text = draw(st.one_of(st.text(max_size=16), st.sampled_from(TRICKY)))
        text = text if not text.startswith("-") else "x" + text  # argparse's own options
        return "", text
    key = draw(st.sampled_from(KNOWN))
    if kind == "typo":
        key = draw(typo(key))
    elif kind == "random":
        key = draw(st.text(st.characters(codec="ascii"), min_size=1, max_size=14))
        key = key if not key.startswith("-") else "x" + key
    if kind == "typed" and key in CHOICES:
        value = _flow(draw(st.sampled_from(CHOICES[key])))
    elif kind == "typed" and key in LEAVES:
        value = _flow(draw(_like(LEAVES[key])))
    else:
        value = draw(st.one_of(_values.map(_flow), st.sampled_from(TRICKY), st.text(max_size=10)))
    text = f"{key}={value}"
    return text.partition("=")[0].strip(), text  # the key as the CLI splits it


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    """`harmonia ARGV` in this process: exit code, stdout, stderr (exceptions propagate)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


_DOTTED = re.compile(r"[A-Za-z_][\w\-]*(?:\.[A-Za-z_][\w\-]*|\[\d+\])+")


def names_a_field(message: str, keys: Sequence[str], texts: Sequence[str]) -> bool:
    """The message names an override's key or the part of it that is wrong (a section of it, as
    a whole word), the malformed override, or another dotted key that exists in the config (a
    check across fields names the other field)."""
    for key in (k.strip() for k in keys):  # the CLI strips blanks around an override's key
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            word = re.escape(".".join(parts[:n]))
            if key and re.search(rf"(?<![\w.-]){word}(?![\w-])", message):
                return True
    if any(repr(text) in message for text in texts):
        return True
    known = set(KNOWN)
    return any(re.sub(r"\[\d+\]", "", path) in known for path in _DOTTED.findall(message))


def check_error(code: int, out: str, err: str) -> str:
    """An invalid config: exit 2, nothing on stdout, exactly one line on stderr."""
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harmonia: error: "), err
    assert "Traceback" not in err and out == ""
    return lines[0]


def round_trips(printed: str) -> bool:
    """The printed config, loaded back and printed again, is the same text (and so the same
    config): what `config show` prints is a config file that means what was shown."""
    return to_yaml(train_config_from_dict(parse_yaml(printed))) == printed


def fuzz(
    name: str, examples: int, strategy: st.SearchStrategy[Any], case: Callable[[Any], str]
) -> Counter[str]:
    """Run ``case`` on ``examples`` drawn values; count the outcomes it returns."""
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def each(value: Any) -> None:
        outcomes[case(value)] += 1

    each()
    tried = sum(outcomes.values())
    record(f"config_fuzz_{name}", tried=tried, tracebacks=0, **outcomes)
    assert tried >= 0.9 * examples
    return outcomes


# ------------------------------------------------------------------------- overrides
def override_case(items: list[tuple[str, str]]) -> str:
    keys, texts = [k for k, _ in items], [t for _, t in items]
    code, out, err = run_cli(["config", "show", "demo", *texts])
    if code != 0:
        line = check_error(code, out, err)
        assert names_a_field(line, keys, texts), (texts, line)
        return "invalid"
    assert err == ""
    assert round_trips(out)
    return "valid"


def test_fuzz_overrides() -> None:
    counts = fuzz(
        "overrides",
        round(TOTAL * SHARES["overrides"]),
        st.lists(override(), min_size=1, max_size=3),
        override_case,
    )
    assert counts["valid"] > 0.05 * sum(counts.values())  # the fuzzer reaches valid configs too


# ------------------------------------------------------------------------- config files
RAW_DOCUMENTS: dict[bytes, list[str]] = {
    b"": [], b"[]": [], b"- 1\n- 2\n": [], b"just text": [], b"{": [],
    b"a: 1\n---\nb: 2\n": [], b"\xff\xfe\x00bad": [], b"optim:\n  lr: \xe9\n": [],
    b"\xef\xbb\xbfoptim: {lr: 0.5}\n": [], b"optim:\n\tlr: 1\n": [],
    b"[" * 3000 + b"]" * 3000: [], b"base: [demo]\n": ["base"], b"base: nope\n": ["base"],
    b"base: self.yaml\n": ["base"], b"optim: &o {lr: 0.1}\ntrain: *o\n": ["train.lr"],
    b"a: &a [1, 1]\nb: &b [*a, *a]\nc: [*b, *b, *b]\n": ["a"],
    b"!!python/object/apply:os.system [echo pwned]\n": [],
    b"optim: !!python/name:os.system\n": ["optim"],
}  # fmt: skip
"""Documents no mutation of a shipped config produces, with the keys their error may name."""


def _shipped_tree(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS_DIR / f"{name}.yaml").read_text(encoding="utf-8")) or {}


@st.composite
def config_file(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """(file bytes, keys the error may name): a mutated shipped config or a raw document."""
    if draw(st.integers(0, 9)) == 0:
        raw = draw(st.sampled_from(list(RAW_DOCUMENTS)))
        return raw, RAW_DOCUMENTS[raw]
    tree = _shipped_tree(draw(st.sampled_from(shipped_configs())))
    keys: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "set", "set", "delete", "unknown", "base"]))
        key = draw(st.sampled_from(KNOWN))
        if action == "unknown":
            key = draw(typo(key))
        keys.append(key)
        if action == "base":
            keys.append("base")
            tree["base"] = draw(st.sampled_from(["demo", "avmnist", "missing", "self", 3, None]))
            continue
        node, parts = tree, key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if action == "delete":
            node.pop(parts[-1], None)
        elif key in CHOICES and draw(st.booleans()):
            node[parts[-1]] = draw(st.sampled_from(CHOICES[key]))
        elif key in LEAVES and draw(st.booleans()):
            node[parts[-1]] = draw(_like(LEAVES[key]))
        else:
            node[parts[-1]] = draw(_values)
    text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)
    return text.replace("base: self\n", "base: self.yaml\n").encode("utf-8"), keys


def file_case(tmp: Path) -> Callable[[tuple[bytes, list[str]]], str]:
    def case(value: tuple[bytes, list[str]]) -> str:
        content, keys = value
        path = tmp / "self.yaml"
        path.write_bytes(content)
        code, out, err = run_cli(["config", "show", str(path)])
        if code != 0:
            line = check_error(code, out, err)
            assert str(path) in line or names_a_field(line, keys, []), (content[:300], line)
            return "invalid"
        assert err == ""
        assert round_trips(out)
        return "valid"

    return case


def test_fuzz_config_files(tmp_path: Path) -> None:
    counts = fuzz("files", round(TOTAL * SHARES["files"]), config_file(), file_case(tmp_path))
    assert counts["valid"] > 0.1 * sum(counts.values())


# ------------------------------------------------------------------------- harmonia train
def train_case(tmp: Path, seen: list[Any]) -> Callable[[tuple[str, list[tuple[str, str]]]], str]:
    def case(value: tuple[str, list[tuple[str, str]]]) -> str:
        config, items = value
        keys, texts = [k for k, _ in items], [t for _, t in items]
        seen.clear()
        code, out, err = run_cli(
            ["train", config, "--out", str(tmp / "run"), *texts, "--no-progress"]
        )
        if code != 0:
            line = check_error(code, out, err)
            assert names_a_field(line, keys, texts), (texts, line)
            assert not seen  # nothing started
            return "invalid"
        (cfg,) = seen
        assert cfg == load_train_config(config, [*texts, "train.progress=false"])
        assert train_config_from_dict(parse_yaml(to_yaml(cfg))) == cfg
        return "valid"

    return case


def test_fuzz_train_command(tmp_path: Path) -> None:
    seen: list[Any] = []

    def recorder(cfg: TrainConfig, out: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(cfg)
        return {
            "status": "finished",
            "steps": 0,
            "time_s": 0.0,
            "final_metrics": {},
            "skipped_samples": 0,
        }

    strategy = st.tuples(st.sampled_from(shipped_configs()), st.lists(override(), max_size=3))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "train", recorder)
        fuzz("train", round(TOTAL * SHARES["train"]), strategy, train_case(tmp_path, seen))


@pytest.mark.slow
def test_fuzz_ten_times_more(tmp_path: Path) -> None:
    """The same three fuzzers with 10x the examples (``make test-slow``)."""
    global TOTAL
    before, TOTAL = TOTAL, 10 * TOTAL
    try:
        test_fuzz_overrides()
        test_fuzz_config_files(tmp_path)
        test_fuzz_train_command(tmp_path)
    finally:
        TOTAL = before
