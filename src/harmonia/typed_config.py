"""Typed configs: dataclasses loaded from YAML plus dotted ``key=value`` overrides.

A config is a tree of dataclasses. `load_config` reads YAML (optionally building on a ``base:``
file), applies overrides such as ``optim.lr=3e-4`` and converts the result into the dataclasses,
checking every value against its type hint (Literal, Optional/unions, lists, tuples, dicts, nested
dataclasses). A dataclass may define ``validate(self)`` to check value ranges; it raises
`FieldError` naming the field and the loader turns that into a `ConfigError` with the full dotted
key, e.g. ``optim.lr: expected a positive float, got -1``. Nothing here knows any section.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from harmonia.errors import ConfigError

T = TypeVar("T")

BASE_KEY = "base"
"""Top-level YAML key naming another config file this one starts from."""


class FieldError(ValueError):
    """Raised by a config class's ``validate()``: which field (relative, dotted) and what is wrong."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-3`` as a float (YAML 1.2), as people write it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
        |[-+]?[0-9][0-9_]*\.[0-9_]*
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class _NoAliasLoader(_Loader):
    """The config loader refusing aliases (``*name``), which can make a small file expand into
    an unbounded value once something walks it (a billion-laughs document)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str, *, source: str = "<string>", aliases: bool = True) -> Any:
    """Parse YAML text with the config loader; syntax errors become a one-line ConfigError.

    ``aliases=False`` refuses YAML aliases, for files harmonia wrote itself (they have none).
    """
    try:
        if not aliases:
            return yaml.load(text, Loader=_NoAliasLoader)  # derives from SafeLoader
        return yaml.load(text, Loader=_Loader)  # derives from SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None


def load_yaml_tree(path: Path, resolve_base: Callable[[str, Path], Path] | None = None) -> dict:
    """Read a YAML mapping; if it names a ``base:`` config, deep-merge it over that one.

    ``resolve_base(name, including_file)`` turns the base's name into a path; by default the
    name is a path relative to the including file.
    """
    chain: list[Path] = []
    return _load_tree(Path(path), resolve_base, chain)


def _load_tree(
    path: Path, resolve_base: Callable[[str, Path], Path] | None, chain: list[Path]
) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p.name) for p in [*chain, resolved])
        raise ConfigError(f"{path}: '{BASE_KEY}' configs form a cycle: {cycle}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    data = parse_yaml(text, source=str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {_show(data)}")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: '{BASE_KEY}' must name a config, got {_show(base)}")
    try:
        base_path = resolve_base(base, path) if resolve_base else path.parent / base
    except ConfigError as err:
        raise ConfigError(f"{path}: '{BASE_KEY}': {err}") from None
    return deep_merge(_load_tree(base_path, resolve_base, [*chain, resolved]), data)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """A copy of ``base`` with ``update`` merged in; nested mappings merge, everything else replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``a.b.c=value`` into the dotted key and the value parsed as a YAML scalar or list."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not _KEY.match(key):
        raise ConfigError(f"override {item!r} must look like section.key=value")
    return key, parse_yaml(text, source=f"override {key}")


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict:
    """A copy of ``data`` with each ``key=value`` override set at its dotted path."""
    result = deep_merge({}, data)
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, Mapping):
                child = node[part] = dict(child)
            else:
                inner = ".".join(parts[: depth + 1])
                raise ConfigError(f"{key}: '{inner}' is a value ({_show(child)}), not a section")
            node = child
        node[parts[-1]] = value
    return result


def load_config(
    cls: type[T],
    source: Path | str | Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    resolve_base: Callable[[str, Path], Path] | None = None,
) -> T:
    """Load a YAML file (or a mapping), apply overrides and convert into a validated ``cls``."""
    data = source if isinstance(source, Mapping) else load_yaml_tree(Path(source), resolve_base)
    return from_dict(cls, apply_overrides(data, overrides))


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Convert a plain mapping into the dataclass ``cls``, validating every field recursively."""
    return _Converter(cls).dataclass(cls, data, "")


def to_dict(obj: Any) -> Any:
    """Plain YAML-ready data (dicts, lists, scalars) from a config dataclass tree."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists inline (``betas: [0.9, 0.999]``)."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)


