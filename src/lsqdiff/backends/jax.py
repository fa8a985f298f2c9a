"""JAX adapter: the loop is a ``lax.while_loop`` so solves trace under ``jit`` and
``vmap``, and the solve is a ``jax.custom_jvp`` whose tangent is
`lsqdiff._gradient.pushforward`. Its solves with a true inverse (damped, or
``assume_full_rank`` tall) are ``lax.custom_linear_solve`` calls; its
pseudo-inverse solves are a primitive of this module, ``lsqdiff_min_norm_solve``,
with the pseudo-inverse's own derivative, transpose and batching rules, and the
undamped rule as a whole is ``lsqdiff_min_norm_tangent``, whose transpose solves
for ``y`` only where the cotangent needs it. So JAX transposes the tangent into
the gradient (``jax.grad``, ``jax.vjp``) with the solves of
`lsqdiff._gradient.pullback`, and differentiates it again into exact second
derivatives; the loops themselves are never differentiated in reverse."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.experimental import sparse as jsparse
from jax.extend.core import ClosedJaxpr, Jaxpr, Primitive, jaxpr_as_fun
from jax.interpreters import ad, batching, mlir
from jax.interpreters import partial_eval as pe

from .._info import SolveInfo
from ..operator import LinearOperator, MatVec, Operator, Scaled
from ._base import Backend, State, plain_norm_ok, scaled_norm

if TYPE_CHECKING:
    from .._solve import Prepared

# Diagnostics are JAX arrays here, so SolveInfo must pass through jit and vmap.
jax.tree_util.register_dataclass(
    SolveInfo,
    data_fields=["istop", "itn", "normr", "normar", "norma", "conda", "normx", "converged"],
    meta_fields=[],
)
# A preconditioned solve's operator: its arrays are arguments of the solve (and
# of its compiled loop), like a dense A's.
jax.tree_util.register_dataclass(Scaled, data_fields=["A", "d", "damp"],
                                 meta_fields=["dtype", "shape", "params"])


class JaxBackend(Backend):
    name = "jax"
    traced = True

    def __init__(self, xp: Any):
        super().__init__(xp)
        self._compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def while_loop(self, cond: Callable[[State], Any], body: Callable[[State], State],
                   state: State) -> State:
        return jax.lax.while_loop(cond, body, state)

    def differentiable(self, p: Prepared) -> State:
        A, b, x0, damp = p.args
        A_args, rebuild = _operator_arguments(A, p)

        @jax.custom_jvp
        def solve(A_args: Any, b: Any, x0: Any, damp: Any) -> State:
            state = p.run(rebuild(A_args), b, x0, damp)
            if _being_transposed(b):
                # jax.linear_transpose: the loop has no transpose, but with A, damp
                # fixed and no x0, x is the tangent in b along b itself, whose
                # solves transpose (the min-norm solve with A^H; damped, A M^-1).
                # The loop stays for the diagnostics, and is dropped as dead code
                # unless they are returned too.
                if x0 is not None:
                    raise NotImplementedError(
                        "jax.linear_transpose of lsqdiff.lsmr/lsqr in b needs x0=None: "
                        "with a warm start the solution is affine in b, not linear")
                x = p.tangent(rebuild(A_args), b, None, damp, jnp.zeros_like(state["x"]), None,
                              None, b, None, None)
                state = {**state, "x": x.astype(state["x"].dtype)}
            return state

        @jax.custom_jvp
        def solve_dual(A_args: Any, b: Any, x0: Any, damp: Any) -> tuple[State, Any]:
            # The forward loop with its dual: what the undamped tangent rule takes
            # y = A^+H (x - x0) from (as the value of its min-norm primitive).
            state, y = p.run_differentiated(rebuild(A_args), b, x0, damp)
            return state, jax.tree_util.tree_map(jnp.asarray, y)

        def x_tangent(primals: tuple[Any, ...], tangents: tuple[Any, ...], state: State,
                      y: Any) -> State:
            # Which inputs move: the others are symbolic zeros, and their solves are skipped.
            moving = tuple(_moves(t) for t in tangents)
            dots = [_instantiate(t, x) if move else None
                    for t, x, move in zip(tangents, primals, moving)]
            x_dot = self._tangent(p, rebuild, moving)(*primals, state["x"], y, *dots)
            # The diagnostics are not differentiated.
            state_dot = {k: SymbolicZero(jax.typeof(v).to_tangent_aval()) for k, v in state.items()}
            state_dot["x"] = x_dot
            return state_dot

        def dual_jvp(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> Any:
            # Differentiated again (second derivatives), x moves by the solve's own
            # rule, never through the loop; y's tangent is zero because y is only
            # ever a value hint of the min-norm primitive, whose derivative
            # ignores it (it differentiates the pseudo-inverse at its output).
            state, y = solve_dual(*primals)
            y_dot = jax.tree_util.tree_map(
                lambda v: SymbolicZero(jax.typeof(v).to_tangent_aval()), y)
            return (state, y), (x_tangent(primals, tangents, state, y), y_dot)

        solve_dual.defjvp(dual_jvp, symbolic_zeros=True)

        def jvp(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[State, State]:
            if p.carries_dual:
                state, y = solve_dual(*primals)
            else:
                # The solve itself, not its loop: differentiated again (second
                # derivatives, reverse over reverse) it takes this rule again.
                state, y = solve(*primals), None
            return state, x_tangent(primals, tangents, state, y)

        solve.defjvp(jvp, symbolic_zeros=True)
        return solve(A_args, b, x0, jnp.asarray(damp))

    def _tangent(self, p: Prepared, rebuild: Callable[[Any], Any],
                 moving: tuple[bool, ...]) -> Callable[..., Any]:
        """``(A_args, b, x0, damp, x, y, dA_args, db, dx0, ddamp) -> x_dot`` (None for
        the inputs that do not move), compiled once per ``p.cache_key`` and
        ``moving``: outside ``jit`` its LSMR loops would otherwise be retraced and
        recompiled on every call (~1 s), and so would their transposes under
        ``jax.grad``, which transposes this function's compiled tangent part."""

        def tangent(A_args: Any, b: Any, x0: Any, damp: Any, x: Any, y: Any, dA_args: Any,
                    db: Any, dx0: Any, ddamp: Any) -> Any:
            dA = None if dA_args is None else _tangent_operator(p, rebuild, A_args, dA_args)
            x_dot = p.tangent(rebuild(A_args), b, x0, damp, x, y, dA, db, dx0, ddamp)
            return x_dot.astype(x.dtype)  # a float64 damp must not promote a float32 solve

        if p.cache_key is None:  # a LinearOperator: its closures differ from call to call
            return tangent
        return self.compiled(("jvp", moving) + p.cache_key, tangent)

    def linear_solve(self, solve: Callable[[Any], Any], adjoint: Callable[[Any], Any],
                     matvec: Callable[[Any], Any], rhs: Any) -> Any:
        # lax.custom_linear_solve is linear in rhs and transposes to transpose_solve,
        # JAX's (unconjugated) transpose: conj(adjoint(conj(c))). It wants a square
        # system, so a solve (m,) -> (n,) is embedded in pairs (u, v):
        # E(u, v) = (matvec(v), 0) has the pseudo-inverse (p, s) -> (0, solve(p)).
        out = jax.eval_shape(solve, rhs)
        if (out.shape, out.dtype) == (rhs.shape, rhs.dtype):
            return jax.lax.custom_linear_solve(
                matvec, rhs, lambda _, r: solve(r),
                lambda _, c: jnp.conj(adjoint(jnp.conj(c))))
        # The pair must be linear in rhs as a whole (JAX transposes it): a zero
        # that depends on rhs, not a constant.
        pad = jnp.zeros(out.shape, out.dtype) * jnp.sum(rhs).astype(out.dtype)
        _, x = jax.lax.custom_linear_solve(
            lambda uv: (matvec(uv[1]), jnp.zeros_like(uv[1])), (rhs, pad),
            lambda _, ps: (jnp.zeros_like(ps[0]), solve(ps[0])),
            lambda _, cs: (jnp.conj(adjoint(jnp.conj(cs[1]))), jnp.zeros_like(cs[1])))
        return x

    def min_norm_solve(self, op: Operator, rhs: Any, adjoint: bool,
                       solve: Callable[[Operator, Any], Any],
                       hint: tuple[Any, Any] | None = None) -> Any:
        # A primitive of its own: lax.custom_linear_solve's JVP in the operator,
        # x' = solve(b' - A' x), holds only for an invertible A and would drop two
        # terms of the pseudo-inverse's derivative from every second derivative.
        spec, consts = _min_norm_spec(op.matvec, op.rmatvec, op.shape, rhs.dtype, None, solve)
        return _min_norm(spec, consts, rhs, adjoint, hint)

    def min_norm_pair(self, op: Operator, q: Any, s: Any, solve: Callable[[Operator, Any], Any],
                      pair_adjoint: Callable[[Operator, Any], tuple[Any, Any]]) -> Any:
        # A primitive whose transpose takes one solve where two single ones would take two.
        spec, consts = _min_norm_spec(op.matvec, op.rmatvec, op.shape, q.dtype, None, solve,
                                      pair_adjoint)
        return _pair(spec, consts, (q, s), False)[0]

    def constant(self, a: Any) -> Any:
        return jax.lax.stop_gradient(a)

    def min_norm_tangent(self, op: Operator, d: Any, hint: tuple[Any, Any] | None, q0: Any,
                         s: Any, w_of: MatVec, dx0: Any, solve: Callable[[Operator, Any], Any],
                         pair_adjoint: Callable[[Operator, Any], tuple[Any, Any]],
                         adjoint: Callable[..., tuple[Any, Any, Any, Any]],
                         r_zero: Any = None) -> Any:
        # A primitive whose transpose solves for y only where the cotangent needs it.
        return _min_norm_tangent(op, d, hint, q0, s, w_of, dx0, solve, pair_adjoint, adjoint,
                                 r_zero)

    def select(self, pred: Any, if_true: Callable[[], Any], if_false: Callable[[], Any]) -> Any:
        return jax.lax.cond(pred, if_true, if_false)

    def array_norm(self, v: Any) -> Any:
        # The scaled norm runs only when a plain one may have lost something
        # (`lsqdiff.backends._base`); under vmap the cond computes both.
        r = jnp.linalg.vector_norm(v, axis=0)
        ok = plain_norm_ok(r, jnp, v.dtype)
        return jax.lax.cond(jnp.all(ok), lambda: r,
                            lambda: jnp.where(ok, r, scaled_norm(jnp, v)))

    def compiled(self, key: tuple[Any, ...], fn: Callable[..., Any]) -> Callable[..., Any]:
        # Without this every eager call would retrace and recompile the loop.
        if key not in self._compiled:
            self._compiled[key] = jax.jit(fn)
        return self._compiled[key]

    def dense_operator(self, A: Any) -> Operator:
        # XLA:CPU runs ``A.T @ u`` for a vector ``u`` as a slow transposed dot
        # (4000x2000 float64: ~30 ms against ~2 ms for ``A @ v``); ``u @ A``
        # contracts the same axis at matvec speed. Blocks ``(m, k)`` are faster as
        # ``A^H @ U``. A^H u = conj(conj(u) @ A), so conj(A) is never formed for vectors.
        complex_ = jnp.iscomplexobj(A)
        AH = jnp.conj(A).T if complex_ else A.T

        def rmatvec(u: Any) -> Any:
            if u.ndim != 1:
                return AH @ u
            return jnp.conj(jnp.conj(u) @ A) if complex_ else u @ A

        return Operator(tuple(A.shape), lambda v: A @ v, rmatvec)

    def is_sparse(self, A: Any) -> bool:
        return isinstance(A, jsparse.JAXSparse)

    def sparse_operator(self, A: Any) -> Operator:
        if isinstance(A, jsparse.BCSR):
            A = A.to_bcoo()  # BCSR has no transpose in JAX
        AT = A.T
        # A^H u = conj(A^T conj(u)); conj is free for real dtypes.
        return Operator(tuple(A.shape), lambda v: A @ v, lambda u: jnp.conj(AT @ jnp.conj(u)))

    def sparse_column_norms2(self, A: Any) -> Any:
        A = A.to_bcoo() if isinstance(A, jsparse.BCSR) else A
        values = jnp.abs(A.data)
        return jnp.zeros(A.shape[1], values.dtype).at[A.indices[:, 1]].add(values * values)

    def derive_rmatvec(self, matvec: MatVec, shape: tuple[int, int], dtype: Any,
                       device: Any) -> MatVec:
        transpose = _nonlinear_as_error(
            jax.linear_transpose, matvec, jax.ShapeDtypeStruct((shape[1],), dtype))
        return lambda u: jnp.conj(_nonlinear_as_error(transpose, jnp.conj(u))[0])

    def lift(self, vec: MatVec, xp: Any) -> MatVec:
        return jax.vmap(vec, in_axes=1, out_axes=1)

    def to_host(self, value: Any) -> Any:
        return value  # may be a tracer: results stay JAX arrays

    def report(self, state: State) -> None:
        # Traced: the diagnostics exist only when the computation runs, also under jit.
        # Two arrays, not seven: the callback moves each argument on its own.
        codes = jnp.stack([jnp.asarray(state[k], jnp.int32) for k in _CODES])
        norms = jnp.stack([jnp.asarray(state[k]) for k in _NORMS])
        jax.debug.callback(_report_on_host, codes, norms)

    def on_cpu(self, a: Any) -> bool:
        # A tracer has no device; under jit it runs on the default backend.
        try:
            platform = a.device.platform
        except Exception:  # a tracer, or an array spread over several devices
            platform = jax.default_backend()
        return platform == "cpu"


