"""Annealed Langevin sampling and the sample scores of `lsqdiff.examples.score`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def annealed_langevin(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      sigmas: torch.Tensor, x0: torch.Tensor, *, steps: int, ratio: float,
                      generator: torch.Generator, denoise: bool = True) -> torch.Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019) from ``x0``.

    At each level ``sigma_i`` (decreasing), ``steps`` updates
    ``x <- x + a_i s(x, sigma_i) + sqrt(2 a_i) z`` with ``a_i = ratio * sigma_i^2``,
    then, with ``denoise``, one Tweedie step ``x <- x + sigma_L^2 s(x, sigma_L)``.
    The budget is ``len(sigmas) * steps (+ 1)`` score evaluations.

    Parameters
    ----------
    score : callable
        ``(x, sigma) -> s(x, sigma)`` for rows ``x`` (n, d), ``sigma`` (1, 1).
    sigmas : tensor
        The noise levels, largest first.
    x0 : tensor
        Starting points (n, d), usually ``sigma_1 * N(0, I)``. Not modified.
    steps : int
        Updates per level.
    ratio : float
        Step size over ``sigma_i^2`` (0 < ratio < 2; well below 1 for a small
        discretisation bias).
    generator : torch.Generator
        Source of the Langevin noise.
    denoise : bool, optional
        Finish with the Tweedie denoising step.

    Examples
    --------
    Sampling N(1, 0.5^2) from its noise-perturbed score:

    >>> import torch
    >>> from lsqdiff.examples._score_sampling import annealed_langevin
    >>> g = torch.Generator().manual_seed(0)
    >>> score = lambda x, s: -(x - 1.0) / (0.25 + s ** 2)
    >>> sigmas = torch.tensor([3.0, 1.0, 0.3, 0.1])
    >>> x = annealed_langevin(score, sigmas, 3.0 * torch.randn(4000, 1, generator=g),
    ...                      steps=50, ratio=0.5, generator=g)
    >>> round(float(x.mean()), 1), round(float(x.std()), 1)
    (1.0, 0.5)
    """
    if not 0 < ratio < 2:
        raise ValueError(f"ratio must lie in (0, 2), got {ratio!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    x = x0.clone()
    with torch.no_grad():
        for s in sigmas.tolist():
            sig = torch.full((1, 1), s, dtype=x.dtype)
            a = ratio * s ** 2
            for _ in range(steps):
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
                x = x + a * score(x, sig) + (2 * a) ** 0.5 * z
        if denoise:
            s = float(sigmas[-1])
            x = x + s ** 2 * score(x, torch.full((1, 1), s, dtype=x.dtype))
    return x


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, seed: int = 0,
                       projections: int = 500) -> float:
    """Sliced 2-Wasserstein distance between two samples (POT's
    ``ot.sliced_wasserstein_distance``, ``projections`` random directions).

    Examples
    --------
    >>> import numpy as np
    >>> from lsqdiff.examples._score_sampling import sliced_wasserstein
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(500, 2))
    >>> sliced_wasserstein(a, a) == 0.0, sliced_wasserstein(a, a + 1.0) > 0.5
    (True, True)
    """
    import ot

    return float(ot.sliced_wasserstein_distance(a, b, n_projections=projections, seed=seed))


def mmd2(a: np.ndarray, b: np.ndarray, reference: np.ndarray) -> float:
    """Unbiased squared MMD between samples ``a`` and ``b`` with a sum of three
    Gaussian kernels, bandwidths 0.5, 1 and 2 times the median distance within
    ``reference`` (fixed per data set, so that methods compare on one kernel).

    POT has no MMD; the squared distances come from its ``ot.dist``. The
    unbiased estimate can be slightly negative when ``a`` and ``b`` match.

    Examples
    --------
    >>> import numpy as np
    >>> from lsqdiff.examples._score_sampling import mmd2
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    >>> abs(mmd2(a, b, b)) < 0.01, mmd2(a, b + 2.0, b) > 0.1
    (True, True)
    """
    import ot

    ref = ot.dist(reference, reference)
    h2 = float(np.median(ref[np.triu_indices_from(ref, k=1)]))

    def k(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        d2 = ot.dist(p, q)
        return sum(np.exp(-d2 / (2 * f * f * h2)) for f in (0.5, 1.0, 2.0))

    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    n, m = a.shape[0], b.shape[0]
    return float((kaa.sum() - np.trace(kaa)) / (n * (n - 1))
                 + (kbb.sum() - np.trace(kbb)) / (m * (m - 1)) - 2 * kab.mean())
