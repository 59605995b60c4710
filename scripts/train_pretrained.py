"""Train, evaluate and ship a pretrained ESNet ensemble of `esnet_tf.saved_models`.

    nice -n 5 .venv/bin/python scripts/train_pretrained.py                       # the current recipe
    .venv/bin/python scripts/train_pretrained.py --recipe eform --name ESNet-GPAWDemo-2026.12-EFormPerAtom

Recipes (`RECIPES`):
- `is_relax` (default, `ESNet-GPAWDemo-2026.12-EFormPerAtomFromISEnergy`): the study's
  `esnet_is_relax_elements` (`esnet_tf.pretrained.is_relax_config`: ESNet `small` + the IS formation
  energy as an input, relaxation-energy target, element-property means), the study's training
  settings (batch 16, at most 40 epochs, early stopping after 20, ReduceLROnPlateau after 10);
  output E_f per atom (eV/atom) as every model's. The train split of the 0.8/0.1/0.1 chemical-system
  split is divided once more by chemical system (`split_of(chemsys, (0.8, 0.2, 0.0), seed=1)`):
  its 'validation' part is the calibration split, never used for training or early stopping; σ,
  the 90 % interval and the σ threshold of the domain flag are fitted on it.
- `is_relax_pool` (`ESNet-GPAWDemoPool-2026.12-EFormPerAtomFromISEnergy`): `is_relax` trained on the demo
  and the hypothetical pool's elemental phases and competing binaries (13 more elements); the pool's
  candidates are never used: they are the out-of-sample set (`benchmarks/out_of_sample.py`).
- `uip_correction_pool` (`ESNet-GPAWDemoPool-2026.12-EFormPerAtomFromUIP`): the study's `esnet_uip_correction`
  (`esnet_tf.pretrained.uip_correction_config`: ESNet `small` + the IS and CHGNet's relaxed formation energies
  as inputs, output E_f(CHGNet) + correction, element-property means) on the rows and splits of `is_relax_pool`.
  CHGNet's formation energies (eV/atom) come from the demo's and the pool's `uip_chgnet.csv` (merged as the
  study merges them) against CHGNet's elemental references; N, O, F, Cl references are fitted
  (`esnet_tf.uip.fit_gas_references`) on the train split only. The train rows' own values are cross-fitted
  (5 inner folds by chemical system, as the study's training rows), every other split's use the train-split fit;
  the references (eV/atom) and the CHGNet version are stored in model.json (`uip`), and `esnet predict ... --uip`
  uses exactly them.
- `eform` (the first shipped model, `ESNet-GPAWDemo-2026.12-EFormPerAtom`): ESNet `small`, batch 64,
  trained on the whole train split, σ recalibrated on the validation split (its early-stopping split).

Stages (each resumes: a finished stage's outputs are reused, so a rerun after an interruption
continues where it stopped):
1. snapshot: the demo dataset's labels.csv (with `is_relax_pool` also the pool's elements and
   competitors) as it is now (the DFT job may add rows later) and the IS-DOS of every row,
   `WORK/features.npz` + `WORK/labels.csv`;
2. members: `--members` ESNet models, seeds 0..M-1, trained with `esnet_tf.train.train`, early
   stopping on the validation split (chemical systems by `esnet_tf.splits.split_of`, 0.8/0.1/0.1,
   seed 0); a finished member (summary.json) is skipped, an interrupted one resumes from its backup;
3. ship: the ensemble (`esnet_tf.ensemble.build_ensemble`) as `OUT/NAME/model.keras`, its TF Serving
   SavedModel `OUT/NAME/1/` with warmup requests, `splits.json` (ids and truths of every split),
   `domain.json` (training domain and flag rule), `model.json` and `README.md`, with the test
   metrics of every other shipped model on the same test rows.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def snapshot(work: Path, with_pool: bool = False, pool_roles: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """features.npz + labels.csv of the demo rows (and with `with_pool` the pool's rows of `pool_roles`) as
    they are now (reused when present, if taken with the same roles); labels.csv gains a `dataset` column."""
    from esnet_tf import resources
    from esnet_tf.atomic import atomic_path, write_text
    from esnet_tf.featurize import featurize, save_examples
    from esnet_tf.labels import read_labels

    npz, labels, roles_file = work / "features.npz", work / "labels.csv", work / "pool_roles.txt"
    roles = ",".join(pool_roles) if with_pool else ""
    if npz.is_file() and labels.is_file():
        taken = roles_file.read_text().strip() if roles_file.is_file() else "element,competitor"  # before roles
        if taken != roles:
            raise SystemExit(f"{work}: its snapshot holds the pool roles '{taken}', this run asks for '{roles}': "
                             "give another --work")
        return npz, labels
    work.mkdir(parents=True, exist_ok=True)
    write_text(roles_file, roles + "\n")
    sources = {"demo": resources.demo_dir()} | ({"pool": resources.pool_dir()} if with_pool else {})
    header: list[str] = []
    table: list[dict] = []
    files = {}
    for dataset, folder in sources.items():
        text = (folder / "labels.csv").read_text()
        write_text(work / f"labels.{dataset}.source.csv", text)
        with open(work / f"labels.{dataset}.source.csv", newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = header or list(reader.fieldnames or [])
            kept = [r for r in reader if dataset == "demo" or r.get("role") in pool_roles]
        clash = {r["id"] for r in kept} & {r["id"] for r in table}
        if clash:
            raise SystemExit(f"snapshot: ids in both datasets ({sorted(clash)[:3]}); ids must be unique")
        table += [{**{k: r.get(k, "") for k in header}, "dataset": dataset} for r in kept]
        files |= {r.id: r.file for r in read_labels(folder / "labels.csv")}
    t = time.time()
    examples = [featurize(files[r["id"]], id=r["id"]) for r in table]
    save_examples(examples, npz)
    # the labels file for training: paths relative to each row's dataset directory (column `dataset`)
    with atomic_path(labels) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=header + ["dataset"], lineterminator="\n")
        w.writeheader()
        w.writerows(table)
    print(f"snapshot: {len(examples)} examples featurized in {time.time() - t:.0f} s -> {npz}", flush=True)
    return npz, labels


@dataclass(frozen=True)
class Recipe:
    """How one shipped model is trained: ESNet config ('small' or 'is_relax'), batch (examples), epochs,
    patiences (epochs), and whether a calibration split is held out of the train split."""

    name: str
    config: str
    batch_size: int
    epochs: int
    patience: int
    lr_patience: int
    calibration: bool
    with_pool: bool = False  # also the pool's rows of `pool_roles`
    uip: bool = False  # CHGNet's formation energy as an input (`uip_energies`)
    pool_roles: tuple[str, ...] = ()  # with_pool: the pool's roles trained on (SHIPPED_POOL_ROLES)


#: the pool's roles the shipped pool models train on: its elements and competitors. Not the label-range
#: compounds (POOL_TRAINING_ROLES, which the study trains on): their relaxation energies (5 to 58 eV/atom,
#: the IS of a compressed gas-element solid) are the is_relax target and swamp its squared loss; trained
#: with them the IS-energy pool model scored 0.186 eV/atom on its 61 test rows against 0.131 without
#: (2026-12-07; docs/study.md, "Training on the label-range compounds"), and the study's ablation saw no
#: gain on the candidates.
SHIPPED_POOL_ROLES = ("element", "competitor")


RECIPES = {
    "is_relax": Recipe("ESNet-GPAWDemo-2026.12-EFormPerAtomFromISEnergy", "is_relax", 16, 40, 20, 10, True),
    "is_relax_pool": Recipe("ESNet-GPAWDemoPool-2026.12-EFormPerAtomFromISEnergy", "is_relax", 16, 40, 20, 10, True,
                            with_pool=True, pool_roles=SHIPPED_POOL_ROLES),
    "uip_correction_pool": Recipe("ESNet-GPAWDemoPool-2026.12-EFormPerAtomFromUIP", "uip_correction", 16, 40, 20, 10,
                                  True, with_pool=True, uip=True, pool_roles=SHIPPED_POOL_ROLES),
    "eform": Recipe("ESNet-GPAWDemo-2026.12-EFormPerAtom", "small", 64, 120, 25, 10, False),
}

FRACTIONS = (0.8, 0.1, 0.1)
#: the train split's second split by chemical system: 'validation' of it = the calibration split
CALIBRATION_FRACTIONS, CALIBRATION_SEED = (0.8, 0.2, 0.0), 1
SPLIT_RULE = ("esnet_tf.splits.split_of(chemsys, (0.8, 0.1, 0.1), seed=0); with a calibration split, the train "
              "split's rows with split_of(chemsys, (0.8, 0.2, 0.0), seed=1) == 'validation' are the calibration split")
TRAIN_KEYS = ("dos_up", "dos_down", "composition", "formation_energy_per_atom", "id", "formula")


def split_of_rows(chemsys: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The split of every row ('train', 'calibration' (recipes with one), 'validation', 'test') by its chemical
    system (`SPLIT_RULE`)."""
    from esnet_tf.splits import split_of

    out = np.array([split_of(str(c), FRACTIONS, 0) for c in chemsys], dtype=object)
    if recipe.calibration:
        cal = np.array([s == "train" and split_of(str(c), CALIBRATION_FRACTIONS, CALIBRATION_SEED) == "validation"
                        for c, s in zip(chemsys, out)], dtype=bool)
        out[cal] = "calibration"
    return out


def split_arrays(arrays: dict, recipe: Recipe) -> dict[str, dict]:
    """{'train', 'calibration' (recipes with one), 'validation', 'test'}: rows of `arrays` per split."""
    split = split_of_rows(arrays["chemsys"], recipe)
    names = ("train", "calibration", "validation", "test") if recipe.calibration else ("train", "validation", "test")
    return {s: {k: v[split == s] for k, v in arrays.items()} for s in names}


#: inner folds (by chemical system) of the train rows' cross-fitted CHGNet formation energies, as the study's
#: training rows (`esnet_tf.study.models.INNER_FOLDS`), and their seed
UIP_INNER_FOLDS, UIP_INNER_SEED = 5, 1000
#: the potential whose formation energy a `uip` recipe takes
UIP_MODEL_NAME = "chgnet"


def snapshot_uip(work: Path, with_pool: bool) -> list[Path]:
    """The potential's result tables (`uip_chgnet.csv` + its JSON) of the demo (and the pool) as they are now,
    copied into `work` once (reused when present): `uip_chgnet.<dataset>.csv` / `.json`."""
    from esnet_tf import resources
    from esnet_tf.atomic import write_text

    out = []
    for dataset, folder in (("demo", resources.demo_dir()), ("pool", resources.pool_dir()))[:1 + with_pool]:
        csv_path = work / f"uip_{UIP_MODEL_NAME}.{dataset}.csv"
        if not csv_path.is_file():
            # the JSON first: a copy interrupted between the two leaves no CSV, so it is redone
            write_text(csv_path.with_suffix(".json"), (folder / f"uip_{UIP_MODEL_NAME}.json").read_text())
            write_text(csv_path, (folder / f"uip_{UIP_MODEL_NAME}.csv").read_text())
        out.append(csv_path)
    return out


def uip_energies(arrays: dict, recipe: Recipe, work: Path) -> tuple[np.ndarray, dict]:
    """CHGNet's formation energy (eV/atom) of every row of `arrays` and the references it used.

    Elemental references: the lowest CHGNet energy per atom of each element's crystalline phases in the demo's
    and the pool's results (`esnet_tf.study.data.merge_uip_tables`); N, O, F, Cl: fitted on the train split's
    rows only (`esnet_tf.uip.fit_gas_references`, against their DFT formation energies). Rows of every other split
    use those references; a train row's value is cross-fitted (references fitted on the train rows of the other
    inner folds, `esnet_tf.uip.cross_fitted_formation_energies`; where that leaves it without one, the train-split
    fit), so no training row informs its own input, as in the study. Returns (values (N, 1) float32, the `uip`
    record of model.json: potential, version, settings, references in eV/atom)."""
    from esnet_tf.study.data import kfold, merge_uip_tables
    from esnet_tf.uip import GAS_ELEMENTS, cross_fitted_formation_energies, fit_gas_references, read_table

    paths = snapshot_uip(work, recipe.with_pool)
    table = read_table(paths[0])
    if len(paths) > 1:
        table = merge_uip_tables(table, read_table(paths[1]), paths[1])
    ids = [str(i) for i in arrays["id"]]
    missing = [i for i in ids if i not in table.energies or not np.isfinite(table.energies[i])]
    if missing:
        raise SystemExit(f"{', '.join(str(p) for p in paths)}: no CHGNet energy of {len(missing)} row(s) "
                         f"({', '.join(missing[:3])}): rerun `esnet uip relax --demo --labels LABELS --out CSV` there")
    split = split_of_rows(arrays["chemsys"], recipe)
    y = arrays["formation_energy_per_atom"].astype(np.float64)
    train_ids = [i for i, s in zip(ids, split) if s == "train"]
    dft = {i: float(v) for i, v, s in zip(ids, y, split) if s == "train"}  # only train labels are read
    gas = fit_gas_references(train_ids, table.energies, table.compositions, dft, table.crystal_mu)
    fitted = table.formation_energies(gas)
    chemsys = dict(zip(ids, arrays["chemsys"]))
    inner = kfold(np.array([chemsys[i] for i in train_ids]), UIP_INNER_FOLDS, UIP_INNER_SEED)
    cross, _ = cross_fitted_formation_energies(table, dft, dict(zip(train_ids, inner.tolist())))
    n_fallback = sum(not np.isfinite(cross[i]) for i in train_ids)
    values = np.array([cross[i] if s == "train" and np.isfinite(cross[i]) else fitted[i]
                       for i, s in zip(ids, split)], np.float64)
    bad = [i for i, v in zip(ids, values) if not np.isfinite(v)]
    if bad:
        raise SystemExit(f"no CHGNet formation energy of {len(bad)} row(s) ({', '.join(bad[:3])}): an element "
                         "without a reference")
    meta = table.meta
    record = {
        "model": meta.get("model"), "model_version": meta.get("model_version"), "package": meta.get("package"),
        "package_version": meta.get("package_version"), "settings": meta.get("settings"),
        "input": "uip_formation_energy_per_atom",
        "definition": "E_f = E_uip - sum_i x_i mu_i (eV/atom; E_uip: `uip_energy_per_atom` of `esnet uip relax`, "
                      "x_i atomic fractions, mu_i `references`)",
        "references": {el: float(v) for el, v in sorted({**table.crystal_mu, **gas}.items())},
        "elemental_references": {el: float(v) for el, v in sorted(table.crystal_mu.items())},
        "fitted_references": {el: float(gas[el]) for el in GAS_ELEMENTS if el in gas},
        "fitted_on": f"the train split ({len(train_ids)} rows; esnet_tf.uip.fit_gas_references, least squares "
                     "against their DFT formation energies)",
        "train_rows": f"cross-fitted on {UIP_INNER_FOLDS} inner folds by chemical system (seed {UIP_INNER_SEED}); "
                      f"{n_fallback} row(s) with the train-split fit instead",
        "sources": [f"datasets/is_dos/{p.name.split('.')[1]}/uip_{UIP_MODEL_NAME}.csv" for p in paths],
    }
    return values.astype(np.float32).reshape(-1, 1), record


def dataset_description(recipe: Recipe) -> str:
    """What a recipe trains on, for splits.json and model.json."""
    text = "is_dos/demo (datasets/is_dos/demo/labels.csv)"
    if recipe.with_pool:
        text += (" + the non-candidate rows of is_dos/pool (datasets/is_dos/pool/labels.csv, roles "
                 f"{', '.join(recipe.pool_roles)}; never its candidates, the out-of-sample set)")
    if recipe.uip:
        text += (f"; CHGNet's relaxations of every row: uip_{UIP_MODEL_NAME}.csv of "
                 + ("both datasets" if recipe.with_pool else "the demo"))
    return text


def member_config(recipe: Recipe) -> str | dict:
    from esnet_tf.pretrained import is_relax_config, uip_correction_config

    configs = {"is_relax": is_relax_config, "uip_correction": uip_correction_config}
    return configs[recipe.config]().to_dict() if recipe.config in configs else recipe.config


def train_members(npz: Path, labels: Path, work: Path, n_members: int, recipe: Recipe) -> list[Path]:
    """Train (or reuse) the members; returns their best.keras paths."""
    from esnet_tf.isdos import ENERGY_INPUTS
    from esnet_tf.train import TrainConfig, backup_epoch, run_finished, train

    config = member_config(recipe)
    energy = tuple(getattr(config, "get", lambda *_: ())("energy_inputs", ()) or ())
    parts = split_arrays(load_snapshot(npz, labels, recipe), recipe) if recipe.calibration else None
    paths = []
    for seed in range(n_members):
        run = work / f"member_{seed}"
        paths.append(run / "best.keras")
        if run_finished(run):
            print(f"member {seed}: finished earlier ({run}), skipped", flush=True)
            continue
        common = dict(config=config, epochs=recipe.epochs, batch_size=recipe.batch_size, seed=seed,
                      early_stopping_patience=recipe.patience, lr_patience=recipe.lr_patience)
        resume = backup_epoch(run) is not None
        t = time.time()
        if parts is None:
            summary = train(TrainConfig(dataset=str(npz), labels=str(labels), split_fractions=FRACTIONS, split_seed=0,
                                        **common), run, resume=resume, verbose=2)
        else:
            keys = TRAIN_KEYS + tuple(e for e in ENERGY_INPUTS if e in energy)
            data = {s: {k: parts[s][k] for k in keys} for s in ("train", "validation")}
            summary = train(TrainConfig(**common), run, train_data=data["train"], validation_data=data["validation"],
                            resume=resume, verbose=2)
        print(f"member {seed}: {summary['epochs_run']} epochs, best {summary['best_epoch']}, "
              f"val MAE {summary['best_val_mae_ev_per_atom']:.4f} eV/atom, {time.time() - t:.0f} s", flush=True)
    return paths


# ---------------------------------------------------------------- shipping

def _rows(part: dict) -> list[dict]:
    """splits.json rows of one split: id, formula, chemsys, truths (eV/atom), the IS formation energy (eV/atom),
    and where the model takes it CHGNet's formation energy (eV/atom, the value the model was given)."""
    from esnet_tf.model import UIP_FORMATION_ENERGY

    n = len(part["id"])
    ef_is = np.asarray(part.get("is_formation_energy_per_atom", np.full(n, np.nan)), np.float64)
    rows = [{"id": str(i), "formula": str(f), "chemsys": str(c), "dataset": str(ds),
             "formation_energy_per_atom": float(y),
             "e_above_hull": None if not np.isfinite(h) else float(h),
             "is_formation_energy_per_atom": None if not np.isfinite(e) else round(float(e), 6)}
            for i, f, c, ds, y, h, e in zip(part["id"], part["formula"], part["chemsys"], part["dataset"],
                                            part["formation_energy_per_atom"], part["e_above_hull"],
                                            ef_is.reshape(n, -1)[:, 0])]
    if UIP_FORMATION_ENERGY in part:  # float32 as the model saw it: exact through JSON
        for r, v in zip(rows, np.asarray(part[UIP_FORMATION_ENERGY], np.float32).reshape(n)):
            r[UIP_FORMATION_ENERGY] = float(v)
    return rows


def load_snapshot(npz: Path, labels: Path, recipe: Recipe | None = None) -> dict:
    """The snapshot's arrays (+ code, dataset, and with a `uip` recipe CHGNet's formation energy, eV/atom:
    `uip_energies`)."""
    from esnet_tf.data import load_npz_arrays

    arrays = dict(load_npz_arrays(str(npz), labels))
    with np.load(npz, allow_pickle=False) as d:  # this script's own snapshot
        code = dict(zip(d["id"].astype(str), d["code"].astype(str)))
    arrays["code"] = np.array([code[i] for i in arrays["id"]])
    with open(labels, newline="", encoding="utf-8") as fh:  # snapshots made before the pool recipe: all demo
        dataset = {r["id"]: r.get("dataset") or "demo" for r in csv.DictReader(fh)}
    arrays["dataset"] = np.array([dataset[i] for i in arrays["id"]])
    if recipe is not None and recipe.uip:
        from esnet_tf.model import UIP_FORMATION_ENERGY

        arrays[UIP_FORMATION_ENERGY], _ = uip_energies(arrays, recipe, npz.parent)
    return arrays


def regression_metrics(truth: np.ndarray, pred: np.ndarray) -> dict:
    err = np.asarray(pred, np.float64) - np.asarray(truth, np.float64)
    return {"n": int(len(err)), "mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err ** 2)))}


def screening_metrics(table, labels: Path, weight: float = 0.0) -> dict:
    """E_hull <= 0 screening of the rows of `table` against the hull of the other labelled rows
    (the accuracy benchmark's convention), ranking by E_hull - weight x sigma."""
    from esnet_tf.isdos import PREDICTION_COLUMN, PREDICTION_STD_COLUMN
    from esnet_tf.screening import references_from_labels, screen_rows

    rows = [{"id": r["id"], "formula": r["formula"], PREDICTION_COLUMN: f"{r[PREDICTION_COLUMN]:.6f}",
             PREDICTION_STD_COLUMN: f"{r.get(PREDICTION_STD_COLUMN, 0.0):.6f}",
             "formation_energy_per_atom": f"{r['formation_energy_per_atom']:.6f}"} for r in table.rows()]
    res = screen_rows(rows, references_from_labels(labels), mode="ehull", threshold=0.0, costs=labels,
                      uncertainty_weight=weight, progress=False)
    m = res.metrics
    return {k: (None if m.get(k) is None else float(m[k])) for k in ("precision", "recall", "f1", "accuracy", "daf")} \
        | {"n_candidates": int(m.get("n_candidates", len(rows))), "uncertainty_weight": weight}


def paired_mae(truth: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    """|error| of predictions `a` minus that of `b` on the same rows (eV/atom): the mean difference (= ΔMAE) with
    a 95 % percentile bootstrap interval over the rows (structures), the Wilcoxon signed-rank p, and how many
    rows `a` is closer on."""
    from esnet_tf.study.stats import bootstrap_ci, paired_comparison

    ea = np.abs(np.asarray(a, np.float64) - truth)
    eb = np.abs(np.asarray(b, np.float64) - truth)
    diff, low, high = bootstrap_ci(ea - eb, lambda d: float(d.mean()))
    return {"n": int(len(truth)), "mae_this": float(ea.mean()), "mae_other": float(eb.mean()), "delta_mae": diff,
            "ci_low": low, "ci_high": high, "p_value": paired_comparison(ea, eb)["p_value"],
            "n_this_closer": int(np.sum(ea < eb)), "interval": "95 % percentile bootstrap over the rows (2000, seed 0)",
            "test": "Wilcoxon signed-rank, two-sided"}


#: fractions kept (lowest σ first) of the risk–coverage table in a model's README
RISK_FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.0)


def other_models(out: Path, name: str, test_ids: list[str]) -> list[str]:
    """The other shipped models in `out` evaluated on exactly these test rows (their splits.json)."""
    names = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and p.name != name and (p / "splits.json").is_file()):
        rows = json.loads((folder / "splits.json").read_text())["splits"].get("test", [])
        if sorted(r["id"] for r in rows) == sorted(test_ids):
            names.append(folder.name)
    return names


def ship_ensemble(members: list[Path], npz: Path, labels: Path, out: Path, recipe: Recipe, *, command: str,
                  settings: dict) -> dict:
    """Build, calibrate, export, evaluate and document the ensemble in `out/recipe.name/`; returns its model.json."""
    import esnet_tf
    from esnet_tf import resources
    from esnet_tf.atomic import write_text
    from esnet_tf.domain import Domain
    from esnet_tf.ensemble import (DEFAULT_COVERAGE, build_ensemble, calibration_metrics, fit_interval_scale,
                                   fit_std_scale, interval_coverage, member_predictions)
    from esnet_tf.export import export_ensemble
    from esnet_tf.isdos import ENERGY_INPUTS, PREDICTION_COLUMN, PREDICTION_STD_COLUMN
    from esnet_tf.model import load_model
    from esnet_tf.pretrained import LOWER_COLUMN, UPPER_COLUMN, ESNetModel
    from esnet_tf.study.out_of_sample import flag_scores, risk_coverage

    name = recipe.name
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    arrays = load_snapshot(npz, labels, recipe)
    uip = uip_energies(arrays, recipe, npz.parent)[1] if recipe.uip else None
    parts = split_arrays(arrays, recipe)
    calib_split = "calibration" if recipe.calibration else "validation"
    order = ("train", "calibration", "validation", "test") if recipe.calibration else ("train", "validation", "test")
    splits = {s: _rows(parts[s]) for s in order}
    for m in members:  # the members' own record of what they trained on must be these rows
        cfg = json.loads((m.parent / "config.json").read_text())
        assert cfg["data"]["n_train"] == len(splits["train"]), (m, cfg["data"], len(splits["train"]))
    write_text(folder / "splits.json", json.dumps({
        "rule": SPLIT_RULE, "dataset": dataset_description(recipe),
        "n_rows_snapshot": int(len(arrays["id"])), "units": "eV/atom",
        "calibration_split": calib_split, "splits": splits}, indent=0) + "\n")

    loaded = [load_model(p) for p in members]
    energy_inputs = tuple(t.name for t in loaded[0].inputs if t.name in ENERGY_INPUTS)
    provenance = json.loads((resources.demo_dir() / "provenance.json").read_text())
    dft = {"code": provenance.get("code"), "paw_setups": provenance.get("paw_setups"), **provenance.get("settings", {})}
    domain = Domain.fit(parts["train"], parts["train"]["code"], dft_settings=dft, energy_inputs=energy_inputs)

    # σ: variance scaling on the calibration rows; interval: split-conformal quantile of |error| / σ on them
    cal = parts[calib_split]
    cal_truth = cal["formation_energy_per_atom"].astype(np.float64)
    cal_members = member_predictions(build_ensemble(loaded), cal).astype(np.float64)
    std_scale = fit_std_scale(cal_truth, cal_members)
    cal_mean, cal_std = cal_members.mean(axis=1), cal_members.std(axis=1, ddof=1) * std_scale
    interval_scale = fit_interval_scale(cal_truth, cal_mean, cal_std, DEFAULT_COVERAGE) if recipe.calibration else None
    if recipe.calibration:
        domain = domain.with_sigma_threshold(cal_std, 0.9, rows="calibration rows (never used for training or "
                                                               "early stopping)")
    domain.save(folder / "domain.json")
    t = time.time()
    exported = export_ensemble(members, out, name, 1, std_scale=std_scale, interval_scale=interval_scale,
                               keras_out=folder / "model.keras", n_warmup=4, overwrite=True)
    export_s = time.time() - t

    model = ESNetModel(folder)
    metrics, calib, calib_raw, member_mae, coverage, flags = {}, {}, {}, {}, {}, {}
    screening, tables = {}, {}
    for split in order:
        part = parts[split]
        table = model.predict_arrays(part)
        tables[split] = table
        truth = part["formation_energy_per_atom"].astype(np.float64)
        pred, std = table[PREDICTION_COLUMN], table[PREDICTION_STD_COLUMN]
        metrics[split] = regression_metrics(truth, pred)
        calib[split] = calibration_metrics(truth, pred, std)
        calib_raw[split] = calibration_metrics(truth, pred, std / std_scale)
        if LOWER_COLUMN in table.columns:
            coverage[split] = interval_coverage(truth, table[LOWER_COLUMN], table[UPPER_COLUMN])
        flags[split] = flag_scores(truth, pred, [bool(d) for d in table["domain"]])
        per = member_predictions(model.keras_model, part)
        member_mae[split] = [regression_metrics(truth, per[:, j])["mae"] for j in range(per.shape[1])]
    test = parts["test"]
    truth = test["formation_energy_per_atom"].astype(np.float64)
    screening = {f"kappa_{k:g}": screening_metrics(tables["test"], labels, k) for k in (0.0, 0.5, 1.0, 2.0)}
    metrics["test"]["f1"] = screening["kappa_0"]["f1"]
    metrics["test"]["mean_predictor_mae"] = float(np.mean(np.abs(truth - parts["train"]["formation_energy_per_atom"]
                                                                 .astype(np.float64).mean())))
    references = {"mean of the train rows": metrics["test"]["mean_predictor_mae"]}
    if "is_formation_energy_per_atom" in test:
        tr = parts["train"]
        shift = float(np.median(tr["is_formation_energy_per_atom"].reshape(-1) - tr["formation_energy_per_atom"]))
        is_shift = test["is_formation_energy_per_atom"].reshape(-1).astype(np.float64) - shift
        references["is_shift (IS E_f minus the train rows' median relaxation energy)"] = \
            regression_metrics(truth, is_shift)["mae"]
    chgnet_alone = None
    if recipe.uip:  # the input this model corrects, alone: CHGNet's E_f with the model's references
        e_uip = test["uip_formation_energy_per_atom"].reshape(-1).astype(np.float64)
        references["CHGNet's formation energy alone (uip_formation_energy_per_atom)"] = \
            regression_metrics(truth, e_uip)["mae"]
        chgnet_alone = {**regression_metrics(truth, e_uip),
                        "paired": paired_mae(truth, tables["test"][PREDICTION_COLUMN], e_uip)}
    risk = {s: risk_coverage(parts[s]["formation_energy_per_atom"], tables[s][PREDICTION_COLUMN],
                             tables[s][PREDICTION_STD_COLUMN], coverages=RISK_FRACTIONS) for s in ("test",)}
    compared = {}
    for other in other_models(out, name, [r["id"] for r in splits["test"]]):
        om = ESNetModel(out / other)
        lacking = [e for e in om.predictor.energy_inputs if e not in test]
        if lacking:  # e.g. the UIP model beside a recipe without CHGNet energies: it ships the comparison itself
            print(f"{other}: not compared on the test rows (needs {', '.join(lacking)}, which this recipe lacks)")
            continue
        ot = om.predict_arrays(test)
        compared[other] = {**regression_metrics(truth, ot[PREDICTION_COLUMN]),
                           "f1": screening_metrics(ot, labels, 0.0)["f1"],
                           "n_flagged": int(sum(bool(d) for d in ot.columns.get("domain", []))),
                           "inputs": [t for t in om.predictor.energy_inputs],
                           "paired": paired_mae(truth, tables["test"][PREDICTION_COLUMN], ot[PREDICTION_COLUMN])}
    summaries = [json.loads((m.parent / "summary.json").read_text()) for m in members]
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "README.md") / 1e6
    config = json.loads((members[0].parent / "config.json").read_text()).get("model", {})
    meta = {
        "name": name, "kind": "deep ensemble", "n_members": len(members), "config": recipe.config,
        "model_config": config,
        "target": "formation_energy_per_atom", "units": "eV/atom", "esnet_tf_version": esnet_tf.__version__,
        "inputs": ["dos_up", "dos_down", "composition", *energy_inputs],
        **({"uip": uip} if uip is not None else {}),
        "data": {"description": f"GPAW IS-DOS, {dataset_description(recipe)} ({len(arrays['id'])} rows)",
                 "dataset": "is_dos/demo" + (" + is_dos/pool" if recipe.with_pool else ""),
                 "n_rows": int(len(arrays["id"])),
                 "n_rows_per_dataset": {str(k): int(v)
                                        for k, v in zip(*np.unique(arrays["dataset"], return_counts=True))},
                 **{f"n_{s}": len(splits[s]) for s in order},
                 "splits_file": "splits.json", "split_rule": SPLIT_RULE, "dft": dft},
        "training": {**settings, "seeds": list(range(len(members))),
                     "wall_s": float(sum(s.get("wall_time_s_this_session", 0.0) for s in summaries)),
                     "members": [{"seed": j, "epochs_run": s["epochs_run"], "best_epoch": s["best_epoch"],
                                  "best_val_mae": s["best_val_mae_ev_per_atom"], "params": s["params"]}
                                 for j, s in enumerate(summaries)]},
        "std": {"definition": "sample std over the members (ddof=1) x std_scale", "std_scale": std_scale,
                "std_scale_fit": f"sqrt(mean(z^2)) on the {calib_split} split, z = error / raw std"},
        "interval": None if interval_scale is None else {
            "method": "split-conformal quantile of |error| / σ", "coverage_nominal": DEFAULT_COVERAGE,
            "interval_scale": interval_scale, "fitted_on": f"the {calib_split} split ({len(cal_truth)} rows, never "
                                                           "used for training or early stopping)",
            "definition": "lower, upper = mean -/+ interval_scale x σ (eV/atom)",
            "outputs": ["formation_energy_per_atom_lower", "formation_energy_per_atom_upper"],
            "columns": [LOWER_COLUMN, UPPER_COLUMN], "coverage": coverage},
        "domain_rule": domain.rule(), "domain_flags": flags,
        "metrics": metrics, "member_mae": member_mae, "calibration": calib, "calibration_raw_std": calib_raw,
        "risk_coverage": risk, "references_test_mae": references, "compared_on_test": compared,
        **({"chgnet_alone_on_test": chgnet_alone} if chgnet_alone else {}),
        "screening_test": screening, "test_rows_outside_domain": flags["test"]["n_flagged"],
        "serving": {"version": 1, "signature": "serving_default", "inputs": exported.get("inputs"),
                    "outputs": exported.get("outputs"), "n_warmup": exported["n_warmup"],
                    "max_abs_diff_vs_keras": exported["max_abs_diff"], "export_s": export_s},
        "size_mb": size_mb, "command": command,
    }
    write_text(folder / "model.json", json.dumps(meta, indent=1) + "\n")
    write_text(folder / "README.md", model_readme(meta, domain))
    return meta


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def model_readme(meta: dict, domain) -> str:
    m, c, d = meta["metrics"], meta["calibration"], meta["data"]
    dft, iv, tr = d["dft"], meta.get("interval"), meta["training"]
    splits = [s for s in ("train", "calibration", "validation", "test") if s in m]
    energy = [x for x in meta.get("inputs", []) if x not in ("dos_up", "dos_down", "composition")]
    uip = meta.get("uip")
    pot = {"chgnet": "CHGNet"}.get((uip or {}).get("model", ""), (uip or {}).get("model", ""))
    is_energy = [x for x in energy if x != "uip_formation_energy_per_atom"]
    what = ("the relaxed formation energy (eV/atom) from the IS-DOS of the unrelaxed structure"
            + (f"{',' if uip else ' and'} its IS formation energy (`{', '.join(is_energy)}`, eV/atom, from the same "
               "single point)" if is_energy else "")
            + (f" and the formation energy of the structure {pot} relaxed (`uip_formation_energy_per_atom`, "
               "eV/atom)" if uip else ""))
    lines = [f"# {meta['name']}", "",
             f"A deep ensemble of {meta['n_members']} ESNet models (seeds {', '.join(map(str, tr['seeds']))}) "
             f"predicting {what}, with an uncertainty: the members' std"
             + (", and a calibrated 90 % interval." if iv else "."), ""]
    if meta["config"] == "is_relax":
        lines += ["Configuration: the study's best ESNet row `esnet_is_relax_elements` (`esnet_tf.pretrained."
                  "is_relax_config()`): ESNet `small` + the IS formation energy as an input (normalised inside), "
                  "a relaxation-energy target (the head predicts ΔE >= 0 through a softplus; output E_f(IS) − ΔE), "
                  "element-property means in the composition branch. The output is still "
                  "`formation_energy_per_atom` in eV/atom.", ""]
    if meta["config"] == "uip_correction":
        lines += ["Configuration: the study's `esnet_uip_correction` (`esnet_tf.pretrained.uip_correction_config()`): "
                  "ESNet `small` + the IS formation energy and CHGNet's formation energy as inputs (normalised "
                  "inside), a `uip_correction` target (the head predicts a correction through a Dense layer that "
                  "starts at zero; output E_f(CHGNet) + correction), element-property means in the composition "
                  "branch. The output is `formation_energy_per_atom` in eV/atom. It needs CHGNet's relaxation of "
                  "each input structure (`esnet uip relax`, no DFT); the DFT it needs is the IS single point only.",
                  ""]
    lines += ["## Data", "",
              (f"- The embedded demo dataset `is_dos/demo` and the pool's elemental phases, competing binaries and "
               f"label-range compounds (`is_dos/pool`, roles element, competitor and label_range; never its "
               f"candidates, which are the out-of-sample set) as of this model: {d['n_rows']} rows ("
               + ", ".join(f"{k} {v}" for k, v in d.get("n_rows_per_dataset", {}).items()) + ")"
               if "pool" in d.get("dataset", "") else
               f"- The embedded demo dataset `is_dos/demo` as of this model: {d['n_rows']} rows")
              + " (GPAW IS-DOS, relaxed formation energies from the same engine). `splits.json` lists the ids and "
              "truths of every split this model used.",
              f"- DFT: {dft.get('code')}, {dft.get('paw_setups')}, {dft.get('xc')}, plane waves {dft.get('ecut')} eV, "
              f"k-point density {dft.get('kpt_density')} per Å^-1, Fermi-Dirac {dft.get('smearing')} eV; IS-DOS on "
              "E - E_F = linspace(-20, 10, 1500) eV.",
              "- Split by chemical system (`esnet_tf.splits.split_of`, 0.8/0.1/0.1 of the systems, seed 0: the "
              + ("demo rows in the same splits as in every GPAWDemo model, the pool's by their own systems)"
                 if "pool" in d.get("dataset", "") else "same validation and test rows as every GPAWDemo model)")
              + ("; the train split divided once more by chemical system (`split_of(chemsys, (0.8, 0.2, 0.0), "
                 "seed=1)`), its second part the calibration split, used for nothing but σ, the interval and the "
                 "σ threshold" if "calibration" in m else "") + ": "
              + ", ".join(f"{s} {d[f'n_{s}']}" for s in splits) + " rows.", "",
              "## Errors (eV/atom)", "",
              "| split | n | MAE | RMSE | within ±1σ | within ±2σ | Spearman(abs err, σ) | mean z² |"
              + (" 90 % interval coverage |" if iv else ""),
              "|---|---|---|---|---|---|---|---|" + ("---|" if iv else "")]
    for s in splits:
        lines.append(f"| {s} | {m[s]['n']} | {m[s]['mae']:.4f} | {m[s]['rmse']:.4f} | "
                     f"{c[s]['within_1_sigma']:.2f} | {c[s]['within_2_sigma']:.2f} | "
                     f"{_f(c[s]['spearman_abs_error_vs_sigma'], 2)} | {c[s]['mean_squared_z']:.2f} |"
                     + (f" {iv['coverage'][s]:.2f} |" if iv else ""))
    mm = meta["member_mae"]["test"]
    lines += ["", f"Test MAE of the members alone: {', '.join(f'{x:.3f}' for x in mm)} (mean {np.mean(mm):.3f}). "
              "References on the same test rows: "
              + "; ".join(f"{k} {v:.3f}" for k, v in meta["references_test_mae"].items()) + "."]
    if meta.get("compared_on_test"):
        sc0 = meta["screening_test"]["kappa_0"]
        lines += ["", "### Against the other shipped models, same test rows", "",
                  "ΔMAE = this model's |error| minus the other's, averaged over the test rows (eV/atom; negative: "
                  "this model closer), with a 95 % percentile bootstrap interval over the structures and the "
                  "Wilcoxon signed-rank p of the paired |errors|.", "",
                  "| model | inputs | test MAE | test RMSE | F1 (E_hull <= 0) | test rows flagged | ΔMAE [95 % CI] | "
                  "Wilcoxon p |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {meta['name']} (this) | IS-DOS + {', '.join(energy) or '—'} | {m['test']['mae']:.3f} | "
                  f"{m['test']['rmse']:.3f} | {_f(sc0['f1'])} | {meta['test_rows_outside_domain']} | — | — |"]
        for k, v in meta["compared_on_test"].items():
            pm = v.get("paired")
            lines.append(f"| {k} | IS-DOS{''.join(' + ' + x for x in v.get('inputs', []))} | {v['mae']:.3f} | "
                         f"{v['rmse']:.3f} | {_f(v['f1'])} | {v['n_flagged']} | "
                         + (f"{pm['delta_mae']:+.3f} [{pm['ci_low']:+.3f}, {pm['ci_high']:+.3f}] | "
                            f"{pm['p_value']:.2g} |" if pm and pm.get("p_value") is not None else "— | — |"))
        ca = meta.get("chgnet_alone_on_test")
        if ca:
            pm = ca["paired"]
            lines.append(f"| CHGNet alone (its E_f with this model's references) | — | {ca['mae']:.3f} | "
                         f"{ca['rmse']:.3f} | — | — | {pm['delta_mae']:+.3f} [{pm['ci_low']:+.3f}, "
                         f"{pm['ci_high']:+.3f}] | {pm['p_value']:.2g} |")
    if uip:
        fit = ", ".join(f"{el} {v:.3f}" for el, v in uip["fitted_references"].items())
        lines += ["", f"### {pot} references (`model.json` → `uip`)", "",
                  f"- Potential: {pot} weights {uip['model_version']} ({uip['package']} "
                  f"{uip['package_version']}), relaxation settings of `esnet uip relax` "
                  f"(fmax {uip['settings'].get('fmax')} eV/Å, at most {uip['settings'].get('max_steps')} FIRE steps, "
                  f"cell relaxed: {uip['settings'].get('relax_cell')}).",
                  f"- {uip['definition']}.",
                  f"- Elemental references ({len(uip['elemental_references'])}): the lowest CHGNet energy per atom "
                  "of each element's crystalline phases in the demo's and the pool's results "
                  f"({', '.join(uip['sources'])}).",
                  f"- Fitted (no crystalline phase in the data): {fit} eV/atom, on {uip['fitted_on']}. The train rows' "
                  f"own inputs were {uip['train_rows']} (a row whose gas element occurs only in its own inner fold).",
                  "- `esnet predict` computes every input's CHGNet formation energy with exactly these references "
                  "(not the CSV's formation column); an element without one is refused."]
    oos = meta.get("out_of_sample")
    if oos:
        lines += ["", "## Out of sample: the pool's candidates", "",
                  f"`{oos['command']}`: chemical systems absent from the training data (the pool's candidates"
                  + (f"; {oos['n_without_uip']} candidate(s) without a CHGNet relaxation in the pool's "
                     "uip_chgnet.csv left out" if oos.get("n_without_uip") else "") + "), eV/atom.", "",
                  "| model | rows | MAE | Spearman | 90 % coverage | flagged | ΔMAE (this − it) [95 % CI] | "
                  "Wilcoxon p |", "|---|---|---|---|---|---|---|---|"]
        for row in oos["rows"]:
            pm = row.get("paired")
            lines.append(f"| {row['model']} | {row['n']} | {row['mae']:.3f} | {_f(row.get('spearman'), 2)} | "
                         f"{_f(row.get('interval_coverage'), 2)} | {row.get('n_flagged', '—')} | "
                         + (f"{pm['delta_mae']:+.3f} [{pm['ci_low']:+.3f}, {pm['ci_high']:+.3f}] | "
                            f"{pm['p_value']:.2g} |" if pm else "— | — |"))
        if oos.get("note"):
            lines += ["", oos["note"]]
    lines += ["", "## Uncertainty", "",
              f"σ = sample std over the members × {meta['std']['std_scale']:.3f} (variance scaling: "
              f"{meta['std']['std_scale_fit']}; ideal Gaussian: 0.68 within ±1σ, 0.95 within ±2σ). Raw-std "
              f"calibration on test: {meta['calibration_raw_std']['test']['within_1_sigma']:.2f} within ±1σ, "
              f"{meta['calibration_raw_std']['test']['within_2_sigma']:.2f} within ±2σ."]
    if iv:
        lines += ["", f"90 % interval: {iv['method']} — q = {iv['interval_scale']:.3f} is the "
                  f"⌈(n + 1) · 0.9⌉-th smallest |error| / σ on {iv['fitted_on']}; lower, upper = mean ∓ q σ, "
                  "served by the SavedModel (outputs `formation_energy_per_atom_lower` / `_upper`) and written by "
                  "`esnet predict` (columns `predicted_formation_energy_per_atom_lower` / `_upper`). Measured "
                  "coverage on rows it was not fitted on: test "
                  f"{iv['coverage']['test']:.2f} ({m['test']['n']} rows), validation "
                  f"{iv['coverage']['validation']:.2f} ({m['validation']['n']} rows; used for early stopping). "
                  f"With {m['test']['n']} test rows one row is {100 / m['test']['n']:.1f} points of coverage.", "",
                  "Risk–coverage on the test rows (keep the rows with the lowest σ):", "",
                  "| fraction kept | rows | MAE (eV/atom) |", "|---|---|---|"]
        lines += [f"| {r['fraction_kept']:.2f} | {r['n_kept']} | {r['mae']:.3f} |"
                  for r in meta["risk_coverage"]["test"]]
    sc = meta["screening_test"]
    lines += ["", "## Screening on the test split (E_hull <= 0 eV/atom)", "",
              "Hull of the labelled rows outside the candidates (the accuracy benchmark's convention); ranking "
              "by E_hull − κσ (`esnet screen --uncertainty-weight κ`):", "",
              "| κ | precision | recall | F1 | DAF |", "|---|---|---|---|---|"]
    for v in sc.values():
        lines.append(f"| {v['uncertainty_weight']:g} | {_f(v['precision'])} | {_f(v['recall'])} | {_f(v['f1'])} | "
                     f"{_f(v['daf'])} |")
    fl = meta["domain_flags"]
    lines += ["", "## Training domain and flag (`domain.json`)", "",
              f"- Inputs it needs: {', '.join(f'`{x}`' for x in meta.get('inputs', []))}"
              + (f". `{is_energy[0]}`: GPAW calculations of `esnet dft` bring it (the engine's references in "
                 "provenance.json); VASP or MP inputs need `esnet predict ... --references FILE` (elemental "
                 "references of the same code and settings), else they are refused in one line; with it they "
                 "are flagged (another code's IS-DOS)." if is_energy else ".")
              + (" `uip_formation_energy_per_atom`: `esnet predict ... --uip uip.csv`, the CSV of `esnet uip relax "
                 "STRUCTURES... --out uip.csv` on the inputs' initial structures (rows matched by id; made with "
                 f"{pot} {uip['model_version']}, else refused); without --uip the command is refused in one "
                 "line naming it." if uip else ""),
              f"- DFT code: {', '.join(domain.codes)}; energy grid {domain.grid}.",
              f"- Elements ({len(domain.elements)}): {', '.join(domain.elements)}.",
              f"- Rule (`domain.json` → `rule`): {domain.rule()}.",
              "- Flagged rows get a `domain` column saying why (`esnet predict`), `--strict` refuses them "
              "(exit 2).", "",
              "| split | rows | flagged | MAE flagged | MAE unflagged |", "|---|---|---|---|---|"]
    for s in splits:
        lines.append(f"| {s} | {fl[s]['n']} | {fl[s]['n_flagged']} | {_f(fl[s]['mae_flagged'])} | "
                     f"{_f(fl[s]['mae_unflagged'])} |")
    outs = ", ".join(f"`{o}`" for o in meta["serving"]["outputs"])
    lines += ["", "## Files", "",
              f"- `model.keras`: the ensemble as one Keras model (outputs {outs}, (None, 1) eV/atom each; members "
              "nested as `member_<i>`).",
              "- `1/`: TF Serving SavedModel (signature `serving_default`, inputs dos_up, dos_down (None, 1500, 9), "
              "composition (None, 118)" + "".join(f", {e} (None, 1) eV/atom" for e in energy)
              + f"; outputs {outs}), `assets.extra/tf_serving_warmup_requests` "
              f"({meta['serving']['n_warmup']} real validation examples, each with every input).",
              "- `domain.json`, `splits.json`, `model.json` (all numbers above).",
              f"- Size: {meta['size_mb']:.1f} MB.", "",
              "## Use", "",
              "```bash", f"esnet predict {meta['name']} calcs/ --out preds.csv",
              f"esnet predict {meta['name']} run/vasprun.xml.gz --references refs.csv" if energy else
              f"esnet predict --model {meta['name']} run/vasprun.xml.gz --strict", "```", "",
              "```python", "import esnet_tf", f"model = esnet_tf.load_model(\"{meta['name']}\")",
              "table = model.predict([\"calcs/42e784dfac2a90db\"])   # eV/atom: mean, std"
              + (", lower, upper" if iv else "") + ", domain", "```", ""]
    if uip:  # the commands above need --uip: replace them
        use = lines.index("## Use")
        lines[use + 2:] = [
            "```bash", "# CHGNet on the initial structure of each row of an `esnet dft` labels.csv (esnet-tf[uip])",
            "esnet uip relax --demo --labels run/labels.csv --out uip.csv",
            "# or on structure files (ids: the file stems): esnet uip relax structures/*.cif --out uip.csv",
            f"esnet predict {meta['name']} run/ --uip uip.csv --out preds.csv", "```", "",
            "```python", "import esnet_tf", f"model = esnet_tf.load_model(\"{meta['name']}\")",
            "table = model.predict([\"calcs/42e784dfac2a90db\"], uip=\"uip.csv\")   # eV/atom: mean, std"
            + (", lower, upper" if iv else "") + ", domain", "```", ""]
    lines += [
              "## Reproduce", "", "```bash", f"nice -n 5 .venv/bin/python {meta['command']}", "```", "",
              f"Training: `esnet_tf.train.train` per member (Adam 1.5e-3, batch {tr.get('batch_size', 64)}, log-cosh, "
              f"ReduceLROnPlateau 0.5 after {tr['lr_patience']} epochs, early stopping after {tr['patience']}, at most "
              f"{tr['epochs']} epochs); epochs run per member: "
              f"{', '.join(str(x['epochs_run']) for x in tr['members'])}"
              + (f"; {tr['wall_s'] / 60:.0f} min wall for the members on a shared 2-core machine" if tr.get("wall_s")
                 else "") + ". CPU training is not bit-reproducible across machines; tests/test_pretrained.py "
              "reproduces the test MAE above from the shipped files to 1e-4 eV/atom.", ""]
    return "\n".join(lines)