def _nonlinear_as_error(f: Callable[..., Any], *args: Any) -> Any:
    """``f(*args)`` where ``f`` transposes ``matvec``: JAX's errors for a matvec
    that is not linear (internal assertions, missing transpose rules) become one
    that says so."""
    try:
        return f(*args)
    except (AssertionError, NotImplementedError, RuntimeError) as err:
        raise ValueError(
            "A: matvec must be linear in v to derive rmatvec from it (jax.linear_transpose "
            f"failed: {type(err).__name__}: {str(err)[:200] or 'no message'}); pass "
            "rmatvec=lambda u: A^H @ u") from err


#: Reports the NumPy values a host callback receives.
_HOST = Backend(np)


_CODES = ("istop", "itn")
_NORMS = ("normr", "normar", "norma", "conda", "normx")


def _report_on_host(codes: Any, norms: Any) -> None:
    # The callback receives JAX arrays: as NumPy ones (no copy on the CPU) the
    # report's comparisons are NumPy's, not a JAX dispatch each.
    codes, norms = np.asarray(codes), np.asarray(norms)
    _HOST.report({**dict(zip(_CODES, codes)), **dict(zip(_NORMS, norms))})


def _operator_arguments(A: Any, p: Prepared) -> tuple[Any, Callable[[Any], Any]]:
    """A's differentiable arrays and how to rebuild A from them.

    Arrays and sparse matrices are pytrees already. A LinearOperator's functions
    may close over traced arrays, which a ``custom_vjp`` cannot see:
    ``jax.closure_convert`` turns them into explicit arguments.
    """
    if not isinstance(A, LinearOperator):
        return A, lambda a: a
    m, n = A.shape
    matvec, mv_consts = jax.closure_convert(A.matvec, jnp.zeros(n, p.dtype))
    if A.rmatvec is None:
        rmatvec, rmv_consts = None, []
    else:
        rmatvec, rmv_consts = jax.closure_convert(A.rmatvec, jnp.zeros(m, p.dtype))
    if not mv_consts and not rmv_consts:
        return (), lambda a: A

    def rebuild(consts: Any) -> LinearOperator:
        mv_c, rmv_c = consts
        return LinearOperator(
            A.shape, lambda v: matvec(v, *mv_c),
            None if rmatvec is None else (lambda u: rmatvec(u, *rmv_c)), dtype=A.dtype)

    return (mv_consts, rmv_consts), rebuild


