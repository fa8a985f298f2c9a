"""CuPy adapter: ``cupyx.scipy.sparse`` matrices and host transfers."""

from __future__ import annotations

from typing import Any

import cupy
import cupyx.scipy.sparse as cusparse

from ..operator import Operator
from ._base import Backend


class CupyBackend(Backend):
    name = "cupy"

    def is_sparse(self, A: Any) -> bool:
        return cusparse.issparse(A)

    def sparse_operator(self, A: Any) -> Operator:
        AH = A.conj().T.tocsr() if A.dtype.kind == "c" else A.T.tocsr()
        return Operator(A.shape, lambda v: A @ v, lambda u: AH @ u)

    def sparse_column_norms2(self, A: Any) -> Any:
        return cupy.asarray(abs(A).power(2).sum(axis=0)).ravel()

    def to_host(self, value: Any) -> Any:
        return value.item() if value.ndim == 0 else cupy.asnumpy(value)
