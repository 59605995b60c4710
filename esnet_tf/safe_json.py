"""Untrusted JSON decoded without importing the modules it names.

pymatgen's `from_dict` methods hand nested `{"@module": ..., "@class": ...}` dicts (for example
site properties of a Structure) to monty's `MontyDecoder`, which imports whatever module is named.
Inputs from users (Materials Project documents, reference entries, structure files) are checked
here first: every `@module` must belong to an allowlisted pymatgen package, otherwise the input is
refused with one line naming the file and the module.

Nesting is capped too: `loads` / `load` turn JSON nested deeper than Python's decoder can follow
(a RecursionError) into one line, and `check_modules` refuses anything nested deeper than
`MAX_DEPTH` levels, before recursive decoders (pymatgen's `from_dict`) see it.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from esnet_tf.errors import UserError

#: Packages whose classes a user JSON may name (the data classes esnet-tf reads).
ALLOWED_MODULES: tuple[str, ...] = (
    "pymatgen.core", "pymatgen.electronic_structure", "pymatgen.entries", "pymatgen.analysis.phase_diagram",
    "pymatgen.io.vasp", "pymatgen.util", "numpy", "datetime",  # MP entries carry datetime stamps
)


#: deepest nesting (objects and arrays) accepted in a user JSON; Materials Project documents and
#: pymatgen entries nest fewer than 15 levels
MAX_DEPTH = 100


class UnsafeJSONError(UserError, ValueError):
    """A JSON input names a module outside the allowlist, or nests deeper than `MAX_DEPTH`."""


def _too_deep(source: str | Path) -> UnsafeJSONError:
    return UnsafeJSONError(f"{source}: refusing to decode: the JSON nests deeper than "
                           f"{MAX_DEPTH} levels of objects and arrays (real documents nest fewer than 15); "
                           "pass the document itself")


def loads(text: str | bytes, source: str | Path) -> Any:
    """`json.loads` whose too-deep input raises `UnsafeJSONError` (one line naming `source`), not
    RecursionError; malformed JSON still raises `json.JSONDecodeError`. The depth is checked too."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise _too_deep(source) from None
    check_depth(obj, source)
    return obj


def load(fh: IO, source: str | Path) -> Any:
    """`loads` of an open file's content."""
    return loads(fh.read(), source)


def check_depth(obj: Any, source: str | Path, max_depth: int = MAX_DEPTH) -> Any:
    """Return `obj` when it nests at most `max_depth` levels of dicts and lists; else UnsafeJSONError."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > max_depth:
                raise _too_deep(source)
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node)
                         if isinstance(v, (dict, list)))
    return obj


def _modules(obj: Any, where: str = "$") -> Iterator[tuple[str, str]]:
    stack = [(obj, where, 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, (dict, list)) and depth > MAX_DEPTH:
            yield "", path  # too deep: refused by check_modules
            continue
        if isinstance(node, dict):
            mod = node.get("@module")
            if mod is not None:
                yield str(mod), path
            stack.extend((v, f"{path}.{k}", depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node))


def check_modules(obj: Any, source: str | Path, allowed: Sequence[str] = ALLOWED_MODULES) -> Any:
    """Return `obj` unchanged when every `@module` it names is allowlisted and it nests at most
    `MAX_DEPTH` levels; else UnsafeJSONError."""
    for mod, path in _modules(obj):
        if mod == "":
            raise _too_deep(source)
        if not any(mod == a or mod.startswith(a + ".") for a in allowed):
            raise UnsafeJSONError(f"{source}: refusing to decode: {path} names module {mod!r}, which is not a "
                                  f"pymatgen data class (allowed: {', '.join(allowed)}); remove that field")
    return obj
