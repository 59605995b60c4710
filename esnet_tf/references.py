"""Elemental reference energies (eV/atom) and the IS formation energy against them (DESIGN.md section 1,
"Energy inputs").

    from esnet_tf.references import load_references, formation_energy_per_atom
    mu = load_references("mp_elemental_reference_entries.json.gz")   # {"Si": -5.42, ...} eV/atom
    ef, missing = formation_energy_per_atom(-10.85, {"Si": 2}, mu)    # eV/atom, [] when all known

A references file (`esnet featurize --references FILE`) is either
- a CSV with header `element,energy_per_atom` (eV/atom; one row per element), or
- JSON[.gz] of Materials Project `ComputedEntry` / `ComputedStructureEntry` dicts (a list, or a dict
  keyed by element) as the MP API and `pymatgen` write them: the uncorrected `energy` (eV per the
  entry's composition) over its number of atoms; where an element has several entries, the lowest
  energy per atom is its reference.

The references must come from the same code and settings as the IS total energies they are
subtracted from (the formation energy is a difference of two energies of one code). JSON is
decoded with `json` only: no `@module` is ever imported.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path

from esnet_tf import safe_json
from esnet_tf.errors import UserError

_FIX = "give a CSV with header element,energy_per_atom (eV/atom) or a JSON list of MP ComputedEntry dicts"


def _element(symbol: str, path: Path, where: str) -> str:
    from pymatgen.core.periodic_table import Element

    try:
        return Element(str(symbol).strip()).symbol
    except ValueError:
        raise UserError(f"{path}: {where}: {symbol!r} is not an element symbol; {_FIX}") from None


def _read_text(path: Path) -> str:
    """The file's text, read within bounds (`esnet_tf.readers.limits`): special files refused, at most an
    eighth of the per-file limit, also once inflated (gzip by suffix or by its magic bytes)."""
    import zlib

    from esnet_tf.readers.limits import limit_error, max_inflated_bytes, read_bounded

    if not path.exists():
        raise UserError(f"{path}: references file not found; {_FIX}")
    try:
        raw = read_bounded(path, 0.125)  # a .gz is inflated within the bound by the reader itself
        if raw[:2] == b"\x1f\x8b":  # gzip without the .gz suffix: inflate at most the same bound
            limit = max(1, max_inflated_bytes() // 8)
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
                raw = fh.read(limit + 1)
            if len(raw) > limit:
                raise limit_error(path, limit, share="an eighth")
        return raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise UserError(f"{path}: cannot read the references file ({type(exc).__name__}: {exc}); {_FIX}") from None


def _from_csv(text: str, path: Path) -> dict[str, float]:
    reader = csv.DictReader(io.StringIO(text))
    cols = [c.strip() for c in reader.fieldnames or []]
    if "element" not in cols or "energy_per_atom" not in cols:
        raise UserError(f"{path}: columns {cols or 'none'}, expected element,energy_per_atom; {_FIX}")
    out: dict[str, float] = {}
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        if not any(row.values()):
            continue
        el = _element(row["element"], path, f"line {line}")
        try:
            e = float(row["energy_per_atom"])
        except ValueError:
            raise UserError(f"{path}:{line}: energy_per_atom {row['energy_per_atom']!r} is not a number (eV/atom)") \
                from None
        if not math.isfinite(e):
            raise UserError(f"{path}:{line}: energy_per_atom is {e} (give a finite eV/atom)")
        if el in out:
            raise UserError(f"{path}:{line}: element {el} given twice (one reference per element)")
        out[el] = e
    return out


def _from_entries(doc, path: Path) -> dict[str, float]:
    entries = list(doc.values()) if isinstance(doc, dict) and "energy" not in doc else \
        (doc if isinstance(doc, list) else [doc])
    out: dict[str, float] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "energy" not in entry or not isinstance(entry.get("composition"), dict):
            raise UserError(f"{path}: entry {i} is not a ComputedEntry dict (needs energy and composition); {_FIX}")
        comp = {_element(k, path, f"entry {i}"): float(v) for k, v in entry["composition"].items() if float(v) != 0}
        if len(comp) != 1:
            continue  # a compound: not an elemental reference
        el, n = next(iter(comp.items()))
        try:
            e = float(entry["energy"]) / n
        except (TypeError, ValueError, ZeroDivisionError):
            raise UserError(f"{path}: entry {i} ({el}): energy {entry['energy']!r} is not a number (eV)") from None
        if math.isfinite(e) and (el not in out or e < out[el]):
            out[el] = e
    return out


def load_references(path: str | Path) -> dict[str, float]:
    """{element symbol: reference energy (eV/atom)} from a CSV or an MP ComputedEntry JSON[.gz] (module doc)."""
    path = Path(path).expanduser()
    text = _read_text(path)
    name = path.name.lower()
    if name.endswith((".json", ".json.gz")) or text.lstrip()[:1] in ("[", "{"):
        try:
            from esnet_tf.readers.limits import check_json_size

            check_json_size(text.encode("utf-8"), path)  # [[],[],...] decodes to 20 times its text
            doc = safe_json.loads(text, path)  # too deep: one line, not a RecursionError
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno}); {_FIX}") from None
        refs = _from_entries(doc, path)
    else:
        refs = _from_csv(text, path)
    if not refs:
        raise UserError(f"{path}: no elemental reference in the file; {_FIX}")
    return refs


def formation_energy_per_atom(total_energy: float, composition: Mapping[str, float],
                              references: Mapping[str, float]) -> tuple[float, list[str]]:
    """(E - sum_el n_el mu_el) / N in eV/atom for a cell of total energy `total_energy` (eV) holding
    `composition` {element: atoms}, and the elements lacking a reference (then the energy is NaN)."""
    missing = sorted(el for el in composition if el not in references)
    n = float(sum(composition.values()))
    if missing or n <= 0 or total_energy is None or not math.isfinite(total_energy):
        return math.nan, missing
    return (float(total_energy) - sum(float(k) * references[el] for el, k in composition.items())) / n, []
