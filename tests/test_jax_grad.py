"""JAX: gradients of lsqdiff.lsmr/lsqr (reverse mode, the transposed ``jax.custom_jvp``).

``jax.test_util.check_grads`` (reverse mode, float64, forward run to
atol = btol = 1e-14) in A, b, x0 and damp; the gradients against the dense
closed forms and the NumPy pullback (JAX's cotangent of a complex input is the
conjugate of PyTorch's); ``jit``, ``vmap`` of ``grad``, ``grad`` of ``vmap``,
``value_and_grad``; BCOO; LinearOperator closures; integer inputs.

Every distinct jitted program costs an XLA compile (about a second for a
solve and its backward pass on CPU), and eager gradients compile their loops
afresh, so the tests jit what they differentiate and share one jitted solve per
setting (:func:`solve_fn`).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import lsqdiff
from conftest import assert_converged, make_problem
from grad_reference import TIGHT_GRAD, assert_close, closed_form, small_problem, vdot

jax = pytest.importorskip("jax")
jnp = jax.numpy
from jax.test_util import check_grads  # noqa: E402

jax.config.update("jax_enable_x64", True)


@functools.cache
def solve_fn(solver, has_x0: bool, damped: bool):
    """``f(A, b[, x0][, damp]) -> x`` (damp traced: the damped rule), jitted."""

    def f(A, b, *rest):
        rest = list(rest)
        x0 = rest.pop(0) if has_x0 else None
        damp = rest.pop(0) if damped else 0.0
        return solver(A, b, x0=x0, damp=damp, **TIGHT_GRAD)[0]

    return jax.jit(f)


def case_args(A, b, x0, damp):
    args = [jnp.asarray(A), jnp.asarray(b)]
    if x0 is not None:
        args.append(jnp.asarray(x0))
    if damp:
        args.append(jnp.asarray(damp))
    return args


def real_loss(f, x_bar):
    """``L(*args) = Re <x_bar, f(*args)>``, a real loss."""
    x_bar = jnp.asarray(x_bar)
    return lambda *a: jnp.sum(jnp.real(jnp.conj(x_bar) * f(*a)))


def assert_converged_at(solver, A, b, x0, damp):
    _, info = solver(jnp.asarray(A), jnp.asarray(b), x0=None if x0 is None else jnp.asarray(x0),
                     damp=damp, **TIGHT_GRAD)
    assert_converged(info)


# --------------------------------------------------------------------------- #
# check_grads and closed forms
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", ["tall", "wide-x0", "square", "damped-x0", "2d-b",
                                  "complex-wide-damped-x0"])
def test_check_grads_and_closed_form(case):
    """Reverse-mode check_grads (finite differences of the solve) in every input
    the case has, and jax.grad of Re<x_bar, x> equals the conjugate of the
    closed-form (PyTorch-convention) gradients."""
    solver = lsqdiff.lsqr if case in ("square", "2d-b") else lsqdiff.lsmr
    A, b, x0, damp, x_bar = small_problem(case)
    assert_converged_at(solver, A, b, x0, damp)
    f = solve_fn(solver, x0 is not None, bool(damp))
    args = case_args(A, b, x0, damp)
    check_grads(f, args, order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)

    grads = jax.grad(real_loss(f, x_bar), argnums=tuple(range(len(args))))(*args)
    ref = closed_form(A, b, x0, damp, x_bar)
    names = ["A", "b"] + (["x0"] if x0 is not None else []) + (["damp"] if damp else [])
    for name, g in zip(names, grads):
        assert g.dtype == args[names.index(name)].dtype, name
        assert_close(np.conj(np.asarray(g)), ref[name], 1e-9, 1e-12, name)


def test_check_grads_rank_deficient_factors():
    """Undamped, rank 2, warm-started: finite differences along A = L R^T only,
    where the pseudo-inverse is smooth (all three backward solves and x0's
    null-space gradient are in play)."""
    rng = np.random.default_rng(5)
    f = jax.jit(lambda L, R, b, x0: lsqdiff.lsmr(L @ R.T, b, x0=x0, **TIGHT_GRAD)[0])
    args = [jnp.asarray(rng.standard_normal(s)) for s in ((6, 2), (4, 2), (6,), (4,))]
    A = np.asarray(args[0] @ args[1].T)
    assert np.linalg.matrix_rank(A) == 2
    _, info = lsqdiff.lsmr(jnp.asarray(A), args[2], x0=args[3], **TIGHT_GRAD)
    assert_converged(info)
    check_grads(f, args, order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


def test_gradients_match_numpy_pullback():
    """The JAX gradient of a complex, damped, warm-started solve is the conjugate
    of the NumPy pullback's (same backward pass, JAX's convention)."""
    A, b, x0, damp, x_bar = small_problem("complex-wide-damped-x0")
    (_, info), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, x0=x0, damp=damp, **TIGHT_GRAD)
    assert_converged(info)
    g = pullback(x_bar)
    f = solve_fn(lsqdiff.lsmr, True, True)
    gA, gb, gx0, gd = jax.grad(real_loss(f, x_bar), argnums=(0, 1, 2, 3))(
        *case_args(A, b, x0, damp))
    np.testing.assert_allclose(np.asarray(gA), np.conj(g.A.todense()), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gb), np.conj(g.b), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gx0), np.conj(g.x0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(float(gd), g.damp, rtol=1e-9)


# --------------------------------------------------------------------------- #
# Transformations
# --------------------------------------------------------------------------- #

def test_jit_value_and_grad():
    """jit(value_and_grad): the loss and the gradients of every input."""
    A, b, x0, damp, x_bar = small_problem("damped-x0")
    args = case_args(A, b, x0, damp)
    loss = real_loss(lambda A, b, x0, d: lsqdiff.lsmr(A, b, x0=x0, damp=d, **TIGHT_GRAD)[0],
                      x_bar)
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(*args)
    ref = closed_form(A, b, x0, damp, x_bar)
    np.testing.assert_allclose(float(value), vdot(x_bar, ref["x"]), rtol=1e-12)
    for name, g in zip(["A", "b", "x0", "damp"], grads):
        assert_close(np.asarray(g), ref[name], 1e-9, 1e-12, name)


def test_vmap_of_grad_and_grad_of_vmap():
    """vmap(grad) over right-hand sides gives each one's gradient; grad of a
    vmapped solve in A is their sum, which equals the 2-D-b solve's gradient
    (both under jit)."""
    A, B, x0, damp, X_bar = small_problem("2d-b")  # B: (6, 2), x0 and X_bar: (4, 2)
    Aj = jnp.asarray(A)
    Bs, X0s, Xbars = (jnp.asarray(M.T) for M in (B, x0, X_bar))  # batch first

    def loss(A, b, x0, x_bar):
        x = lsqdiff.lsmr(A, b, x0=x0, **TIGHT_GRAD)[0]
        return jnp.sum(x_bar * x)

    @jax.jit
    def both(A, Bs, X0s, Xbars):
        each = jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0, 0, 0))(
            A, Bs, X0s, Xbars)
        of_vmap = jax.grad(lambda A: jnp.sum(jax.vmap(loss, in_axes=(None, 0, 0, 0))(
            A, Bs, X0s, Xbars)))(A)
        return each, of_vmap

    (gA_each, gb_each), gA = both(Aj, Bs, X0s, Xbars)
    assert gA_each.shape == (2,) + A.shape and gb_each.shape == (2, A.shape[0])
    for j in range(2):
        ref = closed_form(A, B[:, j], x0[:, j], 0.0, X_bar[:, j])
        assert_close(np.asarray(gA_each[j]), ref["A"], 1e-9, 1e-12, f"A[{j}]")
        assert_close(np.asarray(gb_each[j]), ref["b"], 1e-9, 1e-12, f"b[{j}]")
    ref = closed_form(A, B, x0, 0.0, X_bar)
    assert_close(np.asarray(gA), ref["A"], 1e-9, 1e-12, "grad of vmap")


# --------------------------------------------------------------------------- #
# Sparse and LinearOperator
# --------------------------------------------------------------------------- #

def test_bcoo_gradient_on_the_pattern():
    """jax.experimental.sparse.grad in a BCOO A (under jit) is a BCOO with the
    dense gradient's values on A's pattern (and the values' own gradient is the
    same); b's gradient too."""
    from jax.experimental import sparse as jsparse

    A, b = make_problem((8, 5), seed=31)
    A[np.abs(A) < 0.25] = 0
    x_bar = np.random.default_rng(32).standard_normal(5)
    As = jsparse.BCOO.fromdense(jnp.asarray(A))
    assert 0 < As.nse < A.size

    def loss(A, b):
        x = lsqdiff.lsmr(A, b, damp=0.1, **TIGHT_GRAD)[0]
        return jnp.sum(jnp.asarray(x_bar) * x)

    g_A, g_b = jax.jit(jsparse.grad(loss, argnums=(0, 1)))(As, jnp.asarray(b))
    assert isinstance(g_A, jsparse.BCOO)
    ref = closed_form(A, b, None, 0.1, x_bar)
    G = np.asarray(g_A.todense())
    assert_close(G[A != 0], ref["A"][A != 0], 1e-9, 1e-12, "A on the pattern")
    assert np.all(G[A == 0] == 0)
    rows, cols = np.asarray(g_A.indices).T
    assert_close(np.asarray(g_A.data), ref["A"][rows, cols], 1e-9, 1e-12, "A values")
    assert_close(np.asarray(g_b), ref["b"], 1e-9, 1e-12, "b")


