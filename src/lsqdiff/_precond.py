"""Right preconditioning: the solve runs on ``A N`` and returns ``x = x0 + N y``.

With ``N`` nonsingular (``n x n``) and ``x = x0 + N y`` (DESIGN.md section 8),

    ||A x - b||^2 + damp^2 ||x - x0||^2 = ||A N y - r0||^2 + damp^2 ||N y||^2,

``r0 = b - A x0``. Undamped, the solve is the plain one on ``A N`` with
right-hand side ``r0``; damped, it is the undamped one on the tall operator
``K = [A N; damp N]`` with right-hand side ``[r0; 0]``: the same problem exactly,
never a change of it. ``K`` has full column rank, so its gradient is the
one-solve rule (`lsqdiff._gradient`, ``assume_full_rank``).

Everything else is the unpreconditioned machinery run on ``A N`` (or ``K``): the
loop, the stopping tests, the gradient's solves (on ``(A N)^H``, ``A N``, ``K^H``:
preconditioned as well, so their iteration counts fall like the forward's).
The change of variables around it (``r0``, ``x0 + N y``, the products with ``A``
inside ``A N``) is plain array arithmetic, which JAX and PyTorch differentiate
by themselves; `vjp` applies its adjoint by hand for `lsqdiff.vjp` (NumPy, CuPy).
``N`` is a constant: no gradient reaches it (where the solution does not depend
on it, its gradient is zero).

The solution map is unchanged for a damped problem or an injective ``A``. For an
undamped ``A`` with a null space (wide, or rank-deficient) the minimum-norm ``y``
gives the least-squares ``x`` of minimum ``||N^-1 (x - x0)||``, not of minimum
``||x - x0||``; ``min_norm=True`` projects it onto the row space of ``A`` with
one more solve (`solve`), unpreconditioned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import array_api_compat as aac

from . import _lsmr, _validate
from ._driver import as_operator
from ._gradient import Cotangents, _where
from ._info import CONVERGED_CODES, stopped_by
from ._solve import _inspect_operator, _solve_dtype, prepare, solve as plain_solve
from ._terms import Terms, real_inner
from .backends import Backend, backend_for
from .operator import (LinearOperator, Operator, Scaled, diagonal, function_operator,
                       preconditioned)

Array = Any


def check_precond(precond: Any, n: int, b: Any, xp: Any, backend: Backend, dtype: Any) -> Any:
    """``precond`` checked: a 1-D array ``d`` of ``b``'s framework of length ``n``
    with finite nonzero entries (``N = diag(d)``; returned in ``dtype``, a constant
    for autodiff: `Backend.constant`), or a `LinearOperator` of shape ``(n, n)``
    (returned as an `Operator`)."""
    if isinstance(precond, LinearOperator):
        if tuple(precond.shape) != (n, n):
            raise ValueError(f"precond: a LinearOperator preconditioner must have shape "
                             f"(n, n) = ({n}, {n}) for A with n = {n} columns, got "
                             f"{tuple(precond.shape)}")
        try:
            return function_operator(
                precond, xp, dtype,
                lambda mv: backend.derive_rmatvec(mv, (n, n), dtype, aac.device(b)),
                backend.lift)
        except TypeError as err:  # no rmatvec on a framework that cannot derive one
            raise TypeError(f"precond: {str(err).removeprefix('A: ')}") from None
    if backend.is_sparse(precond) or not aac.is_array_api_obj(precond) or isinstance(
            precond, (list, tuple)):
        raise TypeError(f"precond must be a 1-D array of b's framework (a column scaling "
                        f"d, N = diag(d)) or a lsqdiff.LinearOperator of shape (n, n), got "
                        f"{type(precond).__module__}.{type(precond).__name__}")
    if aac.array_namespace(precond) is not xp:
        raise TypeError(f"precond and b come from different array frameworks "
                        f"({type(precond).__module__}.{type(precond).__name__} vs "
                        f"{type(b).__module__}.{type(b).__name__}); convert one of them")
    _validate.check_same_device("precond", precond, b)
    if tuple(precond.shape) != (n,):
        hint = "; for a matrix N pass a lsqdiff.LinearOperator" if precond.ndim == 2 else ""
        raise ValueError(f"precond must be a 1-D array of length n = {n} (A's columns), got "
                         f"shape {tuple(precond.shape)}{hint}")
    if xp.isdtype(precond.dtype, "complex floating") and not xp.isdtype(dtype, "complex floating"):
        raise TypeError(f"precond is complex ({precond.dtype}) in a real solve of dtype {dtype}")
    if not xp.isdtype(precond.dtype, ("real floating", "complex floating", "integral")):
        raise TypeError(f"precond must have a numeric dtype, got {precond.dtype}")
    d = backend.constant(xp.astype(precond, dtype))
    if _concrete(xp.logical_not(xp.all(xp.isfinite(d)))):
        raise ValueError("precond has NaN or Inf entries; N = diag(precond) must be finite")
    if _concrete(xp.any(d == 0)):
        raise ValueError("precond has zero entries; N = diag(precond) must be nonsingular")
    return d


def _concrete(flag: Any) -> bool:
    """A 0-d boolean's value; False where it is traced (no check under ``jax.jit``)."""
    try:
        return bool(flag)
    except Exception:
        return False


