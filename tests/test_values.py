"""Solutions against float64 references (NumPy lstsq / pinv / damped normal
equations) on every backend, and the documented behaviour of dtypes, operators,
sparse inputs, several right-hand sides, zero b, maxiter=0 and SolveInfo.

Every comparison with a reference first asserts that the solve converged.

Under JAX each new combination of settings (tolerances, maxiter, dtype), shapes
and x0-or-not compiles the solve once (about half a second on CPU), so the
tests share shapes (:data:`conftest.SHAPES`) and settings (:func:`solve_tight`)
wherever they can. Tests of plumbing that LSMR and LSQR share (dtype promotion,
LinearOperator, sparse matrices) run LSMR only.
"""

from __future__ import annotations

import numpy as np
import pytest

import lsqdiff
from conftest import (
    RTOL,
    TIGHT,
    assert_converged,
    assert_solution,
    backend_name,
    damped_ref,
    default_float,
    dtype_name,
    info_np,
    is_jax,
    load_backend,
    lstsq_ref,
    make_problem,
    to_np,
    to_xp,
)

MAXITER = 300  # far above what these small problems need; convergence is asserted anyway


def solve_tight(solver, A, b, **kw):
    """A solve with tolerances 1e-12 (float64) and a generous iteration limit."""
    return solver(A, b, **TIGHT["float64"], maxiter=MAXITER, **kw)


# --------------------------------------------------------------------------- #
# Shapes and conditioning
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("kind", ["well", "rankdef"])
@pytest.mark.parametrize("shape", ["tall", "wide", "square"])
def test_matches_lstsq(xp, solver, shape, kind):
    """Tall (least squares), wide (minimum norm), square; full rank and rank-deficient
    (minimum-norm least squares, b not in the range of A)."""
    A, b = make_problem(shape, kind, seed=1)
    x, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, b))
    assert_converged(info)
    assert dtype_name(x) == "float64"
    assert_solution(x, lstsq_ref(A, b), RTOL["float64"])
    assert_solution(x, np.linalg.pinv(A) @ b, RTOL["float64"])


@pytest.mark.parametrize("shape", [(20, 12), (12, 20)], ids=["tall", "wide"])
def test_ill_conditioned(xp, solver, shape):
    """cond(A) = 1e6 with b in the range of A: with tolerances 1e-14 the solve
    converges (after several times n iterations, as orthogonality is lost) and
    the forward error is about cond * 1e-14."""
    A, b = make_problem(shape, "ill", seed=2, consistent=True)
    x, info = solver(to_xp(xp, A), to_xp(xp, b), atol=1e-14, btol=1e-14, maxiter=3000)
    assert_converged(info)
    xn = to_np(x)
    assert np.linalg.norm(A @ xn - b) <= 1e-10 * np.linalg.norm(b)
    assert_solution(x, lstsq_ref(A, b), 1e-6)
    assert int(to_np(info.itn)) > min(shape)  # it really needed the extra iterations


def _pad_rows(M, m=6):
    return np.vstack([M, np.zeros((m - M.shape[0], M.shape[1]))])


#: istop -> the same stopping reason without "for this machine" (4->1, 5->2, 6->3)
SAME_REASON = np.array([0, 1, 2, 3, 1, 2, 3, 7, 8])

