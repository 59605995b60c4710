"""VASP `vasprun.xml[.gz]` reader (pymatgen `Vasprun`).

Which structure the DOS belongs to: VASP writes the DOS of the *last* ionic step. For a
single point (one ionic step) that is the initial structure, so the file gives IS-DOS. For a
multi-step run (relaxation or MD) the DOS belongs to the final structure: the reader still
returns it, attached to the final structure, and records the warning "DOS of the final
structure of an N-step run, not IS-DOS" in the example's metadata. Unconverged runs are
read with a warning recorded the same way, never silently.
"""
from __future__ import annotations

import warnings as _warnings
from pathlib import Path

from esnet_tf.isdos import DOSInputError, ProjectedDOS
from esnet_tf.readers.common import from_complete_dos


def read_vasprun(path: str | Path) -> ProjectedDOS:
    """Read the m-resolved projected DOS of a vasprun.xml[.gz]."""
    from pymatgen.io.vasp import Vasprun

    path = Path(path)
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            run = Vasprun(str(path), parse_dos=True, parse_eigen=False,
                          parse_projected_eigen=False, parse_potcar_file=False)
    except FileNotFoundError:
        raise DOSInputError(path, "no such file", "check the path") from None
    except Exception as exc:  # lxml XMLSyntaxError, ParseError, ...
        raise DOSInputError(path, f"cannot parse vasprun.xml ({type(exc).__name__}: {str(exc)[:120]})",
                            "the file is truncated or corrupt: rerun or copy it again") from None
    params = run.parameters
    if params.get("LNONCOLLINEAR") or params.get("LSORBIT"):
        raise DOSInputError(path, "noncollinear run (4 spin components): IS-DOS is defined for collinear spin",
                            "rerun with LNONCOLLINEAR=.FALSE. (ISPIN=1 or 2) and LORBIT=11")
    if not getattr(run, "tdos", None) and not run.complete_dos.densities:
        raise DOSInputError(path, "no DOS in the file", "rerun with LORBIT=11 (and NEDOS >= 2000)")
    notes = []
    n_steps = len(run.ionic_steps)
    if n_steps > 1:
        notes.append(f"DOS of the final structure of a {n_steps}-step run, not IS-DOS")
    if not run.converged_electronic:
        notes.append("electronic SCF not converged")
    elif not run.converged_ionic:
        notes.append("ionic relaxation not converged")
    cd = run.complete_dos
    dos = from_complete_dos(cd, path, code=f"VASP {run.vasp_version}", warnings=tuple(notes))
    dos.structure = run.final_structure if n_steps > 1 else run.initial_structure
    return dos
