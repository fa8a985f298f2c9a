"""Bad inputs get a clear error naming the argument at fault; NaN/Inf inputs and
operators that break down mid-solve end with istop 8, never with garbage
marked as converged."""

from __future__ import annotations

import numpy as np
import pytest

import lsqdiff
from conftest import backend_name, info_np, is_jax, load_backend, make_problem, to_np, to_xp

A_NP = np.arange(12.0).reshape(4, 3) + np.eye(4, 3)
B_NP = np.ones(4)


@pytest.fixture
def Ab(xp):
    return to_xp(xp, A_NP), to_xp(xp, B_NP)


# --------------------------------------------------------------------------- #
# Shapes
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("shape", [(4,), (4, 3, 2)], ids=["1d", "3d"])
def test_A_not_2d(xp, solver, shape):
    with pytest.raises(ValueError, match=r"A must be 2-D"):
        solver(to_xp(xp, np.ones(shape)), to_xp(xp, B_NP))


@pytest.mark.parametrize("shape", [(), (4, 2, 2)], ids=["0d", "3d"])
def test_b_wrong_rank(xp, solver, shape):
    with pytest.raises(ValueError, match=r"b must be 1-D \(m,\) or 2-D \(m, k\)"):
        solver(to_xp(xp, A_NP), to_xp(xp, np.ones(shape)))


@pytest.mark.parametrize("rows", [3, 5])
def test_b_rows_mismatch(xp, solver, rows):
    with pytest.raises(ValueError, match=rf"b has {rows} rows but A has 4"):
        solver(to_xp(xp, A_NP), to_xp(xp, np.ones(rows)))


def test_b_rows_mismatch_linear_operator(solver):
    op = lsqdiff.LinearOperator((5, 3), lambda v: np.ones(5), lambda u: np.ones(3))
    with pytest.raises(ValueError, match=r"b has 4 rows but A has 5"):
        solver(op, B_NP)


@pytest.mark.parametrize("b_shape, x0_shape", [((4,), (4,)), ((4,), (3, 1)), ((4, 2), (3,)),
                                                ((4, 2), (3, 3))],
                         ids=["1d-rows", "1d-2d", "2d-1d", "2d-cols"])
def test_x0_wrong_shape(xp, solver, b_shape, x0_shape):
    with pytest.raises(ValueError, match=r"x0 must have shape"):
        solver(to_xp(xp, A_NP), to_xp(xp, np.ones(b_shape)), x0=to_xp(xp, np.ones(x0_shape)))


# --------------------------------------------------------------------------- #
# Types and frameworks
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("b", [[1.0, 1.0, 1.0, 1.0], (1.0, 1.0, 1.0, 1.0), 1.0],
                         ids=["list", "tuple", "float"])
def test_b_not_an_array(solver, b):
    with pytest.raises(TypeError, match=r"^b must be an array"):
        solver(A_NP, b)


def test_A_a_list(solver):
    with pytest.raises(TypeError, match=r"^A must be an array of b's framework"):
        solver(A_NP.tolist(), B_NP)


def other_framework_array(xp, a):
    """``a`` as an array of some installed framework other than ``xp``'s."""
    mine = backend_name(xp)
    if mine != "numpy":
        return np.asarray(a)
    for name in ("torch", "jax.numpy", "array_api_strict"):
        try:
            return to_xp(load_backend(name), a)
        except pytest.skip.Exception:
            continue
    pytest.skip("needs a second installed framework")


def test_A_and_b_from_different_frameworks(xp, solver):
    with pytest.raises(TypeError, match=r"A and b come from different array frameworks"):
        solver(other_framework_array(xp, A_NP), to_xp(xp, B_NP))


def test_x0_and_b_from_different_frameworks(xp, solver, Ab):
    A, b = Ab
    with pytest.raises(TypeError, match=r"x0 and b come from different array frameworks"):
        solver(A, b, x0=other_framework_array(xp, np.zeros(3)))


def test_scipy_sparse_with_torch_b(solver):
    sp = pytest.importorskip("scipy.sparse")
    torch = load_backend("torch")
    with pytest.raises(TypeError, match=r"^A must be an array of b's framework"):
        solver(sp.csr_array(A_NP), torch.asarray(B_NP))


