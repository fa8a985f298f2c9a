"""Gradients of a solve through ``lsqdiff.vjp`` (the manual adjoint): the
pullback against the dense closed forms of DESIGN.md section 2 and against
central finite differences, in float64, on tall, wide, square, rank-deficient,
damped, warm-started, multi-column and complex problems; ``assume_full_rank``;
the backward tolerances; the `LowRank` gradient of A; bad input.

The references are in ``grad_reference.py``. Every solve is run to
atol = btol = 1e-14 and asserted converged before its gradients are compared.
"""

from __future__ import annotations

import numpy as np
import pytest

import lsqdiff
from conftest import assert_converged, backend_name, make_problem, to_np, to_xp
from grad_reference import (
    TIGHT_GRAD,
    assert_close,
    case_problem,
    central_difference,
    closed_form,
    cols,
    dense_solve,
    rank_factors,
    relerr,
    vdot,
)

#: name -> problem: shape and kind as in conftest.make_problem, damp, warm start,
#: columns of b, complex.
CASES = {
    "tall": dict(shape="tall"),
    "wide": dict(shape="wide"),
    "square": dict(shape="square"),
    "tall-rankdef": dict(shape="tall", kind="rankdef"),
    "wide-rankdef": dict(shape="wide", kind="rankdef"),
    "tall-damped": dict(shape="tall", damp=0.5),
    "wide-damped": dict(shape="wide", damp=0.5),
    "rankdef-damped": dict(shape="square", kind="rankdef", damp=0.3),
    "tall-x0": dict(shape="tall", x0=True),
    "wide-x0": dict(shape="wide", x0=True),
    "rankdef-x0": dict(shape="square", kind="rankdef", x0=True),
    "damped-x0": dict(shape="wide", damp=0.5, x0=True),
    "2d-b": dict(shape="tall", k=3, x0=True),
    "2d-b-wide-damped": dict(shape="wide", k=2, damp=0.4, x0=True),
    "2d-b-rankdef": dict(shape="wide", kind="rankdef", k=2, x0=True),
    "complex-tall": dict(shape="tall", complex_=True),
    "complex-wide-damped-x0": dict(shape="wide", complex_=True, damp=0.5, x0=True),
    "complex-rankdef-x0": dict(shape="tall", kind="rankdef", complex_=True, x0=True),
}


def build(name: str):
    """``(A, b, x0, damp, x_bar)`` as float64/complex128 NumPy arrays (x0 may be None)."""
    return case_problem(CASES[name], seed=sorted(CASES).index(name), draw_seed_offset=500)


def run_vjp(solver, A, b, x0, damp, x_bar, **kw):
    """``(x, grads)`` from lsqdiff.vjp after asserting the forward converged."""
    (x, info), pullback = lsqdiff.vjp(solver, A, b, damp=damp, x0=x0, **TIGHT_GRAD, **kw)
    assert_converged(info)
    return x, pullback(x_bar)


def assert_matches_closed_form(grads, ref, x_bar, rtol=1e-9):
    scale = np.linalg.norm(to_np(x_bar))
    assert_close(to_np(grads.b), ref["b"], rtol, 1e-12 * scale, "b")
    assert_close(to_np(grads.A.todense()), ref["A"], rtol, 1e-12 * scale, "A")
    if ref["x0"] is None:
        assert grads.x0 is None
    else:
        # x0_bar is exactly 0 for a full-column-rank A: absolute tolerance.
        assert_close(to_np(grads.x0), ref["x0"], rtol, 1e-10 * scale, "x0")
    assert isinstance(grads.damp, float)
    assert abs(grads.damp - ref["damp"]) <= rtol * abs(ref["damp"]) + 1e-12 * scale


