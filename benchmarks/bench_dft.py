"""Speed of one GPAW single point of the demo plan, and where its time goes (FFTW, BLAS, the rest).

    python benchmarks/bench_dft.py [--ids YPd_zincblende__strain_c,...] [--repeat 2]
        [--env LD_LIBRARY_PATH=/opt/fftw/lib] [--label avx512-fftw] [--out benchmarks/results/dft_speed.json]

Each repeat runs `python -m esnet_tf.dft.worker` on the task in a fresh temporary directory under
cProfile (so `--env` reaches the worker exactly as it reaches the workers of `esnet dft`), and
reports the worker's CPU time (s), the CPU-time share of FFTW (`_gpaw.FFTWExecute`) and of dense
matrix products (`_gpaw.mmm`, `_gpaw.r2k`: BLAS), and which libfftw3 / libopenblas the process
loaded. In GPAW's plane-wave mode FFTW takes about half of a single point, so the FFTW build
matters: Debian 12's libfftw3 has SSE2 and AVX codelets only (see docs/performance.md).
Pause other CPU work while measuring (the background DFT job: SIGSTOP / SIGCONT its group).
"""
from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IDS = ("YPd_zincblende__strain_c", "ScPd_rocksalt__iso_b")
FFT_FUNCS = ("FFTWExecute",)
BLAS_FUNCS = ("mmm", "r2k", "rk")


def _task_file(task_id: str, directory: Path) -> Path:
    from esnet_tf.dft.demo import demo_tasks

    by_id = {t.id: t for t in demo_tasks()}
    if task_id not in by_id:
        raise SystemExit(f"bench_dft: {task_id!r} is not a demo task id (see labels_augmented.csv); pick another --ids")
    path = directory / "task.json"
    path.write_text(json.dumps(by_id[task_id].to_dict()))
    return path


def _shares(profile: Path) -> dict:
    stats = pstats.Stats(str(profile)).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    total = sum(v[2] for v in stats.values())
    fft = sum(v[2] for (_, _, n), v in stats.items() if n in {f"<built-in method _gpaw.{x}>" for x in FFT_FUNCS})
    blas = sum(v[2] for (_, _, n), v in stats.items() if n in {f"<built-in method _gpaw.{x}>" for x in BLAS_FUNCS})
    return {"profiled_s": round(total, 2), "fftw_share": round(fft / total, 3), "blas_share": round(blas / total, 3)}


def _libraries(pid_maps: str) -> list[str]:
    return sorted({line.split()[-1] for line in pid_maps.splitlines()
                   if ("libfftw3" in line or "libopenblas" in line) and line.split()[-1].startswith("/")})


def _scf_iterations(out: Path) -> int:
    return sum(line.startswith("|iter:") for p in out.glob("*.txt") for line in p.read_text().splitlines())


def run_once(task_id: str, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="esnet_bench_dft_") as tmp:
        tmp = Path(tmp)
        task = _task_file(task_id, tmp)
        prof = tmp / "profile"
        # the worker prints its loaded libraries at exit through this tiny wrapper
        code = ("import atexit, cProfile, runpy, sys\n"
                "atexit.register(lambda: open(sys.argv[3], 'w').write(open('/proc/self/maps').read()))\n"
                "sys.argv = ['esnet_tf.dft.worker', sys.argv[1], sys.argv[2], sys.argv[3]]\n"
                f"cProfile.run(\"runpy.run_module('esnet_tf.dft.worker', run_name='__main__')\", {str(prof)!r})\n")
        maps = tmp / "maps"
        t = time.time()
        proc = subprocess.run([sys.executable, "-c", code, str(task), str(tmp / "out"), str(maps)],
                              env=env, capture_output=True, text=True)
        wall = time.time() - t
        result = tmp / "out" / "result.json"
        if not result.is_file():
            raise SystemExit(f"bench_dft: {task_id} produced no result (exit {proc.returncode}): "
                             f"{proc.stderr.strip().splitlines()[-1:]}")
        r = json.loads(result.read_text())
        return {"id": task_id, "cpu_time_s": round(r.get("cpu_time", float("nan")), 2),
                "wall_time_s": round(r.get("wall_time", wall), 2), "n_scf_iterations": _scf_iterations(tmp / "out"),
                **(_shares(prof) if prof.is_file() else {}),
                "libraries": _libraries(maps.read_text()) if maps.is_file() else []}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ids", default=",".join(DEFAULT_IDS), help="comma-separated demo task ids")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment of the worker")
    ap.add_argument("--label", default="default", help="name of this configuration in the output")
    ap.add_argument("--out", default=None, help="JSON file to add this run to (written atomically)")
    args = ap.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    for item in args.env:
        if "=" not in item:
            raise SystemExit(f"bench_dft: --env {item!r} is not NAME=VALUE")
        k, v = item.split("=", 1)
        env[k] = v
    from esnet_tf.machine import machine_record
    from esnet_tf.precision import cpu_model

    runs = [run_once(i, env) for i in args.ids.split(",") for _ in range(args.repeat)]
    record = {"label": args.label, "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(),
              "machine": machine_record(), "env": args.env,
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "runs": runs}
    print(json.dumps(record, indent=1))
    if args.out:
        from esnet_tf.atomic import write_text

        out = Path(args.out)
        old = json.loads(out.read_text()) if out.is_file() else []
        write_text(out, json.dumps(old + [record], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
