"""`lsqdiff.nullspace.project` against dense float64 references, on PyTorch and JAX.

Each test builds a nonlinear constraint on a few parameter leaves (N ~ 50,
k ~ 8), forms its Jacobian densely with the framework's own ``jacobian`` and
checks the projection against NumPy's ``pinv``.
"""

from __future__ import annotations

import numpy as np
import pytest

from nullspace_reference import FRAMEWORKS, nonlinear_constraint, null_projector, reference

from lsqdiff.nullspace import project

# PyTorch's first forward-mode product loads decompositions through torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

TIGHT = dict(atol=1e-12, btol=1e-12, maxiter=200)
SIZES = {"a": 30, "b": 20}  # leaf "b" is 4x5


@pytest.fixture(params=sorted(FRAMEWORKS))
def fw(request):
    return FRAMEWORKS[request.param]()


def problem(fw, seed=0, dtypes=("float64", "float64"), k=8, duplicate=False):
    rng = np.random.default_rng(seed + 100)
    arrays = {"a": rng.standard_normal(30), "b": rng.standard_normal((4, 5))}
    params = fw.tree({k_: v.astype(dt) for (k_, v), dt in zip(arrays.items(), dtypes)})
    h = fw.tree({k_: rng.standard_normal(v.shape).astype(dt)
                 for (k_, v), dt in zip(arrays.items(), dtypes)})
    return params, h, nonlinear_constraint(k, SIZES, seed, duplicate=duplicate)


def call(fw, h, constraint, params, **kwargs):
    """``project``, jitted under JAX (so that every JAX check also covers jit)."""
    if fw.name == "jax":
        return fw.jax.jit(lambda h_, p_: project(h_, constraint, p_, **kwargs))(h, params)
    return project(h, constraint, params, **kwargs)