def out_of_sample_record(folder: Path, meta: dict) -> dict:
    """model.json's `out_of_sample`: the pool candidates' scores of `benchmarks/out_of_sample.py` in `folder`
    (summary.json; with --paired-with the other model's, paired), and for a model that takes CHGNet's E_f the
    scores of that E_f alone on the same candidates (the model's references), paired with the model."""
    summary = json.loads((folder / "summary.json").read_text())
    role = "candidate"

    def scores(s: dict) -> dict:
        c = s["by_role"][role]
        return {k: c.get(k) for k in ("n", "mae", "spearman", "interval_coverage", "n_flagged")}

    rows = [{"model": f"{meta['name']} (this)", **scores(summary)}]
    if summary.get("paired_with"):
        pw = summary["paired_with"]
        rows.append({"model": pw["model"], **scores(pw), "paired": pw["paired"][role]})
    if meta.get("uip") and summary.get("uip"):
        from esnet_tf.pretrained import PREDICTION_COLUMN
        from esnet_tf.uip import UIPInputs

        with open(folder / summary["labels"], newline="", encoding="utf-8") as fh:
            labels = {r["id"]: r for r in csv.DictReader(fh)}
        with open(folder / "predictions.csv", newline="", encoding="utf-8") as fh:
            ours = {r["id"]: float(r[PREDICTION_COLUMN]) for r in csv.DictReader(fh)
                    if labels.get(r["id"], {}).get("role") == role and labels[r["id"]].get("formation_energy_per_atom")}
        ids = sorted(ours)
        truth = np.array([float(labels[i]["formation_energy_per_atom"]) for i in ids])
        e_uip = UIPInputs(summary["uip"]["csv"], meta["uip"], meta["name"]).formation_energies(
            ids, [labels[i]["formula"] for i in ids]).reshape(-1).astype(np.float64)
        rows.append({"model": "CHGNet alone (its E_f with this model's references)", "n": len(ids),
                     "mae": float(np.mean(np.abs(e_uip - truth))),
                     "paired": paired_mae(truth, np.array([ours[i] for i in ids]), e_uip)})
    return {"command": summary["command"], "folder": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT)
            else str(folder), "role": role, "n_without_uip": (summary.get("uip") or {}).get("n_without_uip", 0),
            "rows": rows}


