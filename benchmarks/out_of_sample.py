"""Out of sample: a shipped model on the hypothetical pool's rows (chemical systems absent from its training data).

    python benchmarks/out_of_sample.py                      # the shipped pool-trained IS-energy model
    python benchmarks/out_of_sample.py --model ESNet-GPAWDemo-2026.12-EFormPerAtomFromISEnergy --out DIR

Runs `esnet predict MODEL POOL_DIR` (the library's `predict_to_csv`: GPAW calculation files, the IS
energies from the pool's labels, the 90 % interval and the domain flag), then scores the predictions
against the pool's relaxed formation energies (`esnet_tf.study.out_of_sample`): per role (candidate,
competitor, element) and all rows, MAE, Spearman, the MAE of predicting the set's mean, the
`is_shift` baseline (the demo's median relaxation energy), interval coverage, flagged and unflagged
MAE, and the risk–coverage curve. Rows of the model's own snapshot (any split of its splits.json: the
pool-trained model saw the pool's elements, competitors and label-range rows) are left out and counted, so the scored
rows are chemical systems the model never saw: the pool's candidates, and pool rows assembled after
the model was trained. Writes predictions.csv, labels_snapshot.csv (the pool labels scored),
summary.json and risk_coverage.png in --out.
The pool grows while its DFT job runs: rerun after `esnet dft pool --assemble-only`.

A model that takes CHGNet's formation energy (ESNet-GPAWDemoPool-2026.12-EFormPerAtomFromUIP) gets it from
`--uip` (default: the pool's uip_chgnet.csv, `esnet uip relax` on every pool row) through `esnet predict --uip`;
pool rows without a CHGNet energy there are left out (OUT/inputs/labels.csv lists the rows predicted) and
counted. `--paired-with MODEL` predicts the same rows with a second model (predictions_paired.csv) and compares
the two paired per structure: ΔMAE with a 95 % bootstrap interval over structures and the Wilcoxon p.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "ESNet-GPAWDemoPool-2026.12-EFormPerAtomFromISEnergy"
OUTPUTS = ("predictions.csv", "labels_snapshot.csv", "summary.json", "risk_coverage.png")
#: written only with a model that takes CHGNet's formation energy, and with --paired-with
UIP_INPUTS, PAIRED_PREDICTIONS = Path("inputs") / "labels.csv", "predictions_paired.csv"


def uip_ids(uip_csv: Path) -> set[str]:
    """Ids of `esnet uip relax`'s CSV with a CHGNet energy (a finite uip_energy_per_atom, no error)."""
    import csv
    import math

    with open(uip_csv, newline="", encoding="utf-8") as fh:
        out = set()
        for r in csv.DictReader(fh):
            try:
                ok = math.isfinite(float(r.get("uip_energy_per_atom") or "nan")) and not (r.get("error") or "").strip()
            except ValueError:
                ok = False
            if ok:
                out.add(r["id"])
    return out