# --------------------------------------------------------------------------- #
# Closed forms
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", list(CASES))
def test_pullback_matches_closed_form(solver, case):
    A, b, x0, damp, x_bar = build(case)
    x, grads = run_vjp(solver, A, b, x0, damp, x_bar)
    ref = closed_form(A, b, x0, damp, x_bar)
    assert_close(x, ref["x"], 1e-10, 0.0, "x")
    assert_matches_closed_form(grads, ref, x_bar)
    assert grads.A.shape == A.shape
    assert np.iscomplexobj(grads.b) == np.iscomplexobj(A)


@pytest.mark.parametrize("case", ["damped-x0", "2d-b-rankdef", "wide-x0", "complex-tall"])
def test_pullback_on_every_backend(xp, case):
    """The same backward pass on every array-API backend (float64), results in
    the backend's arrays. (JAX runs the first case only: its eager backward
    compiles each loop, about a second apiece.)"""
    if backend_name(xp) == "jax" and case != "damped-x0":
        pytest.skip("JAX: covered by the first two cases and by test_jax_grad.py")
    A, b, x0, damp, x_bar = build(case)
    x, grads = run_vjp(lsqdiff.lsmr, to_xp(xp, A), to_xp(xp, b),
                       None if x0 is None else to_xp(xp, x0), damp, to_xp(xp, x_bar))
    assert type(grads.b) is type(x)
    assert type(grads.A.todense()) is type(x)
    assert_matches_closed_form(grads, closed_form(A, b, x0, damp, x_bar), x_bar)


# --------------------------------------------------------------------------- #
# Finite differences
# --------------------------------------------------------------------------- #

def directions(name: str, A, b, x0, n_dirs: int = 2):
    """Random perturbations ``{input: [(delta, path), ...]}`` where ``path(eps)``
    is the perturbed input. Undamped rank-deficient A moves along A = L R^H ->
    (L + eps dL)(R + eps dR)^H, which keeps the rank (the pseudo-inverse jumps
    under a generic perturbation); the first-order change is dL R^H + L dR^H."""
    rng = np.random.default_rng(sorted(CASES).index(name) + 900)
    cplx = np.iscomplexobj(A)

    def rand(shape):
        z = rng.standard_normal(shape)
        return z + 1j * rng.standard_normal(shape) if cplx else z

    out: dict[str, list] = {"A": [], "b": [], "x0": [], "damp": []}
    rankdef = CASES[name].get("kind") == "rankdef" and not CASES[name].get("damp")
    for _ in range(n_dirs):
        if rankdef:
            L, R = rank_factors(A)
            dL, dR = rand(L.shape), rand(R.shape)
            out["A"].append((dL @ R.conj().T + L @ dR.conj().T,
                             lambda e, L=L, R=R, dL=dL, dR=dR:
                             (L + e * dL) @ (R + e * dR).conj().T))
        else:
            dA = rand(A.shape)
            out["A"].append((dA, lambda e, dA=dA: A + e * dA))
        db = rand(b.shape)
        out["b"].append((db, lambda e, db=db: b + e * db))
        if x0 is not None:
            dx0 = rand(x0.shape)
            out["x0"].append((dx0, lambda e, dx0=dx0: x0 + e * dx0))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_pullback_matches_finite_differences(case):
    """Re<grad, delta> equals the central difference of L = Re<x_bar, x> along
    delta, for every input, with x the exact (dense) solution map."""
    A, b, x0, damp, x_bar = build(case)
    _, grads = run_vjp(lsqdiff.lsmr, A, b, x0, damp, x_bar)
    args = dict(A=A, b=b, x0=x0, damp=damp)
    computed = dict(A=grads.A.todense(), b=grads.b, x0=grads.x0)
    checked = 0
    for key, dirs in directions(case, A, b, x0).items():
        for delta, path in dirs:
            loss = lambda e: vdot(x_bar, dense_solve(**{**args, key: path(e)}))  # noqa: E731
            fd = central_difference(loss)
            pred = vdot(computed[key], delta)
            bound = 1e-6 * (np.linalg.norm(computed[key]) + np.linalg.norm(x_bar)) \
                * np.linalg.norm(delta)
            assert abs(fd - pred) <= bound, (key, fd, pred)
            checked += 1
    if damp:
        fd = central_difference(lambda e: vdot(x_bar, dense_solve(A, b, x0, damp + e)))
        assert abs(fd - grads.damp) <= 1e-6 * (abs(fd) + np.linalg.norm(x_bar)), (fd, grads.damp)
    else:
        # x depends on damp^2 only, so at damp = 0 its derivative is 0.
        assert grads.damp == 0.0
    assert checked == 4 + 2 * (x0 is not None)


