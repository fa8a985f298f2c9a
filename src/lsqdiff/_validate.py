"""Input checks shared by the solvers: every error names the argument at fault."""

from __future__ import annotations

import numbers
from typing import Any

import array_api_compat as aac

from .backends import backend_for
from .operator import LinearOperator, dtype_name

#: The largest iteration limit a solve runs with (int32's maximum: iteration counts
#: are int32 under JAX); ``maxiter`` and ``grad_maxiter`` above it are clamped to it.
MAX_ITERATIONS = 2 ** 31 - 1


def namespace_of_b(b: Any) -> Any:
    """The array namespace of ``b``, which every other input must share."""
    if isinstance(b, (list, tuple, numbers.Number)) or not aac.is_array_api_obj(b):
        raise TypeError(
            f"b must be an array of a supported framework (NumPy, PyTorch, JAX, CuPy or "
            f"any array-API library), got {type(b).__name__}"
        )
    return aac.array_namespace(b)


def check_same_framework(name: str, arr: Any, b: Any, xp: Any) -> None:
    """``arr`` must come from ``b``'s framework and sit on ``b``'s device."""
    try:
        other = aac.array_namespace(arr)
    except TypeError:
        raise TypeError(
            f"{name} must be an array of b's framework, a sparse matrix of it or a "
            f"lsqdiff.LinearOperator, got {type(arr).__name__}"
        ) from None
    if other is not xp:
        raise TypeError(
            f"{name} and b come from different array frameworks "
            f"({type(arr).__module__}.{type(arr).__name__} vs "
            f"{type(b).__module__}.{type(b).__name__}); convert one of them"
        )
    check_same_device(name, arr, b)


def check_same_device(name: str, arr: Any, b: Any) -> None:
    try:
        da, db = aac.device(arr), aac.device(b)
    except Exception:  # traced arrays (JAX under jit) may not report a device
        return
    if da is not None and db is not None and da != db:
        raise TypeError(f"{name} is on device {da} but b is on device {db}; move one of them")


def check_shapes(shape_A: tuple[int, ...], b: Any, x0: Any) -> None:
    if len(shape_A) != 2:
        raise ValueError(f"A must be 2-D, got shape {tuple(shape_A)}")
    m, n = shape_A
    if b.ndim not in (1, 2):
        raise ValueError(f"b must be 1-D (m,) or 2-D (m, k), got shape {tuple(b.shape)}")
    if b.shape[0] != m:
        raise ValueError(f"b has {b.shape[0]} rows but A has {m} (A is {m}x{n}, b is {tuple(b.shape)})")
    if x0 is not None:
        want = (n,) + tuple(b.shape[1:])
        if tuple(x0.shape) != want:
            raise ValueError(f"x0 must have shape {want} to match A {tuple(shape_A)} and b "
                             f"{tuple(b.shape)}, got {tuple(x0.shape)}")


def check_options(atol: Any, btol: Any, conlim: Any, maxiter: Any) -> None:
    for name, value in (("atol", atol), ("btol", btol), ("conlim", conlim)):
        check_tolerance(name, value)
    if maxiter is not None:
        if not isinstance(maxiter, numbers.Integral) or isinstance(maxiter, bool):
            raise TypeError(f"maxiter must be a non-negative int or None, got {type(maxiter).__name__}")
        if maxiter < 0:
            raise ValueError(f"maxiter must be >= 0, got {maxiter}")


def check_damp(damp: Any, b: Any, xp: Any) -> Any:
    """``damp`` checked and, where it is concrete, as a Python float.

    A 0-d array stays one only where it must: traced (JAX) or carrying
    derivatives (a torch tensor that requires grad, or a forward-mode dual); it
    must then come from ``b``'s framework (namespace ``xp``), whose autodiff
    differentiates it. Any other real 0-d array or array scalar, of any
    framework, becomes a float (a NumPy scalar in a PyTorch solve, a concrete
    JAX array in a NumPy one)."""
    if isinstance(damp, bool) or not (isinstance(damp, numbers.Number) or hasattr(damp, "dtype")):
        raise TypeError(f"damp must be a real number or a 0-d real array, got "
                        f"{type(damp).__name__}")
    if not hasattr(damp, "dtype"):  # a Python number
        if not isinstance(damp, numbers.Real):
            raise TypeError(f"damp must be a real number or a 0-d real array, got "
                            f"{type(damp).__name__} {damp!r}: the damping is real")
        return _nonnegative_damp(damp)
    if getattr(damp, "ndim", 0) != 0:
        raise ValueError(f"damp must be a scalar, got an array of shape {tuple(damp.shape)}")
    try:
        ns = aac.array_namespace(damp)
    except TypeError:
        raise TypeError(f"damp must be a real number or a 0-d real array, got "
                        f"{type(damp).__name__}") from None
    if not ns.isdtype(damp.dtype, ("real floating", "integral")):
        raise TypeError(f"damp must be a real number or a 0-d real array, got an array of "
                        f"dtype {damp.dtype}" + (": the damping is real" if ns.isdtype(
                            damp.dtype, "complex floating") else ""))
    value = concrete_float(damp)
    if value is not None and not backend_for(ns).carries_derivative(damp):
        return _nonnegative_damp(value)
    if ns is not xp:
        what = "is traced" if value is None else "requires grad"
        raise TypeError(
            f"damp is a {_qualname(damp)} that {what}, but b is a {_qualname(b)}: a solve "
            "differentiates damp only in b's framework; pass A and b from damp's framework, "
            "or damp as a Python float")
    if value is not None:
        _nonnegative_damp(value)
    return damp


def _qualname(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__name__}"


def _nonnegative_damp(value: Any) -> float:
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range
        raise ValueError(f"damp must be a float-sized number, got an int of "
                         f"{len(str(value))} digits") from None
    if not value >= 0:
        raise ValueError(f"damp must be >= 0, got {value}")
    return value


def check_iteration_limit(name: str, value: Any) -> None:
    """``value`` is None or a non-negative int (``maxiter``, ``grad_maxiter``)."""
    if value is None:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be a non-negative int or None, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_tolerance(name: str, value: Any) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def concrete_float(value: Any) -> float | None:
    """``value`` as a Python float, or None for a traced (JAX) value."""
    if hasattr(value, "detach"):  # a torch tensor that may require grad
        value = value.detach()
    try:
        return float(value)
    except Exception:
        return None


def operator_dtype(A: LinearOperator, xp: Any) -> Any:
    """A LinearOperator's dtype (None: b's) as a dtype of ``b``'s namespace ``xp``."""
    if A.dtype is None:
        return None
    dtype = getattr(xp, dtype_name(A.dtype), None)
    if dtype is None:
        raise TypeError(f"A: the LinearOperator's dtype {A.dtype!r} has no counterpart "
                        f"{dtype_name(A.dtype)!r} in b's framework")
    return dtype


def is_operator(A: Any) -> bool:
    return isinstance(A, LinearOperator)
