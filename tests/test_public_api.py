"""What a user imports: top-level names (loaded lazily) and methods passed as objects."""

from __future__ import annotations

import subprocess
import sys

import pytest

import harmonia
from harmonia.harmonization.methods import GradVac, PCGrad


def test_every_top_level_name_resolves_to_its_module_object() -> None:
    import harmonia.harmonization as harmonization

    for name in harmonia.__all__:
        assert getattr(harmonia, name) is not None
    assert harmonia.Harmonizer is harmonization.Harmonizer
    assert harmonia.PCGrad is PCGrad
    with pytest.raises(AttributeError, match="no attribute 'Harmonise'"):
        _ = harmonia.Harmonise  # type: ignore[attr-defined]


def test_importing_the_package_does_not_load_torch() -> None:
    code = "import sys, harmonia; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"  # the CLI's --help stays fast


def test_a_method_object_is_used_as_given_and_options_are_not_mixed_in() -> None:
    method = GradVac(beta=0.3)
    harmonizer = harmonia.Harmonizer(method=method)
    assert harmonizer.method is method
    with pytest.raises(ValueError, match=r"beta belong to the PCGrad\(\.\.\.\) constructor"):
        harmonia.Harmonizer(method=PCGrad(), beta=0.5)
    assert harmonia.Harmonizer(method="gradvac", beta=0.3).method.beta == method.beta
