"""PyTorch on the CPU with a 2-D ``b``: the scalar recurrences run on host NumPy
arrays (`TorchBackend.array_scalars`). They give what tensor scalars give
(the path CUDA tensors keep, and graphs and ``torch.func`` transforms where
they reach the loop), and the gradients of a 2-D solve are those of its
columns' 1-D solves. ``torch.func.vmap`` of ``grad``, which runs the batched
solves on this path, is tested in test_second_order.py and test_forward_mode.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TIGHT, assert_converged, info_np, make_problem, to_np

torch = pytest.importorskip("torch")
from lsqdiff.backends import Backend  # noqa: E402
from lsqdiff.backends.torch import TorchBackend  # noqa: E402


def scalar_kinds(monkeypatch, fallback: bool) -> list[str]:
    """Record which scalar arithmetic each batched solve gets; with ``fallback``
    every solve gets tensor scalars (the base hook)."""
    kinds: list[str] = []
    hook = Backend.array_scalars if fallback else TorchBackend.array_scalars

    def spy(self, scalars):
        S, norm = hook(self, scalars)
        kinds.append(type(S).__name__)
        return S, norm

    monkeypatch.setattr(TorchBackend, "array_scalars", spy)
    return kinds


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_host_scalars_match_tensor_scalars(solver, dtype, monkeypatch):
    """Same iterations, stop codes and (to rounding) x and diagnostics on host
    arrays as on tensors, with a warm start and damping, for a column that stops
    at once (b = x0 = 0) beside two that run. The problem (cond 1.3) converges
    far from exhausting the Krylov space, where the estimates of ``||A||`` and
    ``cond(A)`` would take up the rounding of the vector updates."""
    A, B = make_problem("wide", "mild", seed=31, k=3)
    X0 = np.random.default_rng(32).standard_normal((A.shape[1], 3))
    B[:, 1] = X0[:, 1] = 0.0  # b - A x0 = 0: stops before the first iteration
    At, Bt, X0t = (torch.tensor(a, dtype=getattr(torch, dtype)) for a in (A, B, X0))
    results = []
    for fallback in (False, True):
        kinds = scalar_kinds(monkeypatch, fallback)
        X, info = solver(At, Bt, x0=X0t, damp=0.3, maxiter=200, **TIGHT[dtype])
        assert kinds == ["ArrayScalars" if fallback else "HostArrayScalars"]
        assert X.dtype == At.dtype and isinstance(X, torch.Tensor)
        assert_converged(info)
        results.append((to_np(X), info_np(info)))
    (x_host, v_host), (x_tensor, v_tensor) = results
    assert v_host["istop"][1] == 0 and v_host["itn"][1] == 0
    np.testing.assert_array_equal(v_host["itn"], v_tensor["itn"])
    np.testing.assert_array_equal(v_host["istop"], v_tensor["istop"])
    rtol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(x_host, x_tensor, rtol=rtol, atol=rtol)
    for f in ("normr", "norma", "conda", "normx"):
        np.testing.assert_allclose(v_host[f], v_tensor[f], rtol=100 * rtol, err_msg=f)


@pytest.mark.parametrize("damped", [False, True], ids=["undamped", "damped"])
def test_gradients_equal_those_of_the_columns(solver, damped):
    """A, a 2-D b and a 0-d damp tensor requiring grad: the gradients of a loss
    on the 2-D solve equal those of the same loss on the columns' 1-D solves."""
    A, B = make_problem("tall", "well", seed=33, k=3)
    W = torch.tensor(np.random.default_rng(34).standard_normal((A.shape[1], 3)))
    kw = dict(atol=1e-14, btol=1e-14, conlim=0.0, maxiter=500)

    def grads(columns: bool):
        At = torch.tensor(A, requires_grad=True)
        Bt = torch.tensor(B, requires_grad=True)
        damp = torch.tensor(0.2, dtype=torch.float64, requires_grad=True) if damped else 0.0
        if columns:
            loss = sum(W[:, j] @ solver(At, Bt[:, j], damp=damp, **kw)[0] for j in range(3))
        else:
            X, info = solver(At, Bt, damp=damp, **kw)
            assert_converged(info)
            loss = (W * X).sum()
        return torch.autograd.grad(loss, [At, Bt] + ([damp] if damped else []))

    for g2, g1 in zip(grads(False), grads(True)):
        np.testing.assert_allclose(g2.numpy(), g1.numpy(), rtol=1e-9, atol=1e-12)
