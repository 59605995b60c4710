"""Materials Project `CompleteDos` JSON documents (absolute energies with `efermi`).

Accepts a CompleteDos dict, or a list of task documents `{"task_id": ..., "data": CompleteDos}`
as the MP API returns them; `.json` or `.json.gz`. Where a task document holds the energy of the
calculation (`energy_per_atom`, or `output.energy_per_atom` as in emmet's TaskDoc; eV/atom), the
example carries it as the IS total energy. Parsed with json (never pickle) and
pymatgen's `CompleteDos.from_dict`, after `esnet_tf.safe_json.check_modules` refused any nested
`@module` outside pymatgen's data classes (pymatgen would import it through MontyDecoder). The file
is read through `esnet_tf.readers.limits` (special files refused; decoded whole, so at most an
eighth of the per-file limit $ESNET_MAX_INFLATED_BYTES may inflate).
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

from esnet_tf.isdos import DOSInputError, ProjectedDOS
from esnet_tf.readers.common import from_complete_dos


def read_complete_dos_json(path: str | Path) -> list[ProjectedDOS]:
    """Read every CompleteDos in the file; ids are the documents' task_id where given."""
    from pymatgen.electronic_structure.dos import CompleteDos

    from esnet_tf.readers.limits import check_json_size, read_bounded
    from esnet_tf.safe_json import UnsafeJSONError, check_modules, loads

    path = Path(path)
    try:
        text = check_json_size(read_bounded(path, 0.125), path)  # decoded whole: an eighth of the limit,
        doc = loads(text.decode("utf-8"), path)  # and about half of it once decoded
    except UnsafeJSONError as exc:
        raise DOSInputError(path, str(exc).split(": ", 1)[1], "pass a plain Materials Project CompleteDos document") \
            from None
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DOSInputError(path, f"not valid JSON ({type(exc).__name__}: {str(exc)[:100]})",
                            "pass a Materials Project CompleteDos document") from None
    try:
        check_modules(doc, path)
    except UnsafeJSONError as exc:
        raise DOSInputError(path, str(exc).split(": ", 1)[1],
                            "pass a plain Materials Project CompleteDos document") from None
    docs = doc if isinstance(doc, list) else [doc]
    out = []
    for i, d in enumerate(docs):
        task_id, energy = None, None
        if isinstance(d, dict) and "data" in d and isinstance(d["data"], dict):
            energy = _task_energy_per_atom(d, path, i)
            task_id, d = d.get("task_id"), d["data"]
        if not isinstance(d, dict) or not {"energies", "densities", "efermi", "structure"} <= set(d):
            raise DOSInputError(path, f"document {i} is not a CompleteDos (needs energies, densities, "
                                "efermi, structure, pdos)", "download the DOS with MPRester.get_dos_by_material_id")
        try:
            cd = CompleteDos.from_dict(d)
        except Exception as exc:
            raise DOSInputError(path, f"document {i}: cannot build CompleteDos ({type(exc).__name__}: "
                                f"{str(exc)[:100]})", "the document is incomplete") from None
        dos = from_complete_dos(cd, path, code="VASP (Materials Project)")
        dos.doc_id = str(task_id) if task_id is not None else None
        if energy is not None:
            dos.total_energy = energy * len(dos.structure)
            dos.energy_source = "Materials Project task document"
        out.append(dos)
    return out


def _task_energy_per_atom(doc: dict, path: Path, i: int) -> float | None:
    """A task document's energy per atom (eV/atom): `energy_per_atom` or `output.energy_per_atom`; None if absent."""
    import math

    output = doc.get("output") if isinstance(doc.get("output"), dict) else {}
    value = doc.get("energy_per_atom", output.get("energy_per_atom"))
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DOSInputError(path, f"document {i}: energy_per_atom {value!r} is not a number",
                            "give eV/atom or leave the field out") from None
    if not math.isfinite(value):
        raise DOSInputError(path, f"document {i}: energy_per_atom is {value}", "give eV/atom or leave the field out")
    return value
