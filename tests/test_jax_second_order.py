"""JAX: second derivatives of lsqdiff.lsmr/lsqr, and a traced ``damp`` at 0.

Second derivatives (``jax.hessian``, ``jax.jacfwd(jax.jacrev(...))``,
``jax.jvp`` of ``jax.grad``) differentiate the tangent rule again; its
pseudo-inverse solves are a primitive with Golub & Pereyra's derivative
(`lsqdiff.backends.jax`). References: the same derivatives of the dense solution
map in float64 (``jnp.linalg.pinv`` undamped, ``jnp.linalg.solve`` of the normal
equations damped), which JAX differentiates exactly.

A traced ``damp`` selects the undamped rule where it is 0 (``lax.cond``; a
``select`` under ``vmap``): finite gradients, the pseudo-inverse's, ``d x / d damp
= 0`` and ``d^2 x / d damp^2 = -2 (A^H A)^+ (x - x0)``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import lsqdiff
from conftest import assert_converged, make_problem
from grad_reference import TIGHT_GRAD, assert_close, closed_form, small_problem

jax = pytest.importorskip("jax")
jnp = jax.numpy

jax.config.update("jax_enable_x64", True)


def reference_x(A, b, x0, damp, damped):
    """The solution map, densely: ``x0 + argmin ||A d - (b - A x0)||^2 + damp^2 ||d||^2``
    (minimum-norm ``d`` when ``damped`` is False). ``damped`` None: a damp at 0,
    by ``d(damp) = d(0) - damp^2 (A^H A)^+ d(0)``, exact to second order there
    (any rank; the normal equations are singular at 0 unless A has full column rank)."""
    r0 = b if x0 is None else b - A @ x0
    if damped:
        AH = jnp.conj(A).T
        d = jnp.linalg.solve(AH @ A + damp**2 * jnp.eye(A.shape[1], dtype=A.dtype), AH @ r0)
    else:
        P = jnp.linalg.pinv(A)
        d = P @ r0
        if damped is None:
            d = d - damp**2 * (P @ (jnp.conj(P).T @ d))
    return d if x0 is None else x0 + d


def lsmr_x(A, b, x0, damp, damped):
    del damped
    return lsqdiff.lsmr(A, b, x0=x0, damp=damp, **TIGHT_GRAD)[0]


def make_loss(solution, x_bar, damped, traced_damp):
    """``L(A, b, x0[, damp]) = Re <x_bar, x> + |x|^2 / 2``: curvature of its own
    besides the solve's. Without ``traced_damp`` damp is the Python float 0."""
    x_bar = jnp.asarray(x_bar)

    def loss(A, b, x0, *damp):
        x = solution(A, b, x0, damp[0] if traced_damp else 0.0, damped)
        return jnp.sum(jnp.real(jnp.conj(x_bar) * x)) + 0.5 * jnp.sum(jnp.abs(x) ** 2)

    return loss


def rank_deficient(m, n, r, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, r)) @ rng.standard_normal((r, n))


#: name -> (A, b, x0, damp, x_bar) with float64 NumPy arrays; damp 0 is undamped.
def problem(name):
    if name == "rank-deficient-x0":
        rng = np.random.default_rng(3)
        A = rank_deficient(6, 5, 3, 3)
        return A, rng.standard_normal(6), rng.standard_normal(5), 0.0, rng.standard_normal(5)
    base = {"tall": "tall", "wide-x0": "wide-x0", "square": "square",
            "tall-damped": "tall-damped", "damped-x0": "damped-x0",
            "complex-tall": "complex-tall",
            "complex-wide-damped-x0": "complex-wide-damped-x0"}[name]
    A, b, x0, damp, x_bar = small_problem(base)
    if x0 is None:  # every case takes a warm start (zero: the cold start's solution)
        x0 = np.zeros_like(x_bar)
    return A, b, x0, damp, x_bar


def directions(args, seed):
    """Random tangents like ``args`` (complex where they are)."""
    rng = np.random.default_rng(seed)

    def draw(a):
        a = np.asarray(a)
        z = rng.standard_normal(a.shape)
        if np.iscomplexobj(a):
            z = z + 1j * rng.standard_normal(a.shape)
        return jnp.asarray(z, dtype=a.dtype)

    return tuple(draw(a) for a in args)