EXACT_CASES = {
    # the bidiagonalisation ends exactly (beta or alpha exactly 0) within a few
    # steps; all 6 x 4 so that JAX compiles once for them all. (A rank-one A is
    # left out: there the step at which ||A^T r|| is *exactly* 0 with atol = 0
    # depends on rounding, and SciPy itself stops one step apart on other BLAS.)
    "identity": (_pad_rows(np.eye(4)), np.ones(6)),
    "two-values": (_pad_rows(np.diag([1.0, 1.0, 2.0, 2.0])), np.ones(6)),
    "zero-A": (np.zeros((6, 4)), np.ones(6)),
}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_exact_breakdown(xp, solver, case):
    """Problems where the Krylov space ends exactly (zeros in the recurrences, with
    tolerances 0 so nothing stops early): the answer is exact, the diagnostics
    finite, and the stopping reason and iteration are SciPy's; the same in a 2-D b."""
    spla = pytest.importorskip("scipy.sparse.linalg")
    A, b = EXACT_CASES[case]
    B = np.stack([b, 2.0 * b], axis=1)
    kw = dict(atol=0.0, btol=0.0, conlim=0.0, maxiter=10)
    for damp in (0.0, 0.5):
        ref = damped_ref(A, b, damp)
        if solver is lsqdiff.lsmr:
            ref_istop, ref_itn = spla.lsmr(A, b, damp=damp, **kw)[1:3]
        else:
            ref_istop, ref_itn = spla.lsqr(A, b, damp=damp, atol=0.0, btol=0.0, conlim=0.0,
                                           iter_lim=10)[1:3]
        x, info = solver(to_xp(xp, A), to_xp(xp, b), damp=damp, **kw)
        X, infoB = solver(to_xp(xp, A), to_xp(xp, B), damp=damp, **kw)
        for j, v in enumerate((info_np(info), info_np(infoB))):
            # codes 4/5 are 1/2 "for this machine": which of the pair fires can rest
            # on whether a rounding-level quantity is exactly 0, so compare the pair
            assert np.all(SAME_REASON[v["istop"]] == SAME_REASON[ref_istop]), (j, v, ref_istop)
            assert np.all(v["itn"] == ref_itn), (j, v, ref_itn)
            assert np.all(v["converged"])
            for f in ("normr", "normar", "norma", "conda", "normx"):
                assert np.all(np.isfinite(v[f])), f
        np.testing.assert_allclose(to_np(x), ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(to_np(X), np.stack([ref, 2.0 * ref], axis=1),
                                   rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- #
# Damping and warm starts
# --------------------------------------------------------------------------- #

DAMPED_CASES = [
    pytest.param("tall", "well", 0.5, id="tall-0.5"),
    pytest.param("wide", "well", 2.0, id="wide-2"),
    pytest.param("square", "rankdef", 0.5, id="rankdef-0.5"),
    pytest.param("tall", "ill", 1e-2, id="ill-0.01"),
]


@pytest.mark.parametrize("shape, kind, damp", DAMPED_CASES)
def test_damped(xp, solver, shape, kind, damp):
    """Damped least squares (any shape, any rank, cond 1e6 with damping 1e-2)
    against the damped normal equations."""
    A, b = make_problem(shape, kind, seed=3)
    x, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, b), damp=damp)
    assert_converged(info)
    ref = damped_ref(A, b, damp)
    assert_solution(x, ref, RTOL["float64"])
    # the damping really changes the answer: the test can tell damped from undamped
    assert np.linalg.norm(ref - lstsq_ref(A, b)) > 1e-3 * np.linalg.norm(ref)
    # normr estimates sqrt(||b - A x||^2 + damp^2 ||x||^2)
    xn = to_np(x)
    normr = np.hypot(np.linalg.norm(b - A @ xn), damp * np.linalg.norm(xn))
    np.testing.assert_allclose(float(to_np(info.normr)), normr, rtol=1e-6)


def test_damp_as_0d_array(xp, solver):
    A, b = make_problem("tall", seed=4)
    x, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, b), damp=to_xp(xp, np.asarray(0.7)))
    assert_converged(info)
    assert_solution(x, damped_ref(A, b, 0.7), RTOL["float64"])


WARM_CASES = [
    pytest.param("tall", "well", 0.0, id="tall"),
    pytest.param("wide", "well", 0.0, id="wide"),
    pytest.param("tall", "well", 0.8, id="tall-damped"),
    pytest.param("wide", "rankdef", 0.3, id="rankdef-damped"),
    pytest.param("wide", "rankdef", 0.0, id="rankdef"),
]


@pytest.mark.parametrize("shape, kind, damp", WARM_CASES)
def test_warm_start(xp, solver, shape, kind, damp):
    """x = x0 + argmin_d ||A d - (b - A x0)||^2 + damp^2 ||d||^2 (SciPy's semantics):
    the damping pulls towards x0, and without damping x0's null-space part stays."""
    A, b = make_problem(shape, kind, seed=5)
    x0 = np.random.default_rng(6).standard_normal(A.shape[1])
    x, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, b), damp=damp, x0=to_xp(xp, x0))
    assert_converged(info)
    ref = damped_ref(A, b, damp, x0)
    assert_solution(x, ref, RTOL["float64"])
    if shape != "tall" or damp > 0:
        # x0 matters here: the reference differs from the cold-start answer
        assert np.linalg.norm(ref - damped_ref(A, b, damp)) > 1e-2


