"""DFT time saved by starting optimizer relaxations from CHGNet's geometry (`esnet dft run --relax-start uip`).

    python benchmarks/relax_start.py                                   # Li, Cu, Al hcp (demo) and Ru hcp (pool)
    python benchmarks/relax_start.py --ids Be_hcp --work /tmp/rs_be    # another row (its own scratch folder)
    python benchmarks/relax_start.py --no-control                      # only the CHGNet starts, no IS-start rerun

For each id (a row of the demo's or the pool's labels.csv relaxed with the optimizer), the committed
calculation's structure is written to WORK/structures/ID.json, its settings are checked to be the ones
`esnet dft run` builds from `--ecut` / `--kpt-density` (the IS-start cache key must equal the committed
folder's name), and

    nice -n NICE python -m esnet_tf.cli dft run WORK/structures/*.json --out WORK/uip --relax optimizer \
        --relax-start uip --workers 1 --ecut E --kpt-density K

is run (cached: a rerun of this script computes nothing new). Unless `--no-control`, the same command
without `--relax-start` reruns the IS start into WORK/is on this machine: the committed runs were timed
on another machine and under another load, so only the control's CPU times compare like with like.

Per structure the JSON holds, for the committed run, the control and the CHGNet start: BFGS steps,
EOS scan points, Pulay stages, relaxation CPU and wall time (s; for the CHGNet start with and without
the potential's own time), the relaxed energy (eV/atom) and volume (Å^3/atom); CHGNet's steps and CPU
time (relaxation alone, and with importing torch and loading the weights); and the differences against
the committed and the control run. Energies must agree within the optimizer's Pulay drift tolerance
(`tasks.OPTIMIZER.pulay_drift_tol`, eV/atom): `within_tolerance` says whether they do. The engine
records no SCF iteration counts (gpaw.txt keeps only the last calculator's log), so SCF cost is given
as CPU time (also in units of the run's own IS single point, `dft_relax_cpu_in_is_points`, which cancels
machine speed and load to first order) and as the number of SCF solutions of the relaxation
(`scf_solutions`: scan points, the stress at the vertex, BFGS steps, two per Pulay stage, the final
single point).

The survey (no DFT; `--no-survey` skips it) relaxes the IS of every optimizer row of the demo and the
pool with CHGNet (the `--relax-start uip` settings) and compares the start's lattice scale with DFT's
relaxed one, s = (V / V_IS)^(1/3): how far each start is from the DFT volume, and how many rows start
more than half an EOS step away (the engine's scan from 0.96, 1, 1.04 then needs extra points).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = (ROOT / "datasets" / "is_dos" / "demo", ROOT / "datasets" / "is_dos" / "pool")
DEFAULT_IDS = ("Li_hcp", "Cu_hcp", "Al_hcp", "Ru_hcp")
RESULTS = ROOT / "benchmarks" / "results" / "relax_start"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from esnet_tf.atomic import OVERWRITE_HELP

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ids", default=",".join(DEFAULT_IDS),
                    help="comma-separated ids of optimizer-relaxed rows of the demo's or the pool's labels.csv")
    ap.add_argument("--work", default="/tmp/relax_start",
                    help="scratch folder outside the repository (structures/, uip/, is/)")
    ap.add_argument("--nice", type=int, default=15, help="niceness of `esnet dft run` (one GPAW process at a time)")
    ap.add_argument("--no-control", action="store_true", help="skip the IS-start rerun on this machine")
    ap.add_argument("--no-survey", action="store_true",
                    help="skip the CHGNet-only survey of every optimizer row's start scale (no DFT, ~2 min)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="wall-time limit per structure, s")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/relax_start/"
                    "relax_start_<cpu>_<date>.json)")
    ap.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.format("the JSON file"))
    return ap.parse_args(argv)


def cpu_label() -> str:
    """Short CPU name for file names (xeon_amx, xeon, epyc, cpu), as in the other benchmarks/results files."""
    from esnet_tf.machine import machine_record

    rec = machine_record()
    cpu, flags = rec["cpu"].lower(), set(rec.get("cpu_flags", []))
    if "xeon" in cpu:
        return "xeon_amx" if "amx_tile" in flags else "xeon"
    if "epyc" in cpu:
        return "epyc"
    return "cpu"


def lscpu_model_name() -> str:
    """`lscpu`'s "Model name" ("" without lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")


