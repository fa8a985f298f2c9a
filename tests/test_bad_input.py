"""Bad inputs get a clear error naming the argument at fault; NaN/Inf inputs and
operators that break down mid-solve end with istop 8, never with garbage
marked as converged."""

from __future__ import annotations

import re

import array_api_compat as aac
import numpy as np
import pytest

import lsqdiff
from conftest import (backend_name, dtype_name, info_np, is_jax, load_backend, make_problem,
                      to_np, to_xp)

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


# --------------------------------------------------------------------------- #
# damp: any real scalar works, complex is refused, a differentiated damp must
# come from b's framework
# --------------------------------------------------------------------------- #

def foreign_scalar(kind, value):
    """``value`` as a 0-d array or array scalar of some framework (``kind``)."""
    if kind == "np.float64":
        return np.float64(value)
    if kind == "np.float32":
        return np.float32(value)
    if kind == "np-0d":
        return np.asarray(value)
    if kind == "np.int64":
        return np.int64(value)
    name = {"torch-0d": "torch", "jax-0d": "jax.numpy", "strict-0d": "array_api_strict"}[kind]
    return to_xp(load_backend(name), np.asarray(value))


def load_jax():
    load_backend("jax.numpy")
    import jax

    return jax


def grad_b(xp, solver, A, b, **kwargs):
    """``x`` and ``d sum(x) / d b`` as NumPy arrays, through the backend's own
    reverse mode (torch ``.backward()``, ``jax.grad``) or `lsqdiff.vjp`."""
    name = backend_name(xp)
    if name == "torch":
        bt = b.clone().requires_grad_()
        x, _ = solver(A, bt, **kwargs)
        x.sum().backward()
        return to_np(x), to_np(bt.grad)
    if name == "jax":
        x, pullback = load_jax().vjp(lambda bb: solver(A, bb, **kwargs)[0], b)
        return to_np(x), to_np(pullback(xp.ones_like(x))[0])
    (x, _), pullback = lsqdiff.vjp(solver, A, b, **kwargs)
    return to_np(x), to_np(pullback(xp.ones_like(x)).b)


@pytest.mark.parametrize("kind", ["np.float64", "np.float32", "np-0d", "np.int64", "torch-0d",
                                  "jax-0d", "strict-0d"])
@pytest.mark.parametrize("cols", [None, 2], ids=["1d-b", "2d-b"])
def test_damp_any_real_scalar(xp, solver, kind, cols):
    """A NumPy scalar or a concrete 0-d array of any framework is a damp like a
    float, forward and backward (was: 'numpy.float64' object has no attribute
    'to' from a PyTorch backward, unsupported operand types for jax and torch 0-d
    arrays, concatenation errors from lsqdiff.vjp)."""
    A_np, b_np = make_problem("tall", seed=40, k=cols)
    A, b = to_xp(xp, A_np), to_xp(xp, b_np)
    damp = foreign_scalar(kind, 2 if kind == "np.int64" else 0.5)
    want = 2.0 if kind == "np.int64" else 0.5
    x, g = grad_b(xp, solver, A, b, damp=damp, atol=1e-12, btol=1e-12)
    x_ref, g_ref = grad_b(xp, solver, A, b, damp=want, atol=1e-12, btol=1e-12)
    np.testing.assert_allclose(x, x_ref, rtol=1e-6 if kind == "np.float32" else 1e-12, atol=1e-14)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6 if kind == "np.float32" else 1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["python", "numpy", "xp-0d"])
def test_complex_damp_refused(xp, solver, Ab, kind):
    """A complex damp is a TypeError naming damp (was: the imaginary part dropped
    silently under NumPy and JAX, 'must be real number, not NoneType' elsewhere)."""
    A, b = Ab
    damp = {"python": 0.5 + 1j, "numpy": np.complex128(0.5 + 1j),
            "xp-0d": to_xp(xp, np.asarray(0.5 + 1j))}[kind]
    with pytest.raises(TypeError, match=r"^damp must be a real number or a 0-d real array.*"
                                        r"complex.*the damping is real"):
        solver(A, b, damp=damp)