def _tangent_operator(p: Prepared, rebuild: Callable[[Any], Any], A_args: Any,
                      dA_args: Any) -> Operator:
    """Products with the tangent of ``A``: the JVPs of its products in its arrays
    (dense and sparse ``A`` are linear in them; a LinearOperator's closed-over
    arrays may enter nonlinearly)."""

    def along(name: str) -> MatVec:
        def product(v: Any) -> Any:
            f = lambda a: getattr(p.operator(rebuild(a)), name)(v)  # noqa: E731
            return jax.jvp(f, (A_args,), (dA_args,))[1]

        return product

    return Operator(p.operator(rebuild(A_args)).shape, along("matvec"), along("rmatvec"))


def _being_transposed(b: Any) -> bool:
    """Whether ``b`` is an unknown of a partial evaluation: JAX evaluates a
    ``custom_jvp`` function itself on those only to build a linear function to
    transpose (``jax.linear_transpose``); differentiation calls its JVP rule."""
    return isinstance(b, pe.JaxprTracer) and not b.pval.is_known()


def _moves(tangent: Any) -> bool:
    """Whether an input's tangent has a leaf that is not a (symbolic) zero."""
    return any(not isinstance(t, SymbolicZero) and t.dtype != jax.dtypes.float0
               for t in jax.tree_util.tree_leaves(
                   tangent, is_leaf=lambda t: isinstance(t, SymbolicZero)))


def _instantiate(tangent: Any, primal: Any) -> Any:
    """The tangent with its symbolic zeros made arrays (float0 for integer leaves)."""

    def leaf(t: Any, x: Any) -> Any:
        if not isinstance(t, SymbolicZero):
            return t
        aval = jax.typeof(x).to_tangent_aval()
        if aval.dtype == jax.dtypes.float0:
            return np.zeros(aval.shape, jax.dtypes.float0)
        return jnp.zeros(aval.shape, aval.dtype)

    return jax.tree_util.tree_map(leaf, tangent, primal,
                                  is_leaf=lambda t: isinstance(t, SymbolicZero))


# --------------------------------------------------------------------------- #
# The minimum-norm solve as a primitive: x = B^+ rhs for B = A or A^H
# --------------------------------------------------------------------------- #

