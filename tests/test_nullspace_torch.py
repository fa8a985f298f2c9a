"""`lsqdiff.nullspace.torch.ConstrainedOptimizer`: both placements, with SGD and Adam."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lsqdiff.nullspace import ProjectionInfo, project  # noqa: E402
from lsqdiff.nullspace.torch import ConstrainedOptimizer  # noqa: E402

# PyTorch's first forward-mode product loads decompositions through torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

TIGHT = dict(atol=1e-12, btol=1e-12, maxiter=100)


def linear_problem(seed=0, k=5):
    """Two leaves (N = 30), a linear constraint A theta = b (k rows), a quadratic loss."""
    rng = np.random.default_rng(seed)
    w = torch.tensor(rng.standard_normal(20), requires_grad=True)
    v = torch.tensor(rng.standard_normal((2, 5)), requires_grad=True)
    A = torch.tensor(rng.standard_normal((k, 30)))
    b = torch.tensor(rng.standard_normal(k))
    target = torch.tensor(rng.standard_normal(30))

    def constraint(p):
        return A @ torch.cat([p[0], p[1].reshape(-1)]) - b

    def loss(p=(w, v)):
        return ((torch.cat([p[0], p[1].reshape(-1)]) - target) ** 2).sum()

    return [w, v], constraint, loss


def residual(constraint, params):
    with torch.no_grad():
        return float(torch.linalg.vector_norm(constraint(params)))


def run(opt, loss, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()


def test_gradient_placement_sgd_rate():
    # Linear constraint, SGD: c_{t+1} = c_t - eta J d = (1 - eta gamma) c_t exactly.
    params, constraint, loss = linear_problem()
    eta, gamma = 0.05, 2.0
    opt = ConstrainedOptimizer(torch.optim.SGD(params, lr=eta), constraint,
                               placement="gradient", gamma=gamma, **TIGHT)
    norms = [residual(constraint, params)]
    for _ in range(6):
        run(opt, loss, 1)
        norms.append(residual(constraint, params))
    np.testing.assert_allclose(np.array(norms[1:]) / norms[:-1], 1 - eta * gamma, rtol=1e-8)
    assert len(opt.history) == 6 and opt.last_info is opt.history[-1]
    assert opt.last_info.constraint_norm == pytest.approx(norms[-2], rel=1e-10)


@pytest.mark.parametrize("base", ["sgd", "adam"])
def test_update_placement_rate(base):
    # Whatever the optimizer does, J u' = -gamma c: factor (1 - gamma) per step.
    params, constraint, loss = linear_problem(seed=1)
    gamma = 0.3
    inner = (torch.optim.Adam(params, lr=0.1) if base == "adam"
             else torch.optim.SGD(params, lr=0.05, momentum=0.9))
    opt = ConstrainedOptimizer(inner, constraint, gamma=gamma, **TIGHT)
    norms = [residual(constraint, params)]
    loss0 = float(loss().detach())
    for _ in range(6):
        run(opt, loss, 1)
        norms.append(residual(constraint, params))
    np.testing.assert_allclose(np.array(norms[1:]) / norms[:-1], 1 - gamma, rtol=1e-7)
    assert float(loss().detach()) < loss0
    assert all(info.converged and info.residual_norm < 1e-9 for info in opt.history)


def test_gradient_placement_adam_is_not_exact():
    # Adam rescales the projected gradient per coordinate: the step leaves the null
    # space, so the residual no longer follows (1 - eta gamma), but the correction
    # still keeps it far below what plain Adam reaches.
    params, constraint, loss = linear_problem(seed=2)
    c0 = residual(constraint, params)
    opt = ConstrainedOptimizer(torch.optim.Adam(params, lr=0.05), constraint,
                               placement="gradient", gamma=5.0, **TIGHT)
    norms = [c0]
    for _ in range(40):
        run(opt, loss, 1)
        norms.append(residual(constraint, params))
    ratios = np.array(norms[1:]) / norms[:-1]
    assert np.ptp(ratios) > 1e-3  # not one geometric rate
    free, constraint_free, loss_free = linear_problem(seed=2)
    run(torch.optim.Adam(free, lr=0.05), loss_free, 40)
    assert norms[-1] < 0.2 * residual(constraint_free, free)


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(2, 8)
        self.l2 = torch.nn.Linear(8, 1)
        self.frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x))).squeeze(-1)


def test_module_params_interpolation_constraint():
    # f(x_i) = y_i at 6 anchor points (a nonlinear constraint on 33 weights) while
    # fitting other data; the constraint receives a dict for functional_call.
    torch.manual_seed(0)
    model = MLP().double()
    anchors, values = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    X = torch.randn(64, 2, dtype=torch.float64)
    y = torch.sin(X.sum(1))
    seen = []

    def constraint(p):
        seen.append(sorted(p))
        return torch.func.functional_call(model, p, (anchors,)) - values

    opt = ConstrainedOptimizer(torch.optim.Adam(model.parameters(), lr=1e-2), constraint,
                               model, gamma=0.5)
    c0 = residual(constraint, dict(model.named_parameters()))
    seen.clear()
    for _ in range(40):
        opt.zero_grad()
        ((model(X) - y) ** 2).mean().backward()
        opt.step()
    assert seen[0] == ["l1.bias", "l1.weight", "l2.bias", "l2.weight"]
    final = residual(constraint, dict(model.named_parameters()))
    # Each step removes half the residual but adds the constraint's curvature times
    # the squared step (Adam's ~1e-2 per weight): a floor far above 0.5^40 c0.
    assert final < 1e-3 * c0
    assert isinstance(opt.last_info, ProjectionInfo) and opt.last_info.converged


def test_mixed_dtypes_and_grad_not_mutated():
    rng = np.random.default_rng(3)
    a = torch.tensor(rng.standard_normal(10), dtype=torch.float32, requires_grad=True)
    b = torch.tensor(rng.standard_normal(6), dtype=torch.float64, requires_grad=True)
    M = torch.tensor(rng.standard_normal((4, 16)))

    def constraint(p):
        return M @ torch.sin(torch.cat([p[0].double(), p[1]])) - 0.1

    opt = ConstrainedOptimizer(torch.optim.SGD([a, b], lr=0.1), constraint,
                               placement="gradient", gamma=1.0, **TIGHT)
    ((a.double() ** 2).sum() + (b**3).sum()).backward()
    grads = [a.grad, b.grad]
    before = [g.clone() for g in grads]
    opt.step()
    assert a.dtype == torch.float32 and b.dtype == torch.float64
    assert a.grad.dtype == torch.float32 and b.grad.dtype == torch.float64
    for g, g0 in zip(grads, before):
        assert torch.equal(g, g0)  # the tensors we were given are untouched
    assert not torch.equal(a.grad, before[0])  # the optimizer saw the projected gradient
    assert opt.last_info.converged


def test_warmup_closure_and_state_dict():
    params, constraint, loss = linear_problem(seed=4)
    twin = [p.detach().clone().requires_grad_() for p in params]
    opt = ConstrainedOptimizer(torch.optim.Adam(params, lr=0.1), constraint, warmup=2,
                               gamma=0.5, **TIGHT)
    plain = torch.optim.Adam(twin, lr=0.1)

    def closure():
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    for _ in range(2):  # warm-up: exactly the base optimizer
        result = opt.step(closure)
        plain.zero_grad()
        loss(twin).backward()
        plain.step()
    for p, q in zip(params, twin):
        assert torch.equal(p, q)
    assert opt.history == [None, None] and opt.last_info is None
    assert isinstance(result, torch.Tensor)
    c2 = residual(constraint, params)
    opt.step(closure)
    assert residual(constraint, params) == pytest.approx(0.5 * c2, rel=1e-7)
    state = opt.state_dict()
    assert state["nullspace_step"] == 3
    fresh = ConstrainedOptimizer(torch.optim.Adam(params, lr=0.1), constraint, warmup=5)
    fresh.load_state_dict(state)
    assert fresh._step == 3 and fresh.param_groups[0]["lr"] == 0.1
    moments = fresh.optimizer.state_dict()["state"]
    assert moments.keys() == opt.optimizer.state_dict()["state"].keys()


def test_gradient_placement_with_closure_returns_loss():
    params, constraint, loss = linear_problem(seed=5)
    opt = ConstrainedOptimizer(torch.optim.SGD(params, lr=0.05), constraint,
                               placement="gradient", gamma=1.0, **TIGHT)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    c0, loss0 = residual(constraint, params), float(loss().detach())
    value = opt.step(closure)
    assert len(calls) == 1 and float(value.detach()) == pytest.approx(loss0, rel=1e-12)
    assert residual(constraint, params) == pytest.approx(0.95 * c0, rel=1e-8)


def test_bad_arguments():
    params, constraint, _ = linear_problem()
    sgd = torch.optim.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="placement"):
        ConstrainedOptimizer(sgd, constraint, placement="before")
    with pytest.raises(ValueError, match="gamma"):
        ConstrainedOptimizer(sgd, constraint, gamma=-1.0)
    with pytest.raises(ValueError, match="damp"):
        ConstrainedOptimizer(sgd, constraint, damp=-1e-3)
    with pytest.raises(ValueError, match="maxiter"):
        ConstrainedOptimizer(sgd, constraint, maxiter=0)
    with pytest.raises(ValueError, match="warmup"):
        ConstrainedOptimizer(sgd, constraint, warmup=-1)
    with pytest.raises(TypeError, match="optimizer"):
        ConstrainedOptimizer(params, constraint)
    with pytest.raises(TypeError, match="constraint"):
        ConstrainedOptimizer(sgd, "c")
    with pytest.raises(ValueError, match="params"):
        ConstrainedOptimizer(sgd, constraint, [torch.zeros(3, requires_grad=True)])
    with pytest.raises(TypeError, match="params"):
        ConstrainedOptimizer(sgd, constraint, params[0])
    opt = ConstrainedOptimizer(sgd, lambda p: constraint(p).reshape(1, -1))
    with pytest.raises(ValueError, match="1-D"):
        opt.step()


def test_attention_constraint():
    # F.scaled_dot_product_attention's fused kernels have no forward-mode derivative;
    # the JVP products must still work on a model that uses it.
    torch.manual_seed(1)
    mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    names = [n for n, _ in mha.named_parameters()]

    def constraint(p):
        out = torch.func.functional_call(mha, p, (x, x, x), {"need_weights": False})[0]
        return out[:, 0, :3].reshape(-1)

    params = dict(mha.named_parameters())
    h = {n: torch.randn_like(p) for n, p in params.items()}
    d, info = project(h, constraint, params, gamma=0.2, **TIGHT)
    leaves = tuple(p.detach() for p in params.values())
    parts = torch.autograd.functional.jacobian(
        lambda *ls: constraint(dict(zip(names, ls))), leaves)
    J = torch.cat([j.reshape(j.shape[0], -1) for j in parts], dim=1)
    Jd = J @ torch.cat([d[n].reshape(-1) for n in names])
    torch.testing.assert_close(Jd, 0.2 * constraint(params).detach(), rtol=1e-8, atol=1e-9)
    assert info.converged


class _TanhOnceDifferentiable(torch.autograd.Function):
    """tanh whose backward cannot be differentiated again, with a forward-mode rule."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)

    @staticmethod
    def jvp(ctx, dx):
        (y,) = ctx.saved_tensors
        return dx * (1 - y * y)


