"""The entry point behind `lsqdiff.lsmr` and `lsqdiff.lsqr`.

It checks the inputs, fixes the settings, hands the solve and its gradient rule
to the backend (which registers the rule with its framework's autodiff) and
packs the results.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import array_api_compat as aac

from . import _driver, _dual, _validate
from ._gradient import Cotangents, forward_dual, pullback, pushforward
from .backends import Backend, backend_for
from .operator import Operator, Scaled


@dataclass(frozen=True)
class Prepared:
    """A checked solve, ready to run and to differentiate.

    ``run(A, b, x0, damp)`` returns the final state; ``run_differentiated`` the
    same and ``y``, what the gradient takes from the forward solve (for an
    undamped solve, `lsqdiff._gradient.forward_dual` of the dual it carried, see
    `lsqdiff._dual`; else None); ``backward(A, b, x0, damp, x, x_bar, y)`` the
    `Cotangents`; ``tangent(A, b, x0, damp, x, y, dA, db, dx0, ddamp)`` the
    tangent of ``x`` (``dA`` an `Operator` of products with A's tangent; None
    for a zero tangent); ``operator(A)`` the products with ``A``. They
    take the inputs as arguments so that adapters can pass traced or detached
    versions of them. ``cache_key`` is None, or a hashable key such that every
    `Prepared` with that key has ``backward``, ``tangent`` and ``operator`` that
    act alike (traced backends compile them once per key). ``carries_dual``: whether
    ``run_differentiated`` returns a ``y``.
    """

    backend: Backend
    xp: Any
    dtype: Any
    run: Callable[..., dict[str, Any]]
    run_differentiated: Callable[..., tuple[dict[str, Any], Any]]
    backward: Callable[..., Cotangents]
    tangent: Callable[..., Any]
    operator: Callable[[Any], Operator]
    args: tuple[Any, Any, Any, Any]
    cache_key: Any = None
    carries_dual: bool = False


def prepare(method: ModuleType, A: Any, b: Any, *, damp: Any, x0: Any, atol: float,
            btol: float, conlim: float, maxiter: int | None, default_maxiter: Any,
            assume_full_rank: bool = False, grad_atol: float | None = None,
            grad_btol: float | None = None, grad_maxiter: int | None = None,
            nan_on_nonfinite: bool = False, **method_options: Any) -> Prepared:
    """Check the inputs of a solve with ``method`` (``_lsmr`` or ``_lsqr``);
    ``nan_on_nonfinite`` for a gradient's internal solve (`lsqdiff._driver.run`)."""
    xp = _validate.namespace_of_b(b)
    backend = backend_for(xp)
    _validate.check_options(atol, btol, conlim, maxiter)
    damp = _validate.check_damp(damp, b, xp)
    for name, tol in (("grad_atol", grad_atol), ("grad_btol", grad_btol)):
        if tol is not None:
            _validate.check_tolerance(name, tol)
    _validate.check_iteration_limit("grad_maxiter", grad_maxiter)
    if x0 is not None:
        _validate.check_same_framework("x0", x0, b, xp)

    op_dtype, shape_A = _inspect_operator(A, b, xp, backend)
    _validate.check_shapes(shape_A, b, x0)
    A, b, x0 = backend.prepare_inputs(A, b, x0)
    if maxiter is None:
        maxiter = default_maxiter(*shape_A)
    settings = dict(
        method=method, dtype=_solve_dtype(xp, op_dtype, b, x0), maxiter=int(maxiter),
        atol=float(atol), btol=float(btol), ctol=1.0 / conlim if conlim > 0 else 0.0,
        options=tuple(sorted(method_options.items())), nan_on_nonfinite=nan_on_nonfinite,
    )
    dtype = settings["dtype"]
    damped = _is_positive(damp)
    compile_loop = backend.traced and not _validate.is_operator(A)

    def runner(options: tuple[tuple[str, Any], ...]) -> Callable[..., dict[str, Any]]:
        # Dense and sparse A are arguments, so one compiled loop serves every call
        # with these settings; a LinearOperator's closures are not, so it runs as is.
        these = {**settings, "options": options}
        loop = functools.partial(_driver.run, xp=xp, backend=backend, **these)
        return backend.compiled(tuple(these.values()), loop) if compile_loop else loop

    run = runner(settings["options"])
    # An undamped solve with a wide or square A hands the gradient
    # y = A^+H (x - x0) through its dual. Traced solves pass it to the tangent
    # rule as the value of the solve for y, which JAX differentiates again by that
    # solve's own rule (second derivatives). A tall A carries none: its gradient
    # needs y only where A is rank-deficient and the cotangent leaves its row
    # space, and there the forward's residual keeps the dual from passing its
    # check at working tolerances (docs/gradients.md), so on every tall solve the
    # dual's vector updates (4-14% of a forward) would buy nothing.
    tall_full_rank = bool(assume_full_rank) and shape_A[0] >= shape_A[1]
    carry_dual = damped is False and shape_A[0] <= shape_A[1] and not tall_full_rank
    run_dual = runner(settings["options"] + (("dual", True),)) if carry_dual else None
    cache_key = None
    if compile_loop:
        # What else the backward pass depends on besides its array arguments.
        cache_key = (tuple(settings.values()), damped, bool(assume_full_rank), grad_atol,
                     grad_btol, grad_maxiter)

    def operator(A_: Any) -> Operator:
        return _driver.as_operator(A_, xp, backend, dtype, aac.device(b))

    # The gradient's solves use LSMR with the forward's tolerances unless overridden,
    # and run up to min(m, n) iterations or the forward's maxiter, whichever is
    # larger, unless grad_maxiter caps them.
    grad_settings = dict(
        xp=xp, backend=backend, dtype=dtype,
        atol=settings["atol"] if grad_atol is None else float(grad_atol),
        btol=settings["btol"] if grad_btol is None else float(grad_btol),
        ctol=settings["ctol"], maxiter=settings["maxiter"], damped=damped,
        assume_full_rank=assume_full_rank, limit=None if grad_maxiter is None else int(grad_maxiter))

    def cast(a: Any) -> Any:
        return None if a is None else xp.astype(a, dtype)

    def run_differentiated(A_: Any, b_: Any, x0_: Any, damp_: Any) -> tuple[dict[str, Any], Any]:
        if run_dual is None:
            return run(A_, b_, x0_, damp_), None
        state = run_dual(A_, b_, x0_, damp_)
        out = {k: v for k, v in state.items() if k not in _dual.STATE_KEYS}
        y = forward_dual(operator(A_), cast(b_), out["x"], cast(x0_), state["zx"],
                         (out["istop"], out["norma"], _driver.residual_tilt(out, xp)), xp=xp,
                         atol=grad_settings["atol"],
                         btol=grad_settings["btol"],
                         full_row_rank=bool(assume_full_rank) and not tall_full_rank)
        return out, y

    def backward(A_: Any, b_: Any, x0_: Any, damp_: Any, x: Any, x_bar: Any,
                 y: Any = None) -> Cotangents:
        # Only JAX traces damp, and JAX differentiates through `tangent`.
        return pullback(operator(A_), cast(b_), x, cast(x0_), damp_, cast(x_bar), y=y,
                        **{**grad_settings, "damped": damped is not False})

    def tangent(A_: Any, b_: Any, x0_: Any, damp_: Any, x: Any, y: Any, dA: Operator | None,
                db: Any, dx0: Any, ddamp: Any) -> Any:
        return pushforward(operator(A_), cast(b_), x, cast(x0_), damp_, dA=dA, db=cast(db),
                           dx0=cast(dx0), ddamp=ddamp, y=y, **grad_settings)

    return Prepared(backend, xp, dtype, run, run_differentiated, backward, tangent, operator,
                    (A, b, x0, damp), cache_key, carry_dual)


