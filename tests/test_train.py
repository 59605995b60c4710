"""Training, evaluation and prediction on real featurized demo data (datasets/is_dos/demo).

The data and the trained models are conftest.py's session fixtures (`demo_data`, `small_run`,
`tiny_config`, `tiny_run`), shared with the other test modules.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO, EPOCHS, FRACTIONS, UNINTERRUPTED_EPOCHS, read_history, settings_for


# ---------------------------------------------------------------- training

def test_small_config_learns_below_mean_predictor(small_run, demo_data):
    run, d = small_run, demo_data
    from esnet_tf.data import select_split

    y = select_split(d["arrays"], "train", FRACTIONS, d["split_seed"])["formation_energy_per_atom"].astype(float)
    mean_loss = float(np.mean(np.log(np.cosh(y - y.mean()))))  # log-cosh of the best constant (approx.)
    hist = read_history(run["run_dir"] / "history.csv")
    final = float(np.mean([h["loss"] for h in hist[-3:]]))
    assert final < 0.3 * mean_loss, (final, mean_loss)


def test_run_dir_contents_and_validation_selection(small_run, demo_data):
    run = small_run
    rd = run["run_dir"]
    for name in ("config.json", "history.csv", "best.keras", "summary.json", "warmup_examples.npz"):
        assert (rd / name).is_file(), name
    assert any((rd / "logs").rglob("events.out.tfevents*")), "no TensorBoard event files"
    assert not (rd / "backup").exists(), "BackupAndRestore state left after a finished run"
    cfg = json.loads((rd / "config.json").read_text())
    assert cfg["model"]["name"] == "small" and cfg["training"]["learning_rate"] == 1.5e-3
    assert cfg["training"]["loss"] == "log_cosh" and cfg["training"]["batch_size"] == 4
    assert len(cfg["normalization"]["dos_up"]["mean"]) == 9
    hist = read_history(rd / "history.csv")
    assert [int(h["epoch"]) for h in hist] == list(range(EPOCHS))
    assert {"loss", "mae", "val_loss", "val_mae", "learning_rate"} <= set(hist[0])
    best = int(np.argmin([h["val_loss"] for h in hist]))
    assert run["summary"]["best_epoch"] == best
    # the test split is not part of training: train + validation < all examples
    n_all = len(demo_data["arrays"]["id"])
    assert cfg["data"]["n_train"] + cfg["data"]["n_validation"] < n_all


def test_no_backups_trains_the_same_and_writes_the_same_best_model(tmp_path, tiny_run, tiny_config, demo_data):
    """--no-backups: same epochs and losses, best.keras of the same epoch, and no backup written."""
    from esnet_tf.model import load_model
    from esnet_tf.train import train

    ref = tiny_run
    settings = settings_for(str(tiny_config), UNINTERRUPTED_EPOCHS, backups=False)
    summary = train(settings, tmp_path / "run", verbose=0)
    hist = read_history(tmp_path / "run" / "history.csv")
    assert len(hist) == len(ref["history"]) and summary["best_epoch"] == ref["summary"]["best_epoch"]
    for a, b in zip(hist, ref["history"]):
        assert math.isclose(a["val_loss"], b["val_loss"], rel_tol=1e-4, abs_tol=1e-6)
    assert not (tmp_path / "run" / "backup").exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []
    batch = {k: v[:6] for k, v in demo_data["arrays"].items() if k in ("dos_up", "dos_down", "composition")}
    got = load_model(tmp_path / "run" / "best.keras").predict_on_batch(batch)
    want = load_model(ref["dir"] / "best.keras").predict_on_batch(batch)
    got, want = (np.asarray(x["formation_energy_per_atom"] if isinstance(x, dict) else x) for x in (got, want))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_resume_after_sigkill_matches_uninterrupted(tmp_path, tiny_run, tiny_config):
    """Kill `esnet train` mid-run; `--resume` ends with the epochs an uninterrupted run has."""
    epochs = UNINTERRUPTED_EPOCHS
    settings = settings_for(str(tiny_config), epochs)
    reference, ref_hist = tiny_run["summary"], tiny_run["history"]

    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "esnet_tf.cli", "train", "--dataset", settings.dataset, "--labels",
           settings.labels, "--config", settings.config, "--epochs", str(epochs), "--batch-size", "8",
           "--bn-momentum", "0.9", "--split-fractions", ",".join(map(str, FRACTIONS)), "--split-seed",
           str(settings.split_seed), "--run-dir", str(run_dir), "--verbose", "2"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    history = run_dir / "history.csv"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().strip().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before it could be killed:\n{proc.communicate()[0][-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_rows = read_history(history)
    assert 2 <= len(killed_rows) < epochs
    assert (run_dir / "backup" / "training_metadata.json").is_file()

    out = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "resuming from epoch" in out.stdout
    hist = read_history(history)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [int(h["epoch"]) for h in hist] == list(range(epochs))
    assert summary["epochs_run"] == reference["epochs_run"] == len(ref_hist) == epochs
    # epochs done before the kill are kept, and are the same as the uninterrupted run's
    done = int(json.loads(out.stdout.split("resuming from epoch ")[1].split()[0]))
    for before, ref in zip(hist[:done], ref_hist[:done]):
        assert math.isclose(before["loss"], ref["loss"], rel_tol=1e-3, abs_tol=1e-6)
    assert not (run_dir / "backup").exists()


def test_resume_keeps_early_stopping_state(tmp_path):
    """The callback state saved with each epoch is restored on resume (wait counters, best values)."""
    import keras

    from esnet_tf.train import TrainConfig, _make_callbacks

    cbs = _make_callbacks(tmp_path, TrainConfig(), 0)
    keeper = [c for c in cbs if type(c).__name__ == "TrainingStateKeeper"][0]
    stopper = [c for c in cbs if isinstance(c, keras.callbacks.EarlyStopping)][0]
    stopper.wait, stopper.best = 7, 0.125
    keeper.on_epoch_end(4)
    stopper.wait, stopper.best = 0, np.inf  # what on_train_begin resets

    class _M:
        _initial_epoch = 5

    keeper.set_model(_M())
    keeper.on_train_begin()
    assert (stopper.wait, stopper.best) == (7, 0.125)


def _tiny_keras_fit_data(n: int = 16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], dtype="float32"))[:, None]
    return x, y


def _tiny_keras_model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def test_resume_restores_callback_state_in_a_real_fit(tmp_path):
    """Through `model.fit` (not by hand): the EarlyStopping / ReduceLROnPlateau / ModelCheckpoint
    state at the start of the resumed epoch is the state the interrupted run had after the epoch
    before. The backup restores the start epoch after the keeper's on_train_begin, so this checks
    the keeper picks the state up at the first on_epoch_begin."""
    import keras

    from esnet_tf.train import TrainConfig, _make_callbacks

    x, y = _tiny_keras_fit_data()
    config = TrainConfig(early_stopping_patience=50, lr_patience=50)
    tracked = lambda cbs: {type(c).__name__: ({a: getattr(c, a) for a in ("wait", "best")} if hasattr(c, "wait")
                                                else {"best": c.best})
                           for c in cbs if isinstance(c, (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau,
                                                          keras.callbacks.ModelCheckpoint))}
    seen: dict = {}

    class Interrupt(keras.callbacks.Callback):
        def __init__(self, cbs):
            super().__init__()
            self.cbs = cbs

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 3:
                seen["before"] = tracked(self.cbs)
                raise KeyboardInterrupt

    cbs = _make_callbacks(tmp_path, config, 0)
    with pytest.raises(KeyboardInterrupt):
        _tiny_keras_model().fit(x, y, validation_data=(x[:4], y[:4]), epochs=6, shuffle=False, verbose=0,
                                callbacks=cbs + [Interrupt(cbs)])
    assert seen["before"]["EarlyStopping"]["best"] < np.inf

    class Probe(keras.callbacks.Callback):
        def __init__(self, cbs):
            super().__init__()
            self.cbs = cbs

        def on_epoch_begin(self, epoch, logs=None):
            seen.setdefault("start", epoch)
            seen.setdefault("after", tracked(self.cbs))

    cbs = _make_callbacks(tmp_path, config, 0)
    _tiny_keras_model().fit(x, y, validation_data=(x[:4], y[:4]), epochs=6, shuffle=False, verbose=0,
                            callbacks=cbs + [Probe(cbs)])
    assert seen["start"] == 3
    assert seen["after"] == seen["before"]


def test_train_config_defaults_and_round_trip():
    """The authors' defaults (DESIGN.md section 4); to_dict is the config.json "training" entry."""
    from esnet_tf.train import TrainConfig

    assert TrainConfig().to_dict() == {
        "dataset": None, "labels": None, "data_dir": None, "config": "paper", "epochs": 300,
        "batch_size": 64, "learning_rate": 1.5e-3, "loss": "log_cosh", "lr_factor": 0.5,
        "lr_patience": 15, "min_lr": 0.0, "early_stopping_patience": 35, "seed": 0,
        "cache": "memory", "shuffle_buffer": 10_000, "dropout": None, "bn_momentum": None,
        "split_fractions": None, "split_seed": 0, "strategy": "default", "sync_batchnorm": True,
        "precision": "float32", "backups": True}
    config = TrainConfig(dataset="f.npz", labels="l.csv", config={"name": "tiny"}, split_fractions=[0.6, 0.2, 0.2],
                         dropout=0.1)
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["split_fractions"] == [0.6, 0.2, 0.2]
    assert TrainConfig.from_dict(stored) == config
    # a run written before some setting existed, or with None for a default, still resumes
    assert TrainConfig.from_dict({"dataset": "f.npz", "split_seed": None, "unknown": 1}) == TrainConfig(dataset="f.npz")


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "--epochs must be an integer >= 1"),
    ("batch_size", 0, "--batch-size must be an integer >= 1"),
    ("batch_size", 8.5, "--batch-size must be an integer"),
    ("learning_rate", 0.0, "--learning-rate must be a number > 0"),
    ("early_stopping_patience", -1, "--early-stopping-patience must be an integer >= 0"),
    ("lr_factor", 1.0, "--lr-factor must be in"),
    ("dropout", 1.0, "--dropout must be in"),
    ("split_fractions", (0.5, 0.2, 0.2), "--split-fractions must be three fractions >= 0 summing to 1"),
    ("split_fractions", (0.5, 0.5), "--split-fractions"),
    ("loss", "hinge", "--loss must be one of log_cosh"),
    ("strategy", "tpu", "--strategy must be one of default, mirrored, multi-worker"),
    ("precision", "float64", "--precision must be one of auto"),
])
def test_train_config_refuses_bad_values_naming_the_flag(field, value, message):
    from esnet_tf.errors import UserError
    from esnet_tf.train import TrainConfig

    with pytest.raises(UserError, match=message):
        TrainConfig(**{field: value})
    with pytest.raises(UserError, match=message):
        TrainConfig().replace(**{field: value})


