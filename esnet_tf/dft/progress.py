"""The progress journal of a task (`progress.json` in its work directory).

A relaxation is many SCFs: the IS single point, the EOS points, the BFGS steps. A task that is
killed, or that hits its time limit, keeps the SCFs it finished here. The next run of the same
task continues from them instead of starting over. A spin-polarised 6-atom rutile takes about
7 minutes per SCF and hours in all. Only finished points are kept: the SCF in flight is lost.

The journal is tied to the task's cache key (`tasks.task_hash`) and to PROGRESS_VERSION; a
journal of anything else is ignored and replaced. Each write goes to a temporary file that is
renamed into place, so a kill leaves the previous journal whole.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from esnet_tf.atomic import write_text
from esnet_tf.dft.tasks import Task, task_hash

PROGRESS_FILE = "progress.json"
#: bumped when what the journal holds changes meaning (then old journals are ignored)
PROGRESS_VERSION = 1


class Progress:
    """Finished parts of one task: `get(key)`, `put(key, value)` (JSON values), and the wall and
    CPU seconds that earlier runs of the task spent (`spent_before`)."""

    def __init__(self, task: Task, workdir: Path) -> None:
        self.path = Path(workdir) / PROGRESS_FILE
        self.key = task_hash(task)
        try:
            saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            saved = {}
        if saved.get("task_hash") != self.key or saved.get("version") != PROGRESS_VERSION or not saved.get("parts"):
            saved = {}  # none, truncated, or another task's: start afresh
        self.data: dict[str, Any] = saved.get("parts", {})
        self.runs = int(saved.get("runs", 0)) + 1
        self.spent_before = {"wall": 0.0, "cpu": 0.0, **{k: float(v) for k, v in saved.get("spent_s", {}).items()}}
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    @property
    def resumed(self) -> bool:
        """Whether an earlier run of this task left finished parts."""
        return bool(self.data)

    def spent(self) -> dict[str, float]:
        """Wall and CPU seconds of all runs of the task so far (this one included)."""
        return {"wall": self.spent_before["wall"] + time.perf_counter() - self._t0,
                "cpu": self.spent_before["cpu"] + time.process_time() - self._c0}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        write_text(self.path, json.dumps({"task_hash": self.key, "version": PROGRESS_VERSION, "runs": self.runs,
                                          "spent_s": self.spent(), "parts": self.data}))