# --------------------------------------------------------------------------- #
# A traced damp equal to 0 (issue 15, item 4)
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", ["tall", "wide-x0"])
def test_jit_grad_at_traced_zero_damp_is_the_pseudo_inverse_gradient(case):
    """jit(grad) with damp among the jitted arguments and equal to 0 gave NaN for
    every input: now the undamped rule's gradients, and 0 for damp."""
    A, b, x0, _, x_bar = small_problem(case)
    x0 = np.zeros_like(x_bar) if x0 is None else x0
    loss = make_loss(lsmr_x, x_bar, damped=None, traced_damp=True)
    args = (jnp.asarray(A), jnp.asarray(b), jnp.asarray(x0), jnp.asarray(0.0))
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args)
    x = np.asarray(lsmr_x(*args, None))
    ref = closed_form(A, b, x0, 0.0, x_bar + x)  # the loss's gradient in x is x_bar + x
    for name, g in zip(["A", "b", "x0"], grads[:3]):
        assert_close(np.asarray(g), ref[name], 1e-9, 1e-12, name)
    assert float(grads[3]) == 0.0


def test_grad_in_damp_at_zero_is_zero():
    """The issue's reproducer: grad in damp at 0 of sum(x) (eager) is 0, not NaN;
    the tangent in damp at 0 is 0 and the value the pseudo-inverse solution."""
    A, b = (jnp.asarray(a) for a in make_problem((6, 4), seed=1))
    f = lambda d: lsqdiff.lsmr(A, b, damp=d, **TIGHT_GRAD)[0]  # noqa: E731
    assert float(jax.grad(lambda d: f(d).sum())(0.0)) == 0.0
    x, dx = jax.jvp(f, (0.0,), (1.0,))
    np.testing.assert_allclose(np.asarray(x), np.linalg.pinv(np.asarray(A)) @ np.asarray(b),
                               rtol=1e-10)
    assert np.all(np.asarray(dx) == 0.0)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_second_derivative_in_damp_at_zero(shape):
    """x depends on damp^2: d^2 x / d damp^2 at 0 is -2 (A^H A)^+ x, not the 0 the
    undamped rule alone would give (jacfwd of jacrev, and jax.hessian of a loss)."""
    A, b = (jnp.asarray(a) for a in make_problem(shape, seed=2))
    f = lambda d: lsqdiff.lsmr(A, b, damp=d, **TIGHT_GRAD)[0]  # noqa: E731
    P = np.linalg.pinv(np.asarray(A))
    x = P @ np.asarray(b)
    expected = -2 * P @ P.T @ x
    # One program for both (the forward solve and its compile are shared).
    second, h = jax.jit(lambda d: (jax.jacfwd(jax.jacrev(f))(d),
                                   jax.hessian(lambda d: jnp.sum(f(d) ** 2))(d)))(
        jnp.asarray(0.0))
    assert_close(np.asarray(second), expected, 1e-8, 1e-12, "d2x/ddamp2")
    assert_close(np.asarray(h), 2 * x @ expected, 1e-8, 1e-12, "hessian")


def test_vmap_over_damps_with_zeros():
    """vmap of grad over damps [0, 0.5, 0]: a select runs both rules for every
    entry; the damped one at 0 must not leak a NaN into the gradients."""
    A, b, x0, _, x_bar = small_problem("wide-x0")
    loss = make_loss(lsmr_x, x_bar, damped=None, traced_damp=True)
    args = (jnp.asarray(A), jnp.asarray(b), jnp.asarray(x0))
    damps = jnp.asarray([0.0, 0.5, 0.0])
    grads = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2, 3)), in_axes=(None,) * 3 + (0,)))(
        *args, damps)
    for i, damp in enumerate([0.0, 0.5, 0.0]):
        x = np.asarray(lsmr_x(*args, damp, None))
        ref = closed_form(A, b, x0, damp, x_bar + x)
        for name, g in zip(["A", "b", "x0", "damp"], grads):
            assert_close(np.asarray(g[i]), ref[name], 1e-8, 1e-12, f"{name}, damp={damp}")


# --------------------------------------------------------------------------- #
# Second derivatives against dense references (issue 15, item 5)
# --------------------------------------------------------------------------- #

CASES = ["tall", "wide-x0", "square", "tall-damped", "damped-x0", "complex-tall",
         "complex-wide-damped-x0"]

