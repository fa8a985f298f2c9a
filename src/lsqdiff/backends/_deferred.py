"""Deferred host scalars: the recurrences of one right-hand side, run on a Dask
worker in a few tasks per iteration instead of on the client.

`DeferredScalars` wraps `lsqdiff._scalars.HostScalars`: an operation on
Python numbers runs at once, an operation on a `Deferred` value records it.
The recurrences thus build, per iteration, a small graph of Python-float
operations (`Deferred`) over a few leaves: the norms (0-d Dask arrays) and the
previous state's scalars. Where a vector needs a scalar (``x + c * h``), the
scalar is `lift`-ed: one task evaluates its graph on a worker, with the
arithmetic of `HostScalars`, so the numbers are those of the host path (and
SciPy's). The vectors and all scalars of a state are persisted together and
the scalars fetched in one round trip (`DaskBackend.while_loop`).

Evaluation never raises: an operation that Python refuses (``x / 0``, the
square root of a negative number) gives NaN, as IEEE arithmetic would. Only
iterations run past a stop (discarded) meet those, since the host path runs
the same operations.
"""

from __future__ import annotations

import math
import operator
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np


class Deferred:
    """A scalar not known on the client: a leaf (``source[index]``, or a 0-d
    Dask array when ``index`` is None) or ``fn(*args)`` of other values."""

    # Dask arrays hand arithmetic with a Deferred to it (`_binary`), which lifts it.
    __array_ufunc__ = None
    __hash__ = object.__hash__

    def __init__(self, fn: Callable[..., Any] | None, args: tuple[Any, ...],
                 source: Any = None, index: int | None = None):
        self.fn, self.args, self.source, self.index = fn, args, source, index
        self._lifted: dict[np.dtype, Any] = {}

    def __bool__(self) -> bool:
        raise TypeError("a deferred scalar has no value on the client (internal error)")

    def __neg__(self) -> Any:
        return _apply(operator.neg, self)


def _binary(op: Callable[[Any, Any], Any], swap: bool = False) -> Callable[[Any, Any], Any]:
    def method(self: Deferred, other: Any) -> Any:
        a, b = (other, self) if swap else (self, other)
        if isinstance(other, da.Array):  # a vector: the scalar goes into its graph
            lifted = lift(self, other.dtype)
            return op(other, lifted) if swap else op(lifted, other)
        return _apply(op, a, b)
    return method


for _name, _op in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul),
                   ("truediv", operator.truediv), ("pow", operator.pow),
                   ("and", operator.and_), ("or", operator.or_)):
    setattr(Deferred, f"__{_name}__", _binary(_op))
    setattr(Deferred, f"__r{_name}__", _binary(_op, swap=True))
for _name, _op in (("lt", operator.lt), ("le", operator.le), ("gt", operator.gt),
                   ("ge", operator.ge), ("eq", operator.eq), ("ne", operator.ne)):
    setattr(Deferred, f"__{_name}__", _binary(_op))


def _apply(fn: Callable[..., Any], *args: Any) -> Any:
    if any(isinstance(a, Deferred) for a in args):
        return Deferred(fn, args)
    return fn(*args)


def leaf(source: Any, index: int | None = None) -> Deferred:
    """A leaf: ``source[index]`` of a persisted tuple, or the 0-d Dask array ``source``."""
    return Deferred(None, (), source, index)


class DeferredScalars:
    """`HostScalars`'s operations, recorded where an argument is `Deferred`.

    ``batched`` is True: stopped solves are frozen by masking
    (`lsqdiff._stopping.freeze`), so iterations run past a stop change nothing.
    """

    batched = True

    def __init__(self, host: Any):
        self.host = host
        self.tiny = host.tiny
        self.const, self.int_const = host.const, host.int_const
        for name in ("sqrt", "hypot", "abs", "maximum", "minimum", "isfinite", "any",
                     "logical_and", "logical_or", "logical_not", "div", "recip", "pow2"):
            fn = getattr(host, name)
            setattr(self, name, lambda *args, fn=fn: _apply(fn, *args))

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        if isinstance(a, da.Array) or isinstance(b, da.Array):  # vectors
            return da.where(lift(cond, bool) if isinstance(cond, Deferred) else cond, a, b)
        return _apply(self.host.where, cond, a, b)


