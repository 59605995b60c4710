"""Untrusted JSON decoded without importing the modules it names.

pymatgen's `from_dict` methods hand nested `{"@module": ..., "@class": ...}` dicts (for example
site properties of a Structure) to monty's `MontyDecoder`, which imports whatever module is named.
Inputs from users (Materials Project documents, reference entries, structure files) are checked
here first: every `@module` must belong to an allowlisted pymatgen package, otherwise the input is
refused with one line naming the file and the module.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from esnet_tf.errors import UserError

#: Packages whose classes a user JSON may name (the data classes esnet-tf reads).
ALLOWED_MODULES: tuple[str, ...] = (
    "pymatgen.core", "pymatgen.electronic_structure", "pymatgen.entries", "pymatgen.analysis.phase_diagram",
    "pymatgen.io.vasp", "pymatgen.util", "numpy", "datetime",  # MP entries carry datetime stamps
)


class UnsafeJSONError(UserError, ValueError):
    """A JSON input names a module outside the allowlist."""


def _modules(obj: Any, where: str = "$") -> Iterator[tuple[str, str]]:
    stack = [(obj, where)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            mod = node.get("@module")
            if mod is not None:
                yield str(mod), path
            stack.extend((v, f"{path}.{k}") for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))


def check_modules(obj: Any, source: str | Path, allowed: Sequence[str] = ALLOWED_MODULES) -> Any:
    """Return `obj` unchanged when every `@module` it names is allowlisted; else UnsafeJSONError."""
    for mod, path in _modules(obj):
        if not any(mod == a or mod.startswith(a + ".") for a in allowed):
            raise UnsafeJSONError(f"{source}: refusing to decode: {path} names module {mod!r}, which is not a "
                                  f"pymatgen data class (allowed: {', '.join(allowed)}); remove that field")
    return obj
