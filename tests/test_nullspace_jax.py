"""`lsqdiff.nullspace.optax.nullspace`: both placements, warm-up, jit and scan."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from lsqdiff.nullspace.optax import NullspaceState, nullspace  # noqa: E402

TIGHT = dict(atol=1e-12, btol=1e-12, maxiter=100)


def linear_problem(seed=0, k=5, dtypes=("float64", "float64")):
    """Two leaves (N = 30), a linear constraint A theta = b (k rows), a quadratic loss."""
    rng = np.random.default_rng(seed)
    params = {"v": jnp.asarray(rng.standard_normal((2, 5)), dtypes[0]),
              "w": jnp.asarray(rng.standard_normal(20), dtypes[1])}
    A, b = jnp.asarray(rng.standard_normal((k, 30))), jnp.asarray(rng.standard_normal(k))
    target = jnp.asarray(rng.standard_normal(30))

    def flat(p):
        return jnp.concatenate([p["v"].reshape(-1), p["w"]]).astype(jnp.float64)

    def constraint(p):
        return A @ flat(p) - b

    def loss(p):
        return jnp.sum((flat(p) - target) ** 2)

    return params, constraint, loss


def train(opt, params, loss, constraint, steps):
    """``steps`` jitted steps in one ``lax.scan``; returns the final params and state,
    the constraint norm before each step and after the last, and the infos."""

    def step(carry, _):
        p, state = carry
        updates, state = opt.update(jax.grad(loss)(p), state, p)
        norm = jnp.linalg.norm(constraint(p))
        info = next(s for s in state if isinstance(s, NullspaceState)).info
        return (optax.apply_updates(p, updates), state), (norm, info)

    @jax.jit
    def run(p):
        (p, state), (norms, infos) = jax.lax.scan(step, (p, opt.init(p)), length=steps)
        return p, state, jnp.append(norms, jnp.linalg.norm(constraint(p))), infos

    return run(params)


def test_update_placement_adam_rate():
    # The applied step satisfies J u' = -gamma c: factor (1 - gamma) per step.
    params, constraint, loss = linear_problem()
    opt = optax.chain(optax.adam(0.1), nullspace(constraint, gamma=0.3, **TIGHT))
    p, state, norms, infos = train(opt, params, loss, constraint, 8)
    np.testing.assert_allclose(norms[1:] / norms[:-1], 0.7, rtol=1e-7)
    assert bool(infos.converged.all()) and float(infos.residual_norm.max()) < 1e-9
    np.testing.assert_allclose(infos.constraint_norm, norms[:-1], rtol=1e-10)
    assert int(state[1].count) == 8
    assert loss(p) < loss(params)


def test_gradient_placement_sgd_rate():
    params, constraint, loss = linear_problem(seed=1)
    eta, gamma = 0.05, 2.0
    opt = optax.chain(nullspace(constraint, placement="gradient", gamma=gamma, **TIGHT),
                      optax.sgd(eta))
    _, _, norms, infos = train(opt, params, loss, constraint, 8)
    np.testing.assert_allclose(norms[1:] / norms[:-1], 1 - eta * gamma, rtol=1e-8)
    np.testing.assert_allclose(infos.gamma, gamma)


def test_gradient_placement_adam_is_not_exact():
    # Adam rescales the projected gradient per coordinate: no single geometric rate,
    # but the residual stays far below plain Adam's.
    params, constraint, loss = linear_problem(seed=2)
    opt = optax.chain(nullspace(constraint, placement="gradient", gamma=5.0, **TIGHT),
                      optax.adam(0.05))
    p, _, norms, _ = train(opt, params, loss, constraint, 40)
    ratios = norms[1:] / norms[:-1]
    assert float(jnp.ptp(ratios)) > 1e-3
    plain = optax.adam(0.05)
    state = plain.init(params)
    free = params
    for _ in range(40):
        updates, state = plain.update(jax.grad(loss)(free), state)
        free = optax.apply_updates(free, updates)
    assert float(norms[-1]) < 0.2 * float(jnp.linalg.norm(constraint(free)))
    assert loss(p) < loss(params)


def test_warmup_then_projection():
    params, constraint, loss = linear_problem(seed=3)
    opt = optax.chain(optax.adam(0.1), nullspace(constraint, gamma=0.5, warmup=3, **TIGHT))
    p, state, norms, infos = train(opt, params, loss, constraint, 4)
    # The first three steps are plain Adam's.
    plain, plain_state = params, optax.adam(0.1).init(params)
    for _ in range(3):
        updates, plain_state = optax.adam(0.1).update(jax.grad(loss)(plain), plain_state)
        plain = optax.apply_updates(plain, updates)
    np.testing.assert_allclose(norms[3], jnp.linalg.norm(constraint(plain)), rtol=1e-10)
    assert [int(i) for i in infos.itn] == [0, 0, 0, int(infos.itn[3])] and int(infos.itn[3]) > 0
    assert float(norms[4]) == pytest.approx(0.5 * float(norms[3]), rel=1e-7)
    assert int(state[1].count) == 4


def test_mixed_dtype_pytree_keeps_dtypes():
    # float32 and float64 leaves: the solve runs in float64 and each update keeps its
    # leaf's dtype, so the scan's carry keeps one type.
    params, constraint, loss = linear_problem(seed=4, dtypes=("float32", "float64"))
    opt = optax.chain(optax.adam(0.05), nullspace(constraint, gamma=0.5, **TIGHT))
    p, _, norms, infos = train(opt, params, loss, constraint, 6)
    assert p["v"].dtype == jnp.float32 and p["w"].dtype == jnp.float64
    assert infos.constraint_norm.dtype == jnp.float64
    # The float32 leaf rounds each step: the rate holds to float32 accuracy.
    np.testing.assert_allclose(norms[1:] / norms[:-1], 0.5, rtol=1e-4)


def test_rank_deficient_with_damp():
    # The constraint repeats its rows: J has rank 5 of 10; damping keeps LSMR stable
    # and the repeated rows are still satisfied together.
    params, constraint, loss = linear_problem(seed=5)
    doubled = lambda p: jnp.concatenate([constraint(p), constraint(p)])  # noqa: E731
    opt = optax.chain(optax.adam(0.05), nullspace(doubled, gamma=0.5, damp=1e-3, **TIGHT))
    _, _, norms, infos = train(opt, params, loss, doubled, 6)
    np.testing.assert_allclose(norms[1:] / norms[:-1], 0.5, rtol=1e-4)
    assert float(infos.residual_norm.max()) < 1e-3 * float(norms[0])


def test_update_needs_params_and_knobs_are_checked():
    params, constraint, loss = linear_problem()
    tx = nullspace(constraint)
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="placement"):
        nullspace(constraint, placement="after")
    with pytest.raises(ValueError, match="gamma"):
        nullspace(constraint, gamma=-0.1)
    with pytest.raises(ValueError, match="warmup"):
        nullspace(constraint, warmup=-2)
    with pytest.raises(TypeError, match="maxiter"):
        nullspace(constraint, maxiter=None)
    with pytest.raises(TypeError, match="constraint"):
        nullspace("c")
    bad = nullspace(lambda p: constraint(p)[None])
    with pytest.raises(ValueError, match="1-D"):
        bad.init(params)
    with pytest.raises(ValueError, match="shape"):
        tx.update({"v": params["v"].T, "w": params["w"]}, state, params)
