"""PyTorch: gradients of lsqdiff.lsmr/lsqr through ``torch.autograd``.

``gradcheck`` (float64, small problems, forward run to atol = btol = 1e-14)
for A, b, x0 and damp; ``.backward()`` and ``torch.autograd.grad`` against the
NumPy pullback and the dense closed forms; LinearOperator parameters (a list of
tensors, an nn.Module); sparse COO/CSR A; no graph when nothing requires grad;
mixed dtypes.
"""

from __future__ import annotations

import numpy as np
import pytest

import lsqdiff
from conftest import assert_converged, make_problem
from grad_reference import SMALL, TIGHT_GRAD, assert_close, closed_form, small_problem, vdot

torch = pytest.importorskip("torch")

def t(a, requires_grad=False, dtype=None):
    out = torch.tensor(np.asarray(a))
    if dtype is not None:
        out = out.to(dtype)
    return out.requires_grad_(requires_grad)


def solve(solver, A, b, x0=None, damp=0.0, **kw):
    """x after asserting convergence (tight tolerances unless overridden)."""
    x, info = solver(A, b, x0=x0, damp=damp, **{**TIGHT_GRAD, **kw})
    assert_converged(info)
    return x


def loss_of(x, x_bar):
    """``Re <x_bar, x>``: its gradient in x is x_bar (PyTorch's complex convention)."""
    x_bar = t(x_bar).to(x.dtype)
    return (x_bar.conj() * x).real.sum()


# --------------------------------------------------------------------------- #
# gradcheck
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", list(SMALL))
def test_gradcheck(solver, case):
    """Finite differences of the solve (torch.autograd.gradcheck) in every input
    that the case has: A, b, x0 and (damped cases) damp as a 0-d tensor."""
    A, b, x0, damp, _ = small_problem(case)
    inputs = [t(A, True), t(b, True)]
    if x0 is not None:
        inputs.append(t(x0, True))
    if damp:
        inputs.append(t(damp, True))

    def f(A, b, *rest):
        rest = list(rest)
        x0_ = rest.pop(0) if x0 is not None else None
        damp_ = rest.pop(0) if damp else 0.0
        return solve(solver, A, b, x0_, damp_)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)], ids=["tall", "wide"])
def test_gradcheck_rank_deficient_factors(shape):
    """Undamped, rank 2: finite differences only along A = L R^T (a generic
    perturbation of A changes its rank and the pseudo-inverse jumps)."""
    rng = np.random.default_rng(5)
    m, n = shape
    L, R = t(rng.standard_normal((m, 2)), True), t(rng.standard_normal((n, 2)), True)
    b, x0 = t(rng.standard_normal(m), True), t(rng.standard_normal(n), True)
    assert torch.linalg.matrix_rank(L.detach() @ R.detach().T) == 2
    f = lambda L, R, b, x0: solve(lsqdiff.lsmr, L @ R.T, b, x0)  # noqa: E731
    assert torch.autograd.gradcheck(f, (L, R, b, x0), eps=1e-6, atol=1e-7, rtol=1e-6)


