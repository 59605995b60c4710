"""HTVS campaign replay on the demo data: cross-fitted predictions, then `esnet campaign` per strategy.

    python benchmarks/campaign_replay.py                 # both steps
    python benchmarks/campaign_replay.py --step crossfit # only the out-of-fold predictions
    python benchmarks/campaign_replay.py --step replay   # only the campaigns (needs the CSVs)
    python benchmarks/campaign_replay.py --new-snapshot --seeds 2   # on the demo labels as they are now

Step 1 (crossfit): grouped k-fold cross-fitting by chemical system (`esnet_tf.splits.kfold_of`),
the approach of `benchmarks/accuracy.py` (its `composition_baseline`, `save_npz`, `write_labels` are
called; `train_member` is its `train_esnet` with a smaller batch): each compound is predicted by models that never saw its chemical system. The elemental
rows are the campaign's references (known before it starts), so they are in every fold's training
set. Per fold, `--seeds` ESNet `small` members (different seeds) give the mean and the spread
(std, ddof=1) of the prediction; a composition-only gradient-boosting regressor gives the
composition baseline. Writes, in --out:
  labels_snapshot.csv        the demo labels as they were (the DFT job keeps adding rows)
  oof_predictions.csv        id, formula, fold, predicted_formation_energy_per_atom(_std), members, truths
  composition_predictions.csv  id, formula, fold, predicted_formation_energy_per_atom (composition-only)
  crossfit.json              folds, seeds, epochs, wall times, out-of-fold MAE
Members finished are kept in --work, so a killed run continues.

Step 2 (replay): `esnet campaign replay` with every strategy on the snapshot and these predictions
(OUT/replay), and the model-guided strategies again with `--refit residual` (OUT/replay_refit);
each writes report.json, report.md, campaign.png, discovered_stable.csv, command.txt and one
folder per strategy (its rounds).
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from esnet_tf.atomic import atomic_path, write_text

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datasets" / "is_dos" / "demo"
OUT = ROOT / "benchmarks" / "results" / "campaign"


def _accuracy_module():
    spec = importlib.util.spec_from_file_location("esnet_accuracy_benchmark", ROOT / "benchmarks" / "accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_arrays(snapshot: Path) -> dict[str, np.ndarray]:
    """IS-DOS arrays of every row of the snapshot (paths relative to the demo directory)."""
    from esnet_tf.data import stack_examples
    from esnet_tf.featurize import featurize
    from esnet_tf.labels import read_labels

    rows = read_labels(snapshot, path_column=None)
    arrays = stack_examples([featurize(DEMO / r.path, id=r.id) for r in rows], {r.id: r for r in rows})
    arrays["n_elements"] = np.array([len(c.split("-")) for c in arrays["chemsys"]])
    return arrays


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)


def train_member(arrays: dict, train_idx: np.ndarray, test_idx: np.ndarray, work: Path, epochs: int, seed: int,
                 batch_size: int, extra: dict | None = None, config: str = "small") -> np.ndarray:
    """`benchmarks/accuracy.py`'s `train_esnet` with a smaller batch: ~15 steps per epoch on ~240 examples
    instead of 4, which is what lets a few tens of epochs fit on a shared CPU. `extra`: more training
    rows (the IS-augmentation variants of training structures). Predictions in eV/atom."""
    from esnet_tf.predict import Predictor
    from esnet_tf.train import TrainConfig, train

    acc = _accuracy_module()
    work.mkdir(parents=True, exist_ok=True)
    train_arrays = acc.take(arrays, train_idx)
    if extra is not None:
        train_arrays = acc.concat(train_arrays, extra)
    everything = np.arange(len(train_arrays["id"]))
    npz = acc.save_npz(train_arrays, everything, work / "train.npz")
    labels = acc.write_labels(train_arrays, everything, work / "labels.csv")
    settings = TrainConfig(dataset=str(npz), labels=str(labels), config=acc.esnet_config(config, work),
                           epochs=epochs, seed=seed,
                           batch_size=batch_size, split_fractions=(0.9, 0.1, 0.0),
                           early_stopping_patience=max(10, epochs // 2), lr_patience=max(5, epochs // 4),
                           backups=False)  # a killed fit starts over anyway
    train(settings, work / "run", verbose=0)
    pred = Predictor(work / "run" / "best.keras")
    batch = {k: arrays[k][test_idx] for k in ("dos_up", "dos_down", "composition")}
    return np.asarray(pred.predict(batch, source=str(work))).reshape(-1)


def crossfit(out: Path, work: Path, folds: int, seeds: int, epochs: int, fold_seed: int, batch_size: int,
             only_seed: int | None = None, new_snapshot: bool = False, augmented: bool = False,
             config: str = "small") -> None:
    from esnet_tf.isdos import PREDICTION_COLUMN, PREDICTION_STD_COLUMN
    from esnet_tf.splits import kfold_of

    acc = _accuracy_module()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    snapshot, aug_snapshot = out / "labels_snapshot.csv", out / "labels_augmented_snapshot.csv"
    if new_snapshot or not snapshot.exists():
        write_text(snapshot, (DEMO / "labels.csv").read_text(encoding="utf-8"))
    if augmented and (new_snapshot or not aug_snapshot.exists()):
        write_text(aug_snapshot, (DEMO / "labels_augmented.csv").read_text(encoding="utf-8"))
    # members are cached per snapshot and cross-fitting setup: a new snapshot never reuses old members
    tag = (f"_aug{acc.file_hash(aug_snapshot)}" if augmented else "") + ("" if config == "small" else f"_{config}")
    work = work / f"{acc.file_hash(snapshot)}_k{folds}_fs{fold_seed}_e{epochs}_b{batch_size}{tag}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    arrays = load_arrays(snapshot)
    n = len(arrays["id"])
    variants = acc.load_rows(aug_snapshot, "path", only_variants=True) if augmented else None
    compound = arrays["n_elements"] > 1
    fold = np.array([kfold_of(c, folds, fold_seed) for c in arrays["chemsys"]])
    members = np.full((seeds, n), np.nan)
    comp_pred = np.full(n, np.nan)
    timing = []
    def split(k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.where(compound & (fold == k))[0], np.where(~compound | (fold != k))[0]

    for k in range(folds):
        test_idx, train_idx = split(k)
        comp_pred[test_idx] = acc.composition_baseline(arrays, train_idx, test_idx, 0)
    for s in range(seeds) if only_seed is None else [only_seed]:  # seed-major: a finished prefix is an ensemble
        for k in range(folds):
            test_idx, train_idx = split(k)
            cached = work / f"fold{k}_seed{s}.npy"
            if cached.exists():
                members[s, test_idx] = np.load(cached)
                if cached.with_suffix(".json").exists():
                    timing.append(json.loads(cached.with_suffix(".json").read_text()))
                continue
            t = time.time()
            extra = None
            if variants is not None:  # a variant trains only where its parent does (same chemical system)
                train_ids, test_ids = set(arrays["id"][train_idx].tolist()), set(arrays["id"][test_idx].tolist())
                sel = np.flatnonzero([pid in train_ids for pid in variants["parent_id"]])
                assert not set(variants["parent_id"][sel].tolist()) & test_ids
                extra = acc.take(variants, sel)
            pred = train_member(arrays, train_idx, test_idx, work / f"fold{k}_seed{s}", epochs, s, batch_size, extra,
                                config)
            with atomic_path(cached) as tmp:
                np.save(tmp, np.asarray(pred, float))
            members[s, test_idx] = pred
            timing.append({"fold": k, "seed": s, "n_train": int(len(train_idx)), "n_test": int(len(test_idx)),
                           "n_variants_in_training": 0 if extra is None else int(len(extra["id"])),
                           "wall_s": time.time() - t})
            write_text(cached.with_suffix(".json"), json.dumps(timing[-1]))
            print(f"fold {k} seed {s}: train {len(train_idx)} test {len(test_idx)} "
                  f"MAE {np.abs(pred - arrays['formation_energy_per_atom'][test_idx]).mean():.3f} eV/atom "
                  f"({time.time() - t:.0f} s)", flush=True)
    if only_seed is not None:
        return
    idx = np.where(compound)[0]
    mean = members[:, idx].mean(axis=0)
    std = members[:, idx].std(axis=0, ddof=1) if seeds > 1 else np.full(len(idx), np.nan)
    y = arrays["formation_energy_per_atom"][idx]
    eh = arrays["e_above_hull"][idx]
    _write_csv(out / "oof_predictions.csv",
               ["id", "formula", "fold", PREDICTION_COLUMN, PREDICTION_STD_COLUMN,
                *[f"member_{s}" for s in range(seeds)], "formation_energy_per_atom", "e_above_hull"],
               [[arrays["id"][i], arrays["formula"][i], int(fold[i]), f"{m:.6f}", f"{sd:.6f}",
                 *[f"{members[s, i]:.6f}" for s in range(seeds)], f"{y_:.6f}", f"{e:.6f}"]
                for i, m, sd, y_, e in zip(idx, mean, std, y, eh)])
    _write_csv(out / "composition_predictions.csv", ["id", "formula", "fold", PREDICTION_COLUMN],
               [[arrays["id"][i], arrays["formula"][i], int(fold[i]), f"{comp_pred[i]:.6f}"] for i in idx])
    info = {"snapshot_hash": acc.file_hash(snapshot), "n_rows": int(n), "n_candidates": int(len(idx)), "n_references": int((~compound).sum()),
            "folds": folds, "fold_seed": fold_seed, "seeds": seeds, "epochs": epochs, "batch_size": batch_size,
            "config": config, "augmented": augmented,
            "oof_mae_esnet": float(np.abs(mean - y).mean()),
            "oof_mae_composition": float(np.abs(comp_pred[idx] - y).mean()),
            "mean_std_esnet": float(np.nanmean(std)) if seeds > 1 else None,
            "training_wall_s": float(sum(t["wall_s"] for t in timing)),
            "wall_s_this_session": time.time() - t0, "trainings": timing,
            "command": " ".join(["python", *sys.argv])}
    write_text(out / "crossfit.json", json.dumps(info, indent=1) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "trainings"}, indent=1))


def replay(out: Path, batch_size: int, kappa: float, seed: int, start_over: bool = False) -> None:
    """Every strategy without refit (OUT/replay), and the model-guided ones with `--refit residual` (OUT/replay_refit).

    `start_over` (after --new-snapshot): replace campaigns of an earlier snapshot (`--overwrite`);
    otherwise a campaign folder of the same pool resumes and one of another pool is an error.
    """
    base = [sys.executable, "-m", "esnet_tf.cli", "campaign", "replay",
            "--labels", str(out / "labels_snapshot.csv"),
            "--predictions", str(out / "oof_predictions.csv"),
            "--composition-predictions", str(out / "composition_predictions.csv"),
            "--batch-size", str(batch_size), "--kappa", str(kappa), "--seed", str(seed)]
    for strategies, extra, name in (("lcb,greedy,stable_per_cost,random,composition,oracle", [], "replay"),
                                    ("lcb,greedy,stable_per_cost,composition,oracle", ["--refit", "residual"],
                                     "replay_refit")):
        cmd = base + ["--strategy", strategies, *extra, "--out", str(out / name), *(["--overwrite"] if start_over else [])]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        write_text(out / name / "command.txt", " ".join(["esnet", *cmd[4:]]).replace(str(ROOT) + "/", "") + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", choices=("all", "crossfit", "replay"), default="all")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3, help="ESNet members per fold (their spread is sigma)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--train-batch-size", type=int, default=16, help="ESNet training batch (examples)")
    ap.add_argument("--only-seed", type=int, help="train only this seed's members (parallel runs), then stop")
    ap.add_argument("--batch-size", type=int, default=10, help="candidates relaxed per round")
    ap.add_argument("--kappa", type=float, default=1.0, help="LCB weight on sigma")
    ap.add_argument("--seed", type=int, default=0, help="campaign seed (random strategy)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--work", default="/tmp/esnet_campaign_crossfit",
                    help="trained members, one subfolder per snapshot hash and setup (a killed run resumes)")
    ap.add_argument("--config", default="small", choices=("small", "small_element_properties", "small_no_attention"),
                    help="ESNet variant of the members (benchmarks/accuracy.py esnet_config)")
    ap.add_argument("--augmented", action="store_true",
                    help="train each member also on the IS-augmentation variants of its training structures")
    ap.add_argument("--new-snapshot", action="store_true",
                    help="copy the current demo labels into OUT/labels_snapshot.csv (the DFT job may have added "
                         "rows; the replays then start over); without it the committed snapshot is reused")
    args = ap.parse_args()
    out = Path(args.out)
    if args.step in ("all", "crossfit"):
        crossfit(out, Path(args.work), args.folds, args.seeds, args.epochs, args.fold_seed, args.train_batch_size,
                 args.only_seed, args.new_snapshot, args.augmented, args.config)
        if args.only_seed is not None:
            return 0
    if args.step in ("all", "replay"):
        replay(out, args.batch_size, args.kappa, args.seed, start_over=args.new_snapshot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
