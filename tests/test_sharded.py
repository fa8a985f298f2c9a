"""JAX solves sharded over 4 forced host devices (``sharded_jax.py``, in a
subprocess: the device count is fixed when JAX starts, and this session's JAX
has one device): A sharded by rows and by columns, dense and as a
LinearOperator, equal to the float64 references (as the unsharded solve is),
forward and gradient, and no device ever holds all of A."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lsqdiff

pytest.importorskip("jax", reason="jax is not installed")

CASES = ["rows/dense", "rows/operator", "columns/dense"]


@pytest.fixture(scope="module")
def sharded():
    env = dict(os.environ)
    src = str(Path(lsqdiff.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in [env.get("PYTHONPATH")] if p])
    # Its own flags: the device count, and -O0 as the suite's conftest sets (compile time).
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    script = Path(__file__).with_name("sharded_jax.py")
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
def test_forward_equals_unsharded(sharded, case):
    r = sharded[case]
    assert r["converged"]
    assert r["diff"] < 1e-9
    assert not r["full_A"], "a device holds an array of A's full shape"
    assert r["argument_bytes"] < r["A_bytes"] / 2  # each device gets a quarter of A (and b)
    # x has A's column layout: replicated for row-sharded A, sharded with its columns.
    assert r["x_spec"] == ("P()" if case.startswith("rows") else "P('d',)")


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_gradient_equals_unsharded(sharded, layout):
    r = sharded[f"{layout}/grad"]
    assert r["diff"] < 1e-7 * r["scale"]  # the solves stop at atol = btol = 1e-10
    assert r["gA_spec"] == r["A_spec"]
    assert not r["full_A"], "the backward pass gathers A"
