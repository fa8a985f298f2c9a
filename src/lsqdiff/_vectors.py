"""How the solvers update their long vectors: into new arrays, or in place.

LSMR and LSQR combine vectors of the operator's size a few times per
iteration (``x += c * hbar`` and the like). Written as new arrays, each update
allocates; traced (JAX, where XLA reuses the buffers itself) and batched
solves, and any array-API namespace, do that (`NEW_ARRAYS`). An eager backend
whose arrays can be updated in place gives its own implementation for a
single right-hand side (PyTorch: `lsqdiff.backends.torch`): on a CPU, a
fresh array of 50M floats costs ten times an in-place update, its pages
faulted in anew.

In-place updates overwrite only vectors the solver made itself, and only
``y``, the last argument; a vector kept under two names at the start
(LSMR's ``h = v``) is first split by `own`.

Updates that follow one another on the same vectors are grouped by `sweep`:
on a CPU an in-place implementation runs the group slice by slice, so that
each vector crosses the memory bus once for the whole group rather than once
per update (vectors of 50M floats are far larger than the caches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import array_api_compat as aac


def like(a: Any, y: Any) -> Any:
    """Scalar ``a`` (a Python number, or an array of the recurrences' real dtype)
    in vector ``y``'s dtype: a complex or half-precision vector must not be
    promoted by its real scalars (under JAX's strict promotion that is an error)."""
    if not isinstance(a, float) and hasattr(a, "dtype") and a.dtype != y.dtype:
        return aac.array_namespace(y).astype(a, y.dtype)
    return a


class NewArrays:
    """Every update returns a new array; nothing is overwritten.

    ``to_vectors`` hands each scalar to the vectors where the scalars live
    apart from them (`lsqdiff._scalars.HostArrayScalars`); None where they share
    a namespace.
    """

    inplace = False

    def __init__(self, to_vectors: Callable[[Any], Any] | None = None):
        self.to_vectors = to_vectors

    def _like(self, a: Any, y: Any) -> Any:
        return like(a if self.to_vectors is None else self.to_vectors(a), y)

    def xpay(self, x: Any, a: Any, y: Any) -> Any:
        """``x + a * y`` (may overwrite ``y``)."""
        return x + self._like(a, y) * y

    def axpy(self, a: Any, x: Any, y: Any) -> Any:
        """``y + a * x`` (may overwrite ``y``)."""
        return y + self._like(a, x) * x

    def scale(self, a: Any, y: Any) -> Any:
        """``y * a`` (may overwrite ``y``)."""
        return y * self._like(a, y)

    def scaled(self, a: Any, y: Any) -> Any:
        """``y * a`` as a new array, never overwriting ``y`` (the caller's ``b``,
        or a vector the state still holds): this class's `scale`, also where a
        subclass scales in place."""
        return NewArrays.scale(self, a, y)

    @staticmethod
    def own(y: Any) -> Any:
        """``y`` as a vector of its own, safe to overwrite apart from ``y``."""
        return y

    @staticmethod
    def sweep(body: Callable[..., tuple[tuple[Any, ...], tuple[Any, ...]]],
              vectors: Sequence[Any], norm: Callable[[Any], Any]
              ) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """``body(norm, *vectors)``: a group of updates and the norms they need.

        ``body`` combines the vectors with the updates above and returns new
        values for the leading ones, in their order, and the norms it took
        with ``norm``. An in-place implementation may call it on matching
        slices of the vectors, one after another, with a norm of its own
        for the slices, whose norms it then combines; it returns the leading
        vectors themselves. It also takes a vector that is not overwritten
        as a list of consecutive 1-D pieces (`lsqdiff.LinearOperator`'s
        ``rmatvec_pieces``).
        """
        return body(norm, *vectors)


NEW_ARRAYS = NewArrays()
