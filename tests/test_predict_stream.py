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


def test_parts_on_two_workers_give_the_csv_of_one_chunk(tmp_path, model, inputs, one_chunk):
    """Chunks of 7 on 2 workers: each chunk in parts of 4 and 3 (batches split across parts are joined,
    a failure inside a part), the same CSV as one chunk; and the predictions those of the non-streaming
    path (`load_inputs` + `predict_arrays` on everything at once)."""
    import numpy as np

    from esnet_tf.predict import load_inputs, model_grid, predict_to_csv
    from esnet_tf.pretrained import load_model

    out = tmp_path / "preds.csv"
    table, _, failures = predict_to_csv(_config(model, inputs, out, chunk_size=7, workers=2))
    assert out.read_text() == one_chunk["csv"]
    assert failures == one_chunk["failures"] and len(table) == one_chunk["n"]
    m = load_model(str(model))
    arrays, _ = load_inputs(list(inputs), str(DEMO / "labels.csv"), model_grid(m.predictor.n_points), workers=1)
    want = m.predict_arrays(arrays, batch_size=BATCH).columns
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert [r["id"] for r in rows] == list(want["id"])
    assert [r["predicted_formation_energy_per_atom"] for r in rows] == \
        [f"{v:.6f}" for v in np.asarray(want["predicted_formation_energy_per_atom"])]


def test_colliding_ids_are_renamed_or_refused_as_the_whole_file_path_does(tmp_path, model, fixtures_dir):
    """Copies of real files whose ids collide: path-derived ids (run1/vasprun twice, Si_complete_dos twice)
    re-derived from the files' common folder, document ids of an MP file given twice refused after the
    first; streamed in chunks of 2 on 2 workers, the CSV's ids and the failures are those of the
    non-streaming reader (`load_inputs`: `featurize_paths` + `unique_ids`)."""
    from esnet_tf.predict import PredictConfig, load_inputs, model_grid, predict_to_csv
    from esnet_tf.pretrained import load_model

    paths = []
    for folder, src in (("a/run1/vasprun.xml.gz", "vasp/Al.vasprun.xml.gz"),
                        ("b/run1/vasprun.xml.gz", "vasp/Al.vasprun.xml.gz"),
                        ("x/Si_complete_dos.json", "mp/Si_complete_dos.json"),
                        ("y/Si_complete_dos.json", "mp/Si_complete_dos.json"),
                        ("p/two.json.gz", "mp/mp-823888_WO2_mp-1686587_Si_complete_dos.json.gz"),
                        ("q/two.json.gz", "mp/mp-823888_WO2_mp-1686587_Si_complete_dos.json.gz")):
        dst = tmp_path / "in" / folder
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(fixtures_dir / src, dst)
        paths.append(str(dst))
    want, want_failures = load_inputs(paths, None, model_grid(load_model(str(model)).predictor.n_points), workers=1)
    out = tmp_path / "preds.csv"
    table, _, failures = predict_to_csv(PredictConfig(model=str(model), inputs=tuple(paths), out=str(out),
                                                      batch_size=BATCH, chunk_size=2, workers=2))
    ids = [r["id"] for r in csv.DictReader(out.read_text().splitlines())]
    assert ids == list(want["id"]) and len(ids) == 6  # 2 + 2 renamed, the 2 documents of the first MP copy
    assert {"a/run1/vasprun", "b/run1/vasprun", "x/Si_complete_dos", "y/Si_complete_dos"} <= set(ids)
    assert sorted(failures) == sorted(want_failures) and len(failures) == 2
    assert all("duplicate example id" in f and "q/two.json.gz" in f for f in failures)


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


# ---------------------------------------------------------------- the worker path (fast: no model)

def _dft_paths(fixtures: Path, bad_dir: Path) -> list[str]:
    """Real files of every kind: VASP (spin and not), MP (one and two documents), a DOSCAR directory,
    the demo's GPAW files, and a broken vasprun.xml."""
    bad = bad_dir / "run9" / "vasprun.xml"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("<modeling><truncated")
    return [str(fixtures / "vasp" / "Al.vasprun.xml.gz"), str(fixtures / "vasp" / "Fe_monomer_spin.vasprun.xml.gz"),
            str(bad), str(fixtures / "mp" / "Si_complete_dos.json"),
            str(fixtures / "mp" / "mp-823888_WO2_mp-1686587_Si_complete_dos.json.gz"),
            str(fixtures / "doscar" / "hea_spin_polarized"), *(str(c / "is.gpawdos.npz") for c in CALCS[:3])]


def test_worker_parts_give_the_arrays_of_the_whole_file_path(tmp_path, fixtures_dir):
    """`featurize_part` (what the workers run: featurize and stack a part of a chunk) against the
    non-streaming reader `predict.load_inputs` (`featurize_paths` + `stack_examples`) on real files of
    every kind: the same arrays bit for bit, in the same order, and the same failure lines."""
    import numpy as np

    from esnet_tf.isdos import PAPER_GRID
    from esnet_tf.predict import load_inputs
    from esnet_tf.stream import (ROW_KEYS, _init_worker, _joined_parts, chunk_jobs, featurize_part, plan_inputs,
                                 segment_truths)

    paths = _dft_paths(fixtures_dir, tmp_path)
    labels = str(DEMO / "labels.csv")
    want, want_failures = load_inputs(paths, labels, PAPER_GRID, workers=1)
    plan = plan_inputs(paths, labels, PAPER_GRID)
    (seg,) = plan.segments
    jobs = chunk_jobs(plan, seg, 0, seg.n)
    _init_worker({0: segment_truths(plan, seg)})
    try:
        results = [featurize_part(("dft", 0, a, jobs[a:b], PAPER_GRID.n_points)) for a, b in ((0, 4), (4, len(jobs)))]
    finally:
        _init_worker({})
    parts, fails = _joined_parts(results)
    assert all(set(p) == set(ROW_KEYS) for p in parts)
    got = {k: np.concatenate([p[k] for p in parts]) for k in ROW_KEYS}
    assert len(got["id"]) == len(want["id"]) == len(paths) - 1 + 1  # one broken file, one MP file of two DOS
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert np.array_equal(got[key], value, equal_nan=value.dtype.kind == "f"), key
    assert [line for _, line in fails] == want_failures and [item for item, _ in fails] == [2]
    assert got["item"].tolist() == [0, 1, 3, 4, 4, 5, 6, 7, 8]
    assert all(got["source"][i] for i in range(len(got["id"])))


