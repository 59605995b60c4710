"""VASP `DOSCAR` (+ `POSCAR`) reader.

A DOSCAR has no element names, so the structure comes from, in order: `POSCAR`, then the
initial structure of a `vasprun.xml[.gz]` in the same directory. The DOSCAR of a single
point belongs to that (initial) structure; a relaxation's DOSCAR belongs to CONTCAR, which
this reader does not guess: pass a single-point directory.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from esnet_tf.isdos import F_ORBITALS, ORBITALS, DOSInputError, ProjectedDOS
from esnet_tf.readers.limits import open_bounded


def _find(directory: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        for cand in (directory / n, directory / f"{n}.gz"):
            if cand.exists():
                return cand
    return None


def _structure(directory: Path, doscar: Path):
    from pymatgen.io.vasp import Poscar, Vasprun

    from esnet_tf.readers.limits import check_size, read_bounded

    poscar = _find(directory, ("POSCAR",))
    if poscar is not None:
        text = read_bounded(poscar, 0.125).decode("utf-8", errors="replace")
        return Poscar.from_str(text).structure
    vrun = _find(directory, ("vasprun.xml",))
    if vrun is not None:
        check_size(vrun, 0.25)
        return Vasprun(str(vrun), parse_dos=False, parse_eigen=False, parse_potcar_file=False).initial_structure
    raise DOSInputError(doscar, "no POSCAR (or vasprun.xml) beside the DOSCAR to name the atoms",
                        "copy the run's POSCAR into the same directory")


#: number of lm columns per spin in VASP's DOSCAR (LORBIT=11): s, p, d (9) or s, p, d, f (16),
#: in pymatgen's `Orbital` order (s, py, pz, px, dxy, dyz, dz2, dxz, dx2-y2, f-3 .. f3)
_LM_COUNTS = (9, 16)


#: longest DOSCAR line read (bytes; VASP writes at most 33 columns of about 13 characters)
MAX_LINE_BYTES = 4096
#: largest NEDOS accepted from a DOSCAR header (VASP's default is 301; DOS runs use a few thousand)
MAX_NEDOS = 200_000
_NOT_DOSCAR = "not a VASP DOSCAR: pass the DOSCAR written by VASP"


class _Lines:
    """The DOSCAR's lines, streamed (bounded: `esnet_tf.readers.limits.open_bounded`), one held at a time."""

    def __init__(self, fh, doscar: Path) -> None:
        self.fh, self.doscar, self.n = fh, doscar, 0

    def next(self) -> str | None:
        try:
            line = self.fh.readline(MAX_LINE_BYTES + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise DOSInputError(self.doscar, f"cannot read ({type(exc).__name__}: {exc})",
                                "the file is truncated or corrupt") from None
        if not line:
            return None
        self.n += 1
        if len(line) > MAX_LINE_BYTES:
            raise DOSInputError(self.doscar, f"line {self.n} is longer than {MAX_LINE_BYTES} bytes", _NOT_DOSCAR)
        return line.decode("utf-8", errors="replace")


def _block(lines: _Lines, nedos: int, doscar: Path, first: str | None = None) -> np.ndarray:
    """The next `nedos` rows as a float array (`first`: its first line, already read)."""
    start = lines.n + (0 if first is not None else 1)
    arr = None
    for i in range(nedos):
        line = first if i == 0 and first is not None else lines.next()
        try:
            row = [float(x) for x in line.split()] if line is not None else None
        except ValueError:
            row = None
        if row is None or not row or (arr is not None and len(row) != arr.shape[1]) or len(row) > 33:
            raise DOSInputError(doscar, f"DOS block at line {start} is incomplete",
                                "the file is truncated: copy it again")
        if arr is None:
            arr = np.empty((nedos, len(row)), dtype=np.float64)
        arr[i] = row
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
    parses the fixed VASP layout, streamed: each atom's block is summed into the 9 channels as it
    is read (the sums `common.from_complete_dos` forms from a CompleteDos, bit for bit), so memory
    holds one block, whatever the file's size; the file is read through `esnet_tf.readers.limits`
    (special files refused, at most the per-file limit inflated).
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    doscar = _find(directory, ("DOSCAR",)) if path.is_dir() else path
    if doscar is None or not doscar.exists():
        raise DOSInputError(path, "no DOSCAR found", "pass a DOSCAR file or a directory holding one")
    with open_bounded(doscar) as fh:
        return _read_stream(_Lines(fh, doscar), directory, doscar)


def _read_stream(lines: _Lines, directory: Path, doscar: Path) -> ProjectedDOS:
    """Parse the streamed DOSCAR, summing each atom's projections into the 9 channels as they come
    (what `common.from_complete_dos` computes from a CompleteDos, without holding every site's block)."""
    from pymatgen.electronic_structure.core import Orbital

    head = [lines.next() for _ in range(6)]
    try:
        natoms = int(head[0].split()[0])
        emax, emin, nedos, efermi = head[5].split()[:4]
        nedos, efermi = int(float(nedos)), float(efermi)
    except (AttributeError, IndexError, ValueError):
        raise DOSInputError(doscar, "not a VASP DOSCAR (bad header)", "pass the DOSCAR written by VASP") from None
    if not 1 <= nedos <= MAX_NEDOS or natoms < 1:
        raise DOSInputError(doscar, f"header declares {natoms} atoms and NEDOS={nedos} (accepted: NEDOS 1 to "
                            f"{MAX_NEDOS})", _NOT_DOSCAR)
    total = _block(lines, nedos, doscar)
    spin_polarized = total.shape[1] == 5
    if total.shape[1] not in (3, 5):
        raise DOSInputError(doscar, f"total DOS has {total.shape[1]} columns", "not a VASP DOSCAR")
    header, first = lines.next(), None
    if header is not None:
        first = lines.next()
    if first is None:
        raise DOSInputError(doscar, "no projected DOS in the file (total DOS only)",
                            "rerun VASP with LORBIT=11 to write m-resolved projections")
    structure = _structure(directory, doscar)
    if len(structure) != natoms:
        raise DOSInputError(doscar, f"DOSCAR is for {natoms} atoms but the structure has {len(structure)}",
                            "use the POSCAR of the same run")
    energies = np.asarray(total[:, 0], dtype=np.float64)
    pdos = np.zeros((2 if spin_polarized else 1, len(ORBITALS), nedos))
    f_seen: set[str] = set()
    for a in range(natoms):
        if a > 0:
            lines.next()  # the atom's header line
        block = _block(lines, nedos, doscar, first)
        first = None
        for j, (orb, s) in enumerate(_columns(block.shape[1] - 1, spin_polarized, doscar)):
            if orb < len(ORBITALS):  # s, py, pz, px, dxy, dyz, dz2, dxz, dx2-y2: the channel order
                pdos[s, orb] += block[:, j + 1]
            else:
                f_seen.add(Orbital(orb).name)
    f_channels = tuple(sorted(f_seen, key=lambda name: F_ORBITALS.index(name) if name in F_ORBITALS else 99))
    return ProjectedDOS(energies=energies, pdos=pdos, efermi=efermi, structure=structure,
                        spin_polarized=spin_polarized, source=str(doscar), code="VASP (DOSCAR)",
                        f_channels=f_channels)
