"""Parallel, resumable execution of DFT tasks: one single-threaded process per structure.

Results are cached in `cache_dir/<task_hash>/` (result.json + DOS files); a rerun skips
tasks whose result exists. Failures and timeouts are written to `failure.json` and
reported, and are retried only when asked. A relaxation that was killed or timed out continues
from the SCFs its progress journal (`progress.json`, see progress.py) kept.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from esnet_tf.atomic import write_text
from esnet_tf.dft.engine import GPAW_DOS_SUFFIX, scf_attempts_available
from esnet_tf.dft.progress import PROGRESS_FILE
from esnet_tf.dft.tasks import RELAX_START_IS, Task, task_hash, with_relax_start
from esnet_tf.threads import SINGLE_THREAD_ENV

WORKERS_FILE = "WORKERS"  # in the cache directory: an integer that lowers the worker count of a running job


class WorkerGate:
    """At most `workers` tasks at a time, fewer while `cache_dir/WORKERS` holds a smaller number.

    The file is read before each task starts, so `echo 1 > calcs/WORKERS` frees a core for a test
    run without stopping the job (running tasks finish; 0 starts nothing new); remove it to go back.
    """

    def __init__(self, cache_dir: Path, workers: int, poll_s: float = 10.0):
        import threading

        self.path = Path(cache_dir) / WORKERS_FILE
        self.workers = max(1, workers)
        self.poll_s = poll_s
        self.active = 0
        self._cond = threading.Condition()

    def limit(self) -> int:
        """The current worker limit: the file's number clipped to [0, workers], else `workers`."""
        try:
            return min(self.workers, max(0, int(self.path.read_text().strip())))
        except (OSError, ValueError):
            return self.workers

    def __enter__(self):
        with self._cond:
            while self.active >= self.limit():
                self._cond.wait(self.poll_s)
            self.active += 1
        return self

    def __exit__(self, *exc):
        with self._cond:
            self.active -= 1
            self._cond.notify_all()


@dataclass
class Outcome:
    """What happened to one task: status is 'done', 'cached' or 'failed'."""

    task_id: str
    key: str
    status: str
    workdir: Path
    result: dict | None = None
    reason: str = ""


