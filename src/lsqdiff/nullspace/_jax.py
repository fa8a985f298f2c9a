"""JAX part of `lsqdiff.nullspace.project`: ``ravel_pytree`` and ``jax.linearize``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

import array_api_compat
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._core import Linearization, ProjectionInfo
from ._linear import LinearConstraint

# Diagnostics are JAX arrays here: the info must pass through jit and live in optax state.
jax.tree_util.register_dataclass(
    ProjectionInfo, data_fields=[f.name for f in fields(ProjectionInfo)], meta_fields=[])


def linearize(constraint: Callable[[Any], Any], params: Any, direction: Any) -> Linearization:
    """``J`` of ``constraint`` at ``params`` as JVP/VJP closures, ``direction`` flattened."""
    _check_match(params, direction)
    # ravel_pytree promotes mixed leaf dtypes to the widest and its unravel casts back.
    theta, unravel = ravel_pytree(params)
    h, unravel_h = ravel_pytree(direction)

    def c_of(flat: Any) -> Any:
        c = constraint(unravel(flat))
        if not isinstance(c, jax.Array):
            raise TypeError(f"constraint must return a 1-D JAX array, got {type(c).__name__}")
        if c.ndim != 1:
            raise ValueError(f"constraint must return a 1-D array, got shape {c.shape}")
        if not jnp.issubdtype(c.dtype, jnp.floating):
            raise TypeError(f"constraint must return a real floating array, got {c.dtype}")
        return c

    if isinstance(constraint, LinearConstraint):
        c, jvp, vjp = _own_products(constraint, params, theta, unravel)
    else:
        # Linearise once: every product with J replays the linear part only, and
        # its transpose gives J^T without evaluating the constraint again.
        c, jvp = jax.linearize(c_of, theta)
        vjp = jax.linear_transpose(jvp, theta)
    dtype = jnp.result_type(theta.dtype, h.dtype, c.dtype)

    def matvec(v: Any) -> Any:
        return jvp(v.astype(theta.dtype)).astype(dtype)

    def rmatvec(u: Any) -> Any:
        return vjp(u.astype(c.dtype))[0].astype(dtype)

    return Linearization(xp=array_api_compat.array_namespace(c), dtype=dtype, n=theta.shape[0],
                         h=h.astype(dtype),
                         c=c.astype(dtype), matvec=matvec, rmatvec=rmatvec,
                         unflatten=unravel_h, host=jnp.asarray)


def _own_products(constraint: LinearConstraint, params: Any, theta: Any, unravel: Any
                  ) -> tuple[Any, Callable[[Any], Any], Callable[[Any], Any]]:
    """``c``, ``v -> A v`` and ``u -> (A^T u,)`` of a `LinearConstraint`, flat, its
    outputs checked at every call (at trace time under ``jit``)."""

    def check(out: Any, shape: tuple | None) -> Any:
        if not isinstance(out, jax.Array) or out.ndim != 1 or (shape and out.shape != shape) \
                or out.dtype != theta.dtype:
            raise ValueError(f"matvec must return a 1-D array of shape {shape or '(k,)'} and the "
                             f"parameters' dtype {theta.dtype}, got {type(out).__name__} of "
                             f"shape {jnp.shape(out)} and dtype {jnp.result_type(out)}")
        return out

    c = check(constraint.matvec(params), None)
    if constraint.offset is not None:
        if jnp.shape(constraint.offset) != c.shape:
            raise ValueError(f"offset must have matvec's shape {c.shape}, got "
                             f"{jnp.shape(constraint.offset)}")
        c = c - jnp.asarray(constraint.offset).astype(c.dtype)
    p_tree = jax.tree_util.tree_structure(params)

    def vjp(u: Any) -> tuple[Any]:
        out = constraint.rmatvec(u)
        if jax.tree_util.tree_structure(out) != p_tree:
            raise ValueError(f"rmatvec must return the parameters' structure {p_tree}, got "
                             f"{jax.tree_util.tree_structure(out)}")
        for (path, p), g in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                jax.tree_util.tree_leaves(out)):
            where = jax.tree_util.keystr(path) or "(the array)"
            if jnp.shape(g) != jnp.shape(p) or jnp.result_type(g) != jnp.result_type(p):
                raise ValueError(f"rmatvec's entry {where} must have its parameter's shape "
                                 f"{jnp.shape(p)} and dtype {jnp.result_type(p)}, got "
                                 f"{jnp.shape(g)} and {jnp.result_type(g)}")
        return (ravel_pytree(out)[0],)

    return c, lambda v: check(constraint.matvec(unravel(v)), c.shape), vjp


def _check_match(params: Any, direction: Any) -> None:
    p_leaves, p_tree = jax.tree_util.tree_flatten(params)
    h_leaves, h_tree = jax.tree_util.tree_flatten(direction)
    if p_tree != h_tree:
        raise ValueError(f"direction must have params' structure: {h_tree} vs {p_tree}")
    if not p_leaves:
        raise ValueError("params is empty")
    for path_leaf, h in zip(jax.tree_util.tree_flatten_with_path(params)[0], h_leaves):
        path, p = path_leaf
        where = jax.tree_util.keystr(path) or "(the array)"
        if not isinstance(h, jax.Array):
            raise TypeError(f"direction{where} must be a JAX array, got {type(h).__name__}")
        if jnp.shape(p) != jnp.shape(h):
            raise ValueError(f"direction{where} has shape {jnp.shape(h)} but params{where} "
                             f"has {jnp.shape(p)}")
        for name, leaf in (("params", p), ("direction", h)):
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise TypeError(f"{name}{where} must be a real floating array, got {leaf.dtype}")
