"""Forward mode (JVPs) through lsqdiff.lsmr/lsqr, and reverse mode as its transpose.

Tangents against central differences of the dense solution map
(grad_reference.dense_solve: pseudo-inverse or damped normal equations) on
tall, wide, square, rank-deficient, damped, warm-started, 2-D b and complex
problems. JAX: jax.jvp, jacfwd against jacrev, check_grads in modes fwd and
rev, jit, vmap, BCOO, LinearOperator closures, and the solves skipped for
inputs without tangents. PyTorch: torch.func.jvp, forward_ad dual tensors,
gradcheck with check_forward_ad, torch.func.grad and vmap, nn.Module params.
"""

from __future__ import annotations

import numpy as np
import pytest

import lsqdiff
from conftest import assert_converged
from grad_reference import SMALL, TIGHT_GRAD, assert_close, dense_solve, small_problem

CASES = ["tall", "wide-x0", "square", "damped-x0", "2d-b", "complex-wide-damped-x0"]


def tangents(A, b, x0, damp, seed=0):
    """Random tangents shaped (and typed) like the inputs; 0.3 for a nonzero damp."""
    rng = np.random.default_rng(seed)

    def draw(a):
        z = rng.standard_normal(np.shape(a))
        return z + 1j * rng.standard_normal(np.shape(a)) if np.iscomplexobj(a) else z

    return draw(A), draw(b), None if x0 is None else draw(x0), 0.3 if damp else 0.0


def reference_tangent(A, b, x0, damp, dA, db, dx0, ddamp, eps=1e-6):
    """Central difference of the dense solution map along the tangents."""
    def at(s):
        return dense_solve(A + s * dA, b + s * db, None if x0 is None else x0 + s * dx0,
                           damp + s * ddamp)

    return (at(eps) - at(-eps)) / (2 * eps)


def present(*values):
    """The inputs a case has: A, b, then x0 and damp where given."""
    A, b, x0, damp = values
    return [A, b] + ([x0] if x0 is not None else []) + ([damp] if damp is not None else [])


# =========================================================================== #
# JAX
# =========================================================================== #

@pytest.fixture(scope="module")
def jx():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


def jax_solve(solver, has_x0, damped):
    """``f(A, b[, x0][, damp]) -> x`` (damp traced when the case is damped)."""
    def f(A, b, *rest):
        rest = list(rest)
        x0 = rest.pop(0) if has_x0 else None
        damp = rest.pop(0) if damped else 0.0
        return solver(A, b, x0=x0, damp=damp, **TIGHT_GRAD)[0]

    return f


