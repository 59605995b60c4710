"""Cross-fitted (out-of-fold) predictions of the demo data for a campaign replay.

Grouped k-fold cross-fitting by chemical system (`esnet_tf.study.data.kfold`), the study's
protocol: each compound is predicted by models that never saw its chemical system. The elemental
rows are the campaign's references (known before it starts), so they are in every fold's training
set. Per fold, `seeds` ESNet members (different seeds) give the mean and the spread (std, ddof=1)
of the prediction; a composition-only gradient-boosting regressor gives the composition baseline.
Writes, in `out`:
  labels_snapshot.csv          the demo labels as they were (the DFT job keeps adding rows)
  oof_predictions.csv          id, formula, fold, predicted_formation_energy_per_atom(_std), members, truths
  composition_predictions.csv  id, formula, fold, predicted_formation_energy_per_atom (composition-only)
  crossfit.json                folds, seeds, epochs, wall times, out-of-fold MAE
Members finished are kept in `work` (one .npy per fold and seed), so a killed run continues.
Energies in eV/atom, wall times in s.
"""
from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.atomic import atomic_path, write_text
from esnet_tf.study.data import AUG_SNAPSHOT, SNAPSHOT, concat, file_hash, kfold, load_rows, take

#: ESNet variants a member may be (names of the replay's --config)
ESNET_VARIANTS: dict[str, Callable[[], Any]] = {
    "small": lambda: "small",
    "small_element_properties": lambda: _small(element_properties=True),
    "small_no_attention": lambda: _small(use_attention=False),
}


def _small(**changes: Any) -> Any:
    from esnet_tf.model import ESNetConfig

    return ESNetConfig.small().replace(**changes)


def load_arrays(snapshot: Path, demo: Path) -> dict[str, np.ndarray]:
    """IS-DOS arrays of every row of the snapshot (paths relative to `demo`), with `n_elements`."""
    arrays = load_rows(snapshot, "path", demo)
    arrays["n_elements"] = np.array([len(c.split("-")) for c in arrays["chemsys"]])
    return arrays


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)


