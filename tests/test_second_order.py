"""Trustworthy gradients (issue 15, items 3, 5, 6 and torch.func).

* A NaN in the incoming gradient gives NaN gradients on every backend
  (`lsqdiff.vjp` on NumPy and array-api-strict, torch autograd, jax.vjp eager
  and under jit), never the zeros of a solve stopped on istop 8.
* A solve inside the gradient that stops without converging raises
  `lsqdiff.GradientSolveWarning`; `lsqdiff.backward_diagnostics` and
  ``Gradients.info`` give each such solve's `SolveInfo`.
* PyTorch second derivatives: ``gradgradcheck`` (float64, tight solves) on
  tall, wide, square, damped, warm-started, complex, 2-D b and rank-deficient
  problems, dense A and LinearOperator params; Hessian-vector products against
  dense closed forms; the issue's reproducer; a clear error where a
  combination is not supported (sparse A, forward-over-reverse in A).
* torch.func: vmap of grad, jacfwd, jacrev of jacrev and hessian in b against
  dense references.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import lsqdiff
from conftest import backend_name, make_problem, to_np, to_xp
from grad_reference import SMALL, TIGHT_GRAD, closed_form, rank_factors, small_problem

NAN_CASES = {
    "undamped": dict(),
    "damped": dict(damp=0.5),
    "full-rank": dict(assume_full_rank=True),
}


# --------------------------------------------------------------------------- #
# NaN in, NaN out
# --------------------------------------------------------------------------- #

def _gradients(xp, A, b, x_bar, jit=False, **kw):
    """``(b_bar, A_bar)`` as NumPy arrays for the loss ``<x_bar, x>``, by each
    backend's own route: lsqdiff.vjp, torch autograd, jax.vjp."""
    name = backend_name(xp)
    kw = {**TIGHT_GRAD, **kw}
    if name == "torch":
        At, bt = to_xp(xp, A).requires_grad_(), to_xp(xp, b).requires_grad_()
        x, _ = lsqdiff.lsmr(At, bt, **kw)
        x.backward(to_xp(xp, x_bar))
        return to_np(bt.grad), to_np(At.grad)
    if name == "jax.numpy":
        import jax

        def pull(A, b, x_bar):
            _, pb = jax.vjp(lambda A, b: lsqdiff.lsmr(A, b, **kw)[0], A, b)
            return pb(x_bar)

        A_bar, b_bar = (jax.jit(pull) if jit else pull)(*(to_xp(xp, a) for a in (A, b, x_bar)))
        return to_np(b_bar), to_np(A_bar)
    _, pullback = lsqdiff.vjp(lsqdiff.lsmr, to_xp(xp, A), to_xp(xp, b), **kw)
    g = pullback(to_xp(xp, x_bar))
    return to_np(g.b), to_np(g.A.todense())


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", list(NAN_CASES))
def test_nan_cotangent_gives_nan_gradients(xp, case, jit):
    """x.backward(tensor([1, nan, 0])) gave b.grad == 0: the backward solve
    stopped on istop 8 and returned its first (zero) iterate."""
    if jit and backend_name(xp) != "jax.numpy":
        pytest.skip("jit: JAX only")
    A, b = make_problem((6, 4), seed=3)
    x_bar = np.array([1.0, np.nan, 0.0, 0.0])
    with pytest.warns(lsqdiff.GradientSolveWarning, match="NaN"):
        b_bar, A_bar = _gradients(xp, A, b, x_bar, jit=jit, **NAN_CASES[case])
        if backend_name(xp) == "jax.numpy":
            import jax

            jax.effects_barrier()  # the warning comes from a host callback
    assert np.isnan(b_bar).all(), b_bar
    assert np.isnan(A_bar).all(), A_bar