def while_loops(fn, *args) -> int:
    """While loops in ``fn``'s jaxpr, counting those in its equations' parameters
    (custom_linear_solve holds a solve and its transpose) and those of the
    minimum-norm solve primitives (their loops appear only when lowered)."""
    import jax

    def count(jaxpr):
        total = 0
        for eqn in jaxpr.eqns:
            total += eqn.primitive.name == "while"
            # A min-norm solve whose value is given (hinted == 1) runs no loop;
            # the pair A^+ (q + A^+H s) runs two, its transposed form one.
            if eqn.primitive.name == "lsqdiff_min_norm_solve":
                total += eqn.params["hinted"] != 1
            if eqn.primitive.name == "lsqdiff_min_norm_pair":
                total += 1 if eqn.params["transposed"] else 2
            # The undamped tangent: y's solve, then the pair (or A^+ alone without
            # a residual term); its transpose: b_bar's solve, g's, y's.
            p = eqn.params
            if eqn.primitive.name == "lsqdiff_min_norm_tangent":
                total += (p["hinted"] != 1) + (2 if p["has_s"] else 1)
            if eqn.primitive.name == "lsqdiff_min_norm_adjoint":
                total += 1 + p["with_g"] + (p["with_y"] and p["hinted"] != 1)
            stack = list(eqn.params.values())
            while stack:
                v = stack.pop()
                if hasattr(v, "eqns"):
                    total += count(v)
                elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                    total += count(v.jaxpr)
                elif isinstance(v, tuple):
                    stack.extend(v)
        return total

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.mark.parametrize("case", ["tall", "wide-x0", "complex-tall"])
def test_jax_full_rank_one_solve(jx, case):
    """assume_full_rank: jvp and check_grads (fwd, rev) match the dense solution
    map, and a tangent or gradient in A costs one solve beyond the forward (tall:
    N^-1 t is the dual of the A^H solve; wide: y is the forward's dual)."""
    from jax.test_util import check_grads

    jnp = jx.numpy
    A, b, x0, _, _ = small_problem(case)
    dA, db, dx0, _ = tangents(A, b, x0, 0.0)

    def f(A, b, *x0):
        return lsqdiff.lsmr(A, b, x0=x0[0] if x0 else None, assume_full_rank=True,
                            **TIGHT_GRAD)[0]

    args = [jnp.asarray(a) for a in present(A, b, x0, None)]
    tans = [jnp.asarray(a) for a in present(dA, db, dx0, None)]
    f_jit = jx.jit(f)  # check_grads's jvp of it reuses the compiled jvp below
    _, x_dot = jx.jvp(f_jit, args, tans)
    assert_close(x_dot, reference_tangent(A, b, x0, 0.0, dA, db, dx0, 0.0), 1e-7, 1e-9, "x_dot")
    check_grads(f_jit, args, order=1, modes=["fwd", "rev"], eps=1e-6, atol=1e-6, rtol=1e-6)
    rest = args[2:]
    # forward; one solve, and its transpose where custom_linear_solve keeps both
    # (tall); wide: the pseudo-inverse primitive, whose transpose is made when needed
    loops = 2 if case == "wide-x0" else 3
    assert while_loops(lambda A, t: jx.jvp(lambda A: f(A, args[1], *rest), (A,), (t,)),
                       args[0], args[0]) == loops
    loss = lambda A: jnp.sum(jnp.abs(f(A, args[1], *rest)) ** 2)  # noqa: E731
    assert while_loops(jx.grad(loss), args[0]) == loops


@pytest.mark.parametrize("case", CASES)
def test_jax_jvp_and_check_grads(jx, case):
    """jax.jvp of the jitted solve equals the central difference of the dense
    solution in every input at once; check_grads in mode fwd (and rev where
    test_jax_grad.py does not check the case), order 1."""
    from jax.test_util import check_grads

    jnp = jx.numpy
    solver = lsqdiff.lsqr if case == "square" else lsqdiff.lsmr
    A, b, x0, damp, _ = small_problem(case)
    dA, db, dx0, ddamp = tangents(A, b, x0, damp)
    f = jax_solve(solver, x0 is not None, bool(damp))
    args = [jnp.asarray(a) for a in present(A, b, x0, damp or None)]
    tans = [jnp.asarray(a) for a in present(dA, db, dx0, ddamp or None)]
    f_jit = jx.jit(f)  # check_grads's jvp of it reuses the compiled jvp here
    x, x_dot = jx.jvp(f_jit, args, tans)
    np.testing.assert_allclose(np.asarray(x), dense_solve(A, b, x0, damp), rtol=1e-10, atol=1e-12)
    assert x_dot.dtype == x.dtype
    assert_close(x_dot, reference_tangent(A, b, x0, damp, dA, db, dx0, ddamp), 1e-7, 1e-9,
                 "x_dot")
    # Reverse mode of the same problem and solver is test_jax_grad.py's
    # test_check_grads_and_closed_form; 2-D b runs LSQR there, so both modes run here.
    modes = ["fwd", "rev"] if case == "2d-b" else ["fwd"]
    check_grads(f_jit, args, order=1, modes=modes, eps=1e-6, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)], ids=["tall", "wide"])