@pytest.mark.parametrize("with_rmatvec", [True, False], ids=["rmatvec", "derived"])
def test_linear_operator_closure_gradients(with_rmatvec):
    """A LinearOperator whose matvec closes over arrays (B + sum_i theta_i M_i):
    closure_convert hands them to the custom_vjp, so theta and the closed-over B
    get gradients under jit; rmatvec given or derived by jax.linear_transpose.
    (Eagerly the same code runs, but an eager LinearOperator solve compiles its
    loops on every call: seconds per gradient, so not here.)"""
    A, b, x0, damp, x_bar = small_problem("wide-x0")
    m, n = A.shape
    rng = np.random.default_rng(21)
    mats = jnp.asarray(rng.standard_normal((2, m, n)))
    theta0 = np.array([0.3, -0.1])
    B = jnp.asarray(A) - jnp.einsum("i,imn->mn", jnp.asarray(theta0), mats)

    def loss(theta, B, b):
        dense = B + jnp.einsum("i,imn->mn", theta, mats)
        op = lsqdiff.LinearOperator((m, n), lambda v: dense @ v,
                                    (lambda u: dense.T @ u) if with_rmatvec else None)
        x = lsqdiff.lsmr(op, b, x0=jnp.asarray(x0), **TIGHT_GRAD)[0]
        return jnp.sum(jnp.asarray(x_bar) * x)

    ref = closed_form(A, b, x0, damp, x_bar)
    want_theta = [vdot(ref["A"], M) for M in np.asarray(mats)]
    g_theta, g_B, g_b = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
        jnp.asarray(theta0), B, jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(g_theta), want_theta, rtol=1e-9, atol=1e-12)
    assert_close(np.asarray(g_B), ref["A"], 1e-9, 1e-12, "B")
    assert_close(np.asarray(g_b), ref["b"], 1e-9, 1e-12, "b")


