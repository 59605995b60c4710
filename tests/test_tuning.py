"""`esnet tune` (tuning/): search space as data, the HyperModel, a real search, resume, chief/workers.

Real data: the first ~40 demo rows featurized by `test_train.real_data()`; a tiny search space
(1-2 stages of width 4-8) and 1-epoch trials keep the whole module to a few minutes on 2 cores.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from conftest import FRACTIONS, _workdir, real_data

ROOT = Path(__file__).resolve().parents[1]
TINY_SPACE = {
    "base": "small",
    "hyperparameters": {
        "stem_filters": {"values": [4, 8]}, "stem_kernel": {"values": [5, 9]},
        "n_stages": {"min": 1, "max": 2}, "blocks_per_stage": 1,
        "first_width": {"values": [4, 8]}, "width_growth": {"values": [1.0, 2.0]},
        "use_attention": {"values": [True, False]}, "attention_ratio": {"values": [2, 4]},
        "spatial_kernel": {"values": [3, 5]}, "composition_units": 8,
        "head_layers": {"min": 1, "max": 2}, "head_width": {"values": [8, 16]},
        "dropout": {"min": 0.0, "max": 0.2, "step": 0.1}, "bn_momentum": 0.9,
        "learning_rate": {"min": 1e-3, "max": 3e-3, "sampling": "log"},
        "loss": {"values": ["log_cosh", "mae"]},
    },
}
EXPECTED_INPUTS = {"dos_up": (None, 1500, 9), "dos_down": (None, 1500, 9), "composition": (None, 118)}


def tiny_space_file() -> Path:
    path = _workdir() / "tiny_space.json"
    if not path.is_file():
        path.write_text(json.dumps(TINY_SPACE))
    return path


def tune_argv(directory: Path, project: str, *extra: str) -> list[str]:
    d = real_data()
    return ["tune", "--dataset", str(d["npz"]), "--labels", str(d["labels"]),
            "--split-fractions", ",".join(map(str, FRACTIONS)), "--split-seed", str(d["split_seed"]),
            "--batch-size", "16", "--epochs", "1", "--search-space", str(tiny_space_file()),
            "--directory", str(directory), "--project-name", project, "--verbose", "0", *extra]


def run_cli(argv: list[str]) -> tuple[int, str]:
    from esnet_tf.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue() + err.getvalue()


def trial_records(project: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(project.glob("trial_*/trial.json"))}


@lru_cache(maxsize=1)
def search3() -> dict:
    """A 3-trial random search (1 epoch each), best trial's own weights kept, no export."""
    directory = _workdir() / "tune"
    t0 = time.time()
    code, out = run_cli(tune_argv(directory, "p", "--tuner", "random", "--max-trials", "3",
                                  "--retrain-epochs", "0", "--no-export"))
    assert code == 0, out
    project = directory / "p"
    return {"directory": directory, "project": project, "out": out, "seconds": time.time() - t0,
            "records": trial_records(project), "summary": json.loads((project / "summary.json").read_text())}


def hypermodel_for(space=None):
    from esnet_tf.data import load_split, scan
    from esnet_tf.tuning import ESNetHyperModel, SearchSpace

    d = real_data()
    ds = load_split(str(d["npz"]), "train", labels=str(d["labels"]), split_fractions=FRACTIONS,
                    split_seed=d["split_seed"])
    _, stats = scan(ds, statistics=True)
    return ESNetHyperModel(space or SearchSpace.load(tiny_space_file()), normalization=stats), stats


def assert_design_inputs(model, stats=None) -> None:
    """Inputs and output of DESIGN.md sections 4-5: names, shapes, float32; compiled; normalisation inside."""
    from esnet_tf.model import OUTPUT_NAME

    got = {t.name: (tuple(t.shape), str(t.dtype)) for t in model.inputs}
    assert got == {k: (s, "float32") for k, s in EXPECTED_INPUTS.items()}, got
    assert list(model.output) == [OUTPUT_NAME] and tuple(model.output[OUTPUT_NAME].shape) == (None, 1)
    assert model.optimizer is not None and model.compiled
    if stats is not None:
        mean = model.get_layer("normalize_up").mean.numpy()
        np.testing.assert_allclose(mean, stats["dos_up"]["mean"], rtol=1e-6)


# ---------------------------------------------------------------- environment

def test_keras3_only_environment(monkeypatch):
    import keras
    import keras_tuner

    from esnet_tf.errors import UserError
    from esnet_tf.tuning.search import check_keras3

    assert "TF_USE_LEGACY_KERAS" not in os.environ
    assert importlib.util.find_spec("tf_keras") is None
    assert int(keras.__version__.split(".")[0]) >= 3
    from keras_tuner.src.backend import config as kt_config
    from keras_tuner.src.backend import keras as kt_keras

    assert kt_config.multi_backend() and kt_keras.Model is keras.Model  # KerasTuner drives the same Keras 3
    assert check_keras3() == keras.__version__
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    with pytest.raises(UserError, match="unset TF_USE_LEGACY_KERAS"):
        check_keras3()


