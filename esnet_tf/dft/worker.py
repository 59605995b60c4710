"""Worker process: `python -m esnet_tf.dft.worker TASK.json WORKDIR`.

Runs one task single-threaded and writes WORKDIR/result.json, or WORKDIR/failure.json
with the reason. Exit code 0 on success, 3 on a recorded failure.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    task_file, workdir = Path(argv[0]), Path(argv[1])
    from esnet_tf.dft.engine import compute
    from esnet_tf.dft.tasks import Task

    task = Task.from_dict(json.loads(task_file.read_text()))
    try:
        result = compute(task, workdir)
    except Exception as exc:  # recorded, never silent
        (workdir / "failure.json").write_text(json.dumps({
            "id": task.id, "reason": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc()}, indent=1))
        return 3
    import datetime

    import gpaw

    result["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result["gpaw_version"] = gpaw.__version__
    tmp = workdir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(workdir / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
