"""The loop runner: builds a problem for an operator and runs a method's
``init``/``step`` in the backend's loop. Traceable under JAX; no input checks
(those are the entry point's, `lsqdiff._solve`)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import array_api_compat as aac

from . import _lsmr, _validate
from ._info import ISTOP_NONFINITE
from ._scalars import ArrayScalars, HostArrayScalars, HostScalars
from ._stopping import Problem
from .backends import Backend
from .operator import Operator, Scaled, diagonal, function_operator, preconditioned


def run(A: Any, b: Any, x0: Any, damp: Any, *, xp: Any, backend: Backend, method: ModuleType,
         dtype: Any, maxiter: int, atol: float, btol: float, ctol: float,
         options: tuple[tuple[str, Any], ...], nan_on_nonfinite: bool = False
         ) -> dict[str, Any]:
    """Build the problem and run the loop; traceable under JAX.

    With ``nan_on_nonfinite`` (the gradient's internal solves) a column that
    stopped on a NaN or Inf (istop 8) returns NaN, not its last finite iterate:
    a NaN in the incoming gradient must give NaN gradients, never zeros."""
    device = aac.device(b)
    op = as_operator(A, xp, backend, dtype, device)
    b = xp.astype(b, dtype, copy=False)  # only read: LSMR/LSQR never write into b
    x0 = None if x0 is None else xp.astype(x0, dtype, copy=True)
    batch = tuple(b.shape[1:])
    scalar_dtype = real_dtype(xp, dtype)
    tiny = float(xp.finfo(dtype).smallest_normal)
    if backend.traced or batch:
        S, norm = backend.array_scalars(ArrayScalars(xp, scalar_dtype, device, batch, tiny))
    else:
        S, norm = backend.host_scalars(HostScalars(tiny))
    if xp.finfo(dtype).bits < 32:  # half precision: norms too in the scalars' float32
        norm = _in_dtype(norm, xp, scalar_dtype)
    m, n = op.shape
    # The iteration count is an int32 under JAX and for several right-hand sides;
    # no solve runs 2**31 - 1 iterations, so a larger limit means "no limit".
    maxiter = min(maxiter, _validate.MAX_ITERATIONS)
    problem = Problem(
        op=op, S=S, norm=norm,
        zeros_x=lambda: xp.zeros((n,) + batch, dtype=dtype, device=device),
        zeros_b=lambda: xp.zeros((m,) + batch, dtype=dtype, device=device),
        damp=S.const(damp), atol=atol, btol=btol, ctol=ctol, maxiter=maxiter,
        vec=backend.vector_ops(S),
    )
    state = method.init(problem, b, x0, **dict(options))
    if maxiter > 0:
        state = backend.while_loop(lambda st: S.any(st["istop"] < 0),
                                   lambda st: method.step(problem, st), state)
    # Columns still marked running only remain when maxiter = 0: that is the iteration limit.
    state["istop"] = S.where(state["istop"] < 0, 7, state["istop"])
    if nan_on_nonfinite:
        bad = state["istop"] == ISTOP_NONFINITE
        for key in ("x", "zx"):
            if key in state and (S.batched or bad):  # HostScalars: bad is a bool
                state[key] = S.where(bad, state[key] * float("nan"), state[key])
    if isinstance(S, HostArrayScalars):  # the results as arrays of the solve's namespace
        state = {k: S.to_vectors(v) for k, v in state.items()}
    return state


def lsmr_on(op: Operator, rhs: Any, *, xp: Any, backend: Backend, dtype: Any, atol: float,
            btol: float, ctol: float, maxiter: int | None = None,
            limit: int | None = None, dual: bool = False, stop: bool = False,
            x0: Any = None) -> Any:
    """Minimum-norm LSMR solution of ``op x = rhs`` for an internal operator
    (the gradient's and the tangent's solves); no input checks, traceable under JAX.

    Every solve inside a gradient goes through here. Runs at least
    ``min(op.shape)`` iterations (LSMR's default) if needed, more when the
    forward solve was allowed more; ``limit`` (the user's ``grad_maxiter``)
    replaces that rule with an exact iteration limit. ``x0``: a warm start
    (None: zeros), whose part in ``null(op)`` the result keeps; it is dropped
    where the solve is differentiated (``backend.internal_solver``), whose
    derivative is the pseudo-inverse's only from zero. With ``dual``, returns
    ``(x, z)`` with ``op^H z = x`` (`lsqdiff._dual`); with ``stop``, the triple
    ``(istop, norma, tilt)`` follows (``(x, stop)`` or ``(x, z, stop)``): the
    stop code, the estimate of ``||op||`` and `residual_tilt`; ``(None, None, None)`` where
    ``backend.internal_solver`` runs the solves (its ``z`` is then the
    minimum-norm one, exact by itself). A column that meets a NaN or Inf comes back
    NaN; each solve's diagnostics go to ``backend.report`` (a
    `lsqdiff.GradientSolveWarning` if it did not converge). Where the backend
    differentiates these solves themselves (PyTorch building a graph for second
    derivatives, or under ``torch.func``), ``backend.internal_solver`` runs them.
    """
    maxiter = max(min(op.shape), maxiter or 0) if limit is None else limit
    settings = dict(dtype=dtype, maxiter=maxiter, atol=atol, btol=btol, ctol=ctol)
    solve = backend.internal_solver()
    if solve is None:
        state = run(op, rhs, x0, 0.0, xp=xp, backend=backend, method=_lsmr,
                    options=(("dual", True),) if dual else (), nan_on_nonfinite=True, **settings)
        backend.report(state)
        x, z = state["x"], state.get("zx")
    else:
        x, state = solve(op, rhs, limit=limit, **settings)
        backend.report(state)
        if dual:
            # The dual as a solve of its own (minimum-norm z with op^H z = x), so
            # that it is differentiable as well.
            z, z_state = solve(Operator(op.shape[::-1], op.rmatvec, op.matvec), x,
                               limit=limit, **settings)
            backend.report(z_state)
    out = (x,) + ((z,) if dual else ())
    if stop:
        # A stop code of a differentiated solve may be batched apart from its
        # vectors (torch.func.vmap): the gradient does without it there.
        out += ((state["istop"], state["norma"], residual_tilt(state, xp)) if solve is None
                else (None, None, None),)
    return out if len(out) > 1 else out[0]


def residual_tilt(state: dict[str, Any], xp: Any) -> Any:
    """An estimate of the angle between a least-squares solve's computed residual
    ``r = b - A x`` and the exact one, ``||A (x - x*)|| / ||r||``, bounded by
    ``||A^H r|| cond(A) / (||A|| ||r||)`` (LSMR's or LSQR's estimates; 0 where
    ``r`` or ``A`` is zero)."""
    num, den = state["normar"] * state["conda"], state["norma"] * state["normr"]
    if isinstance(den, float):  # host scalars
        return num / den if den > 0 else 0.0
    positive = den > 0
    return xp.where(positive, num / xp.where(positive, den, xp.ones_like(den)),
                    xp.zeros_like(den))


def as_operator(A: Any, xp: Any, backend: Backend, dtype: Any, device: Any) -> Operator:
    if isinstance(A, Operator):
        return A
    if isinstance(A, Scaled):
        return preconditioned(as_operator(A.A, xp, backend, dtype, device), diagonal(A.d, xp),
                              A.damp, xp)
    if _validate.is_operator(A):
        return function_operator(
            A, xp, dtype, lambda matvec: backend.derive_rmatvec(matvec, A.shape, dtype, device),
            backend.lift)
    if backend.is_sparse(A):
        return backend.sparse_operator(A)
    return backend.dense_operator(xp.astype(A, dtype, copy=False))


def real_dtype(xp: Any, dtype: Any) -> Any:
    """The dtype of the scalar recurrences (and of damp's cotangent) for a solve in
    ``dtype``: float32 for float32 and complex64, and for float16 and bfloat16,
    whose range and precision are too small for them; else float64."""
    return xp.float32 if xp.finfo(dtype).bits <= 32 else xp.float64


def _in_dtype(norm: Any, xp: Any, dtype: Any) -> Any:
    """``norm`` computed on its vector cast to ``dtype``."""
    return lambda v: norm(xp.astype(v, dtype))