def test_tune_config_validates_and_retrains_on_the_same_data():
    from esnet_tf.errors import UserError
    from esnet_tf.train import TrainConfig
    from esnet_tf.tuning.search import TuneConfig

    config = TuneConfig(dataset="f.npz", labels="l.csv", split_fractions=[0.6, 0.2, 0.2], split_seed=3,
                        batch_size=16, seed=2)
    assert (config.tuner, config.max_trials, config.epochs, config.hyperband_factor) == ("hyperband", 20, 30, 3)
    assert config.batch_size == 16 and TuneConfig().batch_size == TrainConfig().batch_size == 64
    retrain = config.train_config(config={"name": "x"}, epochs=5, learning_rate=2e-3, loss="mae")
    assert (retrain.dataset, retrain.labels, retrain.split_fractions, retrain.split_seed) == \
        ("f.npz", "l.csv", (0.6, 0.2, 0.2), 3)
    assert (retrain.batch_size, retrain.seed, retrain.epochs, retrain.loss) == (16, 2, 5, "mae")
    assert retrain.lr_patience == TrainConfig().lr_patience  # the authors' schedule otherwise
    for field, value, message in [("tuner", "grid", "unknown tuner"), ("max_trials", 0, "--max-trials"),
                                  ("epochs", 0, "--epochs"), ("hyperband_factor", 1, "--hyperband-factor"),
                                  ("split_fractions", (0.5, 0.2, 0.2), "--split-fractions")]:
        with pytest.raises(UserError, match=message):
            TuneConfig(dataset="f.npz", **{field: value})


# ---------------------------------------------------------------- search space

def test_default_space_loads_and_contains_the_paper_config():
    import keras_tuner

    from esnet_tf.model import ESNetConfig
    from esnet_tf.tuning import SearchSpace

    space = SearchSpace.load()
    hp = keras_tuner.HyperParameters()
    space.sample(hp)
    names = {p.name for p in hp.space}
    assert {"stem_kernel", "stem_filters", "n_stages", "blocks_per_stage", "first_width", "width_growth",
            "attention_ratio", "spatial_kernel", "use_attention", "head_layers", "head_width", "dropout",
            "learning_rate", "loss"} <= names
    hp.values.update(stem_filters=64, stem_kernel=20, n_stages=4, blocks_per_stage=2, first_width=64,
                     width_growth=2.0, use_attention=True, attention_ratio=8, spatial_kernel=7,
                     composition_units=64, head_layers=2, head_width=128, dropout=0.0, bn_momentum=0.99)
    config, training = space.sample(hp)
    assert config == ESNetConfig.paper()  # `name` is not compared
    assert set(training) == {"learning_rate", "loss"}


@pytest.mark.parametrize("entry, message", [
    ({"stage_widths": [8, 16]}, "use n_stages, first_width, width_growth"),
    ({"no_such_thing": 3}, "unknown name"),
    ({"dropout": {"min": 0.3, "max": 0.1}}, "min <= max"),
    ({"learning_rate": {"min": 0.0, "max": 0.1, "sampling": "log"}}, "log sampling needs min > 0"),
    ({"loss": {"values": ["log_cosh", "hinge"]}}, "losses must be among"),
    ({"n_stages": {"min": 2, "max": 12}}, "leave no energy points"),
    ({"dropout": {"values": [0.0, 1.0]}}, "invalid ESNetConfig"),
])
def test_bad_search_space_is_refused_naming_file_and_entry(tmp_path, entry, message):
    from esnet_tf.tuning import SearchSpace, SearchSpaceError

    path = tmp_path / "space.json"
    path.write_text(json.dumps({"base": "small", "hyperparameters": entry}))
    with pytest.raises(SearchSpaceError, match=message) as info:
        SearchSpace.load(path)
    assert str(path) in str(info.value)


def test_cli_reports_bad_space_in_one_line(tmp_path):
    path = tmp_path / "space.json"
    path.write_text("{not json")
    argv = tune_argv(tmp_path, "p")
    argv[argv.index("--search-space") + 1] = str(path)
    code, out = run_cli(argv)
    assert code == 2 and "not valid JSON" in out and str(path) in out


# ---------------------------------------------------------------- the hypermodel

