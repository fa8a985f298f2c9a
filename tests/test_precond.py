"""Right preconditioning (``precond=``): the same solution and gradients as without
it, in far fewer iterations forward and backward, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import backend_name, is_jax, to_np, to_xp
from grad_reference import assert_close, closed_form, dense_solve

import lsqdiff

# --------------------------------------------------------------------------- #
# Ill-conditioned problems
# --------------------------------------------------------------------------- #


def scales_problem():
    """Tall Gaussian A whose column scales span 1e-4..1e4 (cond ~1e8 from the scales)."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((60, 30)) * np.logspace(-4, 4, 30)
    return A, rng.standard_normal(60)


def laplacian_problem(p: int = 10, contrast: float = 4.0):
    """A 2-D diffusion operator ``K^1/2 G`` on a ``p x p`` grid (G: the differences
    along the grid's edges) with node coefficients ``k`` log-uniform in
    ``10^(+-contrast)``, each edge weighted by ``(k_i k_j)^1/4``, and rows
    ``sqrt(k)`` on the boundary nodes (a Dirichlet condition: A is injective)."""
    rng = np.random.default_rng(1)
    k = 10.0 ** rng.uniform(-contrast, contrast, (p, p))
    idx = np.arange(p * p).reshape(p, p)
    rows = []
    for i in range(p):
        for j in range(p):
            for di, dj in ((1, 0), (0, 1)):
                if i + di < p and j + dj < p:
                    w = (k[i, j] * k[i + di, j + dj]) ** 0.25
                    row = np.zeros(p * p)
                    row[idx[i, j]], row[idx[i + di, j + dj]] = w, -w
                    rows.append(row)
            if i in (0, p - 1) or j in (0, p - 1):
                row = np.zeros(p * p)
                row[idx[i, j]] = np.sqrt(k[i, j])
                rows.append(row)
    A = np.array(rows)
    return A, rng.standard_normal(A.shape[0])


PROBLEMS = {"scales": scales_problem, "laplacian": laplacian_problem}
#: Tolerance of the iteration-count comparisons (the issue's 1e-8), and an
#: iteration limit the unpreconditioned solves never reach.
TOL = dict(atol=1e-8, btol=1e-8, maxiter=20000, grad_maxiter=20000)
TIGHT = dict(atol=1e-12, btol=1e-12, maxiter=20000, grad_maxiter=20000)


def damped_reference(A, B, X0, damp):
    """``x0 + argmin ||A d - (b - A x0)||^2 + damp^2 ||d||^2`` by a least-squares
    solve of ``[A; damp I]`` (the normal equations lose too much at these scales)."""
    K = np.vstack([A, damp * np.eye(A.shape[1])])
    R0 = np.vstack([B - A @ X0, np.zeros_like(X0)])
    return X0 + np.linalg.lstsq(K, R0, rcond=None)[0]


def _itns(infos) -> int:
    """Total iterations of the backward pass's solves."""
    return sum(int(np.sum(to_np(i.itn))) for i in infos)


