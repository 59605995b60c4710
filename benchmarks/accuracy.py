"""Accuracy study: grouped k-fold cross-validation of ESNet against composition baselines.

    python benchmarks/accuracy.py --seeds 0,1,2 --epochs 40                 # run / resume every unit
    python benchmarks/accuracy.py --seeds 0,1,2 --epochs 40 --jobs 2        # the same in 2 processes
    python benchmarks/accuracy.py --seeds 0,1,2 --epochs 40 --summary-only --readme README.md

Data: the demo labels (`datasets/is_dos/demo/labels.csv`, one IS-DOS and one RS-DOS per relaxed
structure) and `labels_augmented.csv` (the same rows plus IS-augmentation variants: IS single
points of perturbed initial structures, each labelled with its parent's relaxed energy). Both are
snapshot into --out on the first run (`--new-snapshot` takes a fresh copy: the DFT job may still
be adding rows); every cached result is keyed by the content hash of the snapshot files it reads:
labels.csv's alone, or both for the models in AUGMENTED_MODELS (so IS-augmentation variants added
later invalidate only the units that train on them).

Folds: grouped k-fold by chemical system (`esnet_tf.splits.kfold_of(chemsys, folds, seed)`); the
seed changes the fold assignment and the model initialisation. Models (MODELS below): the mean
predictor; gradient boosting on the fractional composition (`gbr_fraction`) and on Magpie-style
element-property statistics (`gbr_magpie`, esnet_tf.baselines); ESNet `small` on IS-DOS
(`esnet_is`), with the IS-augmentation variants of the training folds (`esnet_is_aug`), with the
training folds' RS-DOS rows added (`esnet_is_rs`), as a correction to gbr_magpie cross-fitted
inside the training folds (`esnet_residual`), with its size and regularisation chosen by
KerasTuner on the training folds' validation split (`esnet_is_tuned`), without attention (`esnet_is_no_attention`), with
element-property means in the composition branch (`esnet_is_elements`), and on RS-DOS for
training and test (`esnet_rs`, an upper bound). Every model except esnet_rs is tested
on one IS per structure, the structure's own.

Per (model, fold, seed) unit: MAE / RMSE (eV/atom), polymorph ranking and E_hull <= 0 screening
(precision, recall, F1, DAF) with each test candidate's predicted E_hull against the hull of the
training folds' entries plus the elements at 0 eV/atom; truly stable = the label's e_above_hull
<= 0 (the full-dataset hull); `oof_hull_*` keys repeat the metrics with the truth recomputed from
the true E_f on the same out-of-fold hull. Each unit is written atomically to
--out/cache/<hash>/<model>_f<fold>of<folds>_s<seed>_e<epochs>.json; a rerun skips finished units.
A unit being computed is locked (`esnet_tf.atomic.exclusive`), so several runs of the same command
share the work; `--jobs N` starts N such worker processes (each with cores/N TensorFlow threads)
and summarises when all have finished.
Writes results.json, table.md and accuracy.png (MAE with CIs per model, and a parity plot) in --out; `--readme FILE` rewrites the table between
`<!-- accuracy-table:start -->` and `<!-- accuracy-table:end -->`.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datasets" / "is_dos" / "demo"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "accuracy"

LABELS = DEMO / "labels.csv"  # replaced by the snapshot in main(): the DFT job may still be adding rows
SNAPSHOT, AUG_SNAPSHOT = "labels_snapshot.csv", "labels_augmented_snapshot.csv"

MODELS = {
    "mean": "mean of the training folds' labels",
    "gbr_fraction": "gradient boosting on the fractional composition",
    "gbr_magpie": "gradient boosting on Magpie-style element-property statistics",
    "esnet_is": "ESNet small on IS-DOS",
    "esnet_is_aug": "ESNet small on IS-DOS + the training folds' IS-augmentation variants",
    "esnet_is_rs": "ESNet small on IS-DOS + the training folds' RS-DOS rows",
    "esnet_residual": "gbr_magpie + ESNet small on IS-DOS trained on the cross-fitted residual",
    "esnet_is_tuned": "ESNet on IS-DOS, size and regularisation chosen by KerasTuner on the training folds",
    "esnet_is_no_attention": "ESNet small on IS-DOS without CBAM attention",
    "esnet_is_elements": "ESNet small on IS-DOS, composition branch with element-property means",
    "esnet_rs": "ESNet small on RS-DOS, trained and tested on RS-DOS (upper bound)",
}
COMPOSITION_MODELS = ("gbr_fraction", "gbr_magpie")
AUGMENTED_MODELS = ("esnet_is_aug",)  # the models that read labels_augmented.csv
RESIDUAL_BASELINE = "gbr_magpie"
INNER_FOLDS = 5  # inner grouped cross-fitting of the residual's baseline
TUNE_SPACE = ROOT / "benchmarks" / "accuracy_search_space.json"  # esnet_is_tuned's search space
TUNE_TRIALS = 6  # random-search trials per unit, each of max(1, epochs // 4) epochs (KerasTuner's Bayesian
# optimisation samples its first 3 x 6 points at random anyway)
FIGURE = "accuracy.png"  # in --out, with results.json and table.md
TABLE_START, TABLE_END = "<!-- accuracy-table:start -->", "<!-- accuracy-table:end -->"
N_BOOTSTRAP = 2000
ARRAY_KEYS = ("dos_up", "dos_down", "composition", "id", "formula", "chemsys", "formation_energy_per_atom",
              "e_above_hull")


class StudyError(Exception):
    """A bad option or input: printed as one line, exit status 2."""


# ---------------------------------------------------------------- data


def file_hash(*paths: Path) -> str:
    """First 12 hex digits of the sha256 of the files' contents (in order)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:12]


