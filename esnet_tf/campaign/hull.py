"""The campaign's hull: references plus the candidates relaxed so far, one small diagram per chemical system.

A candidate's E_hull only depends on the entries inside its chemical system, so the hull of
(references + relaxed candidates) is built per chemical system with the project's one hull class
(`esnet_tf.screening.hull.Hull`, pymatgen `PhaseDiagram`) and rebuilt only where a relaxation
added an entry. Energies: formation energies and E_hull in eV/atom.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from esnet_tf.screening.hull import Hull
from esnet_tf.screening.references import ReferenceSet


class CampaignHull:
    """E_hull (eV/atom) of compositions against the references plus the known (relaxed) entries."""

    def __init__(self, refs: ReferenceSet) -> None:
        self.refs = refs
        self._ref = [(frozenset(el.symbol for el in e.composition.elements), e) for e in refs.entries]
        self._known: list[tuple[frozenset[str], Any]] = []
        self._cache: dict[frozenset[str], tuple[int, Hull]] = {}
        self._version: dict[frozenset[str], int] = {}

    def add(self, comp: Any, formation_energy_per_atom: float, name: str) -> None:
        """Put a relaxed candidate (composition, E_f eV/atom) into the hull."""
        from pymatgen.analysis.phase_diagram import PDEntry

        e = PDEntry(comp, self.refs.total_energy_per_atom(comp, formation_energy_per_atom) * comp.num_atoms,
                    name=name)
        els = frozenset(el.symbol for el in comp.elements)
        self._known.append((els, e))
        self._version[els] = self._version.get(els, 0) + 1

    def _hull(self, space: frozenset[str]) -> Hull:
        version = sum(v for s, v in self._version.items() if s <= space)
        got = self._cache.get(space)
        if got is None or got[0] != version:
            entries = [e for s, e in self._ref if s <= space] + [e for s, e in self._known if s <= space]
            got = (version, Hull(entries))
            self._cache[space] = got
        return got[1]

    def e_above_hull(self, comp: Any, formation_energy_per_atom: float) -> float:
        """E_hull (eV/atom; negative below the hull) of E_f at `comp`; NaN for a NaN E_f."""
        if not np.isfinite(formation_energy_per_atom):
            return float("nan")
        space = frozenset(el.symbol for el in comp.elements)
        return self._hull(space).e_above_hull(comp, self.refs.total_energy_per_atom(comp, formation_energy_per_atom))

    def e_above_hull_many(self, comps: Sequence[Any], formation_energy_per_atom: np.ndarray) -> np.ndarray:
        """`e_above_hull` of each (composition, E_f) pair (eV/atom)."""
        return np.array([self.e_above_hull(c, float(f)) for c, f in zip(comps, formation_energy_per_atom)], float)


def true_e_above_hull(refs: ReferenceSet, comps: Sequence[Any], truth: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    """E_hull (eV/atom) of every candidate's true E_f against references + all candidates' truths.

    This is the final answer of a replay: which candidates are on the hull once everything is known.
    """
    hull = CampaignHull(refs)
    for c, f, i in zip(comps, truth, ids):
        if np.isfinite(f):
            hull.add(c, float(f), str(i))
    return hull.e_above_hull_many(comps, truth)
