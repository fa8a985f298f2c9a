"""SciPy drop-ins: ``scipy.sparse.linalg.lsmr`` and ``lsqr`` with SciPy's signatures.

Change ``from scipy.sparse.linalg import lsmr, lsqr`` to
``from lsqdiff.compat.scipy import lsmr, lsqr``: arguments, defaults and return
tuples are SciPy's, and the iterates agree with SciPy's to rounding. Inputs are
what SciPy accepts (arrays, ``np.matrix``, SciPy sparse matrices and arrays,
``scipy.sparse.linalg.LinearOperator``, column-vector or scalar ``b``); the
solve runs on lsqdiff's NumPy backend. For arrays of other frameworks use
`lsqdiff.lsmr` / `lsqdiff.lsqr`.

Differences from SciPy (both documented stop codes): a NaN or Inf stops with
``istop = 8``, and ``maxiter = 0`` (``iter_lim = 0``) reports ``istop = 7``.
``b = 0`` with ``x0`` solves the warm-started problem (SciPy returns zeros from
``lsmr`` and one step from ``lsqr``).
``show=True`` prints the problem and the final summary, not every iteration
(one summary per column for a 2-D ``b``, which SciPy does not accept).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from .. import _lsmr, _lsqr, _precond
from .._info import STOP_MESSAGES
from .._solve import solve

__all__ = ["lsmr", "lsqr"]


def lsmr(A: Any, b: Any, damp: float = 0.0, atol: float = 1e-6, btol: float = 1e-6,
         conlim: float = 1e8, maxiter: int | None = None, show: bool = False,
         x0: Any = None, *, precond: Any = None) -> tuple[Any, ...]:
    """SciPy's ``lsmr``: returns ``(x, istop, itn, normr, normar, norma, conda, normx)``.

    Parameters and returns are those of `scipy.sparse.linalg.lsmr`, plus one
    extension outside SciPy's signature: ``precond``, a right preconditioner
    (a 1-D NumPy array ``d`` for ``N = diag(d)``, or a `lsqdiff.LinearOperator`),
    as in `lsqdiff.lsmr`; ``normr``, ``normar`` and ``normx`` are then the
    original problem's, ``norma`` and ``conda`` those of ``A N``.

    Examples
    --------
    >>> import numpy as np
    >>> from lsqdiff.compat.scipy import lsmr
    >>> A = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> x, istop, itn, normr = lsmr(A, [1.0, 3.0, 2.0], atol=1e-12, btol=1e-12)[:4]
    >>> np.round(x, 6), istop
    (array([1., 2.]), 1)
    """
    A, b, x0 = _as_scipy_inputs(A, b, x0)
    if show:
        _print_header("LSMR", A, damp, atol, btol, conlim, "maxiter", maxiter)
    x, st, _ = _solve(_lsmr, A, b, precond, damp=damp, x0=x0, atol=atol, btol=btol,
                      conlim=conlim, maxiter=maxiter, default_maxiter=lambda m, n: min(m, n))
    out = (x, st["istop"], st["itn"], st["normr"], st["normar"], st["norma"], st["conda"],
           st["normx"])
    if show:
        _print_summary("LSMR", out[1:])
    return out


def lsqr(A: Any, b: Any, damp: float = 0.0, atol: float = 1e-6, btol: float = 1e-6,
         conlim: float = 1e8, iter_lim: int | None = None, show: bool = False,
         calc_var: bool = False, x0: Any = None, *, precond: Any = None) -> tuple[Any, ...]:
    """SciPy's ``lsqr``: returns ``(x, istop, itn, r1norm, r2norm, anorm, acond, arnorm, xnorm, var)``.

    Parameters and returns are those of `scipy.sparse.linalg.lsqr`, plus
    ``precond`` as for `lsmr` above (an extension; not with ``calc_var``).

    Examples
    --------
    >>> import numpy as np
    >>> from lsqdiff.compat.scipy import lsqr
    >>> A = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> x, istop, itn, r1norm = lsqr(A, [1.0, 3.0, 2.0], atol=1e-12, btol=1e-12)[:4]
    >>> np.round(x, 6), istop
    (array([1., 2.]), 1)
    """
    A, b, x0 = _as_scipy_inputs(A, b, x0)
    if show:
        _print_header("LSQR", A, damp, atol, btol, conlim, "iter_lim", iter_lim)
    if calc_var and precond is not None:
        raise ValueError("calc_var: the variance estimate is not available with precond")
    x, st, _ = _solve(_lsqr, A, b, precond, damp=damp, x0=x0, atol=atol, btol=btol,
                      conlim=conlim, maxiter=iter_lim, default_maxiter=lambda m, n: 2 * n,
                      calc_var=calc_var)
    var = st["var"] if calc_var else np.zeros(A.shape[1])
    out = (x, st["istop"], st["itn"], st["r1norm"], st["normr"], st["norma"], st["conda"],
           st["normar"], st["normx"], var)
    if show:
        _print_summary("LSQR", (out[1], out[2], out[4], out[7], out[5], out[6], out[8]))
    return out


def _solve(method: Any, A: Any, b: Any, precond: Any, **kwargs: Any) -> tuple[Any, ...]:
    if precond is None:
        return solve(method, A, b, **kwargs)
    if kwargs.get("calc_var") is False:
        del kwargs["calc_var"]
    return _precond.solve(method, A, b, precond=precond, **kwargs)


def _as_scipy_inputs(A: Any, b: Any, x0: Any) -> tuple[Any, Any, Any]:
    """Normalise inputs as SciPy does: ``aslinearoperator`` semantics, 1-D ``b``,
    and at least float64 (SciPy's ``result_type(A, b, float)``)."""
    if isinstance(A, np.ndarray) or not (sp.issparse(A) or isinstance(A, LinearOperator)):
        if hasattr(A, "shape") and not hasattr(A, "matvec"):
            A = np.asarray(A)
        else:
            A = aslinearoperator(A)
    b = np.atleast_1d(np.asarray(b))
    if b.ndim > 1:
        b = b.squeeze()
    if b.ndim == 0:
        b = b.reshape(1)
    arrays = [b] + ([] if x0 is None else [np.asarray(x0)])
    dtype = np.result_type(A.dtype, *arrays, np.float64)
    b = b.astype(dtype, copy=False)
    if x0 is not None:
        x0 = np.atleast_1d(np.asarray(x0, dtype=dtype))
    if isinstance(A, np.ndarray) and A.dtype != dtype:
        A = A.astype(dtype)
    return A, b, x0


def _print_header(name: str, A: Any, damp: float, atol: float, btol: float, conlim: float,
                  limit_name: str, limit: int | None) -> None:
    m, n = A.shape
    print(f"\n{name}            Least-squares solution of  Ax = b")
    print(f"The matrix A has {m} rows and {n} columns")
    print(f"damp = {damp:20.14e}")
    print(f"atol = {atol:8.2e}                 conlim = {conlim:8.2e}")
    print(f"btol = {btol:8.2e}             {limit_name} = {limit}")


def _print_summary(name: str, values: tuple[Any, ...]) -> None:
    """SciPy's closing summary; one per column for a 2-D ``b`` (an lsqdiff extension)."""
    if np.ndim(values[0]) == 0:
        _print_column(name, values)
        return
    for j in range(np.shape(values[0])[0]):
        _print_column(f"{name} (column {j})", tuple(np.asarray(v)[j] for v in values))


def _print_column(name: str, values: tuple[Any, ...]) -> None:
    istop, itn, normr, normar, norma, conda, normx = values
    print(f"\n{name} finished")
    print(STOP_MESSAGES[int(istop)])
    print(f"istop ={istop:8g}    normr ={normr:8.1e}")
    print(f"    normA ={norma:8.1e}    normAr ={normar:8.1e}")
    print(f"itn   ={itn:8g}    condA ={conda:8.1e}")
    print(f"    normx ={normx:8.1e}")
