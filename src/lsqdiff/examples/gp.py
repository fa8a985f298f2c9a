"""Gaussian-process hyperparameters tuned by predictive fit, through the solver (PyTorch).

A random-Fourier-feature (RFF) GP: ``f(x) = phi(x)^T w`` with ``w ~ N(0, I)``
and noise ``y = f(x) + N(0, sigma^2)``, where

    phi(x) = a sqrt(2/D) [cos(Omega (x / l)), sin(Omega (x / l))]

(``D/2`` frequencies ``Omega``, drawn ``N(0, I)`` and then trained, ARD
lengthscales ``l``, one per input dimension, amplitude ``a``) approximates the
ARD RBF kernel ``a^2 exp(-sum_i (x_i - x'_i)^2 / (2 l_i^2))``. The posterior
mean of the weights is one damped least-squares solve,

    w = argmin ||Phi w - y||^2 + sigma^2 ||w||^2,

which `lsqdiff.lsmr` does matrix-free with ``damp = sigma``: ``Phi`` is a
`lsqdiff.LinearOperator` that builds its features batch by batch, so memory
stays at one batch of rows. Because the solve is differentiable in ``damp``
and in the tensors the operator depends on, a held-out objective of the
posterior mean is minimised directly (``objective="predictive"``) instead of
the marginal likelihood (``objective="marginal"``, closed form through the
``D x D`` Cholesky factor of ``Phi^T Phi + sigma^2 I``).

The predictive variance used by the NLPD is the noise variance ``sigma^2``
(the plug-in variance). The full RFF posterior adds the leverage term
``sigma^2 phi^T (Phi^T Phi + sigma^2 I)^{-1} phi``, whose mean over the
training rows is the effective number of parameters over ``n``, at most
``D / n``: under 1% of ``sigma^2`` on diamonds and flights in the comparison
(``python -m lsqdiff.examples.gp_compare``), up to 24% on diabetes; it would
cost a ``D x D`` factorisation per step, which the matrix-free solve avoids.

Public surface: `RFFGP` (the model), `predictive_loss`, `marginal_nll`,
`fit` and `check_data`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import lsqdiff

OBJECTIVES = ("predictive", "marginal")
LOSSES = ("nlpd", "mse")


def check_data(X: Any, y: Any, name: str = "train") -> None:
    """Raise a clear error unless ``X`` (n, d) and ``y`` (n,) are a usable split.

    Parameters
    ----------
    X, y : torch.Tensor
        Inputs and targets of one split; ``name`` says which in the messages.
    name : str
        The split's name (``"train"``, ``"val"``, ...).

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples.gp import check_data
    >>> check_data(torch.ones(3, 2), torch.zeros(3))
    >>> check_data(torch.ones(3, 2), torch.zeros(4))
    Traceback (most recent call last):
    ...
    ValueError: X_train and y_train: mismatched lengths 3 and 4
    """
    import torch

    for arg, t, ndim in ((f"X_{name}", X, 2), (f"y_{name}", y, 1)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != ndim:
            raise ValueError(f"{arg} must be {ndim}-D, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{arg} must be a floating tensor, got dtype {t.dtype}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X_{name} and y_{name}: mismatched lengths {X.shape[0]} and "
                         f"{y.shape[0]}")
    if X.shape[0] == 0:
        raise ValueError(f"X_{name}: the {name} split is empty")
    for arg, t in ((f"X_{name}", X), (f"y_{name}", y)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{arg} holds non-finite values (NaN or Inf)")


def _positive(name: str, value: Any, size: int | None = None) -> Any:
    import torch

    t = torch.as_tensor(value, dtype=torch.float64).detach().clone()
    if size is not None and t.ndim == 0:
        t = t.expand(size).clone()
    if size is not None and tuple(t.shape) != (size,):
        raise ValueError(f"{name} must be a scalar or have shape ({size},), got "
                         f"{tuple(t.shape)}")
    if size is None and t.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(f"{name} must be finite and positive, got {value!r}")
    return t


class _FeatureBlock:
    """Products of one batch of rows of Phi (recomputed, never stored)."""

    @staticmethod
    def matvec(Xb: Any, v: Any, log_ls: Any, log_amp: Any, freqs: Any) -> Any:
        import torch

        h = freqs.shape[0]
        Z = (Xb / torch.exp(log_ls)) @ freqs.T
        scale = torch.exp(log_amp) * math.sqrt(1.0 / h)  # a sqrt(2/D), D = 2h
        return scale * (torch.cos(Z) @ v[:h] + torch.sin(Z) @ v[h:])

    @staticmethod
    def rmatvec(Xb: Any, u: Any, log_ls: Any, log_amp: Any, freqs: Any) -> Any:
        import torch

        h = freqs.shape[0]
        Z = (Xb / torch.exp(log_ls)) @ freqs.T
        scale = torch.exp(log_amp) * math.sqrt(1.0 / h)
        return scale * torch.cat([torch.cos(Z).T @ u, torch.sin(Z).T @ u])

    @staticmethod
    def dense(Xb: Any, _: Any, log_ls: Any, log_amp: Any, freqs: Any) -> Any:
        import torch

        h = freqs.shape[0]
        Z = (Xb / torch.exp(log_ls)) @ freqs.T
        return torch.exp(log_amp) * math.sqrt(1.0 / h) * torch.cat([torch.cos(Z), torch.sin(Z)],
                                                                   1)

    @staticmethod
    def gram(Xb: Any, yb: Any, log_ls: Any, log_amp: Any, freqs: Any) -> tuple[Any, Any]:
        F = _FeatureBlock.dense(Xb, None, log_ls, log_amp, freqs)
        return F.T @ F, F.T @ yb


def _feature_cache(X: Any, batch: int, log_ls: Any, log_amp: Any, freqs: Any) -> Any:
    """``Phi(X)`` as one (n, D) tensor, built ``batch`` rows at a time into place
    (no per-batch blocks held to concatenate); no graph."""
    import torch

    out = torch.empty((X.shape[0], 2 * freqs.shape[0]), dtype=X.dtype)
    with torch.no_grad():
        for i in range(0, X.shape[0], batch):
            out[i:i + batch] = _FeatureBlock.dense(X[i:i + batch], None, log_ls, log_amp, freqs)
    return out


@functools.lru_cache(maxsize=None)
def _products() -> Any:
    """``Phi v`` as a torch.autograd.Function: the forward reuses the cached
    features when there are any; the backward applies the derivative in closed
    form, batch by batch, on those cached features or else on each batch's
    features rebuilt once (checkpointing through autograd would evaluate them
    three times), and computes only the gradients that are wanted."""
    import torch
    from torch.autograd.function import once_differentiable

    class Products(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, X: Any, v: Any, cached: Any, batch: int, log_ls: Any,
                    log_amp: Any, freqs: Any) -> Any:
            if cached is not None:
                out = cached @ v
            else:
                out = torch.cat([_FeatureBlock.matvec(X[i:i + batch], v, log_ls, log_amp, freqs)
                                 for i in range(0, X.shape[0], batch)])
            ctx.save_for_backward(X, v, out, cached, log_ls, log_amp, freqs)
            ctx.batch = batch
            return out

        @staticmethod
        @once_differentiable
        def backward(ctx: Any, g: Any) -> tuple[Any, ...]:
            X, v, out, cached, log_ls, log_amp, freqs = ctx.saved_tensors
            _, need_v, _, _, need_ls, need_amp, need_freqs = ctx.needs_input_grad
            h = freqs.shape[0]
            col = (lambda t: t[:, None]) if v.ndim == 1 else (lambda t: t)
            v1, v2, G = col(v[:h]), col(v[h:]), col(g)
            inv_ls = torch.exp(-log_ls)
            k, d = v1.shape[1], X.shape[1]
            dv = torch.zeros((2 * h, k), dtype=v.dtype) if need_v else None
            # With Z = (X / l) Omega^T and dZ = d(phi v)/dZ = C o (G v2^T) - S o (G v1^T)
            # (scale included; cos' = -sin, sin' = cos), the frequencies' gradient is
            # dZ^T (X / l) and the log-lengthscales' -sum_k Omega_kj (dZ^T (X / l))_kj.
            # dZ^T (X / l) is summed as sum_j diag(v2_j) C^T (G_j o X / l) - diag(v1_j)
            # S^T (G_j o X / l): one product [G_1 o X/l, ...]^T Phi per batch, no n x D/2
            # temporaries.
            want_dZ = need_ls or need_freqs
            P = torch.zeros((k * d, 2 * h), dtype=v.dtype) if want_dZ else None
            for i in range(0, X.shape[0], ctx.batch):
                Gb = G[i:i + ctx.batch]
                F = (cached[i:i + ctx.batch] if cached is not None else
                     _FeatureBlock.dense(X[i:i + ctx.batch], None, log_ls, log_amp, freqs))
                if need_v:
                    dv += (Gb.T @ F).T  # faster than F.T @ Gb for a block Gb
                if want_dZ:
                    Xs = X[i:i + ctx.batch] * inv_ls
                    P += (Gb[:, :, None] * Xs[:, None, :]).reshape(-1, k * d).T @ F
            dfreqs = dlog_ls = None
            if want_dZ:
                P = P.reshape(k, d, 2 * h)
                dfreqs = (torch.einsum("hj,jdh->hd", v2, P[:, :, :h])
                          - torch.einsum("hj,jdh->hd", v1, P[:, :, h:]))
                dlog_ls = -(freqs * dfreqs).sum(0) if need_ls else None
            # phi is linear in the amplitude a: d(phi v)/d log a = phi v
            dlog_amp = (g * out).sum() if need_amp else None
            return (None, None if dv is None else dv.reshape(v.shape), None, None, dlog_ls,
                    dlog_amp, dfreqs if need_freqs else None)

    return Products


class RFFGP:
    """A random-Fourier-feature GP with ARD lengthscales (PyTorch).

    The hyperparameters are leaf tensors that require grad, stored as logs
    (``log_lengthscale``, ``log_amplitude``, ``log_noise``) so that any
    gradient step keeps them positive, plus the ``frequencies`` (D/2, d).

    Parameters
    ----------
    dim : int
        Input dimension ``d``.
    features : int
        ``D``, the number of features (even: a cosine and a sine per frequency).
    lengthscale : float or sequence of float
        Initial ARD lengthscales (one, or one per dimension); positive.
    amplitude, noise : float
        Initial amplitude ``a`` and noise standard deviation ``sigma``; positive.
    seed : int
        Seeds the initial frequencies.
    dtype : torch.dtype
        Of the parameters; the data must match it.
    batch : int
        Rows per feature batch in the products (memory: ``batch x D``).
    train_frequencies : bool
        Whether the frequencies are tuned (in `parameters`) or stay at their
        random draw. ``D/2 x d`` of them can overfit a small validation split.
    cache_bytes : int
        Features of one operator (the training rows of a solve, or the rows
        of a differentiated `predict`) that take at most this many bytes are
        built once (batch by batch, into one tensor) and reused by each LSMR
        iteration and by the gradient; larger ones are rebuilt batch by batch
        in every product and in the gradient (fully matrix-free, memory: one
        batch). 0 never caches.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples.gp import RFFGP
    >>> gp = RFFGP(2, features=64, lengthscale=[1.0, 2.0], noise=0.1)
    >>> X = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> y = torch.sin(X[:, 0])
    >>> w, info = gp.posterior_weights(X, y)
    >>> w.shape, bool(info.converged), gp.features(X).shape
    (torch.Size([64]), True, (50, 64))
    """

    def __init__(self, dim: int, features: int = 1024, *, lengthscale: Any = 1.0,
                 amplitude: float = 1.0, noise: float = 0.3, seed: int = 0,
                 dtype: Any = None, batch: int = 8192, train_frequencies: bool = True,
                 cache_bytes: int = 2**31):
        import torch

        dtype = torch.float64 if dtype is None else dtype
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(features, int) or features < 2 or features % 2:
            raise ValueError(f"features must be a positive even integer, got {features!r}")
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        if not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be a non-negative integer, got {cache_bytes!r}")
        self.cache_bytes = cache_bytes
        ls = _positive("lengthscale", lengthscale, dim)
        amp = _positive("amplitude", amplitude)
        sigma = _positive("noise", noise)
        g = torch.Generator().manual_seed(seed)
        self.dim, self.num_features, self.batch, self.dtype = dim, features, batch, dtype
        self.log_lengthscale = torch.log(ls).to(dtype).requires_grad_()
        self.log_amplitude = torch.log(amp).to(dtype).requires_grad_()
        self.log_noise = torch.log(sigma).to(dtype).requires_grad_()
        self.frequencies = torch.randn(features // 2, dim, generator=g,
                                       dtype=torch.float64).to(dtype)
        self.train_frequencies = bool(train_frequencies)
        self.frequencies.requires_grad_(self.train_frequencies)

    # -- hyperparameters -------------------------------------------------
    @property
    def kernel_params(self) -> list[Any]:
        """The tensors the features depend on (all but the noise)."""
        return [self.log_lengthscale, self.log_amplitude, self.frequencies]

    def parameters(self) -> list[Any]:
        """All trainable tensors: the kernel's (the frequencies only if
        ``train_frequencies``) and ``log_noise``."""
        return [t for t in (*self.kernel_params, self.log_noise) if t.requires_grad]

    @property
    def lengthscale(self) -> Any:
        return self.log_lengthscale.exp()

    @property
    def amplitude(self) -> Any:
        return self.log_amplitude.exp()

    @property
    def noise(self) -> Any:
        return self.log_noise.exp()

    # -- features ----------------------------------------------------------
    def _check_inputs(self, X: Any, arg: str = "X") -> None:
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise ValueError(f"{arg} must have shape (n, {self.dim}), got {tuple(X.shape)}")
        if X.dtype != self.dtype:
            raise TypeError(f"{arg} has dtype {X.dtype}; the model's is {self.dtype}")

    def _batched(self, fn: Callable, X: Any, arg: Any, rows_out: bool) -> Any:
        """Apply a `_FeatureBlock` product batch by batch. When a graph is being
        built, each batch is checkpointed: its features are recomputed in the
        backward pass instead of being kept (memory: one batch, not n x D)."""
        import torch
        from torch.utils.checkpoint import checkpoint

        params = self.kernel_params
        grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (arg, *params) if isinstance(t, torch.Tensor))
        parts = []
        for i in range(0, X.shape[0], self.batch):
            Xb = X[i:i + self.batch]
            a = arg if rows_out or arg is None else arg[i:i + self.batch]
            if grad:
                parts.append(checkpoint(fn, Xb, a, *params, use_reentrant=False))
            else:
                parts.append(fn(Xb, a, *params))
        return parts

    def features(self, X: Any) -> lsqdiff.LinearOperator:
        """``Phi(X)`` as a matrix-free `lsqdiff.LinearOperator` of shape (n, D).

        Its products build the features ``batch`` rows at a time (or once per
        operator, see ``cache_bytes``); ``params`` lists the kernel's tensors,
        so a solve with it is differentiable in them.

        Examples
        --------
        >>> import torch
        >>> from lsqdiff.examples.gp import RFFGP
        >>> gp = RFFGP(3, features=8)
        >>> X = torch.zeros(5, 3, dtype=torch.float64)
        >>> Phi = gp.features(X)
        >>> v = torch.ones(8, dtype=torch.float64)
        >>> torch.allclose(Phi.matvec(v), gp.dense_features(X) @ v)
        True
        """
        import torch

        self._check_inputs(X)
        cached = self._cache(X)

        def graph(t: Any) -> bool:  # the gradient's products: through the parameters
            return torch.is_grad_enabled() and any(
                p.requires_grad for p in (t, *self.kernel_params))

        def matvec(v: Any) -> Any:
            if not graph(v):
                if cached is not None:
                    return cached @ v
                return torch.cat(self._batched(_FeatureBlock.matvec, X, v, True))
            return _products().apply(X, v, cached, self.batch, *self.kernel_params)

        def rmatvec(u: Any) -> Any:
            if cached is not None and not graph(u):
                return cached.T @ u
            return sum(self._batched(_FeatureBlock.rmatvec, X, u, False))

        return lsqdiff.LinearOperator((X.shape[0], self.num_features), matvec, rmatvec,
                                      matmat=matvec, rmatmat=rmatvec, params=self.kernel_params)

    def _cache(self, X: Any) -> Any:
        """``Phi(X)`` as a tensor, no graph, when it fits in ``cache_bytes``; else None."""
        if X.shape[0] * self.num_features * X.element_size() > self.cache_bytes:
            return None
        return _feature_cache(X, self.batch, *[t.detach() for t in self.kernel_params])

    def dense_features(self, X: Any) -> Any:
        """``Phi(X)`` as an explicit (n, D) tensor (for small data and references).

        Examples
        --------
        >>> import torch
        >>> from lsqdiff.examples.gp import RFFGP
        >>> gp = RFFGP(1, features=4, amplitude=2.0)
        >>> F = gp.dense_features(torch.zeros(1, 1, dtype=torch.float64))
        >>> round(float((F ** 2).sum().detach()), 10)  # phi(x)^T phi(x) = a^2
        4.0
        """
        self._check_inputs(X)
        return _FeatureBlock.dense(X, None, *self.kernel_params)

    # -- posterior -----------------------------------------------------------
    def posterior_weights(self, X: Any, y: Any, *, atol: float = 1e-6, btol: float = 1e-6,
                          maxiter: int | None = None) -> tuple[Any, lsqdiff.SolveInfo]:
        """The posterior mean of the weights: one damped LSMR solve, ``damp = sigma``.

        Differentiable (PyTorch autograd) in every hyperparameter.

        Examples
        --------
        >>> import torch
        >>> from lsqdiff.examples.gp import RFFGP
        >>> gp = RFFGP(1, features=16, noise=0.5)
        >>> X = torch.linspace(-2, 2, 30, dtype=torch.float64)[:, None]
        >>> w, info = gp.posterior_weights(X, torch.sin(X[:, 0]), atol=1e-10, btol=1e-10)
        >>> F = gp.dense_features(X).detach()
        >>> ref = torch.linalg.solve(F.T @ F + 0.25 * torch.eye(16, dtype=F.dtype),
        ...                          F.T @ torch.sin(X[:, 0]))
        >>> bool(torch.allclose(w, ref, atol=1e-8))
        True
        """
        check_data(X, y)
        self._check_inputs(X, "X_train")
        return lsqdiff.lsmr(self.features(X), y, damp=self.noise, atol=atol, btol=btol,
                            maxiter=maxiter)

    def predict(self, X: Any, w: Any) -> tuple[Any, Any]:
        """Predictive mean ``Phi(X) w`` and the plug-in predictive variance ``sigma^2``.

        Examples
        --------
        >>> import torch
        >>> from lsqdiff.examples.gp import RFFGP
        >>> gp = RFFGP(2, features=8, noise=0.5)
        >>> mean, var = gp.predict(torch.zeros(3, 2, dtype=torch.float64),
        ...                        torch.zeros(8, dtype=torch.float64))
        >>> mean.tolist(), float(var)
        ([0.0, 0.0, 0.0], 0.25)
        """
        import torch

        self._check_inputs(X)
        if torch.is_grad_enabled():  # the features are kept for the backward if they fit
            return (_products().apply(X, w, self._cache(X), self.batch, *self.kernel_params),
                    self.noise ** 2)
        return torch.cat(self._batched(_FeatureBlock.matvec, X, w, True)), self.noise ** 2


def gaussian_nlpd(y: Any, mean: Any, var: Any) -> Any:
    """Mean negative log density of ``y`` under ``N(mean, var)``.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples.gp import gaussian_nlpd
    >>> round(float(gaussian_nlpd(torch.zeros(2), torch.zeros(2), torch.tensor(1.0))), 4)
    0.9189
    """
    import torch

    return 0.5 * torch.mean(torch.log(2 * math.pi * var) + (y - mean) ** 2 / var)


def predictive_loss(gp: RFFGP, X_train: Any, y_train: Any, X_val: Any, y_val: Any, *,
                    loss: str = "nlpd", atol: float = 1e-6, btol: float = 1e-6,
                    maxiter: int | None = None) -> tuple[Any, lsqdiff.SolveInfo]:
    """The held-out objective of the posterior mean, differentiable through the solve.

    ``loss="mse"``: mean squared validation error of ``Phi_val w``;
    ``loss="nlpd"``: mean Gaussian negative log predictive density with the
    plug-in variance ``sigma^2`` (see the module docstring).

    Returns
    -------
    value : torch.Tensor
        The objective (0-d), with a graph to every hyperparameter.
    info : lsqdiff.SolveInfo
        Of the posterior-mean solve.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples.gp import RFFGP, predictive_loss
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(80, 2, dtype=torch.float64, generator=g)
    >>> y = torch.sin(2 * X[:, 0])
    >>> gp = RFFGP(2, features=32)
    >>> value, info = predictive_loss(gp, X[:60], y[:60], X[60:], y[60:], loss="mse")
    >>> value.backward()
    >>> gp.log_lengthscale.grad.shape, gp.log_noise.grad.shape
    (torch.Size([2]), torch.Size([]))
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    check_data(X_train, y_train, "train")
    check_data(X_val, y_val, "val")
    gp._check_inputs(X_val, "X_val")
    w, info = gp.posterior_weights(X_train, y_train, atol=atol, btol=btol, maxiter=maxiter)
    mean, var = gp.predict(X_val, w)
    if loss == "mse":
        return ((mean - y_val) ** 2).mean(), info
    return gaussian_nlpd(y_val, mean, var), info