# --------------------------------------------------------------------------- #
# Complex
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("shape, damp", [("tall", 0.0), ("wide", 0.4)],
                         ids=["tall", "wide-damped"])
def test_complex(xp, solver, shape, damp):
    if not hasattr(xp, "complex128"):
        pytest.skip(f"{backend_name(xp)} has no complex128")
    A, b = make_problem(shape, "well", seed=7, complex_=True)
    x, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, b), damp=damp)
    assert_converged(info)
    assert dtype_name(x) == "complex128"
    assert_solution(x, damped_ref(A, b, damp), RTOL["complex128"])
    # the diagnostics are real
    assert np.isrealobj(to_np(info.normr)) and np.isrealobj(to_np(info.normx))


# --------------------------------------------------------------------------- #
# Several right-hand sides
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("shape, damp, warm", [("tall", 0.0, False), ("wide", 0.5, True)],
                         ids=["tall", "wide-damped-x0"])
def test_multi_column_matches_separate_solves(xp, solver, shape, damp, warm):
    """Three columns solved together equal three 1-D solves: same iterations, same
    answer, same diagnostics. The problem (cond 1.3) meets tolerance 1e-12 well
    before the Krylov space is exhausted: near exhaustion the stopping test sits
    at rounding level, where a block product and a vector product may
    legitimately disagree by an iteration."""
    A, B = make_problem(shape, "mild", seed=8, k=3)
    n = A.shape[1]
    X0 = np.random.default_rng(9).standard_normal((n, 3)) if warm else None
    X, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, B), damp=damp,
                          x0=None if X0 is None else to_xp(xp, X0))
    assert to_np(X).shape == (n, 3)
    assert_converged(info)
    v = info_np(info)
    assert v["istop"].shape == (3,)
    assert np.all(v["itn"] < n - 5)
    ref = np.stack([damped_ref(A, B[:, j], damp, None if X0 is None else X0[:, j])
                    for j in range(3)], axis=1)
    assert_solution(X, ref, RTOL["float64"])
    if damp == 0 and not warm:
        assert_solution(X, lstsq_ref(A, B), RTOL["float64"])
    for j in range(3):
        xj, infoj = solve_tight(solver, to_xp(xp, A), to_xp(xp, B[:, j]), damp=damp,
                                x0=None if X0 is None else to_xp(xp, X0[:, j]))
        vj = info_np(infoj)
        assert v["itn"][j] == vj["itn"] and v["istop"][j] == vj["istop"]
        np.testing.assert_allclose(to_np(X)[:, j], to_np(xj), rtol=1e-10, atol=1e-12)
        for f in ("normr", "norma", "normx"):
            np.testing.assert_allclose(v[f][j], vj[f], rtol=1e-6, err_msg=f)
        # normar is at rounding level once converged: compare on the scale of its test
        np.testing.assert_allclose(v["normar"][j], vj["normar"],
                                   atol=1e-9 * vj["norma"] * vj["normr"])


def test_columns_stop_independently(xp, solver):
    """A = Q diag(d) with orthonormal Q: b = Q (e1 + e2) spans a 2-dimensional
    Krylov space, so its column is exact after 2 iterations; b = Q (e1+...+e5)
    after 5; a random b needs about n. Each column stops at its own iteration and
    then stays frozen while the others go on."""
    m, n = 30, 20
    rng = np.random.default_rng(10)
    Q = np.linalg.qr(rng.standard_normal((m, n)))[0]
    A = Q * np.linspace(1.0, 4.0, n)
    B = np.stack([Q @ np.r_[1.0, 1.0, np.zeros(n - 2)],
                  rng.standard_normal(m),
                  Q @ np.r_[np.ones(5), np.zeros(n - 5)]], axis=1)
    X, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, B))
    assert_converged(info)
    v = info_np(info)
    assert list(v["itn"][[0, 2]]) == [2, 5]
    assert v["itn"][1] > 5
    assert_solution(X, lstsq_ref(A, B), 1e-10)
    # the column that stopped first equals its own 1-D solve (frozen at itn 2)
    x_first, info_first = solve_tight(solver, to_xp(xp, A), to_xp(xp, B[:, 0]))
    assert int(to_np(info_first.itn)) == 2
    np.testing.assert_allclose(to_np(X)[:, 0], to_np(x_first), rtol=1e-12, atol=1e-14)


