#!/usr/bin/env python
"""An adversarial probe: does any solve or gradient come back wrong while it
says nothing? (no asv needed)

    python asv_bench/probe.py                 # every family, ~2 minutes on 2 cores
    python asv_bench/probe.py --quick         # a smoke subset (not the full counts)
    python asv_bench/probe.py --out DIR       # also writes DIR/probe.json (default: no file)

Runs families of hard cases over every installed backend (NumPy,
array-api-strict, JAX with x64, PyTorch) and sorts each outcome into one class:

* ``ok``: the right answer (to the tolerance the case states), or a clear
  error: a ``TypeError``/``ValueError``/``NotImplementedError`` whose message
  names the argument or the combination at fault;
* ``flagged``: not the right answer, but the solve says so (``converged`` is
  False, or a warning was raised about it);
* ``wrong``: a wrong answer with no signal: ``converged`` True, or a gradient
  returned without warning;
* ``unclear``: a crash with an error that does not say what the user did wrong
  (an internal traceback), or a stray warning from a valid solve.

Families: ``scale`` (A and b scaled by 1e-300 .. 1e300, LSMR and LSQR, tall,
wide and rank-deficient, against the float64 ``lstsq`` solution rescaled
exactly); ``nan-cotangent`` (a NaN in the incoming gradient must come out as
NaN); ``traced-damp-0`` (JAX ``jit(grad)`` with damp a traced 0);
``second-order`` (Hessian-vector products against a dense closed form);
``grad-maxiter`` (a backward solve stopped by its iteration limit must say
so); ``maxiter`` (huge iteration limits); ``inputs`` (damp of other types,
operators whose products return the wrong thing, dtypes as strings, half
precision, SciPy's ``show``); ``strict-promotion`` (complex JAX solves under
``jax.numpy_dtype_promotion("strict")``); ``transpose`` (``jax.linear_transpose``
of a solve in b); ``inference-mode`` (the null-space projection under
``torch.inference_mode``).

The printed table counts the classes per family; ``--verbose`` lists every case
that is not ``ok``. The probe sets ``JAX_ENABLE_X64`` for its own process
(a program may; the library never does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator

os.environ.setdefault("JAX_ENABLE_X64", "1")

import numpy as np  # noqa: E402

import lsqdiff  # noqa: E402

CLASSES = ("ok", "flagged", "wrong", "unclear")
Case = tuple[str, str, Callable[[], str]]  # (family, name, run -> class)


def _backends() -> dict[str, object]:
    found: dict[str, object] = {"numpy": np}
    for name, module in (("strict", "array_api_strict"), ("jax", "jax.numpy"), ("torch", "torch")):
        try:
            found[name] = __import__(module, fromlist=["_"])
        except ImportError:
            pass
    return found


BACKENDS = _backends()


def to_xp(name: str, a: np.ndarray):
    xp = BACKENDS[name]
    return xp.asarray(a.copy()) if name == "torch" else xp.asarray(a)


def to_np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except Exception:
        return np.from_dlpack(a)


def matrix(m: int, n: int, rank: int | None = None, seed: int = 0, complex_: bool = False
           ) -> np.ndarray:
    """``U diag(s) V^H`` with s in [1, 10] (cond 10), the last ``min(m,n) - rank`` zero."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    s = np.linspace(10.0, 1.0, r)
    if rank is not None:
        s[rank:] = 0.0

    def orth(k: int) -> np.ndarray:
        X = rng.standard_normal((k, r)) + (1j * rng.standard_normal((k, r)) if complex_ else 0)
        return np.linalg.qr(X)[0]

    return (orth(m) * s) @ orth(n).conj().T


def clear_error(exc: BaseException, *names: str) -> bool:
    """A user-facing exception type whose message names one of ``names``."""
    text = str(exc)
    return (isinstance(exc, (TypeError, ValueError, NotImplementedError))
            and any(n in text for n in names))


def relerr(x, ref) -> float:
    """``||x - ref|| / ||ref||``, both divided by ``max |ref|`` first (solutions
    near 1e200 would overflow the sums of squares)."""
    x, ref = to_np(x), np.asarray(ref)
    s = float(np.max(np.abs(ref))) if ref.size else 0.0
    if not (s > 0 and np.isfinite(s)):
        s = 1.0
    scale = np.linalg.norm(ref / s)
    return float(np.linalg.norm((x - ref) / s) / (scale if scale > 0 else 1.0))


