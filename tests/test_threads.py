"""The one thread environment of child processes (esnet_tf/threads.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from esnet_tf.threads import SINGLE_THREAD_ENV, THREAD_VARIABLES, inherited_thread_env, thread_env


def test_child_processes_get_the_thread_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    show = [sys.executable, "-c", "import os; print(*(os.environ.get(k) for k in "
            + repr(THREAD_VARIABLES) + "))"]
    out = subprocess.run(show, env=thread_env(3), capture_output=True, text=True, check=True).stdout.split()
    assert out == ["3", "3", "3"]
    with inherited_thread_env(1):  # what a spawned pool inherits
        assert subprocess.run(show, capture_output=True, text=True, check=True).stdout.split() == ["1", "1", "1"]
    assert os.environ["OMP_NUM_THREADS"] == "8" and "MKL_NUM_THREADS" not in os.environ  # restored
    assert dict(SINGLE_THREAD_ENV) == {k: "1" for k in THREAD_VARIABLES}
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        thread_env(0)


def test_every_child_process_launcher_uses_the_one_definition():
    """No module but esnet_tf/threads.py spells out the thread variables' values."""
    from pathlib import Path

    import esnet_tf

    root = Path(esnet_tf.__file__).parent
    own = [str(p.relative_to(root)) for p in root.rglob("*.py")
           if p.name != "threads.py" and any(f'"{k}": "1"' in p.read_text() or f"{k}=" in p.read_text()
                                             for k in THREAD_VARIABLES)]
    assert own == []
