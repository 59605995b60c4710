"""Structure inputs of `esnet dft`: CIF, POSCAR, pymatgen JSON, or a prototype spec JSON.

Prototype spec (JSON): {"structures": [{"prototype": "rocksalt", "species": ["Na", "Cl"]},
{"prototype": "fcc", "species": ["Cu"], "a": 3.61}], "enumerate": {"prototypes": ["rocksalt",
"cscl"], "species": [["Na", "K"], ["Cl", "F"]]}}. `enumerate` takes the product of one element
per species slot; `a` (Å, conventional) is optional, else the radii rule of `prototypes.py`.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from pymatgen.core import Structure

from esnet_tf.dft.prototypes import PROTOTYPES, prototype_structure


class StructureInputError(ValueError):
    """A structure file or spec cannot be read; the message names it."""


def _from_spec(path: Path, spec: dict) -> list[tuple[str, Structure, str]]:
    from pymatgen.core import Element

    out = []
    items = spec.get("structures", [])
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise StructureInputError(f"{path}: 'structures' must be a list of {{\"prototype\": ..., \"species\": [...]}}")
    items = list(items)
    enum = spec.get("enumerate")
    if enum:
        if not isinstance(enum, dict) or not isinstance(enum.get("prototypes"), list) \
                or not isinstance(enum.get("species"), list) or not all(isinstance(x, list) for x in enum["species"]):
            raise StructureInputError(f"{path}: 'enumerate' needs 'prototypes' (a list of names) and 'species' "
                                      "(one list of elements per slot), e.g. {\"prototypes\": [\"rocksalt\"], "
                                      "\"species\": [[\"Na\", \"K\"], [\"Cl\"]]}")
        for proto in enum["prototypes"]:
            for combo in itertools.product(*enum["species"]):
                items.append({"prototype": proto, "species": list(combo)})
    if not items:
        raise StructureInputError(f"{path}: spec has no 'structures' or 'enumerate' entries")
    for i, item in enumerate(items):
        proto = item.get("prototype")
        if proto not in PROTOTYPES:
            raise StructureInputError(f"{path}: entry {i}: unknown prototype {proto!r}; known: {sorted(PROTOTYPES)}")
        species = item.get("species")
        if not isinstance(species, list) or not species:
            raise StructureInputError(f"{path}: entry {i} ({proto}): needs 'species', a list of element symbols "
                                      f"(one per slot of {proto})")
        bad = [x for x in species if not isinstance(x, str) or not Element.is_valid_symbol(x)]
        if bad:
            raise StructureInputError(f"{path}: entry {i} ({proto}): {bad} not element symbols")
        a = item.get("a")
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not a > 0):
            raise StructureInputError(f"{path}: entry {i} ({proto}): 'a' is {a!r}; give the conventional "
                                      "lattice constant in Å (a positive number) or leave it out")
        try:
            s = prototype_structure(proto, list(species), a)
        except (ValueError, KeyError) as exc:
            raise StructureInputError(f"{path}: entry {i}: {exc}") from None
        out.append((f"{s.composition.reduced_formula}_{proto}", s, proto))
    return out


def read_structures(path: str | Path) -> list[tuple[str, Structure, str]]:
    """(id, structure, prototype) for every structure in a CIF, POSCAR, pymatgen JSON or spec JSON."""
    path = Path(path)
    if not path.exists():
        raise StructureInputError(f"{path}: no such file")
    if path.is_dir():
        raise StructureInputError(f"{path}: a directory; give structure files (CIF, POSCAR, pymatgen JSON or "
                                  "a prototype spec JSON)")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise StructureInputError(f"{path}: invalid JSON ({exc})") from None
        if isinstance(data, dict) and ("structures" in data or "enumerate" in data):
            return _from_spec(path, data)
        docs = data if isinstance(data, list) else [data]
        from esnet_tf.safe_json import UnsafeJSONError, check_modules

        try:
            check_modules(docs, path)  # pymatgen's MontyDecoder would import a module named in @module
        except UnsafeJSONError as exc:
            raise StructureInputError(str(exc)) from None
        try:
            return [(f"{path.stem}-{i}" if len(docs) > 1 else path.stem, Structure.from_dict(d), "")
                    for i, d in enumerate(docs)]
        except Exception as exc:
            raise StructureInputError(f"{path}: not a pymatgen Structure JSON ({type(exc).__name__}: {exc})") from None
    try:
        s = Structure.from_file(str(path))
    except Exception as exc:
        raise StructureInputError(f"{path}: cannot read a structure (CIF, POSCAR, pymatgen JSON or "
                                  f"prototype spec expected): {type(exc).__name__}: {exc}") from None
    return [(path.stem if path.stem not in ("POSCAR", "CONTCAR") else path.parent.name or path.stem, s, "")]
