"""Reader of the GPAW engine's DOS files (`*.gpawdos.npz`, written by `esnet dft`).

npz arrays (no pickle): `energies` (n_E,) absolute eV; `efermi` eV; `pdos`
(n_spin, 9, n_E) states/eV per cell summed over sites, channels in `isdos.ORBITALS` order,
symmetrised over the crystal's rotations, n_spin = 1 means the total of both spins;
`structure_json` (pymatgen Structure as JSON); `code`; `settings_json`; `energy` (eV); `id`.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from esnet_tf.isdos import N_ORBITALS, DOSInputError, ProjectedDOS

REQUIRED = ("energies", "efermi", "pdos", "structure_json", "code")


def read_gpaw_dos(path: str | Path) -> ProjectedDOS:
    """Read one `*.gpawdos.npz`."""
    from pymatgen.core import Structure

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in REQUIRED if k not in data.files]
            if missing:
                raise DOSInputError(path, f"missing arrays {missing}", "regenerate it with `esnet dft`")
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DOSInputError(path, f"cannot read npz ({type(exc).__name__}: {exc})",
                            "the file is truncated: rerun `esnet dft` (the cache resumes)") from None
    pdos = arrays["pdos"].astype(np.float64)
    if pdos.ndim != 3 or pdos.shape[1] != N_ORBITALS or pdos.shape[0] not in (1, 2) \
            or pdos.shape[2] != arrays["energies"].shape[0]:
        raise DOSInputError(path, f"pdos has shape {pdos.shape}, expected (1|2, 9, {arrays['energies'].shape[0]})",
                            "regenerate it with `esnet dft`")
    structure = Structure.from_dict(json.loads(str(arrays["structure_json"])))
    dos = ProjectedDOS(energies=arrays["energies"].astype(np.float64), pdos=pdos,
                       efermi=float(arrays["efermi"]), structure=structure,
                       spin_polarized=pdos.shape[0] == 2, source=str(path), code=str(arrays["code"]))
    dos.doc_id = str(arrays["id"]) if "id" in arrays else None
    return dos
