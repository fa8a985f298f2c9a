"""asv benchmarks: lsqdiff's LSMR/LSQR beside SciPy's, and the matvec anchor.

Every solve runs a fixed number of iterations (``atol = btol = conlim = 0``,
``maxiter = common.ITERS[problem]``; ``setup`` checks that the count is reached),
so times compare at equal work:

* ``Solve.time_solve[scipy, ...]`` is the anchor for the NumPy backend
  (target: NumPy <= 1.10x SciPy).
* ``MatvecRmatvec.time_pairs`` runs the same number of ``A^T (A v)`` products
  as the solve runs iterations, in the same framework: per-iteration cost ratio
  = ``time_solve / time_pairs`` (target at 4000x2000 for JAX and PyTorch: <= 1.3).
* ``SeveralRightHandSides.time_solve`` times a solve with a 2-D ``b`` of k
  columns and k 1-D solves (NumPy, PyTorch): their ratio should stay near 1.

JAX is jitted (compiled in ``setup``) and synchronised with
``block_until_ready``. Combinations that make no sense raise
``NotImplementedError`` in ``setup`` and are skipped.
"""

from __future__ import annotations

from . import common


def _require(backend: str) -> None:
    try:
        if backend == "jax":
            import jax  # noqa: F401
        elif backend == "torch":
            import torch  # noqa: F401
        elif backend == "scipy":
            import scipy.sparse.linalg  # noqa: F401
    except ImportError as exc:  # framework not installed: skip
        raise NotImplementedError(str(exc)) from None


class Solve:
    """Time one solve of ``common.ITERS[problem]`` iterations."""

    params = [list(common.BACKENDS), list(common.PROBLEMS), ["lsmr", "lsqr"]]
    param_names = ["backend", "problem", "method"]
    timeout = 300
    number = 1
    repeat = (3, 10, 30.0)
    warmup_time = 0.0

    def setup(self, backend, problem, method):
        _require(backend)
        A, b = common.problem_for(backend, problem)
        n_it = common.ITERS[problem]
        self.run = common.solver(backend, method, A, b, n_it)
        # Warm-up (JAX compiles here) and check the iteration count.
        common.check_iterations(backend, method, self.run(), n_it)

    def time_solve(self, backend, problem, method):
        self.run()


class MatvecRmatvec:
    """Time ``common.ITERS[problem]`` products ``v <- c A^T (A v)`` (one matvec +
    one rmatvec each), the per-iteration anchor for each framework."""

    params = [["numpy", "jax", "torch"], list(common.PROBLEMS)]
    param_names = ["backend", "problem"]
    timeout = 300
    number = 1
    repeat = (3, 10, 30.0)
    warmup_time = 0.0

    def setup(self, backend, problem):
        _require(backend)
        A, b = common.problem_for(backend, problem)
        self.run = common.matvec_pairs(backend, A, b, common.ITERS[problem])
        self.run()  # JAX compiles here

    def time_pairs(self, backend, problem):
        self.run()


class SeveralRightHandSides:
    """One LSMR solve with a 2-D ``b`` of k columns (``block``) against k 1-D
    solves (``columns``), dense 2000x500, 50 iterations each; the ratio of the two
    is what ``multi_rhs_quick.py`` prints (target for PyTorch on the CPU: <= 1.3)."""

    params = [["numpy", "torch"], [2, 4, 8, 16], ["block", "columns"]]
    param_names = ["backend", "k", "how"]
    timeout = 300
    number = 1
    repeat = (3, 10, 30.0)
    warmup_time = 0.0

    def setup(self, backend, k, how):
        _require(backend)
        import numpy as np

        import lsqdiff

        A, _ = common.problem_for(backend, "dense_2000x500")
        B = np.random.default_rng(1).standard_normal((A.shape[0], k))
        if backend == "torch":
            import torch

            B = torch.from_numpy(B)
        kw = dict(atol=0.0, btol=0.0, conlim=0.0, maxiter=50)
        if how == "block":
            self.run = lambda: lsqdiff.lsmr(A, B, **kw)
        else:
            cols = [B[:, j].clone() if backend == "torch" else B[:, j].copy() for j in range(k)]
            self.run = lambda: [lsqdiff.lsmr(A, c, **kw) for c in cols]
        self.run()

    def time_solve(self, backend, k, how):
        self.run()
