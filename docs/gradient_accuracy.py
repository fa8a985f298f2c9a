"""Gradient accuracy against the forward solve's tolerance (docs/gradients.md).

For fixed tall (200x50), wide (50x200) and damped (200x50, damp = 1e-2)
problems with singular values log-spaced in [1e-3, 1] (cond 1e3), runs
``lsqdiff.vjp(lsqdiff.lsmr, ...)`` with atol = btol = tol in float64 and
float32, pulls back a fixed random ``x_bar``, and prints a markdown table of
the norm-wise relative errors of x, of the gradient in b and of the gradient in
A (formed densely) against the dense closed forms evaluated in float64 at the
same (rounded) inputs. The backward solves use the forward's tolerances, as
they do by default; the rows marked "backward" tighten them with grad_atol and
grad_btol. A second table counts the products with A and A^T (one column each)
that the forward and backward passes take in float64 at tol = 1e-8.

Run: python docs/gradient_accuracy.py
"""

from __future__ import annotations

import numpy as np

import lsqdiff

#: (dtype, forward atol = btol, backward grad_atol = grad_btol or None: the forward's)
ROWS = [("float64", 1e-4, None), ("float64", 1e-6, None), ("float64", 1e-8, None),
        ("float64", 1e-10, None), ("float64", 1e-6, 1e-10),
        ("float32", 1e-3, None), ("float32", 1e-4, None), ("float32", 1e-5, None),
        ("float32", 1e-4, 1e-6)]
PROBLEMS = {"tall": ((200, 50), 0.0), "wide": ((50, 200), 0.0), "damped": ((200, 50), 1e-2)}


def problem(m: int, n: int, seed: int):
    """``A = U diag(s) V^T`` with s log-spaced in [1e-3, 1], a random b and x_bar."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    U = np.linalg.qr(rng.standard_normal((m, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    A = (U * np.logspace(0, -3, r)) @ V.T
    return A, rng.standard_normal(m), rng.standard_normal(n)


def closed_form(A, b, damp, x_bar):
    """x and the gradients of Re<x_bar, x> in b and A (DESIGN.md section 2), densely."""
    if damp:
        M = A.T @ A + damp**2 * np.eye(A.shape[1])
        x = np.linalg.solve(M, A.T @ b)
        g = np.linalg.solve(M, x_bar)
        b_bar = A @ g
        return x, b_bar, np.outer(b - A @ x, g) - np.outer(b_bar, x)
    P = np.linalg.pinv(A)
    x = P @ b
    b_bar = P.T @ x_bar
    g, y, w = P @ b_bar, P.T @ x, x_bar - A.T @ b_bar
    return x, b_bar, -np.outer(b_bar, x) + np.outer(b - A @ x, g) + np.outer(y, w)


def relerr(a, ref) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - ref) / np.linalg.norm(ref))


def accuracy_table(problems) -> None:
    head = ["dtype", "atol = btol"]
    for name in PROBLEMS:
        head += [f"{name}: x", f"{name}: b̄", f"{name}: Ā"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for dtype, tol, grad_tol in ROWS:
        label = f"{tol:.0e}" + ("" if grad_tol is None else f", backward {grad_tol:.0e}")
        row = [dtype, label]
        for (A, b, x_bar), damp in problems.values():
            A_, b_, xb_ = (v.astype(dtype) for v in (A, b, x_bar))
            x_ref, b_ref, A_ref = closed_form(A_.astype(np.float64), b_.astype(np.float64),
                                              damp, xb_.astype(np.float64))
            (x, info), pullback = lsqdiff.vjp(lsqdiff.lsmr, A_, b_, damp=damp, atol=tol,
                                              btol=tol, maxiter=2000, grad_atol=grad_tol,
                                              grad_btol=grad_tol)
            if not info.converged:
                raise RuntimeError(f"{dtype} tol={tol}: forward did not converge: {info}")
            grads = pullback(xb_)
            row += [f"{relerr(x, x_ref):.1e}", f"{relerr(grads.b, b_ref):.1e}",
                    f"{relerr(grads.A.todense(), A_ref):.1e}"]
        print("| " + " | ".join(row) + " |")


def cost_table(problems, tol: float = 1e-8) -> None:
    """Products with A and A^T (per column) in the forward and backward passes."""
    print("| problem | forward | backward | backward, assume_full_rank |")
    print("|---|---|---|---|")
    for name, ((A, b, x_bar), damp) in problems.items():
        counts = []
        for full_rank in (False, True):
            calls = [0]

            def count(M):
                def apply(v):
                    calls[0] += 1
                    return M @ v
                return apply

            op = lsqdiff.LinearOperator(A.shape, count(A), count(A.T))
            (_, info), pullback = lsqdiff.vjp(lsqdiff.lsmr, op, b, damp=damp, atol=tol, btol=tol,
                                              maxiter=2000, assume_full_rank=full_rank)
            assert info.converged, info
            forward = calls[0]
            pullback(x_bar)
            counts += [forward, calls[0] - forward]
        print(f"| {name} (damp = {PROBLEMS[name][1]:g}) | {counts[0]} | {counts[1]} | "
              f"{counts[3]} |")


def main() -> None:
    problems = {name: (problem(*shape, seed=i), damp)
                for i, (name, (shape, damp)) in enumerate(PROBLEMS.items())}
    accuracy_table(problems)
    print()
    cost_table(problems)


if __name__ == "__main__":
    main()
