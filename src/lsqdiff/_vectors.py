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
"""

from __future__ import annotations

from typing import Any


class NewArrays:
    """Every update returns a new array; nothing is overwritten."""

    inplace = False

    @staticmethod
    def xpay(x: Any, a: Any, y: Any) -> Any:
        """``x + a * y`` (may overwrite ``y``)."""
        return x + a * y

    @staticmethod
    def axpy(a: Any, x: Any, y: Any) -> Any:
        """``y + a * x`` (may overwrite ``y``)."""
        return y + a * x

    @staticmethod
    def scale(a: Any, y: Any) -> Any:
        """``y * a`` (may overwrite ``y``)."""
        return y * a

    @staticmethod
    def own(y: Any) -> Any:
        """``y`` as a vector of its own, safe to overwrite apart from ``y``."""
        return y


NEW_ARRAYS = NewArrays()
