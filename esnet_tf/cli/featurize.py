"""`esnet featurize PATH... --out features.npz`: DFT outputs -> IS-DOS arrays (no pickle)."""
from __future__ import annotations

import argparse
import sys

from esnet_tf.atomic import OVERWRITE_HELP, refuse_existing
from esnet_tf.isdos import PAPER_GRID


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Read DFT outputs and write IS-DOS: spin-resolved, orbital-projected DOS summed over "
        "sites per atom (states/eV/atom) on E - E_F in eV, plus composition fractions. "
        "Inputs: vasprun.xml[.gz], DOSCAR (+POSCAR) files or directories, Materials Project "
        "CompleteDos .json[.gz], *.gpawdos.npz; directories are walked. Each example also carries the IS "
        "total energy (is_energy_per_atom, eV/atom) where the source holds it and the IS formation energy "
        "(is_formation_energy_per_atom) against elemental references of the same code: GPAW's own "
        "(provenance.json of `esnet dft`), else --references; NaN where unknown.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories")
    p.add_argument("--out", default="features.npz", help="output .npz (numpy, no pickle)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.format("the --out file"))
    p.add_argument("--follow-symlinks", action="store_true",
                   help="in the directories given, also walk symbolic links that lead outside them (default: such "
                   "links are skipped and listed; links inside a directory are read at their real path; paths "
                   "given on the command line are always followed)")
    p.add_argument("--e-min", type=float, default=PAPER_GRID.e_min, help="grid start, E - E_F in eV")
    p.add_argument("--e-max", type=float, default=PAPER_GRID.e_max, help="grid end, E - E_F in eV")
    p.add_argument("--n-points", type=int, default=PAPER_GRID.n_points, help="grid points")
    p.add_argument("--references", metavar="FILE", default=None,
                   help="elemental reference energies of the same code and settings as the inputs, for "
                        "is_formation_energy_per_atom: CSV element,energy_per_atom (eV/atom) or Materials Project "
                        "ComputedEntry JSON[.gz] (GPAW inputs of `esnet dft` need none)")
    p.add_argument("--quiet", action="store_true", help="no per-file lines or progress bar")
    p.add_argument("--workers", type=int, default=None,
                   help="processes featurizing files [default: the CPUs (at most 8) from 256 files on, else 1]")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from esnet_tf.errors import UserError
    from esnet_tf.featurize import featurize_paths, save_examples
    from esnet_tf.isdos import EnergyGrid
    from esnet_tf.references import load_references

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if not str(args.out).endswith(".npz"):
        raise UserError(f"--out {args.out}: the features file must end in .npz")
    try:
        grid = EnergyGrid(args.e_min, args.e_max, args.n_points)
    except ValueError as exc:
        raise UserError(f"--e-min/--e-max/--n-points: {exc}") from None
    references = load_references(args.references) if args.references else None
    refuse_existing([args.out], args.overwrite)

    def report(path, examples, error) -> None:
        if error is not None:
            tqdm.write(f"FAIL {error}", file=sys.stderr)
        elif not args.quiet:
            for e in examples:
                warn = f"  WARNING: {'; '.join(e.warnings)}" if e.warnings else ""
                fch = f"  f channels dropped: {','.join(e.f_channels)}" if e.f_channels else ""
                ef = e.is_formation_energy_per_atom
                tqdm.write(f"ok   {e.id}  {e.formula}  {e.n_atoms} atoms  E_F={e.efermi:.3f} eV  "
                           f"{'spin' if e.spin_polarized else 'non-spin'}  {e.code}  "
                           f"E_f(IS)={'unknown' if ef != ef else f'{ef:.4f} eV/atom'}{fch}{warn}")

    from esnet_tf.atomic import exclusive

    with exclusive(args.out, "features file"):  # a second `esnet featurize --out` of the same file is refused
        examples, failures = featurize_paths(args.paths, grid, progress=not args.quiet, on_result=report,
                                             on_note=lambda note: tqdm.write(f"note: {note}", file=sys.stderr),
                                             workers=args.workers, references=references,
                                             follow_symlinks=args.follow_symlinks)
        if examples:
            save_examples(examples, args.out)
    n_files = len({e.source for e in examples})
    n_ef = sum(e.is_formation_energy_per_atom == e.is_formation_energy_per_atom for e in examples)
    print(f"{len(examples)} example(s) from {n_files} file(s) -> "
          f"{args.out if examples else '(nothing written)'}; {len(failures)} failed; "
          f"is_formation_energy_per_atom known for {n_ef}"
          + ("" if n_ef == len(examples) or args.references else " (give --references FILE for VASP / MP inputs)"))
    return 1 if failures or not examples else 0