@pytest.mark.parametrize("case", ["tall", "wide-x0", "rankdef-x0", "damped-x0", "complex-tall"])
def test_finite_differences_through_the_solver(solver, case):
    """Central differences of the iterative solve itself (not the dense map)
    along one direction per input agree with the pullback."""
    A, b, x0, damp, x_bar = build(case)
    _, grads = run_vjp(lsqdiff.lsmr, A, b, x0, damp, x_bar)
    computed = dict(A=grads.A.todense(), b=grads.b, x0=grads.x0)

    def loss(**changed):
        args = {**dict(A=A, b=b, x0=x0, damp=damp), **changed}
        x, info = solver(args.pop("A"), args.pop("b"), **args, **TIGHT_GRAD)
        assert_converged(info)
        return vdot(x_bar, x)

    for key, dirs in directions(case, A, b, x0, n_dirs=1).items():
        for delta, path in dirs:
            fd = central_difference(lambda e: loss(**{key: path(e)}), eps=1e-5)
            pred = vdot(computed[key], delta)
            bound = 1e-6 * (np.linalg.norm(computed[key]) + np.linalg.norm(x_bar)) \
                * np.linalg.norm(delta)
            assert abs(fd - pred) <= bound, (key, fd, pred)
    if damp:
        fd = central_difference(lambda e: loss(damp=damp + e), eps=1e-5)
        assert abs(fd - grads.damp) <= 1e-6 * (abs(fd) + np.linalg.norm(x_bar))


# --------------------------------------------------------------------------- #
# assume_full_rank and backward tolerances
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", ["tall", "tall-x0", "wide", "wide-x0", "2d-b",
                                  "complex-tall", "damped-x0"])
def test_assume_full_rank_same_gradients(case):
    """With a full-rank A, assume_full_rank gives the same gradients: a tall A
    drops the y w^H term, a wide one the r g^H term (x - A^+ b has no
    residual). The default rule finds the same terms negligible from the
    solves' stop codes (tests/test_grad_cost.py counts its solves)."""
    A, b, x0, damp, x_bar = build(case)
    _, full = run_vjp(lsqdiff.lsmr, A, b, x0, damp, x_bar)
    _, fast = run_vjp(lsqdiff.lsmr, A, b, x0, damp, x_bar, assume_full_rank=True)
    ref = closed_form(A, b, x0, damp, x_bar)
    assert_matches_closed_form(fast, ref, x_bar)
    assert_matches_closed_form(full, ref, x_bar)
    assert len(fast.A.terms) == 2
    assert len(full.A.terms) == 2
    if damp == 0 and A.shape[0] >= A.shape[1] and x0 is not None:
        assert np.all(fast.x0 == 0)  # no null space: the warm start has no effect


@pytest.mark.parametrize("solver_name", ["lsmr", "lsqr"])
@pytest.mark.parametrize("case", ["tall", "tall-x0", "wide", "wide-x0", "square", "2d-b"])
def test_assume_full_rank_takes_one_backward_solve(monkeypatch, solver_name, case):
    """Undamped with assume_full_rank the backward pass is one LSMR solve: a tall
    (or square) A gets g as the dual of the b_bar solve, a wide A gets y from the
    forward solve's dual; the gradients still match the closed form."""
    from lsqdiff import _gradient

    calls = []
    real = _gradient.lsmr_on
    monkeypatch.setattr(_gradient, "lsmr_on", lambda *a, **k: calls.append(k) or real(*a, **k))
    A, b, x0, damp, x_bar = build(case)
    _, grads = run_vjp(getattr(lsqdiff, solver_name), A, b, x0, damp, x_bar,
                       assume_full_rank=True)
    assert_matches_closed_form(grads, closed_form(A, b, x0, damp, x_bar), x_bar)
    assert len(calls) == 1
    assert calls[0].get("dual", False) == (A.shape[0] >= A.shape[1])