def test_worker_process_does_not_import_tensorflow(tmp_path, fixtures_dir):
    """A spawned worker imports the main module of `esnet` (esnet_tf.cli) and esnet_tf.stream, then reads
    files of every kind: TensorFlow (hundreds of MB in each worker) must never load there."""
    from esnet_tf.isdos import PAPER_GRID

    paths = _dft_paths(fixtures_dir, tmp_path)
    script = (
        "import json, sys\n"
        "import esnet_tf.cli\n"
        "from esnet_tf.isdos import PAPER_GRID\n"
        "from esnet_tf.stream import featurize_part\n"
        f"jobs = [('dft', p, '', PAPER_GRID, None) for p in {paths!r}]\n"
        f"arrays, fails, fatal = featurize_part(('dft', 0, 0, jobs, {PAPER_GRID.n_points}))\n"
        "loaded = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "print(json.dumps([len(arrays['id']), len(fails), loaded]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [len(paths), 1, []]


def _numpy_header(fh) -> tuple:
    import numpy as np

    version = np.lib.format.read_magic(fh)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
    return read(fh)


def test_npy_headers_and_small_members_read_as_numpy_reads_them(tmp_path):
    """`readers.limits.read_npy_header` (one regex match for the header numpy writes) and `load_npz`'s
    one-call inflate of small members give numpy's shapes, orders, dtypes and values, and numpy's /
    zipfile's errors on broken headers and members."""
    import io
    import zipfile

    import numpy as np

    from esnet_tf.errors import DOSInputError
    from esnet_tf.readers.limits import load_npz, read_npy_header

    arrays = {"f4": np.arange(12, dtype="<f4").reshape(3, 4), "f8_big": np.arange(5, dtype=">f8"),
              "fortran": np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
              "scalar": np.float64(2.5), "empty": np.zeros((0, 3), np.int16), "u1": np.arange(7, dtype=np.uint8),
              "bool": np.array([True, False]), "str": np.array(["ab", "cde"]), "bytes": np.bytes_(b"{}" * 9),
              "complex": np.ones(3, np.complex64), "record": np.zeros(2, [("a", "<i4"), ("b", "<f8")]),
              "time": np.array(["2026-12-07"], dtype="datetime64[D]"),
              "large": np.ones((2, 200_000), np.float32)}  # past the one-call size: read through zipfile
    for name, a in arrays.items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asanyarray(a), version=(2, 0) if name == "u1" else None)
        raw = buf.getvalue()
        ref = io.BytesIO(raw)
        want = _numpy_header(ref)
        fh = io.BytesIO(raw)
        assert read_npy_header(fh) == want and fh.tell() == ref.tell(), name
        for cut in (3, 9, 20, ref.tell() - 1):  # cut short: numpy's error
            with pytest.raises(ValueError) as ours:
                read_npy_header(io.BytesIO(raw[:cut]))
            with pytest.raises(ValueError) as numpys:
                _numpy_header(io.BytesIO(raw[:cut]))
            assert str(ours.value) == str(numpys.value), (name, cut)
    for text in (b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), \n",  # numpy's own errors
                 b"{'descr': '<f4', 'shape': (3,), }\n", b"{'descr': '<f4', 'fortran_order': 0, 'shape': (3,), }\n",
                 b"{'descr': 'x9', 'fortran_order': False, 'shape': (3,), }\n"):
        raw = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text
        with pytest.raises(Exception) as ours:
            read_npy_header(io.BytesIO(raw))
        with pytest.raises(Exception) as numpys:
            _numpy_header(io.BytesIO(raw))
        assert type(ours.value) is type(numpys.value) and str(ours.value) == str(numpys.value), text
    with pytest.raises(ValueError, match=r"member 'x': \.npy format \(3, 0\) is not read here"):
        read_npy_header(io.BytesIO(b"\x93NUMPY\x03\x00" + b"\0" * 8), "x")

    plain = {k: v for k, v in arrays.items() if k not in ("record", "time")}
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **plain)
        got = load_npz(path, list(plain))
        with np.load(path, allow_pickle=False) as want:
            for k in plain:
                assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
                assert np.array_equal(got[k], want[k]) and got[k].flags.writeable, k
                assert got[k].flags.f_contiguous == want[k].flags.f_contiguous, k
        # a member whose bytes are damaged: zipfile's error (bad CRC, or a broken deflate stream)
        data = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("f4.npy")
        data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size - 3] ^= 0xFF
        broken = tmp_path / f"broken_{path.name}"
        broken.write_bytes(bytes(data))
        with pytest.raises(DOSInputError, match="Bad CRC-32|Error -3|invalid" if save is np.savez_compressed
                           else "Bad CRC-32"):
            load_npz(broken, ["f4"])
