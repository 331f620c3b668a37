"""The usage examples in every registered method's docstring run and print what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

from harmonia.harmonization.methods import METHODS, build_method

MODULES = sorted({type(build_method(name)).__module__ for name in METHODS})


@pytest.mark.parametrize("module", MODULES)
def test_docstring_example_runs(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 3, f"{module} shows no example"
    assert result.failed == 0
