"""Input checks shared by the solvers: every error names the argument at fault."""

from __future__ import annotations

import numbers
from typing import Any

import array_api_compat as aac

from .operator import LinearOperator

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


def check_options(damp: Any, atol: Any, btol: Any, conlim: Any, maxiter: Any) -> None:
    for name, value in (("atol", atol), ("btol", btol), ("conlim", conlim)):
        check_tolerance(name, value)
    if maxiter is not None:
        if not isinstance(maxiter, numbers.Integral) or isinstance(maxiter, bool):
            raise TypeError(f"maxiter must be a non-negative int or None, got {type(maxiter).__name__}")
        if maxiter < 0:
            raise ValueError(f"maxiter must be >= 0, got {maxiter}")
    if isinstance(damp, bool) or not (isinstance(damp, numbers.Real) or hasattr(damp, "dtype")):
        raise TypeError(f"damp must be a real number or a 0-d real array, got {type(damp).__name__}")
    if hasattr(damp, "dtype"):
        if getattr(damp, "ndim", 0) != 0:
            raise ValueError(f"damp must be a scalar, got an array of shape {tuple(damp.shape)}")
        value = concrete_float(damp)
        if value is None:  # a traced value: its sign cannot be checked here
            return
    else:
        value = damp
    if not value >= 0:
        raise ValueError(f"damp must be >= 0, got {value}")


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


def is_operator(A: Any) -> bool:
    return isinstance(A, LinearOperator)
