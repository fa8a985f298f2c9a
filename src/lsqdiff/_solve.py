"""The driver behind `lsqdiff.lsmr` and `lsqdiff.lsqr`.

It checks the inputs, picks the backend and where the scalars live, runs a
method's ``init``/``step`` in the backend's loop and packs the results.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import array_api_compat as aac

from . import _validate
from ._info import CONVERGED_CODES, SolveInfo
from ._scalars import ArrayScalars, HostScalars
from ._stopping import Problem
from .backends import Backend, backend_for
from .operator import Operator, function_operator


def solve(method: ModuleType, A: Any, b: Any, *, damp: Any, x0: Any, atol: float,
          btol: float, conlim: float, maxiter: int | None, default_maxiter: Any,
          **method_options: Any) -> tuple[Any, dict[str, Any], Backend]:
    """Run ``method`` (the ``_lsmr`` or ``_lsqr`` module); returns ``x``, the final
    state's results and the backend used."""
    xp = _validate.namespace_of_b(b)
    backend = backend_for(xp)
    _validate.check_options(damp, atol, btol, conlim, maxiter)
    if x0 is not None:
        _validate.check_same_framework("x0", x0, b, xp)

    op_dtype, shape_A = _inspect_operator(A, b, xp, backend)
    _validate.check_shapes(shape_A, b, x0)
    if maxiter is None:
        maxiter = default_maxiter(*shape_A)
    settings = dict(
        method=method, dtype=_solve_dtype(xp, op_dtype, b, x0), maxiter=int(maxiter),
        atol=float(atol), btol=float(btol), ctol=1.0 / conlim if conlim > 0 else 0.0,
        options=tuple(sorted(method_options.items())),
    )
    run = functools.partial(_run, xp=xp, backend=backend, **settings)
    if backend.traced and not _validate.is_operator(A):
        # Dense and sparse A are arguments, so one compiled loop serves every call
        # with these settings; a LinearOperator's closures are not, so it runs as is.
        run = backend.compiled(tuple(settings.values()), run)
    with backend.untracked():
        state = run(A, b, x0, damp)
    return state["x"], state, backend


def _run(A: Any, b: Any, x0: Any, damp: Any, *, xp: Any, backend: Backend, method: ModuleType,
         dtype: Any, maxiter: int, atol: float, btol: float, ctol: float,
         options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """Build the problem and run the loop; traceable under JAX."""
    device = aac.device(b)
    op = _as_operator(A, xp, backend, dtype, device)
    b = xp.astype(b, dtype)
    x0 = None if x0 is None else xp.astype(x0, dtype, copy=True)
    batch = tuple(b.shape[1:])
    if backend.traced or batch:
        S: Any = ArrayScalars(xp, _real_dtype(xp, dtype), device, batch)
        norm = backend.array_norm
    else:
        S, norm = HostScalars(), backend.host_norm
    n = op.shape[1]
    problem = Problem(
        op=op, S=S, norm=norm,
        zeros_x=lambda: xp.zeros((n,) + batch, dtype=dtype, device=device),
        damp=S.const(damp), atol=atol, btol=btol, ctol=ctol, maxiter=maxiter,
    )
    state = method.init(problem, b, x0, **dict(options))
    if maxiter > 0:
        state = backend.while_loop(lambda st: S.any(st["istop"] < 0),
                                   lambda st: method.step(problem, st), state)
    # Columns still marked running only remain when maxiter = 0: that is the iteration limit.
    state["istop"] = S.where(state["istop"] < 0, 7, state["istop"])
    return state


def make_info(state: dict[str, Any], backend: Backend) -> SolveInfo:
    """Pack the final state's diagnostics, on the host for eager backends."""
    istop = state["istop"]
    if isinstance(istop, int):
        converged: Any = istop in CONVERGED_CODES
    else:
        converged = istop == CONVERGED_CODES[0]
        for code in CONVERGED_CODES[1:]:
            converged = converged | (istop == code)
    values = {k: state[k] for k in ("istop", "itn", "normr", "normar", "norma", "conda", "normx")}
    values["converged"] = converged
    if not backend.traced:
        values = {k: v if isinstance(v, (int, float, bool)) else backend.to_host(v)
                  for k, v in values.items()}
    return SolveInfo(**values)


def _inspect_operator(A: Any, b: Any, xp: Any, backend: Backend) -> tuple[Any, tuple[int, ...]]:
    """The operator's dtype (None: take b's) and shape, after checking its type."""
    if _validate.is_operator(A):
        return A.dtype, A.shape
    if backend.is_sparse(A):
        return getattr(A, "dtype", None), tuple(A.shape)
    _validate.check_same_framework("A", A, b, xp)
    return A.dtype, tuple(A.shape)


def _as_operator(A: Any, xp: Any, backend: Backend, dtype: Any, device: Any) -> Operator:
    if _validate.is_operator(A):
        rmatvec = A.rmatvec
        if rmatvec is None:
            rmatvec = backend.derive_rmatvec(A, dtype, device)
        return function_operator(A, rmatvec, xp, backend.lift)
    if backend.is_sparse(A):
        return backend.sparse_operator(A)
    return backend.dense_operator(xp.astype(A, dtype, copy=False))


def _solve_dtype(xp: Any, op_dtype: Any, b: Any, x0: Any) -> Any:
    """Common dtype of the inputs; integer and boolean inputs become the default float."""
    dtypes = [b.dtype] + ([] if op_dtype is None else [op_dtype])
    if x0 is not None:
        dtypes.append(x0.dtype)
    if not all(xp.isdtype(d, ("real floating", "complex floating")) for d in dtypes):
        info = xp.__array_namespace_info__().default_dtypes(device=aac.device(b))
        complex_ = any(xp.isdtype(d, "complex floating") for d in dtypes)
        dtypes = [d for d in dtypes if xp.isdtype(d, ("real floating", "complex floating"))]
        dtypes.append(info["complex floating" if complex_ else "real floating"])
    return xp.result_type(*dtypes)


def _real_dtype(xp: Any, dtype: Any) -> Any:
    return xp.float32 if dtype in (xp.float32, xp.complex64) else xp.float64