def test_complex_damp_refused_in_complex_solve(xp, solver):
    A_np, b_np = make_problem("tall", seed=41, complex_=True)
    with pytest.raises(TypeError, match=r"^damp must be a real number"):
        solver(to_xp(xp, A_np), to_xp(xp, b_np), damp=np.complex128(0.5))


def test_boolean_damp_array_refused(xp, solver, Ab):
    A, b = Ab
    with pytest.raises(TypeError, match=r"^damp must be a real number or a 0-d real array, "
                                        r"got an array of dtype .*bool"):
        solver(A, b, damp=to_xp(xp, np.asarray(True)))


def test_huge_integer_damp(solver):
    with pytest.raises(ValueError, match=r"^damp must be a float-sized number, got an int of "
                                         r"401 digits"):
        solver(A_NP, B_NP, damp=10 ** 400)


def test_torch_damp_requiring_grad_with_numpy_b(solver):
    """A damp whose gradient is wanted cannot be differentiated by a NumPy solve."""
    torch = load_backend("torch")
    damp = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match=r"^damp is a torch.Tensor that requires grad, but b is "
                                        r"a numpy.ndarray"):
        solver(A_NP, B_NP, damp=damp)


def test_jax_traced_damp_with_torch_b(solver):
    jax = load_jax()
    torch = load_backend("torch")
    A, b = torch.asarray(A_NP), torch.asarray(B_NP)
    with pytest.raises(TypeError, match=r"^damp is a .* that is traced, but b is a torch.Tensor"):
        jax.grad(lambda d: float(solver(A, b, damp=d)[0].sum()))(0.5)


def test_torch_damp_gradient_any_dtype():
    """A float32 damp that requires grad in a float64 solve: kept a tensor, its
    gradient in its own dtype, equal to the float64 damp's."""
    torch = load_backend("torch")
    A, b = torch.asarray(A_NP), torch.asarray(B_NP)
    grads = []
    for dtype in (torch.float32, torch.float64):
        d = torch.tensor(0.5, dtype=dtype, requires_grad=True)
        lsqdiff.lsmr(A, b, damp=d, atol=1e-12, btol=1e-12)[0].sum().backward()
        assert d.grad.dtype == dtype
        grads.append(float(d.grad))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-6)


# --------------------------------------------------------------------------- #
# LinearOperator: what its functions return is checked; dtype given by name
# --------------------------------------------------------------------------- #

def astype(x, name):
    """``x`` cast to the dtype ``name`` of its own framework."""
    xp = aac.array_namespace(x)
    return xp.astype(x, getattr(xp, name))


def bad_output(xp, kind, good):
    """A product that returns ``kind`` of wrong output instead of ``good(v)``."""
    def wrong(v):
        out = good(v)
        if kind == "short":
            return out[:-1, ...]
        if kind == "column":
            return out[:, None]
        if kind == "none":
            return None
        if kind == "list":
            return [0.0] * out.shape[0]
        if kind == "other-framework":
            return other_framework_array(xp, np.zeros(out.shape))
        if kind == "complex":
            return astype(out, "complex128")
        if kind == "integer":
            return astype(out, "int64")
        raise ValueError(kind)
    return wrong


OUTPUT_ERRORS = {
    "short": (ValueError, r"returned shape \({short},\) for an input of shape \({given},\); "
                          r"expected \({rows},\)"),
    "column": (ValueError, r"returned shape \({rows}, 1\) for an input of shape \({given},\); "
                           r"expected \({rows},\)"),
    "none": (TypeError, r"returned None for an input of shape \({given},\); expected an array "
                        r"of b's framework of shape \({rows},\)"),
    "list": (TypeError, r"returned list for an input .* expected an array of b's framework"),
    "other-framework": (TypeError, r"returned \S+ for an input .* expected an array of b's "
                                   r"framework"),
    "complex": (TypeError, r"returned complex dtype .*complex128 in a real solve of dtype "
                           r".*float64; give the LinearOperator dtype=complex"),
    "integer": (TypeError, r"returned dtype .*int64; expected .*float64 \(the solve's dtype\)"),
}


