"""Old import paths kept for one release: each warns once and hands over the new module."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

REMOVED_IN = "0.2.0"


def moved_module(old: str, new: str) -> ModuleType:
    """The module ``new``, after a DeprecationWarning saying that ``old`` moved there.

    A shim module at the old path does ``sys.modules[__name__] = moved_module(__name__, NEW)``,
    so ``import OLD`` and ``from OLD import name`` keep working and give the new objects.
    """
    warnings.warn(
        f"{old} moved to {new}; the old name is removed in harmonia {REMOVED_IN}",
        DeprecationWarning,
        stacklevel=3,
    )
    return importlib.import_module(new)
