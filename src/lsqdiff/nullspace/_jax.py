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

    # Linearise once: every product with J replays the linear part only, and its
    # transpose gives J^T without evaluating the constraint again.
    c, jvp = jax.linearize(c_of, theta)
    vjp = jax.linear_transpose(jvp, theta)
    dtype = jnp.result_type(theta.dtype, h.dtype, c.dtype)

    def matvec(v: Any) -> Any:
        return jvp(v.astype(theta.dtype)).astype(dtype)

    def rmatvec(u: Any) -> Any:
        return vjp(u.astype(c.dtype))[0].astype(dtype)

    return Linearization(xp=array_api_compat.array_namespace(c), dtype=dtype, h=h.astype(dtype),
                         c=c.astype(dtype), matvec=matvec, rmatvec=rmatvec,
                         unflatten=unravel_h, host=jnp.asarray)


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