@pytest.mark.parametrize("kind", list(OUTPUT_ERRORS))
@pytest.mark.parametrize("which", ["matvec", "rmatvec"])
def test_linear_operator_bad_output(xp, solver, which, kind):
    """Each product's first output is checked, naming the function, the expected and
    the actual shape or type (was: a broadcasting error from the solver's updates)."""
    A = to_xp(xp, A_NP)
    mv, rmv = (lambda v: A @ v), (lambda u: A.T @ u)
    if which == "matvec":
        mv = bad_output(xp, kind, mv)
    else:
        rmv = bad_output(xp, kind, rmv)
    rows, given = (4, 3) if which == "matvec" else (3, 4)
    error, match = OUTPUT_ERRORS[kind]
    match = "^A: " + which + " " + match.format(rows=rows, given=given, short=rows - 1)
    with pytest.raises(error, match=match):
        solver(lsqdiff.LinearOperator((4, 3), mv, rmv), to_xp(xp, B_NP))


@pytest.mark.parametrize("kind", ["short", "none", "other-framework", "complex"])
@pytest.mark.parametrize("which", ["matmat", "rmatmat"])
def test_linear_operator_bad_block_output(xp, solver, which, kind):
    A = to_xp(xp, A_NP)
    blocks = {"matmat": lambda V: A @ V, "rmatmat": lambda U: A.T @ U}
    blocks[which] = bad_output(xp, kind, blocks[which])
    op = lsqdiff.LinearOperator((4, 3), lambda v: A @ v, lambda u: A.T @ u, **blocks)
    error = ValueError if kind == "short" else TypeError
    want = "(4, 2)" if which == "matmat" else "(3, 2)"
    match = rf"^A: {which} returned "
    if kind == "short":
        match += rf".*expected {re.escape(want)}"
    with pytest.raises(error, match=match):
        solver(op, to_xp(xp, np.ones((4, 2))))


def test_linear_operator_wrong_length_under_jit(solver):
    """Under jax.jit the check runs at trace time, on the static shapes."""
    jax = load_jax()
    jnp = jax.numpy
    A = jnp.asarray(A_NP)

    def solve(A, b):
        return solver(lsqdiff.LinearOperator((4, 3), lambda v: (A @ v)[:3], lambda u: A.T @ u),
                      b)[0]

    with pytest.raises(ValueError, match=r"^A: matvec returned shape \(3,\)"):
        jax.jit(solve)(A, jnp.asarray(B_NP))


@pytest.mark.parametrize("out_dtype", ["float32", "float64"])
def test_linear_operator_other_float_dtype_is_cast(xp, solver, out_dtype):
    """An output of another floating dtype is cast to the solve's (float32 b with a
    float64 operator output, and the other way round): x has the solve's dtype."""
    solve_dtype = "float64" if out_dtype == "float32" else "float32"
    A = to_xp(xp, A_NP, solve_dtype)
    op = lsqdiff.LinearOperator((4, 3), lambda v: astype(A @ v, out_dtype),
                                lambda u: astype(A.T @ u, out_dtype))
    x, info = solver(op, to_xp(xp, B_NP, solve_dtype), atol=1e-6, btol=1e-6)
    assert dtype_name(x) == solve_dtype
    ref = np.linalg.lstsq(A_NP, B_NP, rcond=None)[0]
    np.testing.assert_allclose(to_np(x), ref, rtol=1e-3)


@pytest.mark.parametrize("spelling", ["str", "numpy-type", "numpy-dtype", "python", "torch",
                                      "strict"])