@dataclass(frozen=True, eq=False)  # compared by identity, as JAX compares jaxprs
class _MinNormSpec:
    """A's products as jaxprs over their closed-over arrays (the primitive's
    leading operands: ``n_matvec`` for ``matvec``, then ``rmatvec``'s), and the
    solve ``(Operator, rhs) -> x``. ``block`` is None when the products take
    vectors (blocks are mapped column by column), else the one block width they
    take. ``pair_adjoint``: ``(A, c) -> (A^+H c, A^+ A^+H c)`` from one solve
    (the pair primitive's transposed form), None for the single primitive."""

    shape: tuple[int, int]
    matvec: Jaxpr
    rmatvec: Jaxpr
    n_matvec: int
    block: int | None
    solve: Callable[[Operator, Any], Any]
    pair_adjoint: Callable[[Operator, Any], tuple[Any, Any]] | None = None


def _min_norm_spec(matvec: MatVec, rmatvec: MatVec, shape: tuple[int, int], dtype: Any,
                   block: int | None, solve: Callable[[Operator, Any], Any],
                   pair_adjoint: Callable[[Operator, Any], tuple[Any, Any]] | None = None
                   ) -> tuple[_MinNormSpec, list[Any]]:
    """Trace the products once; every array they close over becomes an operand
    (so the primitive sees, differentiates and batches them)."""
    m, n = shape
    tail = () if block is None else (block,)
    mv = jax.make_jaxpr(matvec)(jax.ShapeDtypeStruct((n,) + tail, dtype))
    rmv = jax.make_jaxpr(rmatvec)(jax.ShapeDtypeStruct((m,) + tail, dtype))
    spec = _MinNormSpec((m, n), mv.jaxpr, rmv.jaxpr, len(mv.consts), block, solve, pair_adjoint)
    return spec, list(mv.consts) + list(rmv.consts)


def _product(spec: _MinNormSpec, consts: Any, name: str, v: Any) -> Any:
    """``A v`` (name "matvec") or ``A^H v`` ("rmatvec") with A's arrays ``consts``."""
    jaxpr, c = ((spec.matvec, consts[:spec.n_matvec]) if name == "matvec"
                else (spec.rmatvec, consts[spec.n_matvec:]))
    f = lambda w: jaxpr_as_fun(ClosedJaxpr(jaxpr, list(c)))(w)[0]  # noqa: E731
    if spec.block is None and v.ndim == 2:
        return jax.vmap(f, in_axes=1, out_axes=1)(v)
    return f(v)


def _names(adjoint: bool) -> tuple[str, str]:
    """The products with B and with B^H."""
    return ("rmatvec", "matvec") if adjoint else ("matvec", "rmatvec")


def _operator(spec: _MinNormSpec, consts: Any, adjoint: bool) -> Operator:
    """``B = A`` (``A^H`` with ``adjoint``) as an `Operator` over A's arrays ``consts``."""
    b, bh = _names(adjoint)
    m, n = spec.shape
    return Operator((n, m) if adjoint else (m, n), lambda v: _product(spec, consts, b, v),
                    lambda u: _product(spec, consts, bh, u))


def _min_norm(spec: _MinNormSpec, consts: Any, rhs: Any, adjoint: bool,
              hint: tuple[Any, Any] | None = None) -> Any:
    """``B^+ rhs``; ``hint = (value, ok)``: the result is already known to be
    ``value`` in the columns where ``ok`` holds (only its derivative is wanted
    there). The parameter ``hinted`` counts the hint's operands: 0, 1 (``ok`` is
    the Python bool True: no solve at all) or 2."""
    extra = () if hint is None else hint[:1] if hint[1] is True else tuple(hint)
    return _min_norm_p.bind(*consts, rhs, *extra, spec=spec, adjoint=adjoint, hinted=len(extra))


def _split(args: Any, hinted: int) -> tuple[Any, Any, tuple[Any, Any] | None]:
    """The primitive's operands as ``(consts, rhs, hint)``, ``hint = (value, ok)``."""
    k = 1 + hinted
    hint = None if not hinted else (args[-1], True) if hinted == 1 else (args[-2], args[-1])
    return args[:-k], args[-k], hint


def _min_norm_impl(*args: Any, spec: _MinNormSpec, adjoint: bool, hinted: int) -> Any:
    consts, rhs, hint = _split(args, hinted)
    op = _operator(spec, consts, adjoint)
    # The solve runs in the solve's dtype; the result keeps the rhs's, as declared.
    if hint is None:
        return spec.solve(op, rhs).astype(rhs.dtype)
    # The columns with a known value get a zero right-hand side, on which LSMR
    # stops before its first iteration: no branch on values, so it traces.
    value, ok = hint
    if ok is True:
        return value.astype(rhs.dtype)
    solved = spec.solve(op, jnp.where(ok, jnp.zeros_like(rhs), rhs))
    return jnp.where(ok, value.astype(rhs.dtype), solved.astype(rhs.dtype))


def _min_norm_abstract(*args: Any, spec: _MinNormSpec, adjoint: bool, hinted: int) -> Any:
    rhs = _split(args, hinted)[1]
    m, n = spec.shape
    return jax.core.ShapedArray(((m if adjoint else n),) + tuple(rhs.shape[1:]), rhs.dtype)


def _min_norm_jvp(primals: Any, tangents: Any, *, spec: _MinNormSpec, adjoint: bool,
                  hinted: int) -> Any:
    """Golub & Pereyra's derivative of the pseudo-inverse, with ``y = B^+H x``,
    ``r = rhs - B x`` and ``w = B'^H y``:
    ``x' = B^+ (rhs' - B' x - B w + B^+H B'^H r) + w``. Every solve in it is this
    primitive, so the tangent is itself differentiable and transposable. It is
    taken at the output, so a hint's own tangent plays no part."""
    consts, rhs, hint = _split(primals, hinted)
    dconsts, drhs = tangents[:len(consts)], tangents[len(consts)]
    x = _min_norm(spec, consts, rhs, adjoint, hint)
    moving = any(type(t) is not ad.Zero for t in dconsts)
    if not moving:
        if type(drhs) is ad.Zero:
            return x, ad.Zero.from_primal_value(x)
        return x, _min_norm(spec, consts, drhs, adjoint)
    dconsts = tuple(ad.instantiate_zeros(t) for t in dconsts)
    b, bh = _names(adjoint)

    def along(name: str, v: Any) -> Any:  # B' v or B'^H v
        return jax.jvp(lambda *c: _product(spec, c, name, v), tuple(consts), dconsts)[1]

    y = _min_norm(spec, consts, x, not adjoint)
    w = along(bh, y)
    r = rhs - _product(spec, consts, b, x)
    q = (-along(b, x) - _product(spec, consts, b, w)
         + _min_norm(spec, consts, along(bh, r), not adjoint))
    if type(drhs) is not ad.Zero:
        q = q + drhs
    return x, _min_norm(spec, consts, q, adjoint) + w


