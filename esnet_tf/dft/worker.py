"""Worker process: `python -m esnet_tf.dft.worker TASK.json WORKDIR`.

Runs one task single-threaded and writes WORKDIR/result.json, or WORKDIR/failure.json
with the reason. Exit code 0 on success, 3 on a recorded failure.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when its parent dies (a killed `esnet dft run` leaves no
    orphaned GPAW process behind); exit at once if the parent is already gone."""
    import ctypes
    import os
    import signal

    parent = int(os.environ.get("ESNET_DFT_PARENT", "0") or 0)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the runner's process group still ends it
        return
    if parent and os.getppid() != parent:
        sys.exit(4)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    task_file, workdir = Path(argv[0]), Path(argv[1])
    die_with_parent()
    from esnet_tf.atomic import write_text
    from esnet_tf.dft.engine import compute
    from esnet_tf.dft.tasks import Task

    task = Task.from_dict(json.loads(task_file.read_text()))
    try:
        result = compute(task, workdir)
    except Exception as exc:  # recorded, never silent
        from esnet_tf.dft.engine import SCFNotConverged

        record = {"id": task.id, "reason": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        if isinstance(exc, SCFNotConverged):  # a later engine with more mixer settings retries it
            record["scf_attempts"] = exc.attempts
        write_text(workdir / "failure.json", json.dumps(record, indent=1))
        return 3
    import datetime

    import gpaw

    result["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result["gpaw_version"] = gpaw.__version__
    # sizes of the DOS files, checked before a cached result is reused
    result["file_sizes"] = {result[k]: (workdir / result[k]).stat().st_size
                            for k in ("is_dos", "rs_dos") if result.get(k)}
    tmp = workdir / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(workdir / "result.json")
    from esnet_tf.dft.progress import PROGRESS_FILE

    (workdir / PROGRESS_FILE).unlink(missing_ok=True)  # the result holds everything the journal did
    return 0


if __name__ == "__main__":
    sys.exit(main())
