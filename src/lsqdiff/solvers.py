"""The public solvers: LSMR and LSQR on any array-API framework."""

from __future__ import annotations

from typing import Any

from . import _lsmr, _lsqr, _precond
from ._info import SolveInfo, make_info
from ._solve import solve


def lsmr(A: Any, b: Any, *, damp: Any = 0.0, x0: Any = None, atol: float = 1e-6,
         btol: float = 1e-6, conlim: float = 1e8, maxiter: int | None = None,
         assume_full_rank: bool = False, grad_atol: float | None = None,
         grad_btol: float | None = None, grad_maxiter: int | None = None,
         precond: Any = None, precond_min_norm: bool = False) -> tuple[Any, SolveInfo]:
    """Solve ``min ||A x - b||^2 + damp^2 ||x - x0||^2`` with LSMR.

    LSMR (Fong & Saunders 2011) is MINRES applied to the normal equations:
    ``||A^H r||`` decreases monotonically, so it can be stopped early more
    safely than LSQR. Same stopping rules, stop codes and estimates as
    `scipy.sparse.linalg.lsmr`.

    Parameters
    ----------
    A : array, sparse matrix or LinearOperator of shape (m, n)
        A dense 2-D array of ``b``'s framework, that framework's sparse matrix
        (SciPy sparse or ``scipy.sparse.linalg.LinearOperator`` for NumPy,
        torch ``sparse_coo``/``sparse_csr``, ``jax.experimental.sparse.BCOO``,
        ``cupyx.scipy.sparse``), or a `lsqdiff.LinearOperator`.
    b : array of shape (m,) or (m, k)
        Right-hand side. With ``k`` columns, each is solved with its own
        recurrences and stopping test in one loop; a converged column stops
        changing.
    damp : float or 0-d real array, optional
        Damping ``lambda >= 0``. A concrete value (Python or NumPy scalar, 0-d
        array of any framework) is used as a float. A damp that is traced (JAX)
        or carries derivatives (a torch tensor that requires grad) stays an
        array of ``b``'s framework; its gradient rule is then chosen where the
        solve runs (the pseudo-inverse rule at 0). Complex damps are refused.
    x0 : array of shape (n,) or (n, k), optional
        Warm start; the damping then applies to ``x - x0`` (SciPy's semantics).
        Never modified.
    atol, btol : float, optional
        Stopping tolerances (SciPy's meaning): stop when ``||r|| <= btol ||b||
        + atol ||A|| ||x||`` or ``||A^H r|| <= atol ||A|| ||r||``.
    conlim : float, optional
        Stop when the estimate of ``cond([A; damp I])`` exceeds ``conlim``
        (0 disables the test).
    maxiter : int, optional
        Iteration limit; default ``min(m, n)``. Limits above ``2**31 - 1``
        are clamped to it.
    assume_full_rank : bool, optional
        Gradients only: ``A`` has full rank, so the gradient (or tangent) of
        an undamped solve is one LSMR solve instead of three: a tall ``A``
        has no null space and a wide one no residual, and the missing solve
        is read off the dual of a solve that runs anyway (see the gradients
        page of the docs). Wrong gradients if ``A`` is rank-deficient.
        Ignored when ``damp > 0``.
    grad_atol, grad_btol : float, optional
        Tolerances of the LSMR solves of the backward pass; default the
        forward's ``atol``, ``btol``.
    grad_maxiter : int, optional
        Iteration limit of each LSMR solve of the backward pass. By default
        each may run ``min(m, n)`` iterations, or ``maxiter`` if that is larger,
        so a forward solve capped at a few iterations may be followed by much
        longer backward solves; ``grad_maxiter = maxiter`` bounds them by the
        forward's budget (matfree's rule), at the cost of gradient accuracy
        when they stop on it.
    precond : array of shape (n,) or LinearOperator of shape (n, n), optional
        A right preconditioner ``N``: the solver works on ``A N`` and returns
        ``x = x0 + N y``. A 1-D array ``d`` of ``b``'s framework is the column
        scaling ``N = diag(d)`` (`lsqdiff.jacobi` builds the Jacobi one); a
        `LinearOperator` is a general nonsingular ``N`` (its ``rmatvec`` is
        ``N^H``, derived where the framework can). Damping is kept exact: the
        solve runs on ``[A N; damp N]``. The solution is the same as without
        it for a damped problem or an ``A`` of full column rank; for an undamped
        ``A`` with a null space (wide, or rank-deficient) it is the least-squares
        solution of least ``||N^-1 (x - x0)||``, see ``precond_min_norm``. The
        stopping tests are those above for the preconditioned problem (``A N``,
        ``y``); ``info`` reports the original problem's ``normr``, ``normar``
        and ``normx`` (computed from ``x``), and ``norma``, ``conda`` of ``A N``.
        Gradients (in ``A``, ``b``, ``x0``, ``damp``) are those of the same
        solution, and the backward pass's solves run on the preconditioned
        operator too; ``N`` is a constant (no gradient reaches it).
    precond_min_norm : bool, optional
        With ``precond`` and no damping: return the minimum-norm solution at any
        rank, by one more solve, unpreconditioned, of the consistent system
        ``A e = A (x_N - x0)`` (its iterations add to ``info.itn``; gradients
        then run through both solves). Ignored without ``precond`` or with
        ``damp > 0``.

    Returns
    -------
    x : array of shape (n,) or (n, k)
        The solution, in the dtype common to ``A``, ``b`` and ``x0`` (integer
        inputs become the framework's default float).
    info : SolveInfo
        ``istop, itn, normr, normar, norma, conda, normx, converged`` and
        ``message``; one entry per column for 2-D ``b``.

    Notes
    -----
    ``b = 0`` without ``x0`` returns zeros with ``istop = 0``; with ``x0`` the
    problem above is solved, with the stopping tests measured against
    ``||b - A x0||`` (SciPy's ``lsmr`` returns zeros there). NaN or Inf in ``b``, ``x0`` or the operator's output stops
    that column with ``istop = 8`` and ``converged = False``, returning the last
    finite iterate; so does a solution whose norm overflows. The answer does not
    depend on the scale of ``A`` and ``b`` (see the reliability page of the
    docs). float16 and bfloat16 solves run their scalars in float32. Under JAX
    the loop is a ``lax.while_loop``: the solve works under ``jax.jit`` and
    ``jax.vmap``.

    Gradients: under JAX (``jax.grad``, ``jax.vjp``) and PyTorch (``.backward()``,
    ``torch.autograd.grad``) the solve is differentiable in ``A`` (dense, sparse
    values, or the arrays a `LinearOperator` depends on), ``b``, ``x0`` and
    ``damp``. The backward pass costs one (damped) to three (pseudo-inverse) more
    LSMR solves, not the forward's iterations; see `lsqdiff.vjp` for NumPy and
    CuPy. Second derivatives are exact under both frameworks (see the
    gradients page). A solve of the backward pass that stops without
    converging raises `lsqdiff.GradientSolveWarning`;
    `lsqdiff.backward_diagnostics` collects their diagnostics.

    Examples
    --------
    >>> import numpy as np, lsqdiff
    >>> A = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> b = np.array([1.0, 3.0, 2.0])
    >>> x, info = lsqdiff.lsmr(A, b, atol=1e-12, btol=1e-12)
    >>> np.round(x, 6), info.converged
    (array([1., 2.]), True)
    """
    options = dict(damp=damp, x0=x0, atol=atol, btol=btol, conlim=conlim, maxiter=maxiter,
                   default_maxiter=lambda m, n: min(m, n),
                   assume_full_rank=assume_full_rank, grad_atol=grad_atol,
                   grad_btol=grad_btol, grad_maxiter=grad_maxiter)
    if precond is None:
        x, state, backend = solve(_lsmr, A, b, **options)
    else:
        x, state, backend = _precond.solve(_lsmr, A, b, precond=precond,
                                           min_norm=precond_min_norm, **options)
    return x, make_info(state, backend)