def _linear_only(args: Any, n_consts: int) -> None:
    if any(ad.is_undefined_primal(c) for c in args[:n_consts]):
        raise NotImplementedError("lsqdiff: a solve is not linear in its operator A; "
                                  "it can be transposed only in b")


def _min_norm_transpose(ct: Any, *args: Any, spec: _MinNormSpec, adjoint: bool,
                        hinted: int) -> list[Any]:
    # JAX's transpose is unconjugated: (B^+)^T c = conj(B^+H conj(c)), B^+H = (B^H)^+.
    consts, rhs, hint = _split(args, hinted)
    _linear_only(args, len(consts))
    if hint is not None:  # a hinted solve computes a primal value (y), never a tangent
        raise NotImplementedError("lsqdiff: internal error: a hinted solve was transposed")
    if type(ct) is ad.Zero:
        return [None] * len(consts) + [ad.Zero(rhs.aval)]
    return [None] * len(consts) + [jnp.conj(_min_norm(spec, consts, jnp.conj(ct), not adjoint))]


def _to_last(a: Any, d: int | None, size: int) -> Any:
    """``a`` with its mapped axis ``d`` last (broadcast there when unmapped)."""
    return jnp.moveaxis(a, d, -1) if d is not None else jnp.broadcast_to(a[..., None],
                                                                         a.shape + (size,))


def _batched_spec(spec: _MinNormSpec, consts: Any, dims: Any, size: int, dtype: Any,
                  width: int) -> tuple[_MinNormSpec, Any]:
    """The spec and operands for right-hand sides flattened into ``width`` columns
    (``size`` mapped copies of each column, innermost): a mapped operator acts on
    its own columns."""
    if spec.block is None and all(d is None for d in dims):
        return spec, consts

    def mapped(name: str) -> MatVec:
        def product(V: Any) -> Any:
            V = V.reshape(V.shape[0], -1, size)
            out = jax.vmap(lambda c, v: _product(spec, c, name, v),
                           in_axes=(tuple(dims), 2), out_axes=2)(tuple(consts), V)
            return out.reshape(out.shape[0], -1)

        return product

    return _min_norm_spec(mapped("matvec"), mapped("rmatvec"), spec.shape, dtype, width,
                          spec.solve, spec.pair_adjoint)


def _min_norm_batch(args: Any, dims: Any, *, spec: _MinNormSpec, adjoint: bool,
                    hinted: int) -> Any:
    """The mapped right-hand sides become columns of one block solve (LSMR runs
    its columns independently); a mapped operator acts on its own columns."""
    n_consts = len(_split(args, hinted)[0])
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    rhs = _to_last(args[n_consts], dims[n_consts], size)
    cols = rhs.shape[1:-1]
    flat = rhs.reshape(rhs.shape[0], -1)
    hint = None
    if hinted:  # the value has the output's leading axis, ok the columns' shape
        value = _to_last(args[n_consts + 1], dims[n_consts + 1], size)
        ok = (True if hinted == 1
              else _to_last(args[n_consts + 2], dims[n_consts + 2], size).reshape(-1))
        hint = (value.reshape(value.shape[0], -1), ok)
    bspec, bconsts = _batched_spec(spec, args[:n_consts], dims[:n_consts], size, flat.dtype,
                                   flat.shape[1])
    out = _min_norm(bspec, bconsts, flat, adjoint, hint)
    out = out.reshape((out.shape[0],) + cols + (size,))
    return out, out.ndim - 1


def _primitive(name: str, impl: Callable[..., Any], abstract: Callable[..., Any],
               jvp: Callable[..., Any], transpose: Callable[..., Any],
               batch: Callable[..., Any], multiple_results: bool = False) -> Primitive:
    """A JAX primitive with its rules: evaluation (and lowering) by ``impl``."""
    p = Primitive(name)
    p.multiple_results = multiple_results
    p.def_impl(impl)
    p.def_abstract_eval(abstract)
    ad.primitive_jvps[p] = jvp
    ad.primitive_transposes[p] = transpose
    batching.primitive_batchers[p] = batch
    mlir.register_lowering(p, mlir.lower_fun(impl, multiple_results=multiple_results))
    return p


_min_norm_p = _primitive("lsqdiff_min_norm_solve", _min_norm_impl, _min_norm_abstract,
                         _min_norm_jvp, _min_norm_transpose, _min_norm_batch)


# --------------------------------------------------------------------------- #
# The pair: x = A^+ q + A^+ A^+H s, and its transpose c -> (A^+H c, A^+ A^+H c)
# --------------------------------------------------------------------------- #
# The undamped tangent rule ends in A^+ (q + A^+H s). Transposed as two single
# primitives it would take two solves (A^+H c, then A^+ of that); the transposed
# pair takes them from one solve with A^H and its dual (``spec.pair_adjoint``,
# `lsqdiff._gradient`). Both forms differentiate as the composition of the
# single primitive, so second derivatives stay exact; each is the other's transpose.

def _pair(spec: _MinNormSpec, consts: Any, rhs: Any, transposed: bool) -> list[Any]:
    return _pair_p.bind(*consts, *rhs, spec=spec, transposed=transposed)


def _pair_composed(spec: _MinNormSpec, consts: Any, rhs: Any, transposed: bool) -> list[Any]:
    """The pair's value through the single primitive (two solves)."""
    if transposed:
        b = _min_norm(spec, consts, rhs[0], True)
        return [b, _min_norm(spec, consts, b, False)]
    q, s = rhs
    return [_min_norm(spec, consts, q + _min_norm(spec, consts, s, True), False)]


def _pair_impl(*args: Any, spec: _MinNormSpec, transposed: bool) -> list[Any]:
    if not transposed:
        consts, q, s = args[:-2], args[-2], args[-1]
        settings = dict(spec=spec, hinted=0)
        p = _min_norm_impl(*consts, s, adjoint=True, **settings)
        return [_min_norm_impl(*consts, q + p, adjoint=False, **settings)]
    consts, c = args[:-1], args[-1]
    b, g = spec.pair_adjoint(_operator(spec, consts, False), c)
    return [b.astype(c.dtype), g.astype(c.dtype)]