def test_float32_columns_match_separate_solves(xp, solver):
    """float32: three columns solved together stop at the iteration, with the stop
    code, of their 1-D solves, and agree with them to float32 rounding (the
    columns' recurrences run in float32, a 1-D solve's on Python floats)."""
    A, B = make_problem("tall", "mild", seed=8, k=3)
    A32 = to_xp(xp, A, "float32")
    X, info = solver(A32, to_xp(xp, B, "float32"), maxiter=MAXITER, **TIGHT["float32"])
    assert X.dtype == xp.float32
    v = info_np(info)
    for j in range(3):
        xj, infoj = solver(A32, to_xp(xp, B[:, j], "float32"), maxiter=MAXITER,
                           **TIGHT["float32"])
        assert (v["itn"][j], v["istop"][j]) == (int(to_np(infoj.itn)), int(to_np(infoj.istop)))
        np.testing.assert_allclose(to_np(X)[:, j], to_np(xj), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- #
# Dtypes
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("shape, k", [("tall", None), ("wide", 2)], ids=["tall-1d", "wide-2d"])
def test_float32_stays_float32(xp, solver, shape, k):
    """float32 A, b, x0 with a Python-float damp: x and the diagnostics stay float32."""
    A, b = make_problem(shape, "well", seed=11, k=k)
    n = A.shape[1]
    x0 = np.zeros((n,) if k is None else (n, k))
    x, info = solver(to_xp(xp, A, "float32"), to_xp(xp, b, "float32"),
                     x0=to_xp(xp, x0, "float32"), damp=0.1, maxiter=MAXITER, **TIGHT["float32"])
    assert x.dtype == xp.float32
    assert_converged(info)
    assert_solution(x, damped_ref(A, b, 0.1), RTOL["float32"])
    if is_jax(xp):
        assert info.normr.dtype == xp.float32
    elif k is None:
        assert isinstance(info.normr, float)


def test_mixed_float_dtypes_promote(xp):
    A, b = make_problem("tall", seed=12)
    x, info = solve_tight(lsqdiff.lsmr, to_xp(xp, A, "float32"), to_xp(xp, b, "float64"))
    assert x.dtype == xp.float64
    assert_converged(info)
    # A was rounded to float32; the answer is the float64 solve with that rounded A
    assert_solution(x, lstsq_ref(A.astype(np.float32).astype(np.float64), b), RTOL["float64"])


def test_int_inputs_promote_to_default_float(xp):
    A = np.array([[1, 0, 2], [0, 1, 1], [1, 1, 0], [2, 0, 1], [0, 3, 1], [1, 1, 1]])
    b = np.array([1, 2, 3, 4, 5, 6])
    ref = lstsq_ref(A.astype(float), b.astype(float))
    want = default_float(xp)  # float64; float32 for torch (its default dtype)
    name = dtype_name(xp.asarray(1.0))
    x, info = lsqdiff.lsmr(to_xp(xp, A), to_xp(xp, b), maxiter=100, **TIGHT[name])
    assert x.dtype == want
    assert_converged(info)
    assert_solution(x, ref, RTOL[name])
    # an int A with a float64 b solves in float64
    x, info = lsqdiff.lsmr(to_xp(xp, A), to_xp(xp, b, "float64"), maxiter=100, **TIGHT["float64"])
    assert x.dtype == xp.float64
    assert_converged(info)
    assert_solution(x, ref, RTOL["float64"])


# --------------------------------------------------------------------------- #
# LinearOperator
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("k", [None, 2], ids=["1d", "2d"])
def test_linear_operator_with_rmatvec(xp, k):
    """A LinearOperator (no matmat: 2-D b goes column by column, or vmap under JAX)."""
    if is_jax(xp) and k is None:
        pytest.skip("JAX: 1-D b is covered under jit in test_jax (each call compiles)")
    A, b = make_problem("wide", "rankdef", seed=13, k=k)
    Ax = to_xp(xp, A)
    op = lsqdiff.LinearOperator(A.shape, lambda v: Ax @ v, lambda u: Ax.T @ u)
    x, info = solve_tight(lsqdiff.lsmr, op, to_xp(xp, b))
    assert_converged(info)
    assert_solution(x, lstsq_ref(A, b), RTOL["float64"])


@pytest.mark.parametrize("k, complex_", [(None, False), (2, True)], ids=["1d-real", "2d-complex"])
def test_linear_operator_derived_rmatvec(xp, complex_, k):
    """Under JAX (linear_transpose) and torch (vjp) rmatvec may be omitted; for
    complex A the derived adjoint must be the conjugate transpose."""
    if backend_name(xp) not in ("jax", "torch"):
        pytest.skip("only JAX and torch derive rmatvec (the others raise: test_bad_input)")
    A, b = make_problem("tall", "well", seed=14, k=k, complex_=complex_)
    Ax = to_xp(xp, A)
    op = lsqdiff.LinearOperator(A.shape, lambda v: Ax @ v)
    x, info = solve_tight(lsqdiff.lsmr, op, to_xp(xp, b), damp=0.2)
    assert_converged(info)
    assert_solution(x, damped_ref(A, b, 0.2), RTOL["float64"])


def test_linear_operator_matmat(xp):
    """matmat/rmatmat are used for 2-D b, and the vector functions never see a block."""
    A, B = make_problem("tall", "well", seed=15, k=3)
    Ax = to_xp(xp, A)
    calls = {"matmat": 0, "rmatmat": 0}

    def matmat(V):
        calls["matmat"] += 1
        assert V.ndim == 2
        return Ax @ V

    def rmatmat(U):
        calls["rmatmat"] += 1
        assert U.ndim == 2
        return Ax.T @ U

    def matvec(v):
        assert v.ndim == 1, "matvec got a block although matmat was given"
        return Ax @ v

    def rmatvec(u):
        assert u.ndim == 1, "rmatvec got a block although rmatmat was given"
        return Ax.T @ u

    op = lsqdiff.LinearOperator(A.shape, matvec, rmatvec, matmat=matmat, rmatmat=rmatmat)
    X, info = solve_tight(lsqdiff.lsmr, op, to_xp(xp, B))
    assert_converged(info)
    assert calls["matmat"] > 0 and calls["rmatmat"] > 0
    assert_solution(X, lstsq_ref(A, B), RTOL["float64"])


def test_linear_operator_complex_dtype_real_b(xp):
    """A complex operator on a real b: LinearOperator(dtype=complex) makes the solve complex."""
    if not hasattr(xp, "complex128"):
        pytest.skip(f"{backend_name(xp)} has no complex128")
    A, _ = make_problem("tall", "well", seed=16, complex_=True)
    b = np.random.default_rng(17).standard_normal(A.shape[0])
    Ax = to_xp(xp, A)
    AH = to_xp(xp, A.conj().T)
    op = lsqdiff.LinearOperator(A.shape, lambda v: Ax @ v, lambda u: AH @ u, dtype=xp.complex128)
    x, info = solve_tight(lsqdiff.lsmr, op, to_xp(xp, b))
    assert_converged(info)
    assert dtype_name(x) == "complex128"
    assert_solution(x, lstsq_ref(A, b), RTOL["complex128"])


# --------------------------------------------------------------------------- #
# Sparse matrices
# --------------------------------------------------------------------------- #

def sparse_problem(complex_=False, k=None, seed=18):
    """A tall sparse A = [diag(1..2); sparse random] (sigma_min >= 1) and a dense b."""
    m, n = 30, 20
    rng = np.random.default_rng(seed)
    R = rng.standard_normal((m - n, n)) * (rng.random((m - n, n)) < 0.3)
    if complex_:
        R = R + 1j * rng.standard_normal((m - n, n)) * (R != 0)
    A = np.vstack([np.diag(np.linspace(1.0, 2.0, n)), R])
    b = rng.standard_normal((m,) if k is None else (m, k))
    if complex_:
        b = b + 1j * rng.standard_normal(b.shape)
    return A, b


@pytest.mark.parametrize("k", [None, 2], ids=["1d", "2d"])
@pytest.mark.parametrize("fmt", ["csr_matrix", "csc_matrix", "coo_matrix", "csr_array",
                                 "LinearOperator"])
def test_scipy_sparse(solver, fmt, k):
    sp = pytest.importorskip("scipy.sparse")
    spla = pytest.importorskip("scipy.sparse.linalg")
    A, b = sparse_problem(k=k)
    As = spla.aslinearoperator(A) if fmt == "LinearOperator" else getattr(sp, fmt)(A)
    x, info = solve_tight(solver, As, b, damp=0.1)
    assert isinstance(x, np.ndarray) and x.dtype == np.float64
    assert_converged(info)
    assert_solution(x, damped_ref(A, b, 0.1), RTOL["float64"])


def test_scipy_sparse_complex(solver):
    sp = pytest.importorskip("scipy.sparse")
    A, b = sparse_problem(complex_=True)
    x, info = solve_tight(solver, sp.csr_array(A), b)
    assert_converged(info)
    assert_solution(x, lstsq_ref(A, b), RTOL["complex128"])


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("k", [None, 2], ids=["1d", "2d"])
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_torch_sparse(solver, layout, k, complex_):
    torch = load_backend("torch")
    A, b = sparse_problem(complex_=complex_, k=k)
    At = torch.asarray(A)
    At = At.to_sparse_coo() if layout == "coo" else At.to_sparse_csr()
    x, info = solve_tight(solver, At, torch.asarray(b), damp=0.1)
    assert isinstance(x, torch.Tensor) and x.layout == torch.strided
    assert_converged(info)
    assert_solution(x, damped_ref(A, b, 0.1), RTOL["float64"])


@pytest.mark.parametrize("k", [None, 2], ids=["1d", "2d"])
def test_jax_bcoo(k):
    jnp = load_backend("jax.numpy")
    from jax.experimental import sparse as jsparse

    A, b = sparse_problem(k=k)
    x, info = solve_tight(lsqdiff.lsmr, jsparse.BCOO.fromdense(jnp.asarray(A)), jnp.asarray(b),
                          damp=0.1)
    assert_converged(info)
    assert_solution(x, damped_ref(A, b, 0.1), RTOL["float64"])


# --------------------------------------------------------------------------- #
# Arrays on a device other than the CPU
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("k", [None, 2], ids=["1d", "2d"])
def test_strict_non_default_device(solver, k):
    """array_api_strict's simulated second device stands for any array-API
    library's accelerator arrays: x stays on that device, and the diagnostics
    still come back as host values (Python scalars / NumPy arrays)."""
    strict = load_backend("array_api_strict")
    device = strict.Device("device1")
    A, b = make_problem("tall", seed=33, k=k)
    x, info = solve_tight(solver, strict.asarray(A, device=device),
                          strict.asarray(b, device=device))
    assert x.device == device
    v = info_np(info)
    if k is None:
        assert type(info.itn) is int and type(info.normr) is float
    else:
        assert isinstance(info.itn, np.ndarray) and v["itn"].shape == (2,)
    assert_converged(info)
    assert_solution(np.from_dlpack(x), lstsq_ref(A, b), RTOL["float64"])


@pytest.mark.parametrize("k", [None, 2], ids=["1d", "2d"])
def test_strict_device_without_float64(solver, k):
    """On a device without float64 (array_api_strict's 'no_float64', like Apple's
    MPS) float32 stays float32 and integers become the device's default float32."""
    strict = load_backend("array_api_strict")
    device = strict.Device("no_float64")
    A = np.array([[1, 0, 2], [0, 1, 1], [1, 1, 0], [2, 0, 1], [0, 3, 1], [1, 1, 1]])
    b = np.array([1, 2, 3, 4, 5, 6])
    b = b if k is None else np.stack([b, -b], axis=1)
    ref = lstsq_ref(A.astype(float), b.astype(float))
    for dtype in (None, strict.float32):
        x, info = solver(strict.asarray(A, dtype=dtype, device=device),
                         strict.asarray(b, dtype=dtype, device=device),
                         maxiter=100, **TIGHT["float32"])
        assert x.dtype == strict.float32 and x.device == device
        assert_converged(info)
        assert_solution(np.from_dlpack(x), ref, RTOL["float32"])


# --------------------------------------------------------------------------- #
# b = 0, maxiter = 0, inputs left alone
# --------------------------------------------------------------------------- #

def test_zero_b(xp, solver):
    A, _ = make_problem("tall", seed=19)
    m, n = A.shape
    x, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, np.zeros(m)))
    v = info_np(info)
    assert v["istop"] == 0 and v["itn"] == 0 and v["converged"]
    np.testing.assert_array_equal(to_np(x), np.zeros(n))
    assert info.message == lsqdiff.STOP_MESSAGES[0]
    # with a warm start (A has full column rank, no damping) the answer is still 0,
    # now reached by iterating on min ||A d + A x0||
    x, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, np.zeros(m)), x0=to_xp(xp, np.ones(n)))
    assert_converged(info)
    np.testing.assert_allclose(to_np(x), np.zeros(n), atol=1e-6)


