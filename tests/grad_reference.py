"""Dense float64 references for the gradient tests (test_gradients.py,
test_torch_grad.py, test_jax_grad.py): closed forms of DESIGN.md section 2,
the exact solution map they differentiate, and central finite differences.

Every gradient here follows PyTorch's convention for complex numbers: the
gradient of a real loss L in z is dL/dRe z + i dL/dIm z, so that a first-order
change is dL = Re <grad, dz> = Re sum(conj(grad) * dz).
"""

from __future__ import annotations

import numpy as np

from conftest import make_problem

#: Forward settings tight enough that the gradients are those of the exact solution.
TIGHT_GRAD = dict(atol=1e-14, btol=1e-14, conlim=0.0, maxiter=500)

#: Singular values below this fraction of the largest count as zero in the references.
RCOND = 1e-10


#: name -> small problem (gradcheck, check_grads): (m, n), kind, damp, warm start, columns, complex.
SMALL = {
    "tall": dict(shape=(6, 4)),
    "wide": dict(shape=(4, 6)),
    "square": dict(shape=(5, 5)),
    "tall-damped": dict(shape=(6, 4), damp=0.5),
    "wide-damped": dict(shape=(4, 6), damp=0.7),
    "wide-x0": dict(shape=(4, 6), x0=True),
    "damped-x0": dict(shape=(6, 4), damp=0.5, x0=True),
    "2d-b": dict(shape=(6, 4), k=2, x0=True),
    "2d-b-damped": dict(shape=(4, 6), k=2, damp=0.3),
    "complex-tall": dict(shape=(6, 4), complex_=True),
    "complex-wide-damped-x0": dict(shape=(4, 6), complex_=True, damp=0.5, x0=True),
}


def small_problem(name: str):
    """``(A, b, x0, damp, x_bar)`` as NumPy arrays (x0 may be None; damp a float)."""
    return case_problem(SMALL[name], seed=sorted(SMALL).index(name), draw_seed_offset=700)


def case_problem(c: dict, seed: int, draw_seed_offset: int):
    """``(A, b, x0, damp, x_bar)`` for a case dict (keys ``shape`` and optionally
    ``kind``, ``k``, ``complex_``, ``x0``, ``damp``): ``make_problem`` from ``seed``,
    then ``x0`` (where asked) and ``x_bar`` drawn from ``seed + draw_seed_offset``."""
    A, b = make_problem(c["shape"], c.get("kind", "well"), seed=seed, k=c.get("k"),
                        complex_=c.get("complex_", False))
    rng = np.random.default_rng(seed + draw_seed_offset)
    xshape = (A.shape[1],) + b.shape[1:]

    def draw():
        z = rng.standard_normal(xshape)
        return z + 1j * rng.standard_normal(xshape) if c.get("complex_") else z

    x0 = draw() if c.get("x0") else None
    return A, b, x0, c.get("damp", 0.0), draw()


def cols(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 2 else a[:, None]


def vdot(a, b) -> float:
    """``Re <a, b>`` over all entries."""
    return float(np.real(np.sum(np.conj(a) * b)))


def dense_solve(A, b, x0=None, damp=0.0):
    """The solution map a solve computes (SciPy's semantics), densely:
    ``x0 + argmin_d ||A d - (b - A x0)||^2 + damp^2 ||d||^2``, the minimum-norm
    ``d`` when ``damp == 0``."""
    A = np.asarray(A)
    r0 = b if x0 is None else b - A @ x0
    if damp != 0:
        AH = A.conj().T
        d = np.linalg.solve(AH @ A + damp**2 * np.eye(A.shape[1]), AH @ r0)
    else:
        d = np.linalg.pinv(A, rcond=RCOND) @ r0
    return d if x0 is None else x0 + d


def closed_form(A, b, x0, damp, x_bar) -> dict:
    """Gradients of ``L = Re <x_bar, x>`` for ``x = dense_solve(A, b, x0, damp)``.

    Damped: ``g = (A^H A + damp^2 I)^-1 x_bar``, ``b_bar = A g``,
    ``A_bar = r g^H - b_bar x^H``, ``damp_bar = -2 damp Re<g, x - x0>``,
    ``x0_bar = damp^2 g``. Undamped (pseudo-inverse, any rank):
    ``b_bar = A^+H x_bar``, ``g = A^+ b_bar``, ``y = A^+H (x - x0)``,
    ``w = x_bar - A^H b_bar``, ``A_bar = -b_bar x^H + r g^H + y w^H``,
    ``x0_bar = w = (I - A^+ A) x_bar``, ``damp_bar = 0``.
    Works column by column for 2-D ``b`` (the gradient of A sums over columns).
    """
    A = np.asarray(A)
    n = A.shape[1]
    AH = A.conj().T
    x = dense_solve(A, b, x0, damp)
    X, B, XB = cols(x), cols(b), cols(x_bar)
    D = X if x0 is None else X - cols(x0)
    R = B - A @ X
    if damp != 0:
        G = np.linalg.solve(AH @ A + damp**2 * np.eye(n), XB)
        Bb = A @ G
        Ab = R @ G.conj().T - Bb @ X.conj().T
        X0b = damp**2 * G
        damp_bar = -2.0 * damp * vdot(G, D)
    else:
        P = np.linalg.pinv(A, rcond=RCOND)
        Bb = P.conj().T @ XB
        G = P @ Bb
        Y = P.conj().T @ D
        W = XB - AH @ Bb
        Ab = -Bb @ X.conj().T + R @ G.conj().T + Y @ W.conj().T
        X0b = W
        damp_bar = 0.0
    shape = lambda M, like: M.reshape(np.shape(like))  # noqa: E731
    return dict(x=x, A=Ab, b=shape(Bb, b), x0=None if x0 is None else shape(X0b, x0),
                damp=damp_bar)


def rank_factors(A):
    """``(L, R)`` with ``A = L R^H`` and ``rank(A)`` columns each (from the SVD)."""
    U, s, Vh = np.linalg.svd(A, full_matrices=False)
    r = int(np.sum(s > RCOND * s[0]))
    return U[:, :r] * s[:r], Vh[:r].conj().T


def central_difference(f, eps: float = 1e-6) -> float:
    """``(f(eps) - f(-eps)) / (2 eps)``: the derivative of a scalar function at 0."""
    return (f(eps) - f(-eps)) / (2.0 * eps)


def relerr(a, b) -> float:
    """``||a - b|| / max(||b||, tiny)`` (Frobenius for matrices)."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def assert_close(actual, expected, rtol: float, atol: float = 0.0, what: str = ""):
    """Norm-wise: ``||actual - expected|| <= rtol * ||expected|| + atol``."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), f"{what}: NaN/Inf"
    err = np.linalg.norm(actual - expected)
    bound = rtol * np.linalg.norm(expected) + atol
    assert err <= bound, f"{what}: ||err|| = {err:.3e} > {bound:.3e} (||ref|| = " \
                         f"{np.linalg.norm(expected):.3e})"
