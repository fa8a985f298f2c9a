"""Linear operators: what the solvers multiply by.

A solve accepts a dense 2-D array, a sparse matrix of ``b``'s framework, or a
`LinearOperator` built from functions. Internally all three become an
`Operator`, whose ``matvec``/``rmatvec`` act on a vector ``(n,)`` or
on a block of columns ``(n, k)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat as aac

Array = Any
MatVec = Callable[[Array], Array]


class LinearOperator:
    """A matrix-free linear operator ``A`` of shape ``(m, n)``.

    Parameters
    ----------
    shape : tuple of int
        ``(m, n)``: ``matvec`` maps length-``n`` vectors to length-``m`` vectors.
    matvec : callable
        ``v -> A @ v`` for a 1-D array ``v`` of the solve's framework. It must
        return an array of that framework of shape ``(m,)``, checked on the
        first product of each solve; an output of another floating dtype is
        cast to the solve's (a complex output for a real solve is an error:
        give ``dtype``). Likewise ``rmatvec``, ``matmat`` and ``rmatmat``.
    rmatvec : callable, optional
        ``u -> A^H @ u`` (conjugate transpose). When omitted, it is derived
        from ``matvec`` where the framework can do so: by
        ``jax.linear_transpose`` under JAX and by ``torch.func.vjp`` under
        PyTorch. NumPy, CuPy and other frameworks need it given. ``matvec``
        must then be linear: JAX refuses one that is not (a ValueError naming
        matvec); PyTorch cannot tell, and derives the adjoint of its
        derivative at 0.
    dtype : dtype or str, optional
        The operator's dtype; defaults to ``b``'s. Give it when a complex
        operator acts on a real ``b``. A dtype of any framework or its name
        (``"float64"``, ``np.complex128``, ``torch.float32``, ``float``): the
        solve takes the dtype of that name in ``b``'s framework.
    matmat, rmatmat : callable, optional
        Block versions ``V -> A @ V`` and ``U -> A^H @ U`` for 2-D inputs of
        shape ``(n, k)`` and ``(m, k)``. Used for 2-D ``b``; otherwise columns
        are applied one at a time (or with ``jax.vmap`` under JAX).
    params : tensor, sequence or dict of tensors, or torch.nn.Module, optional
        PyTorch only: the tensors ``matvec`` depends on that should receive
        gradients (a module stands for its parameters). Under JAX nothing is
        needed: arrays ``matvec`` closes over are found by
        ``jax.closure_convert`` and receive gradients.
    rmatvec_pieces : callable, optional
        PyTorch, one right-hand side: ``u -> [p_1, p_2, ...]``, the 1-D
        tensors whose concatenation is ``A^H @ u`` (say, a gradient with one
        tensor per parameter). The solver then combines the pieces with its
        vectors as they are, without first copying them into one vector of
        length ``n``; ``rmatvec`` is still used elsewhere.

    Examples
    --------
    >>> import numpy as np, lsqdiff
    >>> d = np.array([1.0, 2.0, 4.0])
    >>> A = lsqdiff.LinearOperator((3, 3), lambda v: d * v, lambda u: d * u)
    >>> x, info = lsqdiff.lsmr(A, np.array([1.0, 2.0, 4.0]), atol=1e-10, btol=1e-10)
    >>> np.round(x, 8)
    array([1., 1., 1.])
    """

    def __init__(
        self,
        shape: tuple[int, int],
        matvec: MatVec,
        rmatvec: MatVec | None = None,
        *,
        dtype: Any = None,
        matmat: MatVec | None = None,
        rmatmat: MatVec | None = None,
        params: Any = None,
        rmatvec_pieces: Callable[[Array], list[Array]] | None = None,
    ):
        try:
            m, n = (int(s) for s in shape)
        except (TypeError, ValueError):
            raise ValueError(f"shape must be a pair of integers (m, n), got {shape!r}") from None
        if m < 0 or n < 0:
            raise ValueError(f"shape must be non-negative, got {shape!r}")
        if dtype is not None and dtype_name(dtype) is None:
            raise TypeError(f"dtype must be a dtype of an array framework or the name of one "
                            f"('float32', 'float64', 'complex64', 'complex128', ...), got "
                            f"{dtype!r}")
        for name, f in (("matvec", matvec), ("rmatvec", rmatvec),
                        ("matmat", matmat), ("rmatmat", rmatmat),
                        ("rmatvec_pieces", rmatvec_pieces)):
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be callable, got {type(f).__name__}")
        self.shape = (m, n)
        self.matvec = matvec
        self.rmatvec = rmatvec
        self.dtype = dtype
        self.matmat = matmat
        self.rmatmat = rmatmat
        self.params = params
        self.rmatvec_pieces = rmatvec_pieces

    def __repr__(self) -> str:
        return f"<LinearOperator shape={self.shape} dtype={self.dtype}>"


@dataclass(frozen=True)
class Operator:
    """The solver's view of ``A``: products with vectors or column blocks, and
    optionally ``A^H u`` as consecutive pieces (`LinearOperator`'s
    ``rmatvec_pieces``), for in-place solves (`lsqdiff._vectors`)."""

    shape: tuple[int, int]
    matvec: MatVec
    rmatvec: MatVec
    rmatvec_pieces: Callable[[Array], list[Array]] | None = None


def preconditioned(A: Operator, N: Operator, damp: Any, xp: Any) -> Operator:
    """``A N`` or, with ``damp`` (not None), ``K = [A N; damp N]`` of shape
    ``(m + n, n)``: the operator of a right-preconditioned solve (`lsqdiff._precond`)."""
    m, n = A.shape
    if damp is None:
        return Operator((m, n), lambda v: A.matvec(N.matvec(v)),
                        lambda u: N.rmatvec(A.rmatvec(u)))

    def matvec(v: Array) -> Array:
        w = N.matvec(v)
        return xp.concat([A.matvec(w), damp * w], axis=0)

    return Operator((m + n, n), matvec,
                    lambda u: N.rmatvec(A.rmatvec(u[:m, ...]) + damp * u[m:, ...]))


def diagonal(d: Array, xp: Any) -> Operator:
    """``diag(d)`` on vectors ``(n,)`` and blocks ``(n, k)``."""
    dh = xp.conj(d) if xp.isdtype(d.dtype, "complex floating") else d

    def scale(s: Array) -> MatVec:
        return lambda v: (s if v.ndim == 1 else s[:, None]) * v

    return Operator((d.shape[0], d.shape[0]), scale(d), scale(dh))


@dataclass(frozen=True)
class Scaled:
    """``A diag(d)`` (with ``damp``: ``[A diag(d); damp diag(d)]``) held as its
    arrays, for a solve to take as its operator: unlike a `LinearOperator`'s
    closures they can be a traced backend's arguments (JAX compiles the loop once
    and differentiates them). ``A``: a dense array or sparse matrix; ``dtype``,
    ``shape``: the solve's and the operator's. ``params``: the tensors PyTorch
    differentiates (A's, and damp's where it requires grad)."""

    A: Any
    d: Array
    damp: Any
    dtype: Any
    shape: tuple[int, int]
    params: tuple[Any, ...] = ()


def dense_operator(A: Array, xp: Any) -> Operator:
    """Products with a dense 2-D array; ``A^H`` is formed once, not per product."""
    AH = xp.conj(A).T if xp.isdtype(A.dtype, "complex floating") else A.T
    return Operator(tuple(A.shape), lambda v: A @ v, lambda u: AH @ u)


def columnwise(vec: MatVec, xp: Any) -> MatVec:
    """Lift a vector function to 1-D or 2-D inputs by applying it per column."""

    def apply(V: Array) -> Array:
        if V.ndim == 1:
            return vec(V)
        return xp.stack([vec(V[:, j]) for j in range(V.shape[1])], axis=1)

    return apply


def narrow_columnwise(product: MatVec, below: int, xp: Any) -> MatVec:
    """``product`` taking blocks of fewer than ``below`` columns one column at a
    time (`columnwise`): on CPUs a matrix product with two or three columns may
    cost more than that many matrix-vector products (docs/benchmarks.md).

    Examples
    --------
    >>> import numpy as np
    >>> A = np.arange(6.0).reshape(3, 2)
    >>> product = narrow_columnwise(lambda v: A @ v, 4, np)
    >>> product(np.eye(2)).tolist()  # two columns: two matrix-vector products
    [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    """
    by_column = columnwise(product, xp)

    def apply(V: Array) -> Array:
        return by_column(V) if V.ndim == 2 and 1 < V.shape[1] < below else product(V)

    return apply


def function_operator(op: LinearOperator, xp: Any, dtype: Any,
                      derive: Callable[[MatVec], MatVec],
                      lift: Callable[[MatVec, Any], MatVec] = columnwise) -> Operator:
    """Products with a `LinearOperator` in a solve of ``dtype``: the user's
    functions checked (`checked`), ``rmatvec`` derived from ``matvec`` by
    ``derive`` where not given, blocks via ``matmat`` or ``lift``."""
    m, n = op.shape

    def check(name: str, f: MatVec | None, rows: int) -> MatVec | None:
        return None if f is None else checked(name, f, rows, xp, dtype)

    matvec = check("matvec", op.matvec, m)
    rmatvec = check("rmatvec", op.rmatvec, n) or derive(matvec)

    def pick(vec: MatVec, mat: MatVec | None) -> MatVec:
        block = mat if mat is not None else lift(vec, xp)
        return lambda V: vec(V) if V.ndim == 1 else block(V)

    return Operator(op.shape, pick(matvec, check("matmat", op.matmat, m)),
                    pick(rmatvec, check("rmatmat", op.rmatmat, n)), op.rmatvec_pieces)


def checked(name: str, f: MatVec, rows: int, xp: Any, dtype: Any) -> MatVec:
    """``f`` with its first output checked: an array of namespace ``xp`` with
    ``rows`` rows and the input's columns. Its outputs of another real or complex
    floating dtype are cast to ``dtype``, except complex ones for a real ``dtype``
    (their imaginary part would be lost). Later outputs are only cast: a product
    keeps its shape and type from one call to the next (under JAX the one traced
    call is checked)."""
    first = True

    def product(v: Array) -> Array:
        nonlocal first
        out = f(v)
        if first:
            _check_output(name, out, (rows,) + tuple(v.shape[1:]), tuple(v.shape), xp, dtype)
            first = False
        return out if out.dtype == dtype else xp.astype(out, dtype)

    return product


def _check_output(name: str, out: Any, want: tuple[int, ...], given: tuple[int, ...], xp: Any,
                  dtype: Any) -> None:
    try:
        ours = out is not None and aac.array_namespace(out) is xp
    except TypeError:
        ours = False
    if not ours:
        module = type(out).__module__
        kind = "None" if out is None else type(out).__name__ if module == "builtins" else \
            f"{module}.{type(out).__name__}"
        raise TypeError(f"A: {name} returned {kind} for an input of shape {given}; expected an "
                        f"array of b's framework of shape {want}")
    if tuple(out.shape) != want:
        raise ValueError(f"A: {name} returned shape {tuple(out.shape)} for an input of shape "
                         f"{given}; expected {want}")
    if out.dtype == dtype:
        return
    if not xp.isdtype(out.dtype, ("real floating", "complex floating")):
        raise TypeError(f"A: {name} returned dtype {out.dtype}; expected {dtype} (the solve's "
                        "dtype) or another floating dtype")
    if xp.isdtype(out.dtype, "complex floating") and not xp.isdtype(dtype, "complex floating"):
        raise TypeError(f"A: {name} returned complex dtype {out.dtype} in a real solve of dtype "
                        f"{dtype}; give the LinearOperator dtype=complex for a complex operator")


#: Dtype names a `LinearOperator` accepts: the array API's, float16 and bfloat16.
DTYPE_NAMES = frozenset(
    ["bool", "float16", "bfloat16", "float32", "float64", "complex64", "complex128"]
    + [f"{u}int{bits}" for u in ("", "u") for bits in (8, 16, 32, 64)])


def dtype_name(dtype: Any) -> str | None:
    """The name of a dtype of any framework, or of a dtype name ('float64' for
    ``np.float64``, ``torch.float64`` and ``float``); None if it is no dtype."""
    if dtype is float or dtype is complex:
        return "float64" if dtype is float else "complex128"
    if isinstance(dtype, str):
        name = dtype
    else:
        name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)
        name = str(name).rsplit(".", 1)[-1]
    return name if name in DTYPE_NAMES else None
