"""Iterate for iterate against SciPy's ``scipy.sparse.linalg.lsmr`` / ``lsqr``.

With ``atol = btol = conlim = 0`` and a fixed ``maxiter`` both codes run exactly
``maxiter`` steps of the same recurrences, so ``x`` and every diagnostic must
agree to rounding (float64). With the default tolerances they must stop at the
same iteration for the same reason.

The problems are small but not solved within ``maxiter`` (cond 10, at most 20
steps on n >= 30 unknowns), so every compared iterate is well defined and not
dominated by rounding at the end of the Krylov space.

Under JAX every new ``maxiter`` or shape compiles a new loop, so JAX runs the tall
problem with ``maxiter = 20`` only (the other backends run every shape with
``maxiter`` 1, 2, 5 and 20): the traced code is the same for every shape.
"""

from __future__ import annotations

import numpy as np
import pytest

import lsqdiff
from conftest import BACKENDS, info_np, load_backend, make_matrix, make_problem, to_np, to_xp

spla = pytest.importorskip("scipy.sparse.linalg")

SHAPES = {"tall": (40, 30), "wide": (30, 40), "square": (30, 30)}
VARIANTS = {  # name: (damp, warm start?)
    "plain": (0.0, False),
    "damped": (0.7, False),
    "x0": (0.0, True),
    "damped-x0": (0.7, True),
}
MAXITERS = (1, 2, 5, 20)
FIELDS = ("normr", "normar", "norma", "conda", "normx")


def grid_params():
    """(backend, shape, maxiter): the full grid, except JAX's reduced one."""
    params = []
    for name, ident in BACKENDS:
        marks = [pytest.mark.gpu] if name == "cupy" else []
        jax = name == "jax.numpy"
        for shape in ("tall",) if jax else SHAPES:
            for maxiter in (20,) if jax else MAXITERS:
                params.append(pytest.param(name, shape, maxiter, id=f"{ident}-{shape}-{maxiter}",
                                           marks=marks))
    return params


def scipy_solve(name, A, b, **kw):
    """SciPy's result as (x, dict of lsqdiff's SolveInfo fields)."""
    if name == "lsmr":
        x, istop, itn, normr, normar, norma, conda, normx = spla.lsmr(A, b, **kw)
    else:
        if "maxiter" in kw:
            kw["iter_lim"] = kw.pop("maxiter")
        x, istop, itn, _r1norm, normr, norma, conda, normar, normx, _var = spla.lsqr(A, b, **kw)
    return x, dict(istop=istop, itn=itn, normr=normr, normar=normar, norma=norma,
                   conda=conda, normx=normx)


def assert_same_iterate(x, info, x_ref, ref, col=None):
    v = info_np(info)
    if col is not None:
        v = {k: val[col] for k, val in v.items()}
    assert int(v["itn"]) == ref["itn"]
    assert int(v["istop"]) == ref["istop"]
    scale = max(np.linalg.norm(x_ref), 1.0)
    np.testing.assert_allclose(to_np(x), x_ref, rtol=1e-10, atol=1e-12 * scale)
    for f in FIELDS:
        np.testing.assert_allclose(float(v[f]), ref[f], rtol=1e-9, atol=1e-13, err_msg=f)


def problem(shape, warm, seed=0, k=None):
    A, b = make_problem(SHAPES[shape], "well", seed=seed, k=k)
    n = A.shape[1]
    x0 = None
    if warm:
        x0 = np.random.default_rng(seed + 1).standard_normal((n,) if k is None else (n, k))
    return A, b, x0


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("backend, shape, maxiter", grid_params())
def test_iterates_match_scipy(backend, shape, maxiter, variant, solver):
    xp = load_backend(backend)
    damp, warm = VARIANTS[variant]
    A, b, x0 = problem(shape, warm)
    kw = dict(damp=damp, atol=0.0, btol=0.0, conlim=0.0, maxiter=maxiter)
    x_ref, ref = scipy_solve(solver.__name__, A, b, x0=x0, **kw)
    assert ref["istop"] == 7 and ref["itn"] == maxiter  # ran exactly maxiter steps
    x, info = solver(to_xp(xp, A), to_xp(xp, b), x0=None if x0 is None else to_xp(xp, x0), **kw)
    assert_same_iterate(x, info, x_ref, ref)