# --------------------------------------------------------------------------- #
# backward() and autograd.grad against the NumPy pullback and the closed forms
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", ["wide-x0", "damped-x0", "2d-b", "complex-wide-damped-x0"])
def test_backward_matches_numpy_pullback(solver, case):
    A, b, x0, damp, x_bar = small_problem(case)
    leaves = dict(A=t(A, True), b=t(b, True), x0=None if x0 is None else t(x0, True),
                  damp=t(damp, True) if damp else damp)
    x = solve(solver, leaves["A"], leaves["b"], leaves["x0"], leaves["damp"])
    loss_of(x, x_bar).backward()

    (x_np, info), pullback = lsqdiff.vjp(solver, A, b, x0=x0, damp=damp, **TIGHT_GRAD)
    assert_converged(info)
    g = pullback(x_bar)
    np.testing.assert_allclose(x.detach().numpy(), x_np, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(leaves["A"].grad.numpy(), g.A.todense(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(leaves["b"].grad.numpy(), g.b, rtol=1e-9, atol=1e-12)
    if x0 is not None:
        np.testing.assert_allclose(leaves["x0"].grad.numpy(), g.x0, rtol=1e-9, atol=1e-12)
    if damp:
        np.testing.assert_allclose(leaves["damp"].grad.item(), g.damp, rtol=1e-9)
    ref = closed_form(A, b, x0, damp, x_bar)
    assert_close(leaves["A"].grad.numpy(), ref["A"], 1e-9, 1e-12, "A")
    assert_close(leaves["b"].grad.numpy(), ref["b"], 1e-9, 1e-12, "b")


def test_backward_accumulates_and_autograd_grad():
    """Two backward passes add into .grad; torch.autograd.grad returns the same
    gradients without touching .grad; inputs not requiring grad get none."""
    A, b, x0, damp, x_bar = small_problem("damped-x0")
    At, bt, x0t, dt = t(A, True), t(b, True), t(x0), t(damp, True)
    for _ in range(2):
        loss_of(solve(lsqdiff.lsmr, At, bt, x0t, dt), x_bar).backward()
    assert x0t.grad is None
    ref = closed_form(A, b, x0, damp, x_bar)
    assert_close(At.grad.numpy(), 2 * ref["A"], 1e-9, 0, "A")
    assert_close(bt.grad.numpy(), 2 * ref["b"], 1e-9, 0, "b")
    np.testing.assert_allclose(dt.grad.item(), 2 * ref["damp"], rtol=1e-9)

    At2 = t(A, True)
    x = solve(lsqdiff.lsmr, At2, bt, x0t, dt)
    gA, gd = torch.autograd.grad(loss_of(x, x_bar), [At2, dt])
    assert At2.grad is None
    assert_close(gA.numpy(), ref["A"], 1e-9, 0, "A")
    np.testing.assert_allclose(gd.item(), ref["damp"], rtol=1e-9)
    assert_close(bt.grad.numpy(), 2 * ref["b"], 1e-9, 0, "b unchanged")


def test_real_A_complex_b_gets_real_gradient():
    """A real A in a complex solve gets the real part of the complex gradient
    (a real perturbation dA changes the loss by Re<A_bar, dA>)."""
    A, b, x0, damp, x_bar = small_problem("complex-wide-damped-x0")
    A = A.real.copy()
    At, bt = t(A, True), t(b, True)
    loss_of(solve(lsqdiff.lsmr, At, bt, t(x0), damp), x_bar).backward()
    assert At.grad.dtype == torch.float64 and bt.grad.dtype == torch.complex128
    ref = closed_form(A, b, x0, damp, x_bar)
    assert_close(At.grad.numpy(), ref["A"].real, 1e-9, 0, "A")
    assert_close(bt.grad.numpy(), ref["b"], 1e-9, 0, "b")


def test_mixed_dtypes_grads_in_each_inputs_dtype():
    """float32 b and damp with float64 A: the solve runs in float64, and each
    gradient comes back in its input's dtype."""
    A, b, x0, damp, x_bar = small_problem("damped-x0")
    At = t(A, True)
    bt = t(b, True, torch.float32)
    x0t = t(x0, True, torch.float32)
    dt = t(damp, True, torch.float32)
    x = solve(lsqdiff.lsmr, At, bt, x0t, dt)
    assert x.dtype == torch.float64
    loss_of(x, x_bar).backward()
    assert At.grad.dtype == torch.float64
    assert bt.grad.dtype == x0t.grad.dtype == dt.grad.dtype == torch.float32
    # reference at the float32 values the solve actually saw
    b32, x032 = b.astype(np.float32).astype(float), x0.astype(np.float32).astype(float)
    d32 = float(np.float32(damp))
    ref = closed_form(A, b32, x032, d32, x_bar)
    assert_close(At.grad.numpy(), ref["A"], 1e-9, 0, "A")
    assert_close(bt.grad.numpy(), ref["b"], 1e-6, 0, "b")
    assert_close(x0t.grad.numpy(), ref["x0"], 1e-6, 0, "x0")
    np.testing.assert_allclose(dt.grad.item(), ref["damp"], rtol=1e-6)


# --------------------------------------------------------------------------- #
# No graph when nothing requires grad
# --------------------------------------------------------------------------- #

def test_no_graph_when_nothing_requires_grad(solver):
    A, b, x0, damp, _ = small_problem("damped-x0")
    x = solve(solver, t(A), t(b), t(x0), t(damp))
    assert not x.requires_grad and x.grad_fn is None
    with torch.no_grad():
        x = solve(solver, t(A, True), t(b, True), t(x0, True), t(damp, True))
    assert not x.requires_grad and x.grad_fn is None
    x = solve(solver, t(A, True), t(b))
    assert x.requires_grad and x.grad_fn is not None


# --------------------------------------------------------------------------- #
# LinearOperator parameters
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", ["tall", "wide-x0", "complex-wide-damped-x0"])
@pytest.mark.parametrize("with_rmatvec", [True, False], ids=["rmatvec", "derived"])
def test_linear_operator_params_list(case, with_rmatvec):
    """A(theta) = B + sum_i theta_i A_i: theta's gradient is Re<A_bar, A_i>
    (rmatvec given, or derived by torch.func.vjp); gradcheck in theta and b."""
    A, b, x0, damp, x_bar = small_problem(case)
    m, n = A.shape
    rng = np.random.default_rng(21)
    mats_np = [rng.standard_normal((m, n)) for _ in range(2)]
    theta0 = np.array([0.3, -0.1])
    B = t(A - sum(th * M for th, M in zip(theta0, mats_np)))
    mats = [t(M).to(B.dtype) for M in mats_np]

    def make_op(theta):
        dense = lambda: B + sum(theta[i] * mats[i] for i in range(2))  # noqa: E731
        return lsqdiff.LinearOperator(
            (m, n), lambda v: dense() @ v,
            (lambda u: dense().conj().T @ u) if with_rmatvec else None, params=[theta])

    theta = t(theta0, True)
    bt = t(b, True)
    x = solve(lsqdiff.lsmr, make_op(theta), bt, None if x0 is None else t(x0), damp)
    loss_of(x, x_bar).backward()
    ref = closed_form(A, b, x0, damp, x_bar)
    np.testing.assert_allclose(theta.grad.numpy(), [vdot(ref["A"], M) for M in mats_np],
                               rtol=1e-9, atol=1e-12)
    assert_close(bt.grad.numpy(), ref["b"], 1e-9, 0, "b")

    if case == "tall":
        f = lambda theta, b: solve(lsqdiff.lsmr, make_op(theta), b)  # noqa: E731
        assert torch.autograd.gradcheck(f, (t(theta0, True), t(b, True)), eps=1e-6, atol=1e-7)


def test_linear_operator_nn_module():
    """params=an nn.Module: its parameters get gradients (a weight matrix gets
    s * A_bar, the scale Re<A_bar, W>); rmatvec derived."""
    A, b, x0, damp, x_bar = small_problem("damped-x0")
    m, n = A.shape

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.W = torch.nn.Parameter(t(A / 2.0))
            self.s = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

        def forward(self, v):
            return self.s * (self.W @ v)

    mod = Scaled()
    op = lsqdiff.LinearOperator((m, n), mod, params=mod)
    x = solve(lsqdiff.lsqr, op, t(b), t(x0), t(damp, True))
    loss_of(x, x_bar).backward()
    ref = closed_form(A, b, x0, damp, x_bar)
    assert_close(mod.W.grad.numpy(), 2.0 * ref["A"], 1e-9, 0, "W")
    np.testing.assert_allclose(mod.s.grad.item(), vdot(ref["A"], A / 2.0), rtol=1e-9)


# --------------------------------------------------------------------------- #
# Sparse A
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("layout", ["coo", "csr"])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_sparse_gradient_on_the_pattern(layout, complex_):
    """A sparse A's gradient keeps A's layout and holds the dense gradient's
    values on A's sparsity pattern (and nothing off it)."""
    A, b = make_problem((8, 5), seed=31, complex_=complex_)
    A[np.abs(A) < 0.25] = 0
    rng = np.random.default_rng(32)
    x_bar = rng.standard_normal(5) + (1j * rng.standard_normal(5) if complex_ else 0)
    dense = t(A)
    As = dense.to_sparse_coo() if layout == "coo" else dense.to_sparse_csr()
    As.requires_grad_(True)
    x = solve(lsqdiff.lsmr, As, t(b), damp=0.1)
    loss_of(x, x_bar).backward()
    assert As.grad.layout == As.layout
    G = As.grad.to_dense().numpy()
    ref = closed_form(A, b, None, 0.1, x_bar)["A"]
    pattern = A != 0
    assert 0 < pattern.sum() < A.size
    assert_close(G[pattern], ref[pattern], 1e-9, 0, "on the pattern")
    assert np.all(G[~pattern] == 0)


def test_uncoalesced_coo_gradient():
    """Duplicate entries of an uncoalesced COO tensor add up in A; the gradient
    is the dense one at each stored position."""
    A, b = make_problem((6, 4), seed=33)
    rows, cols = np.nonzero(np.ones_like(A))
    idx = np.concatenate([np.stack([rows, cols]), [[0, 5], [1, 3]]], axis=1)  # two duplicates
    vals = np.concatenate([A[rows, cols], [0.5, -0.25]])
    As = torch.sparse_coo_tensor(t(idx), t(vals), A.shape, check_invariants=True)
    As.requires_grad_(True)
    A_eff = A.copy()
    A_eff[0, 1] += 0.5
    A_eff[5, 3] += -0.25
    x_bar = np.arange(1.0, 5.0)
    loss_of(solve(lsqdiff.lsmr, As, t(b)), x_bar).backward()
    ref = closed_form(A_eff, b, None, 0.0, x_bar)["A"]
    assert_close(As.grad.to_dense().numpy(), ref, 1e-9, 0, "A")


# --------------------------------------------------------------------------- #
# damp = 0 as a tensor
# --------------------------------------------------------------------------- #

def test_zero_damp_tensor_uses_the_pseudo_inverse_rule():
    """A concrete 0-d damp tensor equal to 0 (even one requiring grad) selects the
    pseudo-inverse rule: finite gradients, 0 for damp (x depends on damp^2)."""
    A, b, x0, _, x_bar = small_problem("wide-x0")
    At, dt = t(A, True), t(0.0, True)
    loss_of(solve(lsqdiff.lsmr, At, t(b), t(x0), dt), x_bar).backward()
    assert dt.grad.item() == 0.0
    assert_close(At.grad.numpy(), closed_form(A, b, x0, 0.0, x_bar)["A"], 1e-9, 1e-12, "A")