# --------------------------------------------------------------------------- #
# Errors and known gaps
# --------------------------------------------------------------------------- #

def test_grad_wrt_integer_array_raises():
    """An integer A is accepted by the solve (promoted to the default float), but
    differentiating in it is JAX's TypeError."""
    A = jnp.asarray([[1, 0], [1, 1], [0, 1]])
    b = jnp.asarray([1.0, 3.0, 2.0])
    with pytest.raises(TypeError, match=r"real- or complex-valued"):
        jax.grad(lambda A: jnp.sum(lsqdiff.lsmr(A, b, **TIGHT_GRAD)[0]))(A)


def test_traced_zero_damp_gradient():
    """jax.grad in damp (or any damp that is a traced JAX array) at damp = 0 gives
    the pseudo-inverse rule's gradients, as a Python 0.0 does (issue 15, item 4)."""
    A, b, x0, _, x_bar = small_problem("damped-x0")
    f = solve_fn(lsqdiff.lsmr, True, True)  # compiled by the damped-x0 check above
    gA, _, _, gd = jax.grad(real_loss(f, x_bar), argnums=(0, 1, 2, 3))(
        *case_args(A, b, x0, 0.5)[:3], jnp.asarray(0.0))
    ref = closed_form(A, b, x0, 0.0, x_bar)
    assert float(gd) == 0.0
    assert_close(np.asarray(gA), ref["A"], 1e-9, 1e-12, "A")