def test_jax_jvp_rank_deficient_factors(jx, shape):
    """Undamped, rank 2, warm-started: the tangent along A = L R^T (where the
    pseudo-inverse is smooth) equals the dense one; every solve of the rule runs."""
    jnp = jx.numpy
    rng = np.random.default_rng(5)
    m, n = shape
    L, R, b, x0 = (rng.standard_normal(s) for s in ((m, 2), (n, 2), (m,), (n,)))
    dL, dR, db, dx0 = (rng.standard_normal(s) for s in ((m, 2), (n, 2), (m,), (n,)))
    f = lambda L, R, b, x0: lsqdiff.lsmr(L @ R.T, b, x0=x0, **TIGHT_GRAD)[0]  # noqa: E731
    _, x_dot = jx.jit(jx.jvp, static_argnums=0)(
        f, tuple(map(jnp.asarray, (L, R, b, x0))), tuple(map(jnp.asarray, (dL, dR, db, dx0))))
    ref = reference_tangent(L @ R.T, b, x0, 0.0, dL @ R.T + L @ dR.T, db, dx0, 0.0)
    assert_close(x_dot, ref, 1e-7, 1e-9, "x_dot")


@pytest.mark.parametrize("damp", [0.0, 0.5], ids=["undamped", "damped"])
def test_jax_jacfwd_equals_jacrev_and_dense(jx, damp):
    """jacfwd (vmap of the tangent rule) and jacrev (vmap of its transpose) in A
    and b agree with the Jacobian of the dense jnp solution, under jit."""
    jnp = jx.numpy
    A, b, _, _, _ = small_problem("tall")
    A, b = jnp.asarray(A), jnp.asarray(b)

    def dense(A, b):
        if damp:
            return jnp.linalg.solve(A.T @ A + damp**2 * jnp.eye(A.shape[1]), A.T @ b)
        return jnp.linalg.pinv(A) @ b

    f = lambda A, b: lsqdiff.lsmr(A, b, damp=damp, **TIGHT_GRAD)[0]  # noqa: E731
    fwd = jx.jit(jx.jacfwd(f, argnums=(0, 1)))(A, b)
    rev = jx.jit(jx.jacrev(f, argnums=(0, 1)))(A, b)
    ref = jx.jit(jx.jacfwd(dense, argnums=(0, 1)))(A, b)
    for name, jf, jr, want in zip("Ab", fwd, rev, ref):
        assert_close(jf, want, 1e-9, 1e-12, f"jacfwd {name}")
        assert_close(jr, want, 1e-9, 1e-12, f"jacrev {name}")


def test_jax_hessian_of_damped_solve_is_exact(jx):
    """A damped solve's tangent rule is one true inverse (custom_linear_solve),
    whose implicit derivative JAX knows: jax.hessian in A and in b is exact."""
    jnp = jx.numpy
    A, b, _, _, _ = small_problem("tall")
    A, b = jnp.asarray(A), jnp.asarray(b)
    damp = 0.5

    def loss(A, b, solve):
        return jnp.sum(solve(A, b) ** 3)

    def dense(A, b):
        return jnp.linalg.solve(A.T @ A + damp**2 * jnp.eye(A.shape[1]), A.T @ b)

    def lsq(A, b):
        return lsqdiff.lsmr(A, b, damp=damp, **TIGHT_GRAD)[0]

    for argnum in (0, 1):
        got = jx.jit(jx.hessian(loss, argnums=argnum), static_argnums=2)(A, b, lsq)
        want = jx.jit(jx.hessian(loss, argnums=argnum), static_argnums=2)(A, b, dense)
        assert_close(got, want, 1e-9, 1e-12, f"hessian {'Ab'[argnum]}")


def test_jax_vmap_of_jvp_over_right_hand_sides(jx):
    """vmap of jvp over right-hand sides and their tangents equals each one's."""
    jnp = jx.numpy
    A, B, _, _, _ = small_problem("2d-b")  # B: (6, 2)
    dB = np.random.default_rng(3).standard_normal(B.shape)
    f = lambda b: lsqdiff.lsmr(jnp.asarray(A), b, damp=0.2, **TIGHT_GRAD)[0]  # noqa: E731
    _, X_dot = jx.jit(jx.vmap(lambda b, t: jx.jvp(f, (b,), (t,))))(
        jnp.asarray(B.T), jnp.asarray(dB.T))
    for j in range(2):
        ref = reference_tangent(A, B[:, j], None, 0.2, 0 * A, dB[:, j], None, 0.0)
        assert_close(X_dot[j], ref, 1e-7, 1e-9, f"column {j}")


