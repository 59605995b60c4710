"""The machine a measurement ran on, and whether anything else was using its CPUs.

`machine_record` is what every benchmark JSON carries (CPU model and flags, cores, load average).
`busy_others` samples /proc for processes outside the caller's own process tree that use more than
`threshold` of a core over `interval_s`: a speed ranking taken beside them is not a ranking of this
code (benchmarks refuse to rank then). `emit_result` is how a benchmark's result leaves its process.
Linux only; elsewhere the list is empty and the record says so.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: share of one core (0-1) above which another process makes a speed measurement unreliable
BUSY_THRESHOLD = 0.15


def machine_record() -> dict[str, Any]:
    """CPU model (with family/model and bf16 flags), all CPU flags, core count and load averages (1, 5, 15 min)."""
    from esnet_tf.precision import cpu_flags, cpu_model

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu_model(), "cpu_flags": sorted(cpu_flags()), "cores": os.cpu_count(), "load_avg": load,
            "proc_available": Path("/proc/stat").is_file()}


def _cpu_ticks() -> dict[int, tuple[int, int, str]]:
    """pid -> (utime + stime clock ticks, parent pid, command name) of every process readable now."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue  # gone, or not ours to read
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(d.name)] = (int(fields[11]) + int(fields[12]), int(fields[1]), name)
    return out


def _own_tree(ticks: dict[int, tuple[int, int, str]], root: int) -> set[int]:
    """`root` and every process descended from it."""
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in ticks.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo += children.get(pid, [])
    return tree


def busy_others(interval_s: float = 1.0, threshold: float = BUSY_THRESHOLD,
                exclude_pids: Iterable[int] = ()) -> list[dict[str, Any]]:
    """Processes outside this process's tree (and `exclude_pids`) that used more than `threshold` of a core
    during the next `interval_s` seconds: [{pid, command, cpu}] (cpu in cores), busiest first."""
    if not Path("/proc/stat").is_file():
        return []
    hz = os.sysconf("SC_CLK_TCK")
    first = _cpu_ticks()
    time.sleep(interval_s)
    second = _cpu_ticks()
    mine = _own_tree(second, os.getpid()) | _own_tree(first, os.getpid()) | set(exclude_pids)
    busy = []
    for pid, (ticks, _, name) in second.items():
        if pid in mine or pid not in first:
            continue
        share = (ticks - first[pid][0]) / hz / interval_s
        if share > threshold:
            busy.append({"pid": pid, "command": name, "cpu": round(share, 2)})
    return sorted(busy, key=lambda b: -b["cpu"])


def describe_busy(busy: list[dict[str, Any]]) -> str:
    """'pid 12 python (0.98 cores), ...' for a refusal line."""
    return ", ".join(f"pid {b['pid']} {b['command']} ({b['cpu']:.2f} cores)" for b in busy)


def emit_result(result: dict, json_path: str | None, *, printed: dict | None = None) -> int:
    """A benchmark's result out of its process: add the machine's record (`machine_record`) to `result`, print
    `printed` (default: the whole `result`) as JSON and, with `json_path`, write `result` there atomically.
    Returns the exit status: 3 when `result` must not be ranked (`not_ranked_because`: another busy process
    during the measurement), after one line on stderr saying why; else 0."""
    from esnet_tf.atomic import write_text

    result.setdefault("machine", machine_record())
    text = json.dumps(result, indent=2, default=str)
    if json_path:
        write_text(json_path, text)
    print(text if printed is None else json.dumps(printed, indent=1, default=str))
    reason = result.get("not_ranked_because")
    if reason:
        print(f"{Path(sys.argv[0]).name}: not ranked: {reason}; the numbers are recorded with ranked=false"
              f"{' in ' + str(json_path) if json_path else ''}: rerun on a quiet machine (pause other jobs, or "
              "--pause-pgid for one you own)", file=sys.stderr)
        return 3
    return 0


def run_in_fresh_process(argv: list[str], ok_codes: tuple[int, ...] = (0,)) -> dict:
    """Run `argv` in a fresh process tree under a small wrapper: its last stdout JSON line (if any) plus
    `exit_code`, `peak_rss_mib` (the tree's peak RSS, RUSAGE_CHILDREN), `process_wall_s` (s) and
    `stdout_tail`; SystemExit with its stderr when the exit code is not in `ok_codes`."""
    import json
    import subprocess
    import sys

    wrapper = ("import json, resource, subprocess, sys, time; t = time.time(); "
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "print(json.dumps({'rc': p.returncode, 's': time.time() - t, 'out': p.stdout[-20000:], "
               "'err': p.stderr[-3000:], 'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    proc = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["rc"] not in ok_codes:
        raise SystemExit(f"{' '.join(argv)} failed:\n{res['err']}")
    lines = [line for line in res["out"].splitlines() if line.startswith("{")]
    body = json.loads(lines[-1]) if lines else {}
    return {**body, "exit_code": res["rc"], "peak_rss_mib": round(res["maxrss_kib"] / 1024, 1),
            "process_wall_s": round(res["s"], 1), "stdout_tail": res["out"].strip().splitlines()[-1:]}