@contextlib.contextmanager
def caught() -> Iterator[list]:
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        yield log


# --------------------------------------------------------------------------- #
# Families
# --------------------------------------------------------------------------- #

SCALES = (1e-300, 1e-200, 1e-160, 1e-100, 1e-22, 1e-11, 1.0, 1e11, 1e100, 1e160, 1e200, 1e300)
SHAPES = {"tall": (12, 8, None), "wide": (8, 12, None), "rankdef": (12, 8, 5)}


def scale_cases(quick: bool) -> Iterator[Case]:
    scales = (1e-200, 1e-22, 1.0, 1e200) if quick else SCALES
    for shape, (m, n, rank) in SHAPES.items():
        A = matrix(m, n, rank, seed=1)
        b = np.random.default_rng(2).standard_normal(m)
        x_ref = np.linalg.lstsq(A, b, rcond=None)[0]
        for sa in scales:
            for sb in scales:
                if not (sa == 1.0 or sb == 1.0 or sa == sb):
                    continue
                if abs(np.log10(sb / sa)) > 250:  # the answer itself is not representable
                    continue
                for method in ("lsmr", "lsqr"):
                    for be in BACKENDS:
                        yield ("scale", f"{method} {be} {shape} A*{sa:g} b*{sb:g}",
                               _scale_run(method, be, A * sa, b * sb, x_ref * (sb / sa)))


def _scale_run(method: str, be: str, A: np.ndarray, b: np.ndarray, ref: np.ndarray
               ) -> Callable[[], str]:
    def run() -> str:
        with caught() as log:
            x, info = getattr(lsqdiff, method)(to_xp(be, A), to_xp(be, b), atol=1e-10,
                                               btol=1e-10, maxiter=200)
        if log:
            return "unclear"
        if not bool(info.converged):
            return "flagged"
        return "ok" if relerr(x, ref) <= 1e-6 else "wrong"

    return run


def nan_cotangent_cases(quick: bool) -> Iterator[Case]:
    A = matrix(6, 4, seed=3)
    b = np.random.default_rng(4).standard_normal(6)
    x_bar = np.array([1.0, np.nan, 0.0, 0.0])
    for damp in (0.0, 0.5):
        for be in ("numpy", "strict"):
            def run(be=be, damp=damp) -> str:
                (x, _), pullback = lsqdiff.vjp(lsqdiff.lsmr, to_xp(be, A), to_xp(be, b), damp=damp)
                return _nan_class(pullback(to_xp(be, x_bar)).b)
            yield ("nan-cotangent", f"vjp {be} damp={damp}", run)
        if "torch" in BACKENDS:
            def run_torch(damp=damp) -> str:
                torch = BACKENDS["torch"]
                bt = torch.tensor(b, requires_grad=True)
                x, _ = lsqdiff.lsmr(torch.tensor(A), bt, damp=damp)
                x.backward(torch.tensor(x_bar))
                return _nan_class(bt.grad)
            yield ("nan-cotangent", f"torch damp={damp}", run_torch)
        if "jax" in BACKENDS:
            def run_jax(damp=damp) -> str:
                import jax
                f = lambda b_: lsqdiff.lsmr(jax.numpy.asarray(A), b_, damp=damp)[0]  # noqa: E731
                _, pullback = jax.vjp(f, jax.numpy.asarray(b))
                return _nan_class(pullback(jax.numpy.asarray(x_bar))[0])
            yield ("nan-cotangent", f"jax damp={damp}", run_jax)


def _nan_class(grad) -> str:
    return "ok" if np.isnan(to_np(grad)).any() else "wrong"