@pytest.mark.parametrize("shape, damp", [("wide", 0.0), ("tall", 0.5)], ids=["wide", "damped"])
def test_zero_b_with_x0_follows_warm_start_semantics(xp, solver, shape, damp):
    """b = 0 with x0: x = x0 + argmin_d ||A d + A x0||^2 + damp^2 ||d||^2, which is
    not 0 when A has a null space or damp > 0 (SciPy's lsmr returns zeros)."""
    A, _ = make_problem(shape, seed=27)
    m, n = A.shape
    x0 = np.random.default_rng(28).standard_normal(n)
    x, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, np.zeros(m)), x0=to_xp(xp, x0),
                          damp=damp)
    ref = damped_ref(A, np.zeros(m), damp, x0)
    assert np.linalg.norm(ref) > 0.1  # zeros would be wrong here
    assert_converged(info)
    assert_solution(x, ref, RTOL["float64"])


def test_zero_b_column(xp, solver):
    """A zero column of b stops at once with istop 0; the other column is solved."""
    A, b = make_problem("tall", seed=20)
    B = np.stack([np.zeros_like(b), b, b], axis=1)
    X, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, B))
    v = info_np(info)
    assert v["istop"][0] == 0 and v["itn"][0] == 0
    assert v["itn"][1] > 0
    assert_converged(info)
    np.testing.assert_array_equal(to_np(X)[:, 0], 0.0)
    assert_solution(to_np(X)[:, 1], lstsq_ref(A, b), RTOL["float64"])


