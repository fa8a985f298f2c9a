"""GPU backends: PyTorch on CUDA, JAX on a GPU, CuPy (with cupyx sparse).

Every test here skips cleanly without a GPU. (CuPy and JAX-on-GPU also run the
whole suite through the ``xp`` fixture when a GPU is present.)
"""

from __future__ import annotations

import numpy as np
import pytest

import lsqdiff
from conftest import make_problem

TIGHT = dict(atol=1e-12, btol=1e-12, conlim=0, maxiter=500)


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch: no CUDA device")
    return torch


def _jax_gpu():
    jax = pytest.importorskip("jax")
    try:
        jax.devices("gpu")
    except RuntimeError:
        pytest.skip("jax: no GPU device")
    return jax


def _cupy():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy: no CUDA device")
    except Exception as exc:
        pytest.skip(f"cupy: no usable CUDA device ({exc})")
    return cupy


@pytest.mark.gpu
@pytest.mark.parametrize("solver", [lsqdiff.lsmr, lsqdiff.lsqr], ids=["lsmr", "lsqr"])
@pytest.mark.parametrize("shape", ["tall", "wide"])
def test_torch_cuda_matches_lstsq(solver, shape):
    torch = _torch_cuda()
    A, b = make_problem(shape, seed=3)
    x, info = solver(torch.asarray(A, device="cuda"), torch.asarray(b, device="cuda"), **TIGHT)
    assert x.device.type == "cuda" and info.converged
    np.testing.assert_allclose(x.cpu().numpy(), np.linalg.pinv(A) @ b, rtol=1e-8, atol=1e-10)


@pytest.mark.gpu
def test_torch_cuda_sparse_and_gradient():
    torch = _torch_cuda()
    A, b = make_problem("tall", seed=4)
    At = torch.asarray(A, device="cuda", requires_grad=True)
    bt = torch.asarray(b, device="cuda", requires_grad=True)
    x, _ = lsqdiff.lsmr(At, bt, damp=0.1, **TIGHT)
    x.sum().backward()
    (_, _), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, damp=0.1, **TIGHT)
    g = pullback(np.ones(A.shape[1]))
    np.testing.assert_allclose(bt.grad.cpu().numpy(), g.b, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(At.grad.cpu().numpy(), g.A.todense(), rtol=1e-7, atol=1e-10)
    S = torch.asarray(A, device="cuda").to_sparse_csr()
    xs, info = lsqdiff.lsmr(S, torch.asarray(b, device="cuda"), **TIGHT)
    assert info.converged
    np.testing.assert_allclose(xs.cpu().numpy(), np.linalg.pinv(A) @ b, rtol=1e-8, atol=1e-10)


@pytest.mark.gpu
def test_jax_gpu_jit_and_grad():
    jax = _jax_gpu()
    import jax.numpy as jnp

    A, b = make_problem("wide", seed=5)
    gpu = jax.devices("gpu")[0]
    Aj, bj = jax.device_put(jnp.asarray(A), gpu), jax.device_put(jnp.asarray(b), gpu)
    x, info = jax.jit(lambda A, b: lsqdiff.lsmr(A, b, **TIGHT))(Aj, bj)
    assert bool(info.converged) and gpu in x.devices()
    np.testing.assert_allclose(np.asarray(x), np.linalg.pinv(A) @ b, rtol=1e-8, atol=1e-10)
    gb = jax.grad(lambda b: jnp.sum(lsqdiff.lsmr(Aj, b, **TIGHT)[0]))(bj)
    np.testing.assert_allclose(np.asarray(gb), np.linalg.pinv(A).T @ np.ones(A.shape[1]),
                               rtol=1e-7, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("solver", [lsqdiff.lsmr, lsqdiff.lsqr], ids=["lsmr", "lsqr"])
def test_cupy_sparse_and_vjp(solver):
    cupy = _cupy()
    import cupyx.scipy.sparse as cusparse

    A, b = make_problem("tall", seed=6)
    A[np.abs(A) < 0.5] = 0.0
    S = cusparse.csr_matrix(cupy.asarray(A))
    x, info = solver(S, cupy.asarray(b), **TIGHT)
    assert info.converged
    np.testing.assert_allclose(cupy.asnumpy(x), np.linalg.pinv(A) @ b, rtol=1e-8, atol=1e-10)
    (_, _), pullback = lsqdiff.vjp(solver, cupy.asarray(A), cupy.asarray(b), damp=0.2, **TIGHT)
    g = pullback(cupy.ones(A.shape[1]))
    M = A.T @ A + 0.04 * np.eye(A.shape[1])
    np.testing.assert_allclose(cupy.asnumpy(g.b), A @ np.linalg.solve(M, np.ones(A.shape[1])),
                               rtol=1e-7, atol=1e-10)