def test_torch_devices_differ(solver):
    torch = load_backend("torch")
    A = torch.empty(4, 3, dtype=torch.float64, device="meta")
    with pytest.raises(TypeError, match=r"A is on device meta but b is on device cpu"):
        solver(A, torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("which", ["A", "x0"])
def test_strict_devices_differ(solver, which):
    strict = load_backend("array_api_strict")
    other = strict.Device("device1")
    A = strict.asarray(A_NP, device=other if which == "A" else None)
    x0 = strict.asarray(np.zeros(3), device=other if which == "x0" else None)
    with pytest.raises(TypeError, match=rf"^{which} is on device .*device1.* but b is on device"):
        solver(A, strict.asarray(B_NP), x0=x0)


def test_linear_operator_without_rmatvec_under_numpy(solver):
    op = lsqdiff.LinearOperator(A_NP.shape, lambda v: A_NP @ v)
    with pytest.raises(TypeError, match=r"rmatvec"):
        solver(op, B_NP)


def test_linear_operator_without_rmatvec_where_not_derivable(xp, solver, Ab):
    """Only JAX and torch can derive rmatvec; every other backend asks for it."""
    if backend_name(xp) in ("jax", "torch"):
        pytest.skip("JAX and torch derive rmatvec (test_values)")
    A, b = Ab
    op = lsqdiff.LinearOperator(A_NP.shape, lambda v: A @ v)
    with pytest.raises(TypeError, match=r"needs an rmatvec"):
        solver(op, b)


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(4,)), r"shape must be a pair of integers"),
    (dict(shape=(4, -3)), r"shape must be non-negative"),
    (dict(shape="ab"), r"shape must be a pair of integers"),
], ids=["1-tuple", "negative", "string"])
def test_linear_operator_bad_shape(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lsqdiff.LinearOperator(matvec=lambda v: v, **kwargs)


@pytest.mark.parametrize("name", ["matvec", "rmatvec", "matmat", "rmatmat", "rmatvec_pieces"])
def test_linear_operator_not_callable(name):
    funcs = dict(matvec=lambda v: v)
    funcs[name] = 5
    with pytest.raises(TypeError, match=rf"{name} must be callable"):
        lsqdiff.LinearOperator((3, 3), **funcs)


# --------------------------------------------------------------------------- #
# Options
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("damp", [-1.0, -1e-300, float("nan")], ids=["-1", "tiny", "nan"])
def test_negative_damp(xp, solver, Ab, damp):
    A, b = Ab
    with pytest.raises(ValueError, match=r"damp must be >= 0"):
        solver(A, b, damp=damp)


def test_negative_damp_0d_array(xp, solver, Ab):
    A, b = Ab
    with pytest.raises(ValueError, match=r"damp must be >= 0"):
        solver(A, b, damp=to_xp(xp, np.asarray(-0.5)))


@pytest.mark.parametrize("damp, error, match", [
    ("0.1", TypeError, r"damp must be a real number"),
    (1j, TypeError, r"damp must be a real number"),
    (True, TypeError, r"damp must be a real number"),
    (np.ones(2), ValueError, r"damp must be a scalar"),
], ids=["str", "complex", "bool", "1d-array"])
def test_bad_damp_type(solver, damp, error, match):
    with pytest.raises(error, match=match):
        solver(A_NP, B_NP, damp=damp)


@pytest.mark.parametrize("maxiter", [-1, -100])
def test_negative_maxiter(xp, solver, Ab, maxiter):
    A, b = Ab
    with pytest.raises(ValueError, match=r"maxiter must be >= 0"):
        solver(A, b, maxiter=maxiter)


@pytest.mark.parametrize("maxiter", [2.0, "3", True, 1.5], ids=["float", "str", "bool", "frac"])
def test_non_int_maxiter(solver, maxiter):
    with pytest.raises(TypeError, match=r"maxiter must be a non-negative int or None"):
        solver(A_NP, B_NP, maxiter=maxiter)


def test_numpy_int_maxiter_is_fine(solver):
    x, info = solver(A_NP, B_NP, maxiter=np.int64(2))
    assert info.itn <= 2


@pytest.mark.parametrize("name", ["atol", "btol", "conlim"])
@pytest.mark.parametrize("value", [-1e-3, float("nan")], ids=["negative", "nan"])
def test_negative_tolerances(xp, solver, Ab, name, value):
    A, b = Ab
    with pytest.raises(ValueError, match=rf"{name} must be >= 0"):
        solver(A, b, **{name: value})


@pytest.mark.parametrize("name", ["atol", "btol", "conlim"])
def test_non_real_tolerances(solver, name):
    with pytest.raises(TypeError, match=rf"{name} must be a real number"):
        solver(A_NP, B_NP, **{name: "1e-6"})


# --------------------------------------------------------------------------- #
# NaN and Inf: istop 8, never "converged"
# --------------------------------------------------------------------------- #

ignore_runtime_warnings = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@ignore_runtime_warnings
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["b", "x0"])
def test_nonfinite_input(xp, solver, Ab, where, bad):
    A, b = Ab
    b_np, x0_np = B_NP.copy(), np.zeros(3)
    (b_np if where == "b" else x0_np)[1] = bad
    x, info = solver(A, to_xp(xp, b_np), x0=to_xp(xp, x0_np))
    v = info_np(info)
    assert v["istop"] == 8 and not v["converged"]
    assert info.message == lsqdiff.STOP_MESSAGES[8]
    if where == "b":
        # x is the last finite iterate: the start, x0
        np.testing.assert_array_equal(to_np(x), x0_np)