def run(xp, A, b, damp, x_bar, x0=None, **kwargs):
    """Solve and differentiate ``Re <x_bar, x>`` in A, b (and x0) on ``xp``:
    ``(x, info, grads, backward iterations)`` with grads as NumPy arrays."""
    name = backend_name(xp)
    A_, b_ = to_xp(xp, A), to_xp(xp, b)
    x0_ = None if x0 is None else to_xp(xp, x0)
    pc = kwargs.pop("precond", None)
    pc = None if pc is None else to_xp(xp, pc)
    if name in ("numpy", "array_api_strict"):
        (x, info), pullback = lsqdiff.vjp(lsqdiff.lsmr, A_, b_, damp=damp, x0=x0_, precond=pc,
                                          **kwargs)
        g = pullback(to_xp(xp, x_bar))
        grads = dict(A=to_np(g.A.todense()), b=to_np(g.b), damp=g.damp,
                     x0=None if x0 is None else to_np(g.x0))
        return to_np(x), info, grads, _itns(g.info)
    if name == "jax":
        import jax
        import jax.numpy as jnp

        def loss(A_, b_, x0_):
            x, info = lsqdiff.lsmr(A_, b_, damp=damp, x0=x0_, precond=pc, **kwargs)
            return jnp.sum(x * jnp.asarray(x_bar)), (x, info)

        with lsqdiff.backward_diagnostics() as log:
            (_, (x, info)), (gA, gb, gx0) = jax.value_and_grad(
                loss, argnums=(0, 1, 2), has_aux=True)(A_, b_, x0_)
        grads = dict(A=to_np(gA), b=to_np(gb), x0=None if x0 is None else to_np(gx0))
        return to_np(x), info, grads, _itns(log)
    import torch

    A_.requires_grad_(True)
    b_.requires_grad_(True)
    if x0_ is not None:
        x0_.requires_grad_(True)
    damp_ = torch.tensor(damp, dtype=torch.float64, requires_grad=True) if damp else damp
    with lsqdiff.backward_diagnostics() as log:
        x, info = lsqdiff.lsmr(A_, b_, damp=damp_, x0=x0_, precond=pc, **kwargs)
        (x @ torch.as_tensor(x_bar)).backward()
    grads = dict(A=to_np(A_.grad), b=to_np(b_.grad), x0=None if x0 is None else to_np(x0_.grad),
                 damp=float(damp_.grad) if damp else None)
    return to_np(x), info, grads, _itns(log)


# --------------------------------------------------------------------------- #
# Same solution and gradients, >= 5x fewer iterations forward and backward
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("problem,damp", [("scales", 0.0), ("laplacian", 0.3)])
def test_iterations_and_gradients(xp, problem, damp):
    A, b = PROBLEMS[problem]()
    x_bar = np.random.default_rng(2).standard_normal(A.shape[1])
    d = lsqdiff.jacobi(A, damp=damp)
    x, info, grads, back = run(xp, A, b, damp, x_bar, precond=d, **TOL)
    _, info0, _, back0 = run(xp, A, b, damp, x_bar, **TOL)
    itn, itn0 = int(info.itn), int(info0.itn)
    assert bool(info.converged) and bool(info0.converged)
    assert itn0 >= 5 * itn, (itn0, itn)
    assert back0 >= 5 * back, (back0, back)
    # The same solution and gradients as the unpreconditioned problem's (dense closed forms).
    ref = closed_form(A, b, None, damp, x_bar)
    assert_close(x, ref["x"], 1e-6, what="x")
    for key in ("A", "b"):
        assert_close(grads[key], ref[key], 1e-5, what=key)
    if grads.get("damp") is not None:
        assert grads["damp"] == pytest.approx(ref["damp"], rel=1e-5)


def test_lsqr_iterations(solver):
    A, b = laplacian_problem()
    d = lsqdiff.jacobi(A)
    x, info = solver(A, b, precond=d, **{k: v for k, v in TIGHT.items() if k != "grad_maxiter"})
    _, info0 = solver(A, b, atol=1e-8, btol=1e-8, maxiter=20000)
    _, info1 = solver(A, b, atol=1e-8, btol=1e-8, precond=d)
    assert info0.itn >= 5 * info1.itn
    assert_close(x, dense_solve(A, b), 1e-8, what="x")


def test_tight_gradients_and_finite_differences():
    """Warm start and damping, tight tolerances: the pullback equals the dense
    closed form and central differences of the preconditioned solve itself."""
    A, b = laplacian_problem(p=6)
    rng = np.random.default_rng(3)
    x0, x_bar = rng.standard_normal(A.shape[1]), rng.standard_normal(A.shape[1])
    damp = 0.2
    d = lsqdiff.jacobi(A, damp=damp)
    (x, _), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, damp=damp, x0=x0, precond=d, **TIGHT)
    g = pullback(x_bar)
    ref = closed_form(A, b, x0, damp, x_bar)
    assert_close(x, ref["x"], 1e-10, what="x")
    for key, value in (("A", g.A.todense()), ("b", g.b), ("x0", g.x0)):
        assert_close(value, ref[key], 1e-8, what=key)
    assert g.damp == pytest.approx(ref["damp"], rel=1e-8)

    def value(dA=0.0, db=0.0, dx0=0.0, ddamp=0.0):
        x, _ = lsqdiff.lsmr(A + dA, b + db, damp=damp + ddamp, x0=x0 + dx0, precond=d, **TIGHT)
        return float(x_bar @ x)

    eps = 1e-6
    for grad, direction in ((g.A.todense(), "A"), (g.b, "b"), (g.x0, "x0"), (g.damp, "damp")):
        shape = np.shape(grad)
        v = rng.standard_normal(shape) if shape else 1.0
        key = "d" + direction
        fd = (value(**{key: eps * v}) - value(**{key: -eps * v})) / (2 * eps)
        assert np.sum(grad * v) == pytest.approx(fd, rel=1e-5, abs=1e-8), direction


