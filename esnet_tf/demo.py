"""`esnet demo`: the whole pipeline on the embedded demo dataset, with no network.

Steps (each reused on a rerun unless `--fresh`): build the TFDS dataset `is_dos/demo`, train an
ESNet (by default `is_relax`: the configuration of the shipped IS-energy model,
`esnet_tf.pretrained.is_relax_config`, with its batch and epochs), evaluate it on the test split
(metrics + parity plot), export a TF Serving SavedModel, and screen the test split for stability
against the hull of the other entries (metrics + recall-vs-DFT-cost plot). Your own data: `manual_dir`
with a labels.csv and
calculation files (see the is_dos README). CLI: `esnet demo` (`esnet_tf.cli.demo`).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from esnet_tf.atomic import write_text
from esnet_tf.errors import UserError

if TYPE_CHECKING:
    from esnet_tf.train import TrainConfig


@dataclass(frozen=True)
class DemoConfig:
    """Settings of `run_demo`; every artefact goes under `out`."""

    out: Path = Path("demo_out")
    manual_dir: Path | None = None  # your labels.csv + calculations instead of the embedded demo
    config: str = "is_relax"  # model config: is_relax (IS-DOS + IS formation energy), small, paper, or a JSON file
    epochs: int = 40  # maximum training epochs (early stopping on validation)
    early_stopping_patience: int = 20  # epochs without validation improvement
    batch_size: int = 16  # examples per batch
    seed: int = 0
    threshold: float = 0.0  # stability threshold on E_hull, eV/atom
    fresh: bool = False  # redo every step: remove the demo's earlier outputs (DEMO_OUTPUTS) first, nothing else

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.early_stopping_patience < 0:
            raise UserError(f"--early-stopping-patience must be >= 0, got {self.early_stopping_patience}")


def model_config(name: str) -> str | dict:
    """What TrainConfig.config gets for the demo's `--config`: 'is_relax' -> the shipped IS-energy model's
    ESNetConfig (as a dict); anything else ('small', 'paper', a JSON file) as it is."""
    if name == "is_relax":
        from esnet_tf.pretrained import is_relax_config

        return is_relax_config().to_dict()
    return name


#: what `run_demo` writes under `out` (paths relative to it); `--fresh` removes these and nothing else
DEMO_OUTPUTS = ("tfds", "run", "eval", "saved_models/esnet_demo", "screen", "summary.json")


def checked_plan(args: DemoConfig) -> tuple[str, Path, "TrainConfig"]:
    """(TFDS dataset name, labels CSV, training settings) of the demo, every argument checked: a bad one
    raises `UserError` (one line naming it and the fix) before any output is removed or written."""
    from esnet_tf import resources
    from esnet_tf.train import TrainConfig

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory: --out must be a directory (new or of an earlier demo)")
    if args.manual_dir is not None:
        labels = Path(args.manual_dir) / "labels.csv"
        if not labels.is_file():
            raise UserError(f"{labels}: not found: --manual-dir must be a directory with labels.csv "
                            "(see esnet demo --help)")
    else:
        labels = resources.demo_labels()
    name = "is_dos/manual" if args.manual_dir else "is_dos/demo"
    settings = TrainConfig(dataset=name, data_dir=str(out / "tfds"), config=model_config(args.config),
                           epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                           early_stopping_patience=args.early_stopping_patience)
    settings.esnet_config()  # an unknown --config or a bad JSON file: one line now, not after step 1
    return name, labels, settings


def remove_outputs(out: str | Path) -> list[Path]:
    """Remove what an earlier `run_demo` wrote under `out` (`DEMO_OUTPUTS`), nothing else: files the user
    put there stay, and so does `out`. A symlink among them is unlinked, never followed. Returns the
    paths removed."""
    out = Path(out)
    removed = []
    for rel in DEMO_OUTPUTS:
        path = out / rel
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(path)
    return removed


def _step(n: int, title: str) -> float:
    print(f"\n[{n}/5] {title}", flush=True)
    return time.time()


def run_demo(args: DemoConfig) -> dict:
    """Run the five steps; returns the report written to `out/summary.json`."""
    out = Path(args.out)
    name, labels, settings = checked_plan(args)  # every argument checked before anything is removed or built
    if args.fresh:
        removed = remove_outputs(out)
        if removed:
            print(f"--fresh: removed the demo's earlier outputs in {out}: "
                  + ", ".join(p.relative_to(out).as_posix() for p in removed), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    from esnet_tf import dataset as ds_mod
    from esnet_tf.evaluate import evaluate
    from esnet_tf.export import export
    from esnet_tf.screening import references_from_labels, read_csv_rows, screen_rows as screen, write_outputs
    from esnet_tf.train import train

    t_all = time.time()
    timings = {}

    t = _step(1, f"dataset {name} (TFDS) -> {out / 'tfds'}")
    builder = ds_mod.build_dataset(name, data_dir=out / "tfds", manual_dir=args.manual_dir)
    counts = {k: v.num_examples for k, v in builder.info.splits.items()}
    print("splits: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    timings["dataset_s"] = time.time() - t

    t = _step(2, f"train ESNet ({args.config}) -> {out / 'run'}")
    run_dir = out / "run"
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
    write_text(out / "summary.json", json.dumps(report, indent=2, default=str))
    print_summary(out, report, sm)
    return report


def _has_costs(labels: Path) -> bool:
    from esnet_tf.labels import read_labels

    rows = read_labels(labels)
    return bool(rows) and all(c in rows[0].extra for c in ("is_wall_time_s", "relax_wall_time_s"))


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def print_summary(out: Path, report: dict, sm: dict) -> None:
    """The closing summary of `run_demo` (metrics in eV/atom, DFT cost, artefacts)."""
    m = report["test_metrics"]
    print("\n" + "=" * 72)
    print("esnet demo: done in {:.0f} s".format(report["timings_s"]["total_s"]))
    print(f"  test split: n={m['n']}  MAE {m['mae']:.3f}  RMSE {m['rmse']:.3f} eV/atom  R^2 {m['r2']:.3f}  "
          f"(stable = E_f < 0: precision {_fmt(m.get('precision'))}, recall {_fmt(m.get('recall'))})")
    print(f"  screening (E_hull <= threshold): precision {_fmt(sm.get('precision'))}  recall "
          f"{_fmt(sm.get('recall'))}  F1 {_fmt(sm.get('f1'))}  DAF {_fmt(sm.get('daf'))}")
    cost = sm.get("cost") or {}
    for key, label in (("at_model_threshold", "at the model's threshold"),
                       ("at_target_recall", "at the target recall")):
        c = cost.get(key) if isinstance(cost, dict) else None
        if isinstance(c, dict) and c.get("cost_reduction") is not None:
            print(f"  DFT cost {label}: {100 * c['cost_reduction']:.0f}% saved (recall {_fmt(c.get('recall'))})")
    print("  artefacts:")
    for rel in ("tfds", "run/best.keras", "run/history.csv", "run/logs", "eval/metrics.json", "eval/parity.png",
                "saved_models/esnet_demo/1", "screen/candidates.csv", "screen/metrics.json",
                "screen/recall_vs_cost.png", "screen/predicted_vs_true.png", "summary.json"):
        print(f"    {out / rel}")
    print("=" * 72)