@ignore_runtime_warnings
def test_nonfinite_in_one_column(xp, solver):
    """A NaN in one column of b stops that column only; the other is solved."""
    A, b = make_problem("tall", seed=30)
    B = np.stack([b, b], axis=1)
    B[3, 1] = np.nan
    X, info = solver(to_xp(xp, A), to_xp(xp, B), atol=1e-12, btol=1e-12, maxiter=300)
    v = info_np(info)
    assert v["istop"][1] == 8 and not v["converged"][1]
    assert v["converged"][0]
    X = to_np(X)
    np.testing.assert_allclose(X[:, 0], np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-8)
    assert np.all(np.isfinite(X[:, 1]))


@ignore_runtime_warnings
def test_nonfinite_A(xp, solver):
    A = A_NP.copy()
    A[0, 0] = np.inf
    x, info = solver(to_xp(xp, A), to_xp(xp, B_NP))
    v = info_np(info)
    assert v["istop"] == 8 and not v["converged"]
    assert np.all(np.isfinite(to_np(x)))


def breaking_operator(xp, A, good_calls):
    """A LinearOperator whose matvec returns NaN from call ``good_calls + 1`` on."""
    Ax = to_xp(xp, A)
    calls = {"n": 0}

    def matvec(v):
        calls["n"] += 1
        out = Ax @ v
        return out * float("nan") if calls["n"] > good_calls else out

    return lsqdiff.LinearOperator(A.shape, matvec, lambda u: Ax.T @ u)


@ignore_runtime_warnings
def test_nan_from_operator_mid_solve(xp, solver):
    """The 5th product returns NaN: the solve stops with istop 8 and returns the
    last finite iterate, the 4th, exactly as a 4-step solve would."""
    if is_jax(xp):
        pytest.skip("a stateful matvec cannot run inside JAX's traced loop")
    A, b = make_problem("tall", seed=31)
    x, info = solver(breaking_operator(xp, A, 4), to_xp(xp, b), maxiter=50)
    v = info_np(info)
    assert v["istop"] == 8 and not v["converged"]
    assert v["itn"] == 5
    x = to_np(x)
    assert np.all(np.isfinite(x))
    x4, info4 = solver(to_xp(xp, A), to_xp(xp, b), atol=0.0, btol=0.0, conlim=0.0, maxiter=4)
    np.testing.assert_allclose(x, to_np(x4), rtol=1e-12, atol=1e-14)
    assert np.isfinite(v["normr"]) and np.isfinite(v["normx"])


@ignore_runtime_warnings
def test_nan_from_operator_mid_solve_one_column(xp, solver):
    """With 2-D b, an operator breaking down in one column stops that column only."""
    if is_jax(xp):
        pytest.skip("a stateful matvec cannot run inside JAX's traced loop")
    A, b = make_problem("tall", seed=32)
    B = np.stack([b, -b + 1.0], axis=1)
    Ax = to_xp(xp, A)
    mask = to_xp(xp, np.array([1.0, np.nan]))
    calls = {"n": 0}

    def matmat(V):
        calls["n"] += 1
        out = Ax @ V
        return out * mask if calls["n"] > 4 else out

    op = lsqdiff.LinearOperator(A.shape, lambda v: Ax @ v, lambda u: Ax.T @ u,
                                matmat=matmat, rmatmat=lambda U: Ax.T @ U)
    X, info = solver(op, to_xp(xp, B), atol=1e-12, btol=1e-12, maxiter=300)
    v = info_np(info)
    assert list(v["istop"][1:]) == [8] and list(v["itn"][1:]) == [5]
    assert v["converged"][0] and not v["converged"][1]
    X = to_np(X)
    assert np.all(np.isfinite(X))
    np.testing.assert_allclose(X[:, 0], np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-8)
