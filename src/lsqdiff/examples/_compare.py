"""Comparison machinery shared by the examples: the PyTorch trainer for every
method (unconstrained, quadratic penalty, Cooper's augmented Lagrangian,
null-space), the loop over seeds and the mean ± std tables."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

#: The methods of the PyTorch examples, in table order.
TORCH_METHODS = ("unconstrained", "penalty", "cooper", "constrained")

#: What each method is called in the tables.
LABELS = {
    "unconstrained": "unconstrained",
    "penalty": "penalty",
    "cooper": "Cooper (aug. Lagrangian)",
    "auglag": "aug. Lagrangian (optax, ours)",
    "constrained": "null-space",
}


def methods_of(result: dict) -> list[str]:
    """The methods present in one run's ``result``, in the order they were run.

    Examples
    --------
    >>> methods_of({"penalty": {"residual": 0.1}, "settings": {"seed": 0}})
    ['penalty']
    """
    return [m for m, v in result.items() if m != "settings" and isinstance(v, dict)]


def progress(steps: int, desc: str, enabled: bool) -> Any:
    """``range(steps)``, wrapped in a tqdm bar when ``enabled`` (and tqdm is installed).

    Examples
    --------
    >>> list(progress(3, "steps", enabled=False))
    [0, 1, 2]
    """
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return range(steps)
        return tqdm(range(steps), desc=desc, leave=False, mininterval=1.0)
    return range(steps)


def _cooper_problem(constraint: Callable[[dict], Any], params: Callable[[], dict],
                    data_loss: Callable[[], Any], k: int, rho: float, dtype: Any) -> Any:
    """A `cooper.ConstrainedMinimizationProblem`: ``data_loss`` subject to the
    equality ``constraint(params()) = 0``, in Cooper's augmented-Lagrangian
    formulation with a constant penalty coefficient ``rho``."""
    import cooper
    import torch

    class Problem(cooper.ConstrainedMinimizationProblem):
        def __init__(self) -> None:
            super().__init__()
            self.equality = cooper.Constraint(
                cooper.ConstraintType.EQUALITY,
                formulation_type=cooper.formulations.AugmentedLagrangian,
                multiplier=cooper.multipliers.DenseMultiplier(num_constraints=k, dtype=dtype),
                penalty_coefficient=cooper.penalty_coefficients.DensePenaltyCoefficient(
                    torch.tensor(rho, dtype=dtype)))

        def compute_cmp_state(self) -> Any:
            state = cooper.ConstraintState(violation=constraint(params()))
            return cooper.CMPState(loss=data_loss(), observed_constraints={self.equality: state})

        def compute_violations(self) -> Any:
            # The dual step needs c at the new point only, not the loss.
            state = cooper.ConstraintState(violation=constraint(params()))
            return cooper.CMPState(observed_constraints={self.equality: state})

    return Problem()


def train_torch(method: str, model: Any, constraint: Callable[[dict], Any],
                data_loss: Callable[[], Any], *, steps: int, lr: float, mu: float,
                nullspace: dict, show_progress: bool = False) -> tuple[list, float, dict]:
    """Train a PyTorch ``model`` with Adam on the full batch one way.

    Parameters
    ----------
    method : {"unconstrained", "penalty", "cooper", "constrained"}
        ``"penalty"``: ``data_loss() + mu ||c||^2``. ``"cooper"``: Cooper's
        augmented Lagrangian ``loss + lambda^T c + (rho / 2) ||c||^2`` with
        ``rho = 2 mu`` (the penalty's quadratic term) and the multiplier
        update ``lambda += lr c`` after each primal step (Cooper's
        `AlternatingPrimalDualOptimizer`, dual SGD at the primal learning
        rate: at ``rho``, the method of multipliers' rate, the multipliers
        oscillated and the periodic fit diverged, residual 6.9). ``"constrained"``: the null-space
        method, `lsqdiff.nullspace.torch.ConstrainedOptimizer` around Adam.
    model : torch.nn.Module
    constraint : callable
        Maps the model's named parameters to ``c``.
    data_loss : callable
        The task loss on the full batch.
    steps, lr : int, float
        Adam steps and learning rate (the same for every method).
    mu : float
        Penalty weight.
    nullspace : dict
        Keyword arguments of `ConstrainedOptimizer` (``gamma``, ``maxiter``, ...).
    show_progress : bool
        A tqdm bar with the loss and, for the null-space method, LSMR iterations.

    Returns
    -------
    trace : list of (step, ||c||)
        Every 10 steps and at the last.
    seconds : float
        Training time (wall clock).
    stats : dict
        ``cpu_seconds`` (this process's CPU time over the training: unlike the
        wall clock, barely affected by other jobs on a shared machine),
        ``lsmr_iterations`` (mean per step) and ``converged`` (share of
        solves that met LSMR's tolerances), NaN for the other methods.

    Examples
    --------
    Fit a linear model while holding the sum of its weights at 1:

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> X, y = torch.randn(40, 3), torch.randn(40, 1)
    >>> model = torch.nn.Linear(3, 1)
    >>> def c(p):
    ...     return (p["weight"].sum() - 1.0).reshape(1)
    >>> def loss():
    ...     return torch.mean((model(X) - y) ** 2)
    >>> trace, seconds, stats = train_torch("constrained", model, c, loss, steps=20, lr=0.05,
    ...                                     mu=1.0, nullspace=dict(gamma=1.0))
    >>> trace[-1][1] < 1e-5, stats["converged"]
    (True, 1.0)
    """
    import torch

    from lsqdiff.nullspace.torch import ConstrainedOptimizer

    if method not in TORCH_METHODS:
        raise ValueError(f"method must be one of {TORCH_METHODS}, got {method!r}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def params() -> dict:
        return dict(model.named_parameters())

    if method == "constrained":
        opt = ConstrainedOptimizer(opt, constraint, model, **nullspace)
    if method == "cooper":
        import cooper

        with torch.no_grad():
            c0 = constraint(params())
        problem = _cooper_problem(constraint, params, data_loss, c0.numel(), 2 * mu, c0.dtype)
        dual = torch.optim.SGD(problem.dual_parameters(), lr=lr, maximize=True)
        opt = cooper.optim.AlternatingPrimalDualOptimizer(problem, primal_optimizers=opt,
                                                         dual_optimizers=dual)
    trace, itn, converged = [], [], []
    bar = progress(steps, method, show_progress)
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in bar:
        if method == "cooper":
            loss = opt.roll().loss
        else:
            opt.zero_grad()
            loss = data_loss()
            if method == "penalty":
                loss = loss + mu * torch.sum(constraint(params()) ** 2)
            loss.backward()
            opt.step()
        if method == "constrained":
            itn.append(opt.last_info.itn)
            converged.append(bool(opt.last_info.converged))
        if step % 10 == 0 or step == steps - 1:
            with torch.no_grad():
                trace.append((step, float(torch.linalg.norm(constraint(params())))))
            if show_progress and hasattr(bar, "set_postfix"):
                post = {"loss": f"{float(loss.detach()):.3g}", "||c||": f"{trace[-1][1]:.2e}"}
                if itn:
                    post["LSMR it"] = itn[-1]
                bar.set_postfix(post, refresh=False)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    stats = {"cpu_seconds": cpu, "lsmr_iterations": sum(itn) / len(itn) if itn else math.nan,
             "converged": sum(converged) / len(converged) if converged else math.nan}
    return trace, seconds, stats


def run_seeds(run: Callable[..., dict], seeds: Sequence[int], **kwargs: Any) -> list[dict]:
    """``run(seed=s, **kwargs)`` for each seed; ``plot`` only for the first.

    Examples
    --------
    >>> runs = run_seeds(lambda seed, plot, size: {"m": {"x": seed}}, [0, 1], size="small")
    >>> [r["m"]["x"] for r in runs]
    [0, 1]
    """
    plot = kwargs.pop("plot", None)
    return [run(seed=s, plot=plot if i == 0 else None, **kwargs) for i, s in enumerate(seeds)]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value).

    Examples
    --------
    >>> mean_std([1.0, 2.0, 3.0])
    (2.0, 1.0)
    """
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def seed_table(results: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table, one row per method, each cell ``mean ± std`` over the
    runs in ``results`` (one per seed).

    Parameters
    ----------
    results : sequence of dict
        ``results[i][method][key]``, as returned by an example's ``run``.
    columns : sequence of (key, header, format)
        E.g. ``("test_rmse", "test RMSE", ".3f")``.

    Examples
    --------
    >>> runs = [{"a": {"x": 1.0}}, {"a": {"x": 3.0}}]
    >>> print(seed_table(runs, [("x", "x", ".1f")]))
    | method | x |
    |---|---:|
    | a | 2.0 ± 1.4 |
    """
    head = "| method | " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|---|" + "---:|" * len(columns)
    rows = []
    for m in methods_of(results[0]):
        cells = []
        for key, _, fmt in columns:
            mean, std = mean_std([r[m][key] for r in results])
            cells.append(f"{mean:{fmt}} ± {std:{fmt}}")
        rows.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *rows])
