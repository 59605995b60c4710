"""`esnet evaluate`: regression and stability-classification metrics of a saved ESNet on one split.

Writes to `--out`: metrics.json (MAE, RMSE, R^2 in eV/atom; precision, recall, F1, accuracy for
"formation energy < threshold"), predictions.csv and parity.png. This is the only command that
reads the test split.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from esnet_tf.errors import UserError


def regression_metrics(y_true, y_pred) -> dict:
    """MAE, RMSE (eV/atom) and R^2 of predictions (NaN truths are an error upstream)."""
    y, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    err = p - y
    ss_tot = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
    return {"n": int(len(y)), "mae": float(np.abs(err).mean()) if len(y) else None,
            "rmse": float(np.sqrt((err ** 2).mean())) if len(y) else None,
            "r2": 1.0 - float((err ** 2).sum()) / ss_tot if ss_tot > 0 else None,
            "mean_truth": float(y.mean()) if len(y) else None}


def classification_metrics(y_true, y_pred, threshold: float = 0.0) -> dict:
    """Precision, recall, F1, accuracy of 'energy < threshold' (eV/atom); None where undefined."""
    t = np.asarray(y_true, float) < threshold
    p = np.asarray(y_pred, float) < threshold
    tp, fp = int((t & p).sum()), int((~t & p).sum())
    fn, tn = int((t & ~p).sum()), int((~t & ~p).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (
        0.0 if precision is not None and recall is not None else None)
    return {"threshold_ev_per_atom": threshold, "precision": precision, "recall": recall, "f1": f1,
            "accuracy": (tp + tn) / len(t) if len(t) else None,
            "true_positives": tp, "false_positives": fp, "false_negatives": fn, "true_negatives": tn}


def parity_plot(y_true, y_pred, path: Path, title: str = "", threshold: float | None = 0.0) -> Path:
    """Predicted vs DFT formation energy (eV/atom) scatter with the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    lo = float(min(y.min(), p.min())) if len(y) else -1.0
    hi = float(max(y.max(), p.max())) if len(y) else 1.0
    pad = 0.05 * (hi - lo or 1.0)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=150)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="y = x")
    ax.scatter(y, p, s=12, alpha=0.7, edgecolors="none")
    if threshold is not None and lo - pad < threshold < hi + pad:
        ax.axvline(threshold, color="0.7", lw=0.6)
        ax.axhline(threshold, color="0.7", lw=0.6)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("DFT formation energy (eV/atom)")
    ax.set_ylabel("ESNet prediction (eV/atom)")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate(model: str | Path, dataset: str, split: str = "test", out: str | Path = "eval", *,
             threshold: float = 0.0, batch_size: int = 256, **split_kwargs) -> dict:
    """Predict one split with a saved model and write metrics.json, predictions.csv, parity.png."""
    from esnet_tf import data
    from esnet_tf.isdos import OUTPUT_NAME
    from esnet_tf.predict import Predictor, write_predictions

    predictor = Predictor(model)
    ds = data.load_split(dataset, split, **split_kwargs)
    keys = ("id", "formula", OUTPUT_NAME, "e_above_hull")
    collected: dict[str, list] = {k: [] for k in (*keys, "pred")}
    for batch in data.iterate_numpy(ds, batch_size):
        source = f"{dataset} [{split}]"
        collected["pred"].append(predictor.predict(batch, batch_size, source=source))
        for k in keys:
            collected[k].append(np.asarray(batch[k]))
    if not collected["pred"]:
        raise UserError(f"{dataset}: the {split} split is empty")
    arrays = {k: np.concatenate(v) for k, v in collected.items()}
    known = np.isfinite(arrays[OUTPUT_NAME].astype(float))
    if not known.any():
        raise UserError(f"{dataset} [{split}]: no formation_energy_per_atom truths to evaluate against")
    y, p = arrays[OUTPUT_NAME][known], arrays["pred"][known]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"model": str(predictor.path), "dataset": str(dataset), "split": split, "units": "eV/atom",
               **regression_metrics(y, p), **classification_metrics(y, p, threshold),
               "n_without_truth": int((~known).sum())}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_predictions(out / "predictions.csv", arrays, arrays["pred"])
    mae = metrics["mae"]
    parity_plot(y, p, out / "parity.png", title=f"{Path(str(dataset)).name} {split}: n={len(y)}, "
                f"MAE={mae:.3f} eV/atom", threshold=threshold)
    return metrics


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=".keras file or SavedModel dir")
    p.add_argument("--dataset", required=True, help="features .npz (with --labels), dir with labels.csv, or TFDS name/dir")
    p.add_argument("--labels", help="labels CSV for .npz features (id, formation_energy_per_atom in eV/atom)")
    p.add_argument("--data-dir", help="TFDS data_dir")
    p.add_argument("--split", default="test", help="train, validation, test or all")
    p.add_argument("--split-fractions", help="train,validation,test fractions of chemical systems for .npz / "
                   "labels-dir datasets (as given to `esnet train`)")
    p.add_argument("--split-seed", type=int, default=0, help="chemical-system split seed (as given to `esnet train`)")
    p.add_argument("--threshold", type=float, default=0.0, help="stable means formation energy < threshold (eV/atom)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per model call")
    p.add_argument("--out", default="eval", help="output directory (metrics.json, predictions.csv, parity.png)")


def run(args: argparse.Namespace) -> int:
    fractions = None
    if args.split_fractions:
        from esnet_tf.train import _fractions

        fractions = _fractions(args.split_fractions)
    m = evaluate(args.model, args.dataset, args.split, args.out, threshold=args.threshold,
                 batch_size=args.batch_size, labels=args.labels, data_dir=args.data_dir,
                 split_fractions=fractions, split_seed=args.split_seed)

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    print(f"{args.split}: n={m['n']}  MAE={fmt(m['mae'])}  RMSE={fmt(m['rmse'])} eV/atom  R2={fmt(m['r2'])}  "
          f"precision={fmt(m['precision'])} recall={fmt(m['recall'])} F1={fmt(m['f1'])} "
          f"(stable: E_f < {args.threshold} eV/atom) -> {args.out}/metrics.json, parity.png")
    return 0