def _pair_abstract(*args: Any, spec: _MinNormSpec, transposed: bool) -> list[Any]:
    m, n = spec.shape
    if transposed:
        c = args[-1]
        tail = tuple(c.shape[1:])
        return [jax.core.ShapedArray((m,) + tail, c.dtype),
                jax.core.ShapedArray((n,) + tail, c.dtype)]
    q = args[-2]
    return [jax.core.ShapedArray((n,) + tuple(q.shape[1:]), q.dtype)]


def _pair_jvp(primals: Any, tangents: Any, *, spec: _MinNormSpec, transposed: bool) -> Any:
    k = 1 if transposed else 2
    tangents = tuple(ad.instantiate_zeros(t) for t in tangents)
    f = lambda *a: tuple(_pair_composed(spec, a[:-k], a[-k:], transposed))  # noqa: E731
    out, out_dot = jax.jvp(f, tuple(primals), tangents)
    return list(out), list(out_dot)


def _pair_transpose(cts: Any, *args: Any, spec: _MinNormSpec, transposed: bool) -> list[Any]:
    # Unconjugated, as for the single primitive: conj(P^H conj(ct)).
    k = 1 if transposed else 2
    consts, rhs = args[:-k], args[-k:]
    _linear_only(args, len(consts))
    none = [None] * len(consts)
    if all(type(ct) is ad.Zero for ct in cts):
        return none + [ad.Zero(r.aval) if ad.is_undefined_primal(r) else None for r in rhs]
    if not transposed:  # (q, s) -> x: its adjoint c -> (A^+H c, A^+ A^+H c)
        c = jnp.conj(cts[0])
        q, s = rhs
        if not ad.is_undefined_primal(s):
            return none + [jnp.conj(_min_norm(spec, consts, c, True)), None]
        b, g = _pair(spec, consts, (c,), True)
        return none + [jnp.conj(b) if ad.is_undefined_primal(q) else None, jnp.conj(g)]
    cb, cg = (jnp.conj(ad.instantiate_zeros(ct)) for ct in cts)
    if type(cts[1]) is ad.Zero:
        return none + [jnp.conj(_min_norm(spec, consts, cb, False))]
    return none + [jnp.conj(_pair(spec, consts, (cb, cg), False)[0])]


def _pair_batch(args: Any, dims: Any, *, spec: _MinNormSpec, transposed: bool) -> Any:
    """As `_min_norm_batch`: the mapped right-hand sides become columns."""
    k = 1 if transposed else 2
    n_consts = len(args) - k
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    rhs = [_to_last(a, d, size) for a, d in zip(args[n_consts:], dims[n_consts:])]
    cols = rhs[0].shape[1:-1]
    flat = [r.reshape(r.shape[0], -1) for r in rhs]
    bspec, bconsts = _batched_spec(spec, args[:n_consts], dims[:n_consts], size, flat[0].dtype,
                                   flat[0].shape[1])
    outs = [o.reshape((o.shape[0],) + cols + (size,)) for o in _pair(bspec, bconsts, flat,
                                                                    transposed)]
    return outs, [o.ndim - 1 for o in outs]


_pair_p = _primitive("lsqdiff_min_norm_pair", _pair_impl, _pair_abstract, _pair_jvp,
                     _pair_transpose, _pair_batch, multiple_results=True)


# --------------------------------------------------------------------------- #
# The undamped tangent: x' = A^+ (q0 - A w + A^+H s) + w, w = A'^H y + x0'
# --------------------------------------------------------------------------- #
# y = A^+H (x - x0) is a primal value of the tangent rule: bound as a solve of
# its own, JAX would compute it on the forward pass, before the cotangent says
# whether its term y w^H of the gradient vanishes (w = (I - A^+ A) x_bar, zero
# for x_bar in the row space: any x_bar when A has full column rank). As one
# primitive, the rule's transpose solves for y only where w is not negligible
# (`_tangent_transpose`). Its value, derivative and batching are those of the
# composition of the single and pair primitives, so forward mode and second
# derivatives stay exact; its transpose is a primitive of its own whose
# derivative is again the composition's.

@dataclass(frozen=True, eq=False)  # compared by identity, as `_MinNormSpec`
class _TangentSpec:
    """``w_of(y) = A'^H y`` as a jaxpr over the arrays it closes over (A's and
    its tangent's: operands of the primitive, linear in the tangent's), and
    ``adjoint(A, c, d, hint, r_zero, with_g, with_y)`` (`lsqdiff._gradient.pushforward`'s
    ``tangent_adjoint``)."""

    w_of: Jaxpr
    adjoint: Callable[..., tuple[Any, Any, Any, Any]]


def _min_norm_tangent(op: Operator, d: Any, hint: tuple[Any, Any] | None, q0: Any, s: Any,
                      w_of: MatVec, dx0: Any, solve: Callable[[Operator, Any], Any],
                      pair_adjoint: Callable[[Operator, Any], tuple[Any, Any]],
                      adjoint: Callable[..., tuple[Any, Any, Any, Any]],
                      r_zero: Any = None) -> Any:
    """`Backend.min_norm_tangent` as the primitive ``lsqdiff_min_norm_tangent``;
    ``r_zero`` (a boolean per column, or None) its operand after the hint's."""
    spec, consts = _min_norm_spec(op.matvec, op.rmatvec, op.shape, d.dtype, None, solve,
                                  pair_adjoint)
    m = op.shape[0]
    w = jax.make_jaxpr(w_of)(jax.ShapeDtypeStruct((m,) + tuple(d.shape[1:]), d.dtype))
    tspec = _TangentSpec(w.jaxpr, adjoint)
    extra = () if hint is None else hint[:1] if hint[1] is True else tuple(hint)
    flags = _flags(r_zero)
    operands = ([*consts, d, *extra, *flags, q0] + ([] if s is None else [s]) + list(w.consts)
                + ([] if dx0 is None else [dx0]))
    return _tangent_p.bind(*operands, spec=spec, tspec=tspec, n_consts=len(consts),
                           hinted=len(extra), has_rz=len(flags), has_s=s is not None,
                           n_w=len(w.consts), has_dx0=dx0 is not None)