def lsqr(A: Any, b: Any, *, damp: Any = 0.0, x0: Any = None, atol: float = 1e-6,
         btol: float = 1e-6, conlim: float = 1e8, maxiter: int | None = None,
         assume_full_rank: bool = False, grad_atol: float | None = None,
         grad_btol: float | None = None, grad_maxiter: int | None = None,
         precond: Any = None, precond_min_norm: bool = False) -> tuple[Any, SolveInfo]:
    """Solve ``min ||A x - b||^2 + damp^2 ||x - x0||^2`` with LSQR.

    LSQR (Paige & Saunders 1982) is conjugate gradients on the normal
    equations, computed stably from the Golub-Kahan bidiagonalisation. Same
    stopping rules, stop codes and estimates as
    `scipy.sparse.linalg.lsqr`; ``info.normr`` is SciPy's ``r2norm``.

    Parameters
    ----------
    A : array, sparse matrix or LinearOperator of shape (m, n)
        A dense 2-D array of ``b``'s framework, that framework's sparse matrix
        (SciPy sparse or ``scipy.sparse.linalg.LinearOperator`` for NumPy,
        torch ``sparse_coo``/``sparse_csr``, ``jax.experimental.sparse.BCOO``,
        ``cupyx.scipy.sparse``), or a `lsqdiff.LinearOperator`.
    b : array of shape (m,) or (m, k)
        Right-hand side. With ``k`` columns, each is solved with its own
        recurrences and stopping test in one loop; a converged column stops
        changing.
    damp : float or 0-d real array, optional
        Damping ``lambda >= 0``. A concrete value (Python or NumPy scalar, 0-d
        array of any framework) is used as a float. A damp that is traced (JAX)
        or carries derivatives (a torch tensor that requires grad) stays an
        array of ``b``'s framework; its gradient rule is then chosen where the
        solve runs (the pseudo-inverse rule at 0). Complex damps are refused.
    x0 : array of shape (n,) or (n, k), optional
        Warm start; the damping then applies to ``x - x0`` (SciPy's semantics).
        Never modified.
    atol, btol : float, optional
        Stopping tolerances (SciPy's meaning): stop when ``||r|| <= btol ||b||
        + atol ||A|| ||x||`` or ``||A^H r|| <= atol ||A|| ||r||``.
    conlim : float, optional
        Stop when the estimate of ``cond([A; damp I])`` exceeds ``conlim``
        (0 disables the test).
    maxiter : int, optional
        Iteration limit; default ``2 n``. Limits above ``2**31 - 1`` are
        clamped to it.
    assume_full_rank : bool, optional
        Gradients only: ``A`` has full rank, so the gradient (or tangent) of
        an undamped solve is one LSMR solve instead of three: a tall ``A``
        has no null space and a wide one no residual, and the missing solve
        is read off the dual of a solve that runs anyway (see the gradients
        page of the docs). Wrong gradients if ``A`` is rank-deficient.
        Ignored when ``damp > 0``.
    grad_atol, grad_btol : float, optional
        Tolerances of the LSMR solves of the backward pass; default the
        forward's ``atol``, ``btol``.
    grad_maxiter : int, optional
        Iteration limit of each LSMR solve of the backward pass. By default
        each may run ``min(m, n)`` iterations, or ``maxiter`` if that is larger,
        so a forward solve capped at a few iterations may be followed by much
        longer backward solves; ``grad_maxiter = maxiter`` bounds them by the
        forward's budget (matfree's rule), at the cost of gradient accuracy
        when they stop on it.
    precond : array of shape (n,) or LinearOperator of shape (n, n), optional
        A right preconditioner ``N``: the solver works on ``A N`` and returns
        ``x = x0 + N y``. A 1-D array ``d`` of ``b``'s framework is the column
        scaling ``N = diag(d)`` (`lsqdiff.jacobi` builds the Jacobi one); a
        `LinearOperator` is a general nonsingular ``N`` (its ``rmatvec`` is
        ``N^H``, derived where the framework can). Damping is kept exact: the
        solve runs on ``[A N; damp N]``. The solution is the same as without
        it for a damped problem or an ``A`` of full column rank; for an undamped
        ``A`` with a null space (wide, or rank-deficient) it is the least-squares
        solution of least ``||N^-1 (x - x0)||``, see ``precond_min_norm``. The
        stopping tests are those above for the preconditioned problem (``A N``,
        ``y``); ``info`` reports the original problem's ``normr``, ``normar``
        and ``normx`` (computed from ``x``), and ``norma``, ``conda`` of ``A N``.
        Gradients (in ``A``, ``b``, ``x0``, ``damp``) are those of the same
        solution, and the backward pass's solves run on the preconditioned
        operator too; ``N`` is a constant (no gradient reaches it).
    precond_min_norm : bool, optional
        With ``precond`` and no damping: return the minimum-norm solution at any
        rank, by one more solve, unpreconditioned, of the consistent system
        ``A e = A (x_N - x0)`` (its iterations add to ``info.itn``; gradients
        then run through both solves). Ignored without ``precond`` or with
        ``damp > 0``.

    Returns
    -------
    x : array of shape (n,) or (n, k)
        The solution, in the dtype common to ``A``, ``b`` and ``x0`` (integer
        inputs become the framework's default float).
    info : SolveInfo
        ``istop, itn, normr, normar, norma, conda, normx, converged`` and
        ``message``; one entry per column for 2-D ``b``.

    Notes
    -----
    ``b = 0`` without ``x0`` returns zeros with ``istop = 0``; with ``x0`` the
    problem above is solved, with the stopping tests measured against
    ``||b - A x0||`` (SciPy's ``lsmr`` returns zeros there). NaN or Inf in ``b``, ``x0`` or the operator's output stops
    that column with ``istop = 8`` and ``converged = False``, returning the last
    finite iterate; so does a solution whose norm overflows. The answer does not
    depend on the scale of ``A`` and ``b`` (see the reliability page of the
    docs). float16 and bfloat16 solves run their scalars in float32. Under JAX
    the loop is a ``lax.while_loop``: the solve works under ``jax.jit`` and
    ``jax.vmap``.

    Gradients: under JAX (``jax.grad``, ``jax.vjp``) and PyTorch (``.backward()``,
    ``torch.autograd.grad``) the solve is differentiable in ``A`` (dense, sparse
    values, or the arrays a `LinearOperator` depends on), ``b``, ``x0`` and
    ``damp``. The backward pass costs one (damped) to three (pseudo-inverse) more
    LSMR solves, not the forward's iterations; see `lsqdiff.vjp` for NumPy and
    CuPy. Second derivatives are exact under both frameworks (see the
    gradients page). A solve of the backward pass that stops without
    converging raises `lsqdiff.GradientSolveWarning`;
    `lsqdiff.backward_diagnostics` collects their diagnostics.

    Examples
    --------
    >>> import numpy as np, lsqdiff
    >>> A = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> b = np.array([1.0, 3.0, 2.0])
    >>> x, info = lsqdiff.lsqr(A, b, damp=0.1)
    >>> np.round(x, 4)
    array([1.    , 1.9901])
    """
    options = dict(damp=damp, x0=x0, atol=atol, btol=btol, conlim=conlim, maxiter=maxiter,
                   default_maxiter=lambda m, n: 2 * n,
                   assume_full_rank=assume_full_rank, grad_atol=grad_atol,
                   grad_btol=grad_btol, grad_maxiter=grad_maxiter)
    if precond is None:
        x, state, backend = solve(_lsqr, A, b, **options)
    else:
        x, state, backend = _precond.solve(_lsqr, A, b, precond=precond,
                                           min_norm=precond_min_norm, **options)
    return x, make_info(state, backend)