@pytest.mark.parametrize("k, warm", [(None, False), (None, True), (2, True)],
                         ids=["1d", "1d-x0", "2d-x0"])
def test_maxiter_zero(xp, solver, k, warm):
    """maxiter=0 returns x0 (or zeros) with itn 0 and istop 7 (not converged)."""
    A, b = make_problem("tall", seed=21, k=k)
    n = A.shape[1]
    x0 = np.random.default_rng(22).standard_normal((n,) if k is None else (n, k))
    x, info = solver(to_xp(xp, A), to_xp(xp, b), x0=to_xp(xp, x0) if warm else None, maxiter=0)
    np.testing.assert_array_equal(to_np(x), x0 if warm else np.zeros_like(x0))
    v = info_np(info)
    assert np.all(v["itn"] == 0) and np.all(v["istop"] == 7) and not np.any(v["converged"])


def test_inputs_not_mutated(xp, solver):
    if is_jax(xp):
        pytest.skip("JAX arrays are immutable")
    A, b = make_problem("wide", seed=23)
    x0 = np.random.default_rng(24).standard_normal(A.shape[1])
    Ax, bx, x0x = to_xp(xp, A), to_xp(xp, b), to_xp(xp, x0)
    for maxiter in (0, 5):
        # Without x0 the first u is b itself (the driver no longer copies b).
        x, _ = solver(Ax, bx, damp=0.1, maxiter=maxiter)
        np.testing.assert_array_equal(to_np(bx), b)
        x, _ = solver(Ax, bx, x0=x0x, damp=0.1, maxiter=maxiter)
        assert x is not x0x
        np.testing.assert_array_equal(to_np(x0x), x0)
        np.testing.assert_array_equal(to_np(bx), b)
        np.testing.assert_array_equal(to_np(Ax), A)
        # the result shares no memory with x0: writing to it leaves x0 alone
        x[0] = 123.0
        np.testing.assert_array_equal(to_np(x0x), x0)


