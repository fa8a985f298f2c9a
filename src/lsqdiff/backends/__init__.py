"""Per-framework adapters, loaded only when an array of that framework arrives.

``import lsqdiff`` imports no framework: `backend_for` looks at the
namespace that ``array_api_compat`` found for the user's arrays and imports the
matching adapter module on first use (cached per namespace).
"""

from __future__ import annotations

import importlib
from typing import Any

import array_api_compat as aac

from ._base import Backend

# (predicate on the namespace, adapter module, class name); first match wins.
_ADAPTERS = (
    (aac.is_numpy_namespace, "numpy", "NumpyBackend"),
    (aac.is_torch_namespace, "torch", "TorchBackend"),
    (aac.is_jax_namespace, "jax", "JaxBackend"),
    (aac.is_cupy_namespace, "cupy", "CupyBackend"),
    (aac.is_array_api_strict_namespace, "strict", "StrictBackend"),
    (aac.is_dask_namespace, "dask", "DaskBackend"),
)

_cache: dict[int, Backend] = {}


def backend_for(xp: Any) -> Backend:
    """The adapter for array namespace ``xp`` (the generic one if none matches)."""
    key = id(xp)
    if key not in _cache:
        for matches, module, cls in _ADAPTERS:
            if matches(xp):
                mod = importlib.import_module(f"{__name__}.{module}")
                _cache[key] = getattr(mod, cls)(xp)
                break
        else:
            _cache[key] = Backend(xp)
    return _cache[key]


__all__ = ["Backend", "backend_for"]
