"""Griffe extension for the docs build: read docstrings assigned at import time.

``lsqdiff.lsmr`` and ``lsqdiff.lsqr`` get their docstrings by assignment
(``lsmr.__doc__ = ...``), which static analysis cannot evaluate. For each
module whose source makes such an assignment, this imports that module alone
and gives its undocumented functions their runtime docstrings. Griffe's
``force_inspection`` would instead import every submodule: the framework
adapters (CuPy is rarely installed) and ``lsqdiff.__main__``, which runs the demo.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import griffe


class RuntimeDocstrings(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for module in _modules(pkg):
            path = module.filepath
            if not isinstance(path, Path) or ".__doc__ = " not in path.read_text():
                continue
            runtime = importlib.import_module(module.path)
            for member in module.members.values():
                if member.is_alias or not member.is_function or member.docstring is not None:
                    continue
                doc = inspect.getdoc(getattr(runtime, member.name, None))
                if doc:
                    member.docstring = griffe.Docstring(doc, parent=member)


def _modules(module: griffe.Module):
    yield module
    for sub in module.modules.values():
        if not sub.is_alias:
            yield from _modules(sub)