def load_rows(labels: Path, column: str, *, only_variants: bool = False) -> dict[str, np.ndarray]:
    """Featurize every row's DOS file (`path` = IS, `rs_path` = RS) of a labels snapshot into arrays.

    Paths in the snapshot are relative to the demo directory. `only_variants`: the augmented
    table's variant rows (id != parent_id), with `parent_id` and `variant` columns.
    """
    from esnet_tf.data import stack_examples
    from esnet_tf.featurize import featurize
    from esnet_tf.labels import read_labels

    rows = read_labels(labels, path_column=column)
    if only_variants:
        rows = [r for r in rows if r.get("parent_id", r.id) not in ("", r.id)]
    arrays = stack_examples([featurize(DEMO / r.path, id=r.id) for r in rows], {r.id: r for r in rows})
    arrays["prototype"] = np.array([r.prototype for r in rows], dtype=str)
    if only_variants:
        arrays["parent_id"] = np.array([r["parent_id"] for r in rows], dtype=str)
        arrays["variant"] = np.array([r.get("variant", "") for r in rows], dtype=str)
    return arrays


def load_demo(column: str) -> dict[str, np.ndarray]:
    """Arrays of `LABELS` (the snapshot once main() ran) with the DOS of `column`."""
    return load_rows(LABELS, column)


def cached_arrays(work: Path, name: str, build: Callable[[], dict]) -> dict[str, np.ndarray]:
    """Featurized arrays kept in work/<name>.npz (name carries the snapshot hash)."""
    from esnet_tf.atomic import atomic_path

    path = work / f"{name}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    arrays = build()
    work.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)
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


def take(arrays: dict, idx: np.ndarray, id_suffix: str = "") -> dict[str, np.ndarray]:
    """The ARRAY_KEYS of some rows; ids suffixed (to keep ids unique when two views of a row are stacked)."""
    out = {k: arrays[k][idx] for k in ARRAY_KEYS}
    if id_suffix:
        out["id"] = np.char.add(out["id"], id_suffix)
    return out


def concat(*parts: dict) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in ARRAY_KEYS}


class Study:
    """The snapshot's arrays: `is_` and `rs` (one row per structure, same order), `aug` (variants only).

    `hash`: labels.csv's snapshot; `aug_hash`: labels.csv's and labels_augmented.csv's together.
    """

    def __init__(self, out: Path, work: Path) -> None:
        self.labels, self.aug_labels = out / SNAPSHOT, out / AUG_SNAPSHOT
        self.hash = file_hash(self.labels)
        self.aug_hash = file_hash(self.labels, self.aug_labels)
        t = time.time()
        self.is_ = cached_arrays(work, f"is_{self.hash}", lambda: load_rows(self.labels, "path"))
        self.rs = cached_arrays(work, f"rs_{self.hash}", lambda: load_rows(self.labels, "rs_path"))
        self.aug = cached_arrays(work, f"aug_{self.aug_hash}",
                                 lambda: load_rows(self.aug_labels, "path", only_variants=True))
        if not np.array_equal(self.is_["id"], self.rs["id"]):
            raise StudyError("IS and RS rows of the snapshot are not in the same order")
        known = set(self.is_["id"].tolist())
        keep = np.array([p in known for p in self.aug["parent_id"]], bool)
        self.n_orphan_variants = int((~keep).sum())  # parents not (yet) in labels.csv's snapshot
        self.aug = {k: v[keep] for k, v in self.aug.items()}
        chemsys_of = dict(zip(self.is_["id"].tolist(), self.is_["chemsys"].tolist()))
        bad = [v for v, p, c in zip(self.aug["id"], self.aug["parent_id"], self.aug["chemsys"]) if chemsys_of[p] != c]
        if bad:
            raise StudyError(f"variants {bad[:3]} do not share their parent's chemical system")
        self.featurize_s = time.time() - t
        self._costs = None

    def key(self, model: str) -> str:
        """The hash that `model`'s units are cached under: the snapshot files it reads."""
        return self.aug_hash if model in AUGMENTED_MODELS else self.hash

    @property
    def y(self) -> np.ndarray:
        return self.is_["formation_energy_per_atom"].astype(float)

    def folds(self, folds: int, seed: int) -> np.ndarray:
        from esnet_tf.splits import kfold_of

        return np.array([kfold_of(c, folds, seed) for c in self.is_["chemsys"]])

    def costs(self):
        from esnet_tf.screening import costs_from_labels

        if self._costs is None:
            self._costs = costs_from_labels(self.labels)
        return self._costs


def augmented_training_rows(study: Study, fold_of_is: np.ndarray, k: int, folds: int, seed: int) -> np.ndarray:
    """Indices into study.aug of the variants allowed in fold k's training set (their chemsys outside fold k).

    Asserts that no selected variant's parent is a test-fold structure and that every parent is a
    training structure.
    """
    from esnet_tf.splits import kfold_of

    vfold = np.array([kfold_of(c, folds, seed) for c in study.aug["chemsys"]], int)
    sel = np.flatnonzero(vfold != k)
    test_ids = set(study.is_["id"][fold_of_is == k].tolist())
    train_ids = set(study.is_["id"][fold_of_is != k].tolist())
    parents = set(study.aug["parent_id"][sel].tolist())
    assert not parents & test_ids, f"variants of test-fold structures in training: {sorted(parents & test_ids)[:5]}"
    assert parents <= train_ids, f"variants whose parent is not a training structure: {sorted(parents - train_ids)[:5]}"
    return sel


