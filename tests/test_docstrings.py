"""Every public docstring example runs and prints what it shows."""

import doctest
import importlib

import pytest

MODULES = ["lsqdiff.solvers", "lsqdiff.operator", "lsqdiff._info", "lsqdiff.adjoint", "lsqdiff._jacobi",
           "lsqdiff._diagnostics",
           "lsqdiff.compat.scipy", "lsqdiff.nullspace", "lsqdiff.nullspace._core", "lsqdiff.nullspace._linear",
           "lsqdiff.nullspace.torch", "lsqdiff.nullspace.optax", "lsqdiff.examples._compare",
           "lsqdiff.examples.gp", "lsqdiff.examples.gp_data"]

#: What each module's examples import besides NumPy (skipped when missing).
NEEDS = {"lsqdiff._diagnostics": ["torch"], "lsqdiff.nullspace": ["torch", "jax"], "lsqdiff.nullspace._core": ["torch"],
         "lsqdiff.nullspace._linear": ["torch"],
         "lsqdiff.nullspace.torch": ["torch"], "lsqdiff.nullspace.optax": ["jax", "optax"],
         "lsqdiff.examples._compare": ["torch"], "lsqdiff.examples.gp": ["torch"],
         "lsqdiff.examples.gp_data": ["sklearn"]}


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's forward mode
def test_docstring_examples(name):
    pytest.importorskip("scipy")
    for package in NEEDS.get(name, []):
        pytest.importorskip(package)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0
