"""Harmonization methods: each maps per-sample Gram matrices to combination coefficients.

One file per method behind `Method` (see `base`). `METHODS` maps the names users pass to
`Harmonizer(method=...)` to their classes; `build_method` validates the name and options.
"""

from __future__ import annotations

import inspect
from typing import Any

from harmonia.harmonization.methods.base import Combination, Method
from harmonia.harmonization.methods.gradvac import GradVac
from harmonia.harmonization.methods.mgda import MGDA
from harmonia.harmonization.methods.none import NoSurgery
from harmonia.harmonization.methods.pcgrad import PCGrad
from harmonia.harmonization.methods.upgrad import UPGrad

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (NoSurgery, PCGrad, GradVac, UPGrad, MGDA)
}


def build_method(name: str, eps: float = 0.0, **options: Any) -> Method:
    """The method called ``name`` with its options; unknown names or options raise ValueError."""
    if name not in METHODS:
        raise ValueError(
            f"unknown harmonization method {name!r}; valid methods: {', '.join(METHODS)}"
        )
    cls = METHODS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "eps"}
    unknown = set(options) - accepted
    if unknown:
        valid = ", ".join(sorted(accepted)) or "none"
        raise ValueError(
            f"method {name!r} got unknown option(s) {', '.join(sorted(unknown))}; valid options: {valid}"
        )
    return cls(eps=eps, **options)


__all__ = [
    "METHODS",
    "MGDA",
    "Combination",
    "GradVac",
    "Method",
    "NoSurgery",
    "PCGrad",
    "UPGrad",
    "build_method",
]
