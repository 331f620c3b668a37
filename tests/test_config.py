"""The generic typed-config machinery: conversion, validation messages, overrides, round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harmonia.errors import ConfigError
from harmonia.typed_config import (
    apply_overrides,
    check,
    field_paths,
    from_dict,
    load_config,
    load_yaml_tree,
    parse_override,
    parse_yaml,
    require_positive,
    require_range,
    to_dict,
    to_yaml,
)


@dataclass
class Inner:
    rate: float = 0.5
    name: str | None = None

    def validate(self) -> None:
        require_range(self, "rate", 0.0, 1.0)


@dataclass
class Section:
    lr: float = 1e-3
    steps: int = 10
    mode: Literal["fast", "slow"] = "fast"
    betas: tuple[float, float] = (0.9, 0.99)
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    extra: dict[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    flag: bool = False

    def validate(self) -> None:
        require_positive(self, "lr", "steps")
        check(len(self.sizes) > 0, "sizes", "expected at least one size")


@dataclass
class Root:
    section: Section = field(default_factory=Section)
    other: Inner = field(default_factory=Inner)


@dataclass
class Required:
    path: str


def error(data: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        from_dict(Root, data)
    return str(exc.value)


def test_defaults_and_nested_conversion() -> None:
    cfg = from_dict(
        Root,
        {"section": {"lr": 2, "steps": 3.0, "betas": [0.5, 0.6], "maybe": {"rate": 1}}},
    )
    assert cfg.section.lr == 2.0 and isinstance(cfg.section.lr, float)
    assert cfg.section.steps == 3 and isinstance(cfg.section.steps, int)
    assert cfg.section.betas == (0.5, 0.6)
    assert cfg.section.maybe == Inner(rate=1.0)
    assert cfg.other == Inner()


def test_unknown_key_names_the_dotted_path_and_suggests() -> None:
    assert error({"section": {"stpes": 1}}) == (
        "unknown key 'section.stpes' (did you mean 'section.steps'?)"
    )


def test_unknown_key_suggests_from_the_whole_tree() -> None:
    assert error({"steps": 1}) == "unknown key 'steps' (did you mean 'section.steps'?)"
    assert error({"zzzz": 1}) == "unknown key 'zzzz'"


def test_out_of_range_value_names_the_key() -> None:
    assert error({"section": {"lr": -1}}) == "section.lr: expected a finite positive float, got -1"
    assert error({"section": {"steps": 0}}) == "section.steps: expected a positive integer, got 0"
    assert error({"other": {"rate": 1.5}}) == "other.rate: expected a float in [0, 1], got 1.5"
    assert error({"section": {"inner": {"rate": -0.1}}}) == (
        "section.inner.rate: expected a float in [0, 1], got -0.1"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"section": {"lr": "fast"}}, "section.lr: expected a float, got 'fast'"),
        ({"section": {"lr": True}}, "section.lr: expected a float, got true"),
        ({"section": {"steps": 2.5}}, "section.steps: expected an integer, got 2.5"),
        ({"section": {"flag": 1}}, "section.flag: expected true or false, got 1"),
        ({"section": {"betas": [0.9]}}, "section.betas: expected a list of 2 values, got [0.9]"),
        ({"section": {"betas": [0.9, "x"]}}, "section.betas[1]: expected a float, got 'x'"),
        ({"section": {"sizes": [1, "a"]}}, "section.sizes[1]: expected an integer, got 'a'"),
        ({"section": {"sizes": []}}, "section.sizes: expected at least one size"),
        ({"section": 3}, "section: expected a mapping of fields, got 3"),
        ({"section": {"maybe": {"name": 4}}}, "section.maybe.name: expected a string, got 4"),
        (
            {"section": {"mode": "fsat"}},
            "section.mode: expected one of 'fast', 'slow', got 'fsat' (did you mean 'fast'?)",
        ),
    ],
)
def test_wrong_types_name_the_key(data: dict, message: str) -> None:
    assert error(data) == message


def test_missing_required_field() -> None:
    with pytest.raises(ConfigError, match=r"^path: missing required value$"):
        from_dict(Required, {})


def test_optional_accepts_null() -> None:
    assert from_dict(Root, {"section": {"maybe": None}}).section.maybe is None


def test_overrides_parse_yaml_scalars_and_lists() -> None:
    data = apply_overrides(
        {"section": {"lr": 1.0}},
        ["section.lr=3e-4", "section.sizes=[4, 5]", "section.mode=slow", "other.name=null"],
    )
    cfg = from_dict(Root, data)
    assert cfg.section.lr == pytest.approx(3e-4)
    assert cfg.section.sizes == [4, 5]
    assert cfg.section.mode == "slow"
    assert cfg.other.name is None


def test_override_errors() -> None:
    with pytest.raises(ConfigError, match=r"must look like section\.key=value"):
        parse_override("section.lr")
    with pytest.raises(ConfigError, match="must look like"):
        parse_override("=3")
    with pytest.raises(ConfigError, match=r"section.lr.x: 'section.lr' is a value"):
        apply_overrides({"section": {"lr": 1.0}}, ["section.lr.x=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'section.lrr'"):
        from_dict(Root, apply_overrides({}, ["section.lrr=1"]))


def test_yaml_reads_exponent_floats() -> None:
    assert parse_yaml("a: 1e-3\nb: 2E5\nc: 1.5\nd: 7\ne: none") == {
        "a": 1e-3,
        "b": 2e5,
        "c": 1.5,
        "d": 7,
        "e": "none",
    }


def test_invalid_yaml_is_one_line() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_yaml("a: [1, 2", source="x.yaml")
    assert str(exc.value).startswith("x.yaml: invalid YAML")
    assert "\n" not in str(exc.value)


def test_base_configs_merge(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("section:\n  lr: 0.5\n  steps: 4\nother:\n  rate: 0.1\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nsection:\n  steps: 8\n")
    cfg = load_config(Root, tmp_path / "child.yaml", ["other.rate=0.2"])
    assert (cfg.section.lr, cfg.section.steps, cfg.other.rate) == (0.5, 8, 0.2)


def test_base_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml_tree(tmp_path / "a.yaml")


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"config file not found: /nonexistent\.yaml"):
        load_config(Root, Path("/nonexistent.yaml"))


def test_field_paths_lists_nested_keys() -> None:
    paths = list(field_paths(Root))
    assert "section.inner.rate" in paths and "section.maybe.name" in paths
    assert "other.rate" in paths


finite = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)


@given(
    lr=finite,
    steps=st.integers(1, 10**9),
    mode=st.sampled_from(["fast", "slow"]),
    sizes=st.lists(st.integers(-5, 5), min_size=1, max_size=4),
    rate=st.floats(0.0, 1.0),
    name=st.one_of(st.none(), st.text(max_size=8)),
    extra=st.dictionaries(st.text(min_size=1, max_size=5), st.integers(), max_size=3),
)
def test_round_trip_through_yaml(
    lr: float, steps: int, mode: Any, sizes: list[int], rate: float, name: Any, extra: dict
) -> None:
    cfg = Root(
        section=Section(
            lr=lr, steps=steps, mode=mode, sizes=sizes, extra=extra, maybe=Inner(rate, name)
        ),
        other=Inner(rate=rate),
    )
    assert from_dict(Root, to_dict(cfg)) == cfg
    assert from_dict(Root, parse_yaml(to_yaml(cfg))) == cfg