def crossfit(out: Path, work: Path, demo: Path, *, folds: int = 5, seeds: int = 3, epochs: int = 30,
             fold_seed: int = 0, batch_size: int = 16, only_seed: int | None = None, new_snapshot: bool = False,
             augmented: bool = False, config: str = "small", command: str = "") -> dict[str, Any] | None:
    """Out-of-fold ESNet members and the composition baseline (see the module docstring); returns
    crossfit.json's content (None with `only_seed`: that seed's members only, no outputs)."""
    from esnet_tf.baselines import gbr_fraction
    from esnet_tf.errors import UserError
    from esnet_tf.isdos import PREDICTION_COLUMN, PREDICTION_STD_COLUMN
    from esnet_tf.study.fit import fit_esnet

    if config not in ESNET_VARIANTS:
        raise UserError(f"unknown ESNet variant {config!r}: use one of {', '.join(ESNET_VARIANTS)}")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    snapshot, aug_snapshot = out / SNAPSHOT, out / AUG_SNAPSHOT
    if new_snapshot or not snapshot.exists():
        write_text(snapshot, (demo / "labels.csv").read_text(encoding="utf-8"))
    if augmented and (new_snapshot or not aug_snapshot.exists()):
        write_text(aug_snapshot, (demo / "labels_augmented.csv").read_text(encoding="utf-8"))
    # members are cached per snapshot and cross-fitting setup: a new snapshot never reuses old members
    tag = (f"_aug{file_hash(aug_snapshot)}" if augmented else "") + ("" if config == "small" else f"_{config}")
    work = work / f"{file_hash(snapshot)}_k{folds}_fs{fold_seed}_e{epochs}_b{batch_size}{tag}"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    arrays = load_arrays(snapshot, demo)
    n = len(arrays["id"])
    variants = load_rows(aug_snapshot, "path", demo, only_variants=True) if augmented else None
    compound = arrays["n_elements"] > 1
    fold = kfold(arrays["chemsys"], folds, fold_seed)
    members = np.full((seeds, n), np.nan)
    comp_pred = np.full(n, np.nan)
    timing = []

    def split(k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.where(compound & (fold == k))[0], np.where(~compound | (fold != k))[0]

    for k in range(folds):
        test_idx, train_idx = split(k)
        comp_pred[test_idx] = gbr_fraction(arrays, train_idx, test_idx, 0)
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
            train = take(arrays, train_idx)
            n_variants = 0
            if variants is not None:  # a variant trains only where its parent does (same chemical system)
                train_ids, test_ids = set(arrays["id"][train_idx].tolist()), set(arrays["id"][test_idx].tolist())
                sel = np.flatnonzero([pid in train_ids for pid in variants["parent_id"]])
                if set(variants["parent_id"][sel].tolist()) & test_ids:
                    raise AssertionError("a variant of a test-fold structure selected for training")
                train, n_variants = concat(train, take(variants, sel)), int(len(sel))
            pred, _ = fit_esnet(train, take(arrays, test_idx), work / f"fold{k}_seed{s}", ESNET_VARIANTS[config](),
                                epochs, s, batch_size, split_seed=0)
            with atomic_path(cached) as tmp:
                np.save(tmp, np.asarray(pred, float))
            members[s, test_idx] = pred
            timing.append({"fold": k, "seed": s, "n_train": int(len(train_idx)), "n_test": int(len(test_idx)),
                           "n_variants_in_training": n_variants, "wall_s": time.time() - t})
            write_text(cached.with_suffix(".json"), json.dumps(timing[-1]))
            print(f"fold {k} seed {s}: train {len(train_idx)} test {len(test_idx)} "
                  f"MAE {np.abs(pred - arrays['formation_energy_per_atom'][test_idx]).mean():.3f} eV/atom "
                  f"({time.time() - t:.0f} s)", flush=True)
    if only_seed is not None:
        return None
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
    info = {"snapshot_hash": file_hash(snapshot), "n_rows": int(n), "n_candidates": int(len(idx)),
            "n_references": int((~compound).sum()),
            "folds": folds, "fold_seed": fold_seed, "seeds": seeds, "epochs": epochs, "batch_size": batch_size,
            "config": config, "augmented": augmented,
            "oof_mae_esnet": float(np.abs(mean - y).mean()),
            "oof_mae_composition": float(np.abs(comp_pred[idx] - y).mean()),
            "mean_std_esnet": float(np.nanmean(std)) if seeds > 1 else None,
            "training_wall_s": float(sum(t["wall_s"] for t in timing)),
            "wall_s_this_session": time.time() - t0, "trainings": timing, "command": command}
    write_text(out / "crossfit.json", json.dumps(info, indent=1) + "\n")
    return info


def oof_from_study(out: Path, study_out: Path, model: str, *, seeds: tuple[int, ...] = (0, 1, 2), folds: int = 5,
                   epochs: int = 40, snapshot: Path | None = None, command: str = "") -> dict[str, Any]:
    """`out`/oof_predictions.csv from the accuracy study's cached units of `model` (no training).

    The study's units are out-of-fold by construction: seed s predicts every row with a model that
    never saw its chemical system (grouped k-fold, fold assignment s). The members of a candidate are
    its predictions under `seeds` (mean, std ddof=1); `fold` is its seed-`seeds[0]` fold. The study's
    snapshot (`study_out`/labels_snapshot.csv) must be the campaign's (`snapshot`, by default
    `out`/labels_snapshot.csv): same hash. Candidates: the rows with more than one element.
    Returns crossfit.json's content.
    """
    from esnet_tf.errors import UserError
    from esnet_tf.isdos import PREDICTION_COLUMN, PREDICTION_STD_COLUMN
    from pymatgen.core import Composition

    from esnet_tf.study.models import MODELS
    from esnet_tf.study.run import unit_path

    if model not in MODELS:
        raise UserError(f"unknown study model {model!r}: use one of {', '.join(MODELS)}")
    if len(seeds) < 2:
        raise UserError(f"--seeds {','.join(map(str, seeds))}: an ensemble spread needs at least two seeds")
    snapshot, study_snapshot = snapshot or out / SNAPSHOT, study_out / SNAPSHOT
    out.mkdir(parents=True, exist_ok=True)
    for path in (snapshot, study_snapshot):
        if not path.is_file():
            raise UserError(f"{path} not found: run the campaign crossfit step / the study once first")
    key = file_hash(snapshot)
    if file_hash(study_snapshot) != key:
        raise UserError(f"{snapshot} (hash {key}) is not the study's snapshot {study_snapshot} (hash "
                        f"{file_hash(study_snapshot)}): rerun the study on the same labels (--new-snapshot)")
    if MODELS[model].augmented:
        key = file_hash(snapshot, study_out / AUG_SNAPSHOT)
    rows = list(csv.DictReader(snapshot.open(newline="", encoding="utf-8")))
    ids = [r["id"] for r in rows]
    position = {i: n for n, i in enumerate(ids)}
    members = np.full((len(seeds), len(ids)), np.nan)
    fold = np.full(len(ids), -1)
    missing, wall = [], 0.0
    for s_i, seed in enumerate(seeds):
        for k in range(folds):
            path = unit_path(study_out, key, model, k, folds, seed, epochs)
            if not path.is_file():
                missing.append(path.name)
                continue
            unit = json.loads(path.read_text())
            wall += float(unit.get("wall_s") or 0.0)
            for i, p in zip(unit["test_ids"], unit["pred"]):
                if i in position:
                    members[s_i, position[i]] = p
                    if s_i == 0:
                        fold[position[i]] = k
    if missing:
        raise UserError(f"{len(missing)} study unit(s) of {model} missing in {study_out}/cache/{key} "
                        f"({', '.join(missing[:3])}...): compute them with `python benchmarks/accuracy.py "
                        f"--models {model} --seeds {','.join(map(str, seeds))} --epochs {epochs} --units-only`")
    idx = [n for n, r in enumerate(rows) if len(Composition(r["formula"]).elements) > 1]
    if np.isnan(members[:, idx]).any():
        raise UserError(f"the study units of {model} do not cover every candidate of {snapshot}")
    mean = members[:, idx].mean(axis=0)
    std = members[:, idx].std(axis=0, ddof=1)
    y = np.array([float(rows[i]["formation_energy_per_atom"]) for i in idx])
    eh = np.array([float(rows[i]["e_above_hull"]) for i in idx])
    _write_csv(out / "oof_predictions.csv",
               ["id", "formula", "fold", PREDICTION_COLUMN, PREDICTION_STD_COLUMN,
                *[f"member_{s}" for s in range(len(seeds))], "formation_energy_per_atom", "e_above_hull"],
               [[ids[i], rows[i]["formula"], int(fold[i]), f"{m:.6f}", f"{sd:.6f}",
                 *[f"{members[s, i]:.6f}" for s in range(len(seeds))], f"{y_:.6f}", f"{e:.6f}"]
                for i, m, sd, y_, e in zip(idx, mean, std, y, eh)])
    info = {"snapshot_hash": file_hash(snapshot), "n_rows": len(ids), "n_candidates": len(idx),
            "n_references": len(ids) - len(idx), "folds": folds, "fold_seed": "the study seed of each member",
            "seeds": list(seeds), "epochs": epochs, "config": f"study model {model}",
            "source": f"{study_out.name}/cache/{key}: {model} units (out-of-fold by chemical system)",
            "oof_mae_esnet": float(np.abs(mean - y).mean()), "mean_std_esnet": float(std.mean()),
            "training_wall_s": wall, "command": command}
    write_text(out / "crossfit.json", json.dumps(info, indent=1) + "\n")
    return info