def marginal_nll(gp: RFFGP, X: Any, y: Any) -> Any:
    """Negative log marginal likelihood per point, ``-log N(y; 0, Phi Phi^T + sigma^2 I) / n``.

    Closed form by Woodbury through the Cholesky factor of the ``D x D``
    matrix ``Phi^T Phi + sigma^2 I`` (``Phi^T Phi`` accumulated batch by
    batch): ``O(n D^2)`` per evaluation.

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples.gp import RFFGP, marginal_nll
    >>> gp = RFFGP(1, features=8, noise=0.5)
    >>> X = torch.linspace(-1, 1, 20, dtype=torch.float64)[:, None]
    >>> y = torch.cos(X[:, 0])
    >>> F = gp.dense_features(X)
    >>> K = F @ F.T + 0.25 * torch.eye(20, dtype=F.dtype)
    >>> ref = -torch.distributions.MultivariateNormal(torch.zeros(20, dtype=F.dtype), K).log_prob(y)
    >>> bool(torch.isclose(marginal_nll(gp, X, y) * 20, ref))
    True
    """
    import torch

    check_data(X, y)
    gp._check_inputs(X, "X_train")
    n, D = X.shape[0], gp.num_features
    parts = gp._batched(lambda Xb, yb, *p: _FeatureBlock.gram(Xb, yb, *p), X, y, False)
    G = sum(g for g, _ in parts)
    c = sum(c for _, c in parts)
    s2 = gp.noise ** 2
    L = torch.linalg.cholesky(G + s2 * torch.eye(D, dtype=G.dtype))
    alpha = torch.linalg.solve_triangular(L, c[:, None], upper=False)[:, 0]
    quad = (y @ y - alpha @ alpha) / s2
    logdet = 2 * torch.log(torch.diagonal(L)).sum() + (n - D) * torch.log(s2)
    return 0.5 * (quad + logdet + n * math.log(2 * math.pi)) / n


