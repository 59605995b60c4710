"""Accuracy benchmark: grouped k-fold cross-validation on the demo dataset.

    python benchmarks/accuracy.py --folds 5 --out benchmarks/results/accuracy

Folds are grouped by chemical system (`esnet_tf.splits.kfold_of`), so no chemical system is in
both the training and the test folds. For every fold:
- ESNet `small` on IS-DOS (IS2RE) and on the relaxed-structure DOS (RS2RE);
- ESNet `small` without attention (CBAM off: the ablation), on IS-DOS;
- the mean predictor and a composition-only gradient-boosting regressor (scikit-learn);
MAE / RMSE (eV/atom), stability screening on E_hull (precision, recall, F1, DAF) against the hull
of the entries outside the fold, and polymorph ranking (compositions with >= 2 prototypes in the
fold: is the predicted lowest-energy polymorph the true one?). ESNet is trained with the package's
own `train()` (validation = 10 % of the training folds' chemical systems, early stopping).
Writes results.json and table.md in --out.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datasets" / "is_dos" / "demo"


LABELS = DEMO / "labels.csv"  # replaced by a snapshot in main(): the DFT job may still be adding rows


def load_demo(column: str) -> dict[str, np.ndarray]:
    """Featurize every labelled row's DOS file (`path` = IS, `rs_path` = RS) into arrays."""
    from esnet_tf.data import stack_examples
    from esnet_tf.featurize import featurize
    from esnet_tf.labels import read_labels

    rows = read_labels(LABELS, path_column=column)  # LABELS may be a snapshot: paths are relative to DEMO
    arrays = stack_examples([featurize(DEMO / r.path, id=r.id) for r in rows], {r.id: r for r in rows})
    arrays["prototype"] = np.array([r.prototype for r in rows])
    return arrays


def save_npz(arrays: dict, idx: np.ndarray, path: Path) -> Path:
    np.savez_compressed(path, **{k: v[idx] for k, v in arrays.items()})
    return path


def write_labels(arrays: dict, idx: np.ndarray, path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "formation_energy_per_atom"])
        for i in idx:
            w.writerow([arrays["id"][i], f"{arrays['formation_energy_per_atom'][i]:.6f}"])
    return path


def train_esnet(arrays: dict, train_idx: np.ndarray, test_idx: np.ndarray, work: Path, config: str,
                epochs: int, seed: int) -> np.ndarray:
    """Train with esnet_tf.train on the training folds; predict the test fold (eV/atom)."""
    from esnet_tf.predict import Predictor
    from esnet_tf.train import TrainConfig, train

    work.mkdir(parents=True, exist_ok=True)
    npz = save_npz(arrays, train_idx, work / "train.npz")
    labels = write_labels(arrays, train_idx, work / "labels.csv")
    settings = TrainConfig(dataset=str(npz), labels=str(labels), config=config, epochs=epochs, seed=seed,
                           split_fractions=(0.9, 0.1, 0.0), early_stopping_patience=25, lr_patience=10)
    train(settings, work / "run", verbose=0)
    pred = Predictor(work / "run" / "best.keras")
    batch = {k: arrays[k][test_idx] for k in ("dos_up", "dos_down", "composition")}
    batch["id"] = arrays["id"][test_idx]
    return np.asarray(pred.predict(batch, source=str(work))).reshape(-1)


