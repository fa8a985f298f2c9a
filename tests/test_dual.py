"""The dual carried beside LSMR/LSQR (`lsqdiff._dual`): ``y = A^+H (x - x0)``
from the forward's own bidiagonalisation, on every backend, against pinv."""

from __future__ import annotations

import array_api_compat as aac
import numpy as np
import pytest

from conftest import make_matrix, make_problem, singular_values, to_np, to_xp
from lsqdiff import _driver, _dual, _lsmr, _lsqr
from lsqdiff._scalars import ArrayScalars, HostScalars
from lsqdiff.backends import backend_for

TIGHT = dict(atol=1e-14, btol=1e-14, ctol=0.0, maxiter=400)


def run_dual(xp, method, A, b, x0=None, dual=True):
    """The final state of a dual-tracking solve, and the scalar arithmetic it used."""
    A_, b_ = to_xp(xp, A), to_xp(xp, b)
    xp = aac.array_namespace(b_)
    backend = backend_for(xp)
    st = _driver.run(A_, b_, None if x0 is None else to_xp(xp, x0), 0.0,
                     xp=xp, backend=backend, method=method, dtype=A_.dtype,
                     options=(("dual", True),) if dual else (), **TIGHT)
    if backend.traced or b.ndim == 2:
        S = ArrayScalars(xp, xp.float64, aac.device(b_), tuple(b.shape[1:]))
    else:
        S = HostScalars()
    return st, S


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
def test_range_part_is_pinv_h_of_the_step(xp, method, warm, case):
    A, b = make_problem(seed=3, **CASES[case])
    x0 = None
    if warm:
        x0 = np.random.default_rng(4).standard_normal((A.shape[1],) + b.shape[1:]).astype(A.dtype)
    st, S = run_dual(xp, method, A, b, x0)
    x = to_np(st["x"])
    r = b - A @ x
    y = to_np(_dual.range_part(S, st, to_xp(xp, r)))
    want = np.linalg.pinv(A, rcond=1e-10).conj().T @ (x - (0 if x0 is None else x0))
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-9 * np.abs(want).max())
    # z itself solves A^H z = x - x0 whatever the rank (the correction lies in null(A^H)).
    np.testing.assert_allclose(A.conj().T @ to_np(st["zx"]), x - (0 if x0 is None else x0),
                               atol=1e-9 * np.abs(x).max())


def test_full_rank_needs_no_correction():
    """Where null(A^H) = {0} (wide, full row rank) z is y already; on a tall A it is not."""
    import array_api_compat.numpy as xp

    A, b = make_problem(shape="wide")
    st, _ = run_dual(xp, _lsmr, A, b)
    want = np.linalg.pinv(A).T @ st["x"]
    np.testing.assert_allclose(st["zx"], want, atol=1e-10 * np.abs(want).max())

    A, b = make_problem(shape="tall")
    st, _ = run_dual(xp, _lsmr, A, b)
    want = np.linalg.pinv(A).T @ st["x"]
    assert np.abs(st["zx"] - want).max() > 1e-3 * np.abs(want).max()


def test_ill_conditioned_within_forward_accuracy():
    """cond 1e6: y is as accurate as the forward's x allows (pinv amplifies by cond)."""
    import array_api_compat.numpy as xp

    A = make_matrix(40, 25, singular_values("ill", 25), seed=5)
    b = np.random.default_rng(6).standard_normal(40)
    st, S = run_dual(xp, _lsmr, A, b)
    y = _dual.range_part(S, st, b - A @ st["x"])
    want = np.linalg.pinv(A).T @ st["x"]
    assert np.linalg.norm(y - want) <= 1e-4 * np.linalg.norm(want)


def test_dual_leaves_the_iterates_alone(xp):
    """Tracking the dual changes nothing of the solve itself."""
    A, b = make_problem(shape="tall", kind="rankdef", seed=7)
    plain, _ = run_dual(xp, _lsmr, A, b, dual=False)
    dual, _ = run_dual(xp, _lsmr, A, b)
    np.testing.assert_array_equal(to_np(plain["x"]), to_np(dual["x"]))
    assert int(to_np(plain["itn"])) == int(to_np(dual["itn"]))