# --------------------------------------------------------------------------- #
# SolveInfo
# --------------------------------------------------------------------------- #

FLOAT_FIELDS = ("normr", "normar", "norma", "conda", "normx")


@pytest.mark.parametrize("damp", [0.0, 0.6])
def test_info_norms_are_true_norms(xp, solver, damp):
    """After a few steps (warm start, with and without damping) normr and normar
    equal the norms they estimate: sqrt(||b - A x||^2 + damp^2 ||x - x0||^2) and
    ||A^T (b - A x) - damp^2 (x - x0)||."""
    A, b = make_problem("tall", seed=29)
    x0 = np.random.default_rng(30).standard_normal(A.shape[1])
    x, info = solver(to_xp(xp, A), to_xp(xp, b), x0=to_xp(xp, x0), damp=damp,
                     atol=0.0, btol=0.0, conlim=0.0, maxiter=5)
    assert int(to_np(info.itn)) == 5
    x = to_np(x)
    r = b - A @ x
    np.testing.assert_allclose(float(to_np(info.normr)),
                               np.hypot(np.linalg.norm(r), damp * np.linalg.norm(x - x0)),
                               rtol=1e-10)
    np.testing.assert_allclose(float(to_np(info.normar)),
                               np.linalg.norm(A.T @ r - damp**2 * (x - x0)), rtol=1e-8)