@pytest.mark.parametrize("damp", [0.0, 0.5])
def test_nan_in_one_column_leaves_the_others(xp, damp):
    """With a 2-D b, the columns are separate solves: a NaN in one column's
    cotangent makes that column's b gradient NaN and leaves the other's exact."""
    A, B = make_problem((6, 4), seed=4, k=2)
    X_bar = np.array([[1.0, 0.5], [np.nan, -1.0], [0.0, 2.0], [0.0, 0.3]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lsqdiff.GradientSolveWarning)
        b_bar, _ = _gradients(xp, A, B, X_bar, damp=damp)
    assert np.isnan(b_bar[:, 0]).all()
    want = closed_form(A, B[:, 1], None, damp, X_bar[:, 1])["b"]
    np.testing.assert_allclose(b_bar[:, 1], want, rtol=1e-8, atol=1e-10)


def test_nan_cotangent_torch_create_graph():
    """The differentiable backward (create_graph=True) propagates NaN too."""
    torch = pytest.importorskip("torch")
    A, b = make_problem((6, 4), seed=3)
    bt = torch.tensor(b, requires_grad=True)
    x, _ = lsqdiff.lsmr(torch.tensor(A), bt, damp=0.5, **TIGHT_GRAD)
    with pytest.warns(lsqdiff.GradientSolveWarning, match="NaN"):
        g, = torch.autograd.grad(x, bt, torch.tensor([1.0, np.nan, 0, 0]), create_graph=True)
    assert torch.isnan(g).all()


# --------------------------------------------------------------------------- #
# The backward's own solves are reported
# --------------------------------------------------------------------------- #

def _run_backward(xp, A, b, x_bar, **kw):
    """Run one gradient by the backend's route; returns Gradients.info for lsqdiff.vjp."""
    name = backend_name(xp)
    if name == "torch":
        At = to_xp(xp, A).requires_grad_()
        x, _ = lsqdiff.lsmr(At, to_xp(xp, b), **kw)
        x.backward(to_xp(xp, x_bar))
        return None
    if name == "jax.numpy":
        import jax

        f = jax.jit(jax.grad(lambda A: (lsqdiff.lsmr(A, to_xp(xp, b), **kw)[0]
                                        * to_xp(xp, x_bar)).sum()))
        jax.block_until_ready(f(to_xp(xp, A)))
        jax.effects_barrier()  # the host callbacks have run
        return None
    _, pullback = lsqdiff.vjp(lsqdiff.lsmr, to_xp(xp, A), to_xp(xp, b), **kw)
    return pullback(to_xp(xp, x_bar)).info


@pytest.mark.parametrize("damp", [0.0, 0.5])
def test_unconverged_gradient_solve_warns_and_is_logged(xp, damp):
    """grad_maxiter=1 gave gradient errors of 0.44-0.59 with no signal."""
    A, b = make_problem((30, 20), seed=5)
    x_bar = np.random.default_rng(5).standard_normal(20)
    with pytest.warns(lsqdiff.GradientSolveWarning, match="istop 7"):
        with lsqdiff.backward_diagnostics() as log:
            info = _run_backward(xp, A, b, x_bar, damp=damp, grad_maxiter=1)
    assert log, "no diagnostics collected"
    # (a block solve of several right-hand sides has one entry per column). A
    # solve whose value a dual gave (JAX) got a zero right-hand side: istop 0
    # before its first iteration; every solve that ran stopped at its limit.
    ran = 0
    for i in log:
        istop, itn = np.asarray(i.istop), np.asarray(i.itn)
        limit = (istop == 7) & (itn == 1)
        assert (limit | ((istop == 0) & (itn == 0))).all(), i
        assert not np.asarray(i.converged)[limit].any()
        ran += int(limit.sum())
    assert ran >= 1
    if info is not None:  # lsqdiff.vjp: the same records in Gradients.info
        assert list(info) == log


def test_converged_gradient_solves_do_not_warn(xp):
    A, b = make_problem((8, 5), seed=6)
    x_bar = np.random.default_rng(6).standard_normal(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lsqdiff.GradientSolveWarning)
        with lsqdiff.backward_diagnostics() as log:
            info = _run_backward(xp, A, b, x_bar, atol=1e-10, btol=1e-10)
    # Undamped: the b_bar solve, g and y from the duals (JAX: its three tangent solves).
    assert len(log) >= 1 and all(np.asarray(i.converged).all() for i in log)
    if info is not None:
        assert list(info) == log


def test_backward_diagnostics_nest():
    A, b = make_problem((8, 5), seed=6)
    _, pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, damp=0.3)
    with lsqdiff.backward_diagnostics() as outer:
        pullback(np.ones(5))
        with lsqdiff.backward_diagnostics() as inner:
            pullback(np.ones(5))
    assert len(inner) == 1 and len(outer) == 2  # damped: one solve per gradient
    pullback(np.ones(5))
    assert len(outer) == 2  # closed


# --------------------------------------------------------------------------- #
# PyTorch second derivatives
# --------------------------------------------------------------------------- #


