"""HTVS scale: `esnet predict` over many inputs, end to end, with the split of the time.

    .venv/bin/python benchmarks/bench_htvs.py --n 10000 --n-raw 2000 --json htvs.json

Two input kinds, each in a fresh process (peak RSS read by a small wrapper, `RUSAGE_CHILDREN`):
- npz: one featurized `.npz` of `--n` rows (the real demo examples tiled): reading the `.npz`
  (`predict.load_inputs`), inference (`Predictor.predict`, the one fast inference function of
  `esnet_tf.precision`, `--precision` auto by default), writing the CSV;
- raw: `--n-raw` files (hard links of the readable VASP fixtures `vasprun.xml.gz`, copies of the demo's
  `*.gpawdos.npz`, cycled): reading (`readers.read_dos`), featurizing (`featurize_dos`), inference;
  the featurization once serially and once over `--workers` processes (files are independent).
Plus the real command `esnet predict MODEL features.npz --out preds.csv` end to end (wall, peak RSS).

The model is the paper config with random weights (speed does not depend on the weights) saved
as `.keras`, unless `--model` names one. Prints JSON (and writes it with --json).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from esnet_tf.machine import emit_result as emit  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datasets" / "is_dos" / "demo"
FIXTURES = Path(os.environ.get("ESNET_FIXTURES", ROOT.parent / "shared" / "fixtures"))


def make_inputs(work: Path, n: int, n_raw: int) -> dict:
    """features.npz of `n` rows (demo examples tiled) and a directory of `n_raw` raw files (hard links of
    the vasprun fixtures; copies of the demo's IS `*.gpawdos.npz` with distinct ids, since ids must be unique)."""
    import dataclasses

    from esnet_tf.featurize import featurize, save_examples
    from esnet_tf.isdos import DOSInputError
    from esnet_tf.labels import read_labels

    rows = read_labels(DEMO / "labels.csv")
    base = [featurize(r.file, id=r.id) for r in rows[:100]]
    tiled = [dataclasses.replace(ex, id=f"{ex.id}#{k}") for k, ex in
             zip(range(n), itertools.cycle(base))]
    tiled = [dataclasses.replace(ex, id=f"{ex.id.split('#')[0]}#{i}") for i, ex in enumerate(tiled)]
    npz = save_examples(tiled, work / "features.npz")
    sources = []
    for p in sorted(FIXTURES.glob("vasp/*vasprun*.xml*")):
        try:
            featurize(p)
            sources.append(p)
        except (DOSInputError, Exception):  # fixtures that are meant to fail
            continue
    sources += sorted(DEMO.glob("calcs/*/is.gpawdos.npz"))[:200]
    raw = work / "raw"
    raw.mkdir(exist_ok=True)
    files = []
    for i, src in zip(range(n_raw), itertools.cycle(sources)):
        dst = raw / f"{i:06d}_{src.name}"
        if not dst.exists():
            if src.name.endswith(".gpawdos.npz"):  # the id is inside the file: a copy with its own id
                import numpy as np

                with np.load(src, allow_pickle=False) as data:
                    arrays = {k: data[k] for k in data.files}
                arrays["id"] = np.array(f"{arrays.get('id', src.parent.name)}#{i}")
                with open(dst, "wb") as fh:
                    np.savez_compressed(fh, **arrays)
            else:  # a vasprun's id is derived from its path: a hard link is a distinct input
                try:
                    os.link(src, dst)
                except OSError:
                    dst.write_bytes(src.read_bytes())
        files.append(dst)
    n_vasp = sum(1 for f in files if "vasprun" in f.name)
    return {"npz": str(npz), "raw": [str(f) for f in files], "n_vasprun": n_vasp, "n_gpaw": len(files) - n_vasp}


def _featurize_one(path: str):
    from esnet_tf.featurize import featurize_dos
    from esnet_tf.readers import read_dos

    t = time.perf_counter()
    dos = read_dos(path)
    t_read = time.perf_counter() - t
    t = time.perf_counter()
    ex = [featurize_dos(d) for d in dos]
    return ex, t_read, time.perf_counter() - t


def child_npz(model: str, npz: str, out: str, batch: int, precision: str = "auto") -> dict:
    from esnet_tf.predict import Predictor, load_inputs, write_predictions

    t0 = time.perf_counter()
    predictor = Predictor(model, precision=precision)
    t_load = time.perf_counter() - t0
    t = time.perf_counter()
    arrays, failures = load_inputs([npz])
    t_read = time.perf_counter() - t
    predictor.predict({k: arrays[k][:batch] for k in ("dos_up", "dos_down", "composition")}, batch)  # warm-up
    t = time.perf_counter()
    y = predictor.predict(arrays, batch)
    t_inf = time.perf_counter() - t
    t = time.perf_counter()
    write_predictions(out, arrays, y)
    t_write = time.perf_counter() - t
    n = len(y)
    return {"kind": "npz", "n": n, "model_load_s": t_load, "read_s": t_read, "inference_s": t_inf, "write_s": t_write,
            "inputs_per_s": n / (t_read + t_inf + t_write), "inference_per_s": n / t_inf,
            "choice": getattr(getattr(predictor, "_fast", None), "choice", None)}


def child_raw(model: str, files: list[str], workers: int, batch: int, precision: str = "auto") -> dict:
    import numpy as np

    from esnet_tf.data import stack_examples
    from esnet_tf.predict import Predictor

    predictor = Predictor(model, precision=precision)
    out: dict = {"kind": "raw", "n": len(files), "workers": workers}
    t = time.perf_counter()
    results = [_featurize_one(f) for f in files]
    out["serial_wall_s"] = time.perf_counter() - t
    out["read_s"] = sum(r[1] for r in results)
    out["featurize_s"] = sum(r[2] for r in results)
    examples = [e for r in results for e in r[0]]
    if workers > 1:  # the path `esnet predict --workers N` takes (esnet_tf.featurize.featurize_paths)
        from esnet_tf.featurize import featurize_paths

        t = time.perf_counter()
        examples, failures = featurize_paths(files, progress=False, workers=workers)
        out["parallel_wall_s"] = time.perf_counter() - t
        assert not failures, failures[:3]
    arrays = stack_examples(examples)
    predictor.predict({k: np.asarray(arrays[k][:batch]) for k in ("dos_up", "dos_down", "composition")}, batch)
    t = time.perf_counter()
    y = predictor.predict(arrays, batch)
    out["inference_s"] = time.perf_counter() - t
    best = min(out["serial_wall_s"], out.get("parallel_wall_s", float("inf")))
    out["inputs_per_s"] = len(y) / (best + out["inference_s"])
    out["featurize_files_per_s_serial"] = len(files) / out["serial_wall_s"]
    if "parallel_wall_s" in out:
        out["featurize_files_per_s_parallel"] = len(files) / out["parallel_wall_s"]
    return out


def in_fresh_process(argv: list[str]) -> dict:
    """`esnet_tf.machine.run_in_fresh_process`: the last stdout JSON line, peak RSS (MiB), wall (s)."""
    from esnet_tf.machine import run_in_fresh_process

    return run_in_fresh_process(argv, ok_codes=(0,))


def main() -> int | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", nargs="?", default="run", choices=("run", "npz", "raw"), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=10_000, help="rows of the featurized .npz [default 10000]")
    p.add_argument("--n-raw", type=int, default=2000, help="raw DFT files [default 2000]")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="featurization processes [default: cores]")
    p.add_argument("--batch-size", type=int, default=256, help="inference batch (esnet predict's default 256)")
    p.add_argument("--model", help=".keras model (default: paper config, random weights)")
    p.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="inference precision, as `esnet predict --precision` [default auto: measured]")
    p.add_argument("--work", help="working directory (default: a temporary one)")
    p.add_argument("--files", help=argparse.SUPPRESS)
    p.add_argument("--npz", help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args()
    if args.kind == "npz":
        print(json.dumps(child_npz(args.model, args.npz, str(Path(args.work) / "preds.csv"), args.batch_size,
                                    args.precision)))
        return
    if args.kind == "raw":
        files = json.loads(Path(args.files).read_text())
        print(json.dumps(child_raw(args.model, files, args.workers, args.batch_size, args.precision)))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="esnet_htvs_"))
    work.mkdir(parents=True, exist_ok=True)
    from esnet_tf.precision import cpu_model

    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(),
              "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    inputs = make_inputs(work, args.n, args.n_raw)
    result["inputs"] = {"n_npz_rows": args.n, "n_raw": len(inputs["raw"]), "n_vasprun": inputs["n_vasprun"],
                        "n_gpawdos": inputs["n_gpaw"]}
    model = args.model
    if not model:
        from esnet_tf.data import load_npz_arrays
        from esnet_tf.model import ESNetConfig, build_esnet, dos_statistics

        a = load_npz_arrays(inputs["npz"], None, require_labels=False)
        m = build_esnet(ESNetConfig.paper(), normalization=dos_statistics([{k: a[k][:500] for k in ("dos_up", "dos_down")}]))
        model = str(work / "paper_random.keras")
        m.save(model)
    common = ["--model", model, "--work", str(work), "--batch-size", str(args.batch_size), "--precision", args.precision]
    result["npz"] = in_fresh_process([sys.executable, __file__, "npz", "--npz", inputs["npz"], *common])
    print(json.dumps({"npz": result["npz"]}), file=sys.stderr, flush=True)
    files_json = work / "files.json"
    files_json.write_text(json.dumps(inputs["raw"]))
    result["raw"] = in_fresh_process([sys.executable, __file__, "raw", "--files", str(files_json),
                                      "--workers", str(args.workers), *common])
    print(json.dumps({"raw": result["raw"]}), file=sys.stderr, flush=True)
    esnet = str(Path(sys.executable).with_name("esnet"))
    result["esnet_predict_npz"] = in_fresh_process([esnet, "predict", model, inputs["npz"], "--out",
                                                    str(work / "cli_preds.csv"), "--overwrite", "--precision", args.precision])
    result["esnet_predict_npz"]["inputs_per_s"] = args.n / result["esnet_predict_npz"]["process_wall_s"]
    return emit(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
