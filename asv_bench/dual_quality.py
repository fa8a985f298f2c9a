#!/usr/bin/env python
"""Why the any-rank gradient takes three backward solves on the ``target`` rows.

    python asv_bench/dual_quality.py                 # both target problems, tol 1e-6 and 1e-8
    python asv_bench/dual_quality.py --tol 1e-6

On a rank-deficient ``A`` whose forward residual ``r`` and cotangent part
``w`` off the row space are both nonzero (``grad_common``'s ``_target``
problems, NumPy, float64), the gradient needs ``y = A^+H x`` and
``g = A^+ b_bar`` beside ``b_bar``. Each could come from the dual of a solve
that already ran (`lsqdiff._gradient.dual_pinv`): the forward's for ``y``, the
``b_bar`` solve's for ``g``. This prints, per dual:

* ``check``: the left side of the check the projected dual must pass divided
  by its right side (``<= 1`` passes; `lsqdiff._gradient._passes`);
* ``dual err``: its relative error against the dense ``pinv`` value, and that
  of the raw dual (its part in the null space of the adjoint not removed);

and per problem the relative error of ``dL/dA`` (against the dense closed form
at the same ``x``) as built (a dual that fails its check warm-starts the solve
that replaces it), with cold solves instead, and with every dual accepted
unchecked (the check patched to pass); and the iterations of a solve for ``y``
from zero and warm-started from the projected dual (with the part in
``null(A^H)`` that the warm start leaves behind). Writes no file.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks import grad_common as gc  # noqa: E402

PROBLEMS = ("tall_2000x500_rank400_target", "wide_500x2000_rank400_target")


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def duals(A, b, x_bar, tol):
    """Rows ``(which, check, projected dual err, raw dual err)`` for the forward's
    dual (y) and the b_bar solve's (g)."""
    import array_api_compat.numpy as xp

    from lsqdiff import _driver, _gradient
    from lsqdiff.backends import backend_for
    from lsqdiff.operator import Operator

    kw = dict(xp=xp, backend=backend_for(xp), dtype=np.float64, atol=tol, btol=tol, ctol=0.0,
              maxiter=10_000, dual=True, stop=True)
    P = np.linalg.pinv(A)
    rows = []
    for which, op, rhs, exact in (
            ("y (forward's dual)", Operator(A.shape, lambda v: A @ v, lambda u: A.T @ u), b,
             lambda s: P.T @ s),
            ("g (b_bar solve's dual)", Operator(A.shape[::-1], lambda u: A.T @ u, lambda v: A @ v),
             x_bar, lambda s: P @ s)):
        s, z, (istop, norma, tilt) = _driver.lsmr_on(op, rhs, **kw)
        p = _gradient._project_out(z, rhs - op.matvec(s), tilt, xp)[0]
        lhs = np.linalg.norm(s - op.rmatvec(p))
        rhs_ = tol * np.linalg.norm(s) + tol * norma * np.linalg.norm(p)
        rows.append((which, istop, lhs / rhs_, rel(p, exact(s)), rel(z, exact(s))))
    return rows


def gradient_errors(name, tol):
    """Relative error of dL/dA as built (a dual that fails its check warm-starts
    its solve), with cold solves instead, and with every dual accepted."""
    import lsqdiff
    from lsqdiff import _gradient

    A, b, _ = gc.grad_problem(name)
    t = gc.loss_target(name)
    P = np.linalg.pinv(A)
    out = []
    passes, project_out = _gradient._passes, _gradient._project_out

    def cold(*args):
        return project_out(*args)[0], False

    for label, patch in (("built", {}), ("cold", {"_project_out": cold}),
                         ("unchecked", {"_passes": lambda *a, **k: True})):
        for key, value in patch.items():
            setattr(_gradient, key, value)
        try:
            (x, _), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, atol=tol, btol=tol)
            x_bar = 2 * (x - t)
            got = pullback(x_bar).A.todense()
        finally:
            _gradient._passes, _gradient._project_out = passes, project_out
        b_bar = P.T @ x_bar
        ref = (-np.outer(b_bar, x) + np.outer(b - A @ x, P @ b_bar)
               + np.outer(P.T @ x, x_bar - A.T @ b_bar))
        out.append((label, rel(got, ref)))
    return out


def warm_start(name, tol):
    """Iterations of the y solve from zero and from the projected forward dual,
    and the relative size of each result's part in null(A^H)."""
    import array_api_compat.numpy as xp

    import lsqdiff
    from lsqdiff import _driver, _gradient
    from lsqdiff.backends import backend_for
    from lsqdiff.operator import Operator

    A, b, _ = gc.grad_problem(name)
    op = Operator(A.shape, lambda v: A @ v, lambda u: A.T @ u)
    x, z, (_, _, tilt) = _driver.lsmr_on(op, b, xp=xp, backend=backend_for(xp), dtype=np.float64,
                                         atol=tol, btol=tol, ctol=0.0, maxiter=10_000, dual=True,
                                         stop=True)
    p = _gradient._project_out(z, b - A @ x, tilt, xp)[0]
    y = np.linalg.pinv(A).T @ x
    Q = np.linalg.svd(A, full_matrices=False)[0][:, :np.linalg.matrix_rank(A)]
    rows = []
    for label, x0 in (("from zero", None), ("from the dual", p)):
        got, info = lsqdiff.lsmr(A.T, x, x0=x0, atol=tol, btol=tol, conlim=0.0, maxiter=10_000)
        null = got - Q @ (Q.T @ got)
        rows.append((label, int(info.itn), rel(got, y), float(np.linalg.norm(null) / np.linalg.norm(y))))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tol", type=float, action="append",
                    help="atol = btol of every solve (repeatable; default 1e-6 and 1e-8)")
    args = ap.parse_args(argv)
    tols = args.tol or [1e-6, 1e-8]
    print("| problem | tol | dual | istop | check (<= 1 passes) | dual err, projected | raw |")
    print("|---|---|---|---|---|---|---|")
    for name in PROBLEMS:
        A, b, _ = gc.grad_problem(name)
        for tol in tols:
            import lsqdiff

            x = lsqdiff.lsmr(A, b, atol=tol, btol=tol)[0]
            x_bar = 2 * (x - gc.loss_target(name))
            for which, istop, check, err, raw in duals(A, b, x_bar, tol):
                print(f"| {name} | {tol:g} | {which} | {istop} | {check:.0f} | {err:.1e} | {raw:.0f} |")
    print("\n| problem | tol | dL/dA rel. err: as built (warm starts) | cold solves | "
          "every dual accepted |")
    print("|---|---|---|---|---|")
    for name in PROBLEMS:
        for tol in tols:
            errs = dict(gradient_errors(name, tol))
            print(f"| {name} | {tol:g} | {errs['built']:.1e} | {errs['cold']:.1e} | "
                  f"{errs['unchecked']:.1e} |")
    print("\n| problem | tol | y solve | iterations | rel. err | part in null(A^H) |")
    print("|---|---|---|---|---|---|")
    for name in PROBLEMS:
        for tol in tols:
            for label, itn, err, null in warm_start(name, tol):
                print(f"| {name} | {tol:g} | {label} | {itn} | {err:.1e} | {null:.1e} |")


if __name__ == "__main__":
    main()