def cache_problem(workdir: Path) -> str:
    """Why the cached result in `workdir` cannot be trusted ('' when it can): result.json must
    parse, and its DOS files must exist, be complete zip archives and have the recorded sizes
    (or, for a cache being compacted by `compact_cache`, the sizes recorded before)."""
    import zipfile

    try:
        result = json.loads((workdir / "result.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"result.json unreadable ({type(exc).__name__})"
    sizes = result.get("file_sizes") or {}
    sizes_before = result.get("file_sizes_before_compaction") or {}
    for key in ("is_dos", "rs_dos"):
        name = result.get(key)
        if not name:
            continue
        f = workdir / name
        if not f.is_file():
            return f"{name} missing"
        if name in sizes and f.stat().st_size not in (sizes[name], sizes_before.get(name)):
            return f"{name} has {f.stat().st_size} bytes, {sizes[name]} were written"
        try:
            with zipfile.ZipFile(f) as z:
                if z.testzip() is not None:
                    return f"{name} fails its CRC check"
        except (zipfile.BadZipFile, OSError):
            return f"{name} is truncated or corrupt"
    return ""


def _read_cached(task: Task, workdir: Path, retry_failed: bool) -> Outcome | None:
    key = workdir.name
    if (workdir / "result.json").exists():
        problem = cache_problem(workdir)
        if problem:
            tqdm.write(f"cache {workdir}: {problem}; recomputing {task.id}")
            return None
        return Outcome(task.id, key, "cached", workdir, json.loads((workdir / "result.json").read_text()))
    if (workdir / "failure.json").exists() and not retry_failed:
        try:
            record = json.loads((workdir / "failure.json").read_text())
            reason = record["reason"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            return None  # a truncated record: compute again
        tried = scf_attempts_tried(record)
        available = scf_attempts_available(task)
        if tried is not None and tried < available:
            tqdm.write(f"{task.id}: its SCF failure was recorded after {tried} SCF setting(s); the engine now "
                       f"has {available}: computing it again")
            return None
        return Outcome(task.id, key, "failed", workdir, reason=f"(cached) {reason}")
    return None


def scf_attempts_tried(failure: dict) -> int | None:
    """How many SCF settings (`engine.scf_attempts_available`) a recorded SCF failure tried; None if the
    failure is not an SCF non-convergence. Records from before the fallback (no `scf_attempts`
    key, GPAW's KohnShamConvergenceError in the reason) tried one."""
    if "scf_attempts" in failure:
        return int(failure["scf_attempts"])
    return 1 if "KohnShamConvergenceError" in str(failure.get("reason", "")) else None


@dataclass
class CompactionReport:
    """What `compact_cache` did: DOS files rewritten, already compact or kept full (non-uniform
    energy axis), and untrusted cache entries left alone; sizes in bytes."""

    n_rewritten: int = 0
    n_already_compact: int = 0
    n_kept_full: int = 0
    n_untrusted: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


def compact_cache(cache_dir: Path, progress: bool = True) -> CompactionReport:
    """Rewrite the full-layout DOS files of a DFT cache in the compact layout (the same numbers;
    `readers.gpaw`), about 40 % smaller, and record the new sizes in each result.json.

    Holds the cache's lock, so it is refused while a job runs on the cache. Entries that fail
    `cache_problem` are left alone and counted. Safe to kill: result.json records the new sizes
    (keeping the old ones) before each file is replaced, and `cache_problem` accepts both.
    """
    from esnet_tf.atomic import exclusive
    from esnet_tf.readers.gpaw import compact_gpaw_dos, has_full_layout

    cache_dir = Path(cache_dir)
    report = CompactionReport()
    with exclusive(cache_dir, "DFT cache"):
        workdirs = sorted(d for d in cache_dir.iterdir() if (d / "result.json").is_file())
        for workdir in tqdm(workdirs, desc="compact", unit="calc", disable=not progress):
            if cache_problem(workdir):
                report.n_untrusted += 1
                continue
            result = json.loads((workdir / "result.json").read_text())
            for key in ("is_dos", "rs_dos"):
                name = result.get(key)
                if not name:
                    continue
                f = workdir / name
                if not has_full_layout(f):
                    report.n_already_compact += 1
                    continue
                size = f.stat().st_size
                tmp = workdir / f".{name}.compact.tmp.npz"
                try:
                    shutil.copyfile(f, tmp)
                    if not compact_gpaw_dos(tmp):
                        report.n_kept_full += 1  # a non-uniform energy axis
                        continue
                    new_size = tmp.stat().st_size
                    result.setdefault("file_sizes_before_compaction", {})[name] = size
                    result.setdefault("file_sizes", {})[name] = new_size
                    write_text(workdir / "result.json", json.dumps(result, indent=1))
                    os.replace(tmp, f)
                finally:
                    tmp.unlink(missing_ok=True)
                report.n_rewritten += 1
                report.bytes_before += size
                report.bytes_after += new_size
    return report


AUTOGROUP_SWITCH = Path("/proc/sys/kernel/sched_autogroup_enabled")


def lower_session_priority(nice: int) -> str | None:
    """Make `nice` count against other sessions too; returns a warning when it cannot.

    With Linux autogroup scheduling on (the default of most distributions), the CPU is shared
    fairly between *sessions* (terminals, `setsid`/`nohup` jobs) and a process's nice value only
    counts inside its own session: `nice -n 19` GPAW workers still take a full share from a
    training run started in another terminal (measured: 26 instead of 50 samples/s;
    benchmarks/README.md, "per-process levels"). So a job that is the leader of its own session
    (`setsid esnet dft ...`) sets its session's autogroup nice value as well.
    """
    if nice <= 0 or not AUTOGROUP_SWITCH.is_file() or AUTOGROUP_SWITCH.read_text().strip() != "1":
        return None
    if os.getsid(0) != os.getpid():
        return (f"--nice {nice} lowers the GPAW processes only against this session's other programs: "
                "Linux autogroup scheduling shares the CPU between sessions regardless of nice; "
                "start the job in its own session (setsid esnet dft ...) to lower it against everything")
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError as exc:
        return f"--nice {nice}: could not set this session's autogroup priority ({exc})"
    return None


def cached_outcome(task: Task, cache_dir: Path, also_starts: tuple[str, ...] = ()) -> Outcome | None:
    """The cached outcome of `task` (done or failed), or None when it was never computed.

    `also_starts`: for an optimizer task without a result of its own, also accept a finished result of
    the same task relaxed from one of these starts (`Task.relax_start`, e.g. ("chgnet-0.3.0",)); such an
    outcome's key is that task's and `relax_start_of(outcome.result)` names its start. Without them a
    result is only ever found under its own start.
    """
    own = _read_cached(task, Path(cache_dir) / task_hash(task), retry_failed=False)
    if own is not None and (own.status != "failed" or task.relax != "optimizer"):
        return own
    for start in also_starts:
        other = with_relax_start(task, start)
        if other.relax_start == task.relax_start:
            continue
        found = _read_cached(other, Path(cache_dir) / task_hash(other), retry_failed=False)
        if found is not None and found.status != "failed":
            return found
    return own


def relax_start_of(result: dict) -> str:
    """Where the relaxation of a finished result started: "is" (the unrelaxed structure; also every
    result from before `relax_start` was recorded), or the universal potential's "<model>-<weights>";
    "" for a result without an optimizer relaxation."""
    if result.get("relax_kind") != "optimizer":
        return ""
    return str(result.get("relax_start", RELAX_START_IS))


def relax_start_provenance(outcomes: list[Outcome]) -> dict:
    """provenance.json's `relax_start`: the start of every finished optimizer relaxation (id -> "is" or
    "chgnet-<weights>") and how many of each, with the universal potential's steps and CPU seconds."""
    per_row = {o.task_id: relax_start_of(o.result) for o in outcomes if o.result is not None
               and relax_start_of(o.result)}
    counts: dict[str, int] = {}
    for start in per_row.values():
        counts[start] = counts.get(start, 0) + 1
    uip = {o.task_id: {k: o.result["uip_start"].get(k) for k in ("steps", "converged", "cpu_time_s", "package_version",
                                                                  "scale")}
           for o in outcomes if o.result is not None and o.result.get("uip_start")}
    return {"rule": "optimizer relaxations start from the IS ('is') or from a universal potential's relaxation "
                    "of it ('<model>-<weights>', esnet dft --relax-start uip); the IS single point and IS-DOS are "
                    "of the unrelaxed structure and the label is the DFT relaxation's either way",
            "counts": dict(sorted(counts.items())), "per_row": dict(sorted(per_row.items())), "uip_start": uip}


def run_task(task: Task, cache_dir: Path, retry_failed: bool = False, nice: int = 0) -> Outcome:
    """Run one task in its own process (or return the cached outcome). Never raises on DFT failure."""
    key = task_hash(task)
    workdir = Path(cache_dir) / key
    cached = _read_cached(task, workdir, retry_failed)
    if cached is not None:
        return cached
    if workdir.exists():  # partial output of an interrupted run: all but what it can continue from
        keep = {PROGRESS_FILE, "is" + GPAW_DOS_SUFFIX} if (workdir / PROGRESS_FILE).is_file() else set()
        for f in workdir.iterdir():
            if f.name not in keep:
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    write_text(workdir / "task.json", json.dumps(task.to_dict()))
    cmd = [sys.executable, "-m", "esnet_tf.dft.worker", str(workdir / "task.json"), str(workdir)]
    if nice:
        cmd = ["nice", "-n", str(nice)] + cmd
    env = {**os.environ, **SINGLE_THREAD_ENV, "ESNET_DFT_PARENT": str(os.getpid())}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=task.timeout)
    except subprocess.TimeoutExpired:
        reason = f"timeout after {task.timeout:.0f} s"
        write_text(workdir / "failure.json", json.dumps({"id": task.id, "reason": reason}))
        return Outcome(task.id, key, "failed", workdir, reason=reason)
    if (workdir / "result.json").exists():
        return Outcome(task.id, key, "done", workdir, json.loads((workdir / "result.json").read_text()))
    if (workdir / "failure.json").exists():
        reason = json.loads((workdir / "failure.json").read_text())["reason"]
    else:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        reason = f"worker exited with code {proc.returncode}: {' | '.join(tail)}"
        write_text(workdir / "failure.json", json.dumps({"id": task.id, "reason": reason}))
    return Outcome(task.id, key, "failed", workdir, reason=reason)


def run_tasks(tasks: list[Task], cache_dir: Path, workers: int = 2, retry_failed: bool = False,
              nice: int = 0, progress: bool = True,
              on_result: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Run tasks with `workers` parallel single-threaded processes; progress bar with ETA.

    Returns one Outcome per task, in the order of `tasks`.
    """
    from esnet_tf.atomic import exclusive

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(cache_dir, "DFT cache"):  # a second run on the same directories is refused
        warning = lower_session_priority(nice)
        if warning and progress:
            print(f"warning: {warning}", file=sys.stderr)
        return _run_tasks(tasks, cache_dir, workers, retry_failed, nice, progress, on_result)


def _run_tasks(tasks: list[Task], cache_dir: Path, workers: int, retry_failed: bool, nice: int, progress: bool,
               on_result) -> list[Outcome]:
    keys = [task_hash(t) for t in tasks]
    if len(set(keys)) != len(keys):
        dup = [t.id for t, k in zip(tasks, keys) if keys.count(k) > 1]
        raise ValueError(f"tasks with identical structure and settings: {dup[:5]}")
    outcomes: dict[str, Outcome] = {}
    todo = []
    for t in tasks:  # cached results first, so that the bar's rate and ETA are of real work
        cached = _read_cached(t, cache_dir / task_hash(t), retry_failed)
        if cached is None:
            todo.append(t)
        else:
            outcomes[t.id] = cached
            if on_result is not None:
                on_result(cached)
    if progress and outcomes:
        print(f"{len(outcomes)} of {len(tasks)} structures already in {cache_dir}")
    bar = tqdm(total=len(todo), desc="DFT", unit="structure", disable=not progress)
    n_failed = sum(o.status == "failed" for o in outcomes.values())
    gate = WorkerGate(cache_dir, workers)

    def gated(task: Task) -> Outcome:
        with gate:
            return run_task(task, cache_dir, retry_failed, nice)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(gated, t): t for t in todo}
        for fut in as_completed(futures):
            out = fut.result()
            outcomes[out.task_id] = out
            if out.status == "failed":
                n_failed += 1
                tqdm.write(f"FAILED {out.task_id}: {out.reason}")
            if on_result is not None:
                on_result(out)
            bar.set_postfix(failed=n_failed, refresh=False)
            bar.update(1)
    bar.close()
    return [outcomes[t.id] for t in tasks]