def test_multi_column_and_linear_operator(xp):
    """A 2-D b with a warm start; a LinearOperator preconditioner (the inverse of
    A's R factor, which makes A N orthonormal: two iterations)."""
    A, b = scales_problem()
    rng = np.random.default_rng(4)
    B = np.stack([b, rng.standard_normal(b.shape[0])], axis=1)
    X0 = rng.standard_normal((A.shape[1], 2))
    d = lsqdiff.jacobi(A, damp=0.1)
    X, info = lsqdiff.lsmr(to_xp(xp, A), to_xp(xp, B), damp=0.1, x0=to_xp(xp, X0),
                           precond=to_xp(xp, d), **TIGHT)
    assert_close(X, damped_reference(A, B, X0, 0.1), 1e-8, what="X")
    assert np.all(to_np(info.converged))
    # info: the original problem's ||A^T r - damp^2 (x - x0)|| (near rounding level here,
    # and orders of magnitude from the preconditioned problem's).
    R = B - A @ to_np(X)
    assert_close(to_np(info.normar), np.linalg.norm(A.T @ R - 0.01 * (to_np(X) - X0), axis=0),
                 1e-2)
    if is_jax(xp):
        return  # JAX's LinearOperator path: test_jax_jit_vmap (compiling it here costs seconds)
    Rinv = np.linalg.inv(np.linalg.qr(A)[1])
    Rinv_, At = to_xp(xp, Rinv), to_xp(xp, Rinv.T)
    N = lsqdiff.LinearOperator(Rinv.shape, lambda v: Rinv_ @ v, lambda u: At @ u)
    x, info = lsqdiff.lsmr(to_xp(xp, A), to_xp(xp, b), precond=N, atol=1e-10, btol=1e-10)
    assert int(info.itn) <= 3
    assert_close(x, np.linalg.lstsq(A, b, rcond=None)[0], 1e-7, what="x")
    assert float(info.normr) == pytest.approx(np.linalg.norm(b - A @ to_np(x)), rel=1e-10)


# --------------------------------------------------------------------------- #
# The minimum-norm caveat (undamped, A with a null space)
# --------------------------------------------------------------------------- #

def test_min_norm_caveat_and_exact_option():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((15, 25)) * np.logspace(-2, 2, 25)
    b = rng.standard_normal(15)
    d = lsqdiff.jacobi(A)
    x, _ = lsqdiff.lsmr(A, b, precond=d, **TIGHT)
    ref = np.linalg.pinv(A) @ b
    # A solution, but the one of least ||N^-1 x||: N^-1 x lies in the row space of A N.
    assert_close(A @ x, b, 1e-9, what="A x")
    assert np.linalg.norm(x - ref) > 1e-3 * np.linalg.norm(ref)
    AN = A * d
    y = x / d
    assert_close(AN.T @ np.linalg.lstsq(AN.T, y, rcond=None)[0], y, 1e-8, what="row space")
    x, info = lsqdiff.lsmr(A, b, precond=d, precond_min_norm=True, **TIGHT)
    assert_close(x, ref, 1e-8, what="exact")
    assert info.converged
    # lsqdiff.vjp through both solves, with a warm start: the minimum-norm map's gradients.
    x0, x_bar = rng.standard_normal(25), rng.standard_normal(25)
    (x, _), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, x0=x0, precond=d, precond_min_norm=True,
                                   **TIGHT)
    g = pullback(x_bar)
    want = closed_form(A, b, x0, 0.0, x_bar)
    assert_close(x, want["x"], 1e-8, what="x")
    for key, value in (("A", g.A.todense()), ("b", g.b), ("x0", g.x0)):
        assert_close(value, want[key], 1e-7, what=key)


