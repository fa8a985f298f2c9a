"""The loop runner: builds a problem for an operator and runs a method's
``init``/``step`` in the backend's loop. Traceable under JAX; no input checks
(those are the entry point's, `lsqdiff._solve`)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import array_api_compat as aac

from . import _lsmr, _validate
from ._scalars import ArrayScalars, HostScalars
from ._stopping import Problem
from .backends import Backend
from .operator import Operator, function_operator


def run(A: Any, b: Any, x0: Any, damp: Any, *, xp: Any, backend: Backend, method: ModuleType,
         dtype: Any, maxiter: int, atol: float, btol: float, ctol: float,
         options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """Build the problem and run the loop; traceable under JAX."""
    device = aac.device(b)
    op = as_operator(A, xp, backend, dtype, device)
    b = xp.astype(b, dtype)
    x0 = None if x0 is None else xp.astype(x0, dtype, copy=True)
    batch = tuple(b.shape[1:])
    if backend.traced or batch:
        S: Any = ArrayScalars(xp, real_dtype(xp, dtype), device, batch)
        norm = backend.array_norm
    else:
        S, norm = HostScalars(), backend.host_norm
    m, n = op.shape
    problem = Problem(
        op=op, S=S, norm=norm,
        zeros_x=lambda: xp.zeros((n,) + batch, dtype=dtype, device=device),
        zeros_b=lambda: xp.zeros((m,) + batch, dtype=dtype, device=device),
        damp=S.const(damp), atol=atol, btol=btol, ctol=ctol, maxiter=maxiter,
        vec=backend.vector_ops(S.batched),
    )
    state = method.init(problem, b, x0, **dict(options))
    if maxiter > 0:
        state = backend.while_loop(lambda st: S.any(st["istop"] < 0),
                                   lambda st: method.step(problem, st), state)
    # Columns still marked running only remain when maxiter = 0: that is the iteration limit.
    state["istop"] = S.where(state["istop"] < 0, 7, state["istop"])
    return state


def lsmr_on(op: Operator, rhs: Any, *, xp: Any, backend: Backend, dtype: Any, atol: float,
            btol: float, ctol: float, maxiter: int | None = None,
            limit: int | None = None, dual: bool = False, stop: bool = False) -> Any:
    """Minimum-norm LSMR solution of ``op x = rhs`` for an internal operator
    (the gradient's solves); no input checks, traceable under JAX.

    Runs at least ``min(op.shape)`` iterations (LSMR's default) if needed, more
    when the forward solve was allowed more; ``limit`` (the user's
    ``grad_maxiter``) replaces that rule with an exact iteration limit. With
    ``dual``, returns ``(x, z)`` with ``op^H z = x`` (`lsqdiff._dual`); with
    ``stop``, the pair ``(istop, norma)`` follows (``(x, stop)`` or ``(x, z, stop)``):
    the stop code and the estimate of ``||op||``."""
    maxiter = max(min(op.shape), maxiter or 0) if limit is None else limit
    state = run(op, rhs, None, 0.0, xp=xp, backend=backend, method=_lsmr, dtype=dtype,
                maxiter=maxiter, atol=atol, btol=btol, ctol=ctol,
                options=(("dual", True),) if dual else ())
    out = (state["x"],) + ((state["zx"],) if dual else ())
    out += ((state["istop"], state["norma"]),) if stop else ()
    return out if len(out) > 1 else out[0]


def as_operator(A: Any, xp: Any, backend: Backend, dtype: Any, device: Any) -> Operator:
    if isinstance(A, Operator):
        return A
    if _validate.is_operator(A):
        rmatvec = A.rmatvec
        if rmatvec is None:
            rmatvec = backend.derive_rmatvec(A, dtype, device)
        return function_operator(A, rmatvec, xp, backend.lift)
    if backend.is_sparse(A):
        return backend.sparse_operator(A)
    return backend.dense_operator(xp.astype(A, dtype, copy=False))


def real_dtype(xp: Any, dtype: Any) -> Any:
    return xp.float32 if dtype in (xp.float32, xp.complex64) else xp.float64