def _flags(r_zero: Any) -> tuple[Any, ...]:
    """``r_zero`` as the primitives' operands: none for a Python bool (False:
    no column is known negligible; True never comes, ``s`` is then None)."""
    return () if r_zero is None or isinstance(r_zero, bool) else (r_zero,)


def _tangent_parts(args: Any, n_consts: int, hinted: int, has_rz: int, has_s: bool, n_w: int,
                   has_dx0: bool) -> tuple[Any, ...]:
    """The operands as ``(consts, d, hint, r_zero, q0, s, w_consts, dx0)`` (None:
    absent)."""
    consts, d = tuple(args[:n_consts]), args[n_consts]
    i = n_consts + 1
    hint = (None if not hinted else (args[i], True) if hinted == 1
            else (args[i], args[i + 1]))
    i += hinted
    r_zero = args[i] if has_rz else None
    i += has_rz
    q0, s = args[i], args[i + 1] if has_s else None
    i += 1 + has_s
    return (consts, d, hint, r_zero, q0, s, tuple(args[i:i + n_w]),
            args[i + n_w] if has_dx0 else None)


def _w_apply(tspec: _TangentSpec, w_consts: Any, y: Any) -> Any:
    return jaxpr_as_fun(ClosedJaxpr(tspec.w_of, list(w_consts)))(y)[0]


def _tangent_composed(spec: _MinNormSpec, tspec: _TangentSpec, consts: Any, d: Any,
                      hint: Any, r_zero: Any, q0: Any, s: Any, w_consts: Any, dx0: Any) -> Any:
    """The tangent through the single and pair primitives (y solved for first;
    every term kept)."""
    y = _min_norm(spec, consts, d, True, hint)
    w = _w_apply(tspec, w_consts, y)
    w = w if dx0 is None else w + dx0
    q = q0 - _product(spec, consts, "matvec", w)
    if s is None:
        return _min_norm(spec, consts, q, False) + w
    return _pair(spec, consts, (q, s), False)[0] + w


def _tangent_impl(*args: Any, spec: _MinNormSpec, tspec: _TangentSpec, **sizes: Any) -> Any:
    return _tangent_composed(spec, tspec, *_tangent_parts(args, **sizes))


def _tangent_abstract(*args: Any, spec: _MinNormSpec, tspec: _TangentSpec,
                      **sizes: Any) -> Any:
    q0 = _tangent_parts(args, **sizes)[4]
    return jax.core.ShapedArray((spec.shape[1],) + tuple(q0.shape[1:]), q0.dtype)


def _without_hint(f: Callable[..., Any], args: Any, n_consts: int, hinted: int,
                  ) -> tuple[Callable[..., Any], list[int]]:
    """``f`` of the operands other than the ``hinted`` after ``d`` (the hint's and
    ``r_zero``, which are never differentiated: the value of y is known there, its
    derivative is the solve's), and their indices."""
    keep = [i for i in range(len(args)) if not n_consts < i <= n_consts + hinted]

    def g(*kept: Any) -> Any:
        full = list(args)
        for i, a in zip(keep, kept):
            full[i] = a
        return f(*full)

    return g, keep


def _tangent_jvp(primals: Any, tangents: Any, *, spec: _MinNormSpec, tspec: _TangentSpec,
                 **sizes: Any) -> Any:
    f, keep = _without_hint(lambda *a: _tangent_impl(*a, spec=spec, tspec=tspec, **sizes),
                            primals, sizes["n_consts"], sizes["hinted"] + sizes["has_rz"])
    return jax.jvp(f, tuple(primals[i] for i in keep),
                   tuple(ad.instantiate_zeros(tangents[i]) for i in keep))


def _tangent_transpose(ct: Any, *args: Any, spec: _MinNormSpec, tspec: _TangentSpec,
                       **sizes: Any) -> list[Any]:
    # Unconjugated, as the other rules: (A^+)^T c = conj(A^+H conj(c)), and the
    # projector I - A^+ A is Hermitian.
    consts, d, hint, r_zero, q0, s, w_consts, dx0 = _tangent_parts(args, **sizes)
    fixed = sizes["n_consts"] + 1 + sizes["hinted"] + sizes["has_rz"]
    _linear_only(args, fixed)
    undefined = [ad.is_undefined_primal(a) for a in args]
    if type(ct) is ad.Zero:
        return [ad.Zero(a.aval) if u else None for a, u in zip(args, undefined)]
    lin_w = [ad.is_undefined_primal(a) for a in w_consts]
    with_g = s is not None and ad.is_undefined_primal(s)
    with_y = any(lin_w)
    outs = _adjoint(spec, tspec, consts, d, hint, r_zero, jnp.conj(ct), with_g, with_y)
    b_bar, outs = jnp.conj(outs[0]), outs[1:]
    g_bar = None
    if with_g:
        g_bar, outs = jnp.conj(outs[0]), outs[1:]
    y, w_bar = (outs[0], jnp.conj(outs[1])) if with_y else (None, jnp.conj(outs[0]))
    w_cts: list[Any] = [None] * len(w_consts)
    if with_y:
        lin = [i for i, u in enumerate(lin_w) if u]

        def w_of(*vals: Any) -> Any:
            full = list(w_consts)
            for i, v in zip(lin, vals):
                full[i] = v
            return _w_apply(tspec, full, y)

        zeros = [jnp.zeros(w_consts[i].aval.shape, w_consts[i].aval.dtype) for i in lin]
        for i, c in zip(lin, jax.vjp(w_of, *zeros)[1](w_bar.astype(y.dtype))):
            w_cts[i] = c
    return ([None] * fixed + [b_bar if ad.is_undefined_primal(q0) else None]
            + ([] if s is None else [g_bar]) + w_cts
            + ([] if dx0 is None else [w_bar if ad.is_undefined_primal(dx0) else None]))


def _tangent_batch(args: Any, dims: Any, *, spec: _MinNormSpec, tspec: _TangentSpec,
                   **sizes: Any) -> Any:
    out = jax.vmap(lambda *a: _tangent_impl(*a, spec=spec, tspec=tspec, **sizes),
                   in_axes=tuple(dims))(*args)
    return out, 0


_tangent_p = _primitive("lsqdiff_min_norm_tangent", _tangent_impl, _tangent_abstract,
                        _tangent_jvp, _tangent_transpose, _tangent_batch)


