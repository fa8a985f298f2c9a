"""Problems and per-framework helpers shared by the asv suite and ``quick.py``.

Every problem is float64 with a fixed seed, built once per process (cached) and
converted to each framework on demand. Nothing here imports JAX or PyTorch
until a benchmark for that framework asks for it.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

#: name -> (kind, m, n); the sparse one has 1e6 nonzeros (density 1e-3).
PROBLEMS = {
    "dense_2000x500": ("dense", 2000, 500),
    "dense_4000x2000": ("dense", 4000, 2000),
    "sparse_100000x10000": ("sparse", 100_000, 10_000),
}

#: Frameworks lsqdiff runs on; "scipy" is the anchor (scipy.sparse.linalg on NumPy data).
BACKENDS = ("numpy", "jax", "torch", "scipy")

#: Iterations per timed solve: enough that per-solve overhead is small.
ITERS = {"dense_2000x500": 100, "dense_4000x2000": 30, "sparse_100000x10000": 50}


@functools.lru_cache(maxsize=None)
def numpy_problem(name: str):
    """``(A, b)`` as NumPy / SciPy CSR, float64, seed 0.

    Random matrices are so well conditioned (cond ~ 3-6) that LSMR reaches machine
    precision (istop 4/5) within ~40 iterations; scaling the columns by
    ``logspace(0, -3)`` (cond ~ 1e3-1e4) keeps every timed solve running its
    full iteration count.
    """
    kind, m, n = PROBLEMS[name]
    rng = np.random.default_rng(0)
    d = np.logspace(0, -3, n)
    if kind == "dense":
        A = rng.standard_normal((m, n)) * d
    else:
        import scipy.sparse as sp

        A = sp.random(m, n, density=1e-3, format="csr", random_state=rng, dtype=np.float64)
        A = (A @ sp.diags(d)).tocsr()
        A.sort_indices()
    b = rng.standard_normal(m)
    return A, b


def enable_jax_x64():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def problem_for(backend: str, name: str):
    """``(A, b)`` in ``backend``'s arrays (torch CSR / JAX BCOO for the sparse problem)."""
    A, b = numpy_problem(name)
    sparse = PROBLEMS[name][0] == "sparse"
    if backend in ("numpy", "scipy"):
        return A, b
    if backend == "torch":
        import torch

        if sparse:
            At = torch.sparse_csr_tensor(torch.from_numpy(A.indptr.astype(np.int64)),
                                         torch.from_numpy(A.indices.astype(np.int64)),
                                         torch.from_numpy(A.data), size=A.shape,
                                         check_invariants=False)
        else:
            At = torch.from_numpy(A)
        return At, torch.from_numpy(b)
    if backend == "jax":
        enable_jax_x64()
        import jax.numpy as jnp
        from jax.experimental import sparse as jsparse

        Aj = jsparse.BCOO.from_scipy_sparse(A) if sparse else jnp.asarray(A)
        return Aj, jnp.asarray(b)
    raise ValueError(backend)


def solver(backend: str, method: str, A, b, iters: int):
    """A zero-argument callable running ``iters`` iterations of ``method`` to completion.

    atol = btol = conlim = 0 switch every stopping test off, so each call runs
    exactly ``iters`` iterations. JAX is jitted (compiled on the first call;
    call once to warm up) and synchronised with ``block_until_ready``.
    """
    kw = dict(atol=0.0, btol=0.0, conlim=0.0)
    if backend == "scipy":
        import scipy.sparse.linalg as sla

        if method == "lsmr":
            return lambda: sla.lsmr(A, b, maxiter=iters, **kw)
        return lambda: sla.lsqr(A, b, iter_lim=iters, **kw)

    import lsqdiff

    f = getattr(lsqdiff, method)
    if backend == "jax":
        jax = enable_jax_x64()
        g = jax.jit(lambda A, b: f(A, b, maxiter=iters, **kw))
        return lambda: jax.block_until_ready(g(A, b))
    return lambda: f(A, b, maxiter=iters, **kw)


def _scale(A) -> float:
    """``1 / sigma_max(A)^2`` (power iteration on NumPy data), so that repeated
    ``v <- c A^T (A v)`` neither overflows nor decays into subnormals."""
    name = next(k for k in PROBLEMS if PROBLEMS[k][1:] == tuple(A.shape))
    An, _ = numpy_problem(name)
    v = np.ones(An.shape[1])
    for _ in range(30):
        w = An.T @ (An @ v)
        lam = float(np.linalg.norm(w) / np.linalg.norm(v))
        v = w / np.linalg.norm(w)
    return 1.0 / lam


def matvec_pairs(backend: str, A, b, reps: int):
    """A zero-argument callable doing ``reps`` times ``v <- c A^T (A v)``: one
    matvec + one rmatvec per rep, chained as in the solvers, written the fastest
    way for the framework (the way the lsqdiff adapter does it).

    ``c`` is a constant that keeps ``v`` of order one; the scaling is the only
    extra work. For JAX the reps run in one jitted ``lax.fori_loop``, so the time
    per rep, like the solver's time per iteration, has no per-call dispatch in it.
    """
    c = _scale(A)
    if backend in ("numpy", "scipy"):
        # CSR^T is a CSC view whose products are ~1.7x slower; the adapter makes it CSR.
        AT = A.T.tocsr() if getattr(A, "format", None) == "csr" else A.T
        return _eager_pairs(A, AT, np.ones(A.shape[1]), c, reps)
    if backend == "torch":
        import torch

        if A.layout == torch.strided:
            AT = A.T
        else:
            AT = A.t().to_sparse_csr()
        return _eager_pairs(A, AT, torch.ones(A.shape[1], dtype=b.dtype), c, reps)
    if backend == "jax":
        jax = enable_jax_x64()
        import jax.numpy as jnp

        v0 = jnp.ones(A.shape[1], dtype=b.dtype)
        if isinstance(A, jnp.ndarray):
            # XLA:CPU runs A.T @ u for a vector ~10x slower than A @ v; u @ A is the
            # fast way to write the rmatvec (and what the lsqdiff JAX adapter uses).
            pair = lambda A, v: ((A @ v) @ A) * c  # noqa: E731
        else:
            pair = lambda A, v: (A.T @ (A @ v)) * c  # noqa: E731
        g = jax.jit(lambda A, v: jax.lax.fori_loop(0, reps, lambda i, v: pair(A, v), v))
        return lambda: g(A, v0).block_until_ready()
    raise ValueError(backend)


def _eager_pairs(A, AT, v0, c: float, reps: int):
    """``matvec_pairs`` for an eager framework, given ``A^T`` in its fastest form."""
    def run():
        v = v0
        for _ in range(reps):
            v = (AT @ (A @ v)) * c
        return v

    return run


def check_iterations(backend: str, method: str, result, iters: int) -> None:
    """Fail loudly if a timed solve stopped early (the ratios would be meaningless)."""
    if backend == "scipy":
        itn = result[2]
    else:
        itn = int(result[1].itn)
    if itn != iters:
        raise RuntimeError(f"{backend} {method} ran {itn} iterations, expected {iters}")
