"""asv benchmarks: what a gradient through an lsqdiff solve costs, in time and memory.

Problems and settings come from ``grad_common`` (float64, cond 100; loss
``sum(x**2)``, gradients with respect to A and b):

* ``GradientTime``: the forward (``time_forward``) and value-and-grad
  (``time_value_and_grad``) under JAX (jit) and PyTorch, and matfree's LSMR
  under JAX beside them, with atol = btol = 1e-6 (``tol``) or exactly 60
  iterations (``fixed60``; lsqdiff with ``grad_maxiter=60``, matfree's rule),
  with the any-rank rule (``rank="any"``) or ``assume_full_rank=True``
  (matfree: ``is_full_rank=True``; undamped problems only).
  ``track_ratio`` is value-and-grad / forward, timed in interleaved rounds
  (target for the default rule: <= 2.2 on full-rank problems, <= 3.0 on the
  rank-deficient ``_rank400`` ones).
* ``GradientMemory``: peak memory of the forward and of value-and-grad for 50
  and 500 forward iterations (atol = btol = 0), lsqdiff against autodiff
  through an unrolled LSQR loop. PyTorch: the peak RSS increase in a fresh
  process; JAX: XLA's temporaries + outputs of the compiled call (both in
  bytes, inputs excluded; the gradient of A is itself as large as A).
  lsqdiff's must not grow with the iteration count.

Combinations that make no sense (matfree under PyTorch, the unrolled LSQR with
damping) raise ``NotImplementedError`` in ``setup`` and are skipped.
"""

from __future__ import annotations

import statistics
import time

from . import grad_common as gc

FRAMEWORKS = ["jax", "torch", "matfree"]


def _require(framework: str) -> None:
    module = {"jax": "jax", "torch": "torch", "matfree": "matfree"}[framework]
    if not gc.have(module) or (framework == "matfree" and not gc.have("jax")):
        raise NotImplementedError(f"{module} is not installed")


def _callables(framework: str, problem: str, setting: str, rank: str):
    full = "+fr" if rank == "full" else ""
    if framework == "matfree":
        variant = "matfree" + full
    else:
        variant = "lsqdiff" + full + ("+cap" if setting == "fixed60" else "")
    if not gc.variant_applies(problem, setting, variant):
        raise NotImplementedError(f"{variant} does not apply to {problem} ({setting})")
    make = {"jax": gc.jax_callables, "torch": gc.torch_callables,
            "matfree": gc.jax_callables}[framework]
    return make(problem, setting, variant)


class GradientTime:
    """Forward and value-and-grad wall time, and their ratio."""

    params = [FRAMEWORKS, list(gc.GRAD_PROBLEMS), list(gc.MODES), ["any", "full"]]
    param_names = ["framework", "problem", "setting", "rank"]
    timeout = 300
    number = 1
    repeat = (3, 10, 30.0)
    warmup_time = 0.0

    def setup(self, framework, problem, setting, rank):
        _require(framework)
        self.forward, self.value_and_grad = _callables(framework, problem, setting, rank)
        self.forward()  # JAX compiles here
        self.value_and_grad()

    def time_forward(self, framework, problem, setting, rank):
        self.forward()

    def time_value_and_grad(self, framework, problem, setting, rank):
        self.value_and_grad()

    def track_ratio(self, framework, problem, setting, rank):
        """Median over 5 rounds of value-and-grad / forward timed back to back."""
        ratios = []
        for _ in range(5):
            t0 = time.perf_counter()
            self.forward()
            t1 = time.perf_counter()
            self.value_and_grad()
            t2 = time.perf_counter()
            ratios.append((t2 - t1) / (t1 - t0))
        return statistics.median(ratios)

    track_ratio.unit = "value-and-grad / forward"


def _memory(framework: str, problem: str, config: str, iterations: int) -> int:
    if framework == "torch":
        return gc.torch_memory(config, problem, iterations)
    m = gc.jax_memory(config, problem, iterations)
    return m["temp"] + m["output"]


class GradientMemory:
    """Peak memory of value-and-grad above the inputs, in bytes (see the module
    docstring): lsqdiff against the unrolled LSQR."""

    params = [["jax", "torch"], gc.MEMORY_PROBLEMS, ["lsqdiff", "unrolled"], [50, 500]]
    param_names = ["framework", "problem", "implementation", "iterations"]
    timeout = 300
    number = 1
    repeat = 1

    def setup(self, framework, problem, implementation, iterations):
        _require(framework)
        if not gc.memory_config_applies(problem, implementation):
            raise NotImplementedError("the unrolled LSQR has no damping")

    def track_value_and_grad(self, framework, problem, implementation, iterations):
        return _memory(framework, problem, f"{implementation}_grad", iterations)

    track_value_and_grad.unit = "bytes"


class ForwardMemory:
    """Peak memory of lsqdiff's forward solve above the inputs, in bytes."""

    params = [["jax", "torch"], gc.MEMORY_PROBLEMS, [50, 500]]
    param_names = ["framework", "problem", "iterations"]
    timeout = 300
    number = 1
    repeat = 1

    def setup(self, framework, problem, iterations):
        _require(framework)

    def track_forward(self, framework, problem, iterations):
        return _memory(framework, problem, "lsqdiff_forward", iterations)

    track_forward.unit = "bytes"
