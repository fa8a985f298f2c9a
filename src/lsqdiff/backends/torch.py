"""PyTorch adapter: torch sparse tensors and ``rmatvec`` derived by ``torch.func.vjp``."""

from __future__ import annotations

from typing import Any

import torch

from ..operator import LinearOperator, MatVec, Operator
from ._base import Backend


class TorchBackend(Backend):
    name = "torch"

    def host_norm(self, v: Any) -> float:
        return float(torch.linalg.vector_norm(v))

    def is_sparse(self, A: Any) -> bool:
        return isinstance(A, torch.Tensor) and A.layout != torch.strided

    def sparse_operator(self, A: Any) -> Operator:
        if A.layout not in (torch.sparse_coo, torch.sparse_csr):
            raise TypeError(f"A: torch sparse layout {A.layout} is not supported; "
                            "use sparse_coo or sparse_csr")
        AH = A.to_sparse_coo().t().conj().coalesce()
        if A.layout == torch.sparse_csr:
            AH = AH.to_sparse_csr()
        return Operator(tuple(A.shape), lambda v: A @ v, lambda u: AH @ u)

    def derive_rmatvec(self, op: LinearOperator, dtype: Any, device: Any) -> MatVec:
        # The VJP of a linear map at any point is its adjoint; PyTorch's convention
        # for complex inputs already gives the conjugate transpose A^H u.
        _, pullback = torch.func.vjp(op.matvec, torch.zeros(op.shape[1], dtype=dtype, device=device))
        return lambda u: pullback(u)[0]

    def to_host(self, value: Any) -> Any:
        value = value.detach()
        return value.item() if value.ndim == 0 else value.cpu().numpy()