#: (case, damp traced at 0) in the order they run: every case with a damp of 0
#: as a Python float and traced, the damped ones traced. Those of one shape and
#: dtype with a traced damp (tall at a traced 0, tall-damped, damped-x0) are
#: adjacent, so one worker runs them with the one program they share (`_hvp`).
HVP_CASES = [("tall", False), ("wide-x0", False), ("wide-x0", True), ("square", False),
             ("square", True), ("complex-tall", False), ("complex-tall", True),
             ("tall", True), ("tall-damped", False), ("damped-x0", False),
             ("complex-wide-damped-x0", False)]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _hvp(solution, damped, args, tangents, x_bar):
    """jax.jvp of jax.grad of ``make_loss(solution, x_bar, ...)`` in every one of
    ``args`` (A, b, x0[, damp]) along ``tangents``. Data are arguments, so every
    case of one shape, dtype and ``damped`` runs one compiled program (ours
    ignores ``damped``: pass None)."""
    traced = len(args) == 4
    loss = make_loss(solution, x_bar, damped, traced)
    return jax.jvp(jax.grad(loss, argnums=tuple(range(len(args)))), args, tangents)[1]


@pytest.mark.parametrize("case, traced_zero", [
    pytest.param(case, traced, id=f"{case}-{'traced-damp=0' if traced else 'damp'}")
    for case, traced in HVP_CASES])
def test_jvp_of_grad_in_every_input(case, traced_zero):
    """Hessian-vector products in (A, b, x0, damp) at once: jax.jvp of jax.grad
    matches the dense reference's (undamped: the pseudo-inverse's derivative,
    which custom_linear_solve's rule got wrong)."""
    A, b, x0, damp, x_bar = problem(case)
    damped = True if damp else (None if traced_zero else False)
    traced = bool(damp) or traced_zero
    args = tuple(jnp.asarray(a) for a in (A, b, x0)) + ((jnp.asarray(damp),) if traced else ())
    tangents = directions(args, seed=CASES.index(case))
    x_bar = jnp.asarray(x_bar)
    got = _hvp(lsmr_x, None, args, tangents, x_bar)
    want = _hvp(reference_x, damped, args, tangents, x_bar)
    for name, g, w in zip(["A", "b", "x0", "damp"], got, want):
        assert_close(np.asarray(g), np.asarray(w), 1e-7, 1e-10, name)


@pytest.mark.parametrize("case", ["tall", "wide-x0", "damped-x0"])
def test_hessian_in_A_and_b(case):
    """jax.hessian in (A, b) (forward over reverse, every block) equals the
    reference's; it raised an internal custom_linear_solve error before."""
    A, b, x0, damp, x_bar = problem(case)
    damped = bool(damp)
    rest = (jnp.asarray(x0),) + ((jnp.asarray(damp),) if damped else ())
    ours = make_loss(lsmr_x, x_bar, damped, damped)
    ref = make_loss(reference_x, x_bar, damped, damped)
    args = (jnp.asarray(A), jnp.asarray(b))

    def hessian(loss):
        return jax.jit(jax.hessian(lambda A, b: loss(A, b, *rest), argnums=(0, 1)))(*args)

    got, want = hessian(ours), hessian(ref)
    for i, row in enumerate(["A", "b"]):
        for j, col in enumerate(["A", "b"]):
            assert_close(np.asarray(got[i][j]), np.asarray(want[i][j]), 1e-7, 1e-10,
                         f"d2L/d{row}d{col}")


def factored(solution):
    """``solution`` of ``A = L R^T``: at a rank-deficient ``A`` the pseudo-inverse is
    differentiable only along matrices of the same rank, which the factors span
    (in a direction that changes the rank there is no derivative to compare)."""
    return lambda L, R, b, x0, damp, damped: solution(L @ R.T, b, x0, damp, damped)


