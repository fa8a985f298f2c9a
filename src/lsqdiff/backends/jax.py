"""JAX adapter: the loop is a ``lax.while_loop`` so solves trace under ``jit`` and ``vmap``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import sparse as jsparse

from .._info import SolveInfo
from ..operator import LinearOperator, MatVec, Operator
from ._base import Backend, State

# Diagnostics are JAX arrays here, so SolveInfo must pass through jit and vmap.
jax.tree_util.register_dataclass(
    SolveInfo,
    data_fields=["istop", "itn", "normr", "normar", "norma", "conda", "normx", "converged"],
    meta_fields=[],
)


class JaxBackend(Backend):
    name = "jax"
    traced = True

    def while_loop(self, cond: Callable[[State], Any], body: Callable[[State], State],
                   state: State) -> State:
        return jax.lax.while_loop(cond, body, state)

    def __init__(self, xp: Any):
        super().__init__(xp)
        self._compiled: dict[tuple[Any, ...], Callable[..., Any]] = {}

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
