"""lsqdiff: matrix-free least squares (LSMR, LSQR) on any array-API framework.

``import lsqdiff`` imports no array framework; the adapter for NumPy, PyTorch,
JAX or CuPy loads when an array of that framework first reaches a solver.
`lsqdiff.nullspace` trains under equality constraints (the null-space method).
"""

from . import nullspace
from ._diagnostics import GradientSolveWarning, backward_diagnostics
from ._info import STOP_MESSAGES, SolveInfo
from ._jacobi import jacobi
from .adjoint import Gradients, LowRank, vjp
from .operator import LinearOperator
from .solvers import lsmr, lsqr

__version__ = "0.1.0"

__all__ = ["GradientSolveWarning", "Gradients", "LinearOperator", "LowRank", "STOP_MESSAGES",
           "SolveInfo", "backward_diagnostics", "jacobi", "lsmr", "lsqr", "vjp"]