# ---------------------------------------------------------------- models


def composition_baseline(arrays: dict, train_idx: np.ndarray, test_idx: np.ndarray, seed: int) -> np.ndarray:
    """Gradient boosting on the fractional composition (esnet_tf.baselines.gbr_fraction); eV/atom."""
    from esnet_tf.baselines import gbr_fraction

    return gbr_fraction(arrays, train_idx, test_idx, seed)


def esnet_config(name: str, work: Path) -> str:
    """A TrainConfig `config` for a named variant: 'small', or a JSON file of ESNetConfig fields."""
    from esnet_tf.model import ESNetConfig

    if name == "small":
        return "small"
    if name == "small_no_attention":
        cfg = ESNetConfig.small().replace(use_attention=False)
    elif name == "small_element_properties":
        cfg = ESNetConfig.small().replace(element_properties=True)
    else:
        raise ValueError(f"unknown ESNet variant {name!r}")
    from esnet_tf.atomic import write_text

    path = work / f"{name}.json"
    work.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(cfg.to_dict()))  # atomic: --jobs workers write it side by side
    return str(path)


def fit_esnet(train_arrays: dict, test_arrays: dict, work: Path, config: str, epochs: int, seed: int,
              batch_size: int) -> tuple[np.ndarray, dict]:
    """Train with esnet_tf.train (validation = 10 % of the training rows' chemical systems, early
    stopping) on `train_arrays`; predictions (eV/atom) for `test_arrays` and the training summary."""
    from esnet_tf.predict import Predictor
    from esnet_tf.train import TrainConfig, train

    if work.exists():
        shutil.rmtree(work)  # a unit killed mid-training starts over
    work.mkdir(parents=True)
    idx = np.arange(len(train_arrays["id"]))
    npz = save_npz(train_arrays, idx, work / "train.npz")
    labels = write_labels(train_arrays, idx, work / "labels.csv")
    settings = TrainConfig(dataset=str(npz), labels=str(labels), config=config, epochs=epochs, seed=seed,
                           batch_size=batch_size, split_fractions=(0.9, 0.1, 0.0), split_seed=seed,
                           early_stopping_patience=max(10, epochs // 2), lr_patience=max(5, epochs // 4),
                           backups=False)  # a killed unit starts over anyway; saves ~14 % of a unit
    summary = train(settings, work / "run", verbose=0)
    pred = Predictor(work / "run" / "best.keras")
    batch = {k: test_arrays[k] for k in ("dos_up", "dos_down", "composition", "id")}
    out = np.asarray(pred.predict(batch, source=str(work))).reshape(-1).astype(float)
    keep = {k: summary.get(k) for k in ("epochs_run", "best_epoch", "best_val_loss", "best_val_mae_ev_per_atom")}
    return out, keep


def tune_esnet(train_arrays: dict, work: Path, epochs: int, seed: int, batch_size: int,
               trials: int = TUNE_TRIALS, space: Path = TUNE_SPACE) -> tuple[str, dict]:
    """KerasTuner random search (`trials` trials of max(1, epochs // 4) epochs) over
    `space` on `train_arrays` only, with fit_esnet's validation split (10 % of their chemical
    systems, split seed = `seed`) as the objective; (the chosen config's JSON path, notes)."""
    from esnet_tf.atomic import write_text
    from esnet_tf.tuning.search import TuneConfig, tune

    if work.exists():
        shutil.rmtree(work)  # a unit killed mid-search starts over
    work.mkdir(parents=True)
    idx = np.arange(len(train_arrays["id"]))
    settings = TuneConfig(dataset=str(save_npz(train_arrays, idx, work / "train.npz")),
                          labels=str(write_labels(train_arrays, idx, work / "labels.csv")),
                          split_fractions=(0.9, 0.1, 0.0), split_seed=seed, tuner="random", max_trials=trials,
                          epochs=max(1, epochs // 4), batch_size=batch_size, seed=seed, search_space=str(space))
    with contextlib.redirect_stdout(io.StringIO()):  # the tuner's tables: the unit prints one line
        summary = tune(settings, work, "search", retrain_epochs=0, export_dir=None, verbose=0)
    best = summary["best_trials"][0]
    path = work / "chosen.json"
    write_text(path, json.dumps(best["config"]))
    return str(path), {"n_trials": summary["n_trials"], "trial_epochs": settings.epochs,
                       "best_trial_val_mae_ev_per_atom": best["val_mae_ev_per_atom"],
                       "hyperparameters": best["hyperparameters"], "params": best["params"]}


def residual_targets(study: Study, train_idx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(out-of-fold baseline of each training row, inner fold of each training row).

    The baseline of a training row comes from RESIDUAL_BASELINE fit on the training rows of the
    other inner folds (grouped by chemical system), never on the row's own inner fold.
    """
    from esnet_tf.baselines import BASELINES, crossfit
    from esnet_tf.splits import kfold_of

    base = BASELINES[RESIDUAL_BASELINE]
    inner = np.array([kfold_of(c, INNER_FOLDS, 1000 + seed) for c in study.is_["chemsys"][train_idx]])
    oof = crossfit(lambda fit, pred: base(study.is_, fit, pred, seed), train_idx, inner)
    return oof, inner


def run_model(study: Study, model: str, fold_of_is: np.ndarray, k: int, folds: int, seed: int, epochs: int,
              batch_size: int, work: Path) -> tuple[np.ndarray, dict]:
    """Predictions (eV/atom) for fold k's test structures, and notes about the unit."""
    from esnet_tf.baselines import BASELINES

    test_idx, train_idx = np.flatnonzero(fold_of_is == k), np.flatnonzero(fold_of_is != k)
    y = study.y
    if model == "mean":
        return np.full(len(test_idx), y[train_idx].mean()), {}
    if model in BASELINES:
        return BASELINES[model](study.is_, train_idx, test_idx, seed), {}
    unit = work / "units" / f"{model}_f{k}_s{seed}"
    test_is = take(study.is_, test_idx)
    notes: dict = {"n_train": int(len(train_idx))}
    if model == "esnet_is":
        pred, notes["train"] = fit_esnet(take(study.is_, train_idx), test_is, unit, "small", epochs, seed, batch_size)
    elif model == "esnet_is_no_attention":
        pred, notes["train"] = fit_esnet(take(study.is_, train_idx), test_is, unit,
                                         esnet_config("small_no_attention", work), epochs, seed, batch_size)
    elif model == "esnet_is_elements":
        pred, notes["train"] = fit_esnet(take(study.is_, train_idx), test_is, unit,
                                         esnet_config("small_element_properties", work), epochs, seed, batch_size)
    elif model == "esnet_rs":
        pred, notes["train"] = fit_esnet(take(study.rs, train_idx), take(study.rs, test_idx), unit, "small", epochs,
                                         seed, batch_size)
    elif model == "esnet_is_aug":
        sel = augmented_training_rows(study, fold_of_is, k, folds, seed)
        notes["n_variants_in_training"] = int(len(sel))
        pred, notes["train"] = fit_esnet(concat(take(study.is_, train_idx), take(study.aug, sel)), test_is, unit,
                                         "small", epochs, seed, batch_size)
    elif model == "esnet_is_rs":
        pred, notes["train"] = fit_esnet(concat(take(study.is_, train_idx), take(study.rs, train_idx, "__rs")),
                                         test_is, unit, "small", epochs, seed, batch_size)
    elif model == "esnet_residual":
        oof, _ = residual_targets(study, train_idx, seed)
        base_test = BASELINES[RESIDUAL_BASELINE](study.is_, train_idx, test_idx, seed)
        train = take(study.is_, train_idx)
        train["formation_energy_per_atom"] = (y[train_idx] - oof).astype(np.float32)
        resid, notes["train"] = fit_esnet(train, test_is, unit, "small", epochs, seed, batch_size)
        pred = base_test + resid
        notes["inner_oof_baseline_mae"] = float(np.abs(oof - y[train_idx]).mean())
        notes["baseline_test_mae"] = float(np.abs(base_test - y[test_idx]).mean())
    elif model == "esnet_is_tuned":
        train = take(study.is_, train_idx)
        config, notes["tuned"] = tune_esnet(train, unit / "search", epochs, seed, batch_size)
        pred, notes["train"] = fit_esnet(train, test_is, unit / "final", config, epochs, seed, batch_size)
    else:
        raise StudyError(f"unknown model {model!r}")
    if unit.exists():
        shutil.rmtree(unit, ignore_errors=True)  # the predictions are in the cache; the models are not kept
    return pred, notes


# ---------------------------------------------------------------- metrics


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


def reference_set(study: Study, train_idx: np.ndarray, note: str):
    """The training rows as PDEntries (E_f x atoms) plus every element of the snapshot at 0 eV/atom."""
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    from esnet_tf.screening import ReferenceSet, parse_formula

    entries, ids, elements = [], [], set()
    for i in train_idx:
        comp = parse_formula(str(study.is_["formula"][i]))
        entries.append(PDEntry(comp, float(study.is_["formation_energy_per_atom"][i]) * comp.num_atoms,
                               name=str(study.is_["id"][i])))
        ids.append(str(study.is_["id"][i]))
    for f in study.is_["formula"]:
        elements.update(el.symbol for el in parse_formula(str(f)).elements)
    for el in sorted(elements):
        entries.append(PDEntry(Composition(el), 0.0, name=f"{el} (element, 0 eV/atom)"))
        ids.append(f"__element_{el}")
    return ReferenceSet(entries, ids, {el: 0.0 for el in elements}, [note])


SCREEN_KEYS = ("precision", "recall", "f1", "daf")


def screening_metrics(study: Study, refs, test_idx: np.ndarray, pred: np.ndarray) -> dict:
    """E_hull <= 0 screening of the test fold against `refs` (which must not hold a test-fold entry)."""
    from esnet_tf.screening import Candidates, ScreenConfig, screen

    test_ids = study.is_["id"][test_idx]
    leaked = set(test_ids.tolist()) & set(refs.ids)
    assert not leaked, f"test-fold entries in the reference hull: {sorted(leaked)[:5]}"
    out: dict = {}
    for prefix, truth in (("", {"e_above_hull": study.is_["e_above_hull"][test_idx]}),
                          ("oof_hull_", {"formation_energy": study.y[test_idx]})):
        cands = Candidates(ids=test_ids, predicted=pred, formulas=study.is_["formula"][test_idx], **truth)
        m = screen(cands, refs, ScreenConfig(mode="ehull", threshold=0.0), costs=study.costs()).metrics
        for key in SCREEN_KEYS:
            v = m.get(key)
            out[prefix + key] = None if v is None or not math.isfinite(v) else float(v)
        tr = (m.get("cost") or {}).get("at_target_recall") or {}
        out[prefix + "cost_reduction_at_90_recall"] = tr.get("cost_reduction")
        out[prefix + "n_true_stable"] = int(m["tp"] + m["fn"]) if m.get("tp") is not None else None
    return out


def unit_metrics(study: Study, refs, test_idx: np.ndarray, pred: np.ndarray) -> dict:
    y = study.y[test_idx]
    err = pred - y
    c, n = polymorph_ranking(study.is_["formula"][test_idx], y, pred)
    return {"n_test": int(len(test_idx)), "mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
            "polymorph_correct": c, "polymorph_total": n, **screening_metrics(study, refs, test_idx, pred)}


# ---------------------------------------------------------------- statistics


def bootstrap_ci(err: np.ndarray, stat: Callable[[np.ndarray], float], n: int = N_BOOTSTRAP, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(statistic, low, high): percentile bootstrap over the rows of `err`."""
    err = np.asarray(err, float)
    rng = np.random.default_rng(seed)
    draws = np.array([stat(err[rng.integers(0, len(err), len(err))]) for _ in range(n)])
    a = (1 - level) / 2
    return float(stat(err)), float(np.quantile(draws, a)), float(np.quantile(draws, 1 - a))


def mae_of(e: np.ndarray) -> float:
    return float(np.abs(e).mean())


def rmse_of(e: np.ndarray) -> float:
    return float(np.sqrt((e ** 2).mean()))


def paired_comparison(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """Paired a - b over matched units: mean difference with a t-interval, and the Wilcoxon signed-rank test."""
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    out: dict = {"n_pairs": int(len(d)), "mean_diff": float(d.mean()) if len(d) else None,
                 "ci_low": None, "ci_high": None, "wilcoxon_statistic": None, "p_value": None}
    if len(d) >= 2:
        half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        out["ci_low"], out["ci_high"] = float(d.mean() - half), float(d.mean() + half)
    if len(d) >= 1 and np.any(d != 0):
        res = stats.wilcoxon(d)
        out["wilcoxon_statistic"], out["p_value"] = float(res.statistic), float(res.pvalue)
    return out


def mean_std(values: Sequence) -> dict:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], float)
    return {"mean": float(v.mean()) if len(v) else None, "std": float(v.std()) if len(v) else None, "n": int(len(v))}


def summarise(units: dict[str, dict[tuple[int, int], dict]], folds: int, seeds: Sequence[int]) -> dict:
    """Per model: pooled out-of-fold MAE / RMSE with bootstrap CIs (per complete seed, then averaged
    over seeds), fold-level mean ± std, polymorph ranking, screening; paired tests against the best
    composition model."""
    summary: dict = {}
    for model, got in units.items():
        if not got:
            continue
        complete = [s for s in seeds if all((k, s) in got for k in range(folds))]
        s_out: dict = {"units": len(got), "complete_seeds": complete}
        cis = {"mae": [], "rmse": []}
        for s in complete:
            err = np.concatenate([np.asarray(got[(k, s)]["pred"]) - np.asarray(got[(k, s)]["truth"])
                                  for k in range(folds)])
            cis["mae"].append(bootstrap_ci(err, mae_of, seed=s))
            cis["rmse"].append(bootstrap_ci(err, rmse_of, seed=s))
        for key in ("mae", "rmse"):
            s_out[f"pooled_{key}"] = ({"value": float(np.mean([c[0] for c in cis[key]])),
                                       "ci_low": float(np.mean([c[1] for c in cis[key]])),
                                       "ci_high": float(np.mean([c[2] for c in cis[key]])),
                                       "per_seed": {str(s): c for s, c in zip(complete, cis[key])}}
                                      if complete else None)
        rows = list(got.values())
        for key in ("mae", "rmse", *SCREEN_KEYS, "cost_reduction_at_90_recall",
                    *(f"oof_hull_{k}" for k in SCREEN_KEYS)):
            s_out[key] = mean_std([r["metrics"].get(key) for r in rows])
        pc = sum(r["metrics"]["polymorph_correct"] for r in rows)
        pt = sum(r["metrics"]["polymorph_total"] for r in rows)
        s_out["polymorph_ranking"] = {"correct": pc, "total": pt, "fraction": pc / pt if pt else None}
        s_out["wall_s"] = mean_std([r.get("wall_s") for r in rows])
        summary[model] = s_out
    comp = [m for m in COMPOSITION_MODELS if summary.get(m, {}).get("pooled_mae")]
    best = min(comp, key=lambda m: summary[m]["pooled_mae"]["value"]) if comp else None
    for model, s_out in summary.items():
        if best and model.startswith("esnet"):
            keys = sorted(set(units[model]) & set(units[best]))
            s_out["vs_best_composition"] = {
                "baseline": best, **paired_comparison([units[model][u]["metrics"]["mae"] for u in keys],
                                                      [units[best][u]["metrics"]["mae"] for u in keys])}
    return {"best_composition_model": best, "models": summary}


# ---------------------------------------------------------------- tables


def _ci(d: dict | None) -> str:
    return "n/a" if not d else f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def _ms(d: dict) -> str:
    return "n/a" if d["mean"] is None else f"{d['mean']:.2f} ± {d['std']:.2f}"


def table_markdown(result: dict) -> str:
    """The results table (markdown) with a caption line."""
    s = result["summary"]
    best = s["best_composition_model"]
    lines = [
        f"Snapshot `{result['snapshot_hash']}` (labels.csv): {result['n_structures']} structures; "
        f"`{result.get('augmented_snapshot_hash', result['snapshot_hash'])}` with labels_augmented.csv's "
        f"{result['n_variants']} IS-augmentation variants ({', '.join(result.get('augmented_models', [])) or 'no model'}); grouped {result['folds']}-fold CV by chemical system, seeds "
        f"{','.join(map(str, result['seeds']))}, ESNet {result['epochs']} epochs max. MAE / RMSE in eV/atom on the "
        f"pooled out-of-fold predictions, 95 % bootstrap CI over structures (per seed, averaged over seeds); "
        f"ΔMAE = paired per (fold, seed) MAE difference to the best composition model ({best}), t-interval and "
        f"Wilcoxon signed-rank p; screening (E_hull <= 0, mean ± std over units) and polymorph ranking pooled "
        f"over units.",
        "",
        "| model | seeds done (units) | MAE [95 % CI] | RMSE [95 % CI] | ΔMAE vs best composition [95 % CI], p "
        "| polymorph ranking | precision | recall | F1 | DAF |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        m = s["models"].get(model)
        if m is None:
            continue
        v = m.get("vs_best_composition")
        delta = "—"
        if v and v["n_pairs"]:
            ci = f" [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]" if v["ci_low"] is not None else ""
            p = f", p = {v['p_value']:.3g}" if v["p_value"] is not None else ""
            delta = f"{v['mean_diff']:+.3f}{ci}{p} (n = {v['n_pairs']})"
        pr = m["polymorph_ranking"]
        frac = f"{pr['fraction']:.2f} ({pr['correct']:.1f}/{pr['total']})" if pr["total"] else "n/a"
        seeds = ",".join(map(str, m["complete_seeds"])) or "none"
        lines.append(f"| {model} | {seeds} ({m['units']}) | {_ci(m['pooled_mae'])} | {_ci(m['pooled_rmse'])} | "
                     f"{delta} | {frac} | {_ms(m['precision'])} | {_ms(m['recall'])} | {_ms(m['f1'])} | "
                     f"{_ms(m['daf'])} |")
    return "\n".join(lines) + "\n"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def study_figure(result: dict, units: dict[str, dict[tuple[int, int], dict]], path: Path) -> Path | None:
    """accuracy.png: pooled out-of-fold MAE [95 % CI] per model (left), and predicted against true E_f of
    esnet_is and the best composition model on one seed's out-of-fold predictions (right). None
    when no model has a complete seed."""
    from esnet_tf.screening.plots import _pyplot, _save

    models, best = result["summary"]["models"], result["summary"]["best_composition_model"]
    rows = sorted(((m, s["pooled_mae"]) for m, s in models.items() if s.get("pooled_mae")),
                  key=lambda r: -r[1]["value"])  # the lowest MAE at the top
    if not rows:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.6), gridspec_kw={"width_ratios": [1.15, 1]})

    def colour(model: str) -> str:
        return "tab:blue" if model.startswith("esnet") else "0.35" if model in COMPOSITION_MODELS else "0.65"

    for i, (m, d) in enumerate(rows):
        left.errorbar(d["value"], i, xerr=[[d["value"] - d["ci_low"]], [d["ci_high"] - d["value"]]], fmt="o",
                      color=colour(m), capsize=3, ms=5)
    left.set_yticks(range(len(rows)), [f"{m} ({_n(len(models[m]['complete_seeds']), 'seed')})" for m, _ in rows],
                    fontsize=8)
    if best:
        left.axvline(models[best]["pooled_mae"]["value"], color="0.35", ls=":", lw=0.8)
    left.set_xlabel("MAE (eV/atom), pooled out of fold, 95 % bootstrap CI")
    left.set_title(f"{result['n_structures']} structures, grouped {result['folds']}-fold CV", fontsize=9)
    shown = [m for m in (best, "esnet_is") if m and models.get(m, {}).get("complete_seeds")]
    seeds = sorted(set.intersection(*(set(models[m]["complete_seeds"]) for m in shown))) if shown else []
    lo, hi = math.inf, -math.inf
    for m in shown if seeds else []:
        got = [units[m][(k, seeds[0])] for k in range(result["folds"])]
        truth = np.concatenate([r["truth"] for r in got])
        pred = np.concatenate([r["pred"] for r in got])
        right.scatter(truth, pred, s=9, alpha=0.6, edgecolors="none", color=colour(m),
                      label=f"{m}: MAE {np.abs(pred - truth).mean():.3f}")
        lo, hi = min(lo, truth.min(), pred.min()), max(hi, truth.max(), pred.max())
    if seeds:
        pad = 0.05 * (hi - lo)
        right.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        right.set_xlim(lo - pad, hi + pad)
        right.set_ylim(lo - pad, hi + pad)
        right.legend(fontsize=8, loc="upper left")
        right.set_title(f"out-of-fold predictions, seed {seeds[0]}", fontsize=9)
    right.set_xlabel("true formation energy (eV/atom)")
    right.set_ylabel("predicted (eV/atom)")
    fig.tight_layout()
    return _save(fig, path, 120)


def rewrite_readme(text: str, table: str) -> str:
    """README text with the block between TABLE_START and TABLE_END replaced by `table`."""
    a, b = text.find(TABLE_START), text.find(TABLE_END)
    if a < 0 or b < 0 or b < a or text.count(TABLE_START) != 1 or text.count(TABLE_END) != 1:
        raise StudyError(f"README needs exactly one {TABLE_START} ... {TABLE_END} pair (in that order)")
    return text[:a + len(TABLE_START)] + "\n" + table.strip("\n") + "\n" + text[b:]


# ---------------------------------------------------------------- driver


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated fold/initialisation seeds")
    ap.add_argument("--epochs", type=int, default=40, help="ESNet maximum epochs (early stopping)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from: {', '.join(MODELS)}")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--new-snapshot", action="store_true",
                    help="copy the current labels files into --out (default: reuse the snapshot there if any)")
    ap.add_argument("--summary-only", action="store_true", help="no training: summarise the cached units")
    ap.add_argument("--readme", help="rewrite the table between the accuracy-table markers of this file")
    ap.add_argument("--jobs", type=int, default=1,
                    help="worker processes computing units in parallel, each with cores/JOBS TensorFlow threads")
    ap.add_argument("--threads", type=int, help="TensorFlow intra-op threads (default: TensorFlow's choice)")
    ap.add_argument("--units-only", action="store_true",
                    help="compute units, no summary (what each --jobs worker runs)")
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        raise StudyError(f"unknown model(s) {unknown or '(none given)'}: choose from {', '.join(MODELS)}")
    if args.folds < 2:
        raise StudyError(f"--folds must be >= 2, got {args.folds}")
    if args.epochs < 1 or args.batch_size < 1:
        raise StudyError("--epochs and --batch-size must be >= 1")
    if args.jobs < 1:
        raise StudyError(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise StudyError(f"--threads must be >= 1, got {args.threads}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise StudyError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not args.seeds or min(args.seeds) < 0 or len(set(args.seeds)) != len(args.seeds):
        raise StudyError(f"--seeds must be distinct integers >= 0, got {args.seeds}")
    if args.readme:
        if not Path(args.readme).is_file():
            raise StudyError(f"--readme {args.readme}: no such file")
        rewrite_readme(Path(args.readme).read_text(encoding="utf-8"), "")  # markers checked before any work
    return args


def unit_path(out: Path, snapshot_hash: str, model: str, k: int, folds: int, seed: int, epochs: int) -> Path:
    e = epochs if model.startswith("esnet") else 0  # the baselines do not depend on epochs
    return out / "cache" / snapshot_hash / f"{model}_f{k}of{folds}_s{seed}_e{e}.json"


def take_snapshot(out: Path, new: bool) -> bool:
    """Copy the labels files into `out` unless a snapshot is there and `new` is false; True if copied."""
    from esnet_tf.atomic import write_text

    if not new and (out / SNAPSHOT).is_file() and (out / AUG_SNAPSHOT).is_file():
        return False
    for src, dst in ((DEMO / "labels.csv", SNAPSHOT), (DEMO / "labels_augmented.csv", AUG_SNAPSHOT)):
        write_text(out / dst, src.read_text(encoding="utf-8"))
    return True


def compute_unit(study: Study, args: argparse.Namespace, model: str, seed: int, k: int, path: Path,
                 refs_cache: dict, tag: str) -> dict:
    """Train / fit one (model, fold, seed) unit, score it and write its record to `path` (atomically)."""
    from esnet_tf.atomic import write_text

    out = Path(args.out)
    fold = study.folds(args.folds, seed)
    test_idx, train_idx = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
    t = time.time()
    pred, notes = run_model(study, model, fold, k, args.folds, seed, args.epochs, args.batch_size, out / "work")
    if (seed, k) not in refs_cache:
        refs_cache[(seed, k)] = reference_set(study, train_idx, f"training folds (fold {k}, seed {seed}) "
                                                                "+ elements at 0 eV/atom")
    metrics = unit_metrics(study, refs_cache[(seed, k)], test_idx, pred)
    rec = {"model": model, "fold": k, "folds": args.folds, "seed": seed, "epochs": args.epochs,
           "batch_size": args.batch_size, "snapshot_hash": study.key(model), "test_ids": study.is_["id"][test_idx].tolist(),
           "pred": [float(p) for p in pred], "truth": [float(v) for v in study.y[test_idx]],
           "metrics": metrics, "notes": notes, "wall_s": time.time() - t,
           "tf_threads": args.threads}  # None: TensorFlow's default; a unit is bit-reproducible at the same count
    write_text(path, json.dumps(rec, indent=1))
    print(f"{tag}: MAE {metrics['mae']:.3f}  RMSE {metrics['rmse']:.3f}  polymorphs "
          f"{metrics['polymorph_correct']:.1f}/{metrics['polymorph_total']}  F1 "
          f"{'n/a' if metrics['f1'] is None else format(metrics['f1'], '.3f')}  "
          f"({rec['wall_s']:.0f} s)", flush=True)
    return rec


def run_jobs(args: argparse.Namespace) -> None:
    """Compute the units in `args.jobs` worker processes (`--units-only`, cores/jobs TF threads each).

    The workers share the units through their locks; a worker that fails fails the study.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = str(args.threads or max(1, cores // args.jobs))
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--units-only", "--threads", threads, "--folds", str(args.folds),
           "--seeds", ",".join(map(str, args.seeds)), "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--models", ",".join(args.models), "--out", str(args.out)]
    print(f"{args.jobs} worker processes, {threads} TensorFlow thread(s) each", flush=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # so that finally runs
    workers = [subprocess.Popen(cmd, env=env) for _ in range(args.jobs)]  # inherit stdout: one line per unit
    try:
        codes = [w.wait() for w in workers]
    finally:
        signal.signal(signal.SIGTERM, previous)
        for w in workers:  # interrupted or killed: stop the workers too (their finished units stay cached)
            if w.poll() is None:
                w.terminate()
                w.wait()
    failed = [str(c) for c in codes if c != 0]
    if failed:
        raise StudyError(f"{len(failed)} of {args.jobs} worker process(es) failed (exit status "
                         f"{', '.join(failed)}); rerun the same command to resume")


def run(args: argparse.Namespace) -> dict:
    from esnet_tf.atomic import exclusive, write_text
    from esnet_tf.errors import UserError

    global LABELS
    if args.threads and not (args.jobs > 1 and not args.summary_only):  # before TensorFlow starts its pools
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    copied = take_snapshot(out, args.new_snapshot)
    LABELS = out / SNAPSHOT
    study = Study(out, out / "work")
    print(f"snapshot {study.hash} (with the variants {study.aug_hash}; {'new copy' if copied else 'reused'}): {len(study.y)} structures, "
          f"{len(study.aug['id'])} variants ({study.n_orphan_variants} without a parent in labels.csv left out); "
          f"features {study.featurize_s:.0f} s", flush=True)
    t0 = time.time()
    if args.jobs > 1 and not args.summary_only:
        run_jobs(args)
        args.summary_only = True  # every unit is cached now; what follows only summarises
    units: dict[str, dict[tuple[int, int], dict]] = {m: {} for m in args.models}
    todo = [(m, s, k) for m in args.models for s in args.seeds for k in range(args.folds)]
    refs_cache: dict = {}
    missing: dict[str, list[str]] = {}
    busy: list[str] = []
    for n, (model, seed, k) in enumerate(todo, 1):
        path = unit_path(out, study.key(model), model, k, args.folds, seed, args.epochs)
        tag = f"[{n}/{len(todo)}] {model} fold {k} seed {seed}"
        if path.is_file():
            units[model][(k, seed)] = json.loads(path.read_text())
            continue
        if args.summary_only:
            missing.setdefault(model, []).append(f"f{k}s{seed}")
            continue
        claim = contextlib.ExitStack()
        try:
            claim.enter_context(exclusive(path, "study unit"))
        except UserError:  # another process of this study is computing it
            busy.append(tag)
            continue
        with claim:
            if path.is_file():  # finished by another process since the check above
                units[model][(k, seed)] = json.loads(path.read_text())
                continue
            units[model][(k, seed)] = compute_unit(study, args, model, seed, k, path, refs_cache, tag)
    if busy:
        print(f"{len(busy)} unit(s) left to the other process(es) computing them: {'; '.join(busy)}", flush=True)
    if args.units_only:
        return {"units": sum(len(u) for u in units.values()), "busy": busy}
    for model, which in missing.items():
        print(f"{model}: {len(which)} unit(s) not cached, left out (--summary-only): {' '.join(which)}", flush=True)
    summary = summarise(units, args.folds, args.seeds)
    from esnet_tf.baselines import element_property_table
    from pymatgen.core import Element

    present = {Element.from_Z(int(z) + 1).symbol for z in np.flatnonzero(study.is_["composition"].sum(axis=0) > 0)}
    imputed = {p: sorted(set(v) & present) for p, v in element_property_table()[1].items() if set(v) & present}
    result = {"snapshot_hash": study.hash, "augmented_snapshot_hash": study.aug_hash,
              "augmented_models": [m for m in args.models if m in AUGMENTED_MODELS], "snapshot": [SNAPSHOT, AUG_SNAPSHOT], "n_structures": int(len(study.y)),
              "n_variants": int(len(study.aug["id"])), "folds": args.folds, "seeds": args.seeds,
              "epochs": args.epochs, "batch_size": args.batch_size, "models": args.models,
              "magpie_imputed_for_snapshot_elements": imputed,
              "truth_stable": "label e_above_hull <= 0 (hull of the whole snapshot); oof_hull_* keys: true E_f "
                              "placed on the out-of-fold hull",
              "ci": f"percentile bootstrap ({N_BOOTSTRAP} resamples) over structures of the pooled out-of-fold "
                    "predictions, per complete seed, bounds averaged over seeds",
              "paired_test": "per (fold, seed) MAE pairs: Wilcoxon signed-rank (scipy.stats.wilcoxon) and a "
                             "t-interval of the mean difference",
              "summary": summary, "wall_s": time.time() - t0,
              "command": "python benchmarks/accuracy.py " + " ".join(sys.argv[1:])}
    write_text(out / "results.json", json.dumps(result, indent=1))
    table = table_markdown(result)
    write_text(out / "table.md", table)
    print(table)
    figure = study_figure(result, units, out / FIGURE)
    if figure is not None:
        print(f"wrote {figure}")
    if args.readme:
        readme = Path(args.readme)
        write_text(readme, rewrite_readme(readme.read_text(encoding="utf-8"), table))
        print(f"rewrote the accuracy table in {readme}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except StudyError as exc:
        print(f"accuracy.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
