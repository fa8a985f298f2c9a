"""Scale: solves of badly scaled problems are right or say why not (issue 15).

The scalar recurrences run on the problem normalised by powers of two and the
norms never under- or overflow (`lsqdiff._stopping`, `lsqdiff.backends._base`),
so ``A`` and ``b`` scaled by ``10**kA`` and ``10**kb`` solve like the unscaled
problem. The property test searches ``kA, kb`` in ``[-300, 300]`` with a
representable solution (``|kb - kA| <= 280``: LSMR's updates of ``x`` may
exceed ``||x||`` by a factor 1/eps when the Krylov space of a rank-deficient
``A`` runs out); every solve there must converge to the float64 reference,
JAX's included (XLA flushes subnormals to zero: entries of A, b and x below
1e-308 are zeros to it). Also here: the iteration limit beyond int32, half
precision, no warnings from a valid solve, and JAX's strict dtype promotion.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lsqdiff
from conftest import (assert_converged, backend_name, damped_ref, info_np, is_jax,
                      lstsq_ref, make_matrix, make_problem, to_np, to_xp)

#: The scale exponents searched, and the widest gap between them (x ~ 10**(kb - kA)).
K_MAX, GAP = 300, 280

#: Shapes of the property test: fixed, so that JAX compiles each loop once.
SHAPES = {"tall": (12, 8), "wide": (8, 12), "square": (10, 10), "rankdef": (12, 8)}

CONVERGED = (0, 1, 2, 4, 5)


def scaled_back(x, kA: int, kb) -> np.ndarray:
    """``x * 10**kA / 10**kb`` in float64 without leaving its range (x ~ 10**(kb - kA));
    ``kb`` may hold one exponent per column."""
    x = to_np(x).astype(np.complex128 if np.iscomplexobj(to_np(x)) else np.float64)
    return x * 10.0 ** kA * 10.0 ** (-np.asarray(kb, dtype=float))


def rel_err(x, ref) -> float:
    return float(np.max(np.linalg.norm(x - ref, axis=0) / np.linalg.norm(ref, axis=0)))


def safe_norm(x) -> float:
    x = to_np(x)
    s = np.max(np.abs(x))
    return float(s * np.linalg.norm(x / s)) if s > 0 else 0.0


# --------------------------------------------------------------------------- #
# The reproducers
# --------------------------------------------------------------------------- #

#: (scale of A, scale of b): before, each returned a wrong x marked converged
#: (x = 0 from underflowed norms; a relative error of 0.7 after one iteration
#: from an overflowed ||x||^2), a false istop 3 (SciPy's scale-dependent
#: condition estimate), or istop 8 for finite data (overflowed norms).
EXTREME = [(1e-200, 1.0), (1.0, 1e-200), (1e-160, 1.0), (1.0, 1e-160), (1e-11, 1.0),
           (1e150, 1.0), (1e200, 1.0), (1.0, 1e200), (1e-200, 1e-200), (1e200, 1e-100)]


@pytest.mark.parametrize("sA, sb", EXTREME, ids=[f"A{a:g}-b{b:g}" for a, b in EXTREME])
def test_extreme_scales(xp, solver, sA, sb):
    A, b = make_problem((8, 5), "well", seed=0)
    x, info = solver(to_xp(xp, A * sA), to_xp(xp, b * sb), atol=1e-10, btol=1e-10)
    assert_converged(info)
    assert int(info_np(info)["itn"]) > 1
    assert rel_err(to_np(x) * sA / sb, lstsq_ref(A, b)) < 1e-8
    # The diagnostics are in the problem's units.
    v = info_np(info)
    np.testing.assert_allclose(float(v["normx"]), safe_norm(x), rtol=1e-6)
    np.testing.assert_allclose(float(v["norma"]) / sA, np.linalg.norm(A), rtol=0.5)


@pytest.mark.parametrize("sA, sb", [(1.0, 1e-22), (1e-11, 1e-11)])
def test_lsqr_small_scales(xp, sA, sb):
    """LSQR's guard in test 2 was an absolute 2.2e-16: at these ordinary scales it
    passed at iteration 1 with a relative error of 0.74."""
    A, b = make_problem((8, 5), "well", seed=0)
    x, info = lsqdiff.lsqr(to_xp(xp, A * sA), to_xp(xp, b * sb))
    assert_converged(info)
    assert int(info_np(info)["itn"]) > 1
    assert rel_err(to_np(x) * sA / sb, lstsq_ref(A, b)) < 1e-5


@pytest.mark.parametrize("s", [1e-4, 1e-100, 1e100])
def test_condition_estimate_is_scale_free(xp, s):
    """LSMR's cond(A) estimate does not change when A is scaled. SciPy's counts
    its starting rhobar = 1 among the rbar's, so for ||A|| < 1 it grows like
    1 / ||A|| (A * 1e-11 stopped with istop 3 at iteration 1)."""
    A, b = make_problem((40, 30), "well", seed=0)
    kw = dict(maxiter=10, atol=0.0, btol=0.0, conlim=0.0)
    _, ref = lsqdiff.lsmr(A, b, **kw)
    _, info = lsqdiff.lsmr(to_xp(xp, A * s), to_xp(xp, b), **kw)
    np.testing.assert_allclose(float(info_np(info)["conda"]), ref.conda, rtol=1e-12)


def test_columns_at_different_scales(xp, solver):
    """Each column of a 2-D b has its own normalisation."""
    A, B = make_problem((8, 5), "well", seed=1, k=3)
    s = np.array([1e-200, 1.0, 1e200])
    X, info = solver(to_xp(xp, A), to_xp(xp, B * s), atol=1e-10, btol=1e-10)
    assert_converged(info)
    assert rel_err(to_np(X) / s, lstsq_ref(A, B)) < 1e-8


def test_unrepresentable_solution_is_flagged(xp, solver):
    """x ~ 1e400 cannot be represented: a stop for non-finite values, not 'converged'."""
    A, b = make_problem((8, 5), "well", seed=0)
    x, info = solver(to_xp(xp, A * 1e-200), to_xp(xp, b * 1e200))
    v = info_np(info)
    assert not bool(v["converged"])
    assert int(v["istop"]) == 8


@pytest.mark.parametrize("maxiter", [2**31 - 1, 2**31, 2**40, 10**30])
@pytest.mark.parametrize("k", [None, 2])
def test_huge_maxiter(xp, solver, maxiter, k):
    """An iteration limit beyond int32 means no limit: it wrapped around to a
    negative limit (istop 7 after one iteration) or raised OverflowError."""
    A, b = make_problem((8, 5), "well", seed=0, k=k)
    x, info = solver(to_xp(xp, A), to_xp(xp, b), maxiter=maxiter)
    assert_converged(info)
    assert np.all(info_np(info)["itn"] > 1)


def test_no_warnings_from_a_zero_column(xp, solver):
    """A zero column stops at once (istop 0) while the others run on; the
    stopped column's arithmetic printed 'RuntimeWarning: divide by zero'."""
    A, B = make_problem((8, 5), "well", seed=0, k=3)
    B[:, 1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        X, info = solver(to_xp(xp, A), to_xp(xp, B))
    assert list(info_np(info)["istop"][[1]]) == [0]
    assert_converged(info)
    assert np.all(to_np(X)[:, 1] == 0)


HALF = {"numpy": ["float16"], "torch": ["float16", "bfloat16"], "jax": ["float16", "bfloat16"]}


@pytest.mark.parametrize("k", [None, 2])
@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision(xp, solver, half, k):
    """float16 and bfloat16: vectors in the input dtype, scalars in float32 (JAX
    raised a while_loop carry-type error; 2-D b returned float64)."""
    if half not in HALF.get(backend_name(xp), []):
        pytest.skip(f"{backend_name(xp)} has no {half}")
    A, b = make_problem((8, 5), "mild", seed=0, k=k)
    dtype = getattr(xp, half)
    x, info = solver(xp.asarray(to_xp(xp, A), dtype=dtype), xp.asarray(to_xp(xp, b), dtype=dtype),
                     atol=1e-2, btol=1e-2)
    assert x.dtype == dtype
    assert_converged(info)
    ref = lstsq_ref(A, b)
    got = to_np(xp.asarray(x, dtype=xp.float32))
    assert rel_err(got.reshape(ref.shape[0], -1), ref.reshape(ref.shape[0], -1)) < 0.05


# --------------------------------------------------------------------------- #
# JAX's strict dtype promotion (lineax runs its tests so)
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("k", [None, 2])
def test_jax_strict_promotion(solver, complex_, k):
    """Every complex solve raised TypePromotionError (complex128 times a float64
    scalar); real solves, 2-D b and the gradient must run too."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    A, b = make_problem((8, 5), "well", seed=0, k=k, complex_=complex_)
    A, b = jnp.asarray(A), jnp.asarray(b)
    with jax.numpy_dtype_promotion("strict"):
        x, info = solver(A, b, atol=1e-12, btol=1e-12)
        assert_converged(info)
        np.testing.assert_allclose(np.asarray(x), lstsq_ref(np.asarray(A), np.asarray(b)),
                                   rtol=1e-8, atol=1e-10)
        xd, _ = jax.jit(lambda A, b: solver(A, b, damp=0.5, atol=1e-12, btol=1e-12))(A, b)
        np.testing.assert_allclose(np.asarray(xd), damped_ref(np.asarray(A), np.asarray(b), 0.5),
                                   rtol=1e-8, atol=1e-10)

        def loss(b):
            x = solver(A, b, atol=1e-12, btol=1e-12)[0]
            return jnp.sum(jnp.abs(x) ** 2)

        g = jax.grad(loss)(b)
    # x = A^+ b, loss = ||x||^2: d loss / d conj(b) = A^+H x (JAX's gradient is its conjugate).
    x_ref = lstsq_ref(np.asarray(A), np.asarray(b))
    want = 2 * np.linalg.pinv(np.asarray(A)).conj().T @ x_ref
    np.testing.assert_allclose(np.asarray(g), want.conj() if complex_ else want,
                               rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- #
# The property: scales and shapes against numpy.linalg.lstsq in float64
# --------------------------------------------------------------------------- #

@st.composite
def scaled_problems(draw):
    shape = draw(st.sampled_from(sorted(SHAPES)))
    kA = draw(st.integers(-K_MAX, K_MAX))
    near = st.integers(max(-K_MAX, kA - GAP), min(K_MAX, kA + GAP))
    kb = [draw(near)] if draw(st.booleans()) else [draw(near), draw(near)]
    return dict(shape=shape, kA=kA, kb=kb, damped=draw(st.booleans()),
                complex_=draw(st.booleans()), seed=draw(st.integers(0, 3)))


@given(case=scaled_problems())
def test_scale_property(xp, solver, case):
    """Whenever ``converged``, x is the float64 reference to a tolerance tied to
    atol = btol = 1e-10 and cond <= 10; in this range every solve converges
    (``when not`` would need a stop code that says why: none is expected here).
    Damping scales with A (``damp = 0.5 * 10**kA``), the solution as
    ``10**(kb - kA)``."""
    m, n = SHAPES[case["shape"]]
    r = min(m, n)
    s = np.linspace(10.0, 1.0, r)
    if case["shape"] == "rankdef":
        s[r // 2:] = 0.0
    A = make_matrix(m, n, s, seed=case["seed"], complex_=case["complex_"])
    kA, kb = case["kA"], np.array(case["kb"])
    rng = np.random.default_rng(case["seed"])
    b = rng.standard_normal((m, len(kb)))
    if case["complex_"]:
        b = b + 1j * rng.standard_normal((m, len(kb)))
    damp = 0.5 if case["damped"] else 0.0
    ref = damped_ref(A, b, damp)
    if len(kb) == 1:
        b, ref = b[:, 0], ref[:, 0]
    sb = 10.0 ** kb if b.ndim == 2 else 10.0 ** kb[0]
    x, info = solver(to_xp(xp, A * 10.0 ** kA), to_xp(xp, b * sb), damp=damp * 10.0 ** kA,
                     atol=1e-10, btol=1e-10, maxiter=20 * n)
    v = info_np(info)
    assert np.all(np.isin(v["istop"], CONVERGED)), (case, v["istop"], v["itn"])
    got = scaled_back(x, kA, kb if b.ndim == 2 else kb[0])
    assert np.all(np.isfinite(got))
    err = rel_err(got.reshape(n, -1), ref.reshape(n, -1))
    assert err < 1e-6, (case, err, v["istop"], v["itn"])
