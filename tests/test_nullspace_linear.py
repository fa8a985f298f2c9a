"""`lsqdiff.nullspace.LinearConstraint`: a linear constraint's own products give
what the generic path (autograd / ``jax.linearize`` of the same ``c``) gives, in
`project` and both placements of ``ConstrainedOptimizer``, in float32 and
float64; bad products are refused naming ``matvec``, ``rmatvec`` or ``offset``."""

from __future__ import annotations

import numpy as np
import pytest

from lsqdiff.nullspace import LinearConstraint, project

TOL = {"float32": 2e-5, "float64": 1e-11}
SETTINGS = dict(atol=1e-12, btol=1e-12, maxiter=100)


def torch_problem(dtype_name, k=6, seed=0):
    """A dict of two parameters (N = 26), ``A`` (k x N) and ``b``: the constraint
    generic (autograd through ``A @ flat(p) - b``) and linear (``A``'s products)."""
    torch = pytest.importorskip("torch")
    dtype = getattr(torch, dtype_name)
    rng = np.random.default_rng(seed)
    params = {"w": torch.tensor(rng.standard_normal((4, 5)), dtype=dtype, requires_grad=True),
              "b": torch.tensor(rng.standard_normal(6), dtype=dtype, requires_grad=True)}
    A = torch.tensor(rng.standard_normal((k, 26)), dtype=dtype)
    b = torch.tensor(rng.standard_normal(k), dtype=dtype)

    def flat(p):
        return torch.cat([p["w"].reshape(-1), p["b"]])

    def rmatvec(u):
        g = A.T @ u
        return {"w": g[:20].reshape(4, 5), "b": g[20:]}

    generic = lambda p: A @ flat(p) - b  # noqa: E731
    return params, generic, LinearConstraint(lambda p: A @ flat(p), rmatvec, offset=b)


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_torch_project_matches_generic(dtype_name):
    torch = pytest.importorskip("torch")
    params, generic, linear = torch_problem(dtype_name)
    h = {n: torch.randn_like(p) for n, p in params.items()}
    before = {n: (p.detach().clone(), h[n].clone()) for n, p in params.items()}
    d_gen, info_gen = project(h, generic, params, gamma=0.3, **SETTINGS)
    d_lin, info_lin = project(h, linear, params, gamma=0.3, **SETTINGS)
    for n in params:
        assert d_lin[n].dtype == params[n].dtype
        assert torch.allclose(d_lin[n], d_gen[n], atol=TOL[dtype_name], rtol=0)
        assert torch.equal(params[n].detach(), before[n][0]) and torch.equal(h[n], before[n][1])
    assert info_lin.itn == info_gen.itn and info_lin.converged
    assert info_lin.constraint_norm == pytest.approx(info_gen.constraint_norm, rel=1e-6)


@pytest.mark.parametrize("placement", ["update", "gradient"])
@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_torch_optimizer_matches_generic(dtype_name, placement):
    """Adam under either placement, 4 steps: the same parameters either way (the
    linear "update" path forms J u as c(theta_new) - c(theta_old))."""
    torch = pytest.importorskip("torch")
    from lsqdiff.nullspace.torch import ConstrainedOptimizer

    out = []
    for kind in ("generic", "linear"):
        params, generic, linear = torch_problem(dtype_name)
        # Without a module the constraint takes a tuple of the tensors.
        constraint = _on_tuple(generic if kind == "generic" else linear)
        opt = ConstrainedOptimizer(torch.optim.Adam(params.values(), lr=0.05), constraint,
                                   list(params.values()), placement=placement, gamma=0.5,
                                   **SETTINGS)
        target = torch.linspace(-1, 1, 26, dtype=params["w"].dtype)
        for _ in range(4):
            opt.zero_grad()
            ((torch.cat([params["w"].reshape(-1), params["b"]]) - target) ** 2).sum().backward()
            opt.step()
            assert opt.last_info.converged
        out.append(torch.cat([p.detach().reshape(-1) for p in params.values()]))
        residual = float(torch.linalg.vector_norm(generic(params).detach()))
    assert torch.allclose(out[0], out[1], atol=10 * TOL[dtype_name], rtol=0)
    if placement == "update":  # four steps of gamma = 0.5: 1/16 of the residual is left
        params, generic, _ = torch_problem(dtype_name)
        start = float(torch.linalg.vector_norm(generic(params).detach()))
        assert residual == pytest.approx(start / 16, rel=1e-3)


