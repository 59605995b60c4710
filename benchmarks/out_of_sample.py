"""Out of sample: a shipped model on the hypothetical pool's rows (chemical systems absent from its training data).

    python benchmarks/out_of_sample.py                      # the shipped pool-trained IS-energy model
    python benchmarks/out_of_sample.py --model ESNet-GPAWDemo-2026.12-EFormPerAtomFromISEnergy --out DIR

Runs `esnet predict MODEL POOL_DIR` (the library's `predict_to_csv`: GPAW calculation files, the IS
energies from the pool's labels, the 90 % interval and the domain flag), then scores the predictions
against the pool's relaxed formation energies (`esnet_tf.study.out_of_sample`): per role (candidate,
competitor, element) and all rows, MAE, Spearman, the MAE of predicting the set's mean, the
`is_shift` baseline (the demo's median relaxation energy), interval coverage, flagged and unflagged
MAE, and the risk–coverage curve. Rows of the model's own snapshot (any split of its splits.json: the
pool-trained model saw the pool's elements and competitors) are left out and counted, so the scored
rows are chemical systems the model never saw: the pool's candidates, and pool rows assembled after
the model was trained. Writes predictions.csv, labels_snapshot.csv (the pool labels scored),
summary.json and risk_coverage.png in --out.
The pool grows while its DFT job runs: rerun after `esnet dft pool --assemble-only`.
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
        refuse_existing([out / name for name in OUTPUTS], args.overwrite)
        from esnet_tf.pretrained import resolve

        splits_json = resolve(args.model) / "splits.json"
        seen, shift = model_snapshot(splits_json) if splits_json.is_file() else (set(), None)
        try:
            if args.training_labels is not None or shift is None:
                shift = median_relaxation_energy(args.training_labels or ROOT / "datasets" / "is_dos" / "demo"
                                                 / "labels.csv")
        except ValueError as exc:
            raise UserError(str(exc)) from None
        from esnet_tf.predict import PredictConfig, predict_to_csv  # TensorFlow: after the checks

        snapshot = out / "labels_snapshot.csv"  # the pool grows: the labels scored are kept beside the scores
        write_text(snapshot, (pool / "labels.csv").read_text(encoding="utf-8"))
        predict_to_csv(PredictConfig(model=args.model, inputs=(str(pool),), out=str(out / "predictions.csv"),
                                     overwrite=True))
        result = {"model": args.model, "pool": str(pool), "labels": snapshot.name,
                  "command": "python benchmarks/out_of_sample.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  **score_predictions(out / "predictions.csv", snapshot, shift, exclude=seen)}
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