def test_jax_eager_jvp_and_float32_with_float64_damp(jx):
    """Outside jit: jvp in b and damp of a float32 solve whose damp is a float64
    array; the tangent is float32 like x."""
    jnp = jx.numpy
    A, b, _, damp, _ = small_problem("tall-damped")
    A32, b32 = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)
    f = lambda b, d: lsqdiff.lsmr(A32, b, damp=d, atol=1e-7, btol=1e-7)[0]  # noqa: E731
    x, x_dot = jx.jvp(f, (b32, jnp.asarray(damp)), (b32, jnp.asarray(1.0)))
    assert x.dtype == x_dot.dtype == jnp.float32
    ref = reference_tangent(np.asarray(A32, float), np.asarray(b32, float), None, damp,
                            0 * A, np.asarray(b32, float), None, 1.0)
    assert_close(x_dot, ref, 1e-4, 1e-6, "x_dot")


def test_jax_solves_skipped_without_tangents(jx):
    """Symbolic zeros: the tangent in b alone needs one solve (A^+ b'), the
    tangent in A three (y, the residual term, A^+); counted as while loops and
    pseudo-inverse primitives in the jaxpr (forward loop included)."""
    jnp = jx.numpy
    A, b, x0, _, _ = small_problem("wide-x0")
    A, b, x0 = jnp.asarray(A), jnp.asarray(b), jnp.asarray(x0)
    f = lambda A, b: lsqdiff.lsmr(A, b, x0=x0, **TIGHT_GRAD)[0]  # noqa: E731

    in_b = while_loops(lambda b, t: jx.jvp(lambda b: f(A, b), (b,), (t,)), b, b)
    in_A = while_loops(lambda A, t: jx.jvp(lambda A: f(A, b), (A,), (t,)), A, A)
    assert in_b == 2  # forward; A^+
    assert in_A == 4  # forward; y; A^+H; A^+
    grad_b = while_loops(jx.grad(lambda b: jnp.sum(f(A, b))), b)
    assert grad_b == 2  # forward; the transpose A^+H (no y)


@pytest.mark.parametrize("with_rmatvec", [True, False], ids=["rmatvec", "derived"])
def test_jax_linear_operator_closure_jvp(jx, with_rmatvec):
    """A LinearOperator closing over B + sum_i theta_i M_i: the tangent in theta
    (through the closure, rmatvec given or derived) equals the dense one."""
    jnp = jx.numpy
    A, b, x0, damp, _ = small_problem("wide-x0")
    m, n = A.shape
    mats = np.random.default_rng(21).standard_normal((2, m, n))
    theta0, dtheta = np.array([0.3, -0.1]), np.array([1.0, 0.5])
    B = A - np.einsum("i,imn->mn", theta0, mats)

    def f(theta):
        dense = jnp.asarray(B) + jnp.einsum("i,imn->mn", theta, jnp.asarray(mats))
        op = lsqdiff.LinearOperator((m, n), lambda v: dense @ v,
                                    (lambda u: dense.T @ u) if with_rmatvec else None)
        return lsqdiff.lsmr(op, jnp.asarray(b), x0=jnp.asarray(x0), **TIGHT_GRAD)[0]

    _, x_dot = jx.jit(lambda t, d: jx.jvp(f, (t,), (d,)))(jnp.asarray(theta0),
                                                           jnp.asarray(dtheta))
    ref = reference_tangent(A, b, x0, 0.0, np.einsum("i,imn->mn", dtheta, mats), 0 * b,
                            0 * x0, 0.0)
    assert_close(x_dot, ref, 1e-7, 1e-9, "x_dot")