def committed_calc(task_id: str) -> Path:
    """The calcs/<hash> folder of `task_id`'s row in the demo's or the pool's labels.csv (optimizer only)."""
    from esnet_tf.errors import UserError

    for ds in DATASETS:
        with open(ds / "labels.csv", newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row["id"] != task_id:
                    continue
                if row.get("relax_kind") != "optimizer":
                    raise UserError(f"--ids {task_id}: relaxed by {row.get('relax_kind')!r} in {ds / 'labels.csv'}, "
                                    "not the optimizer; pick an optimizer row (relax_kind optimizer)")
                return ds / Path(row["path"]).parent
    raise UserError(f"--ids {task_id}: no row in {' or '.join(str(d / 'labels.csv') for d in DATASETS)}; "
                    "pick an id of an optimizer-relaxed row")


def prepare(task_id: str, work: Path) -> tuple[Path, dict, tuple[float, float]]:
    """Write WORK/structures/ID.json; (that file, the committed result.json, (ecut, kpt_density))."""
    from esnet_tf.dft.settings import DFTSettings
    from esnet_tf.dft.structures import read_structures
    from esnet_tf.dft.tasks import Task, task_hash
    from esnet_tf.errors import UserError

    calc = committed_calc(task_id)
    task = json.loads((calc / "task.json").read_text(encoding="utf-8"))
    st = DFTSettings.from_dict(task["settings"])
    cli = DFTSettings(ecut=st.ecut, kpt_density=st.kpt_density)  # what `esnet dft run --ecut --kpt-density` builds
    if cli.key() != st.key():
        raise UserError(f"--ids {task_id}: {calc / 'task.json'} has settings that `esnet dft run` cannot give by "
                        "--ecut / --kpt-density; pick another id")
    path = work / "structures" / f"{task_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(task["structure"]), encoding="utf-8")
    ((_, structure, _),) = read_structures(path)
    if task_hash(Task(task_id, structure, cli, relax="optimizer")) != calc.name:
        raise UserError(f"--ids {task_id}: the rerun's IS-start cache key differs from {calc.name} (another "
                        "optimizer revision?); its settings would not be the committed run's")
    result = json.loads((calc / "result.json").read_text(encoding="utf-8"))
    result["_calc"] = str(calc.relative_to(ROOT))
    return path, result, (st.ecut, st.kpt_density)


def run_cli(files: list[Path], out: Path, settings: tuple[float, float], uip: bool, args: argparse.Namespace) -> str:
    """`esnet dft run` the structures into `out` under `nice`; returns the command line. Exits on failure."""
    cmd = ["nice", "-n", str(args.nice), sys.executable, "-m", "esnet_tf.cli", "dft", "run", *map(str, files),
           "--out", str(out), "--relax", "optimizer", "--workers", "1", "--timeout", str(args.timeout),
           "--ecut", str(settings[0]), "--kpt-density", str(settings[1])]
    if uip:
        cmd[cmd.index("--workers"):cmd.index("--workers")] = ["--relax-start", "uip"]
    print("+ " + " ".join(cmd), file=sys.stderr)
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    # exit code 1 also means "labels.csv not assembled" (no elemental references of a compound): results still count
    if rc not in (0, 1):
        raise SystemExit(f"relax_start.py: `esnet dft run` exited with {rc}; see its output above")
    return " ".join(cmd).replace(sys.executable, "python")


def cached_result(structure_file: Path, out: Path, settings: tuple[float, float], relax_start: str) -> dict:
    """result.json of the task `esnet dft run` made of `structure_file` in `out` (SystemExit if missing)."""
    from esnet_tf.dft.settings import DFTSettings
    from esnet_tf.dft.structures import read_structures
    from esnet_tf.dft.tasks import Task, task_hash

    ((tid, structure, _),) = read_structures(structure_file)
    task = Task(tid, structure, DFTSettings(ecut=settings[0], kpt_density=settings[1]), relax="optimizer",
                relax_start=relax_start)
    path = out / "calcs" / task_hash(task) / "result.json"
    if not path.is_file():
        raise SystemExit(f"relax_start.py: {tid}: no {path} (failed? see {out / 'failures.csv'})")
    return json.loads(path.read_text(encoding="utf-8"))


def summarize(r: dict) -> dict:
    """The cost and outcome of one optimizer relaxation's result.json (energies eV/atom, volumes Å^3/atom, s)."""
    from pymatgen.core import Structure

    n = r["n_atoms"]
    rs = Structure.from_dict(r["rs_structure"])
    uip = r.get("uip_start") or {}
    uip_cpu = float(uip.get("total_cpu_time_s", 0.0))
    uip_wall = float(uip.get("total_wall_time_s", 0.0))
    out = {
        "relax_start": r.get("relax_start", "is"), "finished_utc": r.get("finished_utc"),
        "relax_converged": r.get("relax_converged"), "bfgs_steps": r["relax_steps"],
        "eos_points": len(r["eos_points"]), "pulay_stages": len(r["pulay_corrections_eV_per_A3"]) - 1,
        "is_cpu_time_s": _round(r.get("is_cpu_time")),
        "relax_cpu_time_s": _round(r.get("relax_cpu_time")), "relax_wall_time_s": _round(r["relax_wall_time"]),
        "rs_energy_per_atom": r["rs_energy"] / n, "rs_volume_per_atom": rs.volume / n, "rs_scale": r["rs_scale"],
        "rs_c_over_a": rs.lattice.c / rs.lattice.a,
    }
    # SCF solutions of the relaxation (`engine.relax_optimizer`): the scan's points (the IS start reuses the IS
    # single point as its first), the stress at the vertex, one per BFGS step, two finite-difference points
    # per Pulay stage, the final single point with DOS
    out["scf_solutions"] = (out["eos_points"] - (0 if uip else 1) + 1 + out["bfgs_steps"] + 2 * out["pulay_stages"]
                            + 1)
    if "_calc" in r:
        out["calc"] = r["_calc"]
    if r.get("is_cpu_time") and r.get("relax_cpu_time") is not None:
        # in units of the IS single point's CPU time (the same computation in every run): machine speed and
        # load cancel to first order, so runs on other machines compare
        out["dft_relax_cpu_in_is_points"] = round((r["relax_cpu_time"] - uip_cpu) / r["is_cpu_time"], 2)
    if uip:  # the DFT part alone: the relaxation's time minus the potential's (with torch import and weights)
        out["dft_relax_cpu_time_s"] = _round(r["relax_cpu_time"] - uip_cpu)
        out["dft_relax_wall_time_s"] = _round(r["relax_wall_time"] - uip_wall)
        out["uip"] = {"model": uip.get("relax_start"), "package_version": uip.get("package_version"),
                      "steps": uip.get("steps"), "converged": uip.get("converged"),
                      "cpu_time_s": _round(uip.get("cpu_time_s")), "total_cpu_time_s": _round(uip_cpu),
                      "total_wall_time_s": _round(uip_wall), "scale_vs_is": uip.get("scale"),
                      "energy_per_atom": uip.get("energy_per_atom")}
    return out


def compare(uip: dict, ref: dict, tol: float) -> dict:
    """CHGNet start minus `ref` (an IS-start summary): energy (meV/atom), volume (relative), CPU time (s)."""
    de = uip["rs_energy_per_atom"] - ref["rs_energy_per_atom"]
    out = {"d_energy_meV_per_atom": round(1000 * de, 3), "within_tolerance": abs(de) <= tol,
           "d_volume_rel": round(uip["rs_volume_per_atom"] / ref["rs_volume_per_atom"] - 1, 5),
           "d_bfgs_steps": uip["bfgs_steps"] - ref["bfgs_steps"], "d_eos_points": uip["eos_points"] - ref["eos_points"]}
    if ref.get("relax_cpu_time_s") is not None:
        out["dft_cpu_saved_s"] = _round(ref["relax_cpu_time_s"] - uip["dft_relax_cpu_time_s"])
        out["cpu_saved_with_uip_s"] = _round(ref["relax_cpu_time_s"] - uip["relax_cpu_time_s"])
        out["dft_cpu_ratio"] = round(uip["dft_relax_cpu_time_s"] / ref["relax_cpu_time_s"], 3)
    u_is, r_is = uip.get("dft_relax_cpu_in_is_points"), ref.get("dft_relax_cpu_in_is_points")
    if u_is and r_is:
        out["dft_cpu_ratio_in_is_points"] = round(u_is / r_is, 3)
    return out


def survey(eos_step: float) -> dict:
    """CHGNet's relaxation of every optimizer row's IS (demo and pool) against DFT's: lattice scales
    s = (V / V_IS)^(1/3) of the start (IS: 1; CHGNet) and of DFT's relaxed structure (`rs_scale`)."""
    import numpy as np
    from pymatgen.core import Structure

    from esnet_tf.dft.tasks import relax_start_config, uip_relax_start
    from esnet_tf.uip import relax_structures

    rows = []
    for ds in DATASETS:
        with open(ds / "labels.csv", newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("relax_kind") == "optimizer":
                    task = json.loads((ds / Path(row["path"]).parent / "task.json").read_text(encoding="utf-8"))
                    rows.append((row["id"], ds.name, Structure.from_dict(task["structure"]), float(row["rs_scale"])))
    res = relax_structures([(i, s) for i, _, s, _ in rows], relax_start_config(uip_relax_start()), progress=False)
    per_row, err_is, err_uip = {}, [], []
    for (tid, ds, s, dft), r in zip(rows, res):
        if r.error or r.structure is None:
            per_row[tid] = {"dataset": ds, "error": r.error}
            continue
        uip = float((Structure.from_dict(r.structure).volume / s.volume) ** (1 / 3))
        per_row[tid] = {"dataset": ds, "dft_scale": round(dft, 4), "uip_scale": round(uip, 4),
                        "uip_cpu_time_s": _round(r.cpu_time_s, 3)}
        err_is.append(abs(np.log(dft)))
        err_uip.append(abs(np.log(dft / uip)))

    def stats(e: list) -> dict:
        e = np.asarray(e)
        return {"median_abs_ln_scale": round(float(np.median(e)), 4),
                "p90_abs_ln_scale": round(float(np.quantile(e, 0.9)), 4),
                "n_more_than_half_eos_step": int((e > np.log(1 + eos_step / 2)).sum())}

    return {"description": "CHGNet (the --relax-start uip settings) on the IS of every optimizer row of the demo "
                           "and the pool, no DFT: lattice scale of the start against DFT's relaxed structure; a start "
                           "more than half an EOS step from it needs extra scan points",
            "eos_step": eos_step, "n": len(err_is), "n_failed": len(per_row) - len(err_is),
            "is_start": stats(err_is), "uip_start": stats(err_uip), "per_row": per_row}


def _round(x, nd: int = 2):
    return None if x is None else round(float(x), nd)


def run(args: argparse.Namespace) -> dict:
    """Check the inputs, run the CHGNet starts (and the IS-start control), write and return the record."""
    from esnet_tf.atomic import refuse_existing, write_text
    from esnet_tf.dft.tasks import OPTIMIZER, uip_relax_start
    from esnet_tf.errors import UserError
    from esnet_tf.machine import machine_record

    work = Path(args.work).resolve()
    if work == ROOT or ROOT in work.parents:
        raise UserError(f"--work {args.work}: inside the repository; give a scratch folder outside it (/tmp/...)")
    out = Path(args.out) if args.out else RESULTS / f"relax_start_{cpu_label()}_{time.strftime('%Y-%m-%d')}.json"
    refuse_existing([out], args.overwrite)
    ids = [i for i in args.ids.split(",") if i]
    prepared = [prepare(i, work) for i in ids]
    settings = {p[2] for p in prepared}
    if len(settings) != 1:
        raise UserError(f"--ids {args.ids}: the committed runs use different settings {sorted(settings)}; "
                        "benchmark them separately")
    (st,) = settings
    files = [p[0] for p in prepared]
    load0, t0 = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commands = {"uip": run_cli(files, work / "uip", st, True, args)}
    if not args.no_control:
        commands["control_is"] = run_cli(files, work / "is", st, False, args)
    tol = OPTIMIZER.pulay_drift_tol
    rows = {}
    for (path, committed, _), tid in zip(prepared, ids):
        row = {"committed_is": summarize(committed),
               "uip": summarize(cached_result(path, work / "uip", st, uip_relax_start()))}
        row["uip_vs_committed"] = compare(row["uip"], row["committed_is"], tol)
        if not args.no_control:
            row["control_is"] = summarize(cached_result(path, work / "is", st, "is"))
            row["uip_vs_control"] = compare(row["uip"], row["control_is"], tol)
            row["control_vs_committed"] = compare({**row["control_is"], "dft_relax_cpu_time_s":
                                                   row["control_is"]["relax_cpu_time_s"]}, row["committed_is"], tol)
        rows[tid] = row
    record = {
        "description": "optimizer relaxations started from CHGNet's relaxation of the IS (esnet dft run --relax-start "
                       "uip) against the committed IS-start runs and an IS-start rerun on this machine (control); "
                       "energies eV/atom, volumes Å^3/atom, times s (CPU: the single-threaded worker's process time)",
        "command": "python benchmarks/relax_start.py " + " ".join(sys.argv[1:]),
        "esnet_dft_commands": commands,
        "date": t0, "cpu": lscpu_model_name(), "machine": machine_record(),
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "settings": {"ecut_eV": st[0], "kpt_density_per_A": st[1]}, "optimizer": {
            "fmax_eV_per_A": OPTIMIZER.fmax, "pulay_drift_tol_eV_per_atom": tol},
        "tolerance": f"energies agree when |dE| <= pulay_drift_tol = {1000 * tol:g} meV/atom (the energy error the "
                     f"optimizer accepts from the Pulay stress correction; forces below {OPTIMIZER.fmax} eV/Å)",
        "notes": "committed runs: other machine and load (CPU model not recorded), so the control's times are the "
                 "like-for-like reference; relax_cpu_time_s of the CHGNet start includes the potential "
                 "(uip.total_cpu_time_s: torch import, weights, relaxation), dft_relax_cpu_time_s excludes it; the "
                 "engine records no SCF iteration counts",
        "structures": rows,
    }
    if not args.no_survey:
        from esnet_tf.dft.settings import DFTSettings

        record["survey"] = survey(DFTSettings(ecut=st[0], kpt_density=st[1]).eos_step)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(record, indent=1) + "\n")
    print(f"-> {out}", file=sys.stderr)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    from esnet_tf.errors import UserError

    args = parse_args(argv)
    try:
        record = run(args)
    except UserError as exc:
        print(f"relax_start.py: error: {exc}", file=sys.stderr)
        return 2
    ref = "control_is" if not args.no_control else "committed_is"
    for tid, row in record["structures"].items():
        u, r, c = row["uip"], row[ref], row[f"uip_vs_{ref.split('_')[0]}"]
        print(f"{tid}: BFGS steps {r['bfgs_steps']} -> {u['bfgs_steps']}, EOS points {r['eos_points']} -> "
              f"{u['eos_points']}, relaxation CPU {r['relax_cpu_time_s']} s -> {u['dft_relax_cpu_time_s']} s DFT + "
              f"{u['uip']['total_cpu_time_s']} s CHGNet; dE {c['d_energy_meV_per_atom']} meV/atom, "
              f"dV/V {c['d_volume_rel']:+.2%}")
    if "survey" in record:
        sv = record["survey"]
        print(f"survey of {sv['n']} optimizer rows (no DFT): median |ln s_DFT/s_start| IS "
              f"{sv['is_start']['median_abs_ln_scale']}, CHGNet {sv['uip_start']['median_abs_ln_scale']}; more than "
              f"half an EOS step off: IS {sv['is_start']['n_more_than_half_eos_step']}, CHGNet "
              f"{sv['uip_start']['n_more_than_half_eos_step']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