def test_every_sampled_hyperparameter_set_builds_the_design_inputs():
    """Random draws and both corners of the default space (up to the 9.7 M paper size), and the tiny one."""
    import keras
    import keras_tuner

    from esnet_tf.tuning import SearchSpace

    for space in (SearchSpace.load(), SearchSpace.load(tiny_space_file())):
        hypermodel, stats = hypermodel_for(space)
        hp = keras_tuner.HyperParameters()
        hypermodel.build(hp)  # declares the space
        draws = []
        for seed in range(2):
            values = {p.name: p.random_sample(seed * 100 + i) for i, p in enumerate(hp.space)}
            draws.append(values)
        from esnet_tf.tuning.search_space import _corner

        draws += [{p.name: _corner(p, c) for p in hp.space} for c in (0, -1)]
        seen = set()
        for values in draws:
            h = keras_tuner.HyperParameters()
            hypermodel.build(h)
            h.values.update(values)
            config, _ = hypermodel.config(h)
            seen.add(config.use_attention)
            keras.backend.clear_session()
            assert_design_inputs(hypermodel.build(h), stats)
        assert seen == {True, False}  # CBAM on and off both sampled


# ---------------------------------------------------------------- search, resume, best model

def test_three_trial_search_completes():
    s = search3()
    records = s["records"]
    assert len(records) == 3
    for rec in records.values():
        assert rec["status"] == "COMPLETED", rec.get("message")
        assert "val_mae" in rec["metrics"]["metrics"] and math.isfinite(rec["score"])
    assert {json.loads((s["project"] / name / "worker.json").read_text())["tuner_id"] for name in records} == {"tuner0"}
    table = s["out"][s["out"].index("best trials"):]
    assert "val MAE eV/atom" in table and len(s["summary"]["best_trials"]) == 3
    scores = [r["val_mae_ev_per_atom"] for r in s["summary"]["best_trials"]]
    assert scores == sorted(scores) and scores[0] == min(r["score"] for r in records.values())
    assert (s["project"] / "best" / "best.keras").is_file()
    print(f"3-trial search: {s['seconds']:.0f} s; best val MAE {scores[0]:.4f} eV/atom")


def test_trial_models_match_design_inputs_and_best_reloads_same_architecture():
    import keras_tuner

    from esnet_tf.model import load_model
    from esnet_tf.tuning.search import make_tuner

    s = search3()
    hypermodel, stats = hypermodel_for()
    for rec in s["records"].values():  # every hyperparameter set the search sampled
        hp = keras_tuner.HyperParameters.from_config(rec["hyperparameters"])
        assert_design_inputs(hypermodel.build(hp), stats)

    tuner = make_tuner("random", hypermodel, max_trials=3, epochs=1, directory=s["directory"], project_name="p")
    assert len(tuner.oracle.trials) == 3  # reloaded, not a new search
    best_hp = tuner.get_best_hyperparameters(1)[0]
    best = s["summary"]["best_trials"][0]
    config, training = hypermodel.config(best_hp)
    assert config.to_dict() == best["config"] and training == best["training"]
    rebuilt = hypermodel.build(best_hp)
    saved = load_model(s["project"] / "best" / "best.keras")
    assert rebuilt.count_params() == saved.count_params() == best["params"]
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in saved.weights]


def test_rerun_with_other_settings_is_refused():
    s = search3()
    argv = tune_argv(s["directory"], "p", "--tuner", "random", "--max-trials", "3")
    argv[argv.index("--epochs") + 1] = "2"
    code, out = run_cli(argv)
    assert code == 2 and "other settings (epochs)" in out


