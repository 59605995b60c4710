"""`esnet train --strategy multi-worker`: two real worker processes on 127.0.0.1 (CPU, TF_CONFIG).

Data: the real featurized demo examples of test_train.real_data(), with a labels file that keeps a
multiple of the global batch in the train split (see `_data`). Model: test_train's tiny config.
Each multi-worker launch costs ~40-60 s here (TF start, gRPC collective setup, first trace).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from conftest import FRACTIONS, _workdir, read_history, real_data, tiny_config_file

BATCH = 8  # global batch (4 per worker)
EPOCHS = 3
TIMEOUT = 300  # s, per launch


@lru_cache(maxsize=1)
def _data() -> dict:
    """features.npz + a labels CSV keeping a multiple of BATCH train examples (and all others).

    With full global batches each worker gets exactly BATCH / 2 examples per step; a ragged last
    batch would be split unevenly and Keras averages the replicas' mean losses, which weighs that
    one step slightly differently from a single process.
    """
    from esnet_tf.data import select_split

    d = real_data()
    train_ids = list(select_split(d["arrays"], "train", FRACTIONS, d["split_seed"])["id"])
    keep = len(train_ids) // BATCH * BATCH
    if keep < 2 * BATCH:
        pytest.skip(f"only {len(train_ids)} train examples in the demo data so far")
    dropped = set(train_ids[keep:])
    # the validation loss too is compared: keep full global batches there as well (or an even
    # count below one batch), so no replica averages a ragged last batch differently
    val_ids = list(select_split(d["arrays"], "validation", FRACTIONS, d["split_seed"])["id"])
    val_keep = len(val_ids) // BATCH * BATCH if len(val_ids) >= BATCH else len(val_ids) // 2 * 2
    if val_keep < 2:
        pytest.skip(f"only {len(val_ids)} validation examples in the demo data so far")
    dropped |= set(val_ids[val_keep:])
    labels = _workdir() / "dist" / "labels.csv"
    labels.parent.mkdir(parents=True, exist_ok=True)
    with open(d["labels"], newline="") as src, labels.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(r for r in reader if r["id"] not in dropped)
    return {"npz": str(d["npz"]), "labels": str(labels), "split_seed": d["split_seed"], "n_train": keep}


def _settings(epochs: int):
    from esnet_tf.train import TrainConfig

    d = _data()
    return TrainConfig(dataset=d["npz"], labels=d["labels"], config=str(tiny_config_file()), epochs=epochs,
                       batch_size=BATCH, bn_momentum=0.9, split_fractions=FRACTIONS, split_seed=d["split_seed"],
                       seed=0)


@lru_cache(maxsize=1)
def reference() -> dict:
    """The one-process run (strategy default) with the same global batch and seed."""
    from esnet_tf.train import train

    run_dir = _workdir() / "dist_reference"
    summary = train(_settings(EPOCHS), run_dir, verbose=0)
    return {"run_dir": run_dir, "summary": summary, "history": read_history(run_dir / "history.csv")}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _launch(run_dir: Path, epochs: int, *extra: str, n: int = 2) -> list[subprocess.Popen]:
    """Start n `esnet train --strategy multi-worker` processes, TF_CONFIG task i each."""
    d = _data()
    cmd = [sys.executable, "-m", "esnet_tf.cli", "train", "--dataset", d["npz"], "--labels", d["labels"],
           "--config", str(tiny_config_file()), "--epochs", str(epochs), "--batch-size", str(BATCH),
           "--bn-momentum", "0.9", "--split-fractions", ",".join(map(str, FRACTIONS)), "--split-seed",
           str(d["split_seed"]), "--seed", "0", "--run-dir", str(run_dir), "--verbose", "2",
           "--strategy", "multi-worker", *extra]
    workers = [f"127.0.0.1:{p}" for p in _free_ports(n)]
    procs = []
    for i in range(n):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[tuple[int, str]]:
    out = []
    try:
        for p in procs:
            text = p.communicate(timeout=timeout)[0]
            out.append((p.returncode, text))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def _predict(model_path: Path) -> np.ndarray:
    from esnet_tf.data import load_arrays
    from esnet_tf.model import OUTPUT_NAME, load_model

    arrays = load_arrays(_data()["npz"], labels=_data()["labels"])
    model = load_model(model_path)
    out = model.predict({k: arrays[k] for k in ("dos_up", "dos_down", "composition")}, verbose=0)
    return np.asarray(out[OUTPUT_NAME] if isinstance(out, dict) else out)


# ---------------------------------------------------------------- pure functions

def test_even_ranges_cover_every_example_once():
    from esnet_tf.distribute import even_ranges

    for n, parts in [(29, 2), (24, 2), (10, 3), (2, 4), (0, 2)]:
        ranges = even_ranges(n, parts)
        seen = [i for lo, hi in ranges for i in range(lo, hi)]
        assert seen == list(range(n))
        sizes = [hi - lo for lo, hi in ranges]
        assert max(sizes) - min(sizes) <= 1


def test_chief_from_tf_config(monkeypatch):
    from esnet_tf.errors import UserError
    from esnet_tf.distribute import env_is_chief

    cluster = {"worker": ["a:1", "b:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not env_is_chief("multi-worker") and env_is_chief("mirrored")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert env_is_chief("multi-worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {**cluster, "chief": ["c:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert not env_is_chief("multi-worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserError, match="TF_CONFIG"):
        env_is_chief("multi-worker")


# ---------------------------------------------------------------- two workers

def test_two_workers_equal_one_process(tmp_path):
    """Two workers, global batch 8 (4 each), same seed: the same run as one process.

    Why equal: every worker builds the same seeded, shuffled, globally batched pipeline and keeps
    its half of each global batch (auto-shard by data), gradients are all-reduced (sum of the two
    halves' mean losses / 2 = the global mean), and BatchNormalization is synchronised, so each
    step sees the statistics of the whole global batch. Why not bit-identical: float32 sums are
    taken in another order (two partial sums all-reduced; oneDNN kernels on half batches), ~1e-7
    relative per step, which Adam carries forward. Tolerances (below) are per
    epoch: epoch 0 to float32 order, later epochs looser, measured on test_train.ROW_IDS.
    """
    ref = reference()
    run_dir = tmp_path / "mw"
    results = _finish(_launch(run_dir, EPOCHS))
    for i, (code, text) in enumerate(results):
        assert code == 0, f"worker {i} failed:\n{text[-3000:]}"
    chief_out, worker_out = results[0][1], results[1][1]
    # each epoch has n_train / BATCH steps: global batches of BATCH, not one BATCH per worker
    steps = _data()["n_train"] // BATCH
    assert len(re.findall(rf"^{steps}/{steps} - ", chief_out, flags=re.M)) == EPOCHS, chief_out[-2000:]

    # only the chief wrote the run directory; the other worker's temporary directory is gone
    temp = re.search(r"writing to the temporary (\S+) ", worker_out)
    assert temp, worker_out[-2000:]
    assert not Path(temp.group(1)).exists()
    assert "writing to the temporary" not in chief_out
    names = {p.name for p in run_dir.iterdir()}
    assert names == {"config.json", "history.csv", "logs", "best.keras", "summary.json", "warmup_examples.npz"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["workers"], summary["replicas"], summary["chief"]) == (2, 2, True)
    assert summary["train_samples_per_s"] > 0

    hist = read_history(run_dir / "history.csv")
    assert [int(h["epoch"]) for h in hist] == list(range(EPOCHS))
    # Epoch 0 is the structural check: same batches, halves all-reduced, synchronised BN, so it
    # agrees to float32 summation order (measured 6e-7 relative on test_train.ROW_IDS).
    # Later epochs drift as Adam amplifies that noise (its update is ~lr * sign(g) for small g):
    # measured 1.8e-3 and 5.6e-3 relative in the loss at epochs 1 and 2, 1.7e-2 in val_loss at epoch 2.
    for mine, theirs in zip(hist, ref["history"]):
        first = int(mine["epoch"]) == 0
        for key in ("loss", "mae"):
            assert math.isclose(mine[key], theirs[key], rel_tol=1e-5 if first else 1e-2, abs_tol=2e-6), \
                (key, mine, theirs)
        # validation runs on BatchNorm moving statistics, which the synchronised BN accumulates from
        # cross-replica reductions summed in another order (1e-4 relative at epoch 0)
        for key in ("val_loss", "val_mae"):
            assert math.isclose(mine[key], theirs[key], rel_tol=1e-3 if first else 3e-2, abs_tol=2e-6), \
                (key, mine, theirs)
    assert summary["best_epoch"] == ref["summary"]["best_epoch"]
    ref_pred = _predict(ref["run_dir"] / "best.keras")
    diff = np.abs(_predict(run_dir / "best.keras") - ref_pred)
    # predictions of the epoch-2 best models carry the same drift (measured 0.017 eV/atom at most)
    assert diff.max() < 3e-2, (diff.max(), np.abs(ref_pred).max())


def test_killed_worker_restarts_from_last_backup(tmp_path):
    """SIGKILL worker 1 after a backed-up epoch: the chief's collectives fail (it exits with a
    one-line message); both restarted with --resume continue from the last backup and finish.
    3 epochs: the kill comes after the backup of epoch 1, so 1-2 epochs are left to resume
    (each multi-worker epoch takes seconds here, far more than the 0.05 s poll)."""
    epochs = EPOCHS
    run_dir = tmp_path / "mw_kill"
    procs = _launch(run_dir, epochs)
    meta = run_dir / "backup" / "training_metadata.json"
    deadline = time.time() + TIMEOUT
    try:
        while time.time() < deadline and procs[0].poll() is None:
            if meta.is_file() and json.loads(meta.read_text() or "{}").get("epoch", 0) >= 1:
                break
            time.sleep(0.05)
        assert procs[0].poll() is None and procs[1].poll() is None, \
            f"training ended before it could be killed:\n{procs[0].communicate()[0][-2000:]}"
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
        chief_code, chief_out = procs[0].wait(timeout=120), procs[0].communicate()[0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert chief_code != 0 and not (run_dir / "summary.json").exists()
    assert "a worker of the cluster failed" in chief_out, chief_out[-2000:]
    backed_up = json.loads(meta.read_text())["epoch"]
    assert 1 <= backed_up < epochs

    results = _finish(_launch(run_dir, epochs, "--resume"))
    for i, (code, text) in enumerate(results):
        assert code == 0, f"worker {i} failed after restart:\n{text[-3000:]}"
        assert f"resuming from epoch {backed_up} " in text
    hist = read_history(run_dir / "history.csv")
    assert [int(h["epoch"]) for h in hist] == list(range(epochs))
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == epochs
    assert not (run_dir / "backup").exists()
    # the epochs done before the kill are kept and are those of the one-process run
    for mine, theirs in list(zip(hist, reference()["history"]))[:backed_up]:
        assert math.isclose(mine["loss"], theirs["loss"], rel_tol=1e-3, abs_tol=2e-6), (mine, theirs)


def test_tfds_workers_read_disjoint_subsplits_covering_the_split(tmp_path):
    """TFDS input of multi-worker runs: each worker's sub-split, together exactly the split."""
    import tensorflow as tf

    from esnet_tf.data import iterate_numpy, load_split
    from esnet_tf.dataset import build_dataset
    from esnet_tf.distribute import even_ranges, tfds_worker_pipeline, worker_split

    dummy = Path(__file__).resolve().parents[1] / "datasets" / "is_dos" / "dummy_data"
    builder = build_dataset("is_dos/manual", tmp_path, dummy, verbose=False)
    spec = str(builder.data_dir)
    split, n = max(((k, v.num_examples) for k, v in builder.info.splits.items()), key=lambda kv: kv[1])
    assert n >= 2
    whole = [i for b in iterate_numpy(load_split(spec, split)) for i in b["id"]]
    for workers in (2, 3):
        parts = [[i for b in iterate_numpy(load_split(spec, worker_split(split, n, workers, w))) for i in b["id"]]
                 for w in range(workers)]
        assert sorted(sum(parts, [])) == sorted(whole) and len(sum(parts, [])) == n
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # the per-worker pipeline batches per replica: global batch 4 over 2 replicas -> 2
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0, num_replicas_in_sync=2)
    ds = tfds_worker_pipeline(ctx, spec, split, n, 4, shuffle=True, seed=0, cache="none", shuffle_buffer=8,
                              split_options={})
    inputs, targets = next(iter(ds))
    assert inputs["dos_up"].shape[1:] == (1500, 9) and inputs["dos_up"].shape[0] <= 2
    lo, hi = even_ranges(n, 2)[0]
    assert sum(int(t["formation_energy_per_atom"].shape[0]) for _, t in ds) == hi - lo


