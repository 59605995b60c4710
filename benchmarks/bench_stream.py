"""Screening at scale: `esnet predict MODEL DIR` streaming DFT files, at several pool sizes.

    .venv/bin/python benchmarks/bench_stream.py --sizes 1000,15318,150000 --json stream.json

For each size N, a directory of N calculation files tiled from the readable VASP fixtures
(`vasprun.xml.gz`) and the demo's IS `*.gpawdos.npz`, as hard links (the id of a file in a walked
directory derives from its path, so N inputs cost directory entries, not disk), and the real command
`esnet predict MODEL DIR --out preds.csv` run in a fresh process under a small wrapper: wall time,
inputs/s end to end, peak RSS of the process tree (`RUSAGE_CHILDREN`: the largest process, model
process or featurizing worker), and the rate once running (the wall time past that of the same
command on one input: TensorFlow, the model and its tracing). Against it, the model's own inference
rate: the same model and batch on featurized inputs already in memory (`ESNetModel.predict_arrays`,
the call `esnet predict` makes), in a fresh process. The model is the paper config with random weights (speed does not
depend on the weights) unless `--model` names one. Also the CPU time per file of a streaming worker by file kind
(`featurize_cpu`; `--kinds-only` for that alone, a few seconds). Every JSON carries `machine`
(`esnet_tf.machine.machine_record`); speeds on a loaded machine are not rankings.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datasets" / "is_dos" / "demo"
FIXTURES = Path(os.environ.get("ESNET_FIXTURES", ROOT.parent / "shared" / "fixtures"))
PER_DIR = 1000  # files per sub-directory of a tiled pool


def sources() -> list[Path]:
    """The files tiled: every VASP fixture that featurizes, and the demo's IS gpawdos files."""
    from esnet_tf.featurize import featurize

    out = []
    for p in sorted(FIXTURES.glob("vasp/*vasprun*.xml*")):
        try:
            featurize(p)
        except Exception:  # fixtures meant to fail
            continue
        out.append(p)
    return out + sorted(DEMO.glob("calcs/*/is.gpawdos.npz"))


def make_pool(root: Path, n: int, files: list[Path]) -> Path:
    """`root`/pool_N: N hard links (sub-directories of PER_DIR) cycling over `files`."""
    pool = root / f"pool_{n}"
    done = pool / ".complete"
    if done.is_file():
        return pool
    for i, src in zip(range(n), itertools.cycle(files)):
        d = pool / f"{i // PER_DIR:04d}"
        d.mkdir(parents=True, exist_ok=True)
        dst = d / f"{i:06d}_{src.parent.name if src.name == 'is.gpawdos.npz' else ''}{src.name}"
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:  # another filesystem: a copy
                dst.write_bytes(src.read_bytes())
    done.write_text(str(n))
    return pool