def test_cli_resume_keeps_stored_settings_unless_given_again():
    from esnet_tf.cli import build_parser
    from esnet_tf.cli.train import config_from_args
    from esnet_tf.errors import UserError
    from esnet_tf.train import TrainConfig

    stored = TrainConfig(dataset="f.npz", labels="l.csv", epochs=7, batch_size=4, learning_rate=1e-3,
                         split_fractions=(0.6, 0.2, 0.2)).to_dict()
    argv = ["train", "--resume", "--epochs", "9", "--split-fractions", "0.8,0.1,0.1"]
    config = config_from_args(build_parser(argv).parse_args(argv), stored)
    assert (config.epochs, config.split_fractions) == (9, (0.8, 0.1, 0.1))  # given again
    assert (config.dataset, config.batch_size, config.learning_rate) == ("f.npz", 4, 1e-3)  # stored
    assert config.loss == "log_cosh" and config.backups  # neither: the default
    argv = ["train", "--dataset", "f.npz", "--no-backups"]
    assert config_from_args(build_parser(argv).parse_args(argv)).backups is False
    argv = ["train", "--dataset", "f.npz", "--epochs", "0"]
    with pytest.raises(UserError, match="--epochs must be an integer >= 1"):
        config_from_args(build_parser(argv).parse_args(argv))
    with pytest.raises(UserError, match="--dataset is required"):
        config_from_args(build_parser(["train"]).parse_args(["train"]))


