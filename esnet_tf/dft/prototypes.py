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
    "half_heusler": ("F-43m", [[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]], "ABC"),
}
#: atoms per primitive cell, checked when building
_N_PRIMITIVE = {"fcc": 1, "bcc": 1, "sc": 1, "diamond": 2, "rocksalt": 2, "cscl": 2,
                "zincblende": 2, "l12": 4, "d03": 4, "fluorite": 3, "c15": 6, "perovskite": 5,
                "heusler": 4, "inverse_heusler": 4, "half_heusler": 3}


def prototype_structure(name: str, species: list[str], scale: float | None = None) -> Structure:
    """Primitive cell of prototype `name` with `species` on its Wyckoff slots, in order.

    Slots: l12 (A3B) -> [A, B]; d03 (A3B) -> [A, A, B]; fluorite/c15 (AB2) -> [A, B];
    perovskite -> [A, B, X]; heusler (X2YZ) -> [X, Y, Z]; inverse_heusler -> [X, X, Y, Z];
    half_heusler (C1_b) -> [4a, 4b, 4c]: XYZ with X on the tetrahedral 4c site is [Z, Y, X].
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
    for site in unit:
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


# --- Non-cubic prototypes: internal coordinates and/or a free c/a, relaxed with the optimizer ---
#
# The initial structure keeps textbook internal parameters and c/a (ideal close packing where
# the prototype has one) and the same contact rule as the cubic prototypes: the cell is scaled
# so that the closest pair touches at the sum of Slater radii. BFGS on positions and cell
# (`relax="optimizer"`) finds the real u, x, z and c/a.

_SQ83 = float(np.sqrt(8.0 / 3.0))  # ideal hcp c/a

#: name -> (lattice at a = 1 as (a, b, c, alpha, beta, gamma), [(slot, frac coords), ...], formula slots,
#: note). Slots index the species list given to `noncubic_structure`.
NONCUBIC_PROTOTYPES: dict[str, tuple[tuple, list[tuple[int, tuple]], str, str]] = {
    "hcp": ((1, 1, _SQ83, 90, 90, 120), [(0, (1 / 3, 2 / 3, 0.25)), (0, (2 / 3, 1 / 3, 0.75))], "A",
            "A3 (Mg), ideal c/a = sqrt(8/3)"),
    "wurtzite": ((1, 1, _SQ83, 90, 90, 120),
                 [(0, (1 / 3, 2 / 3, 0.0)), (0, (2 / 3, 1 / 3, 0.5)),
                  (1, (1 / 3, 2 / 3, 0.375)), (1, (2 / 3, 1 / 3, 0.875))], "AB",
                 "B4 (ZnS), ideal c/a = sqrt(8/3), u = 3/8"),
    "nias": ((1, 1, _SQ83, 90, 90, 120),
             [(0, (0, 0, 0)), (0, (0, 0, 0.5)), (1, (1 / 3, 2 / 3, 0.25)), (1, (2 / 3, 1 / 3, 0.75))], "AB",
             "B8_1 (NiAs): A in the octahedral holes of hcp B, ideal c/a = sqrt(8/3)"),
    "l10": ((1, 1, float(np.sqrt(2.0)), 90, 90, 90), [(0, (0, 0, 0)), (1, (0.5, 0.5, 0.5))], "AB",
            "L1_0 (CuAu) primitive tetragonal cell of the fcc lattice, c/a_fcc = 1"),
    "rutile": ((1, 1, float(np.sqrt(0.4)), 90, 90, 90),
               [(0, (0, 0, 0)), (0, (0.5, 0.5, 0.5)), (1, (0.3, 0.3, 0)), (1, (0.7, 0.7, 0)),
                (1, (0.8, 0.2, 0.5)), (1, (0.2, 0.8, 0.5))], "AB2",
               "C4 (TiO2 rutile), x = 0.3, c/a = sqrt(0.4) (all six A-B bonds equal)"),
    "anatase": ((1, 1, 2.5, 90, 90, 90), [], "AB2",
                "C5 (TiO2 anatase), I4_1/amd origin 1, textbook z(O) = 0.208, c/a = 2.5; primitive cell of 6"),
    "cdi2": ((1, 1, _SQ83, 90, 90, 120),
             [(0, (0, 0, 0)), (1, (1 / 3, 2 / 3, 0.25)), (1, (2 / 3, 1 / 3, 0.75))], "AB2",
             "C6 (CdI2, 1T layers): A in every other octahedral layer of hcp B, ideal c/a = sqrt(8/3), z = 1/4"),
    "layered_abo2": ((1, 1, 2 * float(np.sqrt(6.0)), 90, 90, 120), [], "ABX2",
                     "alpha-NaFeO2 (LiCoO2) layered rocksalt, R-3m: A 3b, B 3a, X 6c with the ideal rocksalt "
                     "z = 1/4 and c/a = 2 sqrt(6); primitive cell of 4"),
    "perovskite_p4mm": ((1, 1, 1, 90, 90, 90),
                        [(0, (0, 0, 0)), (1, (0.5, 0.5, 0.52)), (2, (0.5, 0.5, 0)), (2, (0.5, 0, 0.5)),
                         (2, (0, 0.5, 0.5))], "ABX3",
                        "tetragonal P4mm perovskite (BaTiO3): the cubic cell with B moved 0.02 c along z, "
                        "so the optimizer can find the ferroelectric distortion"),
}
_N_NONCUBIC = {"hcp": 2, "wurtzite": 4, "nias": 4, "l10": 2, "rutile": 6, "anatase": 6, "cdi2": 3,
               "perovskite_p4mm": 5, "layered_abo2": 4}


def _anatase_unit(species: list[str]) -> Structure:
    """Primitive anatase cell (6 atoms) at conventional a = 1: Ti 4a (0,0,0), O 8e (0,0,z)."""
    from ase.spacegroup import crystal
    from pymatgen.io.ase import AseAtomsAdaptor

    at = crystal(["Ti", "O"], basis=[(0, 0, 0), (0, 0, 0.208)], spacegroup=141,
                 cellpar=[1.0, 1.0, 2.5, 90, 90, 90])
    conv = AseAtomsAdaptor.get_structure(at)
    conv = Structure(conv.lattice, [species[0] if s.symbol == "Ti" else species[1] for s in conv.species],
                     conv.frac_coords)
    return conv.get_primitive_structure()


def _layered_abo2_unit(species: list[str]) -> Structure:
    """Primitive alpha-NaFeO2 cell (4 atoms) at hexagonal a = 1: A 3b (0,0,1/2), B 3a (0,0,0), X 6c (0,0,1/4)."""
    par = NONCUBIC_PROTOTYPES["layered_abo2"][0]
    conv = Structure.from_spacegroup("R-3m", Lattice.hexagonal(par[0], par[2]), list(species),
                                     [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.25]])
    return conv.get_primitive_structure()


def noncubic_structure(name: str, species: list[str], scale: float | None = None) -> Structure:
    """Cell of non-cubic prototype `name` with `species` on its slots (A, B[, X]).

    `scale` is the a lattice parameter (Å); None applies the contact rule. c/a and internal
    coordinates are the prototype's ideal ones (see `NONCUBIC_PROTOTYPES`).
    """
    if name not in NONCUBIC_PROTOTYPES:
        raise ValueError(f"unknown non-cubic prototype {name!r}; known: {sorted(NONCUBIC_PROTOTYPES)}")
    par, sites, slots, _ = NONCUBIC_PROTOTYPES[name]
    n_slots = len({k for k, _ in sites}) if sites else len(slots.rstrip("0123456789"))
    if len(species) != n_slots:
        raise ValueError(f"prototype {name} takes {n_slots} species, got {species}")
    if name == "anatase":
        unit = _anatase_unit(species)
    elif name == "layered_abo2":
        unit = _layered_abo2_unit(species)
    else:
        unit = Structure(Lattice.from_parameters(*par), [species[k] for k, _ in sites], [c for _, c in sites])
    if len(unit) != _N_NONCUBIC[name]:
        raise RuntimeError(f"prototype {name}: {len(unit)} atoms, expected {_N_NONCUBIC[name]}")
    a = contact_lattice_constant(unit) if scale is None else scale
    unit.scale_lattice(unit.volume * a ** 3)
    return unit


#: Experimental N2 bond length (Å), for the nitrides' elemental reference.
DIMER_BONDS["N"] = 1.098
