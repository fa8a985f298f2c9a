"""The gradient of a solve by hand, for frameworks without autodiff (NumPy, CuPy).

Under JAX and PyTorch the solvers are differentiable directly; `vjp` gives the
same backward pass (the same few LSMR solves) as an explicit function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _lsmr, _lsqr, _precond
from ._diagnostics import backward_diagnostics
from ._terms import Terms
from ._info import SolveInfo, make_info
from ._solve import prepare
from .solvers import lsmr, lsqr


@dataclass(frozen=True)
class LowRank:
    """The gradient of ``A`` as ``sum_k s_k U_k V_k^H``, never formed unless asked.

    ``U_k`` has shape ``(m,)`` or ``(m, j)`` and ``V_k`` ``(n,)`` or ``(n, j)``
    (one column per right-hand side).
    """

    _terms: Terms
    _xp: Any
    shape: tuple[int, int]

    @property
    def terms(self) -> tuple[tuple[float, Any, Any], ...]:
        """The ``(s_k, U_k, V_k)`` triples."""
        return self._terms.terms

    def todense(self) -> Any:
        """The ``(m, n)`` gradient as a dense array."""
        return self._terms.dense(self._xp)

    def matvec(self, v: Any) -> Any:
        """``G v`` for the gradient ``G``, without forming it."""
        xp = self._xp
        return sum(s * _cols(U) @ (xp.conj(_cols(V)).T @ v) for s, U, V in self.terms)

    def rmatvec(self, u: Any) -> Any:
        """``G^H u`` for the gradient ``G``, without forming it."""
        xp = self._xp
        return sum(s * _cols(V) @ (xp.conj(_cols(U)).T @ u) for s, U, V in self.terms)

    def vjp(self, bilinear_grad: Callable[[Any, Any], Any]) -> Any:
        """Gradient of the operator's parameters theta.

        ``bilinear_grad(u, v)`` must return the gradient in theta of
        ``Re <u, A(theta) v>`` for vectors ``u`` (m,) and ``v`` (n,); it is called
        once per term and column, and the results are summed with their scales.
        """
        total = None
        for s, U, V in self.terms:
            U2, V2 = _cols(U), _cols(V)
            for j in range(U2.shape[1]):
                g = bilinear_grad(U2[:, j], V2[:, j])
                total = _axpy(s, g, total)
        return total


@dataclass(frozen=True)
class Gradients:
    """What `vjp`'s pullback returns: the gradients of a solve's inputs.

    ``x0`` is None when the solve had no warm start; ``damp`` is a Python float.
    ``info`` holds the `SolveInfo` of each LSMR solve the pullback ran (a
    `lsqdiff.GradientSolveWarning` is raised for one that did not converge).
    """

    A: LowRank
    b: Any
    x0: Any
    damp: float
    info: tuple[SolveInfo, ...] = ()


def vjp(solver: Callable[..., Any], A: Any, b: Any, **kwargs: Any
        ) -> tuple[tuple[Any, SolveInfo], Callable[[Any], Gradients]]:
    """Solve, and return the pullback that maps ``x_bar`` to the inputs' gradients.

    Parameters
    ----------
    solver : `lsqdiff.lsmr` or `lsqdiff.lsqr`
        The solver to run (the backward pass always uses LSMR).
    A, b, **kwargs
        As for the solver, including ``damp``, ``x0``, ``assume_full_rank``,
        ``grad_atol``, ``grad_btol``, ``grad_maxiter``, ``precond`` (the
        pullback's solves are then preconditioned too) and ``precond_min_norm``.

    Returns
    -------
    (x, info) : tuple
        The solver's result.
    pullback : callable
        ``pullback(x_bar) -> Gradients`` with ``.b``, ``.x0``, ``.damp`` and
        ``.A`` (a `LowRank`), and ``.info``, the diagnostics of the
        pullback's own solves. A NaN in ``x_bar`` gives NaN gradients.
        Gradients of complex inputs follow PyTorch's convention:
        ``dL/dRe z + i dL/dIm z``.

    Examples
    --------
    >>> import numpy as np, lsqdiff
    >>> A = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> b = np.array([1.0, 3.0, 2.0])
    >>> (x, info), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, atol=1e-12, btol=1e-12)
    >>> grads = pullback(np.array([1.0, 0.0]))  # d x[0] / d b
    >>> np.round(grads.b, 6)
    array([ 0.666667,  0.333333, -0.333333])
    >>> np.round(np.linalg.pinv(A)[0], 6)
    array([ 0.666667,  0.333333, -0.333333])
    """
    methods = {lsmr: (_lsmr, lambda m, n: min(m, n)), lsqr: (_lsqr, lambda m, n: 2 * n)}
    if solver not in methods:
        raise TypeError(f"solver must be lsqdiff.lsmr or lsqdiff.lsqr, got {solver!r}")
    method, default_maxiter = methods[solver]
    kwargs = {"damp": 0.0, "x0": None, "atol": 1e-6, "btol": 1e-6, "conlim": 1e8,
              "maxiter": None, **kwargs}
    precond = kwargs.pop("precond", None)
    min_norm = kwargs.pop("precond_min_norm", False)
    if precond is None:
        p = prepare(method, A, b, default_maxiter=default_maxiter, **kwargs)
        with p.backend.solve_context():
            state, y = p.run_differentiated(*p.args)
        x, backend, xp = state["x"], p.backend, p.xp
        A_, b_, x0_, damp_ = p.args

        def backward(x_bar: Any) -> Any:
            return p.backward(A_, b_, x0_, damp_, x, x_bar, y)
    else:
        x, state, backend, backward = _precond.vjp(
            method, A, b, precond=precond, min_norm=min_norm, default_maxiter=default_maxiter,
            **kwargs)
        xp = backend.xp
    shape = (b.shape[0], x.shape[0])

    def pullback(x_bar: Any) -> Gradients:
        if tuple(x_bar.shape) != tuple(x.shape):
            raise ValueError(f"x_bar must have the shape of x, {tuple(x.shape)}, got "
                             f"{tuple(x_bar.shape)}")
        with backend.solve_context(), backward_diagnostics() as log:
            cot = backward(x_bar)
        return Gradients(LowRank(cot.A, xp, shape), cot.b, cot.x0, float(cot.damp), tuple(log))

    return (x, make_info(state, backend)), pullback


def _cols(a: Any) -> Any:
    return a if a.ndim == 2 else a[:, None]


def _axpy(s: float, g: Any, total: Any) -> Any:
    """``total + s * g`` for arrays or pytrees of them (dicts, lists, tuples)."""
    if isinstance(g, dict):
        return {k: _axpy(s, v, None if total is None else total[k]) for k, v in g.items()}
    if isinstance(g, (list, tuple)):
        return type(g)(_axpy(s, v, None if total is None else t)
                       for v, t in zip(g, total if total is not None else [None] * len(g)))
    return s * g if total is None else total + s * g
