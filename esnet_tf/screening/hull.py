"""The convex hull: pymatgen's `PhaseDiagram`, or `PatchedPhaseDiagram` over many chemical systems.

One hull function for the whole project: screening places candidates on the hull of reference
entries (`esnet_tf.screening.references`), and the DFT labels (`esnet_tf.dft.labels`) get their
`e_above_hull` from the hull of all computed entries. Energies in eV (entries) and eV/atom
(energies per atom, hull distances).

    hull = Hull(entries)                       # PDEntry / ComputedEntry objects
    hull.e_above_hull(Composition("LiFeO2"), -7.1)   # eV/atom, negative below the hull
    e_above_hull_of_entries(entries)            # each entry against the hull of all of them
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: Entries spanning at most this many elements share one `PhaseDiagram`; more use a
#: `PatchedPhaseDiagram` (one diagram per chemical system: a single hull over ~35 elements is
#: intractable).
MAX_PHASE_DIAGRAM_ELEMENTS = 4


def _symbols(comp: Any) -> frozenset[str]:
    return frozenset(el.symbol for el in comp.elements)


class Hull:
    """The hull of `entries`: a `PhaseDiagram`, or a `PatchedPhaseDiagram` over many elements.

    Entries holding an element without an elemental entry cannot be placed on any hull and are
    left out (`n_unusable` counts them); `elements` are the elements that have one. A composition
    whose chemical system no patch of the `PatchedPhaseDiagram` covers (e.g. a ternary candidate
    against binary references) gets the `PhaseDiagram` of the entries inside its system, added
    to the patches once.
    """

    def __init__(self, entries: Iterable[Any]) -> None:
        from pymatgen.analysis.phase_diagram import PatchedPhaseDiagram, PhaseDiagram

        entries = list(entries)
        self.elements: frozenset[str] = frozenset(
            e.composition.elements[0].symbol for e in entries if e.composition.is_element)
        self.entries = [e for e in entries if _symbols(e.composition) <= self.elements]
        self.n_unusable = len(entries) - len(self.entries)
        self.diagram: Any = None
        if not self.entries:
            return
        if len(self.elements) <= MAX_PHASE_DIAGRAM_ELEMENTS:
            self.diagram = PhaseDiagram(self.entries)
        else:
            self.diagram = PatchedPhaseDiagram(self.entries)

    def phase_diagram(self, elements: frozenset[str]) -> Any:
        """The `PhaseDiagram` whose elements include `elements` (ValueError if not all are spanned)."""
        from pymatgen.analysis.phase_diagram import PatchedPhaseDiagram, PhaseDiagram
        from pymatgen.core import Element

        missing = sorted(elements - self.elements)
        if missing:
            raise ValueError(f"no elemental entry for {'-'.join(missing)}")
        if not isinstance(self.diagram, PatchedPhaseDiagram):
            return self.diagram
        space = frozenset(Element(s) for s in elements)
        for patch, pd in self.diagram.pds.items():
            if space <= patch:
                return pd
        pd = PhaseDiagram([e for e in self.entries if _symbols(e.composition) <= elements])
        self.diagram[space] = pd  # pymatgen's own way to add a patch
        return pd

    def hull_energy_per_atom(self, comp: Any) -> float:
        """Energy of the hull (eV/atom) at composition `comp` (a pymatgen Composition)."""
        return float(self.phase_diagram(_symbols(comp)).get_hull_energy_per_atom(comp))

    def e_above_hull(self, comp: Any, energy_per_atom: float) -> float:
        """E_hull (eV/atom; negative below the hull) of total energy `energy_per_atom` (eV/atom) at `comp`."""
        return float(energy_per_atom - self.hull_energy_per_atom(comp))


def e_above_hull_of_entries(entries: Sequence[Any]) -> np.ndarray:
    """E_hull (eV/atom) of each entry against the hull of all `entries` (>= 0 up to round-off).

    NaN for an entry with an element that has no elemental entry.
    """
    hull = Hull(entries)
    out = np.full(len(entries), np.nan)
    for i, e in enumerate(entries):
        if _symbols(e.composition) <= hull.elements:
            out[i] = hull.e_above_hull(e.composition, e.energy_per_atom)
    return out
