"""Deprecated: moved to `harmonia.typed_config` (this alias is removed in harmonia 0.2.0)."""

import sys

from harmonia.deprecation import moved_module

sys.modules[__name__] = moved_module(__name__, "harmonia.typed_config")