def test_jax_bcoo_jvp(jx):
    """The tangent in a BCOO's values equals the dense one on its pattern."""
    from jax.experimental import sparse as jsparse

    jnp = jx.numpy
    A, b, _, _, _ = small_problem("tall")
    A[np.abs(A) < 0.3] = 0
    As = jsparse.BCOO.fromdense(jnp.asarray(A))
    d_data = np.random.default_rng(4).standard_normal(As.data.shape)
    rows, cols = np.asarray(As.indices).T
    dA = np.zeros_like(A)
    np.add.at(dA, (rows, cols), d_data)

    def f(data):
        op = jsparse.BCOO((data, As.indices), shape=A.shape)
        return lsqdiff.lsmr(op, jnp.asarray(b), damp=0.1, **TIGHT_GRAD)[0]

    _, x_dot = jx.jit(lambda d, t: jx.jvp(f, (d,), (t,)))(As.data, jnp.asarray(d_data))
    assert_close(x_dot, reference_tangent(A, b, None, 0.1, dA, 0 * b, None, 0.0), 1e-7, 1e-9,
                 "x_dot")


# =========================================================================== #
# PyTorch
# =========================================================================== #

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def th():
    return pytest.importorskip("torch")


def torch_inputs(th, *values):
    return [th.tensor(np.asarray(v)) for v in present(*values)]


@pytest.mark.parametrize("case", list(SMALL))
def test_torch_jvp_and_forward_ad(th, solver, case):
    """torch.func.jvp and forward_ad dual tensors in every input the case has
    equal the central difference of the dense solution."""
    import torch.autograd.forward_ad as fwAD

    A, b, x0, damp, _ = small_problem(case)
    dA, db, dx0, ddamp = tangents(A, b, x0, damp)
    f = jax_solve(solver, x0 is not None, bool(damp))
    args = torch_inputs(th, A, b, x0, damp or None)
    tans = torch_inputs(th, dA, db, dx0, ddamp or None)
    ref = reference_tangent(A, b, x0, damp, dA, db, dx0, ddamp)
    x, x_dot = th.func.jvp(f, tuple(args), tuple(tans))
    assert_converged(solver(*args[:2], x0=None if x0 is None else args[2],
                            damp=args[-1] if damp else 0.0, **TIGHT_GRAD)[1])
    assert_close(x_dot.numpy(), ref, 1e-7, 1e-9, "func.jvp")
    with fwAD.dual_level():
        out = f(*(fwAD.make_dual(a, t) for a, t in zip(args, tans)))
        primal, tangent = fwAD.unpack_dual(out)
    np.testing.assert_allclose(primal.numpy(), x.numpy(), rtol=1e-12, atol=1e-14)
    assert_close(tangent.numpy(), ref, 1e-7, 1e-9, "forward_ad")


@pytest.mark.parametrize("case", ["tall", "wide-x0", "damped-x0", "complex-wide-damped-x0"])
def test_torch_gradcheck_forward_ad(th, case):
    """gradcheck with check_forward_ad (and the backward) in every input."""
    A, b, x0, damp, _ = small_problem(case)
    f = jax_solve(lsqdiff.lsmr, x0 is not None, bool(damp))
    inputs = [t.requires_grad_() for t in torch_inputs(th, A, b, x0, damp or None)]
    assert th.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6,
                                 check_forward_ad=True)


@pytest.mark.parametrize("case", ["tall", "wide-x0", "complex-wide-damped-x0"])
def test_torch_gradcheck_forward_ad_full_rank(th, case):
    """assume_full_rank (one gradient solve; see test_jax_full_rank_one_solve):
    forward and backward gradcheck."""
    A, b, x0, damp, _ = small_problem(case)

    def f(*args):
        A, b, *rest = args
        x0 = rest.pop(0) if x0_given else None
        return lsqdiff.lsmr(A, b, x0=x0, damp=rest[0] if rest else 0.0, assume_full_rank=True,
                            **TIGHT_GRAD)[0]

    x0_given = x0 is not None
    inputs = [t.requires_grad_() for t in torch_inputs(th, A, b, x0, damp or None)]
    assert th.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6,
                                 check_forward_ad=True)


def test_torch_gradcheck_forward_ad_rank_deficient(th):
    """Rank 2, warm-started, along A = L R^T: forward and backward gradcheck."""
    rng = np.random.default_rng(5)
    ins = [th.tensor(rng.standard_normal(s), requires_grad=True)
           for s in ((4, 2), (6, 2), (4,), (6,))]
    f = lambda L, R, b, x0: lsqdiff.lsmr(L @ R.T, b, x0=x0, **TIGHT_GRAD)[0]  # noqa: E731
    assert th.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-7, rtol=1e-6, check_forward_ad=True)