@dataclass(frozen=True)
class Transformed:
    """A preconditioned problem as a plain one: solve ``L y = rhs`` (minimum norm,
    no damping, no warm start) with `solve`'s keywords ``kwargs``, then
    `finish` maps ``y`` back to ``x`` and the diagnostics to the original problem."""

    xp: Any
    backend: Backend
    A: Operator
    N: Operator
    L: Any
    rhs: Array
    b: Array
    x0: Array | None
    damp: Any
    damped: bool
    kwargs: dict[str, Any]

    def correction(self) -> dict[str, Any]:
        """Keywords of the minimum-norm correction's solve: ``A e = c``, no damping,
        no warm start, the settings of the preconditioned solve."""
        return {**self.kwargs, "damp": 0.0, "x0": None}

    def merge(self, first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
        """The state of the two solves of ``min_norm``: iterations added; ``istop``,
        ``norma``, ``conda`` the first's where it did not converge, else the second's."""
        ok = stopped_by(first["istop"], CONVERGED_CODES)
        later = {k: _where(ok, second[k], first[k], self.xp) for k in ("istop", "norma", "conda")}
        return {**first, **later, "itn": first["itn"] + second["itn"]}

    def finish(self, y: Array, state: dict[str, Any], lsqr: bool) -> tuple[Array, dict[str, Any]]:
        """``x = x0 + N y`` and the state with the original problem's diagnostics."""
        d = self.N.matvec(y)
        x = d if self.x0 is None else self.x0 + d
        return x, self.diagnostics(x, state, lsqr)

    def diagnostics(self, x: Array, state: dict[str, Any], lsqr: bool) -> dict[str, Any]:
        """``state`` with ``x`` and the original problem's ``normr``, ``normar`` and
        ``normx`` (LSQR: ``||x - x0||``), and ``r1norm = ||b - A x||``, computed from
        ``x``; ``norma`` and ``conda`` stay those of the operator solved with."""
        xp, backend = self.xp, self.backend
        with backend.solve_context():
            d = x if self.x0 is None else x - self.x0
            r = self.b - self.A.matvec(x)
            ar = self.A.rmatvec(r)
            vectors = [r, ar, d if lsqr else x]
            if self.damped:
                vectors[1] = ar - (self.damp * self.damp) * d
                vectors.append(xp.concat([r, self.damp * d], axis=0))
            if backend.traced or x.ndim > 1:
                # Compiled once per shape: JAX's safe norm would compile on every call.
                norms = backend.compiled(("precond-norms",), _array_norms(backend))(*vectors)
            else:
                norms = [backend.host_norm(v) for v in vectors]
        values = dict(r1norm=norms[0], normar=norms[1], normx=norms[2], normr=norms[-1]
                      if self.damped else norms[0])
        return {**state, **values, "x": x}


def _array_norms(backend: Backend) -> Callable[..., list[Array]]:
    return lambda *vectors: [backend.array_norm(v) for v in vectors]


def transform(method: ModuleType, A: Any, b: Any, precond: Any, *, damp: Any, x0: Any,
              maxiter: int | None, default_maxiter: Callable[[int, int], int],
              assume_full_rank: bool = False, **kwargs: Any) -> Transformed:
    """Check the inputs of a preconditioned solve and build its plain problem."""
    xp = _validate.namespace_of_b(b)
    backend = backend_for(xp)
    damp = _validate.check_damp(damp, b, xp)
    if x0 is not None:
        _validate.check_same_framework("x0", x0, b, xp)
    op_dtype, shape = _inspect_operator(A, b, xp, backend)
    _validate.check_shapes(shape, b, x0)
    _validate.check_iteration_limit("maxiter", maxiter)
    m, n = shape
    dtype = _solve_dtype(xp, op_dtype, b, x0)
    A_op = as_operator(A, xp, backend, dtype, aac.device(b))
    N = check_precond(precond, n, b, xp, backend, dtype)
    b_ = xp.astype(b, dtype)
    x0_ = None if x0 is None else xp.astype(x0, dtype)
    r0 = b_ if x0_ is None else b_ - A_op.matvec(x0_)
    value = _validate.concrete_float(damp)
    # An array damp (traced, or requiring grad) takes K at any value: at 0, K's
    # general rule still holds and gives damp its (zero) gradient.
    damped = not isinstance(damp, float) or damp > 0
    if damped:  # K = [A N; damp N], rhs [r0; 0]: the damped problem exactly
        zeros = xp.zeros((n,) + tuple(b.shape[1:]), dtype=dtype, device=aac.device(b))
        L_shape, rhs = (m + n, n), xp.concat([r0, zeros], axis=0)
        full_rank = value is not None and value > 0  # a traced damp may be 0
    else:
        L_shape, rhs, full_rank = (m, n), r0, bool(assume_full_rank)
    # PyTorch differentiates the solve in these tensors.
    params = tuple(backend.parameters(A, damp))
    N_op = N if isinstance(N, Operator) else diagonal(N, xp)
    if isinstance(N, Operator) or _validate.is_operator(A):
        # Closures: a LinearOperator, which a traced backend closure-converts.
        op = preconditioned(A_op, N_op, damp if damped else None, xp)
        L: Any = LinearOperator(L_shape, op.matvec, op.rmatvec, dtype=dtype, matmat=op.matvec,
                                rmatmat=op.rmatvec, params=list(params))
    else:
        L = Scaled(A, N, damp if damped else None, dtype, L_shape, params)
    settings = dict(damp=0.0, x0=None, maxiter=default_maxiter(m, n) if maxiter is None
                    else maxiter, default_maxiter=default_maxiter,
                    assume_full_rank=full_rank, **kwargs)
    return Transformed(xp, backend, A_op, N_op, L, rhs, b_, x0_, damp, damped, settings)


def solve(method: ModuleType, A: Any, b: Any, *, precond: Any, min_norm: bool = False,
          **kwargs: Any) -> tuple[Any, dict[str, Any], Backend]:
    """A preconditioned solve (the entry point's ``precond``); as `lsqdiff._solve.solve`.

    ``min_norm`` (undamped only): the minimum-norm ``x`` at any rank, by one more
    solve, unpreconditioned: ``x = x0 + A^+ (A (x_N - x0))`` for the
    preconditioned solution ``x_N`` (``A (x_N - x0)`` is the projection of
    ``b - A x0`` onto A's range, so this is ``x0 + A^+ (b - A x0)``). Its
    iterations add to ``itn``; ``istop``, ``norma`` and ``conda`` are the first
    solve's where it did not converge, else the second's.
    """
    t = transform(method, A, b, precond, **kwargs)
    lsqr = method is not _lsmr
    y, state, backend = plain_solve(method, t.L, t.rhs, **t.kwargs)
    x, state = t.finish(y, state, lsqr)
    if not (min_norm and not t.damped):
        return x, state, backend
    e, second, _ = plain_solve(method, A, t.A.matvec(t.N.matvec(y)), **t.correction())
    x = e if t.x0 is None else t.x0 + e
    return x, t.diagnostics(x, t.merge(state, second), lsqr), backend


def vjp(method: ModuleType, A: Any, b: Any, *, precond: Any, min_norm: bool = False,
        **kwargs: Any) -> tuple[Any, dict[str, Any], Backend, Callable[[Array], Cotangents]]:
    """`lsqdiff.vjp` of a preconditioned solve (``min_norm`` as for `solve`): ``x``,
    the state, the backend and ``pullback(x_bar) -> Cotangents`` of the original
    inputs (the plain problems' gradients, `lsqdiff._gradient.pullback` on ``A N``
    or ``K`` (and on ``A`` for the correction), through the adjoint of the change
    of variables)."""
    t = transform(method, A, b, precond, **kwargs)
    lsqr = method is not _lsmr
    p = prepare(method, t.L, t.rhs, **t.kwargs)
    with p.backend.solve_context():
        state, dual = p.run_differentiated(*p.args)
    y = state["x"]
    x, state = t.finish(y, state, lsqr)
    xp, m = t.xp, t.A.shape[0]
    exact = min_norm and not t.damped
    if exact:  # x = x0 + A^+ c, c = A N y
        q = prepare(method, A, t.A.matvec(t.N.matvec(y)), **t.correction())
        with q.backend.solve_context():
            second, dual2 = q.run_differentiated(*q.args)
        x = second["x"] if t.x0 is None else t.x0 + second["x"]
        state = t.diagnostics(x, t.merge(state, second), lsqr)

    def pull_y(y_bar: Array) -> tuple[Array, list[Any], Any, Array | None]:
        # The plain problem L y = r0 (damped: [r0; 0]), r0 = b - A x0: b_bar, A's
        # terms, damp_bar, and x0_bar through r0.
        cot = p.backward(t.L, t.rhs, None, 0.0, y, y_bar, dual)
        b_bar = cot.b[:m, ...]
        terms, damp_bar = [], 0.0
        for s, U, V in cot.A.terms:  # <U, L V> = <U[:m], A N V> (+ damp <U[m:], N V>)
            NV = t.N.matvec(V)
            terms.append((s, U[:m, ...], NV))
            if t.damped:
                damp_bar = damp_bar + s * real_inner(U[m:, ...], NV, xp)
        if t.x0 is None:
            return b_bar, terms, damp_bar, None
        return b_bar, terms + [(-1.0, b_bar, t.x0)], damp_bar, -t.A.rmatvec(b_bar)

    def pullback(x_bar: Array) -> Cotangents:
        x_bar = xp.astype(x_bar, t.b.dtype)
        with p.backend.solve_context():
            if exact:  # x = x0 + A^+ c with c = A (N y)
                cot = q.backward(*q.args, second["x"], x_bar, dual2)
                b_bar, terms, damp_bar, x0_bar = pull_y(t.N.rmatvec(t.A.rmatvec(cot.b)))
                terms += list(cot.A.terms) + [(1.0, cot.b, t.N.matvec(y))]
            else:  # x = x0 + N y
                b_bar, terms, damp_bar, x0_bar = pull_y(t.N.rmatvec(x_bar))
        x0_bar = None if x0_bar is None else x_bar + x0_bar
        return Cotangents(b_bar, x0_bar, damp_bar, Terms(tuple(terms)))

    return x, state, p.backend, pullback