# ---------------------------------------------------------------- examples given directly, run rules

def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _copy_run(tiny_run: dict, tmp_path: Path) -> Path:
    """A copy of the shared tiny run (a finished run) with a file of the user's inside."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run["dir"], run_dir)
    (run_dir / "notes.txt").write_text("the user's own notes\n")
    return run_dir


def test_overwrite_with_arrays_trains_as_the_npz_run_and_replaces_its_own_files(tmp_path, tiny_run, tiny_config,
                                                                                 demo_data):
    """train(train_data=arrays, validation_data=arrays) trains on the same examples as the .npz spec
    (same fingerprint, same losses); overwrite=True swaps the new run in and keeps the user's file."""
    from esnet_tf.data import select_split
    from esnet_tf.train import train

    d = demo_data
    split = {name: select_split(d["arrays"], name, FRACTIONS, d["split_seed"]) for name in ("train", "validation")}
    settings = settings_for(str(tiny_config), 3)
    settings = settings.replace(dataset=None, labels=None)
    run_dir = _copy_run(tiny_run, tmp_path)
    summary = train(settings, run_dir, train_data=split["train"], validation_data=split["validation"],
                    overwrite=True, verbose=0)
    assert summary["data_fingerprint"] == tiny_run["summary"]["data_fingerprint"]
    assert summary["best_model"] == str(run_dir / "best.keras") and (run_dir / "best.keras").is_file()
    hist = read_history(run_dir / "history.csv")
    assert len(hist) == 3
    for a, b in zip(hist, tiny_run["history"][:3]):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4, abs_tol=1e-6)
        assert math.isclose(a["val_loss"], b["val_loss"], rel_tol=1e-4, abs_tol=1e-6)
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["training"]["dataset"] is None and stored["data"]["source"] == "arrays"
    assert (run_dir / "notes.txt").read_text() == "the user's own notes\n"
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != ".run.lock")
    assert left == ["run"]  # no staging or replaced directory left
    assert not any(p.name.startswith(".esnet") for p in run_dir.iterdir())


