"""Problems and runners for the preconditioning benchmarks (``bench_precond.py``
and ``precond_quick.py``).

Two ill-conditioned problems, float64, one per seed:

* ``scales``: a Gaussian ``m x n`` matrix whose columns are scaled by
  ``logspace(-4, 4, n)`` (cond ~1e8, all of it from the column scales);
* ``laplacian``: a 2-D diffusion operator ``K^1/2 G`` on a ``p x p`` grid, ``G``
  the differences along the grid's edges, node coefficients log-uniform in
  ``[1e-4, 1e4]`` (each edge weighted by ``(k_i k_j)^1/4``), and ``sqrt(k)`` rows
  on the boundary (a Dirichlet condition); a sparse matrix, run dense here.

Each run solves to ``atol = btol = 1e-8`` (``conlim`` off, at most ``MAXITER``
iterations) with and without the Jacobi scaling (`lsqdiff.jacobi`); "value and
grad" is ``sum(x**2)`` and its gradient in ``A`` and ``b``. Nothing imports JAX
or PyTorch until a runner for it is built.
"""

from __future__ import annotations

import functools

import numpy as np

from .common import enable_jax_x64

#: name -> size parameter(s)
PRECOND_PROBLEMS = {"scales_1000x200": ("scales", 1000, 200), "laplacian_24": ("laplacian", 24)}
TOL = dict(atol=1e-8, btol=1e-8, conlim=0.0)
MAXITER = 20000


@functools.lru_cache(maxsize=None)
def problem(name: str, seed: int = 0):
    """``(A, b)`` as NumPy arrays."""
    spec = PRECOND_PROBLEMS[name]
    rng = np.random.default_rng(seed)
    if spec[0] == "scales":
        _, m, n = spec
        A = rng.standard_normal((m, n)) * np.logspace(-4, 4, n)
        return A, rng.standard_normal(m)
    p = spec[1]
    k = 10.0 ** rng.uniform(-4, 4, (p, p))
    idx = np.arange(p * p).reshape(p, p)
    rows, cols, vals = [], [], []
    r = 0
    for i in range(p):
        for j in range(p):
            for di, dj in ((1, 0), (0, 1)):
                if i + di < p and j + dj < p:
                    w = (k[i, j] * k[i + di, j + dj]) ** 0.25
                    rows += [r, r]
                    cols += [idx[i, j], idx[i + di, j + dj]]
                    vals += [w, -w]
                    r += 1
            if i in (0, p - 1) or j in (0, p - 1):
                rows.append(r)
                cols.append(idx[i, j])
                vals.append(np.sqrt(k[i, j]))
                r += 1
    A = np.zeros((r, p * p))
    A[rows, cols] = vals
    return A, rng.standard_normal(r)


def runners(backend: str, name: str, seed: int, precond: bool):
    """``(forward, value_and_grad)``: zero-argument callables returning
    ``(x, forward iterations)`` and ``(forward iterations, backward iterations)``
    (the backward's summed over its solves). JAX is jitted; call each once first."""
    import lsqdiff

    A, b = problem(name, seed)
    d = lsqdiff.jacobi(A) if precond else None
    if backend == "scipy":
        if precond:
            raise NotImplementedError("SciPy's lsmr has no preconditioner")
        import scipy.sparse.linalg as sla

        def forward():
            out = sla.lsmr(A, b, maxiter=MAXITER, **TOL)
            return out[0], out[2]

        return forward, None
    if backend == "numpy":
        def forward():
            x, info = lsqdiff.lsmr(A, b, maxiter=MAXITER, precond=d, **TOL)
            return x, info.itn

        def value_and_grad():
            (x, info), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, maxiter=MAXITER,
                                              grad_maxiter=MAXITER, precond=d, **TOL)
            g = pullback(2 * x)
            return info.itn, sum(int(i.itn) for i in g.info)

        return forward, value_and_grad
    if backend == "jax":
        jax = enable_jax_x64()
        import jax.numpy as jnp

        Aj, bj = jnp.asarray(A), jnp.asarray(b)
        dj = None if d is None else jnp.asarray(d)

        @jax.jit
        def solve(A_, b_):
            x, info = lsqdiff.lsmr(A_, b_, maxiter=MAXITER, grad_maxiter=MAXITER, precond=dj,
                                   **TOL)
            return x, info.itn

        grad = jax.jit(jax.value_and_grad(lambda A_, b_: (lambda x: jnp.sum(x * x))(
            solve(A_, b_)[0]), argnums=(0, 1)))

        def forward():
            x, itn = jax.block_until_ready(solve(Aj, bj))
            return x, int(itn)

        def value_and_grad():
            with lsqdiff.backward_diagnostics() as log:
                jax.block_until_ready(grad(Aj, bj))
            return None, sum(int(i.itn) for i in log)

        return forward, value_and_grad
    if backend == "torch":
        import torch

        At, bt = torch.from_numpy(A), torch.from_numpy(b)
        dt = None if d is None else torch.from_numpy(d)

        def forward():
            x, info = lsqdiff.lsmr(At, bt, maxiter=MAXITER, precond=dt, **TOL)
            return x, info.itn

        def value_and_grad():
            A_, b_ = At.clone().requires_grad_(True), bt.clone().requires_grad_(True)
            with lsqdiff.backward_diagnostics() as log:
                x, info = lsqdiff.lsmr(A_, b_, maxiter=MAXITER, grad_maxiter=MAXITER,
                                       precond=dt, **TOL)
                (x @ x).backward()
            return info.itn, sum(int(i.itn) for i in log)

        return forward, value_and_grad
    raise ValueError(backend)