@pytest.mark.parametrize("traced_zero", [False, True], ids=["damp=0.0", "traced-damp=0"])
def test_jvp_of_grad_rank_deficient(traced_zero):
    """Rank 3 of (6, 5), warm-started: Hessian-vector products in the factors,
    b, x0 (and a traced damp at 0) match the reference's."""
    A, b, x0, _, x_bar = problem("rank-deficient-x0")
    U, sv, Vh = np.linalg.svd(A)
    L, R = U[:, :3] * sv[:3], Vh[:3].T
    damped = None if traced_zero else False
    args = tuple(jnp.asarray(a) for a in (L, R, b, x0)) + (
        (jnp.asarray(0.0),) if traced_zero else ())
    tangents = directions(args, seed=99)
    argnums = tuple(range(len(args)))

    def loss(solution):
        x_b = jnp.asarray(x_bar)

        def f(L, R, b, x0, *damp):
            x = factored(solution)(L, R, b, x0, damp[0] if damp else 0.0, damped)
            return jnp.sum(x_b * x) + 0.5 * jnp.sum(x**2)

        return f

    def hvp(f):
        return jax.jit(lambda *a: jax.jvp(jax.grad(f, argnums=argnums), a, tangents)[1])

    got, want = hvp(loss(lsmr_x))(*args), hvp(loss(reference_x))(*args)
    for name, g, w in zip(["L", "R", "b", "x0", "damp"], got, want):
        assert_close(np.asarray(g), np.asarray(w), 1e-7, 1e-10, name)


def test_jacfwd_of_jacrev_lsqr_wide():
    """The Jacobian of the gradient in A of an LSQR solve (the backward pass is
    LSMR's whichever method solved)."""
    A, b, x0, _, x_bar = problem("wide-x0")

    def solution(A, b, x0, damp, damped):
        return lsqdiff.lsqr(A, b, x0=x0, damp=damp, **TIGHT_GRAD)[0]

    args = (jnp.asarray(A), jnp.asarray(b), jnp.asarray(x0))
    got = jax.jit(jax.jacfwd(jax.jacrev(make_loss(solution, x_bar, False, False))))(*args)
    want = jax.jit(jax.jacfwd(jax.jacrev(make_loss(reference_x, x_bar, False, False))))(*args)
    assert_close(np.asarray(got), np.asarray(want), 1e-7, 1e-10, "d2L/dA2")


@pytest.mark.parametrize("derived", [False, True], ids=["rmatvec", "derived-rmatvec"])
def test_hessian_through_a_linear_operator(derived):
    """A LinearOperator whose products close over A = theta**2 (nonlinear in the
    parameters): the Hessian in theta, undamped and rank-deficient with a warm start."""
    A0, b, x0, _, x_bar = problem("rank-deficient-x0")
    theta = jnp.asarray(np.sqrt(np.abs(A0)) + 0.1)
    sign = jnp.asarray(np.sign(A0))

    def solution(theta, b, x0, damp, damped):
        M = sign * theta**2
        op = lsqdiff.LinearOperator(
            M.shape, lambda v: M @ v, None if derived else (lambda u: M.T @ u), dtype=M.dtype)
        return lsqdiff.lsmr(op, b, x0=x0, **TIGHT_GRAD)[0]

    def reference(theta, b, x0, damp, damped):
        return reference_x(sign * theta**2, b, x0, damp, damped)

    rest = (jnp.asarray(b), jnp.asarray(x0))
    got = jax.jit(jax.hessian(lambda t: make_loss(solution, x_bar, False, False)(t, *rest)))(theta)
    want = jax.jit(jax.hessian(lambda t: make_loss(reference, x_bar, False, False)(t, *rest)))(
        theta)
    assert_close(np.asarray(got), np.asarray(want), 1e-7, 1e-10, "d2L/dtheta2")


def test_vmap_of_hessian_vector_products_over_operators():
    """vmap over a batch of matrices A = L R^T (ranks 3, 4 and 2 of (6, 4)) of
    jvp(grad) in the factors: the primitive's batching rule with a mapped operator
    (each column of the block solve has its own A)."""
    rng = np.random.default_rng(11)
    Ls = jnp.asarray(rng.standard_normal((3, 6, 4)))
    # R's columns beyond the rank are zero: A = L R^T keeps that rank along dR
    # only where dR's are too, so the direction dR is masked the same way.
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=float)[:, None, :]
    Rs = jnp.asarray(rng.standard_normal((3, 4, 4)) * mask)
    dRs = jnp.asarray(rng.standard_normal((3, 4, 4)) * mask)
    b, x_bar, dL = (jnp.asarray(rng.standard_normal(s)) for s in ((6,), (4,), (6, 4)))
    zero = jnp.zeros(4)

    def hvp(solution):
        f = factored(solution)

        def loss(L, R):
            x = f(L, R, b, zero, 0.0, False)
            return jnp.sum(x_bar * x) + 0.5 * jnp.sum(x**2)

        return lambda L, R, dR: jax.jvp(jax.grad(loss, argnums=(0, 1)), (L, R), (dL, dR))[1]

    got = jax.jit(jax.vmap(hvp(lsmr_x)))(Ls, Rs, dRs)
    want = jax.jit(jax.vmap(hvp(reference_x)))(Ls, Rs, dRs)
    assert [np.linalg.matrix_rank(np.asarray(Ls[i] @ Rs[i].T)) for i in range(3)] == [3, 4, 2]
    for i in range(3):
        for name, g, w in zip(["L", "R"], got, want):
            assert_close(np.asarray(g[i]), np.asarray(w[i]), 1e-7, 1e-10, f"{name}[{i}]")