def test_tf_data_examples_have_the_fingerprint_of_the_same_arrays(demo_data):
    import tensorflow as tf

    from esnet_tf.data import example_arrays, select_split, train_and_validation

    d = demo_data
    tr, va = (select_split(d["arrays"], n, FRACTIONS, d["split_seed"]) for n in ("train", "validation"))
    from_arrays = train_and_validation(None, {}, "test", train_data=tr, validation_data=va)
    from_tf = train_and_validation(None, {}, "test", validation_data=va,
                                   train_data=tf.data.Dataset.from_tensor_slices(example_arrays(tr)))
    spec = train_and_validation(str(d["npz"]), settings_for("small", 1).split_options(), "test")
    assert from_arrays.fingerprint == from_tf.fingerprint == spec.fingerprint
    counts = (len(tr["id"]), len(va["id"]))
    assert (from_tf.n_train, from_tf.n_validation) == (spec.n_train, spec.n_validation) == counts
    assert from_tf.source == "tf.data" and from_arrays.source == "arrays"


@pytest.mark.parametrize("change, message", [
    ({"formation_energy_per_atom": None}, "missing array"),
    ({"dos_up": "shape"}, "'dos_up' has shape"),
    ({"id": "rows"}, "rows"),
])
def test_examples_given_as_arrays_are_checked(demo_data, change, message):
    from esnet_tf.data import example_arrays
    from esnet_tf.errors import UserError

    arrays = dict(demo_data["arrays"])
    (key, how), = change.items()
    if how is None:
        del arrays[key]
    elif how == "shape":
        arrays[key] = arrays[key][:, :, :5]
    else:
        arrays[key] = arrays[key][:-1]
    with pytest.raises(UserError, match=message):
        example_arrays(arrays, "given")
    out = example_arrays({**demo_data["arrays"], "is_formation_energy_per_atom": np.zeros(len(arrays["dos_down"]))})
    assert out["is_formation_energy_per_atom"].shape == (len(arrays["dos_down"]), 1)  # a named scalar input


