"""`esnet demo` end to end with a tiny budget: every artefact exists and loads. The demo trains the
shipped IS-energy model's configuration (`is_relax`); the test cuts its topology to the tiny one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from esnet_tf.cli import main as cli_main
from conftest import tiny_config_file


ENERGY = "is_formation_energy_per_atom"


def tiny_is_relax_config() -> Path:
    """The demo's default configuration (`esnet_tf.demo.model_config('is_relax')`: IS energy input,
    relaxation-energy target, element properties) on test_train's tiny topology."""
    from esnet_tf.demo import model_config
    from esnet_tf.model import ESNetConfig

    tiny = json.loads(tiny_config_file().read_text())
    full = model_config("is_relax")
    assert full["energy_inputs"] == [ENERGY] and full["target"] == "relaxation_energy" and full["element_properties"]
    cfg = ESNetConfig.from_dict({**tiny, **{k: full[k] for k in ("energy_inputs", "target", "element_properties")},
                                 "name": "tiny_is_relax"})
    path = tiny_config_file().parent / "tiny_is_relax.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def demo_argv(out) -> list[str]:
    """A tiny budget: 2 epochs of the demo's configuration on the tiny topology (each step of the demo is the
    same on any topology)."""
    return ["demo", "--out", str(out), "--epochs", "2", "--config", str(tiny_is_relax_config())]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert cli_main(demo_argv(out)) == 0
    return out


def test_every_artefact_exists_and_loads(demo_out):
    import keras
    import matplotlib.image as mpimg
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from esnet_tf.model import energy_inputs_of, load_model

    builder = tfds.builder_from_directory(str(next((demo_out / "tfds" / "is_dos" / "demo").iterdir())))
    assert set(builder.info.splits) >= {"train", "test"}
    ds = builder.as_dataset(split="test")
    ex = next(iter(ds))
    assert ex["dos_up"].shape == (1500, 9) and ex["composition"].shape == (118,)

    model = load_model(demo_out / "run" / "best.keras")
    assert isinstance(model, keras.Model) and energy_inputs_of(model) == (ENERGY,)
    sig = tf.saved_model.load(str(demo_out / "saved_models" / "esnet_demo" / "1")).signatures["serving_default"]
    assert ENERGY in sig.structured_input_signature[1]
    batch = {k: tf.expand_dims(ex[k], 0) for k in ("dos_up", "dos_down", "composition")}
    batch[ENERGY] = tf.reshape(tf.cast(ex[ENERGY], tf.float32), (1, 1))
    served = sig(**batch)["formation_energy_per_atom"].numpy()
    ours = model.predict_on_batch({k: v.numpy() for k, v in batch.items()})["formation_energy_per_atom"]
    assert np.allclose(served, ours, atol=1e-5)
    assert (demo_out / "saved_models" / "esnet_demo" / "1" / "assets.extra" / "tf_serving_warmup_requests").is_file()

    metrics = json.loads((demo_out / "eval" / "metrics.json").read_text())
    # metrics.json agrees with the predictions it was computed from
    import csv

    with open(demo_out / "eval" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    errors = [abs(float(r["predicted_formation_energy_per_atom"]) - float(r["formation_energy_per_atom"]))
              for r in rows]
    assert metrics["n"] == len(rows) > 0
    assert metrics["mae"] == pytest.approx(float(np.mean(errors)), abs=1e-5)
    screen = json.loads((demo_out / "screen" / "metrics.json").read_text())
    assert screen["n_candidates"] == metrics["n"]
    for png in ("eval/parity.png", "screen/recall_vs_cost.png", "screen/predicted_vs_true.png"):
        img = mpimg.imread(demo_out / png)
        assert img.ndim == 3 and img.shape[0] > 100
    summary = json.loads((demo_out / "summary.json").read_text())
    assert summary["test_metrics"]["mae"] == metrics["mae"]
    assert (demo_out / "run" / "history.csv").is_file() and any((demo_out / "run" / "logs").iterdir())


def test_rerun_reuses_what_is_built(demo_out, capsys):
    mtime = (demo_out / "run" / "best.keras").stat().st_mtime_ns
    assert cli_main(demo_argv(demo_out)) == 0
    out = capsys.readouterr()
    assert "reusing the trained model" in out.out
    assert (demo_out / "run" / "best.keras").stat().st_mtime_ns == mtime


def test_demo_help_says_how_to_use_own_data(capsys):
    with pytest.raises(SystemExit):
        cli_main(["demo", "--help"])
    assert "--manual-dir" in capsys.readouterr().out


def test_fresh_removes_only_the_demos_outputs_after_checking_the_arguments(tmp_path):
    """`esnet demo --fresh` (issue 36): a bad argument is refused before anything is removed; then only the
    demo's own outputs (`DEMO_OUTPUTS`) go, the user's files beside them stay. No demo run."""
    from esnet_tf.demo import DEMO_OUTPUTS, DemoConfig, remove_outputs, run_demo
    from esnet_tf.errors import UserError

    out = tmp_path / "out"
    mine = {out / "notes.txt": "mine", out / "saved_models" / "other" / "1" / "x.pb": "other model",
            out / "runs" / "keep.csv": "a,b"}
    theirs = [out / "tfds" / "is_dos" / "demo" / "1.0.0" / "dataset_info.json", out / "run" / "best.keras",
              out / "eval" / "metrics.json", out / "saved_models" / "esnet_demo" / "1" / "saved_model.pb",
              out / "screen" / "candidates.csv", out / "summary.json"]
    for path, text in [*mine.items(), *((p, "{}") for p in theirs)]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    (out / "screen").rename(out / "screen_real")
    (out / "screen").symlink_to(outside, target_is_directory=True)  # a link among the outputs: never followed

    for bad in ({"manual_dir": tmp_path / "nowhere"}, {"config": str(tmp_path / "missing.json")}):
        with pytest.raises(UserError) as err:
            run_demo(DemoConfig(out=out, fresh=True, **bad))
        assert "\n" not in str(err.value)
        assert all(p.exists() for p in [*mine, *theirs[:4], theirs[5]])  # refused before removing anything

    removed = remove_outputs(out)
    assert sorted(p.relative_to(out).as_posix() for p in removed) == sorted(DEMO_OUTPUTS)
    assert not any(p.exists() or p.is_symlink() for p in removed)
    assert all(p.read_text() == text for p, text in mine.items())
    assert (outside / "precious.txt").read_text() == "keep" and (out / "screen_real" / "candidates.csv").is_file()
    assert remove_outputs(out) == []  # nothing of the demo's left