def fit(gp: RFFGP, X_train: Any, y_train: Any, X_val: Any = None, y_val: Any = None, *,
        objective: str = "predictive", loss: str = "nlpd", steps: int = 100, lr: float = 0.05,
        atol: float = 1e-6, btol: float = 1e-6, maxiter: int | None = None,
        progress: bool = False, callback: Callable[[dict], None] | None = None) -> list[dict]:
    """Tune ``gp``'s hyperparameters in place with Adam.

    Parameters
    ----------
    gp : RFFGP
        The model; its tensors are updated in place.
    X_train, y_train : torch.Tensor
        The data the posterior is conditioned on.
    X_val, y_val : torch.Tensor, optional
        Held-out data of the predictive objective (required for it).
    objective : {"predictive", "marginal"}
        ``"predictive"``: `predictive_loss` with ``loss`` on the validation
        split, through the LSMR solve. ``"marginal"``: `marginal_nll` on the
        training split.
    loss : {"nlpd", "mse"}
        The predictive objective's loss.
    steps, lr : int, float
        Adam steps and learning rate (on the log-hyperparameters and frequencies).
    atol, btol, maxiter
        Of the LSMR solves (the forward and the backward's).
    progress : bool
        Show a tqdm bar with step, objective and LSMR iterations.
    callback : callable, optional
        Called after each step with the step's record.

    Returns
    -------
    list of dict
        Per step: ``step``, ``objective`` (before the step), ``itn`` (LSMR
        iterations of the posterior solve; 0 for the marginal objective) and
        ``seconds`` (tuning wall time so far, not counting ``callback``).

    Examples
    --------
    >>> import torch
    >>> from lsqdiff.examples.gp import RFFGP, fit
    >>> g = torch.Generator().manual_seed(0)
    >>> X = torch.randn(120, 1, dtype=torch.float64, generator=g)
    >>> y = torch.sin(3 * X[:, 0]) + 0.1 * torch.randn(120, dtype=torch.float64, generator=g)
    >>> gp = RFFGP(1, features=32, lengthscale=3.0)
    >>> hist = fit(gp, X[:80], y[:80], X[80:], y[80:], steps=40, lr=0.1)
    >>> hist[-1]["objective"] < hist[0]["objective"]
    True
    """
    import torch

    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    check_data(X_train, y_train, "train")
    gp._check_inputs(X_train, "X_train")
    if objective == "predictive":
        if X_val is None or y_val is None:
            raise ValueError("X_val and y_val are required for objective='predictive'")
        check_data(X_val, y_val, "val")
        gp._check_inputs(X_val, "X_val")

    def evaluate() -> tuple[Any, int]:
        if objective == "marginal":
            return marginal_nll(gp, X_train, y_train), 0
        value, info = predictive_loss(gp, X_train, y_train, X_val, y_val, loss=loss,
                                      atol=atol, btol=btol, maxiter=maxiter)
        return value, int(info.itn)

    opt = torch.optim.Adam(gp.parameters(), lr=lr)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"{objective}" + (f" ({loss})" if objective ==
                                                        "predictive" else ""), leave=False)
    history = []
    elapsed = 0.0
    for step in range(steps):
        start = time.perf_counter()
        opt.zero_grad()
        value, itn = evaluate()
        value.backward()
        opt.step()
        elapsed += time.perf_counter() - start
        record = {"step": step, "objective": float(value.detach()), "itn": itn,
                  "seconds": elapsed}
        history.append(record)
        if bar is not None:
            bar.set_postfix(objective=f"{record['objective']:.4f}", lsmr_itn=itn)
            bar.update()
        if callback is not None:
            callback(record)
    if bar is not None:
        bar.close()
    return history
