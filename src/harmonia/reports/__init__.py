"""Deprecated: moved to `harmonia.audit` (this alias is removed in harmonia 0.2.0)."""

import sys

from harmonia.deprecation import moved_module

sys.modules[__name__] = moved_module(__name__, "harmonia.audit")
