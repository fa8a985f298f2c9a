"""JAX adapter: the loop is a ``lax.while_loop`` so solves trace under ``jit`` and
``vmap``, and the solve is a ``jax.custom_vjp`` whose backward is
`lsqdiff._gradient.pullback` (PyTorch's complex convention, so cotangents are
conjugated on the way in and out)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from jax.experimental import sparse as jsparse

from .._info import SolveInfo
from ..operator import LinearOperator, MatVec, Operator
from ._base import Backend, State

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

        @jax.custom_vjp
        def solve(A_args: Any, b: Any, x0: Any, damp: Any) -> State:
            return p.run(rebuild(A_args), b, x0, damp)

        def forward(A_args: Any, b: Any, x0: Any, damp: Any) -> tuple[State, Any]:
            state = solve(A_args, b, x0, damp)
            return state, (A_args, b, x0, damp, state["x"])

        gradients = self._gradients(p, rebuild)

        def backward(res: Any, state_bar: State) -> tuple[Any, ...]:
            A_args, b, x0, damp, x = res
            A_bar, b_bar, x0_bar, damp_bar = gradients(A_args, b, x0, damp, x,
                                                       jnp.conj(state_bar["x"]))
            x0_bar = None if x0 is None else _like(jnp.conj(x0_bar), x0)
            return A_bar, _like(jnp.conj(b_bar), b), x0_bar, _like(damp_bar, damp)

        solve.defvjp(forward, backward)
        return solve(A_args, b, x0, jnp.asarray(damp))

    def _gradients(self, p: Prepared, rebuild: Callable[[Any], Any]) -> Callable[..., Any]:
        """``(A_args, b, x0, damp, x, x_bar) -> (A_bar, b_bar, x0_bar, damp_bar)``,
        compiled once per ``p.cache_key``: outside ``jit`` the backward pass would
        otherwise retrace and recompile its LSMR loops on every call (~1 s)."""

        def gradients(A_args: Any, b: Any, x0: Any, damp: Any, x: Any, x_bar: Any) -> Any:
            cot = p.backward(rebuild(A_args), b, x0, damp, x, x_bar)
            # The operator's cotangent: JAX's gradient of sum_k s_k Re<U_k, A V_k>.
            _, pull = jax.vjp(lambda a: cot.A.contract(p.operator(rebuild(a)).matvec, jnp), A_args)
            (A_bar,) = pull(jnp.ones((), dtype=jnp.real(x).dtype))
            return A_bar, cot.b, cot.x0, cot.damp

        if p.cache_key is None:  # a LinearOperator: its closures differ from call to call
            return gradients
        return self.compiled(("backward",) + p.cache_key, gradients)

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


def _like(grad: Any, primal: Any) -> Any:
    """``grad`` in ``primal``'s dtype (the real part for a real input)."""
    primal = jnp.asarray(primal)
    if jnp.iscomplexobj(grad) and not jnp.iscomplexobj(primal):
        grad = jnp.real(grad)
    return grad.astype(primal.dtype)