def test_backward_tolerances_follow_the_forward_unless_overridden():
    """The backward solves use the forward's atol/btol (a loose forward gives a
    loose gradient); grad_atol/grad_btol override them in both directions."""
    A, b, x0, damp, x_bar = build("wide-x0")
    ref = closed_form(A, b, x0, damp, x_bar)
    opts = dict(damp=damp, x0=x0, conlim=0.0, maxiter=500)

    def grad_error(**kw):
        (_, info), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, **opts, **kw)
        assert_converged(info)
        return relerr(pullback(x_bar).b, ref["b"])

    tight = grad_error(atol=1e-14, btol=1e-14)
    tight_forward_loose_backward = grad_error(atol=1e-14, btol=1e-14, grad_atol=1e-2,
                                              grad_btol=1e-2)
    loose = grad_error(atol=1e-2, btol=1e-2)
    loose_forward_tight_backward = grad_error(atol=1e-2, btol=1e-2, grad_atol=1e-14,
                                              grad_btol=1e-14)
    assert tight < 1e-10
    assert tight_forward_loose_backward > 1e3 * tight
    assert loose > 1e3 * tight
    # b_bar = A^+H x_bar does not depend on the forward's x: tight backward, exact b_bar.
    assert loose_forward_tight_backward < 1e-10


# --------------------------------------------------------------------------- #
# LowRank
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", ["tall-x0", "2d-b-wide-damped", "complex-rankdef-x0"])
def test_lowrank_products_match_dense(case):
    A, b, x0, damp, x_bar = build(case)
    _, grads = run_vjp(lsqdiff.lsmr, A, b, x0, damp, x_bar)
    G = grads.A.todense()
    m, n = A.shape
    rng = np.random.default_rng(3)
    cplx = np.iscomplexobj(A)
    v = rng.standard_normal(n) + (1j * rng.standard_normal(n) if cplx else 0)
    u = rng.standard_normal(m) + (1j * rng.standard_normal(m) if cplx else 0)
    V = rng.standard_normal((n, 3))
    assert_close(grads.A.matvec(v), G @ v, 1e-13, 0, "matvec")
    assert_close(grads.A.rmatvec(u), G.conj().T @ u, 1e-13, 0, "rmatvec")
    assert_close(grads.A.matvec(V), G @ V, 1e-13, 0, "matmat")
    # dot-product test <G v, u> = <v, G^H u>
    lhs, rhs = np.vdot(u, grads.A.matvec(v)), np.vdot(grads.A.rmatvec(u), v)
    assert abs(lhs - rhs) <= 1e-12 * np.linalg.norm(G) * np.linalg.norm(u) * np.linalg.norm(v)
    # the terms are the triples the dense gradient is summed from
    assert len(grads.A.terms) >= 2
    dense = sum(s * cols(U) @ cols(W).conj().T for s, U, W in grads.A.terms)
    assert_close(dense, G, 1e-14, 0, "terms")
    for s, U, W in grads.A.terms:
        assert isinstance(s, float)
        assert U.shape == (m,) + b.shape[1:] and W.shape == (n,) + b.shape[1:]


