"""The Jacobi (column-norm) preconditioner for ``precond=``."""

from __future__ import annotations

import math
import numbers
from typing import Any

import array_api_compat as aac

from . import _validate
from ._driver import as_operator, real_dtype
from ._solve import _solve_dtype
from .backends import backend_for


def jacobi(A: Any, *, damp: float = 0.0, like: Any = None, probes: int = 32,
           seed: int = 0) -> Any:
    """The Jacobi column scaling ``d_j = 1 / sqrt(||A e_j||^2 + damp^2)``.

    ``d`` makes the columns of ``[A diag(d); damp diag(d)]`` of unit norm, the
    operator a preconditioned solve works on: pass it as ``precond=d`` to
    `lsqdiff.lsmr` or `lsqdiff.lsqr` (with the same ``damp``). A zero column
    (with ``damp = 0``) gets ``d_j = 1``.

    Parameters
    ----------
    A : array, sparse matrix or LinearOperator of shape (m, n)
        A dense array or a sparse matrix (SciPy, torch ``sparse_coo``/``sparse_csr``,
        ``jax.experimental.sparse`` BCOO/BCSR, ``cupyx.scipy.sparse``): the column
        norms are exact. A `lsqdiff.LinearOperator` (or a SciPy
        ``LinearOperator``): they are estimated from ``probes`` random Gaussian
        probes ``w ~ N(0, I_m)``, as the mean of ``|(A^H w)_j|^2``, whose
        expectation is ``||A e_j||^2`` (an unbiased estimate, positive, with a
        relative error of about ``sqrt(2 / probes)`` per column): one block
        product ``A^H W``.
    damp : float, optional
        The damping of the solve the scaling is for.
    like : array, optional
        An array of the solve's framework (say ``b``): needed for a
        `LinearOperator`, whose framework, dtype and device it gives.
    probes : int, optional
        Number of random probes for a `LinearOperator`.
    seed : int, optional
        Seed of the probes (NumPy's generator, so the same on every framework).

    Returns
    -------
    d : array of shape (n,)
        Real, positive, in the real dtype of the operator's.

    Examples
    --------
    >>> import numpy as np, lsqdiff
    >>> A = np.array([[1.0, 0.0], [0.0, 1e4], [1.0, 1e4]])
    >>> d = lsqdiff.jacobi(A)
    >>> np.round(d * np.linalg.norm(A, axis=0), 12)
    array([1., 1.])
    >>> x, info = lsqdiff.lsmr(A, np.array([1.0, 2.0, 3.0]), precond=d)
    >>> info.itn
    2
    """
    _validate.check_tolerance("damp", damp)
    if not isinstance(probes, numbers.Integral) or isinstance(probes, bool) or probes < 1:
        raise ValueError(f"probes must be a positive int, got {probes!r}")
    xp, template = _namespace(A, like)
    backend = backend_for(xp)
    norms2 = None
    if not _validate.is_operator(A):
        if backend.is_sparse(A):
            norms2 = backend.sparse_column_norms2(A)
        else:
            _validate.check_same_framework("A", A, template, xp)
            a = xp.abs(A)
            norms2 = xp.sum(a * a, axis=0)
    if norms2 is None:
        norms2 = _probe_norms2(A, template, xp, backend, probes, seed)
    norms2 = norms2 + float(damp) ** 2
    one = xp.ones_like(norms2)
    return xp.where(norms2 > 0, one / xp.sqrt(xp.where(norms2 > 0, norms2, one)), one)


def _namespace(A: Any, like: Any) -> tuple[Any, Any]:
    """The framework of the scaling, and an array of it (A itself, or ``like``)."""
    if like is not None:
        return _validate.namespace_of_b(like), like
    if not _validate.is_operator(A):
        # A dense array, or a sparse matrix whose values are one (SciPy, cupyx, BCOO).
        for candidate in (A, getattr(A, "data", None)):
            try:
                return aac.array_namespace(candidate), candidate
            except TypeError:
                pass
        if hasattr(A, "matvec") and hasattr(A, "dtype"):  # a SciPy LinearOperator
            import numpy as np

            return aac.array_namespace(np.zeros(0)), np.zeros(0, dtype=A.dtype)
    raise TypeError(f"like: give an array of the solve's framework (say b) for A of type "
                    f"{type(A).__name__}, whose framework the scaling cannot tell")


def _probe_norms2(A: Any, like: Any, xp: Any, backend: Any, probes: int, seed: int) -> Any:
    """``mean_k |(A^H w_k)_j|^2`` over Gaussian probes ``w_k`` (unbiased for ``||A e_j||^2``)."""
    import numpy as np

    m, n = A.shape
    op_dtype = _validate.operator_dtype(A, xp) if _validate.is_operator(A) else A.dtype
    dtype = _solve_dtype(xp, op_dtype, like, None)
    device = aac.device(like)
    op = as_operator(A, xp, backend, dtype, device)
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((m, probes))
    if xp.isdtype(dtype, "complex floating"):
        W = (W + 1j * rng.standard_normal((m, probes))) / math.sqrt(2.0)
    W = xp.astype(xp.asarray(W, device=device), dtype)
    a = xp.abs(op.rmatvec(W))
    return xp.astype(xp.mean(a * a, axis=1), real_dtype(xp, dtype))
