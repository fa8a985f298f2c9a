"""Property tests (hypothesis) on every installed backend.

Problems are built from drawn singular values in [1, 1e3] (condition number
capped at 1e3) and orthogonal factors from a drawn seed: raw random matrices
make flaky tests. Shapes come from a small set of sizes from 1 to 30, which
keeps the edge cases (a single row or column) likely and lets JAX reuse its
compiled loops; JAX also runs fewer examples, since each new shape compiles.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lsqdiff
from conftest import (
    assert_converged,
    backend_name,
    damped_ref,
    installed_backends,
    is_jax,
    make_matrix,
    to_np,
    to_xp,
)

SIZES = st.sampled_from([1, 2, 3, 7, 16, 30])
OPTIONS = dict(atol=1e-12, btol=1e-12, maxiter=1000)
JAX_EXAMPLES = 4


@st.composite
def problems(draw):
    """(A, b, damp): A = U diag(s) V^T with s in [1, 1e3], any shape up to 30 x 30."""
    m, n = draw(SIZES), draw(SIZES)
    r = min(m, n)
    exponents = draw(st.lists(st.floats(0.0, 3.0), min_size=r, max_size=r))
    seed = draw(st.integers(0, 2**32 - 1))
    damp = draw(st.one_of(st.just(0.0), st.floats(1e-2, 10.0)))
    A = make_matrix(m, n, 10.0 ** np.asarray(exponents), seed)
    b = np.random.default_rng(seed).standard_normal(m) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    return A, b, damp


def examples_for(*namespaces):
    """Fewer examples when JAX is among the backends (every new shape compiles)."""
    default = settings.default.max_examples
    if any(is_jax(xp) for xp in namespaces):
        return settings(max_examples=min(JAX_EXAMPLES, default))
    return settings(max_examples=default)


def check_solution(A, b, damp, x, info):
    """x solves the damped problem: it matches the reference (pseudo-inverse or
    damped normal equations) and satisfies the normal equations
    A^T (b - A x) = damp^2 x up to rounding."""
    assert_converged(info)
    x = to_np(x)
    assert x.shape == (A.shape[1],) and np.all(np.isfinite(x))
    ref = damped_ref(A, b, damp)
    normb = np.linalg.norm(b)
    # sigma_min >= 1, so ||ref|| <= ||b||: the error is measured on the scale of b
    assert np.linalg.norm(x - ref) <= 1e-7 * normb + 1e-300, (
        np.linalg.norm(x - ref), normb)
    normA = np.linalg.norm(A, 2)
    ne_residual = np.linalg.norm(A.T @ (b - A @ x) - damp**2 * x)
    assert ne_residual <= 1e-9 * normA * (normA * np.linalg.norm(x) + normb) + 1e-300, ne_residual


def test_solution_properties(xp, solver):
    @examples_for(xp)
    @given(problems())
    def check(problem):
        A, b, damp = problem
        x, info = solver(to_xp(xp, A), to_xp(xp, b), damp=damp, **OPTIONS)
        check_solution(A, b, damp, x, info)

    check()


def test_same_answer_on_every_backend(solver):
    """The same problem gives the same answer (to tolerance) on every backend."""
    namespaces = installed_backends()
    if len(namespaces) < 2:
        pytest.skip("only one backend installed")

    @examples_for(*namespaces)
    @given(problems())
    def check(problem):
        A, b, damp = problem
        results = {}
        for xp in namespaces:
            x, info = solver(to_xp(xp, A), to_xp(xp, b), damp=damp, **OPTIONS)
            assert_converged(info)
            results[backend_name(xp)] = to_np(x)
        ref = results.pop("numpy")
        scale = max(np.linalg.norm(ref), 1e-300)
        for name, x in results.items():
            assert x.dtype == ref.dtype, name
            assert np.linalg.norm(x - ref) <= 1e-8 * scale + 1e-10 * np.linalg.norm(b), name

    check()


def test_lsmr_and_lsqr_agree():
    """LSMR and LSQR minimise the same function: same answer (NumPy)."""
    @given(problems())
    def check(problem):
        A, b, damp = problem
        x1, info1 = lsqdiff.lsmr(A, b, damp=damp, **OPTIONS)
        x2, info2 = lsqdiff.lsqr(A, b, damp=damp, **OPTIONS)
        assert_converged(info1)
        assert_converged(info2)
        assert np.linalg.norm(x1 - x2) <= 1e-7 * np.linalg.norm(b) + 1e-300

    check()
