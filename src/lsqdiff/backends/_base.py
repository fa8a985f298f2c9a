"""What every backend provides; the defaults serve any array-API namespace."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from .._vectors import NEW_ARRAYS
from ..operator import MatVec, Operator, columnwise, dense_operator

if TYPE_CHECKING:
    from .._scalars import ArrayScalars
    from .._solve import Prepared

State = dict[str, Any]


_floors: dict[tuple[Any, Any], float] = {}


def norm_floor(xp: Any, dtype: Any) -> float:
    """The smallest norm `plain_norm_ok` accepts for vectors of ``dtype``."""
    key = (xp, dtype)  # never compares dtypes of two frameworks (array-api-strict warns)
    floor = _floors.get(key)
    if floor is None:
        info = xp.finfo(dtype)
        floor = _floors[key] = math.sqrt(float(info.smallest_normal)) / float(info.eps)
    return floor


def plain_norm_ok(r: Any, xp: Any, dtype: Any) -> Any:
    """Whether ``r``, a norm computed from plain squares of entries of ``dtype``,
    is exact to rounding: finite (no square overflowed, as the partial sums of
    squares only grow) and at least ``sqrt(tiny) / eps``, so that the squares
    that underflowed (each below ``tiny``) weigh less than ``eps**2`` of the sum
    of a billion of them. NaN is not: `scaled_norm` gives it back."""
    floor = norm_floor(xp, dtype)
    if isinstance(r, float):
        return floor <= r < math.inf
    return xp.logical_and(r >= floor, r < math.inf)


def scaled_norm(xp: Any, v: Any) -> Any:
    """Column norms of ``(n,)`` or ``(n, k)`` computed as ``s ||v / s||`` with
    ``s`` the largest magnitude: no square can overflow, and those that underflow
    are negligible. Zero, Inf and NaN columns give 0, Inf and NaN."""
    a = xp.abs(v)  # real, also for complex v (whose division by a subnormal may overflow)
    s = xp.max(a, axis=0)
    good = xp.logical_and(s > 0, s < math.inf)
    s1 = xp.where(good, s, xp.ones_like(s))
    return xp.where(good, s1 * xp.linalg.vector_norm(a / s1, axis=0), s)


class Backend:
    """Framework-specific pieces the solver core needs, with array-API defaults.

    A subclass overrides only what its framework does better or differently:
    the loop (traced under JAX), fast host norms, sparse matrices, deriving
    ``rmatvec`` from ``matvec``, and moving results to the host.
    """

    name = "array-api"
    #: True where the solve is traced (JAX): scalars stay arrays, the loop is a
    #: framework primitive and results are returned as framework arrays.
    traced = False

    def __init__(self, xp: Any):
        self.xp = xp

    def prepare_inputs(self, A: Any, b: Any, x0: Any) -> tuple[Any, Any, Any]:
        """``A, b, x0`` made ready for a solve, after the entry point's checks; they
        pass unchanged here (Dask persists ``A`` and lays out ``b`` and ``x0`` like it)."""
        return A, b, x0

    # -- the loop --------------------------------------------------------------
    def while_loop(self, cond: Callable[[State], Any], body: Callable[[State], State],
                   state: State) -> State:
        while bool(cond(state)):
            state = body(state)
        return state

    def host_scalars(self, host: Any) -> tuple[Any, Callable[[Any], Any]]:
        """The scalar arithmetic and the norm of a solve with one right-hand side,
        given `lsqdiff._scalars.HostScalars` ``host``: here ``host`` itself and
        `host_norm` (Dask defers both to its workers)."""
        return host, self.host_norm

    def array_scalars(self, scalars: ArrayScalars) -> tuple[Any, Callable[[Any], Any]]:
        """The scalar arithmetic and the norm of a traced solve or one with several
        right-hand sides, given `lsqdiff._scalars.ArrayScalars` ``scalars`` in the
        solve's namespace: here ``scalars`` itself and `array_norm` (PyTorch on the
        CPU moves them to the host)."""
        return scalars, self.array_norm

    def vector_ops(self, S: Any) -> Any:
        """How the solver updates its long vectors (`lsqdiff._vectors`) beside the
        scalar arithmetic ``S`` (`host_scalars`, `array_scalars`): here into new arrays."""
        return NEW_ARRAYS

    def solve_context(self) -> AbstractContextManager[Any]:
        """Context for the solve's arithmetic: autodiff must never record the
        iterations, and IEEE inf/nan are expected (stopped columns run on)."""
        return nullcontext()

    def differentiable(self, p: Prepared) -> State:
        """Run the solve; frameworks with autodiff register ``p.backward`` as its
        gradient. Here there is none: `lsqdiff.vjp` gives the pullback by hand."""
        with self.solve_context():
            return p.run(*p.args)

    def linear_solve(self, solve: Callable[[Any], Any], adjoint: Callable[[Any], Any],
                     matvec: Callable[[Any], Any], rhs: Any) -> Any:
        """``solve(rhs)`` for a solve that is linear in ``rhs``: a (pseudo-)inverse of
        ``matvec``, whose adjoint (conjugate transpose) is ``adjoint``.

        The tangent rule (`lsqdiff._gradient.pushforward`) wraps its solves in
        this hook; a framework that transposes tangent rules into gradients
        (JAX) registers ``adjoint`` here instead of differentiating the loop.
        """
        return solve(rhs)

    def internal_solver(self) -> Callable[..., tuple[Any, State]] | None:
        """How the gradient's internal solves run (`lsqdiff._driver.lsmr_on`): None
        runs the loop directly. A framework that differentiates a backward pass
        (second derivatives) returns ``solve(op, rhs, *, dtype, maxiter, atol, btol,
        ctol, limit) -> (x, state)``, a differentiable solve of ``op x = rhs``."""
        return None

    def report(self, state: State) -> None:
        """Hand an internal solve's diagnostics to `lsqdiff.backward_diagnostics`
        (and warn when it did not converge). Traced frameworks override this to
        report when the computation runs, not when it is traced."""
        from .._diagnostics import record
        from .._info import make_info

        record(make_info(state, self))

    def min_norm_solve(self, op: Operator, rhs: Any, adjoint: bool,
                       solve: Callable[[Operator, Any], Any],
                       hint: tuple[Any, Any] | None = None) -> Any:
        """``A^+ rhs`` (``A^+H rhs`` with ``adjoint``) by ``solve(B, rhs)``, the
        minimum-norm solve with ``B = A`` or ``A^H``.

        The undamped tangent rule (`lsqdiff._gradient.pushforward`) makes its
        solves here; a framework that differentiates the tangent rule again
        (JAX: second derivatives) registers the pseudo-inverse's own derivative
        and transpose for it.
        """
        B = Operator((op.shape[1], op.shape[0]), op.rmatvec, op.matvec) if adjoint else op
        if hint is None:
            return solve(B, rhs)
        # ``hint = (value, ok)``: the result is known to be ``value`` in the columns
        # where ``ok`` holds; those get a zero right-hand side, on which LSMR stops
        # before its first iteration.
        value, ok = hint
        if ok is True:
            return value
        xp = self.xp
        return xp.where(ok, value, solve(B, xp.where(ok, xp.zeros_like(rhs), rhs)))

    def min_norm_pair(self, op: Operator, q: Any, s: Any, solve: Callable[[Operator, Any], Any],
                      pair_adjoint: Callable[[Operator, Any], tuple[Any, Any]]) -> Any:
        """``A^+ q + A^+ A^+H s`` (two solves). ``pair_adjoint(A, c)`` returns
        ``(A^+H c, A^+ A^+H c)`` from one solve: a framework that transposes the
        tangent rule (JAX) registers it as the transpose."""
        return self.min_norm_solve(op, q + self.min_norm_solve(op, s, True, solve), False, solve)

    def min_norm_tangent(self, op: Operator, d: Any, hint: tuple[Any, Any] | None, q0: Any,
                         s: Any, w_of: Callable[[Any], Any], dx0: Any,
                         solve: Callable[[Operator, Any], Any],
                         pair_adjoint: Callable[[Operator, Any], tuple[Any, Any]],
                         adjoint: Callable[..., tuple[Any, Any, Any, Any]],
                         r_zero: Any = None) -> Any:
        """The undamped tangent ``x' = A^+ (q0 - A w + A^+H s) + w`` with
        ``w = w_of(y) + dx0`` and ``y = A^+H d`` (``hint`` as for `min_norm_solve`;
        ``s``, ``dx0`` None for zero). ``adjoint(A, c, d, hint, r_zero, with_g,
        with_y)`` returns ``(A^+H c, A^+ A^+H c, y, (I - A^+ A) c)``, the second
        zero where ``r_zero`` (the residual behind ``s`` is negligible) and ``y``
        solved for only where the last is not negligible: a framework that
        transposes the tangent rule (JAX) registers it as the transpose, so that
        ``g`` and ``y`` are solved for only where the cotangent needs them."""
        y = self.min_norm_solve(op, d, True, solve, hint)
        w = w_of(y) if dx0 is None else w_of(y) + dx0
        q = q0 - op.matvec(w)
        if s is None:
            return self.min_norm_solve(op, q, False, solve) + w
        return self.min_norm_pair(op, q, s, solve, pair_adjoint) + w

    def select(self, pred: Any, if_true: Callable[[], Any], if_false: Callable[[], Any]) -> Any:
        """``if_true()`` where the 0-d boolean ``pred`` holds, else ``if_false()``;
        only traced backends meet a ``pred`` that is not a Python bool."""
        return if_true() if pred else if_false()

    def compiled(self, key: tuple[Any, ...], fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` compiled once per ``key`` (its static settings); eager backends run it as is."""
        return fn

    def constant(self, a: Any) -> Any:
        """``a`` with no derivative flowing through it (a preconditioner's arrays)."""
        return a

    def parameters(self, A: Any, damp: Any) -> list[Any]:
        """The arrays an operator built on ``A`` and ``damp`` (`lsqdiff._precond`)
        is differentiated in, as a `LinearOperator`'s ``params`` (PyTorch's need)."""
        return []

    def carries_derivative(self, value: Any) -> bool:
        """Whether a concrete 0-d array of this framework carries derivatives, so
        that a solve must keep it an array (`lsqdiff._validate.check_damp`)."""
        return False

    # -- norms -----------------------------------------------------------------
    # Norms must neither under- nor overflow: frameworks sum plain squares, which
    # gives 0 for entries below 1e-154 (float64) and Inf above 1e154. Each norm is
    # taken plainly first, and again with its vector scaled by its largest entry
    # only where the plain result may have lost something (`plain_norm_ok`).

    def host_norm(self, v: Any) -> float:
        """``||v||`` of a vector as a Python float, safe from under- and overflow."""
        r = float(self.xp.linalg.vector_norm(v))
        if plain_norm_ok(r, self.xp, v.dtype):
            return r
        return float(scaled_norm(self.xp, v))

    def array_norm(self, v: Any) -> Any:
        """Column norms of ``(n,)`` or ``(n, k)`` as an array of the namespace,
        safe from under- and overflow."""
        xp = self.xp
        r = xp.linalg.vector_norm(v, axis=0)
        ok = plain_norm_ok(r, xp, v.dtype)
        if bool(xp.all(ok)):
            return r
        return xp.where(ok, r, scaled_norm(xp, v))

    # -- operators -------------------------------------------------------------
    def dense_operator(self, A: Any) -> Operator:
        """Products with a dense 2-D array of the namespace."""
        return dense_operator(A, self.xp)

    def is_sparse(self, A: Any) -> bool:
        return False

    def sparse_operator(self, A: Any) -> Operator:
        raise NotImplementedError

    def sparse_column_norms2(self, A: Any) -> Any:
        """``||A e_j||^2`` for each column of a sparse matrix, exactly (`lsqdiff.jacobi`);
        None for an operator known only by its products."""
        return None

    def derive_rmatvec(self, matvec: MatVec, shape: tuple[int, int], dtype: Any,
                       device: Any) -> MatVec:
        """``u -> A^H u`` for a LinearOperator given only ``matvec``."""
        raise TypeError(
            f"A: a LinearOperator needs an rmatvec under {self.name}, which cannot "
            "derive one from matvec; pass rmatvec=lambda u: A^H @ u"
        )

    def lift(self, vec: MatVec, xp: Any) -> MatVec:
        """Apply a vector function to each column of a block."""
        return columnwise(vec, xp)

    # -- devices ---------------------------------------------------------------
    def on_cpu(self, a: Any) -> bool:
        """Whether ``a`` lives on a CPU. There a product with a few columns costs
        more than that many matrix-vector products, so the backward pass solves a
        pair of right-hand sides one at a time (`lsqdiff._gradient.pullback`)."""
        import array_api_compat as aac

        device = aac.device(a)
        kind = getattr(device, "type", None) or getattr(device, "platform", None) or device
        return str(kind).lower() == "cpu"

    # -- results ---------------------------------------------------------------
    def to_host(self, value: Any) -> Any:
        """A 0-d or 1-d result array as a Python scalar or NumPy array."""
        import numpy as np

        if getattr(value, "ndim", 0) == 0:
            return value.item() if hasattr(value, "item") else value
        try:
            return np.asarray(value)
        except (RuntimeError, TypeError, ValueError):
            # An array on a non-CPU device may refuse __array__; DLPack is the
            # array API's way to hand it to NumPy.
            return np.from_dlpack(value)