def _torch():
    return pytest.importorskip("torch")


def _t(a, grad=True):
    torch = _torch()
    return torch.tensor(np.asarray(a)).requires_grad_(grad)


def test_issue_reproducer_damped_second_derivative():
    """g = grad(loss, Phi, create_graph=True); grad(g.sum(), Phi) returned 2
    everywhere: the solve's term was dropped (once_differentiable)."""
    torch = _torch()
    rng = np.random.default_rng(15)
    Phi = _t(rng.standard_normal((5, 3)))
    y = torch.tensor(rng.standard_normal(5))

    def loss(Phi, solve):
        w = solve(Phi)
        return (w ** 2).sum() + (Phi ** 2).sum()

    ours = lambda P: lsqdiff.lsmr(P, y, damp=0.7, **TIGHT_GRAD)[0]  # noqa: E731
    dense = lambda P: torch.linalg.solve(P.T @ P + 0.49 * torch.eye(3, dtype=P.dtype),  # noqa: E731
                                         P.T @ y)
    hs = []
    for solve in (ours, dense):
        g, = torch.autograd.grad(loss(Phi, solve), Phi, create_graph=True)
        h, = torch.autograd.grad(g.sum(), Phi)
        hs.append(h)
    assert not torch.allclose(hs[1], torch.full_like(hs[1], 2.0))  # the term matters
    torch.testing.assert_close(hs[0], hs[1], rtol=1e-9, atol=1e-11)


GG_CASES = ["tall", "wide", "square", "tall-damped", "wide-damped", "wide-x0", "damped-x0",
            "2d-b", "2d-b-damped", "complex-tall", "complex-wide-damped-x0"]


@pytest.mark.parametrize("case", GG_CASES)
def test_gradgradcheck(case):
    """Second derivatives in A, b, x0 and damp (a 0-d tensor) by finite
    differences of the gradient, including the incoming gradient's term."""
    torch = _torch()
    A, b, x0, damp, _ = small_problem(case)
    inputs = [_t(A), _t(b)] + ([_t(x0)] if x0 is not None else []) + ([_t(damp)] if damp else [])

    def f(A, b, *rest):
        rest = list(rest)
        x0_ = rest.pop(0) if x0 is not None else None
        damp_ = rest.pop(0) if damp else 0.0
        return lsqdiff.lsmr(A, b, x0=x0_, damp=damp_, **TIGHT_GRAD)[0]

    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("shape", [(7, 5), (5, 7)], ids=["tall", "wide"])
def test_gradgradcheck_rank_deficient(shape):
    """Rank 2 of 5: perturbations that keep the rank (A = L R^H), where the
    pseudo-inverse is differentiable."""
    torch = _torch()
    A, b = make_problem(shape, "rankdef", seed=8)
    L, R = rank_factors(A)

    def f(L, R, b):
        return lsqdiff.lsmr(L @ R.T, b, **TIGHT_GRAD)[0]

    assert torch.autograd.gradgradcheck(f, [_t(L), _t(R), _t(b)], eps=1e-6, atol=1e-6,
                                        rtol=1e-5)


def _dense_solution(A, b, damp, x0=None):
    """x as a differentiable dense function (torch): solve or pinv."""
    torch = _torch()
    r0 = b if x0 is None else b - A @ x0
    if damp:
        AH = A.mH
        d = torch.linalg.solve(AH @ A + damp ** 2 * torch.eye(A.shape[1], dtype=A.dtype), AH @ r0)
    else:
        d = torch.linalg.pinv(A) @ r0
    return d if x0 is None else x0 + d


@pytest.mark.parametrize("case", ["tall", "wide", "square", "tall-damped", "wide-damped",
                                  "damped-x0", "wide-x0", "complex-wide-damped-x0"])
