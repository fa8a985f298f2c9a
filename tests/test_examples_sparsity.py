"""The sparsity example (``lsqdiff.examples.sparsity``): the pruning schedule and
its masks, the constraints held step by step in float32 and float64, and the
``--small`` run of the baselines (penalty, Cooper, torch's pruning)."""

from __future__ import annotations

import doctest
import importlib
import os

import pytest

torch = pytest.importorskip("torch")

from lsqdiff.examples._pruning import GradualMask, L1Budget, schedule  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 10)).to(dtype)


@pytest.mark.parametrize("name", ["lsqdiff.examples._pruning", "lsqdiff.examples._vit",
                                  "lsqdiff.examples.sparsity"])
def test_docstring_examples(name):
    pytest.importorskip("cooper", reason="cooper-optim runs the Cooper examples")
    if name.endswith("sparsity"):
        pytest.importorskip("sklearn", reason="the digits")
    result = doctest.testmod(importlib.import_module(name),
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_schedule():
    plan = schedule(1000, final=0.9, start=0.1, end=0.6, every=25)
    steps, targets = zip(*sorted(plan.items()))
    assert steps[0] > 100 and steps[-1] == 600
    assert all(b - a == 25 for a, b in zip(steps, steps[1:]))
    assert all(a < b for a, b in zip(targets, targets[1:])) and targets[-1] == pytest.approx(0.9)
    cuts = [b - a for a, b in zip((0.0,) + targets, targets)]
    assert all(a >= b for a, b in zip(cuts, cuts[1:]))  # cubic: the cuts shrink
    assert max(schedule(7, every=100)) == round(0.6 * 7)  # a cut even when `every` is too long
    with pytest.raises(ValueError, match="final"):
        schedule(100, final=1.0)
    with pytest.raises(ValueError, match="start and end"):
        schedule(100, start=0.7, end=0.6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mask_grows_by_global_magnitude(dtype):
    model = _model(dtype)
    params = dict(model.named_parameters())
    mask = GradualMask(model)
    assert mask.names == ["0.weight", "3.weight", "5.weight"]
    before = {n: m.clone() for n, m in mask.masks.items()}
    for s in (0.3, 0.6, 0.9):
        with torch.no_grad():  # the weights move between cuts
            for n in mask.names:
                params[n].add_(0.01 * torch.randn_like(params[n]))
        held = mask.grow(params, s)
        assert held == round(s * mask.total) == mask.count()
        assert all(bool((mask.masks[n] | ~before[n]).all()) for n in mask.names)  # only grows
        # The newly held weights are the smallest of those that were free.
        new = torch.cat([params[n].detach()[mask.masks[n] & ~before[n]].abs() for n in mask.names])
        free = torch.cat([params[n].detach()[~mask.masks[n]].abs() for n in mask.names])
        assert float(new.max()) <= float(free.min())
        before = {n: m.clone() for n, m in mask.masks.items()}
    assert mask.grow(params, 0.5) == mask.count()  # never shrinks
    assert mask.constraint(params).shape == (mask.count(),)
    assert mask.violation(params).shape == (mask.total,)
    with pytest.raises(ValueError, match="sparsity"):
        mask.grow(params, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_held_weights_zero_after_every_step(dtype):
    """Gradual pruning through the null-space method: after every step each
    held weight is 0 up to rounding (a few ulps of the layer's weights), the
    cut of the step included; `finish` then makes them exactly 0. torch's own
    pruning holds them at exactly 0 throughout."""
    from lsqdiff.examples.sparsity import Trainer

    x = torch.rand(64, 1, 8, 8, dtype=dtype)
    y = torch.randint(10, (64,))
    plan = schedule(30, final=0.9, start=0.0, end=0.5, every=3)
    eps = torch.finfo(dtype).eps
    for method in ("nullspace", "prune"):
        trainer = Trainer(method, _model(dtype), plan, lr=1e-2)
        for _ in range(30):
            trainer.step(x, y)
            w = trainer.weights()
            scale = max(float(w[n].detach().abs().max()) for n in w)
            held = torch.cat([w[n].detach()[trainer.mask.masks[n]] for n in w])
            if method == "prune":
                assert bool((held == 0).all())
            else:
                assert held.numel() == 0 or float(held.abs().max()) <= 8 * eps * scale
        assert trainer.mask.sparsity() == pytest.approx(0.9, abs=1e-3)
        if method == "nullspace":
            assert all(info.converged for info in trainer.infos)
        trainer.finish()
        w = trainer.weights()
        assert all(bool((w[n][trainer.mask.masks[n]] == 0).all()) for n in w)


def test_l1_budget_constraint():
    model = _model(torch.float64)
    budget = L1Budget(model, final_ratio=0.5)
    params = dict(model.named_parameters())
    assert torch.allclose(budget.constraint(params), torch.zeros(3, dtype=torch.float64))
    budget.set_progress(1.0)
    assert torch.allclose(budget.constraint(params), torch.ones(3, dtype=torch.float64))
    assert float(budget.penalty(params).detach()) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="final_ratio"):
        L1Budget(model, final_ratio=0.0)


def test_small_run_baselines():
    """--small: the null-space method against the penalty, Cooper and torch's
    pruning, on both constraints, all scored at 90% sparsity."""
    pytest.importorskip("sklearn")
    pytest.importorskip("cooper", reason="cooper-optim is the Lagrangian baseline")
    from lsqdiff.examples import sparsity

    methods = ["prune", "nullspace", "penalty", "cooper", "nullspace-l1", "penalty-l1",
               "cooper-l1"]
    r = sparsity.run(size="small", methods=methods)
    runs = {m: r["runs"][m][0] for m in methods}
    for m, f in runs.items():
        assert f["sparsity"] == pytest.approx(0.9, abs=1e-4), m
        assert f["test_accuracy"] > 0.2, m  # chance: 0.1
    assert runs["prune"]["residual"] == 0.0
    assert runs["nullspace"]["residual"] < 1e-6 < runs["penalty"]["residual"]
    assert runs["nullspace"]["residual"] < runs["cooper"]["residual"]
    assert runs["nullspace"]["test_accuracy"] > 0.7
    assert runs["nullspace-l1"]["residual"] < runs["penalty-l1"]["residual"]
    assert runs["nullspace"]["lsmr_iterations"] <= 2  # J J^T = I: one iteration, or two
    assert "smoke test" in sparsity.describe(r)


def test_cli_writes_only_to_out(tmp_path, monkeypatch):
    """Plots go to --out, and by default to a new temporary folder: never the
    working directory. (The figure itself is stubbed: matplotlib is optional.)"""
    pytest.importorskip("sklearn")
    from lsqdiff.examples import sparsity

    def fake_plot(result, path):
        with open(path, "w") as f:
            f.write("png")
        return path

    monkeypatch.setattr(sparsity, "_can_plot", lambda: True)
    monkeypatch.setattr(sparsity, "_plot", fake_plot)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    sparsity.main(["--small", "--methods", "dense", "--out", str(tmp_path / "figs")])
    assert os.listdir(tmp_path / "figs") == ["sparsity_digits.png"]
    r = sparsity.main(["--small", "--methods", "dense"])
    assert os.path.isfile(r["plot"]) and not os.listdir(cwd)
    with pytest.raises(SystemExit):
        sparsity.main(["--methods", "nope"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mask_constraint_products(dtype):
    """`GradualMask.constraint` is a LinearConstraint: `held` is ``cat(w[mask])``
    (with and without autograd recording), `scatter` its adjoint, and the
    null-space steps it gives are those of the generic path on ``cat(w[mask])``."""
    from lsqdiff.nullspace import LinearConstraint
    from lsqdiff.nullspace.torch import ConstrainedOptimizer

    model = _model(dtype)
    mask = GradualMask(model)
    params = dict(model.named_parameters())
    mask.grow(params, 0.7)

    def reference(q):
        return torch.cat([q[n][mask.masks[n]] for n in mask.names])

    assert isinstance(mask.constraint, LinearConstraint)
    with torch.no_grad():
        assert torch.equal(mask.held(params), reference(params))
    recorded = mask.held(params)
    assert recorded.requires_grad and torch.equal(recorded.detach(), reference(params).detach())
    u = torch.randn(mask.count(), dtype=dtype)
    v = {n: torch.randn_like(p) for n, p in params.items()}
    at = mask.scatter(u)
    assert set(at) == set(mask.names) and all(at[n].dtype == dtype for n in at)
    lhs = torch.dot(mask.held(v), u)
    rhs = sum(torch.sum(v[n] * at[n]) for n in at)
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-5)
    mask.masks["5.weight"] = torch.ones_like(mask.masks["5.weight"])  # as torch's pruning sets it
    with torch.no_grad():
        assert torch.equal(mask.held(params), reference(params))
    x = torch.rand(16, 1, 8, 8, dtype=dtype)
    y = torch.randint(10, (16,))
    out = []
    for constraint in ("linear", "generic"):
        model = _model(dtype)
        mask = GradualMask(model)
        mask.grow(dict(model.named_parameters()), 0.7)
        c = mask.constraint if constraint == "linear" else \
            (lambda q, m=mask: torch.cat([q[n][m.masks[n]] for n in m.names]))
        opt = ConstrainedOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), c, model,
                                   gamma=0.5)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    eps = torch.finfo(dtype).eps
    assert torch.allclose(out[0], out[1], atol=100 * eps, rtol=0)
