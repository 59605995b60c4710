"""esnet_tf.machine: the machine record every benchmark JSON carries, and the busy-process check that
makes a speed benchmark refuse to rank (benchmarks/report.py `emit`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esnet_tf import machine

ROOT = Path(__file__).resolve().parents[1]
#: one line of Python that keeps a core busy for at most 60 s
BUSY_LOOP = "import time; t = time.time(); any(iter(lambda: time.time() - t > 60, True))"

pytestmark = pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc")


def test_machine_record_names_the_cpu_and_its_flags():
    rec = machine.machine_record()
    assert rec["cpu"] and rec["cores"] == os.cpu_count() and rec["proc_available"]
    assert "sse2" in rec["cpu_flags"] or not rec["cpu_flags"]  # x86: always there; elsewhere: the file's own
    assert len(rec["load_avg"]) == 3


def test_a_busy_process_outside_the_run_is_found_and_the_runs_own_children_are_not():
    outsider = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], start_new_session=True)  # not ours to time
    try:
        busy = machine.busy_others(1.0, threshold=0.1, exclude_pids=())
        assert outsider.pid not in {b["pid"] for b in busy}  # a child of this process: its own tree
        assert outsider.pid not in {b["pid"] for b in machine.busy_others(0.5, exclude_pids=[outsider.pid])}
    finally:
        outsider.kill()
        outsider.wait()
    # started by another process (a shell that exits at once): outside this process's tree
    pid = int(subprocess.run(["sh", "-c", f'{sys.executable} -c "{BUSY_LOOP}" > /dev/null 2>&1 & echo $!'],
                             capture_output=True, text=True).stdout)
    try:
        busy = machine.busy_others(1.0, threshold=0.1)
        mine = [b for b in busy if b["pid"] == pid]
        assert mine and mine[0]["cpu"] > 0.1 and "python" in mine[0]["command"]
        assert f"pid {pid} " in machine.describe_busy(mine)
    finally:
        os.kill(pid, 9)


def test_emit_adds_the_machine_and_refuses_to_rank_a_loaded_run(tmp_path, capsys):
    """Every benchmark JSON gets `machine`; a result with `not_ranked_because` is still written (ranked false)
    and the benchmark's exit status is 3, with one line saying why."""
    out = tmp_path / "r.json"
    assert machine.emit_result({"ranked": False, "not_ranked_because": "pid 1 x (1.00 cores)"}, str(out)) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not ranked: pid 1 x (1.00 cores)" in err[0] and str(out) in err[0]
    saved = json.loads(out.read_text())
    assert saved["ranked"] is False and saved["machine"]["cpu"]
    ok = tmp_path / "ok.json"
    assert machine.emit_result({"ranked": True}, str(ok)) == 0
    assert json.loads(ok.read_text())["machine"]["cores"] == os.cpu_count() and not capsys.readouterr().err