def test_constraint_without_second_derivative():
    # J v is computed by differentiating u -> J^T u again; where the constraint has
    # no second derivative the products fall back to torch.func.jvp. The linear term
    # gives autograd a second path, along which it would silently drop the first.
    rng = np.random.default_rng(5)
    A = torch.tensor(rng.standard_normal((4, 12)))
    t = torch.tensor(rng.standard_normal(4))
    theta = torch.tensor(rng.standard_normal(12))
    h = torch.tensor(rng.standard_normal(12))

    def constraint(p):
        return A @ _TanhOnceDifferentiable.apply(p) + 0.5 * (A @ p) - t

    d, info = project(h, constraint, theta, gamma=0.4, **TIGHT)
    J = A * (1 - torch.tanh(theta) ** 2) + 0.5 * A
    c = constraint(theta)
    expected = h - torch.linalg.pinv(J) @ (J @ h - 0.4 * c)
    torch.testing.assert_close(d, expected, rtol=1e-9, atol=1e-10)
    assert info.converged


def test_constraint_ignoring_parameters():
    # A leaf the constraint never reads keeps its direction; a constraint that reads
    # none (J = 0) leaves the whole direction as it is.
    rng = np.random.default_rng(6)
    params = {"a": torch.tensor(rng.standard_normal(6)), "b": torch.tensor(rng.standard_normal(3))}
    h = {name: torch.tensor(rng.standard_normal(p.shape)) for name, p in params.items()}
    d, info = project(h, lambda p: p["a"][:2] ** 2 - 1.0, params, gamma=0.5, **TIGHT)
    torch.testing.assert_close(d["b"], h["b"])
    a = params["a"]
    J = torch.zeros(2, 6, dtype=torch.float64)
    J[0, 0], J[1, 1] = 2 * a[0], 2 * a[1]
    expected = h["a"] - torch.linalg.pinv(J) @ (J @ h["a"] - 0.5 * (a[:2] ** 2 - 1.0))
    torch.testing.assert_close(d["a"], expected, rtol=1e-9, atol=1e-10)
    assert info.converged

    d, info = project(h, lambda p: torch.ones(3, dtype=torch.float64), params, gamma=0.5)
    for name in params:
        torch.testing.assert_close(d[name], h[name])
    assert info.itn == 0 and info.istop == 0


