"""Numerical settings of the GPAW engine (plane waves, PBE) as data."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

#: Initial ferromagnetic moments (Bohr magnetons) of elements treated spin-polarised.
MAGNETIC_MOMENTS: dict[str, float] = {"Cr": 3.0, "Mn": 4.0, "Fe": 3.0, "Co": 2.0, "Ni": 1.0}


@dataclass(frozen=True)
class DFTSettings:
    """GPAW settings. Energies in eV, k-point density in points per Å^-1 (ASE convention)."""

    ecut: float = 500.0  # plane-wave cutoff, eV
    kpt_density: float = 3.5  # k-points per Å^-1 of the initial cell (ASE convention), Gamma-centred
    smearing: float = 0.1  # Fermi-Dirac width, eV
    xc: str = "PBE"
    dos_width: float = 0.1  # Gaussian broadening of the stored DOS, eV (GPAW convention)
    dos_step: float = 0.04  # spacing of the stored DOS, eV
    dos_window: tuple[float, float] = (-22.0, 12.0)  # stored range around E_F, eV
    eos_step: float = 0.04  # relative lattice-constant step of the EOS relaxation
    eos_max_extra: int = 4  # extra EOS points allowed when the minimum is not bracketed
    molecule_box: float = 8.0  # cubic box edge for molecular references, Å
    magnetic_moments: dict = field(default_factory=lambda: dict(MAGNETIC_MOMENTS))

    @classmethod
    def tiny(cls) -> "DFTSettings":
        """Cheap settings for tests: seconds per single point, not converged."""
        return cls(ecut=300.0, kpt_density=1.5)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dos_window"] = list(self.dos_window)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DFTSettings":
        d = dict(d)
        if "dos_window" in d:
            d["dos_window"] = tuple(d["dos_window"])
        return cls(**d)

    def key(self) -> str:
        """Canonical JSON used in cache hashes."""
        return json.dumps(self.to_dict(), sort_keys=True)
