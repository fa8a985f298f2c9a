"""Every public docstring example runs and prints what it shows."""

import doctest
import importlib

import pytest

MODULES = ["lsqdiff.solvers", "lsqdiff.operator", "lsqdiff._info", "lsqdiff.adjoint",
           "lsqdiff.compat.scipy"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    pytest.importorskip("scipy")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0