def to_yaml(obj: Any) -> str:
    """The config as YAML text, fields in declaration order; `load_config` reads it back equal."""
    return yaml.dump(to_dict(obj), Dumper=_Dumper, sort_keys=False, width=100)


def field_paths(cls: type) -> Iterator[str]:
    """Every dotted key of a dataclass tree (sections and leaves), for suggestions and docs."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        yield f.name
        for inner in _dataclass_types(hints[f.name]):
            yield from (f"{f.name}.{sub}" for sub in field_paths(inner))


def _dataclass_types(tp: Any) -> list[type]:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return [tp]
    if _is_union(tp):
        return [t for arg in typing.get_args(tp) for t in _dataclass_types(arg)]
    return []


def suggest(key: str, candidates: Sequence[str]) -> str | None:
    """The closest candidate to a mistyped key, if one is close enough to be a likely typo."""
    best = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return best[0] if best else None


def _suggest_path(key: str, paths: list[str]) -> str | None:
    """A dotted key the user may have meant: same (or nearly the same) last part, else nearest."""
    by_leaf: dict[str, list[str]] = {}
    for path in paths:
        by_leaf.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    leaf = suggest(key.rsplit(".", 1)[-1], list(by_leaf))
    return min(by_leaf[leaf], key=len) if leaf else suggest(key, paths)


# ---------------------------------------------------------------------------------------------
# Checks for validate() hooks


def check(condition: bool, key: str, message: str) -> None:
    """Raise FieldError(key, message) unless ``condition`` holds."""
    if not condition:
        raise FieldError(key, message)


def _usable(value: Any) -> bool:
    """Finite, and not a subnormal float (a step size or temperature of 1e-320 is a typo)."""
    if isinstance(value, float):
        return math.isfinite(value) and (value == 0.0 or abs(value) >= sys.float_info.min)
    return True


def _bounded(sign: str, value: Any) -> str:
    return f"finite {sign} float" if isinstance(value, float) else f"{sign} {_kind(value)}"


def require_positive(obj: Any, *names: str) -> None:
    """Each named numeric field must be finite and > 0."""
    for name in names:
        value = getattr(obj, name)
        ok = value > 0 and _usable(value)
        check(ok, name, f"expected a {_bounded('positive', value)}, got {_show(value)}")


def require_non_negative(obj: Any, *names: str) -> None:
    """Each named numeric field must be finite and >= 0."""
    for name in names:
        value = getattr(obj, name)
        ok = value >= 0 and _usable(value)
        check(ok, name, f"expected a {_bounded('non-negative', value)}, got {_show(value)}")


def require_range(
    obj: Any, name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    """The named field must lie in the interval from ``low`` to ``high`` (closed unless told)."""
    value = getattr(obj, name)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    interval = f"{'(' if low_open else '['}{_show(low)}, {_show(high)}{')' if high_open else ']'}"
    kind = _kind(value)
    article = "an" if kind.startswith("i") else "a"
    check(above and below, name, f"expected {article} {kind} in {interval}, got {_show(value)}")


# ---------------------------------------------------------------------------------------------
# Conversion


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _kind(value: Any) -> str:
    return "integer" if isinstance(value, int) and not isinstance(value, bool) else "float"


def _show(value: Any) -> str:
    """A value as the user would have typed it (``-1`` not ``-1.0``, strings quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        return text if len(text) <= 60 else text[:57] + "..."
    return repr(value)


_TYPE_NAMES = {int: "an integer", float: "a float", str: "a string", bool: "true or false"}


def _describe(tp: Any) -> str:
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(_show(a) for a in typing.get_args(tp))
    if _is_union(tp):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (list, tuple) or tp in (list, tuple):
        return "a list"
    if origin is dict or tp is dict or (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


class _Converter:
    """Walks the data beside the type hints; remembers the root for key suggestions."""

    def __init__(self, root: type) -> None:
        self.root = root

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{key}: {message}" if key else message)

    def dataclass(self, cls: type[T], data: Any, prefix: str) -> T:
        key = prefix.rstrip(".")
        if not isinstance(data, Mapping):
            self.fail(key, f"expected a mapping of fields, got {_show(data)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        for name in data:
            if str(name) not in fields:
                self.unknown(f"{prefix}{name}", prefix, list(fields))
        kwargs = {name: self.value(data[name], hints[name], f"{prefix}{name}") for name in data}
        for name, f in fields.items():
            no_default = (
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            )
            if no_default and name not in kwargs:
                self.fail(f"{prefix}{name}", "missing required value")
        try:
            obj = cls(**kwargs)
            validate = getattr(obj, "validate", None)
            if callable(validate):
                validate()
        except FieldError as err:
            self.fail(f"{prefix}{err.key}", err.message)
        except ConfigError as err:
            # a class that checks itself on construction (e.g. __post_init__) with its own words
            self.fail(key, str(err))
        return obj

    def unknown(self, key: str, prefix: str, names: list[str]) -> typing.NoReturn:
        leaf = key[len(prefix) :]
        near = suggest(leaf, names)
        guess = f"{prefix}{near}" if near else _suggest_path(key, list(field_paths(self.root)))
        hint = f" (did you mean '{guess}'?)" if guess else ""
        self.fail("", f"unknown key '{key}'{hint}")

    def value(self, value: Any, tp: Any, key: str) -> Any:
        if tp is Any:
            return value
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.dataclass(tp, value, f"{key}.")
        if _is_union(tp):
            return self.union(value, args, key)
        if origin is Literal:
            if value in args and type(value) in {type(a) for a in args}:
                return value
            near = suggest(str(value), [str(a) for a in args]) if isinstance(value, str) else None
            hint = f" (did you mean {near!r}?)" if near else ""
            self.fail(key, f"expected {_describe(tp)}, got {_show(value)}{hint}")
        if tp is bool:
            if isinstance(value, bool):
                return value
        elif tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
        elif tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif tp is str:
            if isinstance(value, str):
                return value
        elif tp is Path:
            if isinstance(value, (str, Path)):
                return Path(value)
        elif origin is list or tp is list:
            if isinstance(value, (list, tuple)):
                inner = args[0] if args else Any
                return [self.value(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple or tp is tuple:
            if isinstance(value, (list, tuple)):
                return self.tuple(value, args, key)
        elif origin is dict or tp is dict:
            if isinstance(value, Mapping):
                inner = args[1] if args else Any
                return {str(k): self.value(v, inner, f"{key}.{k}") for k, v in value.items()}
        elif isinstance(tp, type) and isinstance(value, tp):
            return value
        self.fail(key, f"expected {_describe(tp)}, got {_show(value)}")

    def union(self, value: Any, args: tuple[Any, ...], key: str) -> Any:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return self.value(value, options[0], key)
        for option in options:
            try:
                return self.value(value, option, key)
            except ConfigError:
                continue
        self.fail(key, f"expected {_describe(Union[tuple(args)])}, got {_show(value)}")  # noqa: UP007

    def tuple(self, value: Sequence[Any], args: tuple[Any, ...], key: str) -> tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(self.value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(value) != len(args):
            self.fail(key, f"expected a list of {len(args)} values, got {_show(list(value))}")
        inner = args or (Any,) * len(value)
        return tuple(
            self.value(v, t, f"{key}[{i}]")
            for i, (v, t) in enumerate(zip(value, inner, strict=True))
        )
