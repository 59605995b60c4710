"""`esnet demo`: the whole pipeline on the embedded demo dataset, with no network.

Steps (each reused on a rerun unless `--fresh`): build the TFDS dataset `is_dos/demo`, train the
`small` ESNet, evaluate it on the test split (metrics + parity plot), export a TF Serving
SavedModel, and screen the test split for stability against the hull of the other entries
(metrics + recall-vs-DFT-cost plot). Your own data: `--manual-dir DIR` with a labels.csv and
calculation files (see datasets/is_dos/README.md).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

DEMO_LABELS = Path(__file__).resolve().parents[1] / "datasets" / "is_dos" / "demo" / "labels.csv"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run the whole ESNet pipeline on the embedded demo dataset (GPAW IS-DOS of cubic prototypes): "
        "build the TFDS dataset, train the small model, evaluate on the test split (MAE in eV/atom, parity "
        "plot), export a TF Serving SavedModel, and screen the test split for stability (precision, recall, "
        "DFT cost saved). Point it at your own calculations with --manual-dir DIR (DIR/labels.csv with id, "
        "path, formation_energy_per_atom in eV/atom, optional e_above_hull, is_wall_time_s, "
        "relax_wall_time_s; paths to vasprun.xml, DOSCAR, MP CompleteDos JSON or *.gpawdos.npz files).")
    p.add_argument("--out", default="demo_out", help="directory for every artefact")
    p.add_argument("--manual-dir", default=None, help="your own data instead of the demo (see above)")
    p.add_argument("--config", default="small", help="model config: small, paper, or a JSON file")
    p.add_argument("--epochs", type=int, default=200, help="maximum training epochs (early stopping on validation)")
    p.add_argument("--early-stopping-patience", type=int, default=35, help="epochs without validation improvement")
    p.add_argument("--batch-size", type=int, default=64, help="examples per batch")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threshold", type=float, default=0.0, help="stability threshold on E_hull, eV/atom")
    p.add_argument("--fresh", action="store_true", help="redo every step instead of reusing what is built")


def _step(n: int, title: str) -> float:
    print(f"\n[{n}/5] {title}", flush=True)
    return time.time()


def run(args: argparse.Namespace) -> int:
    from esnet_tf import dataset as ds_mod
    from esnet_tf.evaluate import evaluate
    from esnet_tf.export import export
    from esnet_tf.screen import references_from_labels, read_csv_rows, screen, write_outputs
    from esnet_tf.train import DEFAULTS, train

    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    name = "is_dos/manual" if args.manual_dir else "is_dos/demo"
    labels = Path(args.manual_dir) / "labels.csv" if args.manual_dir else DEMO_LABELS
    t_all = time.time()
    timings = {}

    t = _step(1, f"dataset {name} (TFDS) -> {out / 'tfds'}")
    builder = ds_mod.build_dataset(name, data_dir=out / "tfds", manual_dir=args.manual_dir)
    counts = {k: v.num_examples for k, v in builder.info.splits.items()}
    print("splits: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    timings["dataset_s"] = time.time() - t

    t = _step(2, f"train ESNet ({args.config}) -> {out / 'run'}")
    run_dir = out / "run"
    settings = dict(DEFAULTS)
    settings.update(dataset=name, data_dir=str(out / "tfds"), config=args.config, epochs=args.epochs,
                    batch_size=args.batch_size, seed=args.seed,
                    early_stopping_patience=args.early_stopping_patience)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file() and (run_dir / "best.keras").is_file():
        summary = json.loads(summary_path.read_text())
        print(f"reusing the trained model {run_dir / 'best.keras'} (--fresh to retrain)")
    else:
        summary = train(settings, run_dir, resume=(run_dir / "config.json").is_file(), verbose=2)
    timings["train_s"] = time.time() - t

    t = _step(3, f"evaluate on the test split -> {out / 'eval'}")
    metrics = evaluate(run_dir / "best.keras", name, "test", out / "eval", data_dir=str(out / "tfds"))
    timings["evaluate_s"] = time.time() - t
    print(f"test: n={metrics['n']}, MAE {metrics['mae']:.3f}, RMSE {metrics['rmse']:.3f} eV/atom, "
          f"R^2 {metrics['r2']:.3f}")

    t = _step(4, f"export SavedModel -> {out / 'saved_models' / 'esnet_demo' / '1'}")
    exported = export(run_dir / "best.keras", out / "saved_models", "esnet_demo", 1, overwrite=True)
    timings["export_s"] = time.time() - t
    print(f"SavedModel {exported['path']} ({exported['n_warmup']} warmup requests, "
          f"max |SavedModel - .keras| = {exported['max_abs_diff']:.2g} eV/atom)")

    t = _step(5, f"screen the test split for stability -> {out / 'screen'}")
    rows = read_csv_rows(out / "eval" / "predictions.csv", ("id",))
    result = screen(rows, references_from_labels(labels), mode="ehull", threshold=args.threshold,
                    costs=labels if _has_costs(labels) else None, progress=False)
    write_outputs(result, out / "screen")
    timings["screen_s"] = time.time() - t
    sm = result.metrics
    timings["total_s"] = time.time() - t_all

    report = {"dataset": {"name": name, "splits": counts, "tfds_dir": str(builder.data_dir)},
              "training": summary, "test_metrics": metrics, "export": exported,
              "screening": {k: sm.get(k) for k in ("precision", "recall", "f1", "accuracy", "daf",
                                                   "n_candidates", "mae_formation_energy_per_atom")}
              | {"cost": sm.get("cost")}, "timings_s": timings}
    (out / "summary.json").write_text(json.dumps(report, indent=2, default=str))
    _print_summary(out, report, sm)
    return 0


def _has_costs(labels: Path) -> bool:
    with open(labels) as fh:
        header = fh.readline()
    return "is_wall_time_s" in header and "relax_wall_time_s" in header


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _print_summary(out: Path, report: dict, sm: dict) -> None:
    m = report["test_metrics"]
    print("\n" + "=" * 72)
    print("esnet demo: done in {:.0f} s".format(report["timings_s"]["total_s"]))
    print(f"  test split: n={m['n']}  MAE {m['mae']:.3f}  RMSE {m['rmse']:.3f} eV/atom  R^2 {m['r2']:.3f}  "
          f"(stable = E_f < 0: precision {_fmt(m.get('precision'))}, recall {_fmt(m.get('recall'))})")
    print(f"  screening (E_hull <= threshold): precision {_fmt(sm.get('precision'))}  recall "
          f"{_fmt(sm.get('recall'))}  F1 {_fmt(sm.get('f1'))}  DAF {_fmt(sm.get('daf'))}")
    cost = sm.get("cost") or {}
    for key, label in (("at_model_threshold", "at the model's threshold"), ("at_target_recall", "at the target recall")):
        c = cost.get(key) if isinstance(cost, dict) else None
        if isinstance(c, dict) and c.get("cost_reduction") is not None:
            print(f"  DFT cost {label}: {100 * c['cost_reduction']:.0f}% saved (recall {_fmt(c.get('recall'))})")
    print("  artefacts:")
    for rel in ("tfds", "run/best.keras", "run/history.csv", "run/logs", "eval/metrics.json", "eval/parity.png",
                "saved_models/esnet_demo/1", "screen/candidates.csv", "screen/metrics.json",
                "screen/recall_vs_cost.png", "screen/predicted_vs_true.png", "summary.json"):
        print(f"    {out / rel}")
    print("=" * 72)
