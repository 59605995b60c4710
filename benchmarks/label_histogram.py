"""The label range of the data a model trains on: histogram of the relaxed formation energies (eV/atom).

    python benchmarks/label_histogram.py            # demo and pool, into benchmarks/results/labels/
    python benchmarks/label_histogram.py --overwrite

Reads datasets/is_dos/demo/labels.csv and datasets/is_dos/pool/labels.csv (per role: candidate,
competitor, element) and writes histogram.png and summary.json (per set: rows, min, max, quantiles and the
rows above 0.5, 1 and 3 eV/atom). Hypothetical candidates reach 2-3 eV/atom; a model whose training labels
stop near 1.4 eV/atom has never seen what an unstable candidate looks like.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("histogram.png", "summary.json")
THRESHOLDS = (0.5, 1.0, 3.0)  # eV/atom


def _energies(labels: Path, role: str | None = None) -> list[float]:
    out = []
    with open(labels, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if role is not None and row.get("role") != role:
                continue
            try:
                e = float(row["formation_energy_per_atom"])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(e):
                out.append(e)
    return out


def describe(values: Sequence[float]) -> dict:
    """Rows, range, quantiles (eV/atom) and the rows above each of THRESHOLDS."""
    import numpy as np

    v = np.asarray(values, float)
    if not len(v):
        return {"n": 0}
    q = np.quantile(v, [0.1, 0.5, 0.9])
    return {"n": int(len(v)), "min": float(v.min()), "max": float(v.max()),
            "q10": float(q[0]), "median": float(q[1]), "q90": float(q[2]),
            **{f"n_above_{t:g}": int(np.sum(v > t)) for t in THRESHOLDS}}


def main(argv: Sequence[str] | None = None) -> int:
    from esnet_tf.atomic import atomic_path, refuse_existing, write_text
    from esnet_tf.errors import UserError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-dir", default=str(ROOT / "datasets" / "is_dos" / "demo"))
    ap.add_argument("--pool-dir", default=str(ROOT / "datasets" / "is_dos" / "pool"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "labels"))
    ap.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    args = ap.parse_args(argv)
    try:
        sets = {}
        for flag, folder in (("--demo-dir", args.demo_dir), ("--pool-dir", args.pool_dir)):
            if not (Path(folder) / "labels.csv").is_file():
                raise UserError(f"{flag} {folder}: no labels.csv there; give the dataset directory")
        sets["demo"] = _energies(Path(args.demo_dir) / "labels.csv")
        from esnet_tf.dft.pool import ROLES

        for role in ROLES:
            name = "pool label-range compounds" if role == "label_range" else f"pool {role}s"
            sets[name] = _energies(Path(args.pool_dir) / "labels.csv", role)
        out = Path(args.out)
        refuse_existing([out / name for name in OUTPUTS], args.overwrite)
    except UserError as exc:
        print(f"label_histogram.py: error: {exc}", file=sys.stderr)
        return 2
    summary = {"units": "eV/atom", "sets": {k: describe(v) for k, v in sets.items()}}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    every = [e for v in sets.values() for e in v]
    bins = np.arange(math.floor(min(every) * 4) / 4, math.ceil(max(max(every), 3.0) * 4) / 4 + 0.25, 0.25)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.hist([v for v in sets.values()], bins=bins, stacked=True,
            label=[f"{k} (n = {len(v)})" for k, v in sets.items()])
    for t in THRESHOLDS[1:]:
        ax.axvline(t, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("relaxed formation energy (eV/atom)")
    ax.set_ylabel("rows")
    ax.set_title("Label range of the demo and the pool (dashed: 1 and 3 eV/atom)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out / "histogram.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    write_text(out / "summary.json", json.dumps(summary, indent=1))
    for k, d in summary["sets"].items():
        if d["n"]:
            print(f"{k}: {d['n']} rows, {d['min']:.2f} to {d['max']:.2f} eV/atom, {d['n_above_1']} above 1, "
                  f"{d['n_above_3']} above 3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
