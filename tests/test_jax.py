"""JAX: solves under jit and vmap (x and SolveInfo come back as JAX arrays),
BCOO and LinearOperator under jit, and what ``import lsqdiff`` imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lsqdiff
from conftest import RTOL, assert_converged, assert_solution, damped_ref, lstsq_ref, make_problem

OPTIONS = dict(atol=1e-12, btol=1e-12, maxiter=300)


@pytest.fixture(scope="module")
def jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


@pytest.fixture(scope="module")
def jnp(jax):
    return jax.numpy


def test_jit_returns_x_and_info(jax, jnp, solver):
    A, B = make_problem("tall", seed=40, k=2)
    traces = []

    @jax.jit
    def solve(A, b):
        traces.append(1)
        return solver(A, b, **OPTIONS)

    for j in range(2):
        x, info = solve(jnp.asarray(A), jnp.asarray(B[:, j]))
        assert isinstance(x, jax.Array) and isinstance(info, lsqdiff.SolveInfo)
        assert isinstance(info.istop, jax.Array) and isinstance(info.normr, jax.Array)
        assert_converged(info)
        assert_solution(x, lstsq_ref(A, B[:, j]), RTOL["float64"])
        # same as the eager solve
        x_eager, info_eager = solver(jnp.asarray(A), jnp.asarray(B[:, j]), **OPTIONS)
        np.testing.assert_allclose(np.asarray(x), np.asarray(x_eager), rtol=1e-12, atol=1e-14)
        assert int(info.itn) == int(info_eager.itn)
    assert len(traces) == 1  # the second call reused the compiled solve


def test_jit_traced_damp_and_x0(jax, jnp, solver):
    A, b = make_problem("wide", seed=41)
    x0 = np.random.default_rng(42).standard_normal(A.shape[1])
    solve = jax.jit(lambda A, b, damp, x0: solver(A, b, damp=damp, x0=x0, **OPTIONS))
    for damp in (0.0, 0.3, 2.0):
        x, info = solve(jnp.asarray(A), jnp.asarray(b), jnp.asarray(damp), jnp.asarray(x0))
        assert_converged(info)
        assert_solution(x, damped_ref(A, b, damp, x0), RTOL["float64"])


def test_message_needs_concrete_values(jax, jnp):
    A, b = make_problem("tall", seed=43)

    @jax.jit
    def solve(A, b):
        _, info = lsqdiff.lsmr(A, b)
        return info.message

    with pytest.raises(TypeError, match=r"outside jax.jit"):
        solve(jnp.asarray(A), jnp.asarray(b))
    # outside jit it works
    _, info = jax.jit(lambda A, b: lsqdiff.lsmr(A, b))(jnp.asarray(A), jnp.asarray(b))
    assert info.message == lsqdiff.STOP_MESSAGES[int(info.istop)]


def test_vmap_over_b_columns(jax, jnp, solver):
    """vmap over the columns of b equals the 2-D solve and the separate references;
    each column keeps its own stopping (two columns converge at other iterations)."""
    m, n = 30, 20
    rng = np.random.default_rng(44)
    Q = np.linalg.qr(rng.standard_normal((m, n)))[0]
    A = Q * np.linspace(1.0, 4.0, n)
    B = np.stack([Q @ np.r_[1.0, 1.0, np.zeros(n - 2)], rng.standard_normal(m),
                  Q @ np.r_[np.ones(5), np.zeros(n - 5)]], axis=1)
    solve = jax.vmap(lambda b: solver(jnp.asarray(A), b, **OPTIONS), in_axes=1, out_axes=(1, 0))
    X, info = solve(jnp.asarray(B))
    assert X.shape == (n, 3) and info.istop.shape == (3,)
    assert_converged(info)
    assert list(np.asarray(info.itn)[[0, 2]]) == [2, 5]
    assert_solution(X, lstsq_ref(A, B), 1e-10)
    X2, info2 = solver(jnp.asarray(A), jnp.asarray(B), **OPTIONS)
    np.testing.assert_array_equal(np.asarray(info.itn), np.asarray(info2.itn))
    np.testing.assert_allclose(np.asarray(X), np.asarray(X2), rtol=1e-10, atol=1e-11)


def test_vmap_over_A(jax, jnp, solver):
    """A batch of problems of different conditioning (and so different iteration
    counts): every one matches its own reference."""
    kinds = ["well", "rankdef", "mild"]
    probs = [make_problem("tall", kind, seed=45 + i) for i, kind in enumerate(kinds)]
    As = np.stack([p[0] for p in probs])
    bs = np.stack([p[1] for p in probs])
    X, info = jax.vmap(lambda A, b: solver(A, b, **OPTIONS))(jnp.asarray(As), jnp.asarray(bs))
    assert X.shape == (3, 20)
    assert_converged(info)
    assert len(set(np.asarray(info.itn).tolist())) > 1  # they really stopped apart
    for i in range(3):
        assert_solution(X[i], lstsq_ref(As[i], bs[i]), RTOL["float64"])


def test_jit_of_vmap_over_damp(jax, jnp, solver):
    """A regularisation path: jit(vmap) over damp values."""
    A, b = make_problem("square", "rankdef", seed=46)
    damps = np.array([0.01, 0.1, 1.0, 10.0])
    solve = jax.jit(jax.vmap(lambda d: solver(jnp.asarray(A), jnp.asarray(b), damp=d, **OPTIONS)))
    X, info = solve(jnp.asarray(damps))
    assert_converged(info)
    for i, damp in enumerate(damps):
        assert_solution(X[i], damped_ref(A, b, damp), RTOL["float64"])


def test_bcoo_under_jit(jax, jnp):
    """(LSMR only here and below: the operator plumbing is shared with LSQR.)"""
    from jax.experimental import sparse as jsparse

    A, b = make_problem("wide", seed=47)
    A[np.abs(A) < 0.05] = 0.0
    solve = jax.jit(lambda A, b: lsqdiff.lsmr(A, b, damp=0.1, **OPTIONS))
    x, info = solve(jsparse.BCOO.fromdense(jnp.asarray(A)), jnp.asarray(b))
    assert_converged(info)
    assert_solution(x, damped_ref(A, b, 0.1), RTOL["float64"])


@pytest.mark.parametrize("with_rmatvec", [True, False], ids=["rmatvec", "derived"])
def test_linear_operator_under_jit(jax, jnp, with_rmatvec):
    """A LinearOperator built inside jit from traced arrays (rmatvec given, or
    derived by jax.linear_transpose), for 1-D and 2-D b."""
    A, B = make_problem("tall", seed=48, k=2)

    @jax.jit
    def solve(A, b):
        rmatvec = (lambda u: A.T @ u) if with_rmatvec else None
        op = lsqdiff.LinearOperator(A.shape, lambda v: A @ v, rmatvec)
        return lsqdiff.lsmr(op, b, **OPTIONS)

    for b in (B[:, 0], B):
        x, info = solve(jnp.asarray(A), jnp.asarray(b))
        assert_converged(info)
        assert_solution(x, lstsq_ref(A, b), RTOL["float64"])


def test_float32_under_jit(jax, jnp):
    A, b = make_problem("tall", seed=49)
    x, info = jax.jit(lambda A, b: lsqdiff.lsmr(A, b, atol=1e-5, btol=1e-5, maxiter=300))(
        jnp.asarray(A, dtype=jnp.float32), jnp.asarray(b, dtype=jnp.float32))
    assert x.dtype == jnp.float32 and info.normr.dtype == jnp.float32
    assert_converged(info)
    assert_solution(x, lstsq_ref(A, b), RTOL["float32"])


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_import_imports_no_framework():
    """``import lsqdiff`` imports neither NumPy nor any array framework, nor SciPy."""
    proc = run_python("""
        import sys
        import lsqdiff
        loaded = [m for m in ("jax", "torch", "cupy", "scipy", "numpy") if m in sys.modules]
        assert not loaded, loaded
    """)
    assert proc.returncode == 0, proc.stderr


def test_library_never_enables_x64():
    """The library solves in float32 under JAX's default settings and leaves
    ``jax_enable_x64`` alone (only this test suite turns it on)."""
    pytest.importorskip("jax")
    proc = run_python("""
        import jax, jax.numpy as jnp
        import lsqdiff
        assert not jax.config.jax_enable_x64
        A = jnp.asarray([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
        x, info = lsqdiff.lsmr(A, jnp.asarray([1.0, 3.0, 2.0]))
        assert not jax.config.jax_enable_x64
        assert x.dtype == jnp.float32, x.dtype
        assert bool(info.converged), info
        assert abs(float(x[0]) - 1.0) < 1e-4 and abs(float(x[1]) - 2.0) < 1e-4, x
    """)
    assert proc.returncode == 0, proc.stderr
