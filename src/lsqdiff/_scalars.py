"""Where the scalar recurrences live.

LSMR and LSQR carry a few dozen scalars per right-hand side (Givens rotations,
norm estimates). The recurrences are written once against the small interface
below and run on one of two implementations:

* `HostScalars` -- Python floats. Used by eager backends for a single
  right-hand side: each scalar operation costs tens of nanoseconds instead of
  a framework call (a kernel launch on a GPU).
* `ArrayScalars` -- arrays of the solve's namespace, shape ``()`` or
  ``(k,)``. Used when the loop is traced (JAX) and for ``k`` right-hand sides,
  where every column has its own recurrences.
* `HostArrayScalars` -- ``(k,)`` host arrays (NumPy) beside vectors of another
  framework on the CPU (PyTorch): a NumPy operation on ``k`` numbers costs a
  fraction of a framework's dispatch, and the arrays cross to the vectors
  without a copy.

Both give `pow2`, the power of two the recurrences are normalised by
(`lsqdiff._stopping.start`).
"""

from __future__ import annotations

import math
from typing import Any

from ._validate import concrete_float


class HostScalars:
    """Scalar operations on Python floats, with IEEE semantics for division.

    ``tiny`` is the smallest normal number of the vectors' dtype (`recip`).
    """

    batched = False

    def __init__(self, tiny: float):
        self.tiny = tiny

    def const(self, value: Any) -> float:
        return concrete_float(value)

    def int_const(self, value: int) -> int:
        return int(value)

    sqrt = staticmethod(math.sqrt)
    hypot = staticmethod(math.hypot)
    abs = staticmethod(abs)

    @staticmethod
    def maximum(a: float, b: float) -> float:
        return a if a >= b else b

    @staticmethod
    def minimum(a: float, b: float) -> float:
        return a if a <= b else b

    @staticmethod
    def where(cond: bool, a: Any, b: Any) -> Any:
        return a if cond else b

    @staticmethod
    def isfinite(a: float) -> bool:
        return math.isfinite(a)

    @staticmethod
    def any(cond: bool) -> bool:
        return bool(cond)

    @staticmethod
    def logical_and(a: bool, b: bool) -> bool:
        return a and b

    @staticmethod
    def logical_or(a: bool, b: bool) -> bool:
        return a or b

    @staticmethod
    def logical_not(a: bool) -> bool:
        return not a

    @staticmethod
    def div(a: float, b: float) -> float:
        # Python raises on x / 0; the recurrences expect IEEE inf/nan like SciPy's.
        if b != 0:
            return a / b
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)

    def recip(self, a: float) -> float:
        """``1/a`` for ``a`` at least ``tiny``, else 0: normalising a zero vector
        leaves it zero, and so does normalising one whose norm is subnormal (as
        where subnormals are flushed to zero, XLA on CPU): its reciprocal may
        overflow, and a vector of subnormals is rounding noise."""
        return 1.0 / a if a >= self.tiny else 0.0

    @staticmethod
    def pow2(a: float) -> float:
        """A power of two within a factor 2 of ``a > 0`` (1 for 0, NaN or Inf):
        dividing by it is exact."""
        if not (a > 0 and math.isfinite(a)):
            return 1.0
        return math.ldexp(1.0, math.frexp(a)[1] - 1)


class ArrayScalars:
    """Scalar operations on 0-d or ``(k,)`` arrays of namespace ``xp``."""

    batched = True

    def __init__(self, xp: Any, dtype: Any, device: Any, shape: tuple[int, ...], tiny: float):
        self.xp = xp
        self.dtype = dtype
        self.device = device
        self.shape = shape
        self.tiny = tiny
        self.sqrt = xp.sqrt
        self.hypot = xp.hypot
        self.abs = xp.abs
        self.maximum = xp.maximum
        self.minimum = xp.minimum
        self.isfinite = xp.isfinite
        self.any = xp.any
        self.logical_and = xp.logical_and
        self.logical_or = xp.logical_or
        self.logical_not = xp.logical_not

    @staticmethod
    def to_vectors(a: Any) -> Any:
        """A scalar array as the vectors take it: itself, in the same namespace."""
        return a

    def const(self, value: Any) -> Any:
        if hasattr(value, "shape"):
            return self.xp.broadcast_to(self.xp.astype(value, self.dtype), self.shape)
        return self.xp.full(self.shape, value, dtype=self.dtype, device=self.device)

    def int_const(self, value: int) -> Any:
        return self.xp.full(self.shape, value, dtype=self.xp.int32, device=self.device)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        xp = self.xp
        ref = b if hasattr(b, "dtype") else a
        if not hasattr(a, "dtype"):
            a = xp.asarray(a, dtype=ref.dtype, device=self.device)
        if not hasattr(b, "dtype"):
            b = xp.asarray(b, dtype=ref.dtype, device=self.device)
        return xp.where(cond, a, b)

    @staticmethod
    def div(a: Any, b: Any) -> Any:
        return a / b

    def recip(self, a: Any) -> Any:
        """``1/a`` where ``a`` is at least ``tiny``, else 0 (`HostScalars.recip`),
        without dividing by zero anywhere."""
        positive = a >= self.tiny
        return self.where(positive, 1 / self.where(positive, a, 1.0), 0.0)

    def pow2(self, a: Any) -> Any:
        """A power of two within a factor 2 of ``a > 0`` (1 for 0, NaN or Inf).
        ``2.0 ** k`` for integral ``k`` is exact in NumPy, PyTorch and XLA on CPU;
        where a framework rounds it, the normalisation is merely inexact."""
        xp = self.xp
        ok = xp.logical_and(a > 0, xp.isfinite(a))
        return self.where(ok, 2.0 ** xp.floor(xp.log2(self.where(ok, a, 1.0))), 1.0)


class HostArrayScalars(ArrayScalars):
    """`ArrayScalars` on host arrays of namespace ``xp`` (NumPy) for vectors of
    namespace ``vxp`` (PyTorch on the CPU).

    ``to_vectors`` hands a host array to ``vxp`` (other values pass as they
    are), ``from_vectors`` an array of ``vxp`` (a damp) to the host; both
    without a copy. The vector updates (`lsqdiff._vectors.NewArrays`) and
    `where` on vectors take their scalars through ``to_vectors``; the norms come
    from the backend as host arrays.
    """

    def __init__(self, xp: Any, dtype: Any, shape: tuple[int, ...], tiny: float, vxp: Any,
                 to_vectors: Any, from_vectors: Any):
        super().__init__(xp, dtype, "cpu", shape, tiny)
        self.vxp = vxp
        self.to_vectors = to_vectors  # type: ignore[method-assign]
        self.from_vectors = from_vectors

    def const(self, value: Any) -> Any:
        return super().const(self.from_vectors(value))

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        rank = len(self.shape)
        if getattr(a, "ndim", 0) > rank or getattr(b, "ndim", 0) > rank:  # vectors
            vxp = self.vxp
            a, b = self.to_vectors(a), self.to_vectors(b)
            ref = b if hasattr(b, "dtype") else a
            if not hasattr(a, "dtype"):
                a = vxp.asarray(a, dtype=ref.dtype, device=ref.device)
            if not hasattr(b, "dtype"):
                b = vxp.asarray(b, dtype=ref.dtype, device=ref.device)
            return vxp.where(self.to_vectors(cond), a, b)
        # A Python number beside an array takes the array's dtype in NumPy 2
        # (NEP 50), as `ArrayScalars.where` makes it do: no conversion needed.
        return self.xp.where(cond, a, b)