def rewrite_readme(folder: Path, out_of_sample: Path | None) -> None:
    """Rewrite a shipped model's README.md (and model.json's `out_of_sample` from `out_of_sample`)."""
    from esnet_tf.atomic import write_text
    from esnet_tf.domain import find_domain

    meta = json.loads((folder / "model.json").read_text())
    if out_of_sample is not None:
        meta["out_of_sample"] = out_of_sample_record(out_of_sample.resolve(), meta)
        write_text(folder / "model.json", json.dumps(meta, indent=1) + "\n")
    write_text(folder / "README.md", model_readme(meta, find_domain(folder)))


def main(argv: list[str] | None = None) -> int:
    from esnet_tf.errors import UserError
    from esnet_tf.study.data import check_training_roles

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="is_relax", help="what to train (see above)")
    ap.add_argument("--work", default=None, help="work directory (snapshot, members) [runs/pretrained_<recipe>]")
    ap.add_argument("--out", default=str(ROOT / "saved_models"), help="shipped-models folder")
    ap.add_argument("--name", default=None, help="shipped model name [the recipe's]")
    ap.add_argument("--members", type=int, default=5, help="ensemble members (seeds 0..M-1)")
    ap.add_argument("--epochs", type=int, default=None, help="max epochs per member [the recipe's]")
    ap.add_argument("--patience", type=int, default=None, help="early stopping patience (epochs, val_loss)")
    ap.add_argument("--lr-patience", type=int, default=None, help="ReduceLROnPlateau patience (epochs)")
    ap.add_argument("--pool-roles", default=None, metavar="ROLES", help="the pool's roles trained on, "
                    f"comma-separated [{','.join(SHIPPED_POOL_ROLES)}]; another choice needs its own --work")
    ap.add_argument("--stage", choices=("train", "ship", "all", "readme"), default="all", help="stop after "
                    "training, or only ship (members must be trained), or only rewrite the shipped model's README "
                    "(with --out-of-sample)")
    ap.add_argument("--out-of-sample", default=None, metavar="DIR", help="with --stage readme: the folder of "
                    "`benchmarks/out_of_sample.py --model NAME [--paired-with OTHER]`, whose candidate scores go into "
                    "model.json (`out_of_sample`) and the README")
    args = ap.parse_args(argv)
    base = RECIPES[args.recipe]
    pool_roles = base.pool_roles
    if args.pool_roles is not None:
        if not base.with_pool:
            raise SystemExit(f"--pool-roles: {args.recipe} has no pool rows")
        try:
            pool_roles = check_training_roles([r.strip() for r in args.pool_roles.split(",") if r.strip()],
                                              "--pool-roles")
        except UserError as e:
            raise SystemExit(str(e)) from None
    recipe = Recipe(args.name or base.name, base.config, base.batch_size, args.epochs or base.epochs,
                    base.patience if args.patience is None else args.patience,
                    base.lr_patience if args.lr_patience is None else args.lr_patience, base.calibration,
                    base.with_pool, base.uip, pool_roles)
    if args.stage == "readme":
        rewrite_readme(Path(args.out) / recipe.name, Path(args.out_of_sample) if args.out_of_sample else None)
        return 0
    work = Path(args.work) if args.work else ROOT / "runs" / f"pretrained_{args.recipe}"
    npz, labels = snapshot(work, recipe.with_pool, recipe.pool_roles)
    t = time.time()
    if args.stage in ("train", "all"):
        members = train_members(npz, labels, work, args.members, recipe)
    else:
        members = [work / f"member_{s}" / "best.keras" for s in range(args.members)]
    if args.stage in ("ship", "all"):
        command = f"scripts/train_pretrained.py --recipe {args.recipe} --members {args.members}" + "".join(
            f" --{k} {v}" for k, v in (("epochs", recipe.epochs), ("patience", recipe.patience),
                                       ("lr-patience", recipe.lr_patience))) + (
            f" --pool-roles {','.join(recipe.pool_roles)}" if recipe.with_pool else "")
        result = ship_ensemble(members, npz, labels, Path(args.out), recipe, command=command,
                               settings={"members": args.members, "epochs": recipe.epochs, "patience": recipe.patience,
                                         "lr_patience": recipe.lr_patience, "batch_size": recipe.batch_size})
        print(json.dumps(result["metrics"], indent=2))
    print(f"done in {time.time() - t:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