def solve(method: ModuleType, A: Any, b: Any, **kwargs: Any) -> tuple[Any, dict[str, Any], Backend]:
    """Run a solve, differentiable where the backend's framework has autodiff;
    returns ``x``, the final state and the backend."""
    p = prepare(method, A, b, **kwargs)
    state = p.backend.differentiable(p)
    return state["x"], state, p.backend


def _is_positive(damp: Any) -> bool | None:
    """Whether the damped gradient rule applies; None for a traced damp, whose
    rule is selected where the solve runs (`lsqdiff._gradient.pushforward`)."""
    value = _validate.concrete_float(damp)
    return None if value is None else value > 0


def _inspect_operator(A: Any, b: Any, xp: Any, backend: Backend) -> tuple[Any, tuple[int, ...]]:
    """The operator's dtype (None: take b's) and shape, after checking its type."""
    if _validate.is_operator(A):
        return _validate.operator_dtype(A, xp), A.shape
    if isinstance(A, Scaled):  # built by lsqdiff._precond, which checked it
        return A.dtype, A.shape
    if backend.is_sparse(A):
        return getattr(A, "dtype", None), tuple(A.shape)
    _validate.check_same_framework("A", A, b, xp)
    return A.dtype, tuple(A.shape)


def _solve_dtype(xp: Any, op_dtype: Any, b: Any, x0: Any) -> Any:
    """Common dtype of the floating inputs (integer and boolean inputs follow them,
    so float32 stays float32); all-integer inputs give the default float."""
    dtypes = [b.dtype] + ([] if op_dtype is None else [op_dtype])
    if x0 is not None:
        dtypes.append(x0.dtype)
    floating = [d for d in dtypes if xp.isdtype(d, ("real floating", "complex floating"))]
    if not floating:
        info = xp.__array_namespace_info__().default_dtypes(device=aac.device(b))
        floating = [info["real floating"]]
    return xp.result_type(*floating)


