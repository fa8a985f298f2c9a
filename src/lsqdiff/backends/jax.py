"""JAX adapter: the loop is a ``lax.while_loop`` so solves trace under ``jit`` and
``vmap``, and the solve is a ``jax.custom_jvp`` whose tangent is
`lsqdiff._gradient.pushforward`. Its solves are ``lax.custom_linear_solve``
calls that declare their adjoints, so JAX transposes the tangent into the
gradient (``jax.grad``, ``jax.vjp``) with the solves of
`lsqdiff._gradient.pullback`; the loops themselves are never differentiated."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.experimental import sparse as jsparse

from .._info import SolveInfo
from ..operator import LinearOperator, MatVec, Operator
from ._base import Backend, State, plain_norm_ok, scaled_norm

if TYPE_CHECKING:
    from .._solve import Prepared

# Diagnostics are JAX arrays here, so SolveInfo must pass through jit and vmap.
jax.tree_util.register_dataclass(
    SolveInfo,
    data_fields=["istop", "itn", "normr", "normar", "norma", "conda", "normx", "converged"],
    meta_fields=[],
)


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
            return p.run(rebuild(A_args), b, x0, damp)

        def jvp(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[State, State]:
            state, y = p.run_differentiated(rebuild(primals[0]), *primals[1:])
            # Which inputs move: the others are symbolic zeros, and their solves are skipped.
            moving = tuple(_moves(t) for t in tangents)
            dots = [_instantiate(t, x) if move else None
                    for t, x, move in zip(tangents, primals, moving)]
            x_dot = self._tangent(p, rebuild, moving)(*primals, state["x"], y, *dots)
            # The diagnostics are not differentiated.
            state_dot = {k: SymbolicZero(jax.typeof(v).to_tangent_aval()) for k, v in state.items()}
            state_dot["x"] = x_dot
            return state, state_dot

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

    def derive_rmatvec(self, op: LinearOperator, dtype: Any, device: Any) -> MatVec:
        transpose = jax.linear_transpose(op.matvec, jax.ShapeDtypeStruct((op.shape[1],), dtype))
        return lambda u: jnp.conj(transpose(jnp.conj(u))[0])

    def lift(self, vec: MatVec, xp: Any) -> MatVec:
        return jax.vmap(vec, in_axes=1, out_axes=1)

    def to_host(self, value: Any) -> Any:
        return value  # may be a tracer: results stay JAX arrays

    def on_cpu(self, a: Any) -> bool:
        # A tracer has no device; under jit it runs on the default backend.
        try:
            platform = a.device.platform
        except Exception:  # a tracer, or an array spread over several devices
            platform = jax.default_backend()
        return platform == "cpu"


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
