"""pymatgen `CompleteDos` -> `ProjectedDOS`: shared by the VASP, DOSCAR and MP readers."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pymatgen.electronic_structure.dos import CompleteDos

from esnet_tf.isdos import F_ORBITALS, ORBITALS, DOSInputError, ProjectedDOS

_CHANNEL = {name: i for i, name in enumerate(ORBITALS)}


def orbital_channel(name: str) -> int | None:
    """Channel index of an orbital label in any spelling ('dx2', 'x2-y2', 'dx2_y2' -> 8).

    Returns None for f orbitals. Raises KeyError for labels that are not m-resolved.
    """
    key = name.lower().replace("_", "").replace("-", "")
    aliases = {"dx2": "dx2-y2", "x2y2": "dx2-y2", "dx2y2": "dx2-y2", "x2": "dx2-y2",
               "xy": "dxy", "yz": "dyz", "z2": "dz2", "xz": "dxz", "dz2r2": "dz2", "z2r2": "dz2"}
    key = aliases.get(key, key)
    if key in _CHANNEL:
        return _CHANNEL[key]
    if key.startswith("f") and len(key) > 1:
        return None
    raise KeyError(name)


def from_complete_dos(cd: CompleteDos, path: Path, code: str, warnings: tuple[str, ...] = ()) -> ProjectedDOS:
    """Sum a pymatgen CompleteDos over sites into the 9 m-resolved channels (states/eV per cell)."""
    from pymatgen.electronic_structure.core import Spin

    if not cd.pdos:
        raise DOSInputError(path, "no projected DOS in the file (total DOS only)",
                            "rerun VASP with LORBIT=11 to write m-resolved projections")
    spins = [Spin.up, Spin.down] if Spin.down in cd.densities else [Spin.up]
    energies = np.asarray(cd.energies, dtype=np.float64)
    pdos = np.zeros((len(spins), len(ORBITALS), len(energies)))
    f_seen: set[str] = set()
    for site_pdos in cd.pdos.values():
        for orb, dens in site_pdos.items():
            label = getattr(orb, "name", str(orb))
            try:
                ch = orbital_channel(label)
            except KeyError:
                raise not_m_resolved(path, label) from None
            if ch is None:
                f_seen.add(label)
                continue
            for i, spin in enumerate(spins):
                if spin not in dens:
                    raise DOSInputError(path, f"orbital {label} lacks spin {spin.name} data",
                                        "the file looks truncated")
                pdos[i, ch] += np.asarray(dens[spin])
    f_channels = tuple(sorted(f_seen, key=lambda s: F_ORBITALS.index(s) if s in F_ORBITALS else 99))
    try:
        efermi = float(cd.efermi)
    except (TypeError, ValueError):
        raise DOSInputError(path, f"Fermi level is {cd.efermi!r}, not a number",
                            "give the document a finite efermi in eV; IS-DOS is aligned to E_F") from None
    return ProjectedDOS(energies=energies, pdos=pdos, efermi=efermi, structure=cd.structure,
                        spin_polarized=len(spins) == 2, source=str(path), code=code,
                        f_channels=f_channels, warnings=tuple(warnings))


def check_vasprun_run(path: Path, params: dict, has_dos: bool, n_steps: int, converged_electronic: bool,
                      converged_ionic: bool) -> list[str]:
    """Run-level checks shared by both vasprun readers; returns the warnings to record.

    Raises DOSInputError for noncollinear runs and files without a DOS.
    """
    if params.get("LNONCOLLINEAR") or params.get("LSORBIT"):
        raise DOSInputError(path, "noncollinear run (4 spin components): IS-DOS is defined for collinear spin",
                            "rerun with LNONCOLLINEAR=.FALSE. (ISPIN=1 or 2) and LORBIT=11")
    if not has_dos:
        raise DOSInputError(path, "no DOS in the file", "rerun with LORBIT=11 (and NEDOS >= 2000)")
    notes = []
    if n_steps > 1:
        notes.append(f"DOS of the final structure of a {n_steps}-step run, not IS-DOS")
    if not converged_electronic:
        notes.append("electronic SCF not converged")
    elif not converged_ionic:
        notes.append("ionic relaxation not converged")
    return notes


def not_m_resolved(path: str | Path, orbital: str) -> DOSInputError:
    """The error for projections without m resolution (LORBIT=10 and the like)."""
    return DOSInputError(path, f"projections are not m-resolved (orbital '{orbital}')",
                         "rerun VASP with LORBIT=11 (LORBIT=10 writes s, p, d only)")


def ionic_step_energy(step: dict, last_electronic: dict | None) -> float | None:
    """Total energy (eV per cell, sigma -> 0) of one VASP ionic step, as pymatgen's `Vasprun.final_energy`
    computes it: the step's `e_0_energy`, unless VASP 5's bug wrote it wrong (e.g. 0.0), then its
    `e_fr_energy` plus (e_0 - e_fr) of the step's last electronic step. None when not written."""
    try:
        e0 = float(step["e_0_energy"])
    except (KeyError, TypeError, ValueError):
        return None
    if last_electronic and "e_0_energy" in last_electronic and "e_fr_energy" in last_electronic \
            and "e_fr_energy" in step:
        fixed = round(float(last_electronic["e_0_energy"]) - float(last_electronic["e_fr_energy"])
                      + float(step["e_fr_energy"]), 8)
        if abs(e0 - fixed) > 1e-7:
            return fixed
    return e0 if np.isfinite(e0) else None


def vasprun_energy_source(n_steps: int) -> str:
    """Where a vasprun.xml example's IS total energy comes from (recorded in its metadata)."""
    if n_steps <= 1:
        return "vasprun.xml single point"
    return f"vasprun.xml first ionic step of {n_steps} (the initial structure; the DOS is the final structure's)"
