"""asv benchmarks: right preconditioning (Jacobi column scaling) against none.

Time to ``atol = btol = 1e-8`` of the forward solve (beside SciPy's
unpreconditioned ``lsmr``) and of value-and-grad, and their iteration counts
(``track_*``), on the ill-conditioned problems of `precond_common`.
"""

from __future__ import annotations

from . import precond_common as pc
from .bench_solvers import _require


class PrecondForward:
    params = [["scipy", "numpy", "jax", "torch"], list(pc.PRECOND_PROBLEMS), [False, True]]
    param_names = ["backend", "problem", "precond"]
    timeout = 600
    number = 1
    repeat = (1, 3, 60.0)
    warmup_time = 0.0

    def setup(self, backend, problem, precond):
        _require(backend)
        self.forward, _ = pc.runners(backend, problem, 0, precond)
        self.forward()  # JAX compiles here

    def time_forward(self, backend, problem, precond):
        self.forward()

    def track_forward_iterations(self, backend, problem, precond):
        return int(self.forward()[1])


class PrecondValueAndGrad:
    params = [["numpy", "jax", "torch"], list(pc.PRECOND_PROBLEMS), [False, True]]
    param_names = ["backend", "problem", "precond"]
    timeout = 600
    number = 1
    repeat = (1, 3, 60.0)
    warmup_time = 0.0

    def setup(self, backend, problem, precond):
        _require(backend)
        _, self.grad = pc.runners(backend, problem, 0, precond)
        self.grad()  # JAX compiles here

    def time_value_and_grad(self, backend, problem, precond):
        self.grad()

    def track_backward_iterations(self, backend, problem, precond):
        return int(self.grad()[1])
