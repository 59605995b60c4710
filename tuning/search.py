"""KerasTuner search over the ESNet architecture, objective val_mae (eV/atom): `tune(TuneConfig, ...)`.

    from esnet_tf.tuning.search import TuneConfig, tune
    summary = tune(TuneConfig(dataset="features.npz", labels="labels.csv", tuner="random", max_trials=5),
                   "tuning_runs", "esnet_tune", export_dir=None)

The `esnet tune` command (`esnet_tf.cli.tune`) turns its flags into a `TuneConfig`.

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

import dataclasses
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esnet_tf.data import DataConfig
from esnet_tf.errors import UserError
from esnet_tf.isdos import INPUT_NAMES
from esnet_tf.train import TrainConfig, write_warmup_examples

TUNERS = ("hyperband", "bayesian", "random")
WORKER_FILE = "worker.json"
SETTINGS_FILE = "esnet_tune.json"
SUMMARY_FILE = "summary.json"
BEST_DIR = "best"
BEST_TRIAL_FILE = "best_trial.json"
#: settings a rerun of the same project must share with the first run (else the search is another one)
IDENTITY_KEYS = ("tuner", "dataset", "labels", "data_dir", "split_fractions", "split_seed", "batch_size",
                 "epochs", "hyperband_factor", "seed", "search_space")
#: rows of the best-trials table (`tune(top=...)`, `esnet tune --top`)
TOP = 5


@dataclass(frozen=True)
class TuneConfig(DataConfig):
    """Settings of one search (every field is an `esnet tune` flag of the same name).

    The data fields (dataset, labels, data_dir, split_fractions, split_seed) are
    `esnet_tf.data.DataConfig`'s, as in `esnet_tf.train.TrainConfig`; `epochs` is the budget of
    one trial (Hyperband: `max_epochs`). A rerun continues a project only with the same
    `IDENTITY_KEYS`. Invalid values raise `UserError` naming the field and its flag.
    """

    tuner: str = "hyperband"        #: search algorithm: hyperband, bayesian, random
    max_trials: int = 20            #: maximum number of trials (model configurations)
    epochs: int = 30                #: training epochs per trial (Hyperband: the largest budget)
    batch_size: int = TrainConfig.batch_size  #: examples per batch
    hyperband_factor: int = 3       #: Hyperband reduction factor (keeps 1/factor of the trials per round)
    seed: int = 0                   #: random seed (tuner, weights, shuffling)
    search_space: str | None = None  #: search-space JSON file (None: the packaged search_space.json)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.search_space, os.PathLike):
            object.__setattr__(self, "search_space", os.fspath(self.search_space))
        if self.tuner not in TUNERS:
            raise UserError(f"--tuner {self.tuner!r}: unknown tuner; use one of {', '.join(TUNERS)}")
        for name, low in (("max_trials", 1), ("epochs", 1), ("batch_size", 1), ("hyperband_factor", 2),
                          ("seed", 0), ("split_seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r} "
                                f"(tuning setting {name!r})")

    def to_dict(self) -> dict:
        """JSON-ready settings (split_fractions as a list)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.split_fractions is not None:
            d["split_fractions"] = list(self.split_fractions)
        return d

    def train_config(self, **changes: Any) -> TrainConfig:
        """A `TrainConfig` on the same data, batch size and seed (the authors' defaults otherwise),
        with `changes` (e.g. config=, epochs=, learning_rate=, loss=) applied."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)}
        return TrainConfig(**data, batch_size=self.batch_size, seed=self.seed, **changes)


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

def tune(config: TuneConfig, directory: str | Path, project_name: str, *, train_data: Any = None,
         validation_data: Any = None, overwrite: bool = False,
         retrain_epochs: int | None = None, export_dir: str | Path | None = "saved_models",
         export_name: str | None = None, export_version: int | None = None, top: int = TOP,
         verbose: int = 2) -> dict:
    """Run (or continue) a search; returns the summary dict (also in DIR/NAME/summary.json).

    Data: `config.dataset`, or the examples given directly as `train_data` / `validation_data`
    (dicts of numpy arrays or unbatched `tf.data.Dataset`s, as `esnet_tf.train.train` takes them).

    The project is `directory`/`project_name`; `overwrite` (chief only) starts a new search: once the
    data and settings are checked, the old project is set aside, put back if the search fails, and
    removed once the new one completes (files a user put in the project move to the new one).
    `retrain_epochs`: epochs to retrain the best trial with `esnet_tf.train.train` (None:
    `config.epochs`; 0 keeps the trial's own weights). `export_dir=None`: no SavedModel export
    (else EXPORT_DIR/(`export_name` or `project_name`)/(`export_version` or the next free integer)).
    `top`: rows of the best-trials table. `verbose`: Keras progress (0, 1, 2).
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
    if not isinstance(config, TuneConfig):
        raise TypeError(f"tune() takes a TuneConfig, not {type(config).__name__}")
    direct = train_data is not None or validation_data is not None
    if not config.dataset and not direct:
        raise UserError("--dataset is required (an .npz with --labels, a labels directory, or a TFDS name)")
    try:
        space = SearchSpace.load(config.search_space)
    except SearchSpaceError as exc:
        raise UserError(str(exc)) from None
    project = Path(directory) / project_name
    keras.utils.set_random_seed(int(config.seed))
    input_names = space.input_names()  # the base config's named energy inputs (eV/atom) too
    loaded = data.train_and_validation(config.dataset, config.split_options(), "the tuning objective",
                                       train_data=train_data, validation_data=validation_data,
                                       input_names=input_names)
    train_ds, val_ds, n_train, n_val, stats = loaded[:5]
    spec = loaded.source
    identity = _identity(config, space, loaded.fingerprint)
    if not overwrite:
        _check_same_search(project, identity)
    print(f"train: {n_train} examples, validation: {n_val} examples ({spec}); {who} "
          f"{os.environ.get('KERASTUNER_TUNER_ID', 'tuner0')}")

    hypermodel = ESNetHyperModel(space, normalization=stats)
    # --overwrite: everything above is checked; the old project is set aside (not deleted) while the
    # new search runs, put back if it fails, and removed only once the new one is complete
    aside = _set_aside(project) if overwrite and who != "worker" else None
    try:
        summary = _search(config, hypermodel, directory, project_name, who, identity, train_ds, val_ds,
                          n_train, n_val, retrain_epochs, train_data, validation_data, export_dir, export_name,
                          export_version, top, verbose, input_names)
    except BaseException:
        if aside is not None:
            _put_back(aside, project)
        raise
    if aside is not None:
        _finish_replacement(aside, project)
    return summary


def _search(config: TuneConfig, hypermodel, directory, project_name: str, who: str, identity: dict, train_ds,
            val_ds, n_train: int, n_val: int, retrain_epochs, train_data, validation_data, export_dir,
            export_name, export_version, top: int, verbose: int, input_names: tuple[str, ...]) -> dict:
    """The search of `tune` once everything is checked: run, summarize, retrain / keep, export."""
    import keras

    from esnet_tf import data

    project = Path(directory) / project_name
    tuner = make_tuner(config.tuner, hypermodel, max_trials=config.max_trials, epochs=config.epochs,
                       directory=directory, project_name=project_name, seed=config.seed,
                       hyperband_factor=config.hyperband_factor, overwrite=False)
    if who != "worker":
        _write_json(project / SETTINGS_FILE, identity)
    pipe_train = data.training_pipeline(train_ds, config.batch_size, seed=config.seed, input_names=input_names)
    pipe_val = data.training_pipeline(val_ds, config.batch_size, shuffle=False, input_names=input_names)
    t0 = time.time()
    tuner.search(pipe_train, validation_data=pipe_val, epochs=config.epochs, shuffle=False,  # the pipeline shuffles
                 callbacks=[keras.callbacks.TerminateOnNaN()], verbose=verbose)
    if who == "worker":
        mine = sorted(t for t, r in _workers(project).items() if r.get("tuner_id") == tuner.tuner_id)
        print(f"worker {tuner.tuner_id}: done; ran trial(s) {', '.join(mine) or 'none'}")
        return {"role": "worker", "tuner_id": tuner.tuner_id, "trials": mine}

    summary = summarize(tuner, hypermodel, project, top)
    summary.update(role=who, n_train=n_train, n_validation=n_val, search_seconds_this_session=time.time() - t0)
    print(format_table(summary["best_trials"]))
    best = summary["best_trials"][0]
    model_path, retrained = _best_model(tuner, best, config, project, val_ds,
                                        config.epochs if retrain_epochs is None else retrain_epochs,
                                        train_data, validation_data, input_names)
    summary["best_model"] = {"path": str(model_path), **retrained}
    if export_dir is not None:
        summary["export"] = _export(model_path, project, best["trial_id"], export_dir,
                                    export_name or project_name, export_version)
    _write_json(project / SUMMARY_FILE, summary)
    return summary


def _own_entry(name: str) -> bool:
    """Whether a project entry is written by the search (KerasTuner's records or this module's files)."""
    return name.startswith("trial_") or name in ("oracle.json", SETTINGS_FILE, SUMMARY_FILE, BEST_DIR) \
        or (name.endswith(".json") and (name.startswith("tuner") or name.startswith("chief")))


def _set_aside(project: Path) -> Path | None:
    """Move an existing project into a hidden directory beside it (None if there is none)."""
    if not project.exists():
        return None
    aside = Path(tempfile.mkdtemp(prefix=f".{project.name}.", suffix=".replaced", dir=project.parent))
    os.replace(project, aside / project.name)
    print(f"--overwrite: the previous project is kept in {aside} until the new search completes")
    return aside


def _put_back(aside: Path, project: Path) -> None:
    """The new search failed: remove what it wrote, put the previous project back."""
    if project.exists():
        shutil.rmtree(project)
    os.replace(aside / project.name, project)
    aside.rmdir()


def _finish_replacement(aside: Path, project: Path) -> None:
    """The new search completed: the previous project's own files go, files a user put there move over."""
    old = aside / project.name
    for entry in sorted(old.iterdir()):
        if not _own_entry(entry.name) and not (project / entry.name).exists():
            os.replace(entry, project / entry.name)
    shutil.rmtree(aside)


def _identity(config: TuneConfig, space, fingerprint: str | None = None) -> dict:
    settings = config.to_dict()
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
    ident["data_fingerprint"] = fingerprint
    return ident


def _check_same_search(project: Path, identity: dict) -> None:
    path = project / SETTINGS_FILE
    if not path.is_file():
        return
    stored = json.loads(path.read_text())
    differ = [k for k in IDENTITY_KEYS if stored.get(k) != identity.get(k)]
    if stored.get("data_fingerprint") not in (None, identity.get("data_fingerprint")):
        differ.append("data (the train/validation examples differ)")  # projects before fingerprints: not checked
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


def _best_model(tuner, best: dict, config: TuneConfig, project: Path, val_ds, retrain_epochs: int,
                train_data=None, validation_data=None, input_names: tuple[str, ...] | None = None):
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
        run = config.train_config(config=best["config"], epochs=retrain_epochs, **best["training"])
        print(f"retraining trial {best['trial_id']} for {retrain_epochs} epochs -> {out}")
        result = train(run, out, train_data=train_data, validation_data=validation_data, verbose=0)
        info = {"retrained_val_mae_ev_per_atom": result["best_val_mae_ev_per_atom"],
                "retrained_best_epoch": result["best_epoch"], "params": result["params"]}
    else:
        trial = tuner.oracle.get_trial(best["trial_id"])
        with warnings.catch_warnings():  # the trial checkpoint carries optimizer slots a fresh model lacks
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = tuner.load_model(trial)
        model.save(out / "best.keras")
        write_warmup_examples(val_ds, out / "warmup_examples.npz", input_names=input_names or INPUT_NAMES)
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
