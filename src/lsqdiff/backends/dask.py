"""Dask adapter: solves on ``dask.array`` inputs whose vectors stay distributed.

The solver's long vectors are Dask arrays chunked like ``A`` (``u`` by ``A``'s
row chunks, ``v`` and ``x`` by its column chunks), and so are its scalars:
0-d Dask arrays computed on the cluster next to the norms they come from
(`DaskBackend.array_scalars`). Each iteration builds one graph (two products,
two norms, the vector updates and the scalar recurrences), which is persisted
before the next one is built, so the graph never grows with the iteration
count; the only value brought to the client is the stop test, one round trip
per iteration. The norms are one pass over each vector: every chunk gives its
sum of squares and its scaled sum of squares, and a single task combines them
(`lsqdiff.backends._base` explains the scaling).

``A`` is persisted once per solve (if it is not already, its chunks are
computed once, not once per product), and ``b`` and ``x0`` are rechunked to
``A``'s row and column chunks where theirs differ, so that no product or
vector update rechunks inside the loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..operator import LinearOperator
from ._base import Backend, State, plain_norm_ok


class DaskBackend(Backend):
    name = "dask"
    array_scalars = True

    def prepare_inputs(self, A: Any, b: Any, x0: Any) -> tuple[Any, Any, Any]:
        if b.ndim == 2:  # the columns of a block: one chunk, so that its norms are per column
            b = b.rechunk({1: -1})
        if isinstance(A, LinearOperator):
            return A, b.persist(), None if x0 is None else x0.persist()
        A = A.persist()
        rows, cols = A.chunks
        b = b.rechunk({0: rows}).persist()
        if x0 is not None:
            x0 = x0.rechunk({0: cols, **({1: -1} if x0.ndim == 2 else {})}).persist()
        return A, b, x0

    def while_loop(self, cond: Callable[[State], Any], body: Callable[[State], State],
                   state: State) -> State:
        # Persisting cuts each iteration's graph from the previous ones; under a
        # distributed client it returns at once, and bool() waits for the stop test.
        (state,) = dask.persist(state)
        while bool(cond(state)):
            (state,) = dask.persist(body(state))
        return state

    def solve_context(self) -> Any:
        # As for NumPy: stopped columns of a 2-D b divide by zero, results masked.
        return np.errstate(all="ignore")

    def host_norm(self, v: Any) -> float:
        return float(self.array_norm(v).compute())

    def array_norm(self, v: Any) -> Any:
        real = np.finfo(v.dtype).dtype  # float64 for complex128
        k = v.shape[1:]
        parts = v.map_blocks(_chunk_norm_parts, new_axis=[1], dtype=real,
                             chunks=((1,) * v.numblocks[0], (3,)) + tuple((s,) for s in k))
        return parts.rechunk({0: -1}).map_blocks(
            _combine_norm_parts, plain_norm_ok, drop_axis=[0, 1], dtype=real,
            chunks=tuple((s,) for s in k), meta=np.empty((0,) * len(k), real))

    def to_host(self, value: Any) -> Any:
        value = np.asarray(value.compute() if isinstance(value, da.Array) else value)
        return value.item() if value.ndim == 0 else value


def _chunk_norm_parts(block: np.ndarray) -> np.ndarray:
    """``(1, 3[, k])``: a chunk's largest magnitude ``s``, its sum of squares
    scaled by ``s`` and its plain sum of squares (per column)."""
    a = np.abs(block)
    with np.errstate(all="ignore"):  # the plain squares may over- or underflow
        s = np.max(a, axis=0, initial=0.0)
        good = np.logical_and(s > 0, s < math.inf)
        q = np.sum((a / np.where(good, s, 1.0)) ** 2, axis=0)
        plain = np.sum(a * a, axis=0)
    return np.stack([s, q, plain])[None]


def _combine_norm_parts(parts: np.ndarray, plain_ok: Callable[..., Any]) -> np.ndarray:
    """The norm from every chunk's parts: the plain one where it is exact to
    rounding, else the scaled one (0, Inf and NaN columns give 0, Inf and NaN)."""
    s, q, plain = parts[:, 0], parts[:, 1], parts[:, 2]
    with np.errstate(all="ignore"):
        r = np.sqrt(np.sum(plain, axis=0))
        top = np.max(s, axis=0)
        good = np.logical_and(top > 0, top < math.inf)
        top1 = np.where(good, top, 1.0)
        scaled = np.where(good, top1 * np.sqrt(np.sum(q * (s / top1) ** 2, axis=0)), top)
    return np.asarray(np.where(plain_ok(r, np, r.dtype), r, scaled))