def traced_damp_cases(quick: bool) -> Iterator[Case]:
    if "jax" not in BACKENDS:
        return
    import jax
    import jax.numpy as jnp
    A = matrix(6, 4, seed=5)
    b = np.random.default_rng(6).standard_normal(6)
    P = np.linalg.pinv(A)
    x = P @ b
    ref_b = 2 * P.T @ x  # d sum(x^2) / db at damp 0

    def grad_b() -> str:
        f = lambda b_, d: jnp.sum(lsqdiff.lsmr(jnp.asarray(A), b_, damp=d, atol=1e-12,  # noqa: E731
                                              btol=1e-12)[0] ** 2)
        g = jax.jit(jax.grad(f))(jnp.asarray(b), 0.0)
        return "ok" if relerr(g, ref_b) <= 1e-6 else "wrong"

    def grad_damp() -> str:
        f = lambda d: jnp.sum(lsqdiff.lsmr(jnp.asarray(A), jnp.asarray(b), damp=d)[0])  # noqa: E731
        g = float(jax.grad(f)(0.0))
        return "ok" if g == 0.0 else "wrong"

    yield ("traced-damp-0", "jax jit(grad b) damp=0", grad_b)
    yield ("traced-damp-0", "jax grad damp at 0", grad_damp)


def second_order_cases(quick: bool) -> Iterator[Case]:
    """Gradient of g(Phi) = d/dPhi [sum(w^2) + sum(Phi^2)] along a direction,
    w = lsmr(Phi, y, damp), against a dense closed form in the same framework."""
    shapes = {"tall": (5, 3, None), "wide": (3, 5, None), "rankdef": (5, 4, 2)}
    for shape, (m, n, rank) in shapes.items():
        Phi = matrix(m, n, rank, seed=7)
        y = np.random.default_rng(8).standard_normal(m)
        for damp in (0.0, 0.7):
            if "torch" in BACKENDS:
                yield ("second-order", f"torch {shape} damp={damp}",
                       _torch_second(Phi, y, damp))
            if "jax" in BACKENDS:
                yield ("second-order", f"jax hessian {shape} damp={damp}",
                       _jax_second(Phi, y, damp))


def _dense_solution(lib, Phi, y, damp):
    n = Phi.shape[1]
    if damp > 0:
        return lib.linalg.solve(Phi.T @ Phi + damp ** 2 * lib.eye(n, dtype=Phi.dtype), Phi.T @ y)
    return lib.linalg.pinv(Phi) @ y


def _against_dense(derivative: Callable, y, damp: float, lib, names: tuple[str, ...]) -> str:
    """``derivative(solve)`` of lsqdiff's solve against the dense closed form's."""
    try:
        got = derivative(lambda P: lsqdiff.lsmr(P, y, damp=damp, atol=1e-13, btol=1e-13)[0])
    except Exception as exc:
        return "ok" if clear_error(exc, *names) else "unclear"
    ref = derivative(lambda P: _dense_solution(lib, P, y, damp))
    return "ok" if relerr(got, ref) <= 1e-5 else "wrong"


def _torch_second(Phi_np, y_np, damp) -> Callable[[], str]:
    def run() -> str:
        torch = BACKENDS["torch"]
        y = torch.tensor(y_np)

        def hvp(solve) -> np.ndarray:
            Phi = torch.tensor(Phi_np, requires_grad=True)
            w = solve(Phi)
            g, = torch.autograd.grad((w ** 2).sum() + (Phi ** 2).sum(), Phi, create_graph=True)
            h, = torch.autograd.grad(g.sum(), Phi)
            return h.numpy()

        return _against_dense(hvp, y, damp, torch, ("second", "double"))

    return run


def _jax_second(Phi_np, y_np, damp) -> Callable[[], str]:
    def run() -> str:
        import jax
        import jax.numpy as jnp
        y = jnp.asarray(y_np)

        def hess(solve) -> np.ndarray:
            return np.asarray(jax.hessian(lambda P: jnp.sum(solve(P) ** 2))(jnp.asarray(Phi_np)))

        return _against_dense(hess, y, damp, jnp, ("second", "hessian"))

    return run


def grad_maxiter_cases(quick: bool) -> Iterator[Case]:
    A = matrix(30, 20, seed=9)
    b = np.random.default_rng(10).standard_normal(30)
    ref = 2 * np.linalg.pinv(A).T @ np.linalg.pinv(A) @ b  # d sum(x^2) / db, undamped
    for be in ("numpy", "torch"):
        if be not in BACKENDS:
            continue

        def run(be=be) -> str:
            with caught() as log:
                if be == "torch":
                    torch = BACKENDS["torch"]
                    bt = torch.tensor(b, requires_grad=True)
                    x, _ = lsqdiff.lsmr(torch.tensor(A), bt, grad_maxiter=1)
                    (x ** 2).sum().backward()
                    g = bt.grad
                else:
                    (x, _), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, grad_maxiter=1)
                    g = pullback(2 * x).b
            if relerr(g, ref) <= 1e-4:
                return "ok"
            return "flagged" if log else "wrong"

        yield ("grad-maxiter", f"{be} grad_maxiter=1", run)