def test_min_norm_gradient_torch():
    """With precond_min_norm the gradients are the minimum-norm solution's
    (PyTorch differentiates through both solves)."""
    torch = pytest.importorskip("torch", reason="PyTorch differentiates the correction")

    rng = np.random.default_rng(6)
    A = rng.standard_normal((5, 8)) * np.logspace(-1, 1, 8)
    b, x_bar = rng.standard_normal(5), rng.standard_normal(8)
    A_, b_ = torch.tensor(A, requires_grad=True), torch.tensor(b, requires_grad=True)
    x, _ = lsqdiff.lsmr(A_, b_, precond=torch.tensor(lsqdiff.jacobi(A)), precond_min_norm=True,
                        **TIGHT)
    (x @ torch.tensor(x_bar)).backward()
    ref = closed_form(A, b, None, 0.0, x_bar)
    assert_close(x.detach().numpy(), ref["x"], 1e-9, what="x")
    assert_close(A_.grad.numpy(), ref["A"], 1e-7, what="A")
    assert_close(b_.grad.numpy(), ref["b"], 1e-7, what="b")


def test_torch_forward_mode():
    """torch.func.jvp in A and damp through a damped preconditioned solve."""
    torch = pytest.importorskip("torch", reason="PyTorch's forward mode")

    A, b = laplacian_problem(p=5)
    rng = np.random.default_rng(9)
    dA = torch.tensor(rng.standard_normal(A.shape))
    A_, b_, d = torch.tensor(A), torch.tensor(b), torch.tensor(lsqdiff.jacobi(A, damp=0.3))

    def f(A_, damp):
        return lsqdiff.lsmr(A_, b_, damp=damp, precond=d, **TIGHT)[0]

    def g(A_, damp):
        K = torch.cat([A_, damp * torch.eye(A.shape[1], dtype=torch.float64)])
        return torch.linalg.lstsq(K, torch.cat([b_, torch.zeros(A.shape[1],
                                                                dtype=torch.float64)])).solution

    damp, one = torch.tensor(0.3, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    got = torch.func.jvp(f, (A_, damp), (dA, one))[1]
    want = torch.func.jvp(g, (A_, damp), (dA, one))[1]
    assert_close(got.numpy(), want.numpy(), 1e-7, what="jvp")


# --------------------------------------------------------------------------- #
# JAX transformations
# --------------------------------------------------------------------------- #

def test_jax_jit_vmap():
    jax = pytest.importorskip("jax", reason="jit and vmap are JAX's")
    import jax.numpy as jnp

    A, b = scales_problem()
    rng = np.random.default_rng(7)
    B = jnp.asarray(np.stack([b, rng.standard_normal(b.shape[0])]))  # (2, m): mapped rows
    A_, d = jnp.asarray(A), jnp.asarray(lsqdiff.jacobi(A, damp=0.1))

    @jax.jit
    def solve(b_, d_):
        x, info = lsqdiff.lsmr(A_, b_, damp=0.1, precond=d_, **TIGHT)
        return x, info.itn

    X, itn = jax.vmap(solve, in_axes=(0, None))(B, d)
    for j in range(2):
        assert_close(np.asarray(X[j]), dense_solve(A, np.asarray(B[j]), None, 0.1), 1e-8)
    assert int(np.max(itn)) < 100
    gb = jax.jit(jax.grad(lambda b_: jnp.sum(solve(b_, d)[0])))(B[0])
    ref = closed_form(A, np.asarray(B[0]), None, 0.1, np.ones(A.shape[1]))
    assert_close(np.asarray(gb), ref["b"], 1e-7, what="b")


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #

def test_bad_precond(xp):
    A, b = scales_problem()
    A_, b_ = to_xp(xp, A), to_xp(xp, b)
    d = lsqdiff.jacobi(A)
    cases = [
        (to_xp(xp, d[:-1]), ValueError, "length n = 30"),
        (to_xp(xp, np.diag(d)), ValueError, "LinearOperator"),
        (list(d), TypeError, "precond must be"),
        (to_xp(xp, np.where(np.arange(30) == 3, np.nan, d)), ValueError, "NaN or Inf"),
        (to_xp(xp, np.where(np.arange(30) == 3, 0.0, d)), ValueError, "zero entries"),
        (to_xp(xp, d.astype(complex)), TypeError, "complex"),
        (lsqdiff.LinearOperator((29, 29), lambda v: v, lambda u: u), ValueError, "(n, n)"),
    ]
    if backend_name(xp) != "numpy":
        cases.append((d, TypeError, "different array frameworks"))
    for precond, error, text in cases:
        with pytest.raises(error, match="precond") as exc:
            lsqdiff.lsmr(A_, b_, precond=precond)
        assert text in str(exc.value), (text, str(exc.value))


# --------------------------------------------------------------------------- #
# compat.scipy and the Jacobi helper
# --------------------------------------------------------------------------- #

def test_compat_scipy():
    pytest.importorskip("scipy", reason="the SciPy drop-ins")
    from lsqdiff.compat.scipy import lsmr, lsqr

    A, b = laplacian_problem(p=6)
    d = lsqdiff.jacobi(A)
    out = lsmr(A, b, atol=1e-10, btol=1e-10, precond=d)
    x, info = lsqdiff.lsmr(A, b, atol=1e-10, btol=1e-10, precond=d)
    np.testing.assert_array_equal(out[0], x)
    assert (out[1], out[2], out[3], out[4]) == (info.istop, info.itn, info.normr, info.normar)
    out = lsqr(A, b, atol=1e-10, btol=1e-10, precond=d)
    assert_close(out[0], dense_solve(A, b), 1e-8)
    assert out[3] == pytest.approx(np.linalg.norm(b - A @ out[0]), rel=1e-12)
    with pytest.raises(ValueError, match="calc_var"):
        lsqr(A, b, precond=d, calc_var=True)


def test_jacobi(xp):
    rng = np.random.default_rng(8)
    A = rng.standard_normal((40, 12)) * np.logspace(-3, 3, 12)
    A[:, 5] = 0.0
    norms = np.linalg.norm(A, axis=0)
    want = np.where(norms > 0, 1 / np.where(norms > 0, norms, 1), 1.0)
    assert_close(to_np(lsqdiff.jacobi(to_xp(xp, A))), want, 1e-12, what="dense")
    damped = to_np(lsqdiff.jacobi(to_xp(xp, A), damp=0.5))
    assert_close(damped, 1 / np.sqrt(norms**2 + 0.25), 1e-12, what="damped")
    name = backend_name(xp)
    if name == "numpy":
        sp = pytest.importorskip("scipy.sparse", reason="SciPy sparse")
        sparse = sp.csr_array(A)
    elif name == "torch":
        sparse = to_xp(xp, A).to_sparse_csr()
    elif is_jax(xp):
        from jax.experimental import sparse as jsparse

        sparse = jsparse.BCOO.fromdense(to_xp(xp, A))
    else:
        sparse = None
    if sparse is not None:
        assert_close(to_np(lsqdiff.jacobi(sparse)), want, 1e-12, what="sparse")
    if is_jax(xp):
        return  # the probes below are the same array-API code on every backend
    # A LinearOperator: Gaussian probes, unbiased; 400 probes put each column within 25%.
    A_ = to_xp(xp, A)
    op = lsqdiff.LinearOperator(A.shape, lambda v: A_ @ v, lambda u: A_.T @ u)
    est = to_np(lsqdiff.jacobi(op, like=to_xp(xp, np.zeros(40)), probes=400))
    keep = norms > 0
    assert np.all(np.abs(est[keep] / want[keep] - 1) < 0.25)
    assert est[5] == 1.0
    with pytest.raises(TypeError, match="like"):
        lsqdiff.jacobi(op)
    with pytest.raises(ValueError, match="probes"):
        lsqdiff.jacobi(op, like=to_xp(xp, np.zeros(40)), probes=0)