@pytest.mark.parametrize("case", ["tall-damped", "wide-x0", "2d-b-rankdef", "complex-tall"])
def test_lowrank_vjp_parametrised_operator(case):
    """A(c, theta) = c B + sum_i theta_i A_i as a LinearOperator: LowRank.vjp with
    bilinear_grad returning a dict gives <A_bar, dA/dparam> for every parameter,
    which matches finite differences of the dense solution map."""
    A, b, x0, damp, x_bar = build(case)
    m, n = A.shape
    rng = np.random.default_rng(11)
    cplx = np.iscomplexobj(A)
    mats = [rng.standard_normal((m, n)) + (1j * rng.standard_normal((m, n)) if cplx else 0)
            for _ in range(3)]
    theta = np.array([0.1, -0.2, 0.05])
    c = 1.0
    B = A - sum(t * M for t, M in zip(theta, mats))  # so that A(c, theta) = A

    def dense_op(c, theta):
        return c * B + sum(t * M for t, M in zip(theta, mats))

    op = lsqdiff.LinearOperator((m, n), lambda v: dense_op(c, theta) @ v,
                                lambda u: dense_op(c, theta).conj().T @ u)
    (_, info), pullback = lsqdiff.vjp(lsqdiff.lsmr, op, b, damp=damp, x0=x0, **TIGHT_GRAD)
    assert_converged(info)
    grads = pullback(x_bar)
    calls = []

    def bilinear_grad(u, v):
        calls.append(1)
        return {"c": vdot(u, B @ v), "theta": np.array([vdot(u, M @ v) for M in mats])}

    got = grads.A.vjp(bilinear_grad)
    k = 1 if b.ndim == 1 else b.shape[1]
    assert len(calls) == len(grads.A.terms) * k
    ref = closed_form(A, b, x0, damp, x_bar)["A"]
    np.testing.assert_allclose(got["c"], vdot(ref, B), rtol=1e-9)
    np.testing.assert_allclose(got["theta"], [vdot(ref, M) for M in mats], rtol=1e-9, atol=1e-12)
    if CASES[case].get("kind") != "rankdef" or damp:  # generic directions keep the rank
        for i in range(3):
            fd = central_difference(lambda e: vdot(x_bar, dense_solve(
                dense_op(c, theta + e * np.eye(3)[i]), b, x0, damp)))
            assert abs(fd - got["theta"][i]) <= 1e-6 * (abs(fd) + 1.0)


def test_lowrank_of_array_api_strict():
    xs = pytest.importorskip("array_api_strict")
    A, b, x0, damp, x_bar = build("2d-b")
    _, grads = run_vjp(lsqdiff.lsmr, to_xp(xs, A), to_xp(xs, b), to_xp(xs, x0), damp,
                       to_xp(xs, x_bar))
    G = to_np(grads.A.todense())
    v = np.arange(A.shape[1], dtype=float)
    u = np.arange(A.shape[0], dtype=float)
    assert_close(to_np(grads.A.matvec(to_xp(xs, v))), G @ v, 1e-13, 0, "matvec")
    assert_close(to_np(grads.A.rmatvec(to_xp(xs, u))), G.T @ u, 1e-13, 0, "rmatvec")


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("bad_shape", [(19,), (20, 1), (30,)])
def test_pullback_wrong_x_bar_shape(bad_shape):
    A, b = make_problem("tall", seed=3)
    (_, info), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, **TIGHT_GRAD)
    assert_converged(info)
    with pytest.raises(ValueError, match=r"x_bar must have the shape of x, \(20,\)"):
        pullback(np.ones(bad_shape))


@pytest.mark.parametrize("bad", ["scipy", "lambda", "string"])
def test_vjp_needs_lsmr_or_lsqr(bad):
    A, b = make_problem("tall", seed=3)
    if bad == "scipy":
        scipy_linalg = pytest.importorskip("scipy.sparse.linalg")
        solver = scipy_linalg.lsmr
    else:
        solver = {"lambda": lambda A, b, **kw: lsqdiff.lsmr(A, b, **kw), "string": "lsmr"}[bad]
    with pytest.raises(TypeError, match=r"solver must be lsqdiff.lsmr or lsqdiff.lsqr"):
        lsqdiff.vjp(solver, A, b)