def test_linear_operator_dtype_spellings(xp, solver, spelling):
    """dtype may be any framework's dtype or its name; the solve takes the dtype of
    that name in b's framework (was, under PyTorch: 'str' object has no attribute
    'is_floating_point')."""
    dtype = {"str": lambda: "complex128", "numpy-type": lambda: np.complex128,
             "numpy-dtype": lambda: np.dtype("complex128"), "python": lambda: complex,
             "torch": lambda: load_backend("torch").complex128,
             "strict": lambda: load_backend("array_api_strict").complex128}[spelling]()
    A = to_xp(xp, A_NP)
    Ac = to_xp(xp, A_NP.astype(complex))
    # complex: the operator is complex, b real; the solve runs in complex128.
    rmatvec = None if backend_name(xp) in ("jax", "torch") else (lambda u: Ac.T @ u)
    op = lsqdiff.LinearOperator((4, 3), lambda v: Ac @ v, rmatvec, dtype=dtype)
    x, _ = solver(op, to_xp(xp, B_NP), atol=1e-12, btol=1e-12)
    assert dtype_name(x) == "complex128"
    np.testing.assert_allclose(to_np(x), np.linalg.lstsq(A_NP, B_NP, rcond=None)[0], atol=1e-10)
    del A


@pytest.mark.parametrize("dtype", ["floaty", 3, "float"], ids=["unknown-name", "int", "alias"])
def test_linear_operator_bad_dtype(dtype):
    with pytest.raises(TypeError, match=r"^dtype must be a dtype of an array framework or the "
                                        r"name of one"):
        lsqdiff.LinearOperator((4, 3), lambda v: v, dtype=dtype)


def test_linear_operator_dtype_missing_from_framework(solver):
    op = lsqdiff.LinearOperator(A_NP.shape, lambda v: A_NP @ v, lambda u: A_NP.T @ u,
                                dtype="bfloat16")
    with pytest.raises(TypeError, match=r"^A: the LinearOperator's dtype 'bfloat16' has no "
                                        r"counterpart"):
        solver(op, B_NP)


@pytest.mark.parametrize("matvec", ["square", "abs", "normalised", "quadratic-form"])
def test_jax_nonlinear_matvec_with_derived_rmatvec(solver, matvec):
    """jax.linear_transpose of a nonlinear matvec fails inside JAX (AssertionError:
    ValAccum..., missing transpose rules): the error says what is wrong and what to do."""
    jax = load_jax()
    jnp = jax.numpy
    A = jnp.asarray(A_NP)
    f = {"square": lambda v: A @ (v * v), "abs": lambda v: A @ jnp.abs(v),
         "normalised": lambda v: (A @ v) / jnp.linalg.norm(v),
         "quadratic-form": lambda v: (A @ v) * (v @ v)}[matvec]
    with pytest.raises(ValueError, match=r"^A: matvec must be linear in v to derive rmatvec "
                                         r"from it .*; pass rmatvec="):
        solver(lsqdiff.LinearOperator((4, 3), f), jnp.asarray(B_NP))


# --------------------------------------------------------------------------- #
# compat.scipy and python -m lsqdiff
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("name", ["lsmr", "lsqr"])
def test_compat_show_with_2d_b(name, capsys):
    """show=True prints one summary per column (was: unhashable type: 'numpy.ndarray')."""
    compat = pytest.importorskip("lsqdiff.compat.scipy")
    f = getattr(compat, name)
    A, B = make_problem("tall", seed=42, k=2)
    quiet = f(A, B)
    shown = f(A, B, show=True)
    np.testing.assert_array_equal(shown[0], quiet[0])
    text = capsys.readouterr().out
    for j in range(2):
        assert f"{name.upper()} (column {j}) finished" in text
        assert f"istop ={int(quiet[1][j]):8g}" in text
    assert text.count(lsqdiff.STOP_MESSAGES[int(quiet[1][0])]) >= 1


def test_demo_without_scipy():
    """python -m lsqdiff without SciPy names the extra to install, without a traceback."""
    import os
    import subprocess
    import sys

    code = ("import sys, runpy; sys.modules['scipy'] = None; "
            "runpy.run_module('lsqdiff', run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 1
    assert "lsqdiff[scipy]" in done.stderr and "[demo]" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
