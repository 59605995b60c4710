"""The worker gate: a running DFT job's worker count can be lowered through calcs/WORKERS."""
import threading
import time

from esnet_tf.dft.runner import WORKERS_FILE, WorkerGate


def test_gate_limit_follows_the_workers_file(tmp_path):
    gate = WorkerGate(tmp_path, workers=2, poll_s=0.01)
    assert gate.limit() == 2
    (tmp_path / WORKERS_FILE).write_text("1\n")
    assert gate.limit() == 1
    (tmp_path / WORKERS_FILE).write_text("5")
    assert gate.limit() == 2  # never above what the job was started with
    (tmp_path / WORKERS_FILE).write_text("not a number")
    assert gate.limit() == 2


def test_gate_holds_tasks_back_while_lowered(tmp_path):
    (tmp_path / WORKERS_FILE).write_text("1")
    gate = WorkerGate(tmp_path, workers=2, poll_s=0.01)
    peak, lock = [0], threading.Lock()

    def task():
        with gate:
            with lock:
                peak[0] = max(peak[0], gate.active)
            time.sleep(0.05)

    threads = [threading.Thread(target=task) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1
    assert gate.active == 0


def test_optimizer_settings_are_in_the_cache_key_once_changed(monkeypatch):
    """Changing `tasks.OPTIMIZER` recomputes optimizer relaxations (and nothing else); the first
    settings keep the keys of the results computed before the key had them (the demo data's)."""
    import dataclasses

    from esnet_tf.dft import tasks
    from esnet_tf.dft.prototypes import prototype_structure
    from esnet_tf.dft.settings import DFTSettings

    st = DFTSettings()
    opt = tasks.Task(id="Mg_fcc_opt", structure=prototype_structure("fcc", ["Mg"]), settings=st, relax="optimizer")
    eos = tasks.Task(id="Mg_fcc", structure=prototype_structure("fcc", ["Mg"]), settings=st, relax="eos")
    before = tasks.task_hash(opt), tasks.task_hash(eos)
    assert tasks.OPTIMIZER == tasks.FIRST_OPTIMIZER
    monkeypatch.setattr(tasks, "OPTIMIZER", dataclasses.replace(tasks.OPTIMIZER, fmax=0.05))
    assert tasks.task_hash(opt) != before[0]
    assert tasks.task_hash(eos) == before[1]


def test_scf_failures_recorded_with_fewer_mixer_settings_are_computed_again(tmp_path):
    """A cached SCF failure from an engine with fewer SCF_ATTEMPTS is retried; other failures stay failed."""
    import json

    from esnet_tf.dft.engine import SCF_ATTEMPTS
    from esnet_tf.dft.prototypes import prototype_structure
    from esnet_tf.dft.runner import cached_outcome, scf_attempts_tried
    from esnet_tf.dft.settings import DFTSettings
    from esnet_tf.dft.tasks import Task, task_hash

    task = Task("Cu_fcc", prototype_structure("fcc", ["Cu"], 3.63), DFTSettings.tiny())
    workdir = tmp_path / task_hash(task)
    workdir.mkdir()
    records = {
        "before the fallback": ({"id": task.id, "reason": "DFTError: task Cu_fcc: SCF failed at lattice scale "
                                                          "1.0000: KohnShamConvergenceError: "}, None),
        "all settings tried": ({"id": task.id, "reason": "SCFNotConverged: ...", "scf_attempts": len(SCF_ATTEMPTS)},
                               "failed"),
        "a timeout": ({"id": task.id, "reason": "timeout after 1800 s"}, "failed"),
    }
    for name, (record, status) in records.items():
        (workdir / "failure.json").write_text(json.dumps(record))
        out = cached_outcome(task, tmp_path)
        assert (out.status if out is not None else None) == status, name
    assert scf_attempts_tried(records["before the fallback"][0]) == 1
    assert scf_attempts_tried(records["a timeout"][0]) is None
    # an optimizer relaxation has one setting more (the restart from the scan's moment)
    relax = Task("Cu_fcc", prototype_structure("fcc", ["Cu"], 3.63), DFTSettings.tiny(), relax="optimizer")
    (tmp_path / task_hash(relax)).mkdir()
    for tried, status in ((len(SCF_ATTEMPTS), None), (len(SCF_ATTEMPTS) + 1, "failed")):
        (tmp_path / task_hash(relax) / "failure.json").write_text(
            json.dumps({"id": relax.id, "reason": "SCFNotConverged: ...", "scf_attempts": tried}))
        out = cached_outcome(relax, tmp_path)
        assert (out.status if out is not None else None) == status, tried
