"""Train, evaluate and ship the pretrained ESNet ensemble `ESNet-GPAWDemo-<YYYY.MM>-EFormPerAtom`.

    .venv/bin/python scripts/train_pretrained.py --work runs/pretrained --out saved_models

Stages (each resumes: a finished stage's outputs are reused, so a rerun after an interruption
continues where it stopped):
1. snapshot: the demo dataset's labels.csv as it is now (the DFT job may add rows later) and the
   IS-DOS of every row, `WORK/features.npz` + `WORK/labels.csv`;
2. members: `--members` ESNet `small` models, seeds 0..M-1, trained with `esnet_tf.train.train` on
   the train split (chemical systems by `esnet_tf.splits.split_of`, 0.8/0.1/0.1, seed 0), early
   stopping on the validation split; a finished member (summary.json) is skipped, an interrupted
   one resumes from its backup;
3. ship: the ensemble (`esnet_tf.ensemble.build_ensemble`, σ recalibrated on the validation split
   with `esnet_tf.ensemble.fit_std_scale`, calibration scored with `calibration_metrics`) as
   `OUT/NAME/model.keras`, its TF Serving SavedModel `OUT/NAME/1/` with warmup requests,
   `splits.json` (ids and truths of every split), `domain.json` (training domain), `metrics.json`
   and `README.md`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def snapshot(work: Path) -> tuple[Path, Path]:
    """features.npz + labels.csv of the demo rows as they are now (reused when present)."""
    from esnet_tf import resources
    from esnet_tf.atomic import write_text
    from esnet_tf.featurize import featurize, save_examples
    from esnet_tf.labels import read_labels

    npz, labels = work / "features.npz", work / "labels.csv"
    if npz.is_file() and labels.is_file():
        return npz, labels
    work.mkdir(parents=True, exist_ok=True)
    text = resources.demo_labels().read_text()
    write_text(work / "labels.source.csv", text)
    rows = read_labels(work / "labels.source.csv", path_column=None)
    demo = read_labels(resources.demo_labels())
    files = {r.id: r.file for r in demo}
    t = time.time()
    examples = [featurize(files[r.id], id=r.id) for r in rows]
    save_examples(examples, npz)
    # the labels file for training: relative paths of the demo directory kept as they are
    write_text(labels, text)
    print(f"snapshot: {len(examples)} examples featurized in {time.time() - t:.0f} s -> {npz}", flush=True)
    return npz, labels


def train_members(npz: Path, labels: Path, work: Path, n_members: int, epochs: int, patience: int,
                  lr_patience: int) -> list[Path]:
    """Train (or reuse) the members; returns their best.keras paths."""
    from esnet_tf.train import TrainConfig, backup_epoch, run_finished, train

    paths = []
    for seed in range(n_members):
        run = work / f"member_{seed}"
        paths.append(run / "best.keras")
        if run_finished(run):
            print(f"member {seed}: finished earlier ({run}), skipped", flush=True)
            continue
        config = TrainConfig(dataset=str(npz), labels=str(labels), config="small", epochs=epochs, seed=seed,
                             split_fractions=(0.8, 0.1, 0.1), split_seed=0, early_stopping_patience=patience,
                             lr_patience=lr_patience)
        resume = backup_epoch(run) is not None
        t = time.time()
        summary = train(config, run, resume=resume, verbose=2)
        print(f"member {seed}: {summary['epochs_run']} epochs, best {summary['best_epoch']}, "
              f"val MAE {summary['best_val_mae_ev_per_atom']:.4f} eV/atom, {time.time() - t:.0f} s", flush=True)
    return paths


# ---------------------------------------------------------------- shipping

def _split_rows(arrays: dict, split: str) -> list[dict]:
    from esnet_tf.data import select_split

    part = select_split(arrays, split, (0.8, 0.1, 0.1), 0)
    return [{"id": str(i), "formula": str(f), "chemsys": str(c), "formation_energy_per_atom": float(y),
             "e_above_hull": None if not np.isfinite(h) else float(h)}
            for i, f, c, y, h in zip(part["id"], part["formula"], part["chemsys"],
                                     part["formation_energy_per_atom"], part["e_above_hull"])]


def load_snapshot(npz: Path, labels: Path) -> dict:
    from esnet_tf.data import load_npz_arrays

    arrays = dict(load_npz_arrays(str(npz), labels))
    with np.load(npz, allow_pickle=False) as d:
        code = dict(zip(d["id"].astype(str), d["code"].astype(str)))
    arrays["code"] = np.array([code[i] for i in arrays["id"]])
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


def ship_ensemble(members: list[Path], npz: Path, labels: Path, out: Path, name: str, *, command: str,
                  settings: dict) -> dict:
    """Build, export, evaluate and document the ensemble in `out/name/`; returns its model.json."""
    import esnet_tf
    from esnet_tf import resources
    from esnet_tf.atomic import write_text
    from esnet_tf.domain import Domain
    from esnet_tf.ensemble import build_ensemble, calibration_metrics, fit_std_scale, member_predictions
    from esnet_tf.export import export_ensemble
    from esnet_tf.model import load_model
    from esnet_tf.pretrained import ESNetModel, load_split_arrays
    from esnet_tf.data import select_split

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    arrays = load_snapshot(npz, labels)
    splits = {s: _split_rows(arrays, s) for s in ("train", "validation", "test")}
    # the members' own record of what they trained on must be these rows
    for m in members:
        cfg = json.loads((m.parent / "config.json").read_text())
        assert cfg["data"]["n_train"] == len(splits["train"]), (m, cfg["data"], len(splits["train"]))
    write_text(folder / "splits.json", json.dumps({
        "rule": "esnet_tf.splits.split_of(chemsys, (0.8, 0.1, 0.1), seed=0) on the snapshot below",
        "dataset": "is_dos/demo (datasets/is_dos/demo/labels.csv)", "n_rows_snapshot": int(len(arrays["id"])),
        "units": "eV/atom", "splits": splits}, indent=0) + "\n")
    train = select_split(arrays, "train", (0.8, 0.1, 0.1), 0)
    provenance = json.loads((resources.demo_dir() / "provenance.json").read_text())
    dft = {"code": provenance.get("code"), "paw_setups": provenance.get("paw_setups"), **provenance.get("settings", {})}
    domain = Domain.fit(train, train["code"], dft_settings=dft)
    domain.save(folder / "domain.json")

    # std recalibration on the validation split
    loaded = [load_model(p) for p in members]
    val = select_split(arrays, "validation", (0.8, 0.1, 0.1), 0)
    raw_ens = build_ensemble(loaded)
    val_members = member_predictions(raw_ens, val)
    std_scale = fit_std_scale(val["formation_energy_per_atom"].astype(np.float64), val_members.astype(np.float64))
    exported = export_ensemble(members, out, name, 1, std_scale=std_scale, keras_out=folder / "model.keras",
                               n_warmup=4, overwrite=True)

    model = ESNetModel(folder)
    metrics, calib, calib_raw, member_mae, screening = {}, {}, {}, {}, {}
    for split in ("train", "validation", "test"):
        part = load_split_arrays(folder, split)
        table = model.predict_arrays(part)
        truth = part["formation_energy_per_atom"]
        metrics[split] = regression_metrics(truth, table["predicted_formation_energy_per_atom"])
        std = table["predicted_formation_energy_per_atom_std"]
        calib[split] = calibration_metrics(truth, table["predicted_formation_energy_per_atom"], std)
        calib_raw[split] = calibration_metrics(truth, table["predicted_formation_energy_per_atom"], std / std_scale)
        per = member_predictions(model.keras_model, part)
        member_mae[split] = [regression_metrics(truth, per[:, j])["mae"] for j in range(per.shape[1])]
        if split == "test":
            screening = {f"kappa_{k:g}": screening_metrics(table, labels, k) for k in (0.0, 0.5, 1.0, 2.0)}
            metrics[split]["f1"] = screening["kappa_0"]["f1"]
            metrics[split]["mean_predictor_mae"] = float(np.mean(np.abs(truth - np.mean(
                [r["formation_energy_per_atom"] for r in splits["train"]]))))
            domain_flags = int(sum(bool(d) for d in table["domain"]))
    summaries = [json.loads((m.parent / "summary.json").read_text()) for m in members]
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "README.md") / 1e6
    meta = {
        "name": name, "kind": "deep ensemble", "n_members": len(members), "config": "small",
        "target": "formation_energy_per_atom", "units": "eV/atom", "esnet_tf_version": esnet_tf.__version__,
        "data": {"description": f"GPAW IS-DOS demo ({len(arrays['id'])} rows)", "dataset": "is_dos/demo",
                 "n_rows": int(len(arrays["id"])), "n_train": len(splits["train"]),
                 "n_validation": len(splits["validation"]), "n_test": len(splits["test"]),
                 "splits_file": "splits.json", "dft": dft},
        "training": {**settings, "seeds": list(range(len(members))),
                     "members": [{"seed": j, "epochs_run": s["epochs_run"], "best_epoch": s["best_epoch"],
                                  "best_val_mae": s["best_val_mae_ev_per_atom"], "params": s["params"]}
                                 for j, s in enumerate(summaries)]},
        "std": {"definition": "sample std over the members (ddof=1) x std_scale", "std_scale": std_scale,
                "std_scale_fit": "sqrt(mean(z^2)) on the validation split, z = error / raw std"},
        "metrics": metrics, "member_mae": member_mae, "calibration": calib, "calibration_raw_std": calib_raw,
        "screening_test": screening, "test_rows_outside_domain": domain_flags,
        "serving": {"version": 1, "signature": "serving_default", "outputs": exported.get("outputs"),
                    "n_warmup": exported["n_warmup"], "max_abs_diff_vs_keras": exported["max_abs_diff"]},
        "size_mb": size_mb, "command": command,
    }
    write_text(folder / "model.json", json.dumps(meta, indent=1) + "\n")
    write_text(folder / "README.md", model_readme(meta, domain))
    return meta


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def model_readme(meta: dict, domain) -> str:
    m, c, d = meta["metrics"], meta["calibration"], meta["data"]
    dft = d["dft"]
    lines = [f"# {meta['name']}", "",
             f"A deep ensemble of {meta['n_members']} ESNet `{meta['config']}` models (seeds "
             f"{', '.join(map(str, meta['training']['seeds']))}) predicting the relaxed formation energy "
             "(eV/atom) from the IS-DOS of the unrelaxed structure, with an uncertainty: the members' std.", "",
             "## Data", "",
             f"- The embedded demo dataset `is_dos/demo` as of this model: {d['n_rows']} rows (GPAW IS-DOS, "
             "relaxed formation energies from the same engine). The data may grow; `splits.json` lists the ids "
             "and truths of every split this model used.",
             f"- DFT: {dft.get('code')}, {dft.get('paw_setups')}, {dft.get('xc')}, plane waves {dft.get('ecut')} eV, "
             f"k-point density {dft.get('kpt_density')} per Å^-1, Fermi-Dirac {dft.get('smearing')} eV; IS-DOS on "
             "E - E_F = linspace(-20, 10, 1500) eV.",
             f"- Split by chemical system (`esnet_tf.splits.split_of`, 0.8/0.1/0.1 of the systems, seed 0): "
             f"train {d['n_train']}, validation {d['n_validation']}, test {d['n_test']} rows.", "",
             "## Errors (eV/atom)", "",
             "| split | n | MAE | RMSE | within ±1σ | within ±2σ | Spearman(abs err, σ) | mean z² | "
             "miscalibration area |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in ("train", "validation", "test"):
        lines.append(f"| {s} | {m[s]['n']} | {m[s]['mae']:.4f} | {m[s]['rmse']:.4f} | "
                     f"{c[s]['within_1_sigma']:.2f} | {c[s]['within_2_sigma']:.2f} | "
                     f"{_f(c[s]['spearman_abs_error_vs_sigma'], 2)} | {c[s]['mean_squared_z']:.2f} | "
                     f"{c[s]['miscalibration_area']:.3f} |")
    sc = meta["screening_test"]
    mm = meta["member_mae"]["test"]
    lines += ["",
              f"Test MAE of the members alone: {', '.join(f'{x:.3f}' for x in mm)} (mean {np.mean(mm):.3f}); "
              f"the mean predictor (train mean) scores {m['test']['mean_predictor_mae']:.3f} on the test split.",
              f"σ = sample std over the members × {meta['std']['std_scale']:.3f} (variance scaling fitted on the "
              "validation split; ideal Gaussian: 0.68 within ±1σ, 0.95 within ±2σ). Raw-std calibration on test: "
              f"{meta['calibration_raw_std']['test']['within_1_sigma']:.2f} within ±1σ, "
              f"{meta['calibration_raw_std']['test']['within_2_sigma']:.2f} within ±2σ.", "",
              "## Screening on the test split (E_hull <= 0 eV/atom)", "",
              "Hull of the labelled rows outside the candidates (the accuracy benchmark's convention); ranking "
              "by E_hull − κσ (`esnet screen --uncertainty-weight κ`):", "",
              "| κ | precision | recall | F1 | DAF |", "|---|---|---|---|---|"]
    for v in sc.values():
        lines.append(f"| {v['uncertainty_weight']:g} | {_f(v['precision'])} | {_f(v['recall'])} | {_f(v['f1'])} | "
                     f"{_f(v['daf'])} |")
    lines += ["", "## Training domain (`domain.json`)", "",
              f"- DFT code: {', '.join(domain.codes)}; energy grid {domain.grid}.",
              f"- Elements ({len(domain.elements)}): {', '.join(domain.elements)}.",
              f"- Integrated occupied IS-DOS: {domain.occupied_states_per_atom[0]:.2f}-"
              f"{domain.occupied_states_per_atom[1]:.2f} states/atom (accepted ±{domain.margin:.0%}); ratio to the "
              f"per-element fit {domain.occupied_states_ratio[0]:.2f}-{domain.occupied_states_ratio[1]:.2f} "
              f"(accepted ×/÷ {domain.ratio_factor:g}).",
              "- Inputs outside it get a `domain` column saying why (`esnet predict`), `--strict` refuses them "
              f"(exit 2). Test rows flagged: {meta['test_rows_outside_domain']}. VASP and Materials Project "
              "IS-DOS are outside it (another code's projections: a different DOS scale).", "",
              "## Files", "",
              "- `model.keras`: the ensemble as one Keras model (outputs `formation_energy_per_atom`, "
              "`formation_energy_per_atom_std`, (None, 1) eV/atom each; members nested as `member_<i>`).",
              "- `1/`: TF Serving SavedModel (signature `serving_default`, inputs dos_up, dos_down (None, 1500, 9), "
              "composition (None, 118); both outputs), `assets.extra/tf_serving_warmup_requests` "
              f"({meta['serving']['n_warmup']} real validation examples).",
              "- `domain.json`, `splits.json`, `model.json` (all numbers above).",
              f"- Size: {meta['size_mb']:.1f} MB.", "",
              "## Use", "",
              "```bash", f"esnet predict {meta['name']} calcs/ --out preds.csv",
              f"esnet predict --model {meta['name']} run/vasprun.xml.gz --strict", "```", "",
              "```python", "import esnet_tf", f"model = esnet_tf.load_model(\"{meta['name']}\")",
              "table = model.predict([\"is.gpawdos.npz\"])   # eV/atom: mean, std, domain", "```", "",
              "## Reproduce", "", "```bash", f".venv/bin/python {meta['command']}", "```", "",
              "Training: `esnet_tf.train.train` per member (Adam 1.5e-3, batch 64, log-cosh, ReduceLROnPlateau 0.5 "
              f"after {meta['training']['lr_patience']} epochs, early stopping after {meta['training']['patience']}, "
              f"at most {meta['training']['epochs']} epochs); epochs run per member: "
              f"{', '.join(str(x['epochs_run']) for x in meta['training']['members'])}. "
              "CPU training is not bit-reproducible across machines; the test in tests/test_pretrained.py reproduces "
              "the test MAE above from the shipped files to 1e-4 eV/atom.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "runs" / "pretrained"), help="work directory (snapshot, members)")
    ap.add_argument("--out", default=str(ROOT / "saved_models"), help="shipped-models folder")
    ap.add_argument("--name", default="ESNet-GPAWDemo-2026.12-EFormPerAtom", help="shipped model name")
    ap.add_argument("--members", type=int, default=5, help="ensemble members (seeds 0..M-1)")
    ap.add_argument("--epochs", type=int, default=120, help="max epochs per member")
    ap.add_argument("--patience", type=int, default=25, help="early stopping patience (epochs, val_loss)")
    ap.add_argument("--lr-patience", type=int, default=10, help="ReduceLROnPlateau patience (epochs)")
    ap.add_argument("--stage", choices=("train", "ship", "all"), default="all", help="stop after training, or "
                    "only ship (members must be trained)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    npz, labels = snapshot(work)
    if args.stage in ("train", "all"):
        members = train_members(npz, labels, work, args.members, args.epochs, args.patience, args.lr_patience)
    else:
        members = [work / f"member_{s}" / "best.keras" for s in range(args.members)]
    if args.stage in ("ship", "all"):
        command = "scripts/train_pretrained.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in (("members", args.members), ("epochs", args.epochs),
                                                         ("patience", args.patience),
                                                         ("lr_patience", args.lr_patience)))
        result = ship_ensemble(members, npz, labels, Path(args.out), args.name, command=command,
                               settings={"members": args.members, "epochs": args.epochs, "patience": args.patience,
                                         "lr_patience": args.lr_patience})
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