def _on_tuple(constraint):
    """``constraint`` on a tuple (w, b) instead of a dict; a LinearConstraint stays one."""
    keys = ("w", "b")
    if isinstance(constraint, LinearConstraint):
        return LinearConstraint(lambda p: constraint.matvec(dict(zip(keys, p))),
                                lambda u: tuple(constraint.rmatvec(u).values()),
                                offset=constraint.offset)
    return lambda p: constraint(dict(zip(keys, p)))


def test_torch_leaves_left_out_are_zero():
    """A dict may leave out, a tuple hold None for, parameters A does not touch."""
    torch = pytest.importorskip("torch")
    w, v = torch.randn(3, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    h = (torch.randn(3, dtype=torch.float64), torch.randn(2, dtype=torch.float64))
    first = LinearConstraint(lambda p: p[0][:2], lambda u: (torch.cat([u, u.new_zeros(1)]), None))
    d, _ = project(h, first, (w, v), **SETTINGS)
    d_gen, _ = project(h, lambda p: p[0][:2], (w, v), **SETTINGS)
    assert all(torch.allclose(a, b, atol=1e-14) for a, b in zip(d, d_gen))
    assert torch.equal(d[1], h[1])  # untouched by the projection
    as_dict = LinearConstraint(lambda p: p["w"][:2],
                               lambda u: {"w": torch.cat([u, u.new_zeros(1)])})
    d, _ = project(dict(zip("wv", h)), as_dict, {"w": w, "v": v}, **SETTINGS)
    assert torch.allclose(d["w"], d_gen[0], atol=1e-14) and torch.equal(d["v"], h[1])


def test_torch_bad_products():
    torch = pytest.importorskip("torch")
    w = torch.randn(4, dtype=torch.float64)
    h = torch.randn(4, dtype=torch.float64)
    good_r = lambda u: torch.cat([u, u.new_zeros(2)])  # noqa: E731
    cases = [
        (LinearConstraint(lambda p: p[:2].reshape(1, 2), good_r), ValueError, "matvec.*1-D"),
        (LinearConstraint(lambda p: p[:2].float(), good_r), TypeError, "matvec.*float64"),
        (LinearConstraint(lambda p: p[:2], lambda u: u), ValueError, r"rmatvec.*shape \(4,\)"),
        (LinearConstraint(lambda p: p[:2], lambda u: good_r(u).float()), TypeError,
         "rmatvec.*float64"),
        (LinearConstraint(lambda p: p[:2], lambda u: [good_r(u)]), TypeError,
         "rmatvec must return"),
        (LinearConstraint(lambda p: p[:2], good_r, offset=torch.zeros(3)), ValueError,
         r"offset.*\(2,\)"),
    ]
    for constraint, error, match in cases:
        with pytest.raises(error, match=match):
            project(h, constraint, w)
    # A matvec whose length changes between calls (here: at the first product).
    calls = []

    def shifty(p):
        calls.append(1)
        return p[:2] if len(calls) == 1 else p[:3]

    with pytest.raises(ValueError, match=r"matvec.*\(2,\)"):
        project(h, LinearConstraint(shifty, good_r), w)
    with pytest.raises(ValueError, match="rmatvec returned keys"):
        project({"a": h}, LinearConstraint(lambda p: p["a"][:2],
                                           lambda u: {"a": good_r(u), "z": u}), {"a": w})
    with pytest.raises(ValueError, match="rmatvec returned 1 tensors for 2"):
        project((h, h), LinearConstraint(lambda p: p[0][:2], lambda u: (good_r(u),)), (w, w))
    with pytest.raises(TypeError, match="matvec must be callable"):
        LinearConstraint(None, good_r)
    with pytest.raises(ValueError, match="offset must be a 1-D"):
        LinearConstraint(lambda p: p, good_r, offset=np.zeros((2, 2)))


@pytest.mark.parametrize("dtype_name", ["float32", "float64"])
def test_jax_project_matches_generic(dtype_name):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    if dtype_name == "float64" and not jax.config.jax_enable_x64:
        pytest.skip("float64 JAX arrays need jax_enable_x64, which the library never sets")
    rng = np.random.default_rng(1)
    dtype = getattr(jnp, dtype_name)
    A = jnp.asarray(rng.standard_normal((5, 26)), dtype=dtype)
    b = jnp.asarray(rng.standard_normal(5), dtype=dtype)
    params = {"w": jnp.asarray(rng.standard_normal((4, 5)), dtype=dtype),
              "b": jnp.asarray(rng.standard_normal(6), dtype=dtype)}
    h = {"w": jnp.ones((4, 5), dtype), "b": jnp.ones(6, dtype)}

    def flat(p):
        return jnp.concatenate([p["b"], p["w"].reshape(-1)])  # ravel_pytree's key order

    def rmatvec(u):
        g = A.T @ u
        return {"b": g[:6], "w": g[6:].reshape(4, 5)}

    linear = LinearConstraint(lambda p: A @ flat(p), rmatvec, offset=b)
    d_gen, _ = project(h, lambda p: A @ flat(p) - b, params, gamma=0.3, **SETTINGS)
    d_lin, info = jax.jit(lambda h, p: project(h, linear, p, gamma=0.3, **SETTINGS))(h, params)
    assert bool(info.converged)
    for n in params:
        np.testing.assert_allclose(d_lin[n], d_gen[n], atol=TOL[dtype_name] * 10, rtol=0)
    with pytest.raises(ValueError, match="rmatvec's entry"):
        project(h, LinearConstraint(linear.matvec, lambda u: {"b": rmatvec(u)["b"],
                                                             "w": rmatvec(u)["w"].T}), params)
    with pytest.raises(ValueError, match="matvec must return"):
        project(h, LinearConstraint(lambda p: (A @ flat(p))[:, None], rmatvec), params)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_torch_any_grad_mode(mode):
    """As the generic path: the projection runs whatever the caller's grad mode."""
    torch = pytest.importorskip("torch")
    params, generic, linear = torch_problem("float64")
    h = {n: torch.ones_like(p) for n, p in params.items()}
    expected, _ = project(h, generic, params, **SETTINGS)
    with getattr(torch, mode)():
        d, info = project(h, linear, params, **SETTINGS)
    assert info.converged
    assert all(torch.allclose(d[n], expected[n], atol=1e-11) for n in params)


def test_optax_takes_a_linear_constraint():
    """optax's nullspace with a LinearConstraint keeps A theta = b exactly (update placement)."""
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp

    from lsqdiff.nullspace.optax import nullspace

    A = jnp.asarray([[1.0, 1.0, 0.0], [0.0, 1.0, -1.0]])
    b = jnp.asarray([1.0, 0.5])
    total = LinearConstraint(lambda p: A @ p, lambda u: A.T @ u, offset=b)
    opt = optax.chain(optax.adam(0.1), nullspace(total, gamma=1.0, **SETTINGS))
    params = jnp.zeros(3)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: jnp.sum((p - jnp.arange(3.0)) ** 2))(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(3):
        params, state = step(params, state)
    np.testing.assert_allclose(A @ params, b, atol=1e-5)