# The grad modes a caller may be in: the projection needs autograd for J v and
# J^T u, and runs it whatever the mode (inference mode used to make J = 0 and
# return the direction unprojected, marked converged).
GRAD_MODES = ["inference_mode", "no_grad", "enable_grad", "inference-tensors-outside",
              "inference-tensors-inside"]


def _in_mode(mode, call):
    """``call(make)`` in grad mode ``mode``; ``make`` turns a NumPy array into a
    tensor: an inference tensor for the "inference-tensors" modes, used inside or
    outside inference mode."""
    if mode.startswith("inference-tensors"):
        def make(a):
            with torch.inference_mode():
                return torch.tensor(a)

        inside = mode.endswith("inside")
        with torch.inference_mode() if inside else contextlib.nullcontext():
            return call(make)
    with getattr(torch, mode)():
        return call(torch.tensor)


@pytest.mark.parametrize("mode", GRAD_MODES)
@pytest.mark.parametrize("second_derivative", [True, False], ids=["reverse-over-reverse",
                                                                  "forward-mode"])
def test_project_in_any_grad_mode(mode, second_derivative):
    rng = np.random.default_rng(7)
    A_np = rng.standard_normal((4, 12))
    theta_np, h_np, t_np = (rng.standard_normal(12), rng.standard_normal(12),
                            rng.standard_normal(4))
    tanh = _TanhOnceDifferentiable.apply if not second_derivative else torch.tanh
    # The constraint's own constants are normal tensors, as a model's weights would be
    # (autograd cannot save inference tensors, whatever lsqdiff does).
    A, t = torch.tensor(A_np), torch.tensor(t_np)

    def call(make):
        theta, h = make(theta_np), make(h_np)
        return project(h, lambda p: A @ tanh(p) + 0.5 * (A @ p) - t, theta, gamma=0.4, **TIGHT)

    d, info = _in_mode(mode, call)
    theta = torch.tensor(theta_np)
    J = A * (1 - torch.tanh(theta) ** 2) + 0.5 * A
    c = A @ torch.tanh(theta) + 0.5 * (A @ theta) - t
    expected = torch.tensor(h_np) - torch.linalg.pinv(J) @ (J @ torch.tensor(h_np) - 0.4 * c)
    torch.testing.assert_close(d, expected, rtol=1e-9, atol=1e-10)
    assert info.converged and info.itn > 0


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("placement", ["update", "gradient"])
def test_optimizer_step_in_grad_mode(mode, placement):
    """A step taken under inference mode or no_grad keeps the constraint as one
    taken with grad enabled does."""
    results = []
    for context in (getattr(torch, mode), torch.enable_grad):
        params, constraint, loss = linear_problem(seed=8)
        opt = ConstrainedOptimizer(torch.optim.SGD(params, lr=0.05), constraint,
                                   placement=placement, gamma=0.0, **TIGHT)
        opt.zero_grad()
        loss().backward()
        with context():
            opt.step()
        assert opt.last_info.converged and opt.last_info.itn > 0
        results.append(torch.cat([p.detach().reshape(-1) for p in params]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)
