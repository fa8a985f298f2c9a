"""The dual carried beside LSMR/LSQR (`lsqdiff._dual`): ``z`` with
``A^H z = x - x0`` from the solve's own bidiagonalisation, on every backend."""

from __future__ import annotations

import array_api_compat as aac
import numpy as np
import pytest

from conftest import make_matrix, make_problem, singular_values, to_np, to_xp
from lsqdiff import _driver, _lsmr, _lsqr
from lsqdiff.backends import backend_for

TIGHT = dict(atol=1e-14, btol=1e-14, ctol=0.0, maxiter=400)


def run_dual(xp, method, A, b, x0=None, dual=True):
    """The final state of a (dual-tracking) solve at tight tolerances."""
    A_, b_ = to_xp(xp, A), to_xp(xp, b)
    xp = aac.array_namespace(b_)
    backend = backend_for(xp)
    st = _driver.run(A_, b_, None if x0 is None else to_xp(xp, x0), 0.0,
                     xp=xp, backend=backend, method=method, dtype=A_.dtype,
                     options=(("dual", True),) if dual else (), **TIGHT)
    return st


CASES = {
    "tall": dict(shape="tall"),
    "wide": dict(shape="wide"),
    "square": dict(shape="square"),
    "tall-rankdef": dict(shape="tall", kind="rankdef"),
    "wide-rankdef": dict(shape="wide", kind="rankdef"),
    "complex-tall-rankdef": dict(shape="tall", kind="rankdef", complex_=True),
    "two-columns": dict(shape="tall", kind="rankdef", k=2),
}


@pytest.mark.parametrize("method", [_lsmr, _lsqr], ids=["lsmr", "lsqr"])
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "x0"])
@pytest.mark.parametrize("case", list(CASES))
def test_dual_is_a_preimage_of_the_step(xp, method, warm, case):
    """``A^H z = x - x0`` at any rank, and ``z = A^+H (x - x0)`` where ``A^H`` is
    injective (the two differ by a part in null(A^H) elsewhere)."""
    A, b = make_problem(seed=3, **CASES[case])
    x0 = None
    if warm:
        x0 = np.random.default_rng(4).standard_normal((A.shape[1],) + b.shape[1:]).astype(A.dtype)
    st = run_dual(xp, method, A, b, x0)
    x, z = to_np(st["x"]), to_np(st["zx"])
    step = x - (0 if x0 is None else x0)
    np.testing.assert_allclose(A.conj().T @ z, step, atol=1e-9 * np.abs(step).max())
    if np.linalg.matrix_rank(A) == A.shape[0]:
        y = np.linalg.pinv(A).conj().T @ step
        np.testing.assert_allclose(z, y, atol=1e-9 * np.abs(y).max())


def test_tall_dual_is_not_y():
    """On a tall A (null(A^H) != {0}) z solves A^H z = x but is not A^+H x."""
    A, b = make_problem(shape="tall")
    st = run_dual(np, _lsmr, A, b)
    y = np.linalg.pinv(A).T @ st["x"]
    assert np.abs(st["zx"] - y).max() > 1e-3 * np.abs(y).max()


def test_ill_conditioned_within_forward_accuracy():
    """cond 1e6, wide: z is y to the accuracy the forward's x allows."""
    A = make_matrix(25, 40, singular_values("ill", 25), seed=5)
    b = np.random.default_rng(6).standard_normal(25)
    st = run_dual(np, _lsmr, A, b)
    y = np.linalg.pinv(A).T @ st["x"]
    assert np.linalg.norm(st["zx"] - y) <= 1e-4 * np.linalg.norm(y)


def test_dual_leaves_the_iterates_alone(xp):
    """Tracking the dual changes nothing of the solve itself."""
    A, b = make_problem(shape="tall", kind="rankdef", seed=7)
    plain = run_dual(xp, _lsmr, A, b, dual=False)
    dual = run_dual(xp, _lsmr, A, b)
    np.testing.assert_array_equal(to_np(plain["x"]), to_np(dual["x"]))
    assert int(to_np(plain["itn"])) == int(to_np(dual["itn"]))