def test_hessian_in_b_under_vmap_of_right_hand_sides():
    """vmap of jax.hessian in b over right-hand sides (only b mapped: one block
    solve), undamped wide with a warm start."""
    A, b, x0, _, x_bar = problem("wide-x0")
    Bs = jnp.asarray(np.stack([b, 2 * b, -b + 1]))
    ours = make_loss(lsmr_x, x_bar, False, False)
    ref = make_loss(reference_x, x_bar, False, False)
    Aj, x0j = jnp.asarray(A), jnp.asarray(x0)
    got = jax.jit(jax.vmap(jax.hessian(lambda b: ours(Aj, b, x0j))))(Bs)
    want = jax.jit(jax.vmap(jax.hessian(lambda b: ref(Aj, b, x0j))))(Bs)
    for i in range(Bs.shape[0]):
        assert_close(np.asarray(got[i]), np.asarray(want[i]), 1e-7, 1e-10, f"b[{i}]")


# --------------------------------------------------------------------------- #
# First-order cost: the same solves as before the primitive
# --------------------------------------------------------------------------- #

def loops_in(fn, *args) -> int:
    """How many while loops (LSMR solves) the compiled program runs."""
    return jax.jit(fn).lower(*args).as_text().count("stablehlo.while")


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_first_order_solve_count(shape):
    """jax.grad in (A, b): the forward solve and three backward solves
    (b_bar, y, g); in b alone: two (b_bar; g is not needed). jax.jvp in A: the
    forward and three (y, the residual term, the final solve)."""
    A, b = (jnp.asarray(a) for a in make_problem(shape, seed=4))
    _, info = lsqdiff.lsmr(A, b, **TIGHT_GRAD)
    assert_converged(info)
    f = lambda A, b: jnp.sum(lsqdiff.lsmr(A, b, **TIGHT_GRAD)[0] ** 2)  # noqa: E731
    assert loops_in(jax.grad(f, argnums=(0, 1)), A, b) == 4
    assert loops_in(jax.grad(f, argnums=1), A, b) == 2
    assert loops_in(lambda A, b: jax.jvp(lambda A: f(A, b), (A,), (A,)), A, b) == 4


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_first_order_runs_one_backward_solve(shape):
    """The g and y solves are in the program (above), but where the duals give
    their values they do not run: under jit the backward of sum(x**2) at a
    full-rank A reports one solve (the b_bar one), not three."""
    A, b = (jnp.asarray(a) for a in make_problem(shape, seed=4))
    f = lambda A, b: jnp.sum(lsqdiff.lsmr(A, b, **TIGHT_GRAD)[0] ** 2)  # noqa: E731
    grad = jax.jit(jax.grad(f, argnums=(0, 1)))
    with lsqdiff.backward_diagnostics() as log:
        jax.block_until_ready(grad(A, b))
        jax.effects_barrier()
    assert len(log) == 1 and int(log[0].itn) > 0, log
    assert_converged(log[0])


def test_hessian_in_b_undamped_eager():
    """The issue's reproducer: jax.hessian in b of an undamped solve raised
    "Error interpreting argument to custom_linear_solve ... Zero"."""
    A, b = (jnp.asarray(a) for a in make_problem((6, 4), seed=6))
    got = jax.hessian(lambda b: jnp.sum(lsqdiff.lsmr(A, b, **TIGHT_GRAD)[0] ** 2))(b)
    P = np.linalg.pinv(np.asarray(A))
    assert_close(np.asarray(got), 2 * P.T @ P, 1e-9, 1e-12, "d2L/db2")


