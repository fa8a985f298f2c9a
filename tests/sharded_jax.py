"""Sharded JAX solves on 4 forced host devices; run by `test_sharded.py` in a
subprocess of its own, since the device count is fixed when JAX starts.

Prints one JSON object: for each case, the largest difference from the
float64 reference (NumPy's, which the unsharded solve matches:
`test_values.py`), whether the compiled (SPMD-partitioned, so per-device)
program holds an array of A's full shape anywhere, the shardings of the
results and the bytes of arguments per device.
"""

from __future__ import annotations

import json
import os
import time

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 "
                           + os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import lsqdiff  # noqa: E402

jax.config.update("jax_enable_x64", True)

M, N = 256, 24
TOL = dict(atol=1e-10, btol=1e-10)


def dense(A, b):
    return lsqdiff.lsmr(A, b, **TOL)


def operator(A, b):
    # A LinearOperator closing over the sharded array; rmatvec derived by JAX.
    return lsqdiff.lsmr(lsqdiff.LinearOperator(A.shape, lambda v: A @ v), b, **TOL)


def loss(A, b):
    return jnp.sum(lsqdiff.lsmr(A, b, damp=0.1, **TOL)[0] ** 2)


def holds_full_A(compiled) -> bool:
    """Whether any array in the per-device program has A's (or A^T's) full shape."""
    text = compiled.as_text()
    return any(f"f64[{s}]" in text for s in (f"{M},{N}", f"{N},{M}"))


def spec(a) -> str:
    return str(a.sharding.spec)


def references(A, b, damp=0.1):
    """NumPy's least-squares solution, and the gradient of ``loss`` in closed form
    (`DESIGN.md` section 2: g = M^-1 x_bar, b_bar = A g, A_bar = r g^T - b_bar x^T)."""
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    M = A.T @ A + damp**2 * np.eye(A.shape[1])
    xd = np.linalg.solve(M, A.T @ b)
    g = np.linalg.solve(M, 2 * xd)
    b_bar = A @ g
    return x, (np.outer(b - A @ xd, g) - np.outer(b_bar, xd), b_bar)


def main() -> None:
    assert len(jax.devices()) == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("d",))
    rng = np.random.default_rng(0)
    A = rng.standard_normal((M, N))
    b = rng.standard_normal(M)
    x_ref, (gA_ref, gb_ref) = references(A, b)
    layouts = {"rows": (P("d", None), P("d")), "columns": (P(None, "d"), P())}
    cases = [("rows", "dense"), ("rows", "operator"), ("columns", "dense"),
             ("rows", "grad"), ("columns", "grad")]
    functions = {"dense": jax.jit(dense), "operator": jax.jit(operator),
                 "grad": jax.jit(jax.grad(loss, argnums=(0, 1)))}
    out = {}
    for layout, kind in cases:
        a_spec, b_spec = layouts[layout]
        As = jax.device_put(A, NamedSharding(mesh, a_spec))
        bs = jax.device_put(b, NamedSharding(mesh, b_spec))
        start = time.perf_counter()
        compiled = functions[kind].lower(As, bs).compile()
        r = out[f"{layout}/{kind}"] = dict(
            full_A=holds_full_A(compiled), A_spec=spec(As), A_bytes=A.nbytes,
            argument_bytes=compiled.memory_analysis().argument_size_in_bytes)
        if kind == "grad":
            gA, gb = compiled(As, bs)
            r.update(diff=max(float(np.max(np.abs(gA - gA_ref))),
                              float(np.max(np.abs(gb - gb_ref)))),
                     scale=float(np.max(np.abs(gA_ref))), gA_spec=spec(gA))
        else:
            x, info = compiled(As, bs)
            r.update(diff=float(np.max(np.abs(x - x_ref))), converged=bool(info.converged),
                     x_spec=spec(x))
        r["seconds"] = time.perf_counter() - start
    print(json.dumps(out))


if __name__ == "__main__":
    main()
