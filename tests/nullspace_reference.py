"""Dense references for the null-space tests (test_nullspace*.py).

``Torch`` and ``Jax`` give the same small interface over both frameworks:
parameters built from NumPy, the flat float64 NumPy view of a structure (in
the order the Jacobian's columns use), the dense Jacobian by the framework's
own ``jacobian``, and a nonlinear test constraint written once against the
array namespace.
"""

from __future__ import annotations

import array_api_compat as aac
import numpy as np
import pytest


class Torch:
    name = "torch"

    def __init__(self):
        self.torch = pytest.importorskip("torch")

    def tree(self, arrays: dict[str, np.ndarray], requires_grad: bool = False):
        return {k: self.torch.tensor(v, requires_grad=requires_grad) for k, v in arrays.items()}

    def leaves(self, tree) -> list:
        if isinstance(tree, dict):
            return list(tree.values())
        return list(tree) if isinstance(tree, (list, tuple)) else [tree]

    def flat(self, tree) -> np.ndarray:
        return np.concatenate([t.detach().double().reshape(-1).numpy() for t in self.leaves(tree)])

    def evaluate(self, constraint, params) -> np.ndarray:
        return constraint(params).detach().double().numpy()

    def jacobian(self, constraint, params) -> np.ndarray:
        keys = list(params)

        def f(*leaves):
            return constraint(dict(zip(keys, leaves)))

        parts = self.torch.autograd.functional.jacobian(
            f, tuple(t.detach() for t in params.values()))
        return np.hstack([p.double().reshape(p.shape[0], -1).numpy() for p in parts])

    def axpy(self, params, eta: float, d):
        """``params - eta * d``, leafwise."""
        return {k: (params[k] - eta * d[k]).detach() for k in params}


class Jax:
    name = "jax"

    def __init__(self):
        self.jax = pytest.importorskip("jax")
        self.jnp = self.jax.numpy

    def tree(self, arrays: dict[str, np.ndarray], requires_grad: bool = False):
        return {k: self.jnp.asarray(v) for k, v in arrays.items()}

    def leaves(self, tree) -> list:
        return self.jax.tree_util.tree_leaves(tree)

    def flat(self, tree) -> np.ndarray:
        return np.concatenate([np.asarray(t, dtype=np.float64).reshape(-1)
                               for t in self.leaves(tree)])

    def evaluate(self, constraint, params) -> np.ndarray:
        return np.asarray(constraint(params), dtype=np.float64)

    def jacobian(self, constraint, params) -> np.ndarray:
        parts = self.leaves(self.jax.jacobian(constraint)(params))
        return np.hstack([np.asarray(p, dtype=np.float64).reshape(p.shape[0], -1) for p in parts])

    def axpy(self, params, eta: float, d):
        return self.jax.tree_util.tree_map(lambda p, g: p - eta * g, params, d)


FRAMEWORKS = {"torch": Torch, "jax": Jax}


def nonlinear_constraint(k: int, sizes: dict[str, int], seed: int = 0, duplicate: bool = False):
    """``c(p) = sum_leaf A_leaf tanh(p_leaf) + 0.5 B_leaf p_leaf^2 - t``, length ``k``.

    With ``duplicate``, the last row repeats the first with a different offset:
    ``J`` has rank ``k - 1`` and ``J x = rhs`` has no exact solution.
    Constants are NumPy; the function converts them to the argument's framework.
    """
    rng = np.random.default_rng(seed)
    mats = {name: (rng.standard_normal((k, n)), rng.standard_normal((k, n)))
            for name, n in sizes.items()}
    if duplicate:
        for A, B in mats.values():
            A[-1], B[-1] = A[0], B[0]
    t = rng.standard_normal(k)
    if duplicate:
        t[-1] = t[0] + 1.0

    def constraint(p):
        leaves = list(p.values())
        xp = aac.array_namespace(leaves[0])
        total = None
        for name, (A, B) in mats.items():
            x = xp.astype(xp.reshape(p[name], (-1,)), xp.float64)
            term = xp.asarray(A) @ xp.tanh(x) + 0.5 * (xp.asarray(B) @ (x * x))
            total = term if total is None else total + term
        return total - xp.asarray(t)

    return constraint


def reference(J: np.ndarray, h: np.ndarray, c: np.ndarray, gamma: float, damp: float = 0.0):
    """``h - J^+ (J h - gamma c)`` in float64 (the damped pseudo-inverse for ``damp > 0``)."""
    rhs = J @ h - gamma * c
    if damp > 0:
        x = np.linalg.solve(J.T @ J + damp**2 * np.eye(J.shape[1]), J.T @ rhs)
    else:
        x = np.linalg.pinv(J, rcond=1e-10) @ rhs
    return h - x


def null_projector(J: np.ndarray) -> np.ndarray:
    """``I - J^+ J``: the orthogonal projector onto the null space of ``J``."""
    return np.eye(J.shape[1]) - np.linalg.pinv(J, rcond=1e-10) @ J
