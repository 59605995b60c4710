"""The IS-DOS contract (DESIGN.md section 1): energy grid, orbital channels, example record.

This module is the one place where the grid, the orbital order and the example layout live.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from esnet_tf.errors import DOSInputError  # noqa: F401  (re-exported: part of the contract's API)

#: Orbital channels of the model input, in order (VASP's lm order for l <= 2).
ORBITALS: tuple[str, ...] = ("s", "py", "pz", "px", "dxy", "dyz", "dz2", "dxz", "dx2-y2")
N_ORBITALS = len(ORBITALS)
#: Elements Z = 1..118 in the composition vector.
N_ELEMENTS = 118
#: Model input names (DESIGN.md section 5): the IS-DOS fields a model takes.
INPUT_NAMES: tuple[str, ...] = ("dos_up", "dos_down", "composition")
#: The IS total energy per atom of the single point that gave the IS-DOS (eV/atom; spec v2).
IS_ENERGY = "is_energy_per_atom"
#: The IS formation energy per atom against elemental references of the same code (eV/atom; spec v2).
IS_FORMATION_ENERGY = "is_formation_energy_per_atom"
#: Named scalar energy inputs (eV/atom, float32 (None, 1) each) a model may take beside
#: INPUT_NAMES (DESIGN.md section 1, "Energy inputs"); NaN in the data means unknown.
ENERGY_INPUTS: tuple[str, ...] = (IS_FORMATION_ENERGY, IS_ENERGY, "uip_formation_energy_per_atom")
#: How to obtain each energy input when an example lacks it (the fix of the refusal).
ENERGY_FIX = {
    IS_FORMATION_ENERGY: "GPAW calculations of `esnet dft` take it from the engine's provenance.json; for VASP or "
                         "Materials Project inputs run `esnet featurize ... --references FILE --out x.npz` (FILE: CSV "
                         "element,energy_per_atom or MP ComputedEntry JSON of the same code and settings) and use "
                         "the .npz, or give an is_formation_energy_per_atom column in labels.csv",
    IS_ENERGY: "use a source that holds the IS total energy (GPAW result, single-point vasprun.xml), or an "
               "is_energy_per_atom column in labels.csv",
    "uip_formation_energy_per_atom": "relax the inputs' structures with `esnet uip relax STRUCTURES... --out uip.csv` "
                                     "and pass `esnet predict ... --uip uip.csv` (ESNetModel.predict(..., uip=...)); "
                                     "the model's own CHGNet references give the formation energy",
}
#: Model output (and label) name: relaxed formation energy, eV/atom.
OUTPUT_NAME = "formation_energy_per_atom"
#: Predictions CSV columns (DESIGN.md section 6), eV/atom.
PREDICTION_COLUMN = f"predicted_{OUTPUT_NAME}"
PREDICTION_STD_COLUMN = f"predicted_{OUTPUT_NAME}_std"
DOMAIN_COLUMN = "domain"
#: Negative DOS accepted as rounding (tetrahedron-method DOS dips slightly below 0; VASP Al: -3e-4
#: states/eV): values below `negative_dos_floor` are refused, by the featurizer (per cell) and before
#: training or prediction (per atom). Relative to the largest |DOS|, never tighter than this in absolute.
NEGATIVE_DOS_TOLERANCE = 1e-2


def negative_dos_floor(dos: np.ndarray, axis: int | tuple[int, ...] | None = None) -> np.ndarray | float:
    """The lowest DOS value accepted in `dos` (states/eV, per cell or per atom):
    -NEGATIVE_DOS_TOLERANCE x max(1, max |dos|), over `axis` (None: the whole array, a float)."""
    dos = np.asarray(dos, dtype=np.float64)
    peak = np.abs(dos).max(axis=axis, initial=0.0)
    floor = -NEGATIVE_DOS_TOLERANCE * np.maximum(1.0, peak)
    return float(floor) if axis is None else floor


#: Names of the f channels (dropped from the 9 channels, recorded in metadata).
F_ORBITALS: tuple[str, ...] = ("f_3", "f_2", "f_1", "f0", "f1", "f2", "f3")


@dataclass(frozen=True)
class EnergyGrid:
    """Energy axis of IS-DOS: E - E_Fermi from `e_min` to `e_max` eV, `n_points` points."""

    e_min: float = -20.0
    e_max: float = 10.0
    n_points: int = 1500

    def __post_init__(self) -> None:
        if not self.e_max > self.e_min or self.n_points < 2:
            raise ValueError(f"invalid energy grid {self}")

    def energies(self) -> np.ndarray:
        """Grid energies relative to E_F (eV), float64, shape (n_points,)."""
        return np.linspace(self.e_min, self.e_max, self.n_points)

    @property
    def step(self) -> float:
        """Grid spacing (eV)."""
        return (self.e_max - self.e_min) / (self.n_points - 1)

    def to_dict(self) -> dict:
        return {"e_min": self.e_min, "e_max": self.e_max, "n_points": self.n_points}


#: The paper's window, linspace(-20, 10, 1500) eV around E_F.
PAPER_GRID = EnergyGrid()


@dataclass
class ProjectedDOS:
    """What every reader returns and the featurizer consumes.

    `pdos` is the orbital-projected DOS summed over all sites of the cell, in states/eV per
    cell, shape (n_spin, 9, n_energies), channels in `ORBITALS` order; `energies` are absolute
    (eV) and `efermi` is E_F (eV).
    """

    energies: np.ndarray
    pdos: np.ndarray
    efermi: float
    structure: "object"  # pymatgen Structure
    spin_polarized: bool
    source: str
    code: str
    f_channels: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    doc_id: str | None = None  # id stored in the file itself (MP task_id, GPAW task id)
    #: total energy of the cell (eV) of the calculation that gave this DOS (its single point), None when
    #: the source does not hold it; `energy_source` says where it came from
    total_energy: float | None = None
    energy_source: str = ""
    #: the producing code's own elemental references {element: eV/atom} of the same settings (GPAW engine)
    references: dict | None = None


@dataclass
class ISDOSExample:
    """One IS-DOS example (DESIGN.md section 1) with its metadata."""

    dos_up: np.ndarray  # float32 (n_points, 9), states/eV/atom
    dos_down: np.ndarray  # float32 (n_points, 9), states/eV/atom
    composition: np.ndarray  # float32 (118,), atomic fractions
    id: str
    formula: str
    chemsys: str
    n_atoms: int
    efermi: float  # eV
    spin_polarized: bool
    source: str
    code: str
    f_channels: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    grid: EnergyGrid = field(default=PAPER_GRID)
    #: IS total energy (eV/atom) and IS formation energy (eV/atom) against elemental references of the
    #: same code; NaN where unknown (spec v2)
    is_energy_per_atom: float = float("nan")
    is_formation_energy_per_atom: float = float("nan")
    energy_source: str = ""  # where is_energy_per_atom came from, and the references of the formation energy

    def energy(self, name: str) -> float:
        """The named energy input (eV/atom; NaN when unknown)."""
        if name not in ENERGY_INPUTS:
            raise KeyError(f"unknown energy input {name!r} (known: {', '.join(ENERGY_INPUTS)})")
        return float(getattr(self, name, float("nan")))

    def metadata(self) -> dict:
        """JSON-serialisable metadata (everything but the arrays)."""
        return {
            "id": self.id, "formula": self.formula, "chemsys": self.chemsys,
            "n_atoms": self.n_atoms, "efermi": self.efermi,
            "spin_polarized": self.spin_polarized, "source": self.source, "code": self.code,
            "f_channels": list(self.f_channels), "warnings": list(self.warnings),
            "grid": self.grid.to_dict(),
            IS_ENERGY: _json_float(self.is_energy_per_atom),
            IS_FORMATION_ENERGY: _json_float(self.is_formation_energy_per_atom),
            "energy_source": self.energy_source,
        }


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def missing_energy_message(name: str, where: str, ids) -> str:
    """One line refusing examples whose energy input `name` is NaN: names them and the fix."""
    ids = [str(i) for i in ids]
    more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
    fix = ENERGY_FIX.get(name, f"give the examples a {name} (eV/atom)")
    return (f"{where + ': ' if where else ''}the model needs input '{name}' (eV/atom), unknown (NaN) for id "
            f"{', '.join(ids[:3])}{more}; {fix}")


def require_energies(arrays: dict, names, where: str = "") -> None:
    """Refuse (`UserError`, one line) arrays lacking a finite value of each energy input in `names`."""
    from esnet_tf.errors import UserError

    for name in names:
        n = len(arrays["composition"]) if "composition" in arrays else 0
        if name not in arrays:
            ids = [str(i) for i in arrays.get("id", range(n))]
            raise UserError(missing_energy_message(name, where, ids or ["(all)"]))
        values = np.asarray(arrays[name], dtype=np.float64).reshape(len(arrays[name]), -1)
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            idx = np.flatnonzero(bad)
            ids = [arrays["id"][i] if "id" in arrays else i for i in idx]
            raise UserError(missing_energy_message(name, where, [i.decode() if isinstance(i, bytes) else i
                                                                  for i in ids]))
