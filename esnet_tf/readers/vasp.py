"""VASP `vasprun.xml[.gz]` reader (pymatgen `Vasprun`).

Which structure the DOS belongs to: VASP writes the DOS of the *last* ionic step. For a
single point (one ionic step) that is the initial structure, so the file gives IS-DOS. For a
multi-step run (relaxation or MD) the DOS belongs to the final structure: the reader still
returns it, attached to the final structure, and records the warning "DOS of the final
structure of an N-step run, not IS-DOS" in the example's metadata. Unconverged runs are
read with a warning recorded the same way, never silently.

The IS total energy (`ProjectedDOS.total_energy`, eV per cell) is the first ionic step's energy
(sigma -> 0, pymatgen's `final_energy` rule): the single point's, or, for a multi-step run, the
initial structure's (not the final energy the DOS belongs to).

pymatgen holds the whole run in memory, so the file is first streamed once through
`esnet_tf.readers.limits` (special files refused; at most a quarter of the per-file limit,
$ESNET_MAX_INFLATED_BYTES, may inflate) before pymatgen opens it.
"""
from __future__ import annotations

import warnings as _warnings
from pathlib import Path

from esnet_tf.isdos import DOSInputError, ProjectedDOS
from esnet_tf.readers.common import check_vasprun_run, from_complete_dos, ionic_step_energy, vasprun_energy_source
from esnet_tf.readers.limits import check_size


def read_vasprun(path: str | Path) -> ProjectedDOS:
    """Read the m-resolved projected DOS of a vasprun.xml[.gz]."""
    from pymatgen.io.vasp import Vasprun

    path = Path(path)
    check_size(path, 0.25)
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
    n_steps = len(run.ionic_steps)
    has_dos = bool(getattr(run, "tdos", None)) or bool(run.complete_dos.densities)
    notes = check_vasprun_run(path, run.parameters, has_dos, n_steps, run.converged_electronic, run.converged_ionic)
    cd = run.complete_dos
    dos = from_complete_dos(cd, path, code=f"VASP {run.vasp_version}", warnings=tuple(notes))
    dos.structure = run.final_structure if n_steps > 1 else run.initial_structure
    if run.ionic_steps:  # the IS total energy: the first ionic step (the single point, or a run's initial structure)
        first = run.ionic_steps[0]
        electronic = first.get("electronic_steps") or [None]
        dos.total_energy = ionic_step_energy(first, electronic[-1])
        dos.energy_source = vasprun_energy_source(n_steps) if dos.total_energy is not None else ""
    return dos