@pytest.mark.parametrize("solver_name", ["lsmr", "lsqr"])
def test_info_normx_with_x0(solver_name):
    """As documented: LSMR reports ||x||, LSQR ||x - x0|| (SciPy's xnorm)."""
    solver = getattr(lsqdiff, solver_name)
    A, b = make_problem("tall", seed=31)
    x0 = np.random.default_rng(32).standard_normal(A.shape[1])
    x, info = solve_tight(solver, A, b, x0=x0)
    assert_converged(info)
    expected = x if solver_name == "lsmr" else x - x0
    np.testing.assert_allclose(info.normx, np.linalg.norm(expected), rtol=1e-8)


def test_info_types_1d(xp, solver):
    A, b = make_problem("tall", seed=25)
    x, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, b))
    assert isinstance(info, lsqdiff.SolveInfo)
    if is_jax(xp):
        import jax

        for f in ("istop", "itn", "converged") + FLOAT_FIELDS:
            value = getattr(info, f)
            assert isinstance(value, jax.Array) and value.shape == (), f
        assert info.converged.dtype == xp.bool_
    else:
        assert type(info.istop) is int and type(info.itn) is int
        assert type(info.converged) is bool
        for f in FLOAT_FIELDS:
            assert type(getattr(info, f)) is float, f
    istop = int(to_np(info.istop))
    assert info.message == lsqdiff.STOP_MESSAGES[istop]
    assert bool(to_np(info.converged)) == (istop in (0, 1, 2, 4, 5))
    assert "SolveInfo(istop=" in repr(info)
    # normx is ||x|| (LSQR's is SciPy's running estimate: equal to rounding)
    np.testing.assert_allclose(float(to_np(info.normx)), np.linalg.norm(to_np(x)), rtol=1e-8)


def test_info_types_2d(xp, solver):
    A, B = make_problem("tall", seed=26, k=3)
    X, info = solve_tight(solver, to_xp(xp, A), to_xp(xp, B))
    for f in ("istop", "itn", "converged") + FLOAT_FIELDS:
        value = getattr(info, f)
        if is_jax(xp):
            import jax

            assert isinstance(value, jax.Array), f
        else:
            assert isinstance(value, np.ndarray), f
        assert value.shape == (3,), f
    v = info_np(info)
    assert np.issubdtype(v["istop"].dtype, np.integer)
    assert np.issubdtype(v["itn"].dtype, np.integer)
    assert v["converged"].dtype == np.bool_
    assert info.message == [lsqdiff.STOP_MESSAGES[int(c)] for c in v["istop"]]
    np.testing.assert_allclose(v["normx"], np.linalg.norm(to_np(X), axis=0), rtol=1e-8)