def test_matches_dense_pinv(fw):
    params, h, constraint = problem(fw)
    d, info = call(fw, h, constraint, params, gamma=0.3, **TIGHT)
    J, c, hf, df = (fw.jacobian(constraint, params), fw.evaluate(constraint, params),
                    fw.flat(h), fw.flat(d))
    assert np.linalg.matrix_rank(J) == 8
    np.testing.assert_allclose(df, reference(J, hf, c, 0.3), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(J @ df, 0.3 * c, atol=1e-9 * np.linalg.norm(c))
    # d - h lies in the row space of J: the null-space projector kills it.
    np.testing.assert_allclose(null_projector(J) @ (df - hf), 0.0, atol=1e-9)
    assert bool(info.converged) and 0 < int(info.itn) <= 200
    np.testing.assert_allclose(float(info.constraint_norm), np.linalg.norm(c), rtol=1e-12)
    assert float(info.gamma) == pytest.approx(0.3)
    assert float(info.residual_norm) < 1e-9 * np.linalg.norm(c)


def test_zero_gamma_keeps_constraint_to_first_order(fw):
    params, h, constraint = problem(fw, seed=1)
    d, _ = call(fw, h, constraint, params, **TIGHT)
    J, hf, df = fw.jacobian(constraint, params), fw.flat(h), fw.flat(d)
    np.testing.assert_allclose(df, null_projector(J) @ hf, atol=1e-10)
    c0 = fw.evaluate(constraint, params)

    def change(direction, eta):
        return np.linalg.norm(fw.evaluate(constraint, fw.axpy(params, eta, direction)) - c0)

    # Along d the change is O(eta^2) (ten times smaller step: ~100 times smaller
    # change); along the raw h it is O(eta).
    assert change(d, 1e-2) / change(d, 1e-3) == pytest.approx(100, rel=0.05)
    assert change(h, 1e-2) / change(h, 1e-3) == pytest.approx(10, rel=0.05)
    assert change(d, 1e-3) < 1e-2 * change(h, 1e-3)


def test_mixed_dtypes(fw):
    params, h, constraint = problem(fw, seed=2, dtypes=("float32", "float64"))
    d, info = call(fw, h, constraint, params, gamma=0.1, **TIGHT)
    assert [str(t.dtype) for t in fw.leaves(d)] == [str(t.dtype) for t in fw.leaves(h)]
    assert "float32" in str(fw.leaves(d)[0].dtype)
    J, c = fw.jacobian(constraint, params), fw.evaluate(constraint, params)
    np.testing.assert_allclose(fw.flat(d), reference(J, fw.flat(h), c, 0.1), rtol=1e-5, atol=1e-5)
    if fw.name == "jax":  # diagnostics in the solve dtype, the widest
        assert info.constraint_norm.dtype == fw.jnp.float64


@pytest.mark.parametrize("damp", [0.0, 0.3])
def test_rank_deficient(fw, damp):
    # The last row of J repeats the first with another offset: rank k - 1 and an
    # inconsistent system, so the residual is not zero.
    params, h, constraint = problem(fw, seed=3, duplicate=True)
    d, info = call(fw, h, constraint, params, gamma=0.5, damp=damp, **TIGHT)
    J, c, hf, df = (fw.jacobian(constraint, params), fw.evaluate(constraint, params),
                    fw.flat(h), fw.flat(d))
    assert np.linalg.matrix_rank(J) == 7
    np.testing.assert_allclose(df, reference(J, hf, c, 0.5, damp), rtol=1e-6, atol=1e-6)
    true_residual = np.linalg.norm(J @ df - 0.5 * c)
    assert true_residual > 0.1
    assert float(info.residual_norm) == pytest.approx(true_residual, rel=1e-6)


def test_normalize_gamma(fw):
    params, h, constraint = problem(fw, seed=4)
    d, info = call(fw, h, constraint, params, gamma=0.2, normalize_gamma=True, **TIGHT)
    J, c = fw.jacobian(constraint, params), fw.evaluate(constraint, params)
    g = 0.2 / np.linalg.norm(c)
    assert float(info.gamma) == pytest.approx(g, rel=1e-12)
    np.testing.assert_allclose(J @ fw.flat(d), g * c, atol=1e-10)
    assert np.linalg.norm(J @ fw.flat(d)) == pytest.approx(0.2, rel=1e-9)


def test_iteration_cap(fw):
    params, h, constraint = problem(fw, seed=5)
    _, info = call(fw, h, constraint, params, gamma=0.1, maxiter=2, atol=1e-12, btol=1e-12)
    assert int(info.itn) == 2 and int(info.istop) == 7 and not bool(info.converged)
    assert float(info.residual_norm) > 1e-6


def test_torch_containers_and_no_mutation():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    w0, v0 = rng.standard_normal(6), rng.standard_normal((2, 3))
    W, V = torch.tensor(w0, requires_grad=True), torch.tensor(v0, requires_grad=True)
    hw, hv = torch.tensor(rng.standard_normal(6)), torch.tensor(rng.standard_normal((2, 3)))
    hw_before, hv_before = hw.clone(), hv.clone()
    M = torch.tensor(rng.standard_normal((3, 12)))

    def c_list(p):
        return M @ torch.sin(torch.cat([p[0], p[1].reshape(-1)]))

    d, info = project([hw, hv], c_list, [W, V], gamma=0.1, **TIGHT)
    assert isinstance(d, list) and len(d) == 2
    d_tuple, _ = project((hw, hv), lambda p: c_list(list(p)), (W, V), gamma=0.1, **TIGHT)
    assert isinstance(d_tuple, tuple)
    # The same problem as one flat tensor.
    flat = torch.cat([W.detach(), V.detach().reshape(-1)])
    d_flat, _ = project(torch.cat([hw, hv.reshape(-1)]),
                        lambda p: c_list([p[:6], p[6:].reshape(2, 3)]), flat, gamma=0.1, **TIGHT)
    torch.testing.assert_close(torch.cat([d[0], d[1].reshape(-1)]), d_flat)
    for t in (*d, *d_tuple, d_flat):
        assert not t.requires_grad and t.grad_fn is None
    # Inputs untouched, and the result shares no memory with the direction.
    d[0].add_(1.0)
    assert torch.equal(hw, hw_before) and torch.equal(hv, hv_before)
    assert np.array_equal(W.detach().numpy(), w0) and W.grad is None


def test_jax_eager_matches_jit():
    fw = FRAMEWORKS["jax"]()
    params, h, constraint = problem(fw, seed=7)
    d_eager, info_eager = project(h, constraint, params, gamma=0.3, **TIGHT)
    d_jit, info_jit = call(fw, h, constraint, params, gamma=0.3, **TIGHT)
    np.testing.assert_allclose(fw.flat(d_eager), fw.flat(d_jit), rtol=1e-10, atol=1e-12)
    assert int(info_eager.itn) == int(info_jit.itn)


# --------------------------------------------------------------------------- #
# Bad inputs
# --------------------------------------------------------------------------- #

def bad_cases(fw):
    params, h, constraint = problem(fw, seed=8)
    two_d = lambda p: constraint(p).reshape(2, 4)  # noqa: E731
    other = FRAMEWORKS["jax" if fw.name == "torch" else "torch"]()
    wrong_framework = lambda p: other.tree({"c": np.ones(3)})["c"]  # noqa: E731
    as_numpy = lambda p: np.ones(3)  # noqa: E731
    missing = {"a": h["a"]}
    reshaped = {"a": h["a"], "b": h["b"].reshape(5, 4)}
    return params, h, constraint, [
        (dict(constraint=two_d), ValueError, "1-D"),
        (dict(constraint=wrong_framework), TypeError, "constraint must return"),
        (dict(constraint=as_numpy), TypeError, "constraint must return"),
        (dict(direction=missing), (TypeError, ValueError), "direction"),
        (dict(direction=reshaped), ValueError, "shape"),
        (dict(gamma=-1.0), ValueError, "gamma"),
        (dict(gamma=float("nan")), ValueError, "gamma"),
        (dict(damp=-0.1), ValueError, "damp"),
        (dict(maxiter=0), ValueError, "maxiter"),
        (dict(maxiter=2.5), TypeError, "maxiter"),
        (dict(atol="1e-6"), TypeError, "atol"),
        (dict(normalize_gamma=1), TypeError, "normalize_gamma"),
    ]


def test_bad_inputs(fw):
    params, h, constraint, cases = bad_cases(fw)
    for change, error, match in cases:
        kwargs = dict(direction=h, constraint=constraint, params=params)
        kwargs.update(change)
        with pytest.raises(error, match=match):
            project(kwargs.pop("direction"), kwargs.pop("constraint"), kwargs.pop("params"),
                    **kwargs)


def test_params_of_no_autodiff_framework():
    with pytest.raises(TypeError, match="params must be"):
        project(np.ones(3), lambda p: p[:1], np.ones(3))
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="params"):
        project([torch.ones(2)], lambda p: p[0][:1], [torch.ones(2, dtype=torch.int64)])