# --------------------------------------------------------------------------- #
# jax.linear_transpose in b (issue 15)
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", ["tall", "wide", "tall-damped", "2d-b-damped",
                                  "complex-wide-damped-x0"])
def test_linear_transpose_in_b(case):
    """With A and damp fixed and no x0 the solve is linear in b: its transpose is
    the minimum-norm solve with A^H (damped: c -> A M^-1 c), JAX's unconjugated
    transpose (lineax's least-squares tests use it)."""
    A, b, _, damp, x_bar = small_problem(case)
    Aj = jnp.asarray(A)
    f = lambda b: lsqdiff.lsmr(Aj, b, damp=damp, **TIGHT_GRAD)[0]  # noqa: E731
    (got,) = jax.linear_transpose(f, jnp.asarray(b))(jnp.asarray(x_bar))
    n = A.shape[1]
    AH = A.conj().T
    P = (np.linalg.solve(AH @ A + damp**2 * np.eye(n), AH) if damp
         else np.linalg.pinv(A))
    assert_close(np.asarray(got), P.T @ x_bar, 1e-10, 1e-12, "b")


def test_linear_transpose_traced_damp_and_operator():
    """Under jit with damp traced (0 and positive), through a LinearOperator, by LSQR."""
    A, b, _, _, x_bar = small_problem("wide")
    Aj = jnp.asarray(A)
    op = lsqdiff.LinearOperator(A.shape, lambda v: Aj @ v, lambda u: Aj.T @ u, dtype=Aj.dtype)

    @jax.jit
    def transpose(damp, c):
        f = lambda b: lsqdiff.lsqr(op, b, damp=damp, **TIGHT_GRAD)[0]  # noqa: E731
        return jax.linear_transpose(f, jnp.asarray(b))(c)[0]

    for damp in (0.0, 0.5):
        P = (np.linalg.solve(A.T @ A + damp**2 * np.eye(A.shape[1]), A.T) if damp
             else np.linalg.pinv(A))
        assert_close(np.asarray(transpose(damp, jnp.asarray(x_bar))), P.T @ x_bar, 1e-10,
                     1e-12, f"damp={damp}")


def test_linear_transpose_with_x0_is_refused():
    """A warm start makes the solution affine in b: a clear error, not the loop's."""
    A, b, x0, _, x_bar = small_problem("wide-x0")
    f = lambda b: lsqdiff.lsmr(jnp.asarray(A), b, x0=jnp.asarray(x0))[0]  # noqa: E731
    with pytest.raises(NotImplementedError, match="x0=None"):
        jax.linear_transpose(f, jnp.asarray(b))


def test_vmap_of_grad_over_matrices_and_damps():
    """vmap of grad over a batch of wide A (the pseudo-inverse primitive's batching
    rule with a mapped operator) and grad of the vmapped solve agree with pinv;
    with damp mapped too ([0, 0.3, 0]) every gradient is finite and damp's is 0 at 0."""
    rng = np.random.default_rng(12)
    As = jnp.asarray(rng.standard_normal((3, 4, 6)))
    b = jnp.asarray(rng.standard_normal(4))
    f = lambda A, d=0.0: jnp.sum(lsqdiff.lsmr(A, b, damp=d, **TIGHT_GRAD)[0] ** 2)  # noqa: E731
    ref = jax.jit(jax.vmap(jax.grad(lambda A: jnp.sum((jnp.linalg.pinv(A) @ b) ** 2))))(As)
    got = jax.jit(jax.vmap(jax.grad(f)))(As)
    assert_close(np.asarray(got), np.asarray(ref), 1e-9, 1e-12, "vmap(grad)")
    got = jax.jit(jax.grad(lambda As: jnp.sum(jax.vmap(f)(As))))(As)
    assert_close(np.asarray(got), np.asarray(ref), 1e-9, 1e-12, "grad(vmap)")
    gA, gd = jax.jit(jax.vmap(jax.grad(f, argnums=(0, 1))))(As, jnp.asarray([0.0, 0.3, 0.0]))
    assert np.all(np.isfinite(np.asarray(gA))) and np.isfinite(float(gd[1]))
    assert_close(np.asarray(gA[::2]), np.asarray(ref[::2]), 1e-9, 1e-12, "A at damp 0")
    assert float(gd[0]) == 0.0 and float(gd[2]) == 0.0
