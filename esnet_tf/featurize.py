"""Featurizer: any reader's `ProjectedDOS` -> the IS-DOS example of DESIGN.md section 1.

- energies aligned to E_F (E - E_F), resampled by linear interpolation onto the grid, zero
  outside the computed range;
- channels s, py, pz, px, dxy, dyz, dz2, dxz, dx2-y2 mapped by name; f channels dropped and
  recorded in metadata;
- non-spin-polarised input: up = down = total / 2;
- divided by the number of atoms: states / eV / atom;
- composition: atomic fraction of Z = 1..118;
- energies (spec v2): `is_energy_per_atom` = the source's IS total energy / atoms (eV/atom) and
  `is_formation_energy_per_atom` against elemental references of the same code (eV/atom): the
  producing engine's own (GPAW: the data directory's provenance.json), else the `references` the
  caller names (`esnet_tf.references.load_references`; `--references FILE`); NaN where unknown.

CLI: `esnet featurize PATH... --out features.npz` (`esnet_tf.cli.featurize`).
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from esnet_tf.atomic import atomic_path
from esnet_tf.isdos import (IS_ENERGY, IS_FORMATION_ENERGY, N_ELEMENTS, PAPER_GRID, DOSInputError, EnergyGrid,
                            ISDOSExample, ProjectedDOS, negative_dos_floor)
from esnet_tf.readers import read_dos, source_kind

_STRIP = (".gpawdos.npz", ".gz", ".xml", ".json")
_GENERIC = {"vasprun", "doscar"}


def default_id(path: Path, root: Path | None = None) -> str:
    """Example id from a path: relative to `root` when walked, suffixes stripped."""
    path = Path(path)
    rel = path.relative_to(root) if root is not None and path != root else Path(path.name)
    name = rel.as_posix()
    for suf in _STRIP:
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
    if root is None and Path(name).name.lower() in _GENERIC:  # e.g. run1/vasprun.xml.gz -> run1/vasprun
        name = f"{path.parent.name}/{Path(name).name}" if path.parent.name else name
    return name


def composition_vector(structure) -> np.ndarray:
    """Atomic fractions of Z = 1..118 (float32, sums to 1)."""
    return _fractions(structure.composition)


def _fractions(comp) -> np.ndarray:
    """`composition_vector` of a pymatgen Composition."""
    vec = np.zeros(N_ELEMENTS, dtype=np.float64)
    for el, amt in comp.element_composition.items():
        vec[el.Z - 1] += amt
    return (vec / vec.sum()).astype(np.float32)


def is_energies(dos: ProjectedDOS, references: Mapping[str, float] | None = None) -> tuple[float, float, str, tuple]:
    """(is_energy_per_atom, is_formation_energy_per_atom (eV/atom, NaN where unknown), their source, warnings).

    The formation energy uses the producing code's own references (`dos.references`) when the reader
    found them, else `references` (the user's, for the same code and settings)."""
    from esnet_tf.references import formation_energy_per_atom

    if dos.total_energy is None or not np.isfinite(dos.total_energy):
        return float("nan"), float("nan"), "", ()
    n_atoms = len(dos.structure)
    per_atom = float(dos.total_energy) / n_atoms
    refs, origin = (dos.references, "the engine's elemental references") if dos.references else \
        (references, "the --references file") if references else (None, "")
    if refs is None:
        return per_atom, float("nan"), dos.energy_source, ()
    comp = {el.symbol: float(k) for el, k in dos.structure.composition.element_composition.items()}
    ef, missing = formation_energy_per_atom(float(dos.total_energy), comp, refs)
    notes = (f"no elemental reference for {', '.join(missing)} in {origin}: {IS_FORMATION_ENERGY} unknown",) \
        if missing else ()
    return per_atom, ef, f"{dos.energy_source}; formation energy against {origin}", notes


def featurize_dos(dos: ProjectedDOS, grid: EnergyGrid = PAPER_GRID, id: str | None = None,
                  references: Mapping[str, float] | None = None) -> ISDOSExample:
    """Turn one `ProjectedDOS` into an `ISDOSExample` on `grid` (energies: `is_energies`)."""
    if not np.isfinite(dos.efermi):
        raise DOSInputError(dos.source, f"Fermi level is {dos.efermi} (not a number)",
                            "give the document a finite efermi in eV; IS-DOS is aligned to E_F")
    rel = np.asarray(dos.energies, dtype=np.float64) - dos.efermi
    if rel.ndim != 1 or len(rel) < 2 or np.any(np.diff(rel) <= 0):
        raise DOSInputError(dos.source, "energy axis is not strictly increasing", "the file looks corrupt")
    if not np.all(np.isfinite(dos.pdos)):
        raise DOSInputError(dos.source, "DOS holds NaN or inf values", "the file looks corrupt")
    lowest = float(dos.pdos.min()) if dos.pdos.size else 0.0
    if lowest < negative_dos_floor(dos.pdos):
        raise DOSInputError(dos.source, f"negative DOS values (down to {lowest:.3g} states/eV)",
                            "a DOS is >= 0; the file looks corrupt or was written with a broken smearing")
    x = grid.energies()
    resampled = np.stack([[np.interp(x, rel, ch, left=0.0, right=0.0) for ch in spin] for spin in dos.pdos])
    n_atoms = len(dos.structure)
    resampled = resampled.transpose(0, 2, 1) / n_atoms  # (n_spin, n_points, 9), states/eV/atom
    if resampled.shape[0] == 2:
        up, down = resampled
    else:
        up = down = resampled[0] / 2.0
    comp = dos.structure.composition
    e_atom, e_form, source, notes = is_energies(dos, references)
    return ISDOSExample(
        dos_up=up.astype(np.float32), dos_down=down.astype(np.float32),
        composition=_fractions(comp), id=id or dos.doc_id or Path(dos.source).name,
        formula=comp.reduced_formula, chemsys=comp.chemical_system, n_atoms=n_atoms,
        efermi=float(dos.efermi), spin_polarized=dos.spin_polarized, source=dos.source, code=dos.code,
        f_channels=dos.f_channels, warnings=tuple(dos.warnings) + notes, grid=grid,
        is_energy_per_atom=e_atom, is_formation_energy_per_atom=e_form, energy_source=source)


def featurize_all(path: str | Path, grid: EnergyGrid = PAPER_GRID, id: str | None = None,
                  references: Mapping[str, float] | None = None) -> list[ISDOSExample]:
    """All IS-DOS examples in one file (MP files may hold several documents)."""
    doses = read_dos(path)
    base = id or default_id(Path(path))
    if len(doses) == 1:
        return [featurize_dos(doses[0], grid, id or doses[0].doc_id or base, references)]
    return [featurize_dos(d, grid, d.doc_id or f"{base}#{i}", references) for i, d in enumerate(doses)]


def featurize(path: str | Path, grid: EnergyGrid = PAPER_GRID, id: str | None = None,
              references: Mapping[str, float] | None = None) -> ISDOSExample:
    """The IS-DOS example of one calculation (DESIGN.md section 1).

    `path`: vasprun.xml[.gz], DOSCAR (+POSCAR) file or directory, MP CompleteDos .json[.gz]
    holding one document, or *.gpawdos.npz. `references`: {element: eV/atom} of the same code and
    settings, for the IS formation energy where the source has no references of its own.
    Raises `DOSInputError` naming the file and the fix.
    """
    examples = featurize_all(path, grid, id, references)
    if len(examples) != 1:
        raise DOSInputError(path, f"holds {len(examples)} DOS documents", "use featurize_all() for multi-document files")
    return examples[0]


# ---------------------------------------------------------------- energy arrays (spec v2)

#: the energy arrays every example set carries, (N, 1) float32 eV/atom, NaN where unknown
ENERGY_ARRAYS: tuple[str, ...] = (IS_ENERGY, IS_FORMATION_ENERGY)


def label_energy(row, name: str) -> float:
    """A labels row's energy column `name` (eV/atom); NaN when the table has no such column or it is blank."""
    if row is None:
        return float("nan")
    value = row.get(name) if hasattr(row, "get") else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return float("nan")
    return row.float(name) if hasattr(row, "float") else float(value)


def energy_arrays(examples: Sequence[ISDOSExample], labels: Mapping | None = None) -> dict[str, np.ndarray]:
    """{name: (N, 1) float32 eV/atom} of `ENERGY_ARRAYS` for `examples`: a labels row's column of that name
    where given (`labels` by id), else the example's own value (from its calculation), else NaN."""
    labels = labels or {}
    return {k: np.array([label_energy(labels.get(e.id), k) if np.isfinite(label_energy(labels.get(e.id), k))
                         else e.energy(k) for e in examples], np.float32).reshape(-1, 1) for k in ENERGY_ARRAYS}


def fill_energies(arrays: dict, labels: Mapping | None) -> dict:
    """Give `arrays` (with 'id') the `ENERGY_ARRAYS`, (N, 1) float32 eV/atom: a labels row's column where
    given, else the value already there (e.g. from `esnet featurize`), else NaN. Returns `arrays`."""
    n = len(arrays["id"])
    for k in ENERGY_ARRAYS:
        have = np.asarray(arrays[k], np.float32).reshape(-1, 1) if k in arrays else np.full((n, 1), np.nan, np.float32)
        given = np.array([label_energy((labels or {}).get(str(i)), k) for i in arrays["id"]], np.float32).reshape(-1, 1)
        arrays[k] = np.where(np.isfinite(given), given, have).astype(np.float32)
    return arrays


# ---------------------------------------------------------------- npz I/O (no pickle)

def save_examples(examples: list[ISDOSExample], out: str | Path) -> Path:
    """Write examples to an .npz readable with `np.load(..., allow_pickle=False)`.

    Arrays: dos_up, dos_down (N, n_points, 9) float32 states/eV/atom; composition (N, 118);
    is_energy_per_atom, is_formation_energy_per_atom (N, 1) float32 eV/atom, NaN where unknown;
    id, formula, chemsys, source, code (N,) unicode; n_atoms (N,) int32; efermi (N,) eV;
    spin_polarized (N,) bool; energies (n_points,) E - E_F in eV; metadata_json (N,) unicode.
    """
    out = Path(out)
    if out.suffix != ".npz":
        raise DOSInputError(out, "output must end in .npz", "pass --out FILE.npz")
    grid = examples[0].grid if examples else PAPER_GRID
    n = grid.n_points
    with atomic_path(out) as tmp, tmp.open("wb") as fh:  # never a partial .npz at `out`
        _savez(fh, examples, grid, n)
    return out


def _savez(fh, examples: list[ISDOSExample], grid: EnergyGrid, n: int) -> None:
    np.savez_compressed(
        fh,
        dos_up=np.stack([e.dos_up for e in examples]) if examples else np.zeros((0, n, 9), np.float32),
        dos_down=np.stack([e.dos_down for e in examples]) if examples else np.zeros((0, n, 9), np.float32),
        composition=np.stack([e.composition for e in examples]) if examples else np.zeros((0, N_ELEMENTS), np.float32),
        **{k: np.array([[e.energy(k)] for e in examples], np.float32).reshape(-1, 1) for k in (IS_ENERGY, IS_FORMATION_ENERGY)},
        id=np.array([e.id for e in examples], dtype=str), formula=np.array([e.formula for e in examples], dtype=str),
        chemsys=np.array([e.chemsys for e in examples], dtype=str),
        source=np.array([e.source for e in examples], dtype=str), code=np.array([e.code for e in examples], dtype=str),
        n_atoms=np.array([e.n_atoms for e in examples], dtype=np.int32),
        efermi=np.array([e.efermi for e in examples], dtype=np.float64),
        spin_polarized=np.array([e.spin_polarized for e in examples], dtype=bool),
        energies=grid.energies().astype(np.float32),
        metadata_json=np.array([json.dumps(e.metadata()) for e in examples], dtype=str),
    )


#: the arrays of a features .npz (`save_examples`); `load_examples` reads these and no other member
FEATURE_ARRAYS = ("dos_up", "dos_down", "composition", IS_ENERGY, IS_FORMATION_ENERGY, "id", "formula", "chemsys",
                  "source", "code", "n_atoms", "efermi", "spin_polarized", "energies", "metadata_json")


def load_examples(path: str | Path) -> dict[str, np.ndarray]:
    """Read an .npz written by `save_examples` (or `esnet featurize`) without pickle: only the arrays
    `save_examples` writes, within the per-file limit of `esnet_tf.readers.limits.load_npz`."""
    from esnet_tf.readers.limits import InputLimitError, load_npz

    path = Path(path)
    try:
        arrays = load_npz(path, FEATURE_ARRAYS)
    except InputLimitError:
        raise
    except Exception as exc:
        raise DOSInputError(path, f"cannot read features npz ({type(exc).__name__}: {exc})",
                            "write it with `esnet featurize --out`") from None
    for key in ("dos_up", "dos_down", "composition", "id"):
        if key not in arrays:
            raise DOSInputError(path, f"missing array '{key}'", "write it with `esnet featurize --out`")
    for key in (IS_ENERGY, IS_FORMATION_ENERGY):  # files written before spec v2: unknown (NaN)
        if key in arrays:
            arrays[key] = np.asarray(arrays[key], np.float32).reshape(-1, 1)
        else:
            arrays[key] = np.full((len(arrays["id"]), 1), np.nan, np.float32)
    return arrays


# ---------------------------------------------------------------- many inputs

def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def collect_inputs(paths: list[str], notes: list[str] | None = None, *, follow_symlinks: bool = False,
                   errors: list[DOSInputError] | None = None) -> list[tuple[Path, Path | None]]:
    """Expand directories (walked recursively) into (file, root) pairs; files pass through.

    A walked folder holding both a vasprun.xml and a DOSCAR holds one calculation: only the
    vasprun.xml is read (one example per calculation), and the DOSCAR is named in `notes`.

    Symbolic links: a path given explicitly is always followed. Inside a walked directory, a link
    to a directory that lies inside the walked root is skipped (its files are read at their real
    path), and a link (to a file or a directory) that leads outside the root is skipped unless
    `follow_symlinks`: a listing never leaves the directory it was given without being asked to.
    Each skipped link is named in `notes`; with `follow_symlinks` a directory reached twice (a
    link loop) is walked once. A directory that cannot be listed goes to `errors`.
    """
    out: list[tuple[Path, Path | None]] = []
    for p in map(Path, paths):
        if p.is_dir() and source_kind(p) is None or p.is_dir() and any(x.is_dir() for x in p.iterdir()):
            root = p.resolve()
            visited: set[Path] = set()

            def unreadable(exc: OSError, top: Path = p) -> None:
                if errors is not None:
                    errors.append(DOSInputError(exc.filename or top, f"cannot list this directory ({exc.strerror})",
                                                "check its permissions; its calculations were not read"))

            for dirpath, dirnames, filenames in os.walk(p, followlinks=follow_symlinks, onerror=unreadable):
                here = Path(dirpath)
                visited.add(here.resolve())
                dirnames.sort()
                for d in list(dirnames):
                    link = here / d
                    if not link.is_symlink():
                        continue
                    real = link.resolve()
                    why = ("its target lies inside the walked directory: read there" if _inside(real, root)
                           else f"it leads outside {p} (to {real}): pass it explicitly or use --follow-symlinks"
                           if not follow_symlinks else "" if real not in visited else "already walked (a link loop)")
                    if _inside(real, root) or not follow_symlinks or real in visited:
                        dirnames.remove(d)
                        if notes is not None:
                            notes.append(f"{link}: symbolic link to a directory skipped: {why}")
                    else:
                        visited.add(real)
                found = []
                for f in sorted(filenames):
                    fp = here / f
                    if source_kind(fp) is None:
                        continue
                    if fp.is_symlink() and not follow_symlinks and not _inside(fp.resolve(), root):
                        if notes is not None:
                            notes.append(f"{fp}: symbolic link skipped: it leads outside {p} (to {fp.resolve()}): "
                                         "pass it explicitly or use --follow-symlinks")
                        continue
                    found.append(fp)
                kinds = {source_kind(f) for f in found}
                for fp in found:
                    if source_kind(fp) == "doscar" and "vasprun" in kinds:
                        if notes is not None:
                            notes.append(f"{fp}: same calculation as the vasprun.xml beside it; read that one only")
                        continue
                    out.append((fp, p))
        else:
            out.append((p, None))
    return out


#: `featurize_paths(workers=None)` featurizes on several processes from this many files on (the
#: spawned processes take ~0.6 s to start: 80 GPAW files took 1.3 s on 2 processes, 0.7 s on one)
AUTO_PARALLEL_FILES = 256


def default_workers() -> int:
    """Processes for featurizing many files: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _featurize_file(job: tuple) -> tuple[list[ISDOSExample] | None, tuple | None]:
    """One file -> (examples, None) or (None, (path, problem, fix)); module level so a process pool can run it.
    `job`: (path, root, grid, references or None)."""
    path, root, grid, references = job
    try:
        try:
            return featurize_all(path, grid, id=default_id(path, root) if root else None, references=references), None
        except (DOSInputError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a reader library failing on a malformed file: one line, not a traceback
            raise DOSInputError(path, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                                "the file looks corrupt or incomplete") from None
    except DOSInputError as exc:
        return None, (exc.path, exc.problem, exc.fix)


def featurize_paths(paths: Sequence[str | Path], grid: EnergyGrid = PAPER_GRID, *, progress: bool = True,
                    on_result: Callable[[Path, list[ISDOSExample] | None, DOSInputError | None], None] | None = None,
                    on_note: Callable[[str], None] | None = None,
                    workers: int | None = None,
                    references: Mapping[str, float] | None = None,
                    follow_symlinks: bool = False) -> tuple[list[ISDOSExample], list[str]]:
    """Featurize files and directories (walked); returns (examples, one-line failures).

    A file that cannot become IS-DOS (or does not exist) is reported in the failures (and to
    `on_result`), not raised; files left out as duplicates of a calculation go to `on_note`.
    Shows a progress bar over files. `workers` processes share the files (single-threaded each,
    results in input order, the same as serial); None = `default_workers()` from
    AUTO_PARALLEL_FILES files on, else 1. `references`: {element: eV/atom} for the IS formation
    energy of files whose code brings no references of its own (`featurize`). Symbolic links met
    while walking: `collect_inputs` (skipped and named in the notes unless `follow_symlinks`).
    """
    from tqdm.auto import tqdm

    from esnet_tf.readers import SUPPORTED

    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    notes: list[str] = []
    walk_errors: list[DOSInputError] = []
    inputs = collect_inputs([str(p) for p in paths], notes, follow_symlinks=follow_symlinks, errors=walk_errors)
    for note in notes:
        if on_note is not None:
            on_note(note)
    examples: list[ISDOSExample] = []
    failures: list[str] = []

    def fail(path: Path, exc: DOSInputError) -> None:
        failures.append(str(exc))
        if on_result is not None:
            on_result(path, None, exc)

    for exc in walk_errors:  # a directory that could not be listed: its calculations are missing
        fail(Path(exc.path), exc)

    for p in map(Path, paths):  # a directory that holds nothing readable is a failure, not silence
        if p.is_dir() and not any(root == p or f == p for f, root in inputs):
            fail(p, DOSInputError(p, "no DFT output found in this directory", f"expected {SUPPORTED}"))
    seen: dict[Path, Path] = {}
    jobs: list[tuple] = []
    for path, root in inputs:
        real = path.resolve()
        if real in seen:  # the same calculation twice would become two examples with one id
            fail(path, DOSInputError(path, f"given twice (also as {seen[real]})", "pass each calculation once"))
            continue
        seen[real] = path
        jobs.append((path, root, grid, dict(references) if references else None))
    if workers is None:
        workers = default_workers() if len(jobs) >= AUTO_PARALLEL_FILES else 1
    workers = min(workers, max(1, len(jobs)))
    bar = tqdm(total=len(jobs), desc="featurize", unit="file",
               disable=True if not progress or len(jobs) < 2 else None)
    with _pool(workers) as pool:
        results = (pool.imap(_featurize_file, jobs, chunksize=max(1, min(32, len(jobs) // (8 * workers))))
                   if pool is not None else map(_featurize_file, jobs))
        for (path, *_), (found, error) in zip(jobs, results):
            bar.update(1)
            if error is not None:
                fail(path, DOSInputError(*error))
                continue
            examples.extend(found)
            if on_result is not None:
                on_result(path, found, None)
    bar.close()
    examples, duplicates = unique_ids(examples)
    for exc in duplicates:
        fail(Path(exc.path), exc)
    return examples, failures


@contextlib.contextmanager
def _pool(workers: int):
    """A pool of `workers` fresh (spawned, single-threaded) processes, or None for 1: forking a process
    that has TensorFlow loaded is unsafe, and each file is one reader call."""
    if workers <= 1:
        yield None
        return
    import multiprocessing

    from esnet_tf.threads import inherited_thread_env

    with inherited_thread_env(1):  # inherited by the spawned children
        pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        yield pool
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def unique_ids(examples: list[ISDOSExample]) -> tuple[list[ISDOSExample], list[DOSInputError]]:
    """Make example ids unique: ids derived from paths that collide across files (a/run1/vasprun.xml,
    b/run1/vasprun.xml -> run1/vasprun twice) are re-derived relative to the files' common folder
    (a/run1/vasprun, b/run1/vasprun); a collision that remains (a repeated Materials Project
    task_id) is returned as an error and the later example left out."""
    import dataclasses
    from collections import defaultdict

    by_id: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_id[e.id].append(i)
    renamed = list(examples)
    for idx in (v for v in by_id.values() if len(v) > 1):
        sources = [Path(examples[i].source).resolve() for i in idx]
        if len(set(sources)) == len(sources) and all(examples[i].id == default_id(Path(examples[i].source))
                                                     for i in idx):
            root = Path(os.path.commonpath([str(s.parent) for s in sources]))
            for i, src in zip(idx, sources):
                renamed[i] = dataclasses.replace(examples[i], id=default_id(src, root))
    out, failures, first = [], [], {}
    for e in renamed:
        if e.id in first:
            failures.append(DOSInputError(e.source, f"duplicate example id {e.id!r} (also from {first[e.id]})",
                                          "ids must be unique: give the calculations distinct names or task_ids"))
            continue
        first[e.id] = e.source
        out.append(e)
    return out, failures
