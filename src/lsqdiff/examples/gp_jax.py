"""The RFF GP recipe of `lsqdiff.examples.gp` under JAX: ``jit`` around value-and-grad.

Same model and objective: the posterior-mean weights are one damped LSMR solve
``w = argmin ||Phi(theta) w - y||^2 + sigma^2 ||w||^2`` with ``Phi`` a
matrix-free `lsqdiff.LinearOperator` (its products build the features
``batch`` rows at a time), and the validation NLPD (plug-in variance
``sigma^2``) or MSE of ``Phi_val w`` is differentiated through the solve.
Under JAX the operator needs no ``params``: the arrays ``matvec`` closes over
are found by ``jax.closure_convert`` and receive gradients, and ``rmatvec`` is
derived by ``jax.linear_transpose``. The whole step compiles once.

Parameters are a dict of arrays ``{"log_lengthscale": (d,), "log_amplitude":
(), "log_noise": (), "frequencies": (D/2, d)}``; the dtype follows them
(float32 unless the user turned on ``jax_enable_x64``; the library never
does).
"""

from __future__ import annotations

import math
from typing import Any

import lsqdiff


def init_params(dim: int, features: int = 1024, *, lengthscale: float = 1.0,
                amplitude: float = 1.0, noise: float = 0.3, seed: int = 0) -> dict:
    """Starting hyperparameters (logs of the positive ones) and ``N(0, I)`` frequencies.

    Examples
    --------
    >>> from lsqdiff.examples.gp_jax import init_params
    >>> p = init_params(3, features=8)
    >>> sorted(p), p["frequencies"].shape
    (['frequencies', 'log_amplitude', 'log_lengthscale', 'log_noise'], (4, 3))
    """
    import jax
    import jax.numpy as jnp

    for name, v in (("lengthscale", lengthscale), ("amplitude", amplitude), ("noise", noise)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be finite and positive, got {v!r}")
    if not isinstance(features, int) or features < 2 or features % 2:
        raise ValueError(f"features must be a positive even integer, got {features!r}")
    return {"log_lengthscale": jnp.full(dim, math.log(lengthscale)),
            "log_amplitude": jnp.asarray(math.log(amplitude)),
            "log_noise": jnp.asarray(math.log(noise)),
            "frequencies": jax.random.normal(jax.random.key(seed), (features // 2, dim))}


def _block(p: dict, Xb: Any) -> Any:
    import jax.numpy as jnp

    h = p["frequencies"].shape[0]
    Z = (Xb / jnp.exp(p["log_lengthscale"])) @ p["frequencies"].T
    return jnp.exp(p["log_amplitude"]) * math.sqrt(1.0 / h) * jnp.concatenate(
        [jnp.cos(Z), jnp.sin(Z)], axis=1)


def features(p: dict, X: Any, batch: int = 8192) -> lsqdiff.LinearOperator:
    """``Phi(X)`` as a matrix-free `lsqdiff.LinearOperator`, ``batch`` rows per product block.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from lsqdiff.examples.gp_jax import features, init_params
    >>> p = init_params(2, features=8)
    >>> Phi = features(p, jnp.zeros((5, 2)), batch=2)
    >>> Phi.shape, Phi.matvec(jnp.ones(8)).shape
    ((5, 8), (5,))
    """
    import jax.numpy as jnp

    n, D = X.shape[0], 2 * p["frequencies"].shape[0]
    starts = range(0, n, batch)

    def matvec(v: Any) -> Any:
        return jnp.concatenate([_block(p, X[i:i + batch]) @ v for i in starts])

    return lsqdiff.LinearOperator((n, D), matvec, dtype=X.dtype)


def predictive_loss(p: dict, X_train: Any, y_train: Any, X_val: Any, y_val: Any, *,
                    loss: str = "nlpd", atol: float = 1e-6, btol: float = 1e-6,
                    maxiter: int | None = None, batch: int = 8192) -> tuple[Any, Any]:
    """Validation NLPD (plug-in variance ``sigma^2``) or MSE of the posterior mean.

    Returns ``(value, itn)``: the objective and the LSMR iterations of the solve.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from lsqdiff.examples.gp_jax import init_params, predictive_loss
    >>> X = jax.random.normal(jax.random.key(1), (80, 2))
    >>> y = jnp.sin(2 * X[:, 0])
    >>> p = init_params(2, features=32)
    >>> step = jax.jit(jax.value_and_grad(
    ...     lambda p: predictive_loss(p, X[:60], y[:60], X[60:], y[60:])[0]))
    >>> value, grad = step(p)
    >>> grad["log_lengthscale"].shape, bool(jnp.isfinite(value))
    ((2,), True)
    """
    import jax.numpy as jnp

    if loss not in ("nlpd", "mse"):
        raise ValueError(f"loss must be 'nlpd' or 'mse', got {loss!r}")
    sigma = jnp.exp(p["log_noise"])
    w, info = lsqdiff.lsmr(features(p, X_train, batch), y_train, damp=sigma, atol=atol,
                           btol=btol, maxiter=maxiter)
    mean = features(p, X_val, batch).matvec(w)
    sq = (mean - y_val) ** 2
    if loss == "mse":
        return jnp.mean(sq), info.itn
    var = sigma ** 2
    return 0.5 * jnp.mean(jnp.log(2 * math.pi * var) + sq / var), info.itn


def fit(p: dict, X_train: Any, y_train: Any, X_val: Any, y_val: Any, *, steps: int = 100,
        lr: float = 0.05, loss: str = "nlpd", atol: float = 1e-6, btol: float = 1e-6,
        batch: int = 8192) -> tuple[dict, list[float]]:
    """Tune ``p`` with optax Adam on the predictive objective; one compiled step.

    Returns the tuned parameters and the objective before each step.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from lsqdiff.examples.gp_jax import fit, init_params
    >>> X = jax.random.normal(jax.random.key(0), (120, 1))
    >>> y = jnp.sin(3 * X[:, 0])
    >>> p, hist = fit(init_params(1, features=32, lengthscale=3.0),
    ...               X[:80], y[:80], X[80:], y[80:], steps=40, lr=0.1)
    >>> bool(hist[-1] < hist[0])
    True
    """
    import jax
    import optax

    opt = optax.adam(lr)

    def objective(p: dict) -> tuple[Any, Any]:
        return predictive_loss(p, X_train, y_train, X_val, y_val, loss=loss, atol=atol,
                               btol=btol, batch=batch)

    @jax.jit
    def step(p: dict, state: Any) -> tuple[dict, Any, Any]:
        (value, _), grad = jax.value_and_grad(objective, has_aux=True)(p)
        updates, state = opt.update(grad, state, p)
        return optax.apply_updates(p, updates), state, value

    state = opt.init(p)
    history = []
    for _ in range(steps):
        p, state, value = step(p, state)
        history.append(float(value))
    return p, history
