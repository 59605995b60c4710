"""Cubic prototypes without internal degrees of freedom, and the initial-lattice rule.

Initial structure (IS) rule: the prototype is scaled isotropically so that the closest pair of
atoms sits at the sum of their Slater atomic radii (pymatgen `Element.atomic_radius`, Å).
Elemental volumes (the rule first planned) put ionic compounds 15-40 % off in lattice
constant (NaCl: +15 %, MgO: +40 %); radii sums hit NaCl, MgO and GaAs within 1 %, so the
IS stays a realistic unrelaxed guess a few percent from the relaxed cell.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from pymatgen.core import Element, Lattice, Structure

#: name -> (space group, Wyckoff representative coordinates per species slot, formula slots)
PROTOTYPES: dict[str, tuple[str, list[list[float]], str]] = {
    "fcc": ("Fm-3m", [[0, 0, 0]], "A"),
    "bcc": ("Im-3m", [[0, 0, 0]], "A"),
    "sc": ("Pm-3m", [[0, 0, 0]], "A"),
    "diamond": ("Fd-3m", [[0, 0, 0]], "A"),
    "rocksalt": ("Fm-3m", [[0, 0, 0], [0.5, 0.5, 0.5]], "AB"),
    "cscl": ("Pm-3m", [[0, 0, 0], [0.5, 0.5, 0.5]], "AB"),
    "zincblende": ("F-43m", [[0, 0, 0], [0.25, 0.25, 0.25]], "AB"),
    "l12": ("Pm-3m", [[0, 0.5, 0.5], [0, 0, 0]], "A3B"),
    "d03": ("Fm-3m", [[0.25, 0.25, 0.25], [0.5, 0.5, 0.5], [0, 0, 0]], "A2A'B"),
    "fluorite": ("Fm-3m", [[0, 0, 0], [0.25, 0.25, 0.25]], "AB2"),
    "c15": ("Fd-3m", [[0, 0, 0], [0.625, 0.625, 0.625]], "AB2"),
    "perovskite": ("Pm-3m", [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]], "ABX3"),
    "heusler": ("Fm-3m", [[0.25, 0.25, 0.25], [0.5, 0.5, 0.5], [0, 0, 0]], "X2YZ"),
    "inverse_heusler": ("F-43m", [[0, 0, 0], [0.25, 0.25, 0.25], [0.5, 0.5, 0.5], [0.75, 0.75, 0.75]], "XXYZ"),
}
#: atoms per primitive cell, checked when building
_N_PRIMITIVE = {"fcc": 1, "bcc": 1, "sc": 1, "diamond": 2, "rocksalt": 2, "cscl": 2,
                "zincblende": 2, "l12": 4, "d03": 4, "fluorite": 3, "c15": 6, "perovskite": 5,
                "heusler": 4, "inverse_heusler": 4}


def prototype_structure(name: str, species: list[str], scale: float | None = None) -> Structure:
    """Primitive cell of prototype `name` with `species` on its Wyckoff slots, in order.

    Slots: l12 (A3B) -> [A, B]; d03 (A3B) -> [A, A, B]; fluorite/c15 (AB2) -> [A, B];
    perovskite -> [A, B, X]; heusler (X2YZ) -> [X, Y, Z]; inverse_heusler -> [X, X, Y, Z].
    `scale` is the conventional cubic lattice constant (Å); None applies the radii rule.
    """
    if name not in PROTOTYPES:
        raise ValueError(f"unknown prototype {name!r}; known: {sorted(PROTOTYPES)}")
    coords = PROTOTYPES[name][1]
    if len(species) != len(coords):
        raise ValueError(f"prototype {name} takes {len(coords)} species, got {species}")
    cell = _conventional_cell(name)
    conv = Structure(cell.lattice, [species[k] for k in cell.site_properties["slot"]], cell.frac_coords)
    prim = conv.get_primitive_structure()
    prim.scale_lattice(prim.volume / 1000.0)  # conventional lattice constant 1
    if len(prim) != _N_PRIMITIVE[name]:
        raise RuntimeError(f"prototype {name}: {len(prim)} atoms in primitive cell, expected {_N_PRIMITIVE[name]}")
    a = contact_lattice_constant(prim) if scale is None else scale
    prim.scale_lattice(prim.volume * a ** 3)
    return prim


@lru_cache(maxsize=None)
def _conventional_cell(name: str) -> Structure:
    """Conventional cell (a = 10 Å) of prototype `name`; site property `slot` = species slot.

    pymatgen builds a space group's operations in about a second, so each prototype is built
    once; the sites and their order do not depend on which elements fill the slots.
    """
    sg, coords, _ = PROTOTYPES[name]
    return Structure.from_spacegroup(sg, Lattice.cubic(10.0), ["H"] * len(coords), coords,
                                     site_properties={"slot": list(range(len(coords)))})


def contact_lattice_constant(unit: Structure) -> float:
    """Lattice constant (Å) at which the closest pair touches at r_i + r_j (Slater radii).

    `unit` is the structure at conventional lattice constant 1.
    """
    ratios = []
    for i, site in enumerate(unit):
        for nb in unit.get_neighbors(site, 1.5):
            ri = Element(site.specie.symbol).atomic_radius
            rj = Element(nb.specie.symbol).atomic_radius
            ratios.append((float(ri) + float(rj)) / nb.nn_distance)
    return float(max(ratios))


def molecule_in_box(element: str, bond: float, box: float) -> Structure:
    """Homonuclear dimer of bond length `bond` (Å) in a cubic box of edge `box` (Å)."""
    c = box / 2
    return Structure(Lattice.cubic(box), [element, element],
                     [[c - bond / 2, c, c], [c + bond / 2, c, c]], coords_are_cartesian=True)


#: Experimental bond lengths (Å) of the molecular elemental references.
DIMER_BONDS = {"O": 1.208, "F": 1.412, "Cl": 1.988}
