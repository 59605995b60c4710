"""Initial-structure volumes: the contact rule against the relaxed volume and pymatgen's DLS / RLS predictors.

    python benchmarks/initial_volumes.py                      # the committed demo and pool data
    python benchmarks/initial_volumes.py --overwrite          # replace an earlier run's outputs

For every labels row of the demo (472 relaxed structures, in-distribution) and of the pool
(hypothetical candidates, their competing phases and elements): the initial volume per atom by the
engine's contact rule, the relaxed volume per atom, and, without DFT, pymatgen's data-mined lattice
scaling (DLS) on the initial structure, its reference lattice scaling (RLS, median over the demo's
relaxed structures of the same prototype outside the target's chemical system) and the geometric
mean of the contact-rule and DLS volumes (`esnet_tf.dft.volumes`). All volumes in Å^3/atom.

Writes into --out: volumes.csv (one row per structure; a predictor's failure is a row with its
reason, never dropped), summary.json (per group: n, quantiles of V/V_relaxed, MAE of ln V/V_relaxed,
fraction more than 10 % off, failures by reason, the correlation of |V_IS/V_relaxed - 1| with the
IS-to-relaxed formation-energy gap), volumes.png (V/V_relaxed per group and method).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datasets" / "is_dos" / "demo"
POOL = ROOT / "datasets" / "is_dos" / "pool"
OUT = ROOT / "benchmarks" / "results" / "initial_volumes"
OUTPUTS = ("volumes.csv", "summary.json", "volumes.png")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from esnet_tf.atomic import OVERWRITE_HELP

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-dir", default=str(DEMO), help="the demo dataset folder (labels.csv, calcs/)")
    ap.add_argument("--pool-dir", default=str(POOL), help="the pool dataset folder (labels.csv with role, calcs/)")
    ap.add_argument("--out", default=str(OUT), help="output folder (default: benchmarks/results/initial_volumes)")
    ap.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.format(", ".join(OUTPUTS)))
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Check the inputs and outputs, compute the rows, write the three outputs; returns the summary."""
    import pymatgen.core

    from esnet_tf.atomic import refuse_existing, write_text
    from esnet_tf.dft import volumes as V

    out = Path(args.out)
    refuse_existing([out / name for name in OUTPUTS], args.overwrite)
    demo_rows = V.read_labels(args.demo_dir, "--demo-dir")
    pool_rows = V.read_labels(args.pool_dir, "--pool-dir")
    print(f"RLS references: the demo's {len(demo_rows)} relaxed structures", file=sys.stderr)
    refs = V.RLSReferences(V.references_from(args.demo_dir, demo_rows))

    def progress(i: int, n: int) -> None:
        if i % 50 == 0 or i == n:
            print(f"  {i}/{n}", file=sys.stderr)

    rows = V.volume_rows(args.pool_dir, pool_rows, V.pool_group, refs, progress)
    rows += V.volume_rows(args.demo_dir, demo_rows, lambda _row: "demo", refs, progress)
    summary = {
        "description": "initial-structure volumes (contact rule) against the relaxed volume and pymatgen's "
                       "DLS / RLS predictions (Å^3/atom; ratios V/V_relaxed); see esnet_tf/dft/volumes.py",
        "command": "python benchmarks/initial_volumes.py " + " ".join(sys.argv[1:]),
        "inputs": {"demo": {"dir": _rel(args.demo_dir), "n_rows": len(demo_rows)},
                   "pool": {"dir": _rel(args.pool_dir), "n_rows": len(pool_rows)}},
        "pymatgen": pymatgen.core.__version__,
        "methods": {
            "is": "the engine's contact rule (task.json's structure)",
            "dls": "DLSVolumePredictor() on the initial structure (cutoff 4 Å, clamp 0.5-1.5)",
            "rls": "RLSVolumePredictor(check_isostructural=False, use_bv=False) on BV-decorated structures "
                   "(atomic radii where BV fails), median over the demo's relaxed structures of the same "
                   "prototype outside the target's chemical system",
            "blend": "sqrt(V_IS * V_DLS)",
        },
        "off_threshold": V.OFF_THRESHOLD,
        "calibrated": "each method times one factor fitted on the demo (1 / median V_method / V_relaxed there), "
                      "applied unchanged to the pool; in-sample on the demo itself",
        "energy_gap": "|is_formation_energy_per_atom - formation_energy_per_atom| from labels.csv, eV/atom",
        "groups": V.summarize(rows),
    }
    V.write_csv(rows, out / "volumes.csv")
    write_text(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    V.plot_ratios(rows, out / "volumes.png")
    return summary


def _rel(path: str | Path) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def main(argv: Sequence[str] | None = None) -> int:
    from esnet_tf.errors import UserError

    args = parse_args(argv)
    try:
        summary = run(args)
    except UserError as exc:
        print(f"initial_volumes.py: error: {exc}", file=sys.stderr)
        return 2
    for g, s in summary["groups"].items():
        cells = ", ".join(f"{m} {s['methods'][m]['ratio_to_relaxed']['median']} "
                          f"(MAE ln {s['methods'][m]['mae_ln_ratio']})" for m in ("is", "dls", "rls", "blend"))
        print(f"{g} (n = {s['n']}): median V/V_relaxed {cells}")
    print(f"wrote {', '.join(OUTPUTS)} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