def lift(value: Any, dtype: Any) -> Any:
    """A `Deferred` value as a 0-d Dask array of ``dtype``, computed by one task
    (once per value and dtype); other values pass unchanged."""
    if not isinstance(value, Deferred):
        return value
    dtype = np.dtype(dtype)
    if dtype not in value._lifted:
        value._lifted[dtype] = _task(_run_as, dtype, [value])
    return value._lifted[dtype]


def _task(fn: Callable[..., Any], dtype: np.dtype, values: Sequence[Any]) -> Any:
    """A 0-d Dask array of ``dtype``: ``fn(exprs, *sources)`` in one task, with
    ``exprs, sources = program(values)`` (sources are 0-d Dask arrays)."""
    exprs, sources = program(values)
    args = [a for s in sources for a in (s, "")]
    # Named here: tokenizing the expressions would cost more than running them.
    return da.blockwise(fn, "", (dtype, exprs), None, *args, dtype=dtype,
                        name=f"lsqdiff-scalars-{uuid.uuid4().hex}",
                        meta=np.empty((), dtype))


def program(roots: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """``roots`` as picklable expressions over their leaves' sources: returns
    the expressions and the distinct sources (their positional arguments in
    `_run`)."""
    sources: list[Any] = []
    where: dict[int, int] = {}
    memo: dict[int, Any] = {}

    def walk(v: Any) -> Any:
        if not isinstance(v, Deferred):
            return v
        if id(v) in memo:
            return memo[id(v)]
        if v.fn is None:
            if id(v.source) not in where:
                where[id(v.source)] = len(sources)
                sources.append(v.source)
            out: Any = _Leaf(where[id(v.source)], v.index)
        else:
            out = _Op(v.fn, tuple(walk(a) for a in v.args))
        memo[id(v)] = out
        return out

    return [walk(r) for r in roots], sources


class _Leaf:
    __slots__ = ("slot", "index")

    def __init__(self, slot: int, index: int | None):
        self.slot, self.index = slot, index


class _Op:
    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]):
        self.fn, self.args = fn, args


def _run(exprs: Any, *sources: Any) -> Any:
    """Evaluate expressions (one, or a tuple) of `program` on their sources'
    values, with Python numbers."""
    memo: dict[int, Any] = {}

    def ev(e: Any) -> Any:
        if isinstance(e, _Leaf):
            s = sources[e.slot]
            return _python(s) if e.index is None else s.item()[e.index]
        if not isinstance(e, _Op):
            return e
        if id(e) not in memo:
            args = [ev(a) for a in e.args]
            try:
                memo[id(e)] = e.fn(*args)
            except (ZeroDivisionError, ValueError, OverflowError):
                memo[id(e)] = math.nan
        return memo[id(e)]

    if isinstance(exprs, tuple):
        return tuple(ev(e) for e in exprs)
    return ev(exprs)


def _run_as(spec: tuple[np.dtype, list[Any]], *sources: Any) -> np.ndarray:
    dtype, (expr,) = spec
    return np.asarray(_run(expr, *sources), dtype=dtype)


def _run_all(spec: tuple[np.dtype, list[Any]], *sources: Any) -> np.ndarray:
    out = np.empty((), object)
    out[()] = _run(tuple(spec[1]), *sources)
    return out


def _python(value: Any) -> Any:
    """A 0-d NumPy value as the Python number the host recurrences use."""
    return value.item() if hasattr(value, "item") else value


def settle(values: Sequence[Any]) -> tuple[Any, Callable[[Any], list[Any]]]:
    """One task that evaluates ``values`` (`Deferred` or not) together, as a 0-d
    object array holding their tuple, and a function giving each value back as a
    leaf of that task's (persisted) result."""
    return (_task(_run_all, np.dtype(object), values),
            lambda done: [leaf(done, i) for i in range(len(values))])


def evaluate(value: Any) -> Any:
    """A `Deferred` value brought to the client as a Python number (one round
    trip); other values pass unchanged."""
    if not isinstance(value, Deferred):
        return value
    return settle([value])[0].compute().item()[0]