def test_mirrored_on_cpu_equals_default(tmp_path):
    """`--strategy mirrored` without GPUs: one CPU replica, the same run as the default strategy
    (same kernels on the same batches; tolerance 1e-4 relative for float noise)."""
    from esnet_tf.train import train

    ref = reference()
    summary = train(_settings(EPOCHS).replace(strategy="mirrored"), tmp_path / "mirrored", verbose=0)
    assert (summary["strategy"], summary["replicas"], summary["workers"]) == ("mirrored", 1, 1)
    for mine, theirs in zip(read_history(tmp_path / "mirrored" / "history.csv"), ref["history"]):
        assert math.isclose(mine["loss"], theirs["loss"], rel_tol=1e-4, abs_tol=1e-7), (mine, theirs)


def test_batches_that_would_leave_a_replica_empty_are_refused():
    """Keras cannot run a step where a replica has no example (checked for real: 25 examples,
    batch 8, 2 workers crashed in the stem convolution); such batch sizes are refused up front."""
    from esnet_tf.errors import UserError
    from esnet_tf.distribute import _empty_replica_step, check_batches

    # global batches split over all replicas (in-memory data): the last batch holds n % B
    assert not _empty_replica_step(24, 8, 2, 2, False) and not _empty_replica_step(27, 8, 2, 2, False)
    assert _empty_replica_step(25, 8, 2, 2, False) and _empty_replica_step(1, 8, 2, 2, False)
    # per-worker TFDS sub-splits: 17 -> 9 + 8 examples, batch 4 per replica -> 3 vs 2 steps
    assert _empty_replica_step(17, 8, 2, 2, True) and not _empty_replica_step(18, 8, 2, 2, True)

    class TwoWorkers:
        num_replicas_in_sync = 2

        class extended:
            _num_workers = 2

    with pytest.raises(UserError, match=r"train 25 examples.*--batch-size 7$"):
        check_batches({"train": 25, "validation": 2}, 8, TwoWorkers(), False)
    check_batches({"train": 24, "validation": 2}, 8, TwoWorkers(), False)