@pytest.mark.parametrize("variant", ["plain", "damped-x0"])
def test_iterates_match_scipy_per_column(xp, solver, variant):
    """With 2-D b each column runs SciPy's recurrences on its own."""
    damp, warm = VARIANTS[variant]
    A, B, X0 = problem("tall", warm, seed=2, k=2)
    kw = dict(damp=damp, atol=0.0, btol=0.0, conlim=0.0, maxiter=5)
    X, info = solver(to_xp(xp, A), to_xp(xp, B), x0=None if X0 is None else to_xp(xp, X0), **kw)
    for j in range(2):
        x_ref, ref = scipy_solve(solver.__name__, A, B[:, j],
                                 x0=None if X0 is None else X0[:, j], **kw)
        assert_same_iterate(to_np(X)[:, j], info, x_ref, ref, col=j)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_default_tolerances_match_scipy(xp, solver, shape):
    """Default atol, btol, conlim and maxiter: same stop reason, same iteration.
    (cond 1.3: the stop comes well before the Krylov space runs out, where the
    decision would rest on rounding.)"""
    A, b = make_problem(SHAPES[shape], "mild", seed=3)
    x_ref, ref = scipy_solve(solver.__name__, A, b)
    assert ref["itn"] < min(A.shape) - 5
    x, info = solver(to_xp(xp, A), to_xp(xp, b))
    v = info_np(info)
    assert (int(v["istop"]), int(v["itn"])) == (ref["istop"], ref["itn"])
    np.testing.assert_allclose(to_np(x), x_ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("case", ["atol", "conlim"])
def test_stopping_rules_match_scipy(xp, solver, case):
    """A loose atol stops early (istop 1 or 2); a small conlim stops with istop 3.
    Same code and iteration as SciPy. For conlim, A has three clusters of
    singular values (1, 1e-2, 1e-5): the condition estimate jumps past
    conlim = 40 at iteration 4 (from below 5), a decision rounding cannot flip."""
    if case == "atol":
        A, b = make_problem((40, 30), "well", seed=4)
        kw = dict(atol=1e-3, btol=1e-3)
    else:
        s = np.concatenate([np.linspace(1.0, 0.9, 10), np.linspace(1e-2, 0.9e-2, 10),
                            np.linspace(1e-5, 0.9e-5, 10)])
        A = make_matrix(40, 30, s, seed=4)
        b = np.random.default_rng(4).standard_normal(40)
        kw = dict(conlim=40.0)
    x_ref, ref = scipy_solve(solver.__name__, A, b, **kw)
    assert ref["istop"] in ((1, 2) if case == "atol" else (3,))
    assert ref["itn"] < 30  # stopped by the rule, not by the iteration limit
    x, info = solver(to_xp(xp, A), to_xp(xp, b), **kw)
    v = info_np(info)
    assert (int(v["istop"]), int(v["itn"])) == (ref["istop"], ref["itn"])
    np.testing.assert_allclose(to_np(x), x_ref, rtol=1e-8, atol=1e-10)


def test_default_maxiter_matches_scipy(xp, solver):
    """The default iteration limit is SciPy's: min(m, n) for LSMR, 2 n for LSQR."""
    A, b = make_problem((20, 12), "ill", seed=5)
    kw = dict(atol=0.0, btol=0.0, conlim=0.0)
    _, ref = scipy_solve(solver.__name__, A, b, **kw)
    limit = min(A.shape) if solver is lsqdiff.lsmr else 2 * A.shape[1]
    assert (ref["istop"], ref["itn"]) == (7, limit)
    x, info = solver(to_xp(xp, A), to_xp(xp, b), **kw)
    v = info_np(info)
    assert (int(v["istop"]), int(v["itn"])) == (7, limit)