@pytest.mark.parametrize("case", ["tall", "wide-x0"])
def test_hessian_assume_full_rank(case):
    """assume_full_rank: the one-solve rules (tall: the dual of the A^H solve; wide:
    y from the forward solve's dual) differentiate again into the same Hessian."""
    A, b, x0, _, x_bar = problem(case)

    def solution(A, b, x0, damp, damped):
        return lsqdiff.lsmr(A, b, x0=x0, assume_full_rank=True, **TIGHT_GRAD)[0]

    args = (jnp.asarray(A), jnp.asarray(b), jnp.asarray(x0))
    got = jax.jit(jax.hessian(make_loss(solution, x_bar, False, False)))(*args)
    want = jax.jit(jax.hessian(make_loss(reference_x, x_bar, False, False)))(*args)
    assert_close(np.asarray(got), np.asarray(want), 1e-7, 1e-10, "d2L/dA2")


def test_hessian_in_sparse_values():
    """A BCOO matrix: the Hessian in its stored values (its integer indices are
    operands of the primitive too, with no tangent)."""
    from jax.experimental import sparse

    rng = np.random.default_rng(8)
    A = rng.standard_normal((6, 4))
    A[rng.random((6, 4)) < 0.4] = 0.0
    S = sparse.BCOO.fromdense(jnp.asarray(A))
    b = jnp.asarray(rng.standard_normal(6))

    def loss(values, dense):
        M = sparse.BCOO((values, S.indices), shape=S.shape)
        x = (jnp.linalg.pinv(M.todense()) @ b if dense
             else lsqdiff.lsmr(M, b, **TIGHT_GRAD)[0])
        return jnp.sum(x**2)

    got = jax.jit(jax.hessian(lambda v: loss(v, False)))(S.data)
    want = jax.jit(jax.hessian(lambda v: loss(v, True)))(S.data)
    assert_close(np.asarray(got), np.asarray(want), 1e-9, 1e-10, "d2L/dvalues2")


@pytest.mark.parametrize("shape, options", [
    pytest.param(shape, options, id=f"{shape[0]}x{shape[1]}-{name}")
    for shape in [(6, 4), (4, 6)]
    for name, options in [("undamped", {}), ("damped", {"damp": 0.5}),
                          ("full-rank", {"assume_full_rank": True})]])
def test_grad_of_grad(shape, options):
    """Reverse over reverse (jax.grad of jax.grad) of a scalar path A(s) = s A: the
    rule computes x by the solve itself, so the outer grad takes the rule again
    instead of the loop (which JAX cannot reverse-differentiate); so does a wide
    assume_full_rank solve, whose y (the forward's dual) enters only as the value
    of the min-norm primitive, differentiated by that primitive's rule."""
    A, b = (jnp.asarray(a) for a in make_problem(shape, seed=9))
    damp = options.get("damp", 0.0)

    def f(s, solution):
        return jnp.sum(solution(s * A) ** 2)

    def ours(M):
        return lsqdiff.lsmr(M, b, **options, **TIGHT_GRAD)[0]

    def ref(M):
        return reference_x(M, b, None, damp, bool(damp))

    got = jax.jit(jax.grad(jax.grad(lambda s: f(s, ours))))(1.3)
    want = jax.jit(jax.grad(jax.grad(lambda s: f(s, ref))))(1.3)
    assert_close(np.asarray(got), np.asarray(want), 1e-8, 1e-12, "d2L/ds2")


def test_jvp_of_grad_rank_deficient_row_space_cotangent():
    """Loss ``|x|^2 / 2`` from a cold start at a rank-deficient A: its cotangent
    ``x`` lies in the row space, so the gradient's ``y w^H`` term vanishes and the
    transposed tangent rule skips the solve for y; that term's derivative does
    not vanish there (the null-space projector moves with A), and the
    Hessian-vector products keep it."""
    A, b, _, _, _ = problem("rank-deficient-x0")
    U, sv, Vh = np.linalg.svd(A)
    args = tuple(jnp.asarray(a) for a in (U[:, :3] * sv[:3], Vh[:3].T, b))
    tangents = directions(args, seed=7)

    def loss(solution):
        def f(L, R, b):
            return 0.5 * jnp.sum(factored(solution)(L, R, b, None, 0.0, False) ** 2)

        return f

    def hvp(f):
        return jax.jit(lambda *a: jax.jvp(jax.grad(f, argnums=(0, 1, 2)), a, tangents)[1])

    got, want = hvp(loss(lsmr_x))(*args), hvp(loss(reference_x))(*args)
    for name, g, w in zip(["L", "R", "b"], got, want):
        assert_close(np.asarray(g), np.asarray(w), 1e-7, 1e-10, name)
