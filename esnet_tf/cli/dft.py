"""`esnet dft`: GPAW single points (and relaxations) that write IS-DOS (extra `dft`).

    esnet dft run STRUCTURES... --out DIR [--relax eos] [--workers 2]
    esnet dft run STRUCTURES... --out DIR --relax optimizer --relax-start uip   # BFGS from CHGNet's geometry
    esnet dft demo [--out DIR] [--workers 2] [--part all|base|harder|augment|new]   # the demo dataset, resuming from the packaged one
    esnet dft pool [--out DIR] [--workers 2]                  # the hypothetical screening pool (resumable)
    esnet dft compact DIR                                     # older DOS files rewritten at about half the size, same numbers
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from esnet_tf.atomic import OVERWRITE_HELP, refuse_existing, refuse_other_tasks, write_text
from esnet_tf.dft.settings import DFTSettings
from esnet_tf.errors import UserError

#: `esnet dft demo --out` default: under the current directory (never inside the installation)
DEMO_OUT = "esnet_demo_data"
#: `esnet dft pool --out` default (to extend the repository's data: --out datasets/is_dos/pool)
POOL_OUT = "esnet_pool_data"
#: what `esnet dft run` writes in --out besides its calcs/ cache: all `--overwrite` replaces
RUN_FILES = ("labels.csv", "failures.csv", "provenance.json", "outcomes.json")
#: `--relax-start` values: the unrelaxed structure, or the universal potential's relaxation of it
RELAX_STARTS = ("is", "uip")
RELAX_START_HELP = ("where optimizer relaxations start: is, the unrelaxed structure; uip, its relaxation by the "
                    "universal potential (CHGNet, extra uip; the IS single point and IS-DOS stay on the unrelaxed "
                    "structure, the label stays DFT's; part of the cache key, recorded as relax_start in "
                    "result.json and provenance.json)")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Open-source DFT (GPAW, plane waves, PBE) on unrelaxed structures: each structure "
                     "gets a single point that writes its IS-DOS (*.gpawdos.npz, read by `esnet featurize`), "
                     "its energy (eV) and wall time (s); optionally a relaxation. One single-threaded GPAW "
                     "process per structure; results cached by a hash of structure + settings, so reruns resume.")
    sub = p.add_subparsers(dest="dft_command", metavar="ACTION", required=True)
    for name, help_ in (("run", "compute the given structures"), ("demo", "compute the embedded demo dataset"),
                        ("pool", "compute the hypothetical screening pool (element substitution on ternary "
                                 "prototypes, their competing binaries, new elements)")):
        q = sub.add_parser(name, help=help_, description=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == "run":
            q.add_argument("structures", nargs="+", metavar="FILE",
                           help="CIF, POSCAR, pymatgen Structure JSON, or prototype spec JSON (see docs)")
            q.add_argument("--out", required=True, help="output directory (labels.csv, calcs/ cache)")
            q.add_argument("--relax", choices=["none", "eos", "optimizer"], default="none",
                           help="none: single point only; eos: isotropic lattice scan (cubic cells without "
                                "internal degrees of freedom); optimizer: BFGS on positions and cell")
            q.add_argument("--relax-start", default="is", metavar="{is,uip}",
                           help=RELAX_START_HELP + "; uip needs --relax optimizer")
            q.add_argument("--overwrite", action="store_true",
                           help=OVERWRITE_HELP.format(", ".join(RUN_FILES) + "; the calcs/ cache is kept") +
                           " when it holds the results of another task list. A rerun whose structures and "
                           "settings include every task of the existing output resumes or extends it without it")
        elif name == "pool":
            q.add_argument("--out", default=POOL_OUT, help="pool directory (labels.csv, provenance.json, calcs/ "
                           "cache); to extend the repository's data: --out datasets/is_dos/pool")
            q.add_argument("--demo-dir", default=None, help="demo dataset directory whose results the pool reuses "
                           "and whose entries enter the hulls (default: the packaged demo)")
            q.add_argument("--limit", type=int, default=None, help="only the first N tasks of the plan")
            q.add_argument("--assemble-only", action="store_true",
                           help="compute nothing: write labels.csv and provenance.json from the cached results")
            q.add_argument("--relax-start", default="is", metavar="{is,uip}",
                           help=RELAX_START_HELP + "; applies to the optimizer tasks (layered candidates, hcp "
                                "elements) not yet computed or started from the IS; the EOS tasks are unchanged")
        else:
            q.add_argument("--out", default=DEMO_OUT, help="dataset directory; a new one starts from a copy of the "
                           "packaged demo results, so only missing structures are computed (to extend the "
                           "repository's data: --out datasets/is_dos/demo)")
            q.add_argument("--limit", type=int, default=None, help="only the first N structures")
            q.add_argument("--part", choices=["all", "base", "harder", "augment", "new"], default="all",
                           help="base: cubic prototypes (EOS); harder: non-cubic ones (optimizer) and their "
                                "competitors; augment: IS variants of every relaxed structure (single points); "
                                "new: harder + augment, interleaved")
            q.add_argument("--assemble-only", action="store_true",
                           help="compute nothing: write labels.csv from the cached results (pending ones listed)")
            q.add_argument("--readme", metavar="FILE",
                           help="with --assemble-only: rewrite the dataset paragraph between the demo-summary "
                                "markers of FILE (the repository's docs/dft.md)")
        q.add_argument("--workers", type=int, default=2, help="parallel single-threaded GPAW processes (lower it while running: "
                       "echo 1 > OUT/calcs/WORKERS)")
        q.add_argument("--timeout", type=float, default=1800.0, help="wall-time limit per structure, s")
        q.add_argument("--ecut", type=float, default=DFTSettings.ecut, help="plane-wave cutoff, eV")
        q.add_argument("--kpt-density", type=float, default=DFTSettings.kpt_density, help="k-points per Å^-1")
        q.add_argument("--tiny", action="store_true", help="cheap unconverged settings (300 eV, 1.5 /Å^-1) for tests")
        q.add_argument("--retry-failed", action="store_true", help="rerun tasks whose failure is cached")
        q.add_argument("--nice", type=int, default=0, help="niceness of the GPAW processes; a job that leads its own session (setsid esnet dft ...) also "
                       "lowers its session's autogroup, without which Linux ignores nice against other sessions")
        q.add_argument("--beam-pipeline-options", default=None,
                       help="run the tasks as an Apache Beam pipeline, e.g. 'runner=DirectRunner' "
                            "(Flink/Spark/Dataflow options work unchanged; needs a shared --out)")
    q = sub.add_parser("compact", help="shrink the DOS files of a DFT cache (same numbers)",
                       description="Rewrite the *.gpawdos.npz files of an `esnet dft` output written before "
                                   "2026-12 in the compact layout: the same float32 PDOS and energies (eV), about "
                                   "half the size (46 % on the demo cache); result.json records the new sizes. Refused while a job runs on it.")
    q.add_argument("dir", metavar="DIR", help="an `esnet dft` output directory (with calcs/) or its calcs/ cache")


def _settings(args) -> DFTSettings:
    base = DFTSettings.tiny() if args.tiny else DFTSettings()
    d = base.to_dict()
    if not args.tiny:
        d.update(ecut=args.ecut, kpt_density=args.kpt_density)
    return DFTSettings.from_dict(d)


def _relax_start(args: argparse.Namespace) -> str:
    """`Task.relax_start` of `--relax-start` ("is", or "chgnet-<weights>" for uip); bad values in one line."""
    from esnet_tf.dft.tasks import RELAX_START_IS, uip_relax_start

    value = getattr(args, "relax_start", "is")
    if value not in RELAX_STARTS:
        raise UserError(f"--relax-start {value!r}: choose one of {', '.join(RELAX_STARTS)} (is: the unrelaxed "
                        "structure; uip: its CHGNet relaxation)")
    if value == "is":
        return RELAX_START_IS
    if args.dft_command == "run" and args.relax != "optimizer":
        raise UserError(f"--relax-start uip applies to optimizer relaxations only, not --relax {args.relax} "
                        "(EOS scans and single points start from the IS): add --relax optimizer or drop --relax-start")
    from esnet_tf.uip import require_uip

    require_uip("chgnet")
    return uip_relax_start("chgnet")


def _record_relax_starts(out: Path, outcomes: list) -> None:
    """Add the `relax_start` of every optimizer row (`runner.relax_start_provenance`) to OUT/provenance.json."""
    from esnet_tf.dft.runner import relax_start_provenance

    section = relax_start_provenance(outcomes)
    path = out / "provenance.json"
    if not section["per_row"] or not path.is_file():
        return
    prov = json.loads(path.read_text(encoding="utf-8"))
    prov["relax_start"] = section
    write_text(path, json.dumps(prov, indent=1, default=str))


def _compact(target: Path) -> int:
    from esnet_tf.dft.runner import compact_cache

    cache = target / "calcs" if (target / "calcs").is_dir() else target
    if not cache.is_dir() or not any(cache.glob("*/result.json")):
        raise UserError(f"{target}: no `esnet dft` results here (expected DIR/calcs/<hash>/result.json); "
                        "give the --out directory of `esnet dft run` or `esnet dft demo`")
    r = compact_cache(cache)
    saved = f", {r.bytes_before / 1e6:.1f} MB -> {r.bytes_after / 1e6:.1f} MB" if r.n_rewritten else ""
    print(f"{cache}: {r.n_rewritten} DOS files rewritten{saved}; {r.n_already_compact} already compact, "
          f"{r.n_kept_full} kept (non-uniform energy axis), {r.n_untrusted} untrusted cache entries left alone")
    return 0


def run(args: argparse.Namespace) -> int:
    from esnet_tf.dft.labels import assemble
    from esnet_tf.dft.structures import StructureInputError, read_structures
    from esnet_tf.dft.tasks import Task

    if args.dft_command == "compact":
        return _compact(Path(args.dir))
    try:
        import gpaw  # noqa: F401
    except ImportError:
        raise UserError("GPAW is not installed: install the `dft` extra (see README, scripts/setup.sh)") from None
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if not args.timeout > 0:
        raise UserError(f"--timeout must be > 0 s, got {args.timeout}")
    relax_start = _relax_start(args)
    if args.dft_command == "demo" and args.readme:  # checked before any work
        from esnet_tf.dft.demo import readme_with_summary

        if not args.assemble_only:
            raise UserError("--readme rewrites a README from the assembled data: use it with --assemble-only")
        try:
            readme_with_summary(Path(args.readme).read_text(encoding="utf-8"), "")
        except (OSError, ValueError) as exc:
            raise UserError(f"--readme {args.readme}: {exc}") from None
    st = _settings(args)
    out = Path(args.out)
    if args.dft_command in ("demo", "pool"):
        _check_dataset_output(out, args.dft_command, st)
    if args.dft_command == "pool":
        return _pool(args, st, out, relax_start)
    if args.dft_command == "demo":
        from esnet_tf.dft.demo import seed_from_package

        copied = seed_from_package(out)
        if copied:
            print(f"{out}: started from the packaged demo results ({copied} files copied)")
    if args.dft_command == "demo" and args.assemble_only:
        from esnet_tf.dft.demo import assemble_cached

        readme = Path(args.readme) if args.readme else None
        prov = assemble_cached(out, st)
        print(f"{prov['n_examples']} examples, {prov['n_failed']} failed, {prov['n_pending']} not computed yet "
              f"-> {out / 'labels.csv'}")
        if readme is not None:
            import csv

            from esnet_tf.dft.demo import readme_with_summary, summary_paragraph

            with open(out / "labels.csv", newline="") as fh:
                rows = list(csv.DictReader(fh))
            write_text(readme, readme_with_summary(readme.read_text(encoding="utf-8"), summary_paragraph(prov, rows)))
            print(f"rewrote the dataset paragraph of {readme}")
        sm = prov["summary"]
        print(f"{sm['n_elements']} elements, {sm['n_stable']} on the hull ({sm['n_stable_compounds']} compounds); "
              f"per prototype: {sm['per_prototype']}; IS {sm['is_single_points_per_process_hour']} / relaxations "
              f"{sm['relaxations_per_process_hour']} per process-hour (ratio {sm['relaxation_to_is_cost_ratio']})")
        return 0
    if args.dft_command == "demo":
        from esnet_tf.dft.demo import demo_tasks

        tasks = demo_tasks(st, timeout=args.timeout, part=args.part)[: args.limit]
    else:
        tasks = []
        for f in args.structures:
            try:
                items = read_structures(f)
            except StructureInputError as exc:
                raise UserError(str(exc)) from None
            tasks += [Task(id=i, structure=s, settings=st, relax=args.relax, prototype=proto, timeout=args.timeout,
                           relax_start=relax_start) for i, s, proto in items]
        ids = [t.id for t in tasks]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise UserError(f"duplicate structure ids {dup[:5]}: give the files distinct names")
        _check_run_output(out, tasks, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    outcomes = _compute(tasks, out, args)
    failed = [o for o in outcomes if o.status == "failed"]
    if args.dft_command == "run":  # the record first: it names the task list the files below belong to
        _write_outcomes(out, outcomes)
    try:
        if args.dft_command == "demo":  # labels.csv without the IS variants, labels_augmented.csv with them
            from esnet_tf.dft.demo import assemble_cached

            prov = assemble_cached(out, st)
        else:
            prov = assemble(outcomes, out, st)
            _record_relax_starts(out, outcomes)
    except ValueError as exc:  # e.g. no elemental entries at all for a phase diagram
        prov = {"n_examples": 0, "note": f"labels not assembled: {exc}"}
        if args.dft_command == "run" and args.overwrite:  # the replaced output's labels belong to another task list
            for name in RUN_FILES[:3]:
                (out / name).unlink(missing_ok=True)
    n_cached = sum(o.status == "cached" for o in outcomes)
    print(f"{len(outcomes) - len(failed)} done ({n_cached} from cache), {len(failed)} failed; "
          f"labels: {out / 'labels.csv'}; failures: {out / 'failures.csv'}")
    for o in failed:
        print(f"FAILED {o.task_id}: {o.reason}")
    if not prov.get("n_examples"):
        print(f"esnet dft: no labelled example in {out / 'labels.csv'}: "
              f"{prov.get('note') or 'formation energies need the elemental references of every element'}; "
              "add the elements themselves to the structures (see docs/dft.md)")
        return 1
    if args.dft_command != "run":
        _write_outcomes(out, outcomes)
    return 1 if failed else 0


def _write_outcomes(out: Path, outcomes: list) -> None:
    """outcomes.json: id, status, cache key (`task_hash`) and reason of every task of the run."""
    write_text(out / "outcomes.json", json.dumps(
        [{"id": o.task_id, "status": o.status, "key": o.key, "reason": o.reason} for o in outcomes], indent=1))


def _recorded_tasks(out: Path) -> list[tuple[str, str]] | None:
    """(id, cache key) of every task whose results `out` holds: its outcomes.json, else (an output of an older
    version) the rows of its labels.csv (path calcs/KEY/...); None when `out` holds neither. An outcomes.json
    or labels.csv that is not `esnet dft`'s is refused in one line (--overwrite replaces it)."""
    import csv
    import re

    record, labels = out / "outcomes.json", out / "labels.csv"
    if record.is_file():
        try:
            doc = json.loads(record.read_text(encoding="utf-8"))
            pairs = [(d["id"], d["key"]) for d in doc]
            if all(isinstance(i, str) and isinstance(k, str) for i, k in pairs):
                return pairs
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
            pass
        refuse_existing([record], False)  # not the record `esnet dft run` writes: an unknown output
    if not labels.is_file():
        return None
    pairs = []
    try:
        with open(labels, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                m = re.fullmatch(r"calcs/([0-9a-f]{16})/[^/]+", row.get("path") or "")
                if m is None or not row.get("id"):
                    raise ValueError(row)
                pairs.append((row["id"], m.group(1)))
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        refuse_existing([labels], False)  # not the labels of an `esnet dft run`
    return pairs


#: what the provenance.json description of an `esnet dft pool` dataset contains (and no other's)
DATASET_MARK = {"pool": "(esnet dft pool)"}


def _check_dataset_output(out: Path, kind: str, st: DFTSettings) -> None:
    """`esnet dft demo|pool --out`: resume or extend a dataset of this kind computed with these settings; any
    other directory content (an `esnet dft run` output, the other kind, other settings, a labels.csv of
    unknown origin) is refused in one line before anything is copied or computed."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a directory; give the dataset directory")
    fix = f"choose another --out for `esnet dft {kind}` (nothing was changed)"
    if (out / "outcomes.json").is_file():
        raise UserError(f"--out {out}: holds the output of `esnet dft run` (outcomes.json); {fix}")
    prov_path = out / "provenance.json"
    if not prov_path.is_file():
        if (out / "labels.csv").exists():
            raise UserError(f"--out {out}: holds a labels.csv without the provenance.json of `esnet dft {kind}`; {fix}")
        return
    try:
        prov = json.loads(prov_path.read_text(encoding="utf-8"))
        description, settings = str(prov.get("description", "")), prov.get("settings")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        raise UserError(f"--out {out}: its provenance.json is not readable JSON of an `esnet dft` dataset; {fix}") from None
    if (DATASET_MARK["pool"] in description) != (kind == "pool"):
        raise UserError(f"--out {out}: holds another dataset ({description[:60]!r}), not the {kind}; {fix}")
    asked = json.loads(json.dumps(st.to_dict()))
    if isinstance(settings, dict) and settings != asked:
        key = next((k for k in sorted(set(settings) | set(asked)) if settings.get(k) != asked.get(k)), "?")
        raise UserError(f"--out {out}: computed with other DFT settings ({key} {settings.get(key)!r} there, "
                        f"{asked.get(key)!r} asked); use the same settings to resume it, or {fix}")


def _check_run_output(out: Path, tasks: list, overwrite: bool) -> None:
    """`esnet dft run --out`: resume an output whose every task is in `tasks`, refuse any other without --overwrite."""
    from esnet_tf.dft.tasks import task_hash

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: a file, not a directory; give the output directory")
    if overwrite:
        return
    refuse_other_tasks(out, _recorded_tasks(out) if out.is_dir() else None,
                       [(t.id, task_hash(t)) for t in tasks], overwrite,
                       ", ".join(RUN_FILES) + " (the calcs/ cache is kept)")


def _compute(tasks: list, out: Path, args: argparse.Namespace) -> list:
    """Run `tasks` into `out`/calcs: Apache Beam with --beam-pipeline-options, else local worker processes."""
    if args.beam_pipeline_options:
        from esnet_tf.dft.beam import run_tasks_beam

        return run_tasks_beam(tasks, out / "calcs", args.beam_pipeline_options, args.retry_failed)
    from esnet_tf.dft.runner import run_tasks

    return run_tasks(tasks, out / "calcs", workers=args.workers, retry_failed=args.retry_failed, nice=args.nice)


def _pool_start(task, relax_start: str, out: Path, demo: Path):
    """The pool task to compute for `task` with `--relax-start`: an optimizer task that has a result from
    the IS (pool or demo cache) or a started IS relaxation (its progress journal in OUT/calcs) keeps the IS
    start; the rest start from `relax_start`."""
    from esnet_tf.dft.progress import PROGRESS_FILE
    from esnet_tf.dft.runner import cached_outcome
    from esnet_tf.dft.tasks import RELAX_START_IS, task_hash, with_relax_start

    if relax_start == RELAX_START_IS or task.relax != "optimizer":
        return task
    if any(o is not None and o.status != "failed" for o in (cached_outcome(task, out / "calcs"),
                                                            cached_outcome(task, demo / "calcs"))):
        return task
    if (out / "calcs" / task_hash(task) / PROGRESS_FILE).is_file():
        return task
    return with_relax_start(task, relax_start)


def _pool(args: argparse.Namespace, st: DFTSettings, out: Path, relax_start: str = "is") -> int:
    """`esnet dft pool`: compute the pool plan's missing tasks (reusing the demo's cache), then assemble."""
    from esnet_tf import resources
    from esnet_tf.dft.pool import assemble_pool, pool_tasks
    from esnet_tf.dft.runner import cached_outcome
    from esnet_tf.dft.tasks import RELAX_START_IS

    demo = Path(args.demo_dir) if args.demo_dir else resources.demo_dir()
    if not (demo / "calcs").is_dir():
        raise UserError(f"--demo-dir {demo}: no calcs/ cache there; give the demo dataset directory "
                        "(datasets/is_dos/demo in a checkout)")
    out.mkdir(parents=True, exist_ok=True)
    plan = pool_tasks(st, timeout=args.timeout)[: args.limit]
    failed = []
    if not args.assemble_only:
        todo = [_pool_start(p.task, relax_start, out, demo) for p in plan if cached_outcome(p.task, demo / "calcs") is None]
        print(f"pool plan: {len(plan)} tasks, {len(plan) - len(todo)} already in the demo's cache")
        if relax_start != RELAX_START_IS:
            print(f"--relax-start uip: {sum(t.relax_start != RELAX_START_IS for t in todo)} optimizer tasks start "
                  f"from {relax_start}")
        failed = [o for o in _compute(todo, out, args) if o.status == "failed"]
        for o in failed:
            print(f"FAILED {o.task_id}: {o.reason}")
    prov = assemble_pool(out, demo, st)
    _record_pool_relax_starts(out, demo, plan)
    fam = ", ".join(f"{k} {v['done']}/{v['planned']} (stable {v['stable']} of {v['hull_complete']} with complete hulls)"
                    for k, v in prov["candidates"].items())
    print(f"{prov['n_rows']} rows -> {out / 'labels.csv'}; {prov['n_pending']} of {prov['n_planned']} tasks pending; "
          f"candidates: {fam}; {len(prov['elements'])} elements")
    if not prov["n_rows"] and not args.assemble_only:
        return 1
    return 1 if failed else 0


def _record_pool_relax_starts(out: Path, demo: Path, plan: list) -> None:
    """The `relax_start` of every optimizer row of the pool's labels.csv, in its provenance.json (a row whose
    task has results from both starts is the IS start's, as the assembly reads it)."""
    import csv

    from esnet_tf.dft.runner import cached_outcome
    from esnet_tf.dft.tasks import uip_relax_start

    labels = out / "labels.csv"
    if not labels.is_file():
        return
    with open(labels, newline="", encoding="utf-8") as fh:
        ids = {r["id"] for r in csv.DictReader(fh)}
    starts = (uip_relax_start("chgnet"),)
    outcomes = [cached_outcome(p.task, out / "calcs", starts) or cached_outcome(p.task, demo / "calcs", starts)
                for p in plan if p.task.relax == "optimizer" and p.task.id in ids]
    _record_relax_starts(out, [o for o in outcomes if o is not None])