def test_torch_func_grad_and_vmap(th):
    """torch.func.grad equals .backward(); torch.func.vmap over b and x0 solves
    the columns together, and grad of a vmapped solve is the sum of the
    gradients; vmap over A raises a clear error (vmap of grad and jacfwd work:
    tests/test_second_order.py)."""
    A, B, X0, _, _ = small_problem("2d-b")
    At, Bt, X0t = (th.tensor(a) for a in (A, B.T.copy(), X0.T.copy()))  # batch first
    f = lambda A, b: lsqdiff.lsmr(A, b, **TIGHT_GRAD)[0].square().sum()  # noqa: E731
    gA, gb = th.func.grad(f, argnums=(0, 1))(At, Bt[0])
    A2, b2 = At.clone().requires_grad_(), Bt[0].clone().requires_grad_()
    f(A2, b2).backward()
    np.testing.assert_allclose(gA.numpy(), A2.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gb.numpy(), b2.grad.numpy(), rtol=1e-12, atol=1e-14)

    X = th.func.vmap(lambda b, x0: lsqdiff.lsmr(At, b, x0=x0, **TIGHT_GRAD)[0])(Bt, X0t)
    for j in range(2):
        np.testing.assert_allclose(X[j].numpy(), dense_solve(A, B[:, j], X0[:, j]),
                                   rtol=1e-10, atol=1e-12)
    g = th.func.grad(lambda A: th.func.vmap(lambda b: f(A, b))(Bt).sum())(At)
    np.testing.assert_allclose(g.numpy(), sum(th.func.grad(f)(At, b).numpy() for b in Bt),
                               rtol=1e-10, atol=1e-12)

    with pytest.raises(NotImplementedError, match="b and x0 only"):
        th.func.vmap(lambda A: lsqdiff.lsmr(A, Bt[0])[0])(th.stack([At, At]))


def test_torch_linear_operator_module_jvp(th):
    """params=an nn.Module: the tangent in its parameters (matvec evaluated at
    them by torch.func.functional_call; rmatvec derived) equals the dense one.
    A list of tensors cannot be re-evaluated: a clear error."""
    A, b, x0, damp, _ = small_problem("damped-x0")
    m, n = A.shape
    dW = np.random.default_rng(9).standard_normal(A.shape)

    class Scaled(th.nn.Module):
        def __init__(self):
            super().__init__()
            self.W = th.nn.Parameter(th.tensor(A / 2.0))
            self.s = th.nn.Parameter(th.tensor(2.0, dtype=th.float64))

        def forward(self, v):
            return self.s * (self.W @ v)

    class Solve(th.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Scaled()

        def forward(self, b, x0):
            op = lsqdiff.LinearOperator((m, n), self.inner, params=self.inner)
            return lsqdiff.lsmr(op, b, x0=x0, damp=damp, **TIGHT_GRAD)[0]

    solve = Solve()
    W0 = solve.inner.W.detach().clone()
    f = lambda W: th.func.functional_call(solve, {"inner.W": W}, (th.tensor(b), th.tensor(x0)))  # noqa: E731
    _, x_dot = th.func.jvp(f, (W0,), (th.tensor(dW),))
    ref = reference_tangent(A, b, x0, damp, 2.0 * dW, 0 * b, 0 * x0, 0.0)
    # x_dot requires grad (it depends on the module's parameter s): reverse-over-forward
    assert_close(x_dot.detach().numpy(), ref, 1e-7, 1e-9, "x_dot")

    def listed(theta):
        op = lsqdiff.LinearOperator((m, n), lambda v: theta * (th.tensor(A) @ v),
                                    lambda u: theta * (th.tensor(A).T @ u), params=[theta])
        return lsqdiff.lsmr(op, th.tensor(b))[0]

    one = th.ones(1, dtype=th.float64)
    with pytest.raises(NotImplementedError, match="nn.Module"):
        th.func.jvp(listed, (one,), (one,))
