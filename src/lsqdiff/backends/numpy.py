"""NumPy adapter: fast host norms, SciPy sparse matrices and LinearOperators."""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from ..operator import Operator, narrow_columnwise
from ._base import Backend, norm_floor

#: `lsqdiff.backends._base.plain_norm_ok`'s floor for the dtypes with a fast host norm.
_REAL_FLOORS = {np.dtype(t): norm_floor(np, np.dtype(t)) for t in (np.float64, np.float32)}


def _scipy_sparse() -> Any:
    # SciPy is never imported here: a SciPy object can only exist if the user imported it.
    return sys.modules.get("scipy.sparse")


#: Blocks of fewer columns than this are multiplied column by column: OpenBLAS's
#: GEMM with 2 or 3 columns took up to twice the time of as many GEMVs (docs/benchmarks.md).
GEMV_BELOW = 4


class NumpyBackend(Backend):
    name = "numpy"

    def host_norm(self, v: Any) -> float:
        floor = _REAL_FLOORS.get(v.dtype)
        if floor is not None and v.ndim == 1:
            # What np.linalg.norm does for 1-D, minus overhead (and its check inlined).
            r = math.sqrt(float(np.dot(v, v)))
            if floor <= r < math.inf:
                return r
        return super().host_norm(v)

    def solve_context(self) -> Any:
        # Stopped columns of a 2-D b may divide by zero; their results are masked.
        # Norms first try plain squares, which may under- or overflow (then they
        # scale: `lsqdiff.backends._base`).
        return np.errstate(all="ignore")

    def dense_operator(self, A: Any) -> Operator:
        # np.matrix would turn A @ v into a (1, m) matrix: use the plain array.
        op = super().dense_operator(np.asarray(A))
        return Operator(op.shape, narrow_columnwise(op.matvec, GEMV_BELOW, self.xp),
                        narrow_columnwise(op.rmatvec, GEMV_BELOW, self.xp))

    def is_sparse(self, A: Any) -> bool:
        sp = _scipy_sparse()
        if sp is None:
            return False
        if sp.issparse(A):
            return True
        spla = sys.modules.get("scipy.sparse.linalg")
        return spla is not None and isinstance(A, spla.LinearOperator)

    def sparse_operator(self, A: Any) -> Operator:
        sp = _scipy_sparse()
        if sp.issparse(A):
            AH = A.conj().T if np.iscomplexobj(A.data) else A.T
            if A.format == "csr":
                # A^T of CSR is a CSC view, whose product scatters: ~1.7x slower than a
                # CSR product, with the same sums in the same order. One conversion (the
                # cost of ~5 products, a copy SciPy's lsmr makes too) pays off in ~12 iterations.
                AH = AH.tocsr()
            return Operator(A.shape, lambda v: A @ v, lambda u: AH @ u)
        # scipy.sparse.linalg.LinearOperator: matvec/matmat and their adjoints.
        return Operator(
            A.shape,
            lambda v: A.matvec(v) if v.ndim == 1 else A.matmat(v),
            lambda u: A.rmatvec(u) if u.ndim == 1 else A.rmatmat(u),
        )

    def sparse_column_norms2(self, A: Any) -> Any:
        if not _scipy_sparse().issparse(A):
            return None  # a SciPy LinearOperator
        return np.asarray(abs(A).power(2).sum(axis=0)).ravel()

    def to_host(self, value: Any) -> Any:
        return value.item() if np.ndim(value) == 0 else np.asarray(value)