def pool_rows_with_uip(pool: Path, uip_csv: Path, out: Path) -> tuple[Path, list[str]]:
    """A labels directory `out/inputs/` listing the pool rows that `uip_csv` holds (calculation paths made
    absolute), and the ids of the rows left out (no CHGNet energy)."""
    import csv
    import io

    from esnet_tf.atomic import write_text

    have = uip_ids(uip_csv)
    with open(pool / "labels.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields, rows = list(reader.fieldnames or []), list(reader)
    kept = [r for r in rows if r["id"] in have]
    for r in kept:
        for col in ("path", "rs_path"):
            if r.get(col):
                r[col] = str((pool / r[col]).resolve())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(kept)
    write_text(out / UIP_INPUTS, buf.getvalue())
    return (out / UIP_INPUTS).parent, [r["id"] for r in rows if r["id"] not in have]


def paired_scores(ours_csv: Path, theirs_csv: Path, labels_csv: Path, exclude: set[str],
                  role: str | None = None) -> dict:
    """Paired per structure on the rows both CSVs predict that have a truth in `labels_csv` (of `role`, when
    given) outside `exclude`: |error| of ours minus theirs (eV/atom), mean with a 95 % percentile bootstrap
    interval over the structures, the Wilcoxon signed-rank p, and both MAEs."""
    import csv

    import numpy as np

    from esnet_tf.pretrained import PREDICTION_COLUMN
    from esnet_tf.study.stats import bootstrap_ci, paired_comparison

    def preds(path: Path) -> dict[str, float]:
        with open(path, newline="", encoding="utf-8") as fh:
            return {r["id"]: float(r[PREDICTION_COLUMN]) for r in csv.DictReader(fh)}

    with open(labels_csv, newline="", encoding="utf-8") as fh:
        truth = {r["id"]: float(r["formation_energy_per_atom"]) for r in csv.DictReader(fh)
                 if r.get("formation_energy_per_atom") and (role is None or r.get("role") == role)}
    a, b = preds(ours_csv), preds(theirs_csv)
    ids = sorted((set(a) & set(b) & set(truth)) - exclude)
    if len(ids) < 2:
        return {"n": len(ids)}
    ea = np.array([abs(a[i] - truth[i]) for i in ids])
    eb = np.array([abs(b[i] - truth[i]) for i in ids])
    diff, low, high = bootstrap_ci(ea - eb, lambda d: float(d.mean()))
    return {"n": len(ids), "mae_model": float(ea.mean()), "mae_paired_with": float(eb.mean()), "delta_mae": diff,
            "ci_low": low, "ci_high": high, "p_value": paired_comparison(ea, eb)["p_value"],
            "n_model_closer": int(np.sum(ea < eb))}


def main(argv: Sequence[str] | None = None) -> int:
    from esnet_tf.atomic import refuse_existing, write_text
    from esnet_tf.errors import UserError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="a shipped model's name or a model path")
    ap.add_argument("--pool-dir", default=str(ROOT / "datasets" / "is_dos" / "pool"),
                    help="the pool dataset (labels.csv and calcs/)")
    ap.add_argument("--training-labels", default=None,
                    help="labels of the model's training data (is_shift's median relaxation energy) [the train rows "
                         "of the model's splits.json; the demo's labels.csv for a model without one]")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "out_of_sample"))
    ap.add_argument("--study", default=str(ROOT / "benchmarks" / "results" / "accuracy_pool"),
                    help="a `benchmarks/accuracy.py --group-by pool` folder: the model is compared, paired per "
                         "structure, with each of its rows on the candidates both scored ('' for none)")
    ap.add_argument("--uip", default=None, metavar="CSV",
                    help="for a model that takes CHGNet's formation energy: `esnet uip relax`'s CSV of the pool's "
                         "structures (rows by id) [<pool-dir>/uip_chgnet.csv]; rows it lacks are left out, counted")
    ap.add_argument("--paired-with", default=None, metavar="MODEL",
                    help="also predict the same rows with this model (predictions_paired.csv) and compare the two "
                         "paired per structure [none]")
    ap.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    args = ap.parse_args(argv)
    try:
        from esnet_tf.study.out_of_sample import (compare_with_study, median_relaxation_energy, model_snapshot,
                                                  risk_coverage_figure, score_predictions, screening_scores)

        pool, out = Path(args.pool_dir), Path(args.out)
        if not (pool / "labels.csv").is_file():
            raise UserError(f"--pool-dir {pool}: no labels.csv there; give the pool dataset directory "
                            "(datasets/is_dos/pool in a checkout)")
        if args.training_labels is not None and not Path(args.training_labels).is_file():
            raise UserError(f"--training-labels {args.training_labels}: no such file; give the model's training "
                            "labels (datasets/is_dos/demo/labels.csv)")
        from esnet_tf.pretrained import read_metadata, resolve

        def takes_uip(model: str) -> bool:
            folder = resolve(model)
            return bool(read_metadata(folder if folder.is_dir() else folder.parent).get("uip"))

        models = [args.model] + ([args.paired_with] if args.paired_with else [])
        uip_needed = any(takes_uip(m) for m in models)
        refuse_existing([out / name for name in OUTPUTS]
                        + ([out / UIP_INPUTS] if uip_needed else []) + ([out / PAIRED_PREDICTIONS]
                                                                        if args.paired_with else []), args.overwrite)
        uip_csv = Path(args.uip) if args.uip else pool / "uip_chgnet.csv"
        if uip_needed and not uip_csv.is_file():
            raise UserError(f"--uip {uip_csv}: no such file; make it with `esnet uip relax --demo --labels "
                            f"{pool / 'labels.csv'} --out {uip_csv}`")

        splits_json = resolve(args.model) / "splits.json"
        seen, shift = model_snapshot(splits_json) if splits_json.is_file() else (set(), None)
        if args.paired_with and (resolve(args.paired_with) / "splits.json").is_file():
            seen |= model_snapshot(resolve(args.paired_with) / "splits.json")[0]  # rows neither model saw
        try:
            if args.training_labels is not None or shift is None:
                shift = median_relaxation_energy(args.training_labels or ROOT / "datasets" / "is_dos" / "demo"
                                                 / "labels.csv")
        except ValueError as exc:
            raise UserError(str(exc)) from None
        from esnet_tf.predict import PredictConfig, predict_to_csv  # TensorFlow: after the checks

        snapshot = out / "labels_snapshot.csv"  # the pool grows: the labels scored are kept beside the scores
        write_text(snapshot, (pool / "labels.csv").read_text(encoding="utf-8"))
        inputs, without_uip = (pool, [])
        if uip_needed:
            inputs, without_uip = pool_rows_with_uip(pool, uip_csv, out)
        predict_to_csv(PredictConfig(model=args.model, inputs=(str(inputs),), out=str(out / "predictions.csv"),
                                     overwrite=True, uip=str(uip_csv) if takes_uip(args.model) else None))
        result = {"model": args.model, "pool": str(pool), "labels": snapshot.name,
                  "command": "python benchmarks/out_of_sample.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  **score_predictions(out / "predictions.csv", snapshot, shift, exclude=seen)}
        if uip_needed:
            result["uip"] = {"csv": str(uip_csv), "inputs": str(out / UIP_INPUTS), "n_without_uip": len(without_uip),
                             "without_uip": without_uip}
        if args.paired_with:
            predict_to_csv(PredictConfig(model=args.paired_with, inputs=(str(inputs),),
                                         out=str(out / PAIRED_PREDICTIONS), overwrite=True,
                                         uip=str(uip_csv) if takes_uip(args.paired_with) else None))
            theirs = score_predictions(out / PAIRED_PREDICTIONS, snapshot, shift, exclude=seen)
            result["paired_with"] = {
                "model": args.paired_with, "predictions": PAIRED_PREDICTIONS, "all": theirs["all"],
                "by_role": theirs.get("by_role", {}),
                "paired": {"all": paired_scores(out / "predictions.csv", out / PAIRED_PREDICTIONS, snapshot, seen),
                           "candidate": paired_scores(out / "predictions.csv", out / PAIRED_PREDICTIONS, snapshot,
                                                      seen, role="candidate")}}
        result["screening_candidates"] = screening_scores(
            out / "predictions.csv", snapshot, [ROOT / "datasets" / "is_dos" / "demo" / "labels.csv"], exclude=seen)
        if args.study and (Path(args.study) / "results.json").is_file():
            result["compared_with_study"] = compare_with_study(out / "predictions.csv", args.study, exclude=seen)
        write_text(out / "summary.json", json.dumps(result, indent=1))
        risk_coverage_figure(result, out / "risk_coverage.png", f"{args.model} on the pool (out of sample)")
    except UserError as exc:
        print(f"out_of_sample.py: error: {exc}", file=sys.stderr)
        return 2
    a = result["all"]
    print(f"{a['n']} rows: MAE {a['mae']:.3f} eV/atom (set mean {a['mae_of_the_set_mean']:.3f}, is_shift "
          f"{a['is_shift']['mae']:.3f}), Spearman {a['spearman']:.2f}, coverage {a.get('interval_coverage')}, "
          f"{a['n_flagged']} flagged (MAE {a['mae_flagged']}), unflagged MAE {a['mae_unflagged']} -> {out}")
    if "paired_with" in result:
        pm = result["paired_with"]["paired"]["all"]
        if pm.get("p_value") is not None:
            print(f"paired with {args.paired_with} on {pm['n']} rows: MAE {pm['mae_model']:.3f} vs "
                  f"{pm['mae_paired_with']:.3f}, ΔMAE {pm['delta_mae']:+.3f} [{pm['ci_low']:+.3f}, "
                  f"{pm['ci_high']:+.3f}], Wilcoxon p {pm['p_value']:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