# The transposed tangent: c -> (A^+H c, A^+ A^+H c, A^+H d, (I - A^+ A) c), the
# first from one solve with A^H, the second from its dual where that holds, y
# only where the last is not negligible (else zero there, and the last zero).

def _adjoint(spec: _MinNormSpec, tspec: _TangentSpec, consts: Any, d: Any, hint: Any,
             r_zero: Any, c: Any, with_g: bool, with_y: bool) -> list[Any]:
    """``[b_bar] + [g] (with_g) + [y] (with_y) + [w]`` for the cotangent ``c``."""
    extra = () if hint is None else hint[:1] if hint[1] is True else tuple(hint)
    flags = _flags(r_zero)
    return _adjoint_p.bind(*consts, d, *extra, *flags, c, spec=spec, tspec=tspec,
                           hinted=len(extra), has_rz=len(flags), with_g=with_g, with_y=with_y)


def _adjoint_parts(args: Any, hinted: int, has_rz: int) -> tuple[Any, Any, Any, Any, Any]:
    """The operands as ``(consts, d, hint, r_zero, c)``."""
    k = 2 + hinted + has_rz
    consts, rest = args[:-k], args[-k:]
    hint = None if not hinted else (rest[1], True) if hinted == 1 else (rest[1], rest[2])
    return tuple(consts), rest[0], hint, rest[-2] if has_rz else None, rest[-1]


def _adjoint_impl(*args: Any, spec: _MinNormSpec, tspec: _TangentSpec, hinted: int,
                  has_rz: int, with_g: bool, with_y: bool) -> list[Any]:
    consts, d, hint, r_zero, c = _adjoint_parts(args, hinted, has_rz)
    b, g, y, w = tspec.adjoint(_operator(spec, consts, False), c, d, hint,
                               False if r_zero is None else r_zero, with_g, with_y)
    return ([b.astype(c.dtype)] + ([g.astype(c.dtype)] if with_g else [])
            + ([y.astype(d.dtype)] if with_y else []) + [w.astype(c.dtype)])


def _adjoint_composed(spec: _MinNormSpec, consts: Any, d: Any, hint: Any, c: Any,
                      with_g: bool, with_y: bool) -> list[Any]:
    """Its value through the single and pair primitives, ``w`` not dropped."""
    if with_g:
        b, g = _pair(spec, consts, (c,), True)
    else:
        b, g = _min_norm(spec, consts, c, True), None
    w = c - _product(spec, consts, "rmatvec", b)
    return ([b] + ([g] if with_g else [])
            + ([_min_norm(spec, consts, d, True, hint)] if with_y else []) + [w])


def _adjoint_abstract(*args: Any, spec: _MinNormSpec, tspec: _TangentSpec, hinted: int,
                      has_rz: int, with_g: bool, with_y: bool) -> list[Any]:
    _, d, _, _, c = _adjoint_parts(args, hinted, has_rz)
    m, n = spec.shape
    tail = tuple(c.shape[1:])
    return ([jax.core.ShapedArray((m,) + tail, c.dtype)]
            + ([jax.core.ShapedArray((n,) + tail, c.dtype)] if with_g else [])
            + ([jax.core.ShapedArray((m,) + tuple(d.shape[1:]), d.dtype)] if with_y else [])
            + [jax.core.ShapedArray((n,) + tail, c.dtype)])


def _adjoint_jvp(primals: Any, tangents: Any, *, spec: _MinNormSpec, tspec: _TangentSpec,
                 hinted: int, has_rz: int, with_g: bool, with_y: bool) -> Any:
    # The derivative of every term, also of those the value dropped as negligible
    # (their derivatives need not be: second derivatives at a rank-deficient A).
    n_consts = len(primals) - 2 - hinted - has_rz

    def f(*a: Any) -> Any:
        consts, d, hint, _, c = _adjoint_parts(a, hinted, has_rz)
        return tuple(_adjoint_composed(spec, consts, d, hint, c, with_g, with_y))

    g, keep = _without_hint(f, primals, n_consts, hinted + has_rz)
    out, out_dot = jax.jvp(g, tuple(primals[i] for i in keep),
                           tuple(ad.instantiate_zeros(tangents[i]) for i in keep))
    return list(out), list(out_dot)


def _adjoint_transpose(cts: Any, *args: Any, **params: Any) -> list[Any]:
    raise NotImplementedError("lsqdiff: internal error: the transposed tangent was transposed")


def _adjoint_batch(args: Any, dims: Any, *, spec: _MinNormSpec, tspec: _TangentSpec,
                   hinted: int, has_rz: int, with_g: bool, with_y: bool) -> Any:
    """As `_min_norm_batch`: the mapped columns of ``d``, the hint and ``c`` become
    columns of the primitive itself (each keeps its own decision on y), so that
    a derivative taken outside the map still meets this primitive's rule (a
    vmapped evaluation would differentiate the loops)."""
    n_consts = len(args) - 2 - hinted - has_rz
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    d, c = (_to_last(args[i], dims[i], size) for i in (n_consts, len(args) - 1))
    r_zero = (None if not has_rz
              else _to_last(args[-2], dims[-2], size).reshape(-1))
    cols = c.shape[1:-1]
    hint = None
    if hinted:
        value = _to_last(args[n_consts + 1], dims[n_consts + 1], size)
        ok = (True if hinted == 1
              else _to_last(args[n_consts + 2], dims[n_consts + 2], size).reshape(-1))
        hint = (value.reshape(value.shape[0], -1), ok)
    width = c.reshape(c.shape[0], -1).shape[1]
    bspec, bconsts = _batched_spec(spec, args[:n_consts], dims[:n_consts], size, c.dtype, width)
    outs = _adjoint(bspec, tspec, bconsts, d.reshape(d.shape[0], -1), hint, r_zero,
                    c.reshape(c.shape[0], -1), with_g, with_y)
    outs = [o.reshape((o.shape[0],) + cols + (size,)) for o in outs]
    return outs, [o.ndim - 1 for o in outs]


_adjoint_p = _primitive("lsqdiff_min_norm_adjoint", _adjoint_impl, _adjoint_abstract,
                        _adjoint_jvp, _adjoint_transpose, _adjoint_batch,
                        multiple_results=True)
