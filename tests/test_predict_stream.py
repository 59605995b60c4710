"""Streaming `esnet predict` (`esnet_tf.stream`): chunks give the CSV of one chunk, a killed run
resumes without predicting its rows again, and the Beam pipeline (`esnet_tf.predict_beam`) writes
the CSV of the local run.

The model is the session's tiny run (`tiny_run`) with the shipped model's domain.json beside it (so
the CSV has a domain column); the inputs are the session's demo features (`demo_data`), real demo
calculation directories and one broken vasprun.xml (a failure the CSV must not hide).
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEMO, ROOT

CALCS = sorted((DEMO / "calcs").glob("*"))[:8]
SHIPPED = ROOT / "saved_models" / "ESNet-GPAWDemo-2026.12-EFormPerAtom"
BATCH = 4


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_run) -> Path:
    d = tmp_path_factory.mktemp("model")
    shutil.copy(tiny_run["dir"] / "best.keras", d / "model.keras")
    shutil.copy(SHIPPED / "domain.json", d / "domain.json")
    return d / "model.keras"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, demo_data) -> tuple[str, ...]:
    if len(CALCS) < 8:
        pytest.skip("the demo calculations are absent")
    bad = tmp_path_factory.mktemp("bad") / "run1" / "vasprun.xml"
    bad.parent.mkdir()
    bad.write_text("<modeling><truncated")
    return (str(demo_data["npz"]), *map(str, CALCS), str(bad))


def _config(model, inputs, out, **kw):
    from esnet_tf.predict import PredictConfig

    return PredictConfig(model=str(model), inputs=tuple(inputs), out=str(out), labels=str(DEMO / "labels.csv"),
                         batch_size=BATCH, **kw)


@pytest.fixture(scope="module")
def one_chunk(tmp_path_factory, model, inputs) -> dict:
    """The run as one chunk: the reference CSV."""
    from esnet_tf.predict import predict_to_csv

    out = tmp_path_factory.mktemp("one") / "preds.csv"
    table, _, failures = predict_to_csv(_config(model, inputs, out, chunk_size=10_000))
    return {"csv": out.read_text(), "n": len(table), "failures": failures}


def test_chunks_give_the_csv_of_one_chunk(tmp_path, model, inputs, one_chunk, demo_data):
    from esnet_tf.predict import predict_to_csv

    n_npz = len(demo_data["arrays"]["id"])
    assert one_chunk["n"] == n_npz + len(CALCS)
    assert len(one_chunk["failures"]) == 1 and "run1/vasprun.xml" in one_chunk["failures"][0]
    rows = list(csv.DictReader(one_chunk["csv"].splitlines()))
    assert list(rows[0]) == ["id", "formula", "predicted_formation_energy_per_atom", "domain",
                             "formation_energy_per_atom", "e_above_hull"]
    assert [r["id"] for r in rows[:n_npz]] == list(demo_data["arrays"]["id"])  # features first, then DFT files
    out = tmp_path / "preds.csv"
    table, _, failures = predict_to_csv(_config(model, inputs, out, chunk_size=3, workers=1))  # 17 chunks, 1 worker
    assert out.read_text() == one_chunk["csv"]
    assert failures == one_chunk["failures"] and len(table) == one_chunk["n"]
    assert not (tmp_path / "preds.csv.partial").exists()


def test_killed_run_resumes_without_predicting_again(tmp_path, model, inputs, one_chunk, monkeypatch):
    """A real process killed (SIGKILL) after its third commit; the same command resumes there."""
    from esnet_tf.pretrained import ESNetModel
    from esnet_tf.predict import predict_to_csv

    out = tmp_path / "preds.csv"
    stop_at = 3 * BATCH
    script = (
        "import os, signal, sys\n"
        "from esnet_tf.predict import PredictConfig, predict_to_csv\n"
        f"cfg = PredictConfig(model={str(model)!r}, inputs={tuple(inputs)!r}, out={str(out)!r}, "
        f"labels={str(DEMO / 'labels.csv')!r}, batch_size={BATCH}, chunk_size=6)\n"
        f"predict_to_csv(cfg, after_commit=lambda n: n >= {stop_at} and os.kill(os.getpid(), signal.SIGKILL))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not out.exists()  # never a partial --out
    journal = json.loads((tmp_path / "preds.csv.partial" / "journal.json").read_text())
    assert journal["rows"] == stop_at and journal["items_done"] == stop_at

    predicted = []
    original = ESNetModel.predict_arrays

    def counting(self, arrays, **kw):
        predicted.extend(arrays["id"])
        return original(self, arrays, **kw)

    monkeypatch.setattr(ESNetModel, "predict_arrays", counting)
    table, _, failures = predict_to_csv(_config(model, inputs, out, chunk_size=6))
    assert out.read_text() == one_chunk["csv"]
    assert len(predicted) == one_chunk["n"] - stop_at  # the finished rows were not predicted again
    assert failures == one_chunk["failures"]
    assert not (tmp_path / "preds.csv.partial").exists()


def test_beam_pipeline_writes_the_local_csv(tmp_path, model, inputs):
    pytest.importorskip("apache_beam")
    from esnet_tf.predict import predict_to_csv

    dft = inputs[1:]  # the demo calculation directories and the broken file
    local, beam = tmp_path / "local.csv", tmp_path / "beam.csv"
    _, _, local_failures = predict_to_csv(_config(model, dft, local, chunk_size=3, workers=1))
    _, _, beam_failures = predict_to_csv(_config(model, dft, beam, chunk_size=3,
                                                 beam_pipeline_options="runner=DirectRunner"))
    assert beam.read_text() == local.read_text()
    assert len(local.read_text().splitlines()) == 1 + len(CALCS)
    assert beam_failures == local_failures and len(local_failures) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beam.csv", "local.csv"]  # nothing left beside


def test_a_different_command_starts_over(tmp_path, model, inputs, one_chunk, monkeypatch, capsys):
    """A partial run of another command (here another --batch-size) is not resumed: it starts over."""
    from esnet_tf.pretrained import ESNetModel
    from esnet_tf.predict import predict_to_csv

    class Stop(Exception):
        pass

    def stop(n):
        raise Stop

    out = tmp_path / "preds.csv"
    with pytest.raises(Stop):
        predict_to_csv(_config(model, inputs, out, chunk_size=6), after_commit=stop)
    assert (tmp_path / "preds.csv.partial" / "journal.json").is_file() and not out.exists()
    predicted = []
    original = ESNetModel.predict_arrays
    monkeypatch.setattr(ESNetModel, "predict_arrays",
                        lambda self, arrays, **kw: predicted.extend(arrays["id"]) or original(self, arrays, **kw))
    from esnet_tf.predict import PredictConfig

    cfg = PredictConfig(**{**_config(model, inputs, out, chunk_size=6).__dict__, "batch_size": 2 * BATCH})
    table, _, _ = predict_to_csv(cfg)
    assert "starting over" in capsys.readouterr().err
    assert len(predicted) == len(table) == one_chunk["n"]
    assert [r.split(",")[0] for r in out.read_text().splitlines()] == \
        [r.split(",")[0] for r in one_chunk["csv"].splitlines()]
