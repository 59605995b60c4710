"""Reference sets: the known entries that span the hull candidates are placed against.

References are Materials Project `ComputedEntry` / `ComputedStructureEntry` JSON, or a dataset's
labels.csv (formation energies, elements at 0 eV/atom). Formation energies (eV/atom) become total
energies per atom with elemental chemical potentials `mu`: the `elemental_references` when given
(e.g. MP's elemental reference entries, the Matbench Discovery convention), otherwise the
lowest-energy elemental entry of each element among the references (pymatgen's convention).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esnet_tf.errors import UserError
from esnet_tf.screening.hull import Hull
from esnet_tf.screening.io import load_entries


def parse_formula(formula: str) -> Any:
    """A pymatgen Composition of real elements with atoms; ValueError otherwise.

    Every element the formula names must keep a positive count: pymatgen reads `Fe0O` as `O` (it
    drops zero amounts), which would screen another compound under the candidate's name.
    """
    import re

    from pymatgen.core import Composition, Element

    comp = Composition(formula)
    if comp.num_atoms <= 0:
        raise ValueError("no atoms")
    bad = [str(e) for e in comp.elements if not isinstance(e, Element)]
    if bad:
        raise ValueError(f"{', '.join(bad)} not chemical element(s)")
    kept = {e.symbol for e in comp.elements}
    zero = sorted(set(re.findall(r"[A-Z][a-z]*", str(formula))) - kept)
    if zero:
        raise ValueError(f"{', '.join(zero)} with a zero count: give every element a positive count, or leave it out")
    return comp


@dataclass
class ReferenceSet:
    """Entries spanning the reference hull plus the zero of formation energy.

    `entries` are pymatgen entries (energies in eV, total per formula unit as given);
    `ids` their ids; `mu` the elemental chemical potential of each element in eV/atom,
    which turns a formation energy per atom into a total energy per atom.
    """

    entries: list
    ids: list[str]
    mu: dict[str, float]
    sources: list[str] = field(default_factory=list)

    @property
    def elements(self) -> set[str]:
        """Elements that have a pure elemental entry in the hull."""
        return {e.composition.elements[0].symbol for e in self.entries if e.composition.is_element}

    def total_energy_per_atom(self, comp: Any, formation_energy_per_atom: float) -> float:
        """E_f (eV/atom) -> total energy per atom (eV/atom): E_f + sum_el x_el mu_el."""
        return formation_energy_per_atom + sum(
            comp.get_atomic_fraction(el) * self.mu[el.symbol] for el in comp.elements)


def _entry_id(entry: Any, fallback: str) -> str:
    return str(getattr(entry, "entry_id", None) or getattr(entry, "name", None) or fallback)


def formation_energy_references(rows: Iterable[tuple[str, Any, float]], source: str,
                                elements: Iterable[str] = ()) -> ReferenceSet:
    """The one reference set built from formation energies: (id, composition or formula, E_f eV/atom) rows.

    Each row becomes a PDEntry with energy E_f x atoms (eV per cell); every element of the rows and
    of `elements` gets a 0 eV/atom entry (id `__element_<El>`) and mu = 0 eV/atom: formation
    energies are relative to the elemental references by definition (gas-phase elements such as O,
    F, Cl have no row in the demo data; their reference is implied). A non-finite E_f is an error
    (ValueError): callers leave unknown rows out.
    """
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    entries, ids, symbols = [], [], set(elements)
    for id_, formula, ef in rows:
        comp = parse_formula(formula) if isinstance(formula, str) else formula
        if not math.isfinite(ef):
            raise ValueError(f"reference {id_!r} has no formation energy")
        entries.append(PDEntry(comp, float(ef) * comp.num_atoms, name=str(id_)))
        ids.append(str(id_))
        symbols.update(el.symbol for el in comp.elements)
    for el in sorted(symbols):
        entries.append(PDEntry(Composition(el), 0.0, name=f"{el} (element, 0 eV/atom)"))
        ids.append(f"__element_{el}")
    return ReferenceSet(entries, ids, {el: 0.0 for el in symbols}, [source])


def references_from_labels(path: str | Path) -> ReferenceSet:
    """A dataset labels.csv (`id`, `formula`, `formation_energy_per_atom` eV/atom) as a reference set.

    Each row becomes a PDEntry with energy = E_f x atoms; every element seen gets a 0 eV entry
    (`formation_energy_references`). Rows with an empty formation energy are skipped (they are not
    known references).
    """
    from esnet_tf.labels import read_labels

    path = Path(path)
    rows = read_labels(path, path_column=None, require_energy=False, required_columns=("formula",))
    known = []
    for row in rows:
        ef = row.formation_energy_per_atom
        if not math.isfinite(ef):
            continue
        try:
            comp = parse_formula(row.formula)
        except Exception as exc:  # pymatgen raises several types on bad formulas
            raise UserError(f"{path}:{row.line}: id {row.id!r}: bad formula {row.formula!r} ({exc})") from None
        known.append((row.id, comp, ef))
    return formation_energy_references(known, str(path))


def load_references(paths: Sequence[str | Path],
                    elemental_references: str | Path | None = None) -> ReferenceSet:
    """Reference set from JSON entry files and/or labels.csv files (see the module docstring)."""
    if not paths:
        raise UserError("no reference entries given (--references FILE)")
    entries, ids, mu, sources = [], [], {}, []
    json_given = False
    seen: dict[str, tuple[Path, Any]] = {}  # id -> (file, entry): one id, one energy, across every file

    def take(p: Path, got: Sequence[Any], got_ids: Sequence[str]) -> None:
        for e, i in zip(got, got_ids):
            if i in seen:
                first, other = seen[i]
                if other.composition.reduced_formula == e.composition.reduced_formula \
                        and abs(other.energy_per_atom - e.energy_per_atom) <= 1e-6:
                    continue  # the same entry given twice: kept once
                raise UserError(f"reference {i!r} is {other.composition.reduced_formula} at "
                                f"{other.energy_per_atom:.6g} eV/atom in {first} but {e.composition.reduced_formula} "
                                f"at {e.energy_per_atom:.6g} eV/atom in {p}: keep one of them (ids must name one "
                                "entry across every --references file)")
            seen[i] = (p, e)
            entries.append(e)
            ids.append(i)

    for p in paths:
        p = Path(p)
        if p.name.endswith((".csv", ".csv.gz")):
            ref = references_from_labels(p)
            take(p, ref.entries, ref.ids)
            mu.update(ref.mu)
        else:
            json_given = True
            got = load_entries(p)
            take(p, got, [_entry_id(e, f"{p.name}#{i}") for i, e in enumerate(got)])
        sources.append(str(p))
    if json_given and mu:
        raise UserError("mixing labels.csv (elements at 0 eV/atom) and computed-entry JSON "
                        "references is ambiguous: give one kind")
    if elemental_references is not None:
        mu = {}
        for e in load_entries(elemental_references):
            if not e.composition.is_element:
                raise UserError(f"{elemental_references}: {e.composition.reduced_formula} is not an element")
            el = e.composition.elements[0].symbol
            mu[el] = min(mu.get(el, math.inf), e.energy_per_atom)
        sources.append(f"elemental: {elemental_references}")
    elif json_given:
        for e in entries:
            if e.composition.is_element:
                el = e.composition.elements[0].symbol
                mu[el] = min(mu.get(el, math.inf), e.energy_per_atom)
    return ReferenceSet(entries, ids, mu, sources)


class ReferenceHull:
    """E_hull (eV/atom) against reference entries plus entries added later: the one hull wrapper.

    A composition's E_hull depends only on the entries inside its chemical system, so the hull is
    built per chemical system (`esnet_tf.screening.hull.Hull`, pymatgen `PhaseDiagram`), on first
    use, and rebuilt only where `add` put an entry. Screening uses it as built (`exclude_ids`:
    reference ids left out, the candidates themselves; `extra`: (composition, E_f) points put into
    the hull, e.g. the candidates' predicted entries); a campaign `add`s each relaxed candidate.
    """

    def __init__(self, refs: ReferenceSet, exclude_ids: Iterable[str] = (),
                 extra: Sequence[tuple[Any, float]] = ()) -> None:
        excl = set(exclude_ids)
        self.refs = refs
        kept = [e for e, i in zip(refs.entries, refs.ids) if i not in excl]
        self.n_excluded = len(refs.entries) - len(kept)
        self._entries: list[tuple[frozenset[str], Any]] = [(_symbols(e.composition), e) for e in kept]
        self._elements = {next(iter(s)) for s, e in self._entries if e.composition.is_element}
        self._cache: dict[frozenset[str], tuple[int, Hull]] = {}
        self._version: dict[frozenset[str], int] = {}
        for comp, ef in extra:
            if all(el.symbol in refs.mu for el in comp.elements) and math.isfinite(ef):
                self.add(comp, ef, "candidate")

    def add(self, comp: Any, formation_energy_per_atom: float, name: str) -> None:
        """Put an entry (composition, E_f eV/atom) into the hull."""
        from pymatgen.analysis.phase_diagram import PDEntry

        e = PDEntry(comp, self.refs.total_energy_per_atom(comp, formation_energy_per_atom) * comp.num_atoms,
                    name=name)
        space = _symbols(comp)
        self._entries.append((space, e))
        self._version[space] = self._version.get(space, 0) + 1
        if comp.is_element:
            self._elements.add(next(iter(space)))

    def missing(self, comp: Any) -> list[str]:
        """Elements of `comp` with no elemental reference (hull entry or chemical potential)."""
        return sorted(_symbols(comp) - (self._elements & set(self.refs.mu)))

    def _hull(self, space: frozenset[str]) -> Hull:
        version = sum(v for s, v in self._version.items() if s <= space)
        got = self._cache.get(space)
        if got is None or got[0] != version:
            got = (version, Hull([e for s, e in self._entries if s <= space]))
            self._cache[space] = got
        return got[1]

    def e_above_hull(self, comp: Any, formation_energy_per_atom: float) -> float:
        """E_hull (eV/atom, negative below the hull) of a composition with the given E_f (eV/atom); NaN
        for a NaN E_f; ValueError when an element of `comp` has no elemental reference."""
        if not math.isfinite(formation_energy_per_atom):
            return math.nan
        return self._hull(_symbols(comp)).e_above_hull(
            comp, self.refs.total_energy_per_atom(comp, formation_energy_per_atom))

    def e_above_hull_many(self, comps: Sequence[Any], formation_energy_per_atom: Sequence[float]) -> Any:
        """`e_above_hull` of each (composition, E_f) pair (eV/atom), as a float array."""
        import numpy as np

        return np.array([self.e_above_hull(c, float(f)) for c, f in zip(comps, formation_energy_per_atom)], float)


def _symbols(comp: Any) -> frozenset[str]:
    return frozenset(el.symbol for el in comp.elements)