def maxiter_cases(quick: bool) -> Iterator[Case]:
    A = matrix(12, 8, seed=11)
    B = np.random.default_rng(12).standard_normal((12, 2))
    ref = np.linalg.lstsq(A, B, rcond=None)[0]
    for be in BACKENDS:
        for maxiter in (2 ** 31, 2 ** 63, 10 ** 30):
            for cols in (1, 2):
                def run(be=be, maxiter=maxiter, cols=cols) -> str:
                    b = B[:, 0] if cols == 1 else B
                    try:
                        x, info = lsqdiff.lsmr(to_xp(be, A), to_xp(be, b), maxiter=maxiter,
                                               atol=1e-10, btol=1e-10)
                    except Exception as exc:
                        return "ok" if clear_error(exc, "maxiter") else "unclear"
                    if not np.all(to_np(info.converged)):
                        return "flagged"
                    return "ok" if relerr(x, ref[:, 0] if cols == 1 else ref) <= 1e-6 else "wrong"

                yield ("maxiter", f"{be} maxiter={maxiter} cols={cols}", run)


def input_cases(quick: bool) -> Iterator[Case]:
    A = matrix(6, 4, seed=13)
    b = np.random.default_rng(14).standard_normal(6)
    x_ref = np.linalg.solve(A.T @ A + 0.25 * np.eye(4), A.T @ b)  # damp 0.5

    def damp_case(be: str, damp, backward: bool) -> Callable[[], str]:
        def run() -> str:
            try:
                with caught() as log:
                    if be == "torch" and backward:
                        torch = BACKENDS["torch"]
                        bt = torch.tensor(b, requires_grad=True)
                        x, info = lsqdiff.lsmr(torch.tensor(A), bt, damp=damp, atol=1e-12,
                                               btol=1e-12)
                        x.sum().backward()
                    elif be == "jax" and backward:
                        import jax
                        f = lambda b_: lsqdiff.lsmr(jax.numpy.asarray(A), b_, damp=damp)[0].sum()  # noqa: E731
                        jax.grad(f)(jax.numpy.asarray(b))
                        x, info = lsqdiff.lsmr(to_xp(be, A), to_xp(be, b), damp=damp, atol=1e-12,
                                               btol=1e-12)
                    else:
                        x, info = lsqdiff.lsmr(to_xp(be, A), to_xp(be, b), damp=damp, atol=1e-12,
                                               btol=1e-12)
            except Exception as exc:
                return "ok" if clear_error(exc, "damp") else "unclear"
            if isinstance(damp, complex) or np.iscomplexobj(np.asarray(to_np(damp))):
                return "wrong"  # a complex damp must be refused, not truncated
            if log:
                return "unclear"
            return "ok" if relerr(x, x_ref) <= 1e-8 else "wrong"

        return run

    damps = {"np.float64": np.float64(0.5), "complex": 0.5 + 0.1j}
    if "torch" in BACKENDS:
        damps["torch 0-d"] = BACKENDS["torch"].tensor(0.5, dtype=BACKENDS["torch"].float64)
    if "jax" in BACKENDS:
        damps["jax 0-d"] = BACKENDS["jax"].asarray(0.5)
    for be in BACKENDS:
        for dname, damp in damps.items():
            for backward in ((False, True) if be in ("torch", "jax") else (False,)):
                yield ("inputs", f"{be} damp={dname} backward={backward}",
                       damp_case(be, damp, backward))

    bad_outputs: dict[str, Callable] = {
        "short": lambda xp, v, m: xp.ones(m - 1, dtype=v.dtype),
        "(m,1)": lambda xp, v, m: xp.ones((m, 1), dtype=v.dtype),
        "None": lambda xp, v, m: None,
        "list": lambda xp, v, m: [1.0] * m,
        "numpy": lambda xp, v, m: np.ones(m),
        "float32": lambda xp, v, m: xp.ones(m, dtype=xp.float32),
    }
    for be in BACKENDS:
        for which in ("matvec", "rmatvec"):
            for out_name, out in bad_outputs.items():
                if out_name == "numpy" and be == "numpy":
                    continue
                yield ("inputs", f"{be} {which} returns {out_name}",
                       _bad_operator(be, A, b, which, out))

    if "torch" in BACKENDS:
        def dtype_string() -> str:
            torch = BACKENDS["torch"]
            At = torch.tensor(A)
            op = lsqdiff.LinearOperator(A.shape, lambda v: At @ v, lambda u: At.T @ u,
                                        dtype="float64")
            try:
                x, _ = lsqdiff.lsmr(op, torch.tensor(b), atol=1e-12, btol=1e-12)
            except Exception as exc:
                return "ok" if clear_error(exc, "dtype") else "unclear"
            return "ok" if relerr(x, np.linalg.lstsq(A, b, rcond=None)[0]) <= 1e-8 else "wrong"
        yield ("inputs", "torch LinearOperator(dtype='float64')", dtype_string)
    if "jax" in BACKENDS:
        import jax.numpy as jnp
        for dt in ("float16", "bfloat16"):
            def half(dt=dt) -> str:
                try:
                    x, info = lsqdiff.lsmr(jnp.asarray(A, dtype=dt), jnp.asarray(b, dtype=dt))
                except Exception as exc:
                    return "ok" if clear_error(exc, dt, "dtype") else "unclear"
                ref = np.linalg.lstsq(A, b, rcond=None)[0]
                if not bool(info.converged):
                    return "flagged"
                return "ok" if relerr(np.asarray(x, dtype=float), ref) <= 0.1 else "wrong"
            yield ("inputs", f"jax {dt}", half)

        def nonlinear() -> str:
            op = lsqdiff.LinearOperator(A.shape, lambda v: jnp.asarray(A) @ (v * v))
            try:
                lsqdiff.lsmr(op, jnp.asarray(b))
            except Exception as exc:
                return "ok" if clear_error(exc, "matvec", "linear") else "unclear"
            return "wrong"
        yield ("inputs", "jax non-linear matvec, derived rmatvec", nonlinear)

    def show_2d() -> str:
        from lsqdiff.compat import scipy as compat
        import io
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                compat.lsmr(A, np.stack([b, b], axis=1), show=True)
        except Exception as exc:
            return "ok" if clear_error(exc, "show") else "unclear"
        return "ok"
    yield ("inputs", "compat.scipy.lsmr show=True, 2-D b", show_2d)

    if "strict" in BACKENDS:
        def zero_column() -> str:
            B = np.stack([b, np.zeros(6)], axis=1)
            with caught() as log:
                x, info = lsqdiff.lsmr(to_xp("strict", A), to_xp("strict", B))
            return "unclear" if log else "ok"
        yield ("inputs", "strict zero column in 2-D b", zero_column)


