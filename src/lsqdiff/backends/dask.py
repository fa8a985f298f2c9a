"""Dask adapter: solves on ``dask.array`` inputs whose vectors stay distributed.

The solver's long vectors are Dask arrays chunked like ``A`` (``u`` by ``A``'s
row chunks, ``v`` and ``x`` by its column chunks). Each iteration is built as
one lazy graph -- the two products, the vector updates, the three norms and the
scalar recurrences -- and the new state is persisted in one submission, so no
graph reaches back past the previous state, none grows with the iteration
count, and no product is computed twice. The scalar recurrences of one
right-hand side are deferred to the workers (`lsqdiff.backends._deferred`):
they run with the host's Python-float arithmetic, so nothing waits for a norm
on the client. From the third iteration on, a single right-hand side's
iteration is not built again: the second one's graph, fused into few tasks, is
resubmitted with new names (`lsqdiff.backends._dask_template`; 11 tasks for
``A`` in 4 row chunks, against about 45 built). The only value that comes back
is the state's scalars, in one round trip per iteration, fetched while the
next iteration already runs (`LOOKAHEAD`); the loop stops at the same
iteration as on the host, and the iteration submitted past the stop is dropped
(stopped states are frozen by masking, so it changes nothing). Each norm is
one pass over its vector: every chunk gives its sum of squares, its scaled sum
of squares and its largest entry, and a single task combines them
(`lsqdiff.backends._base` explains the scaling). Several right-hand sides
(2-D ``b``) keep their scalars as Dask arrays, persisted with the state once
per iteration (built, not fused) and the stop test fetched once per
iteration.

``A`` is persisted once per solve (if it is not already, its chunks are
computed once, not once per product), and ``b`` and ``x0`` are rechunked to
``A``'s row and column chunks where theirs differ (and to one chunk across
the columns of a 2-D ``b``), so that no product or vector update rechunks
inside the loop.
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
from ._dask_template import Submitted, Template, fetch
from ._deferred import Deferred, DeferredScalars, evaluate, leaf, settle


#: Iterations submitted before the oldest state's scalars are fetched: 1 overlaps
#: each round trip with the next iteration's work, at the price of one
#: iteration's work wasted at the stop.
LOOKAHEAD = 1

#: Whether iterations after the second resubmit its fused graph
#: (`lsqdiff.backends._dask_template`) instead of building their own.
FUSE = True


def _submit(state: State) -> tuple[State, tuple[list[str], Any]]:
    """Persist a state's vectors and scalars in one submission: returns the state
    (its scalars leaves of one persisted task) and ``(names, task)``: the
    entries that are scalars, and the task holding their tuple."""
    arrays = {k: v for k, v in state.items() if isinstance(v, da.Array)}
    names = [k for k in state if k not in arrays]
    task, leaves = settle([state[k] for k in names])
    arrays, done = dask.persist(arrays, task)
    return {**arrays, **dict(zip(names, leaves(done)))}, (names, done)


class _Built:
    """An iteration built by the solver's ``body`` and persisted as it is."""

    def __init__(self, state: State):
        self.state, (self.names, self.done) = _submit(state)

    def scalars(self) -> dict[str, Any]:
        return dict(zip(self.names, fetch(self.done).item()))

    def vectors(self) -> State:
        return {k: v for k, v in self.state.items() if isinstance(v, da.Array)}


class _Resubmitted:
    """An iteration submitted from the fused template of an earlier one."""

    def __init__(self, template: Template, previous: Submitted | None, count: int):
        self.template = template
        self.submitted = template.submit(previous, count)

    def scalars(self) -> dict[str, Any]:
        return dict(zip(self.template.names, fetch(self.submitted.fetch).item()))

    def vectors(self) -> State:
        return self.template.state(self.submitted)


class _Iterations:
    """A solve's iterations, submitted one after another: the first two built by
    ``body`` (the first one's state holds one array under two names, LSMR's
    ``h = v``), the others by resubmitting the second one's fused template
    (`lsqdiff.backends._dask_template`), or by ``body`` where there is none."""

    def __init__(self, body: Callable[[State], State], state: State):
        self.body = body
        self.last: _Built | _Resubmitted = _Built(state)
        self.count = 0

    def next(self) -> _Built | _Resubmitted:
        last = self.last
        self.count += 1
        if isinstance(last, _Resubmitted):
            self.last = _Resubmitted(last.template, last.submitted, self.count)
        else:
            out = self.body(last.state)
            template = None
            if self.count == 2 and FUSE:
                template = Template.build(last.state, last.done, last.names, out)
            self.last = _Built(out) if template is None else _Resubmitted(template, None,
                                                                          self.count)
        return self.last


class DaskBackend(Backend):
    name = "dask"

    def prepare_inputs(self, A: Any, b: Any, x0: Any) -> tuple[Any, Any, Any]:
        if b.ndim == 2:  # one chunk across the columns of a block: norms are per column
            b = b.rechunk({1: -1})
        if isinstance(A, LinearOperator):
            return A, b.persist(), None if x0 is None else x0.persist()
        A = A.persist()
        rows, cols = A.chunks
        b = b.rechunk({0: rows}).persist()
        if x0 is not None:
            x0 = x0.rechunk({0: cols, **({1: -1} if x0.ndim == 2 else {})}).persist()
        return A, b, x0

    def host_scalars(self, host: Any) -> tuple[Any, Callable[[Any], Any]]:
        return DeferredScalars(host), lambda v: leaf(self.array_norm(v))

    def while_loop(self, cond: Callable[[State], Any], body: Callable[[State], State],
                   state: State) -> State:
        if isinstance(state["istop"], da.Array):  # several right-hand sides: array scalars
            (state,) = dask.persist(state)
            while bool(cond(state)):
                (state,) = dask.persist(body(state))
            return state
        # One right-hand side: each iteration is submitted (vectors and scalars in
        # one persist) LOOKAHEAD iterations before its scalars are fetched, so the
        # round trip overlaps the next iterations' work. Iterations past the stop
        # change nothing (`DeferredScalars.batched`) and are dropped. ``cond``
        # reads the scalars only; the vectors are made arrays at the stop.
        iterations = _Iterations(body, state)
        pending = [iterations.last]
        while True:
            while len(pending) <= LOOKAHEAD:
                pending.append(iterations.next())
            done = pending.pop(0)
            scalars = done.scalars()
            if not cond(scalars):
                return {**done.vectors(), **scalars}
            if not pending:
                pending.append(iterations.next())

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
        if isinstance(value, Deferred):  # a solve that never looped (maxiter = 0)
            return evaluate(value)
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