def composition_baseline(arrays: dict, train_idx: np.ndarray, test_idx: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.ensemble import GradientBoostingRegressor

    model = GradientBoostingRegressor(random_state=seed, n_estimators=300, max_depth=3, learning_rate=0.05)
    model.fit(arrays["composition"][train_idx], arrays["formation_energy_per_atom"][train_idx])
    return model.predict(arrays["composition"][test_idx])


def polymorph_ranking(formulas: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> tuple[float, int]:
    """(correct, total) over compositions with >= 2 polymorphs: predicted lowest == true lowest.

    Tied predictions (composition-only models give every polymorph the same value) count as a
    random pick among the tied ones: credit 1/k when the true lowest is among the k tied.
    """
    correct, total = 0.0, 0
    for f in np.unique(formulas):
        m = np.where(formulas == f)[0]
        if len(m) < 2:
            continue
        total += 1
        tied = m[np.isclose(pred[m], pred[m].min(), rtol=0, atol=1e-9)]
        correct += float(m[np.argmin(truth[m])] in tied) / len(tied)
    return correct, total


def screening(arrays: dict, test_idx: np.ndarray, pred: np.ndarray) -> dict:
    from esnet_tf.screening import references_from_labels, screen_rows as screen

    rows = [{"id": arrays["id"][i], "formula": arrays["formula"][i],
             "predicted_formation_energy_per_atom": f"{p:.6f}",
             "formation_energy_per_atom": f"{arrays['formation_energy_per_atom'][i]:.6f}"}
            for i, p in zip(test_idx, pred)]
    res = screen(rows, references_from_labels(LABELS), mode="ehull", costs=LABELS,
                 progress=False)
    m = res.metrics
    out = {k: m.get(k) for k in ("precision", "recall", "f1", "daf")}
    tr = (m.get("cost") or {}).get("at_target_recall") or {}
    out["cost_reduction_at_90_recall"] = tr.get("cost_reduction")
    return out


def summarise(values: list) -> dict:
    v = np.array([x for x in values if x is not None], float)
    return {"mean": float(v.mean()) if len(v) else None, "std": float(v.std()) if len(v) else None, "n": int(len(v))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="mean,composition,esnet_is,esnet_rs,esnet_is_no_attention")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy"))
    args = ap.parse_args()
    from esnet_tf.splits import kfold_of

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    global LABELS
    snapshot = out / "labels_snapshot.csv"
    snapshot.write_text((DEMO / "labels.csv").read_text())
    LABELS = snapshot
    t0 = time.time()
    is_arrays, rs_arrays = load_demo("path"), load_demo("rs_path")
    fold = np.array([kfold_of(c, args.folds, args.seed) for c in is_arrays["chemsys"]])
    y = is_arrays["formation_energy_per_atom"]
    models = args.models.split(",")
    per_fold: dict[str, list[dict]] = {m: [] for m in models}
    for k in range(args.folds):
        test_idx, train_idx = np.where(fold == k)[0], np.where(fold != k)[0]
        print(f"fold {k}: train {len(train_idx)}, test {len(test_idx)}", flush=True)
        for m in models:
            t = time.time()
            if m == "mean":
                pred = np.full(len(test_idx), y[train_idx].mean())
            elif m == "composition":
                pred = composition_baseline(is_arrays, train_idx, test_idx, args.seed)
            else:
                arrays = rs_arrays if m == "esnet_rs" else is_arrays
                config = "small"
                if m.endswith("no_attention"):
                    from esnet_tf.model import ESNetConfig

                    cfg_path = out / "small_no_attention.json"
                    cfg_path.write_text(json.dumps(ESNetConfig.small().replace(use_attention=False).to_dict()))
                    config = str(cfg_path)
                pred = train_esnet(arrays, train_idx, test_idx, out / "work" / f"{m}_fold{k}", config,
                                   args.epochs, args.seed)
            err = pred - y[test_idx]
            c, n = polymorph_ranking(is_arrays["formula"][test_idx], y[test_idx], pred)
            row = {"fold": k, "n_test": int(len(test_idx)), "mae": float(np.abs(err).mean()),
                   "rmse": float(np.sqrt((err ** 2).mean())), "polymorph_correct": c, "polymorph_total": n,
                   **screening(is_arrays, test_idx, pred), "wall_s": time.time() - t}
            per_fold[m].append(row)
            print(f"  {m:24s} MAE {row['mae']:.3f}  RMSE {row['rmse']:.3f}  polymorphs {c:.1f}/{n}  "
                  f"F1 {row['f1']}  ({row['wall_s']:.0f} s)", flush=True)
    summary = {}
    for m, rows in per_fold.items():
        pc, pt = sum(r["polymorph_correct"] for r in rows), sum(r["polymorph_total"] for r in rows)
        summary[m] = {key: summarise([r[key] for r in rows]) for key in
                      ("mae", "rmse", "precision", "recall", "f1", "daf", "cost_reduction_at_90_recall")}
        summary[m]["polymorph_ranking"] = {"correct": pc, "total": pt, "fraction": pc / pt if pt else None}
    result = {"n_examples": int(len(y)), "folds": args.folds, "epochs": args.epochs, "per_fold": per_fold,
              "summary": summary, "wall_s": time.time() - t0, "command": " ".join(sys.argv)}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    lines = ["| model | MAE (eV/atom) | RMSE (eV/atom) | precision | recall | F1 | DAF | polymorph ranking |",
             "|---|---|---|---|---|---|---|---|"]

    def ms(d: dict) -> str:
        return "n/a" if d["mean"] is None else f"{d['mean']:.3f} ± {d['std']:.3f}"

    for m, s in summary.items():
        pr = s["polymorph_ranking"]
        lines.append(f"| {m} | {ms(s['mae'])} | {ms(s['rmse'])} | {ms(s['precision'])} | {ms(s['recall'])} | "
                     f"{ms(s['f1'])} | {ms(s['daf'])} | {pr['correct']:.1f}/{pr['total']} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
