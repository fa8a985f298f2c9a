"""Diagnostics of the gradient's own solves: a warning when one stops without
converging, and `backward_diagnostics` to collect their `SolveInfo`."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from ._info import CONVERGED_CODES, ISTOP_NONFINITE, STOP_MESSAGES, SolveInfo


class GradientSolveWarning(UserWarning):
    """A solve inside a gradient (or a tangent) stopped without converging
    (``istop`` 3, 6, 7 or 8): the gradient may be inaccurate, or NaN where a
    NaN or Inf appeared. Raise ``grad_maxiter`` or loosen ``grad_atol``/``grad_btol``;
    `backward_diagnostics` shows each solve's `SolveInfo`.

    Examples
    --------
    >>> import warnings, numpy as np, lsqdiff
    >>> A = np.vander(np.linspace(0.0, 1.0, 6), 4)
    >>> (x, info), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, np.ones(6), grad_maxiter=1)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     grads = pullback(np.ones(4))
    >>> caught[0].category is lsqdiff.GradientSolveWarning
    True
    >>> [i.istop for i in grads.info]  # b_bar's solve at its limit says nothing of w: y, g solved
    [7, 7, 7]
    """


# Process-wide, not a context variable: PyTorch runs backward passes of CUDA
# tensors on its own threads and JAX runs host callbacks on runtime threads.
_LOGS: list[list[SolveInfo]] = []
_LOCK = threading.Lock()


@contextmanager
def backward_diagnostics() -> Iterator[list[SolveInfo]]:
    """Collect the `SolveInfo` of every solve that gradients compute inside the block.

    The gradient of a solve runs a few LSMR solves of its own (see
    ``docs/reliability.md``); each one that runs while the block is open
    appends its diagnostics to the list this yields: PyTorch's ``backward``,
    ``torch.autograd.grad`` and forward mode, JAX's ``grad``/``jvp`` (also
    under ``jit``: the list fills when the computation runs), and
    `lsqdiff.vjp`'s pullback (which also returns them in ``Gradients.info``).
    Blocks may nest; every open block receives every record. A solve that stops
    without converging also raises a `GradientSolveWarning`, inside or outside
    the block.

    Examples
    --------
    >>> import torch, lsqdiff
    >>> A = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64,
    ...                  requires_grad=True)
    >>> b = torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    >>> x, info = lsqdiff.lsmr(A, b, damp=0.5)
    >>> with lsqdiff.backward_diagnostics() as log:
    ...     x.sum().backward()
    >>> [(i.istop, i.converged) for i in log]
    [(1, True)]
    """
    log: list[SolveInfo] = []
    with _LOCK:
        _LOGS.append(log)
    try:
        yield log
    finally:
        with _LOCK:  # by identity: lists with equal records compare equal
            del _LOGS[next(i for i, x in enumerate(_LOGS) if x is log)]


def record(info: SolveInfo) -> None:
    """Hand one internal solve's host diagnostics to the open logs; warn if it
    did not converge."""
    with _LOCK:
        for log in _LOGS:
            log.append(info)
    codes = {int(c) for c in _flat(info.istop)}
    if ISTOP_NONFINITE in codes:
        warnings.warn(
            "a NaN or Inf appeared in a solve inside the gradient (from the incoming "
            "gradient, the inputs or the operator's output): the gradient is NaN",
            GradientSolveWarning, stacklevel=3)
    bad = sorted(c for c in codes if c not in CONVERGED_CODES and c != ISTOP_NONFINITE)
    if bad:
        reasons = "; ".join(f"istop {c}: {STOP_MESSAGES[c]}" for c in bad)
        iterations = ", ".join(map(str, _flat(info.itn)))
        warnings.warn(
            f"a solve inside the gradient stopped without converging ({reasons}; "
            f"iterations: {iterations}); the gradient may be inaccurate. Raise grad_maxiter "
            "or loosen grad_atol/grad_btol; lsqdiff.backward_diagnostics() collects every "
            "such solve's SolveInfo", GradientSolveWarning, stacklevel=3)


def _flat(value: object) -> list:
    tolist = getattr(value, "tolist", None)
    out = tolist() if tolist is not None else value
    return out if isinstance(out, list) else [out]