def test_hessian_vector_products_match_dense(case):
    """H v of L(A, b) = ||x||^2 + Re<c, x> in (A, b), against the dense closed
    form differentiated by autograd."""
    torch = _torch()
    A, b, x0, damp, x_bar = small_problem(case)
    rng = np.random.default_rng(21)
    vA, vb = (torch.tensor(rng.standard_normal(np.shape(a)) * (1 + 0j if np.iscomplexobj(a) else 1))
              for a in (A, b))
    c = torch.tensor(x_bar)
    x0t = None if x0 is None else torch.tensor(x0)

    def hvp(solve):
        At, bt = _t(A), _t(b)
        x = solve(At, bt)
        loss = (x.conj() * x).real.sum() + (c.conj() * x).real.sum()
        gA, gb = torch.autograd.grad(loss, (At, bt), create_graph=True)
        inner = (gA.conj() * vA).real.sum() + (gb.conj() * vb).real.sum()
        return torch.autograd.grad(inner, (At, bt))

    ours = hvp(lambda A, b: lsqdiff.lsmr(A, b, x0=x0t, damp=damp, **TIGHT_GRAD)[0])
    ref = hvp(lambda A, b: _dense_solution(A, b, damp, x0t))
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_second_derivative_without_graph_in_the_incoming_gradient():
    """loss = x.sum(): the incoming gradient is a constant, so once_differentiable
    used to return the second derivative without the solve's term silently."""
    torch = _torch()
    A, b = make_problem((6, 4), seed=9)
    hs = []
    for solve in (lambda A: lsqdiff.lsmr(A, torch.tensor(b), **TIGHT_GRAD)[0],
                  lambda A: _dense_solution(A, torch.tensor(b), 0.0)):
        At = _t(A)
        g, = torch.autograd.grad(solve(At).sum(), At, create_graph=True)
        hs.append(torch.autograd.grad((g ** 2).sum(), At)[0])
    torch.testing.assert_close(hs[0], hs[1], rtol=1e-8, atol=1e-10)


