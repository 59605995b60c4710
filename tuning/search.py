"""`esnet tune`: KerasTuner search over the ESNet architecture, objective val_mae (eV/atom).

Trials train on the train split and are ranked by the MAE of the validation split only (the
test split is never read). The project directory DIR/NAME (`--directory`, `--project-name`):

    oracle.json, tuner0.json | chief.json, trial_*/trial.json, trial_*/checkpoint*
                         KerasTuner's own records (a rerun reloads them and continues)
    trial_*/worker.json  which tuner (KERASTUNER_TUNER_ID), host and process ran the trial
    esnet_tune.json      the search settings and search space (a rerun must match them)
    summary.json         the best trials: val MAE, hyperparameters, ESNetConfig, parameters
    best/                the best trial retrained by `esnet train` (best.keras, history.csv,
                         config.json, ...), or its own weights with --retrain-epochs 0

and the best model is exported for TF Serving to EXPORT_DIR/EXPORT_NAME/VERSION/.

Distributed (KerasTuner chief/worker): every process runs the same command with
KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT and its own KERASTUNER_TUNER_ID; the one whose id
contains "chief" serves the oracle, the others run trials; DIR must be shared by all. The
chief prints the summary, retrains and exports once the workers are done.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path

from esnet_tf.train import DEFAULTS, _fractions, split_options, write_warmup_examples
from esnet_tf.errors import UserError

TUNERS = ("hyperband", "bayesian", "random")
WORKER_FILE = "worker.json"
SETTINGS_FILE = "esnet_tune.json"
SUMMARY_FILE = "summary.json"
BEST_DIR = "best"
BEST_TRIAL_FILE = "best_trial.json"
#: settings a rerun of the same project must share with the first run (else the search is another one)
IDENTITY_KEYS = ("tuner", "dataset", "labels", "data_dir", "split_fractions", "split_seed", "batch_size",
                 "epochs", "hyperband_factor", "seed", "search_space")
TUNE_DEFAULTS = {"tuner": "hyperband", "max_trials": 20, "epochs": 30, "batch_size": DEFAULTS["batch_size"],
                 "hyperband_factor": 3, "seed": 0, "top": 5}


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("KerasTuner search over the ESNet architecture (stem, stages, widths, CBAM on/off, "
                     "head, dropout) and learning rate / loss. Objective: validation MAE (eV/atom). A rerun "
                     "with the same --directory/--project-name continues the search.")
    p.add_argument("--dataset", required=True, help="features .npz (with --labels), a directory with labels.csv "
                   "+ calculation files, or a TFDS dataset name/dir (e.g. is_dos)")
    p.add_argument("--labels", help="labels CSV for .npz features: id, formation_energy_per_atom (eV/atom)")
    p.add_argument("--data-dir", help="TFDS data_dir (for TFDS datasets)")
    p.add_argument("--split-fractions", type=_fractions, help="train,validation,test fractions of chemical systems "
                   "for .npz / labels-directory datasets [default 0.8,0.1,0.1]")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the chemical-system split")
    p.add_argument("--tuner", choices=TUNERS, default=TUNE_DEFAULTS["tuner"], help="search algorithm")
    p.add_argument("--max-trials", type=int, default=TUNE_DEFAULTS["max_trials"], help="maximum number of trials "
                   "(model configurations); Hyperband also stops when its brackets are done. Raise it and "
                   "rerun to extend a finished search")
    p.add_argument("--epochs", type=int, default=TUNE_DEFAULTS["epochs"], help="training epochs per trial "
                   "(Hyperband: the largest budget, max_epochs)")
    p.add_argument("--hyperband-factor", type=int, default=TUNE_DEFAULTS["hyperband_factor"],
                   help="Hyperband reduction factor (keeps 1/factor of the trials per round)")
    p.add_argument("--batch-size", type=int, default=TUNE_DEFAULTS["batch_size"], help="examples per batch")
    p.add_argument("--seed", type=int, default=TUNE_DEFAULTS["seed"], help="random seed (tuner, weights, shuffling)")
    p.add_argument("--search-space", help="search-space JSON file (see docs/tuning.md) [default: the packaged "
                   "tuning/search_space.json]")
    p.add_argument("--directory", default="tuning_runs", help="directory holding the tuning projects")
    p.add_argument("--project-name", default="esnet_tune", help="project (subdirectory of --directory)")
    p.add_argument("--overwrite", action="store_true", help="delete the project and start afresh (default: a "
                   "rerun continues the stored search)")
    p.add_argument("--top", type=int, default=TUNE_DEFAULTS["top"], help="rows of the best-trials table")
    p.add_argument("--retrain-epochs", type=int, help="epochs to retrain the best trial with `esnet train` "
                   "(checkpoint on val_loss, the authors' LR schedule / early stopping); 0 keeps the best "
                   "trial's own weights [default: --epochs]")
    p.add_argument("--export-dir", default="saved_models", help="TF Serving model base directory")
    p.add_argument("--export-name", help="model name of the export [default: --project-name]")
    p.add_argument("--export-version", type=int, help="version directory [default: the next free integer]")
    p.add_argument("--no-export", action="store_true", help="do not export a SavedModel")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), help="Keras progress: 0 silent, 1 bar, 2 one line "
                   "per epoch [default: 1 on a terminal, else 2]")


# ---------------------------------------------------------------- environment

def check_keras3() -> str:
    """Refuse a Keras 2 / tf_keras environment (KerasTuner would silently use it); returns keras.__version__."""
    legacy = os.environ.get("TF_USE_LEGACY_KERAS", "")
    if legacy.strip().lower() in ("1", "true", "yes"):
        raise UserError("esnet tune needs Keras 3: unset TF_USE_LEGACY_KERAS (it selects tf_keras)")
    import keras

    if int(keras.__version__.split(".")[0]) < 3:
        raise UserError(f"esnet tune needs Keras 3, found keras {keras.__version__}")
    return keras.__version__


def role() -> str:
    """'single', 'chief' or 'worker' from KerasTuner's environment variables (its own rule)."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not os.environ.get(v)]
    if missing:
        raise UserError(f"KERASTUNER_ORACLE_IP is set but {', '.join(missing)} is not; distributed tuning needs "
                          "KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


# ---------------------------------------------------------------- tuners

def _tuner_classes() -> dict:
    """KerasTuner's three tuners, each also writing trial_*/worker.json (who ran the trial)."""
    import keras_tuner

    class RecordsWorker:
        def on_trial_begin(self, trial) -> None:
            super().on_trial_begin(trial)
            _write_json(Path(self.get_trial_dir(trial.trial_id)) / WORKER_FILE,
                        {"tuner_id": self.tuner_id, "host": socket.gethostname(), "pid": os.getpid(),
                         "started": time.time()})

        def on_trial_end(self, trial) -> None:
            path = Path(self.get_trial_dir(trial.trial_id)) / WORKER_FILE
            if path.is_file():
                record = json.loads(path.read_text())
                record["seconds"] = time.time() - record.get("started", time.time())
                _write_json(path, record)
            super().on_trial_end(trial)

    class HyperbandSearch(RecordsWorker, keras_tuner.Hyperband):
        pass

    class BayesianSearch(RecordsWorker, keras_tuner.BayesianOptimization):
        pass

    class RandomSearch(RecordsWorker, keras_tuner.RandomSearch):
        pass

    return {"hyperband": HyperbandSearch, "bayesian": BayesianSearch, "random": RandomSearch}


def make_tuner(kind: str, hypermodel, *, max_trials: int, epochs: int, directory: str | Path, project_name: str,
               seed: int = 0, hyperband_factor: int = 3, overwrite: bool = False):
    """A KerasTuner tuner minimising val_mae; `overwrite=False` reloads an existing project."""
    import keras_tuner

    from esnet_tf.tuning.hypermodel import OBJECTIVE

    cls = _tuner_classes()[kind]
    common = {"hypermodel": hypermodel, "objective": keras_tuner.Objective(OBJECTIVE, direction="min"),
              "seed": seed, "directory": str(directory), "project_name": project_name, "overwrite": overwrite}
    if kind == "hyperband":
        tuner = cls(max_epochs=epochs, factor=hyperband_factor, **common)
        if role() != "worker":  # the cap lives in the oracle (the chief's, in distributed runs)
            tuner.oracle.max_trials = max_trials
        return tuner
    return cls(max_trials=max_trials, **common)


# ---------------------------------------------------------------- search

def tune(settings: dict, directory: str | Path, project_name: str, *, overwrite: bool = False,
         retrain_epochs: int | None = None, export_dir: str | Path | None = "saved_models",
         export_name: str | None = None, export_version: int | None = None, top: int = 5,
         verbose: int = 2) -> dict:
    """Run (or continue) a search; returns the summary dict (also in DIR/NAME/summary.json).

    `settings`: dataset, labels, data_dir, split_fractions, split_seed, tuner, max_trials, epochs,
    batch_size, hyperband_factor, seed, search_space (path or None). `export_dir=None`: no export.
    A worker returns {'role': 'worker', 'trials': [...]} after its trials.
    """
    import keras

    from esnet_tf import data
    from esnet_tf.tuning.hypermodel import ESNetHyperModel
    from esnet_tf.tuning.search_space import SearchSpace, SearchSpaceError

    check_keras3()
    who = role()
    if overwrite and who == "worker":
        raise UserError("--overwrite is for the chief only (a worker would delete the shared project)")
    settings = {**TUNE_DEFAULTS, **settings}
    if settings["tuner"] not in TUNERS:
        raise UserError(f"unknown tuner {settings['tuner']!r}; use one of {', '.join(TUNERS)}")
    if settings["max_trials"] < 1 or settings["epochs"] < 1:
        raise UserError("--max-trials and --epochs must be at least 1")
    try:
        space = SearchSpace.load(settings.get("search_space"))
    except SearchSpaceError as exc:
        raise UserError(str(exc)) from None
    project = Path(directory) / project_name
    identity = _identity(settings, space)
    if not overwrite:
        _check_same_search(project, identity)

    keras.utils.set_random_seed(int(settings["seed"]))
    spec = str(settings["dataset"])
    split_opts = split_options(settings)
    train_ds = data.load_split(spec, "train", **split_opts)
    val_ds = data.load_split(spec, "validation", **split_opts)
    n_train, stats = data.scan(train_ds, f"{spec} [train]", statistics=True)
    n_val, _ = data.scan(val_ds, f"{spec} [validation]")
    if n_val == 0:
        raise UserError(f"{spec}: the validation split is empty; the tuning objective needs validation data")
    print(f"train: {n_train} examples, validation: {n_val} examples ({spec}); {who} "
          f"{os.environ.get('KERASTUNER_TUNER_ID', 'tuner0')}")

    hypermodel = ESNetHyperModel(space, normalization=stats)
    tuner = make_tuner(settings["tuner"], hypermodel, max_trials=int(settings["max_trials"]),
                       epochs=int(settings["epochs"]), directory=directory, project_name=project_name,
                       seed=int(settings["seed"]), hyperband_factor=int(settings["hyperband_factor"]),
                       overwrite=overwrite)
    if who != "worker":
        _write_json(project / SETTINGS_FILE, identity)
    pipe_train = data.training_pipeline(train_ds, int(settings["batch_size"]), seed=int(settings["seed"]))
    pipe_val = data.training_pipeline(val_ds, int(settings["batch_size"]), shuffle=False)
    t0 = time.time()
    tuner.search(pipe_train, validation_data=pipe_val, epochs=int(settings["epochs"]),
                 callbacks=[keras.callbacks.TerminateOnNaN()], verbose=verbose)
    if who == "worker":
        mine = sorted(t for t, r in _workers(project).items() if r.get("tuner_id") == tuner.tuner_id)
        print(f"worker {tuner.tuner_id}: done; ran trial(s) {', '.join(mine) or 'none'}")
        return {"role": "worker", "tuner_id": tuner.tuner_id, "trials": mine}

    summary = summarize(tuner, hypermodel, project, top)
    summary.update(role=who, n_train=n_train, n_validation=n_val, search_seconds_this_session=time.time() - t0)
    print(format_table(summary["best_trials"]))
    best = summary["best_trials"][0]
    model_path, retrained = _best_model(tuner, best, settings, project, val_ds,
                                        int(settings["epochs"]) if retrain_epochs is None else retrain_epochs)
    summary["best_model"] = {"path": str(model_path), **retrained}
    if export_dir is not None:
        summary["export"] = _export(model_path, project, best["trial_id"], export_dir,
                                    export_name or project_name, export_version)
    _write_json(project / SUMMARY_FILE, summary)
    return summary


def _identity(settings: dict, space) -> dict:
    ident = {k: settings.get(k) for k in IDENTITY_KEYS if k != "search_space"}
    if ident["dataset"] and Path(str(ident["dataset"]).split(",")[0]).exists():
        ident["dataset"] = ",".join(str(Path(p).resolve()) for p in str(ident["dataset"]).split(","))
    if ident["labels"]:
        ident["labels"] = str(Path(ident["labels"]).resolve())
    if ident["split_fractions"] is not None:
        ident["split_fractions"] = [float(f) for f in ident["split_fractions"]]
    if ident["tuner"] != "hyperband":
        ident["hyperband_factor"] = None
    ident["search_space"] = space.to_dict()
    return ident


def _check_same_search(project: Path, identity: dict) -> None:
    path = project / SETTINGS_FILE
    if not path.is_file():
        return
    stored = json.loads(path.read_text())
    differ = [k for k in IDENTITY_KEYS if stored.get(k) != identity.get(k)]
    if differ:
        raise UserError(f"{project} holds a search with other settings ({', '.join(differ)}); rerun with the "
                          "same ones to continue it, or use --overwrite or another --project-name")


def _workers(project: Path) -> dict[str, dict]:
    """trial id -> worker.json record, for every trial directory of the project."""
    out = {}
    for path in sorted(project.glob(f"trial_*/{WORKER_FILE}")):
        try:
            out[path.parent.name[len("trial_"):]] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return out


def summarize(tuner, hypermodel, project: Path, top: int = 5) -> dict:
    """The best `top` completed trials: val MAE (eV/atom), tuner id, parameters, config, hyperparameters."""
    import keras

    trials = list(tuner.oracle.trials.values())
    best = tuner.oracle.get_best_trials(max(1, top))
    best = [t for t in best if t.score is not None]
    if not best:
        failed = [t.trial_id for t in trials if t.status in ("FAILED", "INVALID")]
        raise UserError(f"{project}: no trial completed ({len(trials)} trials, failed: {failed or 'none'}); "
                          "see the 'message' of trial_*/trial.json")
    workers = _workers(project)
    rows = []
    for rank, trial in enumerate(best, 1):
        hp = trial.hyperparameters
        config, training = hypermodel.config(hp)
        keras.backend.clear_session()
        params = int(hypermodel.build(hp).count_params())
        rows.append({"rank": rank, "trial_id": trial.trial_id, "val_mae_ev_per_atom": float(trial.score),
                     "best_step": trial.best_step, "tuner_id": workers.get(trial.trial_id, {}).get("tuner_id"),
                     "params": params, "config": config.to_dict(), "training": training,
                     "hyperparameters": {k: v for k, v in hp.values.items() if hp.is_active(k)}})
    status: dict[str, int] = {}
    for t in trials:
        status[str(t.status)] = status.get(str(t.status), 0) + 1
    return {"project": str(project), "objective": "val_mae (eV/atom, validation split)", "n_trials": len(trials),
            "trial_status": status, "tuner_ids": sorted({r.get("tuner_id") for r in workers.values()} - {None}),
            "best_trials": rows}


def format_table(rows: list[dict]) -> str:
    """Plain-text table of the best trials (val MAE in eV/atom)."""
    header = ("rank", "trial", "val MAE eV/atom", "tuner", "params", "stages x blocks: widths", "stem f/k",
              "CBAM ratio/k", "head", "dropout", "BN mom", "lr", "loss")
    lines = []
    for r in rows:
        c = r["config"]
        cbam = f"{c['attention_ratio']}/{c['spatial_kernel']}" if c["use_attention"] else "off"
        lines.append((str(r["rank"]), r["trial_id"], f"{r['val_mae_ev_per_atom']:.4f}", str(r["tuner_id"] or "-"),
                      f"{r['params']:,}", f"{len(c['stage_widths'])}x{c['blocks_per_stage']}: "
                      + "-".join(map(str, c["stage_widths"])), f"{c['stem_filters']}/{c['stem_kernel']}", cbam,
                      "-".join(map(str, c["head_units"])) or "-", f"{c['dropout']:.2g}", f"{c['bn_momentum']:.3g}",
                      f"{r['training']['learning_rate']:.2e}", r["training"]["loss"]))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([f"best trials (objective val_mae, validation split):", fmt.format(*header),
                      fmt.format(*("-" * w for w in widths)), *(fmt.format(*line) for line in lines)])


def _best_model(tuner, best: dict, settings: dict, project: Path, val_ds, retrain_epochs: int):
    """best/best.keras: the best trial retrained by `esnet train`, or (0 epochs) its checkpoint weights."""
    from esnet_tf.train import train

    out = project / BEST_DIR
    record = {"trial_id": best["trial_id"], "val_mae_ev_per_atom": best["val_mae_ev_per_atom"],
              "retrain_epochs": retrain_epochs}
    stored = _read_json(out / BEST_TRIAL_FILE)
    if stored and all(stored.get(k) == v for k, v in record.items()) and (out / "best.keras").is_file():
        print(f"best trial {best['trial_id']} unchanged; keeping {out / 'best.keras'}")
        return out / "best.keras", {k: v for k, v in stored.items() if k not in record}
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if retrain_epochs > 0:
        run = {**DEFAULTS, **{k: settings.get(k) for k in ("dataset", "labels", "data_dir", "split_fractions",
                                                           "split_seed", "batch_size", "seed")},
               "config": best["config"], "epochs": retrain_epochs, **best["training"]}
        print(f"retraining trial {best['trial_id']} for {retrain_epochs} epochs -> {out}")
        result = train(run, out, verbose=0)
        info = {"retrained_val_mae_ev_per_atom": result["best_val_mae_ev_per_atom"],
                "retrained_best_epoch": result["best_epoch"], "params": result["params"]}
    else:
        trial = tuner.oracle.get_trial(best["trial_id"])
        with warnings.catch_warnings():  # the trial checkpoint carries optimizer slots a fresh model lacks
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = tuner.load_model(trial)
        model.save(out / "best.keras")
        write_warmup_examples(val_ds, out / "warmup_examples.npz")
        info = {"params": int(model.count_params())}
        print(f"saved trial {best['trial_id']}'s checkpoint -> {out / 'best.keras'}")
    _write_json(out / BEST_TRIAL_FILE, {**record, **info})
    return out / "best.keras", info


def _export(model_path: Path, project: Path, trial_id: str, export_dir, name: str, version: int | None) -> dict:
    from esnet_tf.export import export

    stored = _read_json(project / BEST_DIR / BEST_TRIAL_FILE) or {}
    done = stored.get("export")
    same = stored.get("trial_id") == trial_id and version in (None, (done or {}).get("version"))
    if done and same and Path(done["path"]).is_dir():
        print(f"best trial {trial_id} already exported to {done['path']}")
        return done
    base = Path(export_dir) / name
    if version is None:
        taken = [int(p.name) for p in base.glob("*") if p.is_dir() and p.name.isdigit()] if base.is_dir() else []
        version = max(taken, default=0) + 1
    result = export(model_path, export_dir, name, version)
    result["version"] = version
    print(f"exported the best model -> {result['path']} (TF Serving layout)")
    _write_json(project / BEST_DIR / BEST_TRIAL_FILE, {**stored, "export": result})
    return result


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    settings = {"dataset": args.dataset, "labels": args.labels, "data_dir": args.data_dir,
                "split_fractions": args.split_fractions, "split_seed": args.split_seed, "tuner": args.tuner,
                "max_trials": args.max_trials, "epochs": args.epochs, "batch_size": args.batch_size,
                "hyperband_factor": args.hyperband_factor, "seed": args.seed, "search_space": args.search_space}
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    summary = tune(settings, args.directory, args.project_name, overwrite=args.overwrite,
                   retrain_epochs=args.retrain_epochs, export_dir=None if args.no_export else args.export_dir,
                   export_name=args.export_name, export_version=args.export_version, top=args.top, verbose=verbose)
    if summary.get("role") == "worker":
        return 0
    best = summary["best_trials"][0]
    print(f"best trial {best['trial_id']}: val MAE {best['val_mae_ev_per_atom']:.4g} eV/atom "
          f"({summary['n_trials']} trials) -> {summary['best_model']['path']}")
    return 0
