"""VASP `DOSCAR` (+ `POSCAR`) reader.

A DOSCAR has no element names, so the structure comes from, in order: `POSCAR`, then the
initial structure of a `vasprun.xml[.gz]` in the same directory. The DOSCAR of a single
point belongs to that (initial) structure; a relaxation's DOSCAR belongs to CONTCAR, which
this reader does not guess: pass a single-point directory.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from esnet_tf.isdos import DOSInputError, ProjectedDOS
from esnet_tf.readers.common import from_complete_dos


def _find(directory: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        for cand in (directory / n, directory / f"{n}.gz"):
            if cand.exists():
                return cand
    return None


def _structure(directory: Path, doscar: Path):
    from pymatgen.core import Structure
    from pymatgen.io.vasp import Poscar, Vasprun

    poscar = _find(directory, ("POSCAR",))
    if poscar is not None:
        return Poscar.from_file(str(poscar)).structure
    vrun = _find(directory, ("vasprun.xml",))
    if vrun is not None:
        return Vasprun(str(vrun), parse_dos=False, parse_eigen=False, parse_potcar_file=False).initial_structure
    raise DOSInputError(doscar, "no POSCAR (or vasprun.xml) beside the DOSCAR to name the atoms",
                        "copy the run's POSCAR into the same directory")


#: number of lm columns per spin in VASP's DOSCAR (LORBIT=11): s, p, d (9) or s, p, d, f (16),
#: in pymatgen's `Orbital` order (s, py, pz, px, dxy, dyz, dz2, dxz, dx2-y2, f-3 .. f3)
_LM_COUNTS = (9, 16)


def _read_lines(doscar: Path) -> list[str]:
    opener = gzip.open if doscar.name.endswith(".gz") else open
    try:
        with opener(doscar, "rt", encoding="utf-8", errors="replace") as fh:
            return fh.read().splitlines()
    except (OSError, EOFError) as exc:
        raise DOSInputError(doscar, f"cannot read ({type(exc).__name__}: {exc})", "the file is truncated or corrupt") from None


def _block(lines: list[str], start: int, nedos: int, doscar: Path) -> np.ndarray:
    try:
        rows = [[float(x) for x in line.split()] for line in lines[start:start + nedos]]
        arr = np.array(rows, dtype=np.float64)
    except ValueError:
        arr = None
    if arr is None or arr.ndim != 2 or len(arr) != nedos:
        raise DOSInputError(doscar, f"DOS block at line {start + 1} is incomplete", "the file is truncated: copy it again")
    return arr


def _columns(ncol: int, spin_polarized: bool, doscar: Path) -> list[tuple[int, int]]:
    """(pymatgen Orbital value, spin index) of each projected column of an atom block."""
    if not spin_polarized and ncol in _LM_COUNTS:
        return [(o, 0) for o in range(ncol)]
    if spin_polarized and ncol // 2 in _LM_COUNTS and ncol % 2 == 0:
        return [(o, s) for o in range(ncol // 2) for s in (0, 1)]
    if ncol in (3, 4, 6, 8):
        raise DOSInputError(doscar, "projections are not m-resolved (LORBIT=10)", "rerun VASP with LORBIT=11")
    raise DOSInputError(doscar, f"{ncol} projected columns per atom: noncollinear or unknown layout",
                        "IS-DOS needs a collinear run (ISPIN=1 or 2) with LORBIT=11")


def read_doscar(path: str | Path) -> ProjectedDOS:
    """Read `DOSCAR[.gz]` or a directory holding one, with the structure from POSCAR.

    pymatgen no longer ships a VASP DOSCAR parser (its `Doscar` is LOBSTER's), so this module
    parses the fixed VASP layout and builds a pymatgen `CompleteDos` from it.
    """
    from pymatgen.electronic_structure.core import Orbital, Spin
    from pymatgen.electronic_structure.dos import CompleteDos, Dos

    path = Path(path)
    directory = path if path.is_dir() else path.parent
    doscar = _find(directory, ("DOSCAR",)) if path.is_dir() else path
    if doscar is None or not doscar.exists():
        raise DOSInputError(path, "no DOSCAR found", "pass a DOSCAR file or a directory holding one")
    lines = _read_lines(doscar)
    try:
        natoms = int(lines[0].split()[0])
        emax, emin, nedos, efermi = lines[5].split()[:4]
        nedos, efermi = int(float(nedos)), float(efermi)
    except (IndexError, ValueError):
        raise DOSInputError(doscar, "not a VASP DOSCAR (bad header)", "pass the DOSCAR written by VASP") from None
    total = _block(lines, 6, nedos, doscar)
    spin_polarized = total.shape[1] == 5
    if total.shape[1] not in (3, 5):
        raise DOSInputError(doscar, f"total DOS has {total.shape[1]} columns", "not a VASP DOSCAR")
    if len(lines) <= 6 + nedos + 1:
        raise DOSInputError(doscar, "no projected DOS in the file (total DOS only)",
                            "rerun VASP with LORBIT=11 to write m-resolved projections")
    structure = _structure(directory, doscar)
    if len(structure) != natoms:
        raise DOSInputError(doscar, f"DOSCAR is for {natoms} atoms but the structure has {len(structure)}",
                            "use the POSCAR of the same run")
    energies = total[:, 0]
    spins = [Spin.up, Spin.down] if spin_polarized else [Spin.up]
    pdos = {}
    for a in range(natoms):
        start = 6 + nedos + 1 + a * (nedos + 1)
        block = _block(lines, start, nedos, doscar)
        cols = _columns(block.shape[1] - 1, spin_polarized, doscar)
        site_pdos: dict = {}
        for j, (orb, s) in enumerate(cols):
            site_pdos.setdefault(Orbital(orb), {})[spins[s]] = block[:, j + 1]
        pdos[structure[a]] = site_pdos
    tdos = Dos(efermi, energies, {sp: total[:, 1 + i] for i, sp in enumerate(spins)})
    cd = CompleteDos(structure, tdos, pdos)
    return from_complete_dos(cd, doscar, code="VASP (DOSCAR)")
