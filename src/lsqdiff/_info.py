"""The diagnostics a solve returns, and what each stop code means."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

#: Human text for each ``istop``; codes 0-7 are SciPy's, 8 is lsqdiff's own.
STOP_MESSAGES: dict[int, str] = {
    0: "The exact solution is x = 0 (or x = x0): nothing to do",
    1: "Ax - b is small enough, given atol, btol",
    2: "The least-squares solution is good enough, given atol",
    3: "The estimate of cond(Abar) has exceeded conlim",
    4: "Ax - b is small enough for this machine",
    5: "The least-squares solution is good enough for this machine",
    6: "Cond(Abar) seems to be too large for this machine",
    7: "The iteration limit has been reached",
    8: "A NaN or Inf appeared (in b, x0 or the operator's output); x is the last finite iterate",
}

#: Stop codes that mean the returned x solves the problem to the requested tolerance.
CONVERGED_CODES: tuple[int, ...] = (0, 1, 2, 4, 5)

#: Stop code for a non-finite value met during the solve.
ISTOP_NONFINITE = 8


@dataclass(frozen=True)
class SolveInfo:
    """Diagnostics of an LSMR or LSQR solve, with SciPy's names and meanings.

    Each field is a scalar when ``b`` is 1-D and holds one entry per column
    when ``b`` is 2-D. On eager backends (NumPy, PyTorch, CuPy,
    array-api-strict) the fields are host values: Python scalars for 1-D
    ``b``, NumPy arrays for 2-D ``b``. Under JAX they are JAX arrays, so a
    solve can be returned from ``jax.jit`` and mapped with ``jax.vmap``.

    Attributes
    ----------
    istop : int or array
        Why the iteration stopped (see `STOP_MESSAGES`): 0-7 as in
        SciPy's ``lsmr``/``lsqr``; 8 when a NaN or Inf appeared.
    itn : int or array
        Iterations taken.
    normr : float or array
        Estimate of ``sqrt(||b - A x||^2 + damp^2 ||x - x0||^2)``.
    normar : float or array
        Estimate of ``||A^H (b - A x) - damp^2 (x - x0)||``.
    norma : float or array
        Estimate of the Frobenius norm of ``[A; damp I]``.
    conda : float or array
        Estimate of the condition number of ``[A; damp I]``.
    normx : float or array
        ``||x||``; for LSQR with ``x0``, ``||x - x0||`` (SciPy's ``xnorm``).
    converged : bool or array
        True where ``istop`` is one of 0, 1, 2, 4, 5.

    Examples
    --------
    >>> import numpy as np, lsqdiff
    >>> x, info = lsqdiff.lsmr(np.eye(3), np.ones(3))
    >>> info.converged, info.istop
    (True, 1)
    >>> info.message
    'Ax - b is small enough, given atol, btol'
    """

    istop: Any
    itn: Any
    normr: Any
    normar: Any
    norma: Any
    conda: Any
    normx: Any
    converged: Any

    @property
    def message(self) -> str | list[str]:
        """The reason for stopping in words (one string per column for 2-D ``b``)."""
        try:
            codes = [int(c) for c in _flat(self.istop)]
        except TypeError as exc:  # a JAX tracer has no value yet
            raise TypeError(
                "info.message needs concrete stop codes; read it outside jax.jit/vmap"
            ) from exc
        texts = [STOP_MESSAGES[c] for c in codes]
        return texts if _is_batched(self.istop) else texts[0]

    def __repr__(self) -> str:
        parts = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"SolveInfo({parts})"


def _is_batched(value: Any) -> bool:
    return getattr(value, "ndim", 0) > 0


def _flat(value: Any) -> list[Any]:
    if not _is_batched(value):
        return [value]
    return [value[i] for i in range(value.shape[0])]


def make_info(state: dict[str, Any], backend: Any) -> SolveInfo:
    """Pack the final state's diagnostics, on the host for eager backends."""
    converged = stopped_by(state["istop"], CONVERGED_CODES)
    values = {k: state[k] for k in ("istop", "itn", "normr", "normar", "norma", "conda", "normx")}
    values["converged"] = converged
    if not backend.traced:
        values = {k: v if isinstance(v, (int, float, bool)) else backend.to_host(v)
                  for k, v in values.items()}
    return SolveInfo(**values)


def stopped_by(istop: Any, codes: tuple[int, ...]) -> Any:
    """Whether the stop code is one of ``codes``: a bool for a host code, else a
    boolean array; False for None (no stop code: see `lsqdiff._driver.lsmr_on`)."""
    if istop is None:
        return False
    if isinstance(istop, int):
        return istop in codes
    hit = istop == codes[0]
    for code in codes[1:]:
        hit = hit | (istop == code)
    return hit