def test_first_order_gradient_builds_no_graph():
    """Without create_graph the gradients carry no graph (the cheap path), and
    equal those computed with create_graph=True."""
    torch = _torch()
    A, b = make_problem((6, 4), seed=9)
    At, bt = _t(A), _t(b)
    x, _ = lsqdiff.lsmr(At, bt, damp=0.2, **TIGHT_GRAD)
    plain = torch.autograd.grad(x.square().sum(), (At, bt), retain_graph=True)
    graph = torch.autograd.grad(x.square().sum(), (At, bt), create_graph=True)
    assert not any(g.requires_grad for g in plain)
    assert all(g.requires_grad for g in graph)
    for p, g in zip(plain, graph):
        torch.testing.assert_close(p, g.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("derived", [False, True], ids=["rmatvec", "derived-rmatvec"])
@pytest.mark.parametrize("damp", [0.0, 0.4])
def test_gradgradcheck_linear_operator_params(damp, derived):
    """A LinearOperator A = diag(s) W with params (s, W): second derivatives in
    its params, with rmatvec given or derived by torch.func.vjp."""
    torch = _torch()
    rng = np.random.default_rng(10)
    W, s, b = _t(rng.standard_normal((6, 4))), _t(1 + rng.random(6)), _t(rng.standard_normal(6))

    def f(s, W, b):
        op = lsqdiff.LinearOperator(
            (6, 4), lambda v: s * (W @ v), None if derived else (lambda u: W.T @ (s * u)),
            params=[s, W])
        return lsqdiff.lsmr(op, b, damp=damp, **TIGHT_GRAD)[0]

    assert torch.autograd.gradgradcheck(f, [s, W, b], eps=1e-6, atol=1e-6, rtol=1e-5)


def test_sparse_second_derivative_raises_clearly():
    """Sparse A: first derivatives with create_graph=True are right; taking the
    second raises an error naming the reason (never a value without the term)."""
    torch = _torch()
    A, b = make_problem((6, 4), seed=11)
    As = torch.tensor(A).to_sparse_coo().requires_grad_()
    x, _ = lsqdiff.lsmr(As, torch.tensor(b), damp=0.3, **TIGHT_GRAD)
    g, = torch.autograd.grad(x.sum(), As, create_graph=True)
    want = closed_form(A, b, None, 0.3, np.ones(4))["A"]
    np.testing.assert_allclose(g.detach().to_dense().numpy(), want, rtol=1e-8, atol=1e-10)
    with pytest.raises(NotImplementedError, match="sparse torch A are not supported"):
        torch.autograd.grad(g.to_dense().sum(), As)


# --------------------------------------------------------------------------- #
# torch.func
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("damp", [0.0, 0.5])
def test_torch_func_vmap_of_grad(damp):
    """vmap(grad) raised NotImplementedError; now it equals the per-sample
    gradients and the dense closed forms."""
    torch = _torch()
    A, B = make_problem((7, 4), seed=12, k=3)
    At, Bt = torch.tensor(A), torch.tensor(B.T.copy())
    f = lambda A, b: lsqdiff.lsmr(A, b, damp=damp, **TIGHT_GRAD)[0].square().sum()  # noqa: E731
    gA, gb = torch.func.vmap(torch.func.grad(f, argnums=(0, 1)), in_dims=(None, 0))(At, Bt)
    for j in range(3):
        x = closed_form(A, B[:, j], None, damp, np.zeros(4))["x"]
        ref = closed_form(A, B[:, j], None, damp, 2 * x)
        np.testing.assert_allclose(gA[j].numpy(), ref["A"], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(gb[j].numpy(), ref["b"], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("damp", [0.0, 0.5])
@pytest.mark.parametrize("shape", [(7, 4), (4, 7)], ids=["tall", "wide"])
def test_torch_func_jacfwd(shape, damp):
    """jacfwd (vmap of the tangent rule) in b and A equals jacrev and the dense
    Jacobian."""
    torch = _torch()
    A, b = make_problem(shape, seed=13)
    At, bt = torch.tensor(A), torch.tensor(b)
    f = lambda A, b: lsqdiff.lsmr(A, b, damp=damp, **TIGHT_GRAD)[0]  # noqa: E731
    fwd = torch.func.jacfwd(f, argnums=(0, 1))(At, bt)
    rev = torch.func.jacrev(f, argnums=(0, 1))(At, bt)
    dense = torch.func.jacrev(lambda A, b: _dense_solution(A, b, damp), argnums=(0, 1))(At, bt)
    for j_fwd, j_rev, j_dense in zip(fwd, rev, dense):
        torch.testing.assert_close(j_fwd, j_dense, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(j_rev, j_dense, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("damp", [0.0, 0.5])
def test_torch_func_hessian_in_b(damp):
    """hessian (forward-over-reverse) and jacrev(jacrev) in b: 2 P^H P with
    P the solution map."""
    torch = _torch()
    A, b = make_problem((7, 4), seed=14)
    At, bt = torch.tensor(A), torch.tensor(b)
    f = lambda b: lsqdiff.lsmr(At, b, damp=damp, **TIGHT_GRAD)[0].square().sum()  # noqa: E731
    P = torch.func.jacrev(lambda b: _dense_solution(At, b, damp))(bt)
    for H in (torch.func.hessian(f)(bt), torch.func.jacrev(torch.func.jacrev(f))(bt)):
        torch.testing.assert_close(H, 2 * P.T @ P, rtol=1e-8, atol=1e-10)


def test_forward_over_reverse_in_A_raises_clearly():
    torch = _torch()
    A, b = make_problem((7, 4), seed=14)
    f = lambda A: lsqdiff.lsmr(A, torch.tensor(b), **TIGHT_GRAD)[0].square().sum()  # noqa: E731
    with pytest.raises(NotImplementedError, match="forward-over-reverse"):
        torch.func.hessian(f)(torch.tensor(A))


def test_torch_func_grad_of_linear_operator_params():
    """torch.func.grad builds a graph, so the differentiable backward runs under
    it; in a LinearOperator's params it stays first-order and exact."""
    torch = _torch()
    rng = np.random.default_rng(16)
    W, b = torch.tensor(rng.standard_normal((6, 4))), torch.tensor(rng.standard_normal(6))

    def f(W):
        op = lsqdiff.LinearOperator((6, 4), lambda v: W @ v, lambda u: W.T @ u, params=[W])
        return lsqdiff.lsmr(op, b, **TIGHT_GRAD)[0].square().sum()

    want = torch.func.grad(lambda W: (torch.linalg.pinv(W) @ b).square().sum())(W)
    torch.testing.assert_close(torch.func.grad(f)(W), want, rtol=1e-9, atol=1e-11)


def test_nested_torch_func_reverse_in_A_raises_clearly():
    """jacrev of grad in A under torch.func: a clear error, not a Hessian
    without the solve's term (torch.autograd.grad twice works)."""
    torch = _torch()
    A, b = make_problem((7, 4), seed=14)
    f = lambda A: lsqdiff.lsmr(A, torch.tensor(b), **TIGHT_GRAD)[0].square().sum()  # noqa: E731
    with pytest.raises(NotImplementedError, match="torch.func"):
        torch.func.jacrev(torch.func.grad(f))(torch.tensor(A))
