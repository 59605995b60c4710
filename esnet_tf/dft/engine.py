"""GPAW single points, DOS output and relaxations for one structure (runs in a worker).

Everything here runs inside one single-threaded process per structure (see `runner.py`).
Energies are GPAW total energies (eV, relative to GPAW's atomic references; only
differences at identical settings are meaningful).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from esnet_tf.dft.progress import Progress
from esnet_tf.dft.tasks import OPTIMIZER, RELAX_START_IS, Task, relax_start_config

if TYPE_CHECKING:  # annotations only: GPAW and ASE are imported in the worker process
    from ase import Atoms
    from gpaw import GPAW

#: File suffix of the engine's DOS output, read by `esnet_tf.readers.gpaw`.
GPAW_DOS_SUFFIX = ".gpawdos.npz"


class DFTError(RuntimeError):
    """A DFT calculation could not be done (no PAW setup, SCF failure, ...)."""


class SCFNotConverged(DFTError):
    """The SCF did not converge with any of the `attempts` settings the engine had for it."""

    def __init__(self, message: str, attempts: int):
        super().__init__(message)
        self.attempts = attempts


def check_setups(task: Task) -> None:
    """Raise DFTError if an element of the structure has no PAW setup installed."""
    from gpaw.setup_data import search_for_file

    for el in sorted({sp.symbol for sp in task.structure.species}):
        try:
            search_for_file(f"{el}.{task.settings.xc}")
        except (RuntimeError, FileNotFoundError) as exc:
            raise DFTError(
                f"task {task.id}: no GPAW PAW setup for element {el} ({task.settings.xc}); "
                "install one (gpaw install-data) or leave the element out") from exc


def _atoms(task: Task, scale: float = 1.0):
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(task.structure)
    atoms.set_cell(atoms.cell * scale, scale_atoms=True)
    moms = [task.settings.magnetic_moments.get(s, 0.0) for s in atoms.get_chemical_symbols()]
    if task.kind == "molecule":
        moms = [1.0 if s == "O" else m for s, m in zip(atoms.get_chemical_symbols(), moms)]
    atoms.set_initial_magnetic_moments(moms)
    return atoms


def is_spin_polarized(task: Task) -> bool:
    """Spin-polarised when the structure holds a magnetic 3d element, or for molecular O2."""
    syms = {sp.symbol for sp in task.structure.species}
    return bool(syms & set(task.settings.magnetic_moments)) or (task.kind == "molecule" and "O" in syms)


def kpoint_mesh(task: Task) -> tuple[int, int, int]:
    """Gamma-centred mesh of the task's *initial* cell at `kpt_density` (k-points per Å^-1).

    Held fixed for every cell of the EOS scan: a mesh recomputed per scaled cell jumps by one
    division somewhere in the scan, and in metals that jump (tens of meV/atom at these densities)
    would shift the fitted minimum.
    """
    from ase.calculators.calculator import kpts2sizeandoffsets

    size, _ = kpts2sizeandoffsets(density=task.settings.kpt_density, gamma=True, atoms=_atoms(task, 1.0))
    return tuple(int(k) for k in size)


#: GPAW parameters of a single point's attempts, in order: GPAW's defaults with at most
#: FIRST_ATTEMPT_MAXITER iterations, then (only after a KohnShamConvergenceError) a damped Pulay mixer
#: (beta 0.02, 5 old densities, metric weight 100, as GPAW's documentation suggests for hard magnetic
#: and charge-sloshing cases) with a larger iteration cap. A first attempt that converges is computed
#: exactly as with GPAW's defaults.
#: The cap: in the ~700 SCF logs of the demo cache GPAW's default mixer converged within 41 iterations
#: each (median 8), while a sloshing one (Mn3Ni D0_3, 5 s per iteration) spent GPAW's default 333
#: iterations, 28 min, before the damped mixer could start, and the task timed out.
FIRST_ATTEMPT_MAXITER = 120
SCF_ATTEMPTS: tuple[dict, ...] = ({"maxiter": FIRST_ATTEMPT_MAXITER},
                                  {"mixer": {"beta": 0.02, "nmaxold": 5, "weight": 100.0}, "maxiter": 600})


def scf_attempts_available(task: Task) -> int:
    """How many SCF settings the engine tries for `task`: SCF_ATTEMPTS, and for optimizer
    relaxations one more (GPAW's default mixer from the moment of the scan; `relax_optimizer`)."""
    return len(SCF_ATTEMPTS) + (1 if task.relax == "optimizer" else 0)


def _calculator(task: Task, natoms: int, log: Path, mesh: tuple[int, int, int] | None = None, **scf):
    from gpaw import GPAW, PW, FermiDirac
    from gpaw.setup import create_setup

    st = task.settings
    valence = {el.symbol: create_setup(el.symbol, st.xc).Z - create_setup(el.symbol, st.xc).Nc
               for el in task.structure.composition.elements}
    nval = sum(valence[sp.symbol] for sp in task.structure.species)
    nbands = int(np.ceil(nval / 2 * 1.5)) + 4 * natoms
    kpts = (1, 1, 1) if task.kind == "molecule" else {"size": mesh or kpoint_mesh(task), "gamma": True}
    return GPAW(mode=PW(st.ecut), xc=st.xc, kpts=kpts, occupations=FermiDirac(st.smearing),
                spinpol=is_spin_polarized(task), nbands=nbands, txt=str(log), **scf)


def single_point(task: Task, scale: float, log: Path, dos_path: Path | None,
                 mesh: tuple[int, int, int] | None = None) -> dict:
    """SCF at `scale` times the task's lattice; write the DOS if `dos_path` is given.

    `mesh` overrides the k-point mesh (default: `kpoint_mesh(task)`). An SCF that does not converge
    is retried with the next of SCF_ATTEMPTS; `scf_attempt` in the result says which converged (1 =
    GPAW's default mixer).
    """
    from gpaw import KohnShamConvergenceError

    atoms = _atoms(task, scale)
    t0 = time.perf_counter()
    for attempt, scf in enumerate(SCF_ATTEMPTS, 1):
        calc = _calculator(task, len(atoms), log, mesh, **scf)
        atoms.calc = calc
        try:
            energy = float(atoms.get_potential_energy())
            break
        except KohnShamConvergenceError as exc:
            if attempt == len(SCF_ATTEMPTS):
                raise SCFNotConverged(f"task {task.id}: SCF failed at lattice scale {scale:.4f} with each of the "
                               f"{len(SCF_ATTEMPTS)} mixer settings of engine.SCF_ATTEMPTS: "
                               f"{type(exc).__name__}: {exc}", attempts=len(SCF_ATTEMPTS)) from exc
        except Exception as exc:  # GPAW raises others too
            raise DFTError(f"task {task.id}: SCF failed at lattice scale {scale:.4f}: "
                           f"{type(exc).__name__}: {exc}") from exc
    out = {"scale": scale, "energy": energy, "wall_time": time.perf_counter() - t0, "scf_attempt": attempt,
           "efermi": float(calc.get_fermi_level()),
           "magmom": float(calc.get_magnetic_moment()) if is_spin_polarized(task) else 0.0}
    if dos_path is not None:
        write_dos(task, atoms, calc, dos_path, energy)
        out["wall_time"] = time.perf_counter() - t0
    return out


def write_dos(task: Task, atoms: Atoms, calc: GPAW, path: Path, energy: float) -> None:
    """Write the orbital-projected DOS summed over sites (states/eV per cell) as `*.gpawdos.npz`."""
    from gpaw import __version__ as gpaw_version
    from pymatgen.io.ase import AseAtomsAdaptor

    from esnet_tf.readers.gpaw import write_gpaw_dos

    st = task.settings
    rel = np.arange(st.dos_window[0], st.dos_window[1] + 1e-9, st.dos_step)
    pdos = symmetrized_pdos(calc, rel, st.dos_width)
    efermi = float(calc.get_fermi_level())
    structure = AseAtomsAdaptor.get_structure(atoms)
    write_gpaw_dos(path, energies=rel + efermi, efermi=efermi, pdos=_truncate_mantissa(pdos),
                   structure=structure.as_dict(), code=f"GPAW {gpaw_version}",
                   settings_json=st.key(), energy=energy, doc_id=task.id)


def symmetrized_pdos(calc: GPAW, rel_energies: np.ndarray, width: float) -> np.ndarray:
    """m-resolved PDOS (s, p, d; VASP m order) summed over atoms, states/eV per cell.

    Returns (n_spin, 9, n_E) on `rel_energies` (eV relative to E_F). Projections exist only
    on the irreducible k-points, where m-components are not symmetric (bcc Fe gives p_y != p_x);
    the 9x9 projection matrices of each atom are therefore symmetrised with the crystal's
    rotations, rho_a = 1/N_s sum_s R_s rho_{s(a)} R_s^T (as GPAW does for density matrices),
    which reproduces a full-Brillouin-zone calculation. Non-spin-polarised runs give the
    total over both spins (n_spin = 1), as VASP's ISPIN=1 output does.
    """
    from gpaw.dos import DOSCalculator, get_projector_numbers
    from gpaw.new.symmetry import SymmetrizationPlan

    dc = DOSCalculator.from_calculator(calc)  # eigenvalues relative to E_F
    natoms = len(calc.atoms)
    nspins = dc.nspins
    symmetries = calc.dft.ibzwfs.ibz.symmetries
    rot = SymmetrizationPlan(symmetries, [[0, 1, 2]] * natoms).rotations([0, 1, 2])
    atommap = symmetries.atommap_sa
    blocks = []  # (channel offset, projector indices) per atom
    for a in range(natoms):
        per_atom = []
        ch = 0
        for ell in range(3):
            idx = get_projector_numbers(calc.setups[a], ell)
            for p in range(len(idx) // (2 * ell + 1)):
                per_atom.append((ch, idx[p * (2 * ell + 1):(p + 1) * (2 * ell + 1)]))
            ch += 2 * ell + 1
        blocks.append(per_atom)
    n_e = len(rel_energies)
    mat = np.zeros((nspins, natoms, n_e, 81))  # real part of the 9x9 matrices, flattened
    for wf in calc.wfs.kpt_u:
        eps = dc.eig_skn[wf.s][wf.k]
        gauss = np.exp(-((rel_energies[None, :] - eps[:, None]) / width) ** 2) / (np.pi ** 0.5 * width)
        gauss *= dc.weight_k[wf.k]
        for a in range(natoms):
            proj = wf.projections[a]
            for ch, idx in blocks[a]:
                outer = np.zeros((proj.shape[0], 9, 9), complex)
                amp = proj[:, idx]
                n = len(idx)
                outer[:, ch:ch + n, ch:ch + n] = amp.conj()[:, :, None] * amp[:, None, :]
                mat[wf.s, a] += gauss.T @ outer.reshape(len(eps), 81).real
    # diag(R M R^T)_i = sum_jk R_ij R_ik M_jk: only the diagonal is needed
    kdiag = np.einsum("sij,sik->sijk", rot, rot).reshape(len(rot), 9, 81)
    pdos = np.zeros((nspins, 9, n_e))
    for a1 in range(natoms):
        for s, a2 in enumerate(atommap[:, a1]):
            pdos += np.einsum("sef,if->sie", mat[:, a2], kdiag[s], optimize=True)
    pdos /= len(rot)
    return pdos * dc.degeneracy


def _truncate_mantissa(x: np.ndarray, keep_bits: int = 11) -> np.ndarray:
    """float32 copy with only `keep_bits` mantissa bits (relative precision 2**-keep_bits).

    Keeps the committed demo data small (zlib compresses the zeroed bits) at a precision
    far below the DOS's own numerical noise.
    """
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    mask = np.uint32((0xFFFFFFFF << (23 - keep_bits)) & 0xFFFFFFFF)
    return (bits & mask).view(np.float32)


def _parabola_min(points: list[dict]) -> float:
    """Vertex (scale) of the parabola through the lowest point and its two neighbours."""
    pts = sorted(points, key=lambda p: p["scale"])
    i = int(np.argmin([p["energy"] for p in pts]))
    i = min(max(i, 1), len(pts) - 2)
    x = np.array([p["scale"] for p in pts[i - 1:i + 2]])
    y = np.array([p["energy"] for p in pts[i - 1:i + 2]])
    c2, c1, _ = np.polyfit(x, y, 2)
    if c2 <= 0:
        return float(x[np.argmin(y)])
    return float(-c1 / (2 * c2))


def _parabola_curvature(points: list[dict]) -> float:
    """Second derivative d2E/ds2 (eV per cell) of the parabola through the lowest point and its neighbours."""
    pts = sorted(points, key=lambda p: p["scale"])
    i = int(np.argmin([p["energy"] for p in pts]))
    i = min(max(i, 1), len(pts) - 2)
    c2 = np.polyfit([p["scale"] for p in pts[i - 1:i + 2]], [p["energy"] for p in pts[i - 1:i + 2]], 2)[0]
    return float(2 * c2)


def next_eos_scale(points: list[dict], step: float) -> float | None:
    """Next lattice scale of the EOS scan, or None once the lowest energy is bracketed.

    When the lowest point is at an edge of the scan, step outward towards the vertex of the
    parabola through the three lowest-edge points, by 1 to 3 `step`s.
    """
    scales = sorted(p["scale"] for p in points)
    best = min(points, key=lambda p: p["energy"])["scale"]
    if scales[0] < best < scales[-1]:
        return None
    sign = -1.0 if best == scales[0] else 1.0
    jump = sign * (_parabola_min(points) - best) / step
    return best + sign * step * float(np.clip(jump, 1.0, 3.0))


def _journaled_point(task: Task, scale: float, workdir: Path, progress: Progress | None,
                     mesh: tuple[int, int, int] | None = None) -> dict:
    """The single point (no DOS) at `scale`: from the task's progress journal, else computed and journaled.
    `mesh`: the k-point mesh (default `kpoint_mesh(task)`)."""
    done = progress.get("eos_points", []) if progress is not None else []
    for p in done:
        if abs(p["scale"] - scale) < 1e-12:  # scales come from journaled values: the same floats
            return p
    point = single_point(task, scale, workdir / "gpaw.txt", None, mesh=mesh)
    if progress is not None:
        progress.put("eos_points", done + [point])
    return point


def eos_scan(task: Task, is_point: dict, workdir: Path, progress: Progress | None = None,
             mesh: tuple[int, int, int] | None = None) -> tuple[float, list[dict]]:
    """Isotropic lattice scan of `relax_eos` (no final single point): (vertex scale, points).

    `is_point`: the single point at scale 1 of `task.structure`; `mesh`: the k-point mesh (default
    `kpoint_mesh(task)`). With `progress`, points an earlier run of the task finished are taken from its
    journal."""
    st = task.settings
    points = [is_point]
    for s in (1 - st.eos_step, 1 + st.eos_step):
        points.append(_journaled_point(task, s, workdir, progress, mesh))
    for _ in range(st.eos_max_extra):
        nxt = next_eos_scale(points, st.eos_step)
        if nxt is None:
            break
        points.append(_journaled_point(task, nxt, workdir, progress, mesh))
    return _parabola_min(points), points


def relax_eos(task: Task, is_point: dict, workdir: Path, progress: Progress | None = None) -> dict:
    """Isotropic EOS relaxation: scan the lattice constant and refine at the fitted minimum.

    Points at 1 +- eos_step around the IS, extended outward while the lowest point is at the
    edge (towards the extrapolated vertex, 1 to 3 steps at a time); the relaxed structure is
    the vertex of a parabola through the lowest three points
    (energy vs lattice scale), and a single point there (with DOS) gives the RS energy.
    """
    s0, points = eos_scan(task, is_point, workdir, progress)
    rs = single_point(task, s0, workdir / "gpaw.txt", workdir / f"rs{GPAW_DOS_SUFFIX}")
    return {"scale": s0, "energy": rs["energy"], "rs_point": rs, "eos_points": points,
            "structure": _scaled(task, s0)}


def pulay_correction(task: Task, atoms: Atoms, log: Path, mesh: tuple[int, int, int], **scf: Any) -> float:
    """Isotropic stress (eV/Å^3) to add to GPAW's analytic stress at `atoms` (which has a calculator).

    At a fixed plane-wave cutoff the energy that labels and EOS scans use depends on the cell
    through the basis too (Pulay stress); GPAW's analytic stress does not include that, and the new
    GPAW ignores `dedecut`. At 500 eV the gap is large for oxides: ZnO zincblende at its IS gives
    V tr(sigma) = +1.5 eV while the energy's volume derivative is -5.1 eV (the EOS expands the cell
    2.7 %, BFGS on the analytic stress shrank it and raised the energy by 20 meV/atom). The Pulay
    stress is isotropic, so one finite difference of the energy under uniform scaling,
    dE/ds = sum_i dE/d eps_ii, calibrates it: c = (dE/ds - V tr sigma) / (3 V). `scf`: the GPAW SCF
    parameters the relaxation is using (`relax_optimizer`); a KohnShamConvergenceError propagates.
    """
    from gpaw import KohnShamConvergenceError

    e = []
    step = OPTIMIZER.pulay_fd_step
    for f in (1.0 - step, 1.0 + step):
        a = atoms.copy()
        a.set_cell(atoms.cell * f, scale_atoms=True)
        a.set_initial_magnetic_moments(atoms.get_initial_magnetic_moments())
        a.calc = _calculator(task, len(a), log, mesh, **scf)
        try:
            e.append(float(a.get_potential_energy()))
        except KohnShamConvergenceError:
            raise
        except Exception as exc:
            raise DFTError(f"task {task.id}: SCF failed in the stress calibration: "
                           f"{type(exc).__name__}: {exc}") from exc
    volume = atoms.get_volume()
    dEds = (e[1] - e[0]) / (2 * step)
    return float((dEds - volume * np.trace(atoms.get_stress(voigt=False))) / (3 * volume))


def _moments_of_nearest_point(atoms, points: list[dict], s0: float) -> np.ndarray:
    """Initial moments of `atoms` scaled to the total moment (muB) that the EOS point nearest the
    vertex `s0` converged to (unchanged when they sum to zero)."""
    near = min(points, key=lambda p: abs(p["scale"] - s0))
    start = atoms.get_initial_magnetic_moments()
    total = float(start.sum())
    return start * (near["magmom"] / total) if abs(total) > 1e-9 else start


class _VolumeRunaway(RuntimeError):
    pass


def _bfgs_state(opt, steps_before: int) -> dict:
    """What BFGS needs to continue in another process: its coordinates (positions and cell
    deformation of the filter), Hessian, previous point, step limit and step count."""
    arr = lambda a: None if a is None else np.asarray(a).tolist()  # noqa: E731
    return {"x": arr(opt.optimizable.get_x()), "hessian": arr(opt.state.hessian) if opt.state is not None else None,
            "pos0": arr(opt.pos0), "forces0": arr(opt.forces0), "maxstep": float(opt.maxstep),
            "nsteps": steps_before + int(opt.nsteps)}


def _restore_bfgs(opt, saved: dict) -> int:
    """Put a journaled `_bfgs_state` back into a new BFGS on the same filter; returns its step count."""
    from ase.optimize.bfgs import BFGSMethod

    opt.optimizable.set_x(np.array(saved["x"]))
    if saved["hessian"] is not None:
        opt.state = BFGSMethod(np.array(saved["hessian"]))
        opt.pos0, opt.forces0 = np.array(saved["pos0"]), np.array(saved["forces0"])
    opt.maxstep = saved["maxstep"]
    return int(saved["nsteps"])


def _symmetrized_like(reference, structure):
    """`structure` (the same sites as `reference`, moved) with its cell and positions projected onto the
    space group of `reference` at symprec 1e-3, in the reference's setting (ASE FixSymmetry applied to the
    displacement from `reference`): exact to rounding where the reference is.

    A potential evaluated in float32 leaves noise of ~1e-7 in cell and positions (hcp Be from CHGNet:
    P6_3/mmc at symprec 1e-5, P-1 at 1e-7); GPAW's own symmetry analysis then failed
    (SymmetryAnalysisBug), also after ASE's refine_symmetry, which moves the origin. The prototype-built
    IS is exact.
    """
    from ase.constraints import FixSymmetry
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(reference)
    atoms.set_constraint(FixSymmetry(atoms, symprec=1e-3))
    moved = AseAtomsAdaptor.get_atoms(structure)
    atoms.set_cell(moved.cell, scale_atoms=True, apply_constraint=True)
    atoms.set_positions(moved.positions, apply_constraint=True)
    atoms.set_constraint()
    out = AseAtomsAdaptor.get_structure(atoms)
    for prop in list(out.site_properties):
        out.remove_site_property(prop)
    return out


def uip_start(task: Task, progress: Progress | None = None) -> dict:
    """The universal potential's relaxation of the task's IS, where `task.relax_start` starts the DFT
    relaxation (`tasks.relax_start_config`: CHGNet with `esnet_tf.uip`'s settings, FIRE on positions and
    cell, one torch thread). Journaled under "uip_start", so a resumed task reuses it.

    Returns {"relax_start", "structure" (pymatgen dict), "energy_per_atom" (the potential's, eV/atom),
    "steps", "converged", "stop_reason", "cpu_time_s", "wall_time_s" (the relaxation, s),
    "total_cpu_time_s", "total_wall_time_s" (with importing torch and loading the weights), "package_version",
    "settings",
    "scale" ((V_start / V_IS)^(1/3))}. Raises DFTError when the potential fails, or when its structure
    has another space group than the IS (symprec 1e-3): the DFT relaxation keeps the IS's symmetry. The
    structure is made exactly symmetric first, in the IS's setting (`_symmetrized_like`).
    Torch and the potential are imported here only (the worker of an IS-start task never loads them).
    """
    saved = progress.get("uip_start") if progress is not None else None
    if saved is not None and saved.get("relax_start") == task.relax_start:
        return saved
    import tempfile

    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from esnet_tf.errors import UserError
    from esnet_tf.uip import relax_structures

    config = relax_start_config(task.relax_start)
    c0, t0 = time.process_time(), time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="esnet-uip-start-") as tmp:  # no cache outside the task
            (res,) = relax_structures([(task.id, task.structure)], config, cache_dir=tmp, progress=False)
    except UserError as exc:  # the extra is not installed
        raise DFTError(f"task {task.id}: relax start {task.relax_start}: {exc}") from exc
    if res.error or res.structure is None:
        raise DFTError(f"task {task.id}: the {task.relax_start} relaxation of the IS failed: {res.error}; "
                       "compute the task with relax start 'is'")
    start = _symmetrized_like(task.structure, Structure.from_dict(res.structure))
    sg_is = SpacegroupAnalyzer(task.structure, symprec=1e-3).get_space_group_symbol()
    sg_start = SpacegroupAnalyzer(start, symprec=1e-3).get_space_group_symbol()
    if sg_is != sg_start:
        raise DFTError(f"task {task.id}: the {task.relax_start} relaxation changed the space group {sg_is} of the "
                       f"IS to {sg_start}; compute the task with relax start 'is'")
    record = {"relax_start": task.relax_start, "structure": start.as_dict(), "energy_per_atom": res.energy_per_atom,
              "steps": res.steps, "converged": res.converged, "stop_reason": res.stop_reason,
              "cpu_time_s": res.cpu_time_s, "wall_time_s": res.wall_time_s,
              # with loading torch and the potential's weights (the relaxation alone is cpu_time_s)
              "total_cpu_time_s": time.process_time() - c0, "total_wall_time_s": time.perf_counter() - t0,
              "package_version": res.package_version, "settings": config.key(),
              "scale": float((start.volume / task.structure.volume) ** (1.0 / 3.0))}
    if progress is not None:
        progress.put("uip_start", record)
    return record


def relax_optimizer(task: Task, workdir: Path, is_point: dict | None = None, progress: Progress | None = None) -> dict:
    """General relaxation: an isotropic EOS scan, then BFGS on positions and cell (FrechetCellFilter),
    then a DOS single point.

    GPAW's analytic stress misses the Pulay stress of the fixed plane-wave cutoff
    (`pulay_correction`), so BFGS on it alone would not minimise the energy the labels use. The
    volume is therefore first found from the energy itself (the EOS scan of `relax_eos`, at the
    initial internal coordinates and c/a); at the scan's vertex dE/ds = 0, so the isotropic
    correction is c = -tr(sigma)/3 there, passed to the filter as `scalar_pressure`. BFGS then
    relaxes c/a, internal coordinates and the remaining volume change. At the end the correction
    is recalibrated by a finite difference of the energy; when its change would move the energy by
    more than `pulay_drift_tol` another stage follows (at most `max_stages`). A volume leaving
    `volume_range` of the scan's vertex stops BFGS (flagged not converged); settings in
    `tasks.OPTIMIZER`. The k-point mesh of the initial cell is held throughout, including the final
    single point. The space group of the initial structure is kept (ASE FixSymmetry). `scale` is (V_RS / V_IS)^(1/3).

    With `progress`, the EOS points, the corrections and the BFGS state after every step are
    journaled, and a rerun of a killed task continues from them (the SCF in flight is redone).
    The SCFs of the relaxation use the mixer settings of SCF_ATTEMPTS in turn: one that does not
    converge switches this and every later SCF of the task to the next, and the relaxation continues
    from its journal; `scf_attempt` in the result says which was used last. The last attempt
    (`scf_attempts_available`) is GPAW's default mixer started from the magnetic moment that the
    scan point nearest the vertex converged to: hcp Fe, whose moment collapses between the scan's
    points, oscillated between high- and low-moment states from the 3 muB start with both mixers.

    A task whose `relax_start` names a universal potential starts from that potential's relaxation of
    the IS (`uip_start`): the EOS scan runs around that structure (a single point there first, scales
    relative to it in `eos_points`), then BFGS as above. The k-point mesh stays the IS's, so the energies
    are those of the same settings as an IS start's; `scale` stays relative to the IS; the result's
    "uip_start" records the start.
    """
    from gpaw import KohnShamConvergenceError
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS
    from pymatgen.io.ase import AseAtomsAdaptor

    fmax, steps, max_stages = OPTIMIZER.fmax, OPTIMIZER.steps, OPTIMIZER.max_stages
    mesh = kpoint_mesh(task)  # of the IS, also for a start from another structure
    start = None
    if task.relax_start != RELAX_START_IS:
        from pymatgen.core import Structure

        start = uip_start(task, progress)
        start_task = Task(id=task.id, structure=Structure.from_dict(start["structure"]), settings=task.settings,
                          kind=task.kind, prototype=task.prototype)
        start_point = _journaled_point(start_task, 1.0, workdir, progress, mesh)
    else:
        start_task = task
        start_point = is_point if is_point is not None else single_point(task, 1.0, workdir / "gpaw.txt", None)
    s0, points = eos_scan(start_task, start_point, workdir, progress, mesh)
    atoms = _atoms(start_task, s0)
    attempt = int(progress.get("optimizer_scf_attempt", 1)) if progress is not None else 1
    if attempt <= len(SCF_ATTEMPTS):
        scf = SCF_ATTEMPTS[attempt - 1]
    else:
        scf = {"maxiter": FIRST_ATTEMPT_MAXITER}  # GPAW's default mixer
        atoms.set_initial_magnetic_moments(_moments_of_nearest_point(atoms, points, s0))
    # GPAW symmetrises with the symmorphic operations only; hcp, wurtzite, NiAs, rutile and anatase are
    # non-symmorphic, and noise in the unconstrained force components lowers their symmetry (tiny-settings
    # hcp Mg ended in P-3m1). FixSymmetry symmetrises forces and stress with the full space group.
    from ase.constraints import FixSymmetry

    atoms.set_constraint(FixSymmetry(atoms, symprec=1e-3))  # of the vertex, also when resumed
    v_ref = atoms.get_volume()
    saved = dict((progress.get("bfgs") if progress is not None else None) or {})
    if saved:  # the start of the stage in progress (or, when done, the relaxed geometry)
        atoms.set_cell(np.array(saved["cell"]), scale_atoms=False, apply_constraint=False)
        atoms.set_positions(np.array(saved["positions"]), apply_constraint=False)
    atoms.calc = _calculator(task, len(atoms), workdir / "gpaw.txt", mesh, **scf)
    fd_log = workdir / "gpaw_fd.tmp"  # ignored by git, like gpaw.txt

    def guard():
        low, high = OPTIMIZER.volume_range
        if not low < atoms.get_volume() / v_ref < high:
            raise _VolumeRunaway

    curvature = max(_parabola_curvature(points), 1e-3)  # d2E/ds2 of the scan, eV per cell
    corrections, drifts = list(saved.get("corrections", [])), list(saved.get("drifts", []))
    n_steps, converged = int(saved.get("n_steps", 0)), bool(saved.get("converged", False))
    done = saved.get("done", False)

    def journal(stage_cell, stage_positions, **extra) -> None:
        if progress is not None:
            progress.put("bfgs", {"corrections": corrections, "drifts": drifts, "n_steps": n_steps,
                                  "converged": converged, "done": done, "cell": stage_cell,
                                  "positions": stage_positions, **extra})

    try:
        if not corrections:
            corrections.append(-float(np.trace(atoms.get_stress(voigt=False))) / 3.0)
        while not done:
            if len(corrections) > max_stages:
                converged = False  # still drifting after max_stages
                break
            stage_cell, stage_positions = atoms.cell.array.tolist(), atoms.positions.tolist()
            opt = BFGS(FrechetCellFilter(atoms, scalar_pressure=corrections[-1]), logfile=str(workdir / "relax.log"))
            before = _restore_bfgs(opt, saved["opt"]) if saved.get("opt") else 0
            saved.pop("opt", None)
            opt.attach(guard)
            # called only by this stage's opt.run below, so the loop variables are this stage's
            opt.attach(lambda: journal(stage_cell, stage_positions, opt=_bfgs_state(opt, before)))  # noqa: B023
            try:
                converged = bool(opt.run(fmax=fmax, steps=steps - n_steps - before))
            except _VolumeRunaway:
                converged = False
                n_steps += before + opt.nsteps
                break
            n_steps += before + opt.nsteps
            corrections.append(pulay_correction(task, atoms, fd_log, mesh, **scf))
            # energy cost of the stress error dc: 1/2 V dc^2 / B, with B V = E''(s) / 9 from the scan
            vol = atoms.get_volume()
            drift = 4.5 * vol ** 2 * (corrections[-1] - corrections[-2]) ** 2 / curvature / len(atoms)
            drifts.append(drift)
            if not converged or drift <= OPTIMIZER.pulay_drift_tol or n_steps >= steps:
                break
            journal(atoms.cell.array.tolist(), atoms.positions.tolist())  # the next stage starts here
        done = True
        journal(atoms.cell.array.tolist(), atoms.positions.tolist())
    except DFTError:
        raise
    except KohnShamConvergenceError as exc:
        if progress is not None and attempt < scf_attempts_available(task):
            progress.put("optimizer_scf_attempt", attempt + 1)  # and continue from the journal
            return relax_optimizer(task, workdir, is_point, progress)
        raise SCFNotConverged(f"task {task.id}: an SCF of the optimizer relaxation failed with SCF setting "
                              f"{attempt} of the engine's {scf_attempts_available(task)}: "
                              f"{type(exc).__name__}: {exc}", attempts=attempt) from exc
    except Exception as exc:
        raise DFTError(f"task {task.id}: relaxation failed: {type(exc).__name__}: {exc}") from exc
    fd_log.unlink(missing_ok=True)
    atoms.set_constraint()
    relaxed = AseAtomsAdaptor.get_structure(atoms)
    rs_task = Task(id=task.id, structure=relaxed, settings=task.settings, kind=task.kind)
    rs = single_point(rs_task, 1.0, workdir / "gpaw.txt", workdir / f"rs{GPAW_DOS_SUFFIX}", mesh=mesh)
    scale = float((relaxed.volume / task.structure.volume) ** (1.0 / 3.0))
    return {"scale": scale, "energy": rs["energy"], "rs_point": rs, "converged": converged,
            "n_steps": n_steps, "structure": relaxed.as_dict(), "pulay_corrections": corrections,
            "pulay_drift_energy": drifts,
            "eos_points": points, "eos_vertex": s0, "scf_attempt": attempt, "uip_start": start}


def _scaled(task: Task, scale: float) -> dict:
    s = task.structure.copy()
    s.scale_lattice(s.volume * scale ** 3)
    return s.as_dict()


def compute(task: Task, workdir: Path) -> dict:
    """Run the task in `workdir`: IS single point with DOS, then the requested relaxation."""
    t_start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    check_setups(task)
    # relaxations journal their finished SCFs (progress.py): a killed run continues from them
    progress = Progress(task, workdir) if task.relax != "none" else None
    c0 = time.process_time()
    is_point = progress.get("is_point") if progress is not None else None
    if is_point is None or not (workdir / f"is{GPAW_DOS_SUFFIX}").is_file():
        is_point = single_point(task, 1.0, workdir / "gpaw.txt", workdir / f"is{GPAW_DOS_SUFFIX}")
        is_point["cpu_time"] = time.process_time() - c0
        if progress is not None:
            progress.put("is_point", is_point)
    c_is = is_point.get("cpu_time", time.process_time() - c0)
    result = {
        "id": task.id, "prototype": task.prototype, "kind": task.kind,
        "formula": task.structure.composition.reduced_formula, "n_atoms": len(task.structure),
        "composition": {el.symbol: float(n) for el, n in task.structure.composition.items()},
        "spin_polarized": is_spin_polarized(task),
        "is_energy": is_point["energy"], "is_wall_time": is_point["wall_time"],
        "is_dos": f"is{GPAW_DOS_SUFFIX}", "is_magmom": is_point["magmom"],
        "is_cpu_time": c_is,
    }
    if task.relax != "none":
        rel = (relax_eos(task, is_point, workdir, progress) if task.relax == "eos"
               else relax_optimizer(task, workdir, is_point, progress))
        spent = progress.spent()  # of every run of this task
        result.update({
            "rs_energy": rel["energy"], "rs_structure": rel["structure"],
            "relax_wall_time": spent["wall"] - is_point["wall_time"], "relax_cpu_time": spent["cpu"] - c_is,
            "rs_dos": f"rs{GPAW_DOS_SUFFIX}",
            "rs_scale": rel["scale"], "rs_magmom": rel["rs_point"]["magmom"],
            "eos_points": [{k: p[k] for k in ("scale", "energy", "wall_time")}
                           for p in rel.get("eos_points", [])],
            "relax_kind": task.relax,
        })
        if task.relax == "optimizer":
            result.update(relax_converged=rel["converged"], relax_steps=rel["n_steps"],
                          relax_fmax=OPTIMIZER.fmax, optimizer=asdict(OPTIMIZER),
                          pulay_corrections_eV_per_A3=rel["pulay_corrections"],
                          pulay_drift_eV_per_atom=rel["pulay_drift_energy"], eos_vertex=rel["eos_vertex"],
                          relax_start=task.relax_start)
            if rel.get("uip_start") is not None:  # the start structure, and the potential's steps and CPU time
                result["uip_start"] = rel["uip_start"]
    fallback = [{"point": "is", "scale": 1.0}] if is_point["scf_attempt"] > 1 else []
    if task.relax != "none":
        fallback += [{"point": "eos", "scale": p["scale"]} for p in rel.get("eos_points", [])
                     if p is not is_point and p["scf_attempt"] > 1]
        fallback += [{"point": "rs", "scale": rel["scale"]}] if rel["rs_point"]["scf_attempt"] > 1 else []
        fallback += [{"point": "optimizer", "attempt": rel["scf_attempt"]}] if rel.get("scf_attempt", 1) > 1 else []
    if fallback:  # absent when every SCF converged with GPAW's default mixer
        result["scf_fallback"] = fallback
    # the *_cpu_time fields (this single-threaded process's CPU seconds) are the cost without the
    # stretching that other load on the machine adds to the *_wall_time fields
    if progress is None:
        result["wall_time"], result["cpu_time"] = time.perf_counter() - t_start, time.process_time() - c0
    else:
        spent = progress.spent()
        result["wall_time"], result["cpu_time"] = spent["wall"], spent["cpu"]
        if progress.runs > 1:
            result["progress_runs"] = progress.runs  # computed in this many runs (killed, then resumed)
    return result