def test_named_energy_inputs_pass_from_the_arrays_to_the_model(tmp_path, tiny_config, demo_data):
    """An extra (N,) array named as one of the model's energy inputs (eV/atom) is fed to it as (N, 1);
    NaN there is refused naming the id and how to obtain the energy."""
    from esnet_tf.data import select_split
    from esnet_tf.errors import UserError
    from esnet_tf.model import ESNetConfig, load_model
    from esnet_tf.train import train

    d = demo_data
    config = ESNetConfig.from_dict(json.loads(Path(tiny_config).read_text()))
    config = config.replace(energy_inputs=("is_formation_energy_per_atom",)).to_dict()
    arrays = {**d["arrays"], "is_formation_energy_per_atom": d["arrays"]["formation_energy_per_atom"] + 0.1}
    tr, va = (select_split(arrays, n, FRACTIONS, d["split_seed"]) for n in ("train", "validation"))
    settings = settings_for(config, 1).replace(dataset=None, labels=None)
    train(settings, tmp_path / "run", train_data=tr, validation_data=va, verbose=0)
    model = load_model(tmp_path / "run" / "best.keras")
    assert "is_formation_energy_per_atom" in {t.name for t in model.inputs}
    with np.load(tmp_path / "run" / "warmup_examples.npz") as warm:
        assert warm["is_formation_energy_per_atom"].shape[1:] == (1,)
    va = {**va, "is_formation_energy_per_atom": va["is_formation_energy_per_atom"].copy()}
    va["is_formation_energy_per_atom"][0] = np.nan
    with pytest.raises(UserError, match=f"'is_formation_energy_per_atom' holds NaN or inf for id {va['id'][0]}; "
                                        ".*references"):
        train(settings, tmp_path / "run2", train_data=tr, validation_data=va, verbose=0)
    assert not (tmp_path / "run2").exists()


def test_train_refuses_a_locked_run_directory(tmp_path, demo_data):
    from esnet_tf.atomic import exclusive
    from esnet_tf.errors import UserError
    from esnet_tf.train import train

    run_dir = tmp_path / "run"
    with exclusive(run_dir, "run directory"):  # as another training holds it
        with pytest.raises(UserError, match=r"run directory is being written by pid \d+"):
            train(settings_for("small", 1), run_dir, verbose=0)
    assert not run_dir.exists()


def test_train_refuses_an_existing_run_and_returns_a_finished_one_on_resume(tmp_path, tiny_run, tiny_config):
    from esnet_tf.errors import UserError
    from esnet_tf.train import train

    run_dir = _copy_run(tiny_run, tmp_path)
    before = _tree(run_dir)
    settings = settings_for(str(tiny_config), UNINTERRUPTED_EPOCHS)
    with pytest.raises(UserError, match="already holds a run; resume it .*--overwrite"):
        train(settings, run_dir, verbose=0)
    with pytest.raises(UserError, match="exclude each other"):
        train(settings, run_dir, resume=True, overwrite=True, verbose=0)
    summary = train(settings, run_dir, resume=True, verbose=0)  # finished: nothing to do
    assert summary["already_finished"] and summary["best_epoch"] == tiny_run["summary"]["best_epoch"]
    assert _tree(run_dir) == before


def test_resume_refuses_other_settings_or_other_data(tmp_path, tiny_run, tiny_config):
    from esnet_tf.errors import UserError
    from esnet_tf.train import train

    run_dir = _copy_run(tiny_run, tmp_path)
    (run_dir / "summary.json").unlink()  # an interrupted run
    settings = settings_for(str(tiny_config), UNINTERRUPTED_EPOCHS)
    with pytest.raises(UserError, match="trained with --config .* resume it without --config"):
        train(settings.replace(config="small"), run_dir, resume=True, verbose=0)
    with pytest.raises(UserError, match="trained with --split-seed"):
        train(settings.replace(split_seed=settings.split_seed + 1), run_dir, resume=True, verbose=0)
    stored = json.loads((run_dir / "config.json").read_text())
    stored["data"]["fingerprint"] = "0" * 64  # as if the .npz had changed under the same name
    (run_dir / "config.json").write_text(json.dumps(stored))
    before = _tree(run_dir)
    with pytest.raises(UserError, match="examples differ from the ones this run was trained on"):
        train(settings, run_dir, resume=True, verbose=0)
    assert _tree(run_dir) == before