def _bad_operator(be: str, A: np.ndarray, b: np.ndarray, which: str, out: Callable
                  ) -> Callable[[], str]:
    def run() -> str:
        xp = BACKENDS[be]
        At = to_xp(be, A)
        m, n = A.shape
        good_mv, good_rmv = (lambda v: At @ v), (lambda u: At.T @ u)
        bad = lambda v: out(xp, v, m if which == "matvec" else n)  # noqa: E731
        op = lsqdiff.LinearOperator(A.shape, bad if which == "matvec" else good_mv,
                                    bad if which == "rmatvec" else good_rmv)
        try:
            with caught():
                x, info = lsqdiff.lsmr(op, to_xp(be, b))
        except Exception as exc:
            return "ok" if clear_error(exc, which) else "unclear"
        return "flagged" if not bool(np.all(to_np(info.converged))) else "wrong"

    return run


def strict_promotion_cases(quick: bool) -> Iterator[Case]:
    if "jax" not in BACKENDS:
        return
    import jax
    import jax.numpy as jnp
    A = matrix(8, 5, seed=15, complex_=True)
    b = np.random.default_rng(16).standard_normal(8) + 1j
    ref = np.linalg.lstsq(A, b, rcond=None)[0]
    for method in ("lsmr", "lsqr"):
        for damp in (0.0, 0.5):
            def run(method=method, damp=damp) -> str:
                try:
                    with jax.numpy_dtype_promotion("strict"):
                        x, info = getattr(lsqdiff, method)(jnp.asarray(A), jnp.asarray(b),
                                                           damp=damp, atol=1e-12, btol=1e-12)
                except Exception:
                    return "unclear"
                want = ref if damp == 0 else np.linalg.solve(
                    A.conj().T @ A + damp ** 2 * np.eye(5), A.conj().T @ b)
                return "ok" if relerr(x, want) <= 1e-8 else "wrong"
            yield ("strict-promotion", f"jax {method} complex damp={damp}", run)