def test_overwrite_checks_first_and_replaces_only_its_own_files(tmp_path):
    """--overwrite (issue 36): bad data is refused with the old project untouched byte for byte; a
    completed new search replaces the old records and keeps a file the user put in the project."""
    import shutil

    s = search3()
    directory = tmp_path / "tune"
    shutil.copytree(s["project"], directory / "p")
    (directory / "p" / "notes.txt").write_text("mine\n")

    def tree(root):
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    before = tree(directory)
    d = real_data()
    with np.load(d["npz"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["composition"][0] = np.nan
    np.savez(tmp_path / "bad.npz", **arrays)
    argv = tune_argv(directory, "p", "--tuner", "random", "--max-trials", "1", "--retrain-epochs", "0",
                     "--no-export", "--overwrite")
    bad = list(argv)
    bad[bad.index("--dataset") + 1] = str(tmp_path / "bad.npz")
    code, out = run_cli(bad)
    assert code == 2 and "NaN" in out
    assert tree(directory) == before
    code, out = run_cli(argv)
    assert code == 0, out
    assert len(trial_records(directory / "p")) == 1 and (directory / "p" / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in directory.iterdir()) == ["p"]  # nothing set aside is left


def test_resume_continues_the_same_search_then_retrains_and_exports():
    import tensorflow as tf

    s = search3()
    before = s["records"]
    export_dir = _workdir() / "saved_models"
    code, out = run_cli(tune_argv(s["directory"], "p", "--tuner", "random", "--max-trials", "4",
                                  "--retrain-epochs", "1", "--export-dir", str(export_dir),
                                  "--export-name", "tuned"))
    assert code == 0, out
    assert "Reloading Tuner" in out
    after = trial_records(s["project"])
    assert len(after) == 4 and set(before) < set(after)
    for name, rec in before.items():  # earlier trials kept as they were, not rerun
        assert after[name]["hyperparameters"]["values"] == rec["hyperparameters"]["values"]
        assert after[name]["score"] == rec["score"]
    (new,) = set(after) - set(before)
    assert after[new]["status"] == "COMPLETED"
    assert {r["hyperparameters"]["values"]["stem_kernel"] for r in after.values()} <= {5, 9}

    summary = json.loads((s["project"] / "summary.json").read_text())
    assert summary["n_trials"] == 4
    best_dir = s["project"] / "best"
    assert (best_dir / "history.csv").is_file() and (best_dir / "best.keras").is_file()  # retrained by esnet train
    trained = json.loads((best_dir / "config.json").read_text())
    assert trained["model"] == summary["best_trials"][0]["config"]
    assert trained["training"]["learning_rate"] == summary["best_trials"][0]["training"]["learning_rate"]
    exported = Path(summary["export"]["path"])
    assert exported == export_dir / "tuned" / "1" and (exported / "saved_model.pb").is_file()
    assert summary["export"]["n_warmup"] > 0 and summary["export"]["max_abs_diff"] < 1e-5
    sig = tf.saved_model.load(str(exported)).signatures["serving_default"]
    specs = sig.structured_input_signature[1]
    assert {k: tuple(v.shape) for k, v in specs.items()} == EXPECTED_INPUTS


# ---------------------------------------------------------------- distributed

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_distributed_chief_and_two_workers_share_one_oracle(tmp_path):
    """KerasTuner chief/worker mode on 127.0.0.1: a 2-trial Hyperband search run by two worker
    processes against one oracle served by the chief, which then summarises and keeps the best model."""
    real_data()
    port = _free_port()
    argv = tune_argv(tmp_path, "dist", "--tuner", "hyperband", "--epochs", "2", "--hyperband-factor", "2",
                     "--max-trials", "2", "--retrain-epochs", "0", "--no-export")
    argv[argv.index("--verbose") + 1] = "2"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_") and k != "TF_USE_LEGACY_KERAS"}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port), TF_CPP_MIN_LOG_LEVEL="2")
    procs = {}
    try:
        for tuner_id in ("worker0", "worker1", "chief"):  # workers wait for the chief's server
            log = (tmp_path / f"{tuner_id}.log").open("w")
            procs[tuner_id] = (subprocess.Popen([sys.executable, "-m", "esnet_tf.cli", *argv], cwd=tmp_path,
                                                env={**env, "KERASTUNER_TUNER_ID": tuner_id},
                                                stdout=log, stderr=subprocess.STDOUT), log)
        deadline = time.time() + 400
        for tuner_id, (proc, _) in procs.items():
            proc.wait(timeout=max(1, deadline - time.time()))
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = {t: (tmp_path / f"{t}.log").read_text() for t in procs}
    for tuner_id, (proc, _) in procs.items():
        assert proc.returncode == 0, f"{tuner_id}:\n{logs[tuner_id][-3000:]}"

    project = tmp_path / "dist"
    records = trial_records(project)
    assert len(records) == 2 and all(r["status"] == "COMPLETED" for r in records.values())
    ran_by = {name: json.loads((project / name / "worker.json").read_text())["tuner_id"] for name in records}
    assert set(ran_by.values()) == {"worker0", "worker1"}, ran_by  # both workers, one oracle
    pids = {json.loads((project / name / "worker.json").read_text())["pid"] for name in records}
    assert pids <= {procs["worker0"][0].pid, procs["worker1"][0].pid} and len(pids) == 2
    assert all("tuner/bracket" in r["hyperparameters"]["values"] for r in records.values())  # Hyperband's oracle
    for t in ("worker0", "worker1"):
        assert f"worker {t}: done" in logs[t]
    summary = json.loads((project / "summary.json").read_text())
    assert summary["role"] == "chief" and summary["n_trials"] == 2
    assert summary["tuner_ids"] == ["worker0", "worker1"]
    assert "best trials" in logs["chief"] and (project / "best" / "best.keras").is_file()
    assert (project / "oracle.json").is_file() and (project / "chief.json").is_file()  # the one oracle: the chief's