def test_overwrite_that_fails_validation_keeps_the_old_run_byte_for_byte(tmp_path, tiny_run, tiny_config, demo_data):
    """Issue 36: --overwrite checks the new data first; a refusal leaves every old file as it was."""
    from esnet_tf.cli import main
    from esnet_tf.errors import UserError
    from esnet_tf.train import train

    run_dir = _copy_run(tiny_run, tmp_path)
    before = _tree(run_dir)
    with np.load(demo_data["npz"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["dos_up"][0, 10, 0] = np.nan
    np.savez(tmp_path / "bad.npz", **arrays)
    settings = settings_for(str(tiny_config), 1).replace(dataset=str(tmp_path / "bad.npz"))
    with pytest.raises(UserError, match="NaN"):
        train(settings, run_dir, overwrite=True, verbose=0)
    argv = ["train", "--dataset", str(tmp_path / "bad.npz"), "--labels", settings.labels, "--config",
            str(tiny_config), "--run-dir", str(run_dir), "--overwrite", "--epochs", "1"]
    assert main(argv) == 2
    assert main([*argv[:-2], "--epochs", "0"]) == 2  # an invalid setting: refused before anything is touched
    assert _tree(run_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".run.lock") == ["bad.npz", "run"]


# ---------------------------------------------------------------- data checks

def test_nan_inputs_refused_with_id(tmp_path, demo_data, small_run):
    from esnet_tf.errors import UserError
    from esnet_tf.data import check_finite, load_split, scan

    d = demo_data
    with np.load(d["npz"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    bad_id = str(arrays["id"][1])
    arrays["dos_down"][1, 100, 3] = np.nan
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=bad_id):
        check_finite({k: arrays[k] for k in ("dos_up", "dos_down", "composition", "id")})
    ds = load_split(str(tmp_path / "bad.npz"), "all", labels=str(d["labels"]))
    with pytest.raises(UserError, match=f"dos_down.*{bad_id}"):
        scan(ds, "bad.npz")
    from esnet_tf.cli import main

    code = main(["predict", str(small_run["run_dir"] / "best.keras"), str(tmp_path / "bad.npz"),
                 "--out", str(tmp_path / "p.csv")])
    assert code == 2 and not (tmp_path / "p.csv").exists()


def test_negative_dos_rule_is_the_featurizers_on_arrays(demo_data):
    """One tolerance (esnet_tf.isdos.negative_dos_floor): relative to the largest |DOS| of the example,
    never tighter than 1e-2 states/eV; the array check before training/prediction applies the same rule."""
    from esnet_tf.data import check_values
    from esnet_tf.errors import UserError
    from esnet_tf.isdos import negative_dos_floor

    assert negative_dos_floor(np.array([0.0, 0.5])) == -1e-2  # small DOS: the absolute floor
    assert negative_dos_floor(np.array([0.0, 30.0, -1.0])) == pytest.approx(-0.3)  # relative to the peak
    arrays = {k: v[:3].copy() for k, v in demo_data["arrays"].items()}
    peak = float(np.abs(arrays["dos_up"][1]).max())
    arrays["dos_up"][1, 5, 0] = 0.9 * negative_dos_floor(arrays["dos_up"][1])  # a rounding dip: accepted
    check_values(arrays, "demo")
    arrays["dos_up"][1, 5, 0] = -0.02 * max(1.0, peak)  # beyond the rule: refused, naming the id
    with pytest.raises(UserError, match=f"'dos_up' holds negative DOS .* for id {arrays['id'][1]}"):
        check_values(arrays, "demo")


def test_labels_dir_and_missing_labels(tmp_path, demo_data):
    from esnet_tf.errors import UserError
    from esnet_tf.data import load_arrays

    d = demo_data
    lonely = tmp_path / "features.npz"
    shutil.copy(d["npz"], lonely)
    with pytest.raises(UserError, match="labels"):
        load_arrays(str(lonely))
    arrays = load_arrays(str(DEMO))  # the demo layout: labels.csv + calcs/, featurized on the fly
    assert arrays["dos_up"].shape[1:] == (1500, 9) and len(arrays["id"]) >= len(d["arrays"]["id"]) - 1
    assert np.isfinite(arrays["formation_energy_per_atom"]).all()
    from esnet_tf.predict import load_inputs

    inputs, failures = load_inputs([str(DEMO)])  # as `esnet predict DEMO_DIR` reads it
    assert not failures and len(inputs["id"]) == len(arrays["id"])
    assert all(c.lower().startswith("gpaw") for c in inputs["code"])  # the domain check needs the DFT code


def test_labels_csv_with_bad_number_or_duplicate_id_is_refused(tmp_path):
    from esnet_tf.errors import UserError
    from esnet_tf.labels import labels_by_id

    def read_labels(path):  # as the .npz loader reads a labels CSV
        return labels_by_id(path, path_column=None, require_energy=False)

    good = tmp_path / "good.csv"
    good.write_text("id,formation_energy_per_atom,e_above_hull\na,-1.5,\nb,nan,0.1\n,")
    rows = read_labels(good)  # blank / nan -> NaN; a trailing line without an id is skipped
    assert rows["a"]["formation_energy_per_atom"] == -1.5 and math.isnan(rows["a"]["e_above_hull"])
    assert math.isnan(rows["b"]["formation_energy_per_atom"]) and len(rows) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("id,formation_energy_per_atom\na,-1.5\nb,-0.3eV\n")
    with pytest.raises(UserError, match=r"bad.csv:3: 'formation_energy_per_atom' is '-0.3eV'"):
        read_labels(bad)
    bad.write_text("id,formation_energy_per_atom\na,-1.5\na,-0.3\n")
    with pytest.raises(UserError, match=r"bad.csv:3: duplicate id 'a'"):
        read_labels(bad)


# ---------------------------------------------------------------- evaluate / predict

def test_evaluate_cli_writes_metrics_and_parity(tmp_path, demo_data, small_run):
    from esnet_tf.cli import main

    d = demo_data
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(small_run["run_dir"] / "best.keras"), "--dataset", str(d["npz"]),
                 "--labels", str(d["labels"]), "--split", "test", "--split-fractions",
                 ",".join(map(str, FRACTIONS)), "--split-seed", str(d["split_seed"]), "--out", str(out)])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("mae", "rmse", "r2", "precision", "recall", "f1", "accuracy", "n"):
        assert key in m
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == m["n"] > 0
    err = [abs(float(r["predicted_formation_energy_per_atom"]) - float(r["formation_energy_per_atom"])) for r in rows]
    assert m["mae"] == pytest.approx(np.mean(err), abs=2e-6)
    assert (out / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from esnet_tf.splits import split_of

    chemsys = {str(i): str(c) for i, c in zip(d["arrays"]["id"], d["arrays"]["chemsys"])}
    assert all(split_of(chemsys[r["id"]], FRACTIONS, d["split_seed"]) == "test" for r in rows)


@pytest.mark.parametrize("fields, message", [
    ({"model": None}, "no MODEL given"),
    ({"inputs": ()}, "no INPUT given for model m"),
    ({"batch_size": 0}, "--batch-size must be a positive number"),
    ({"workers": 0}, "--workers must be >= 1"),
    ({"precision": "float64"}, "--precision 'float64'"),
])
def test_predict_config_checks_its_arguments(fields, message):
    """The checks of `esnet predict` live in the library (PredictConfig); the CLI only converts flags."""
    from esnet_tf.cli import build_parser
    from esnet_tf.cli.predict import config_from_args
    from esnet_tf.errors import UserError
    from esnet_tf.predict import PredictConfig

    with pytest.raises(UserError, match=message):
        PredictConfig(**{"model": "m", "inputs": ("a.npz",), **fields})
    argv = ["predict", "m", "a.npz", "b.npz", "--batch-size", "7"]
    config = config_from_args(build_parser(argv).parse_args(argv))
    assert (config.model, config.inputs, config.batch_size) == ("m", ("a.npz", "b.npz"), 7)
    argv = ["predict", "--model", "m", "a.npz"]
    assert config_from_args(build_parser(argv).parse_args(argv)).inputs == ("a.npz",)


def test_predict_cli_npz_and_raw_files(tmp_path, demo_data, small_run):
    from esnet_tf.cli import main

    d = demo_data
    model = str(small_run["run_dir"] / "best.keras")
    out = tmp_path / "preds.csv"
    assert main(["predict", model, str(d["npz"]), "--labels", str(d["labels"]), "--out", str(out)]) == 0
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "formula", "predicted_formation_energy_per_atom", "formation_energy_per_atom",
                             "e_above_hull"]
    assert [r["id"] for r in rows] == list(d["arrays"]["id"])
    with (DEMO / "labels.csv").open() as fh:
        first = next(csv.DictReader(fh))
    out2 = tmp_path / "raw.csv"
    assert main(["predict", model, str(DEMO / first["path"]), "--out", str(out2)]) == 0
    with out2.open() as fh:
        raw = list(csv.DictReader(fh))
    assert len(raw) == 1 and raw[0]["formula"] == first["formula"]
    by_id = {r["id"]: r for r in rows}
    if first["id"] in by_id:  # same calculation via raw file and via .npz: same prediction
        assert raw[0]["predicted_formation_energy_per_atom"] == by_id[first["id"]]["predicted_formation_energy_per_atom"]
    assert main(["predict", model, str(tmp_path / "nope.vasprun.xml"), "--out", str(out2),
                 "--overwrite"]) == 2  # out2 exists: past the --overwrite check, at the missing input