def transpose_cases(quick: bool) -> Iterator[Case]:
    if "jax" not in BACKENDS:
        return
    import jax
    import jax.numpy as jnp
    A = matrix(7, 4, seed=17)
    c = np.random.default_rng(18).standard_normal(4)

    def run() -> str:
        f = lambda b_: lsqdiff.lsmr(jnp.asarray(A), b_, atol=1e-12, btol=1e-12)[0]  # noqa: E731
        try:
            t = jax.linear_transpose(f, jax.ShapeDtypeStruct((7,), jnp.float64))
            got = t(jnp.asarray(c))[0]
        except Exception as exc:
            return "ok" if clear_error(exc, "transpose") else "unclear"
        return "ok" if relerr(got, np.linalg.pinv(A).T @ c) <= 1e-6 else "wrong"

    yield ("transpose", "jax.linear_transpose in b", run)


def inference_mode_cases(quick: bool) -> Iterator[Case]:
    if "torch" not in BACKENDS:
        return
    torch = BACKENDS["torch"]

    def run() -> str:
        from lsqdiff import nullspace
        theta = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
        h = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
        constraint = lambda t: (t.sum() - 6.0).reshape(1)  # noqa: E731
        try:
            with torch.inference_mode():
                d, info = nullspace.project(h, constraint, theta)
        except Exception as exc:
            return "ok" if clear_error(exc, "inference") else "unclear"
        ok = abs(float(d.sum())) <= 1e-8  # projected onto sum(d) = 0
        if ok:
            return "ok"
        return "wrong" if bool(info.converged) else "flagged"

    yield ("inference-mode", "torch nullspace.project under inference_mode", run)


FAMILIES = {
    "scale": scale_cases, "nan-cotangent": nan_cotangent_cases,
    "traced-damp-0": traced_damp_cases, "second-order": second_order_cases,
    "grad-maxiter": grad_maxiter_cases, "maxiter": maxiter_cases, "inputs": input_cases,
    "strict-promotion": strict_promotion_cases, "transpose": transpose_cases,
    "inference-mode": inference_mode_cases,
}


def run_probe(families: list[str], quick: bool, verbose: bool) -> dict:
    counts: dict[str, Counter] = defaultdict(Counter)
    cases: list[dict] = []
    for fam in families:
        for family, name, fn in FAMILIES[fam](quick):
            try:
                cls = fn()
            except Exception as exc:  # anything a case did not expect
                cls, name = "unclear", f"{name}: {type(exc).__name__}: {str(exc)[:120]}"
            counts[family][cls] += 1
            cases.append({"family": family, "case": name, "class": cls})
            if verbose and cls != "ok":
                print(f"  [{cls}] {family}: {name}", flush=True)
    return {"counts": {f: dict(c) for f, c in counts.items()}, "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke subset (not the full probe)")
    parser.add_argument("--family", action="append", choices=list(FAMILIES),
                        help="run only these families (repeatable)")
    parser.add_argument("--out", help="directory to write probe.json into")
    parser.add_argument("--verbose", action="store_true", help="list every case that is not ok")
    args = parser.parse_args()
    result = run_probe(args.family or list(FAMILIES), args.quick, args.verbose)
    if args.quick:
        print("(--quick: a smoke subset of the probe, not its full counts)")
    print(f"backends: {', '.join(BACKENDS)}")
    print(f"{'family':<18}" + "".join(f"{c:>9}" for c in CLASSES) + f"{'total':>8}")
    totals: Counter = Counter()
    for family, c in result["counts"].items():
        totals.update(c)
        print(f"{family:<18}" + "".join(f"{c.get(k, 0):>9}" for k in CLASSES)
              + f"{sum(c.values()):>8}")
    print(f"{'all':<18}" + "".join(f"{totals.get(k, 0):>9}" for k in CLASSES)
          + f"{sum(totals.values()):>8}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "probe.json"), "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
