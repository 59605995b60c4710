"""Readers: one module per DFT source, each returning `ProjectedDOS` records.

    read_dos(path) -> list[ProjectedDOS]

dispatches on the path: `vasprun*.xml[.gz]` (VASP: `vasp_stream.py`, a streaming reader
checked equal to the pymatgen `Vasprun` path of `vasp.py`, which `ESNET_VASPRUN_READER=pymatgen`
selects), `DOSCAR[.gz]` or a directory
holding one (VASP, `doscar.py`), `*.json[.gz]` (Materials Project CompleteDos documents,
`materials_project.py`), `*.gpawdos.npz` (this project's GPAW engine, `gpaw.py`).
Every problem raises `DOSInputError` naming the file and the fix.
"""
from __future__ import annotations

from pathlib import Path

from esnet_tf.isdos import DOSInputError, ProjectedDOS

SUPPORTED = "vasprun.xml[.gz], DOSCAR[.gz] (+ POSCAR), Materials Project CompleteDos .json[.gz], *.gpawdos.npz"


def source_kind(path: Path) -> str | None:
    """Which reader handles `path` ('vasprun', 'doscar', 'mp', 'gpaw'), or None."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        if any((path / n).exists() for n in ("DOSCAR", "DOSCAR.gz")):
            return "doscar"
        if any((path / n).exists() for n in ("vasprun.xml", "vasprun.xml.gz")):
            return "vasprun"
        return None
    if name.endswith(".gpawdos.npz"):
        return "gpaw"
    if "vasprun" in name and (name.endswith(".xml") or name.endswith(".xml.gz")):
        return "vasprun"
    if name.startswith("doscar"):
        return "doscar"
    if name.endswith(".json") or name.endswith(".json.gz"):
        return "mp"
    return None


def read_dos(path: str | Path) -> list[ProjectedDOS]:
    """Read every DOS in `path` (one for most files; MP files may hold several)."""
    path = Path(path)
    if not path.exists():
        raise DOSInputError(path, "no such file or directory", "check the path")
    kind = source_kind(path)
    if kind == "vasprun":
        from esnet_tf.readers.vasp_stream import vasprun_reader

        if path.is_dir():
            path = next(p for p in (path / "vasprun.xml", path / "vasprun.xml.gz") if p.exists())
        return [vasprun_reader()(path)]  # streaming reader; ESNET_VASPRUN_READER=pymatgen for Vasprun
    if kind == "doscar":
        from esnet_tf.readers.doscar import read_doscar

        return [read_doscar(path)]
    if kind == "mp":
        from esnet_tf.readers.materials_project import read_complete_dos_json

        return read_complete_dos_json(path)
    if kind == "gpaw":
        from esnet_tf.readers.gpaw import read_gpaw_dos

        return [read_gpaw_dos(path)]
    raise DOSInputError(path, "not a recognised DFT output", f"supported: {SUPPORTED}")
