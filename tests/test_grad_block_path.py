"""The undamped backward pass solves ``b_bar`` and ``y`` as one two-column LSMR
solve off the CPU and as two one-column solves on a CPU (`Backend.on_cpu`).
Both paths must give the same gradients: the block path is forced here on the
CPU, against the closed forms of DESIGN.md section 2."""

from __future__ import annotations

import pytest

import lsqdiff
from lsqdiff.backends._base import Backend
from test_gradients import CASES, assert_matches_closed_form, build, run_vjp
from grad_reference import closed_form

UNDAMPED = [c for c in CASES if not CASES[c].get("damp")]


@pytest.mark.parametrize("block", [False, True], ids=["cpu-path", "block-path"])
@pytest.mark.parametrize("case", ["wide-x0", "rankdef-x0", "2d-b-rankdef", "complex-rankdef-x0"])
def test_both_paths_match_closed_form(monkeypatch, case, block):
    assert case in UNDAMPED
    if block:
        monkeypatch.setattr(Backend, "on_cpu", lambda self, a: False)
    A, b, x0, damp, x_bar = build(case)
    x, grads = run_vjp(lsqdiff.lsmr, A, b, x0, damp, x_bar)
    assert_matches_closed_form(grads, closed_form(A, b, x0, damp, x_bar), x_bar)


def test_on_cpu_for_numpy_torch_and_jax():
    import numpy as np

    from lsqdiff.backends import backend_for

    import array_api_compat.numpy as xnp

    assert backend_for(xnp).on_cpu(np.zeros(2))
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xt

    assert backend_for(xt).on_cpu(torch.zeros(2))
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    if jax.default_backend() == "cpu":
        bj = backend_for(jnp)
        assert bj.on_cpu(jnp.zeros(2))
        assert jax.jit(lambda v: jnp.asarray(bj.on_cpu(v)))(jnp.zeros(2))  # a tracer


# --------------------------------------------------------------------------- #
# grad_maxiter: an exact iteration limit for the backward solves
# --------------------------------------------------------------------------- #

@pytest.mark.parametrize("case", ["tall", "wide-x0", "tall-damped"])
def test_grad_maxiter_limits_backward_solves(monkeypatch, case):
    import numpy as np

    from lsqdiff import _driver

    A, b, x0, damp, x_bar = build(case)
    limits = []
    run = _driver.run

    def recording(*args, maxiter, **kw):
        state = run(*args, maxiter=maxiter, **kw)
        limits.append((maxiter, int(np.max(np.asarray(state["itn"])))))
        return state

    monkeypatch.setattr(_driver, "run", recording)  # the forward's record comes first
    opts = dict(damp=damp, x0=x0, atol=0.0, btol=0.0, conlim=0.0, maxiter=4)
    (x, info), pullback = lsqdiff.vjp(lsqdiff.lsmr, A, b, grad_maxiter=4, **opts)
    pullback(x_bar)
    assert len(limits) > 1 and all(lim == 4 and itn <= 4 for lim, itn in limits[1:])
    # Default: at least min(m, n) iterations, whatever the forward's maxiter.
    limits.clear()
    lsqdiff.vjp(lsqdiff.lsmr, A, b, **opts)[1](x_bar)
    assert len(limits) > 1 and all(lim == min(A.shape) for lim, _ in limits[1:])


def test_grad_maxiter_large_changes_nothing():
    import numpy as np

    A, b, x0, damp, x_bar = build("rankdef-x0")
    g1 = run_vjp(lsqdiff.lsmr, A, b, x0, damp, x_bar)[1]
    g2 = run_vjp(lsqdiff.lsmr, A, b, x0, damp, x_bar, grad_maxiter=10_000)[1]
    np.testing.assert_array_equal(g1.b, g2.b)
    np.testing.assert_array_equal(g1.A.todense(), g2.A.todense())


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (2.5, TypeError), (True, TypeError)])
def test_grad_maxiter_checked(bad, exc):
    import numpy as np

    with pytest.raises(exc, match="grad_maxiter"):
        lsqdiff.lsmr(np.eye(3), np.ones(3), grad_maxiter=bad)


def test_jax_eager_backward_traced_once(monkeypatch):
    """Outside jit, the JAX tangent rule (whose transpose is the backward pass)
    is compiled once per settings, not retraced (and its LSMR loops recompiled)
    on every gradient."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from lsqdiff import _solve

    jax.config.update("jax_enable_x64", True)
    traces = []
    pushforward = _solve.pushforward
    monkeypatch.setattr(_solve, "pushforward",
                        lambda *a, **k: traces.append(1) or pushforward(*a, **k))
    A, b, x0, damp, x_bar = build("tall")
    # Settings no other test uses, so that the cache starts empty for them.
    opts = dict(atol=1e-11, btol=1e-11, maxiter=137)

    def loss(A, b):
        return jnp.sum(lsqdiff.lsmr(A, b, **opts)[0] ** 2)

    g1 = jax.grad(loss, argnums=(0, 1))(jnp.asarray(A), jnp.asarray(b))
    g2 = jax.grad(loss, argnums=(0, 1))(jnp.asarray(A) * 1.0, jnp.asarray(b) + 0.0)
    assert len(traces) == 1
    for u, v in zip(g1, g2):
        assert jnp.allclose(u, v)