def child_model_rate(model: str, pool: str, n: int, batch: int) -> dict:
    """The model's own rate on featurized inputs in memory: `n` rows tiled from the pool's first files."""
    import numpy as np

    from esnet_tf.predict import load_inputs, model_grid
    from esnet_tf.pretrained import load_model

    m = load_model(model)
    files = sorted(Path(pool).glob("0000/*"))[:batch]
    arrays, _ = load_inputs([str(f) for f in files], grid=model_grid(m.predictor.n_points))
    reps = -(-n // len(arrays["id"]))
    tiled = {k: np.concatenate([v] * reps)[:n] for k, v in arrays.items()}
    m.predict_arrays({k: v[:batch] for k, v in tiled.items()}, batch_size=batch)  # warm-up (trace)
    t = time.perf_counter()
    m.predict_arrays(tiled, batch_size=batch)
    s = time.perf_counter() - t
    return {"n": n, "inference_s": s, "inference_per_s": n / s}


#: the files of each kind whose featurizing CPU time `child_kind_cpu` measures (FIXTURES-relative, or DEMO)
KIND_FILES = {
    "gpawdos_npz": None,  # the demo's IS files (the first 300)
    "vasprun_small": ["vasp/Al.vasprun.xml.gz", "vasp/Fe_monomer_spin.vasprun.xml.gz", "vasp/LiF.vasprun.xml.gz",
                      "vasp/indirect.vasprun.xml.gz", "vasp/vdw.vasprun.xml.gz"],
    "vasprun_mid": ["vasp/hse06.vasprun.xml.gz", "vasp/magmom_ldau.vasprun.xml.gz", "vasp/unconverged.vasprun.xml.gz"],
    "vasprun_GaAs_32MB": ["vasp/GaAs_mp-2534.vasprun.xml.gz"],
    "doscar": ["doscar/hea_spin_polarized"],
    "mp_json": ["mp/Fe_bcc_complete_dos.json.gz", "mp/Si_complete_dos.json", "mp/Nb3Sn_complete_dos.json",
                "mp/mp-865805_Co2TaZn_complete_dos.json", "mp/LiFe4P4O16_complete_dos.json"],
}


def child_kind_cpu() -> dict:
    """CPU ms per file (process time, so a loaded machine inflates it little) of what a streaming worker
    runs (`esnet_tf.stream.featurize_part`: read, featurize, stack), by file kind, after one warm-up file of
    the kind (`first_file_cpu_ms`: that file with the imports of its reader, once per worker process)."""
    import esnet_tf.cli  # noqa: F401  (what a spawned worker imports first)
    from esnet_tf.isdos import PAPER_GRID
    from esnet_tf.stream import featurize_part

    out: dict = {}
    for kind, names in KIND_FILES.items():
        files = ([str(f) for f in sorted(DEMO.glob("calcs/*/is.gpawdos.npz"))[:300]] if names is None
                 else [str(FIXTURES / n) for n in names if (FIXTURES / n).exists()])
        if not files:
            continue
        jobs = [("dft", f, "", PAPER_GRID, None) for f in files]
        t = time.process_time()
        featurize_part(("dft", 0, 0, jobs[:1], PAPER_GRID.n_points))  # imports of the kind's reader
        first = time.process_time() - t
        reps = max(1, -(-10 // len(jobs)))
        t = time.process_time()
        for _ in range(reps):
            arrays, fails, _ = featurize_part(("dft", 0, 0, jobs, PAPER_GRID.n_points))
        per_file = (time.process_time() - t) / (reps * len(jobs))
        out[kind] = {"files": len(files), "cpu_ms_per_file": round(1e3 * per_file, 2),
                     "first_file_cpu_ms": round(1e3 * first, 1), "failed": len(fails)}
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    return out


def in_fresh_process(argv: list[str]) -> dict:
    """`esnet_tf.machine.run_in_fresh_process`: the last stdout JSON line, peak RSS (MiB), wall (s)."""
    from esnet_tf.machine import run_in_fresh_process

    return run_in_fresh_process(argv, ok_codes=(0, 1))  # 1: some input failed (listed), the CSV is written


def main() -> int | None:
    from esnet_tf.machine import emit_result

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", nargs="?", default="run", choices=("run", "model", "kinds"), help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="1000,15318,150000", help="pool sizes (inputs) [default 1000,15318,150000]")
    p.add_argument("--model", help=".keras model or shipped name (default: paper config, random weights)")
    p.add_argument("--batch-size", type=int, default=256, help="examples per model call (esnet predict's default)")
    p.add_argument("--chunk-size", type=int, default=None, help="esnet predict --chunk-size [default: its own]")
    p.add_argument("--workers", type=int, default=None, help="esnet predict --workers [default: its own]")
    p.add_argument("--model-rows", type=int, default=2048, help="rows of the model-only measurement")
    p.add_argument("--work", help="working directory kept between runs (default: a temporary one)")
    p.add_argument("--pool", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the result to this file")
    p.add_argument("--kinds-only", action="store_true",
                   help="only the featurizing CPU ms per file kind of a streaming worker (a few seconds)")
    args = p.parse_args()
    if args.kind == "model":
        print(json.dumps(child_model_rate(args.model, args.pool, args.model_rows, args.batch_size)))
        return None
    if args.kind == "kinds":
        print(json.dumps(child_kind_cpu()))
        return None
    if args.kinds_only:
        return emit_result({"date": time.strftime("%Y-%m-%d %H:%M"),
                            "command": " ".join([Path(sys.executable).name, *sys.argv]),
                            "featurize_cpu": in_fresh_process([sys.executable, __file__, "kinds"])}, args.json)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    work = Path(args.work or tempfile.mkdtemp(prefix="esnet_stream_"))
    work.mkdir(parents=True, exist_ok=True)
    files = sources()
    model = args.model
    if not model:
        model = str(work / "paper_random.keras")
        if not Path(model).is_file():
            from esnet_tf.data import stack_examples
            from esnet_tf.featurize import featurize
            from esnet_tf.model import ESNetConfig, build_esnet, dos_statistics

            a = stack_examples([featurize(f) for f in files[:200]])
            build_esnet(ESNetConfig.paper(), normalization=dos_statistics([a])).save(model)
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M"),
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "model": model if args.model else "paper config, random weights", "batch_size": args.batch_size,
                    "tiled_from": {"vasprun_fixtures": sum("vasprun" in f.name for f in files),
                                   "demo_gpawdos": sum(f.name.endswith(".gpawdos.npz") for f in files)},
                    "sizes": {}}
    esnet = str(Path(sys.executable).with_name("esnet"))
    first_pool = None
    for n in sizes:
        pool = make_pool(work, n, files)
        first_pool = first_pool or pool
        out = work / f"preds_{n}.csv"
        argv = [esnet, "predict", model, str(pool), "--out", str(out), "--overwrite",
                "--batch-size", str(args.batch_size)]
        argv += ["--chunk-size", str(args.chunk_size)] if args.chunk_size else []
        argv += ["--workers", str(args.workers)] if args.workers else []
        load_before = os.getloadavg()
        r = in_fresh_process(argv)
        r.update(command=" ".join(argv[1:]), n_inputs=n, load_avg_before=[round(x, 2) for x in load_before],
                 load_avg_after=[round(x, 2) for x in os.getloadavg()])
        with out.open() as fh:
            r["rows"] = sum(1 for _ in fh) - 1
        r["inputs_per_s"] = round(n / r["process_wall_s"], 1)
        result["sizes"][str(n)] = r
        print(json.dumps({n: r}), file=sys.stderr, flush=True)
    one = next(Path(first_pool).glob("0000/*"))  # the fixed cost: TensorFlow, the model, tracing, one input
    start = in_fresh_process([esnet, "predict", model, str(one), "--out", str(work / "preds_1.csv"), "--overwrite",
                              "--batch-size", str(args.batch_size)])
    result["startup"] = {"process_wall_s": start["process_wall_s"], "peak_rss_mib": start["peak_rss_mib"],
                         "command": f"predict MODEL {one.name} (one input)"}
    for n, r in result["sizes"].items():  # the rate once running: the wall time past the one-input run's
        r["steady_inputs_per_s"] = round(int(n) / max(1e-9, r["process_wall_s"] - start["process_wall_s"]), 1)
    rate = in_fresh_process([sys.executable, __file__, "model", "--model", model, "--pool", str(first_pool),
                             "--model-rows", str(args.model_rows), "--batch-size", str(args.batch_size)])
    result["model_only"] = rate
    result["featurize_cpu"] = in_fresh_process([sys.executable, __file__, "kinds"])
    for r in result["sizes"].values():
        r["fraction_of_model_rate"] = round(r["inputs_per_s"] / rate["inference_per_s"], 3)
        r["steady_fraction_of_model_rate"] = round(r["steady_inputs_per_s"] / rate["inference_per_s"], 3)
    return emit_result(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
