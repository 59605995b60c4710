"""Running a study: every (model, fold, seed) unit computed once, cached, then summarised.

Each unit is written atomically to OUT/cache/<hash>/<model>_f<fold>of<folds>_s<seed>_e<epochs>.json
(<hash>: the snapshot files the model reads, `StudyData.aug_hash` for augmented models, else
`StudyData.hash`; <epochs> is 0 for models that do not train ESNet; a grouping of the outer folds
other than the chemical system adds `_by<grouping>` before `.json`: the pool test set's units are
<model>_f0of1_s<seed>_e<epochs>_bypool-candidates.json (trained on the demo and the pool's elements and
competitors, tested on its candidates; `_bypool` units were trained on the demo alone and tested on every
pool row), keyed by the demo and pool snapshots); a rerun skips finished units.
A unit being computed is locked (`esnet_tf.atomic.exclusive`), so several processes of the same
study share the work; `jobs` > 1 starts that many worker processes (each with cores/jobs
TensorFlow threads) and summarises when all have finished. Writes results.json, table.md and
accuracy.png in OUT, and rewrites the table between the markers of `table_file`.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.dft.pool import POOL_TRAINING_ROLES
from esnet_tf.errors import UserError
from esnet_tf.study.data import AUG_SNAPSHOT, POOL, POOL_FOLDS, POOL_SNAPSHOT, SNAPSHOT, StudyData, check_grouping, \
    check_training_roles, fold_sizes, take_pool_snapshot, take_snapshot
from esnet_tf.study.metrics import training_references, unit_metrics
from esnet_tf.study.models import MODELS, Unit, run_model
from esnet_tf.study.report import pool_summary, replace_table, study_figure, summarise, table_markdown
from esnet_tf.study.stats import N_BOOTSTRAP

FIGURE = "accuracy.png"


@dataclass(frozen=True)
class StudyConfig:
    """One study's settings.

    out: the study folder (snapshot, cache/, results); demo: the demo dataset folder the snapshot
    is copied from and its DOS paths are relative to; folds, seeds: grouped k-fold, one fold assignment
    and model initialisation per seed; grouping: what the outer folds group by (`data.GROUPINGS`:
    "chemsys", the chemical system; "prototype", leave-prototype-out; inner cross-fitting folds inside
    the training rows stay by chemical system; "pool": no outer folds, every demo row trains and the
    hypothetical pool at `pool` is the test set, one unit per seed, `folds` must be 1); pool: the pool
    dataset folder (labels.csv, calcs/, uip_chgnet.csv; grouping "pool" only); pool_training_roles: the
    pool's roles trained on (default all of POOL_TRAINING_ROLES; fewer: an ablation, rows of the others left
    out); epochs, batch_size: ESNet's maximum epochs and batch (examples); models: registry names (`esnet_tf.study.models.MODELS`);
    new_snapshot: copy the labels files again; summary_only: no training, summarise the cache;
    units_only: compute units, no summary; jobs: worker processes; threads: TensorFlow intra-op
    threads (None: TensorFlow's choice); tune_space: KerasTuner search space of tuned variants;
    table_file: a document whose table between the markers is rewritten; command: recorded in
    results.json.
    """

    out: Path
    demo: Path
    folds: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 40
    batch_size: int = 16
    models: tuple[str, ...] = field(default_factory=lambda: tuple(MODELS))
    new_snapshot: bool = False
    summary_only: bool = False
    units_only: bool = False
    jobs: int = 1
    threads: int | None = None
    tune_space: Path | None = None
    table_file: Path | None = None
    command: str = ""
    grouping: str = "chemsys"
    pool: Path | None = None
    pool_training_roles: tuple[str, ...] = POOL_TRAINING_ROLES

    def __post_init__(self) -> None:
        check_grouping(self.grouping)
        check_training_roles(self.pool_training_roles)
        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise UserError(f"unknown model(s) {unknown or '(none given)'}: choose from {', '.join(MODELS)}")
        if self.grouping == POOL:
            if self.folds != POOL_FOLDS:
                raise UserError(f"--group-by pool has no folds (one unit per seed: train on the demo, test on the pool): "
                                f"drop --folds {self.folds}")
            if self.pool is None or not (Path(self.pool) / "labels.csv").is_file():
                raise UserError(f"{self.pool}: no pool labels.csv: give the pool dataset's folder (--pool DIR)")
        elif self.pool is not None:
            raise UserError("--pool goes with --group-by pool (the pool is a test set, not extra folds)")
        elif tuple(self.pool_training_roles) != POOL_TRAINING_ROLES:
            raise UserError("--pool-training-roles goes with --group-by pool (the pool's rows train only there)")
        elif self.folds < 2:
            raise UserError(f"--folds must be >= 2, got {self.folds}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("--epochs and --batch-size must be >= 1")
        if self.jobs < 1:
            raise UserError(f"--jobs must be >= 1, got {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        if not self.seeds or min(self.seeds) < 0 or len(set(self.seeds)) != len(self.seeds):
            raise UserError(f"--seeds must be distinct integers >= 0, got {list(self.seeds)}")
        if self.table_file is not None:
            path = Path(self.table_file)
            if not path.is_file():
                raise UserError(f"{path}: no such file (the document holding the study's table)")
            replace_table(path.read_text(encoding="utf-8"), "", str(path), self.grouping)  # markers checked first

    def key(self, data: StudyData, model: str) -> str:
        """The hash that `model`'s units are cached under: the snapshot files it reads."""
        return data.aug_hash if MODELS[model].augmented else data.hash


#: each grouping's study folder under the results directory (benchmarks/results in a checkout): never shared
DEFAULT_OUT_NAMES = {"chemsys": "accuracy", "prototype": "accuracy_lopo", POOL: "accuracy_pool"}


def default_out(grouping: str, results_dir: str | Path) -> Path:
    """The study folder of `grouping` under `results_dir` (DEFAULT_OUT_NAMES)."""
    return Path(results_dir) / DEFAULT_OUT_NAMES[check_grouping(grouping)]


def default_folds(grouping: str) -> int:
    """Outer folds when none are given: 5, or 1 for the pool test set (no folds)."""
    return 1 if check_grouping(grouping) == POOL else 5


def worker_args(config: StudyConfig, threads: int) -> list[str]:
    """The flags of one units-only worker process of `config` (benchmarks/accuracy.py's own flags)."""
    return ["--units-only", "--threads", str(threads), "--folds", str(config.folds),
            "--seeds", ",".join(map(str, config.seeds)), "--epochs", str(config.epochs),
            "--batch-size", str(config.batch_size), "--models", ",".join(config.models), "--out", str(config.out),
            "--demo", str(config.demo), "--group-by", config.grouping] + (
        ["--pool", str(config.pool), "--pool-training-roles", ",".join(config.pool_training_roles)]
        if config.pool is not None else [])


def unit_path(out: Path, snapshot_hash: str, model: str, k: int, folds: int, seed: int, epochs: int,
              grouping: str = "chemsys") -> Path:
    """Cache file of one unit (epochs count only for the models that train ESNet; a grouping other than the
    chemical system is in the name, so that its units never pass for another grouping's)."""
    e = epochs if MODELS[model].uses_epochs else 0
    by = "" if check_grouping(grouping) == "chemsys" else f"_by{grouping}" + ("-candidates" if grouping == POOL else "")
    return out / "cache" / snapshot_hash / f"{model}_f{k}of{folds}_s{seed}_e{e}{by}.json"


def _say(msg: str) -> None:
    print(msg, flush=True)


def compute_unit(data: StudyData, config: StudyConfig, model: str, seed: int, k: int, path: Path,
                 refs_cache: dict, tag: str, log: Callable[[str], None] = _say) -> dict[str, Any]:
    """Train / fit one (model, fold, seed) unit, score it and write its record to `path` (atomically)."""
    from esnet_tf.atomic import write_text

    fold = data.folds(config.folds, seed, config.grouping)
    unit = Unit(data, fold, k, config.folds, seed, config.epochs, config.batch_size,
                Path(config.out) / "work" / "units" / f"{model}_f{k}_s{seed}", config.tune_space, config.grouping)
    test_idx, train_idx = unit.test_idx, unit.train_idx
    t = time.time()
    pred, notes = run_model(model, unit)
    if (seed, k) not in refs_cache:
        refs_cache[(seed, k)] = training_references(
            data, train_idx, "every demo row and the pool's elements, competitors and label-range rows (its candidates are the test "
                             "set) + elements at 0 eV/atom"
            if config.grouping == POOL else f"training folds (fold {k}, seed {seed}) + elements at 0 eV/atom")
    metrics = unit_metrics(data, refs_cache[(seed, k)], test_idx, pred)
    rec = {"model": model, "fold": k, "folds": config.folds, "seed": seed, "epochs": config.epochs,
           "batch_size": config.batch_size, "grouping": config.grouping, "snapshot_hash": config.key(data, model),
           "test_ids": data.is_["id"][test_idx].tolist(),
           "pred": [float(p) for p in pred], "truth": [float(v) for v in data.y[test_idx]],
           "metrics": metrics, "notes": notes, "wall_s": time.time() - t,
           "tf_threads": config.threads}  # None: TensorFlow's default; a unit is bit-reproducible at the same count
    write_text(path, json.dumps(rec, indent=1))
    log(f"{tag}: MAE {metrics['mae']:.3f}  RMSE {metrics['rmse']:.3f}  polymorphs "
        f"{metrics['polymorph_correct']:.1f}/{metrics['polymorph_total']}  F1 "
        f"{'n/a' if metrics['f1'] is None else format(metrics['f1'], '.3f')}  "
        f"({rec['wall_s']:.0f} s)")
    return rec


def run_jobs(jobs: int, command: Sequence[str], threads: int, log: Callable[[str], None] = _say) -> None:
    """Run `jobs` copies of the worker `command` (a study with units_only) with `threads` math-library
    threads each (`esnet_tf.threads.thread_env`), sharing the units through their locks. A worker that fails fails the study; a SIGTERM to
    this process stops the workers too (their finished units stay cached)."""
    from esnet_tf.threads import thread_env

    env = thread_env(threads)
    log(f"{jobs} worker processes, {threads} TensorFlow thread(s) each")
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # so that finally runs
    workers = [subprocess.Popen(list(command), env=env) for _ in range(jobs)]  # inherit stdout: one line per unit
    try:
        codes = [w.wait() for w in workers]
    finally:
        signal.signal(signal.SIGTERM, previous)
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait()
    failed = [str(c) for c in codes if c != 0]
    if failed:
        raise UserError(f"{len(failed)} of {jobs} worker process(es) failed (exit status "
                        f"{', '.join(failed)}); rerun the same command to resume")


def worker_threads(config: StudyConfig) -> int:
    """TensorFlow threads per worker process: `threads`, or the usable cores / jobs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return config.threads or max(1, cores // config.jobs)


def load_units(config: StudyConfig, data: StudyData, log: Callable[[str], None] = _say,
               worker: Callable[[int], Sequence[str]] | None = None) -> tuple[dict, list[str]]:
    """Every unit of the study, from the cache or computed (unless summary_only); (units, busy tags).

    `worker(threads)`: the command line of one units-only worker process, needed when jobs > 1.
    """
    from esnet_tf.atomic import exclusive

    out = Path(config.out)
    summary_only = config.summary_only
    if config.jobs > 1 and not summary_only:
        if worker is None:
            raise UserError("jobs > 1 needs the command line of a worker process")
        threads = worker_threads(config)
        run_jobs(config.jobs, worker(threads), threads, log)
        summary_only = True  # every unit is cached now; what follows only summarises
    units: dict[str, dict[tuple[int, int], dict]] = {m: {} for m in config.models}
    todo = [(m, s, k) for m in config.models for s in config.seeds for k in range(config.folds)]
    refs_cache: dict = {}
    missing: dict[str, list[str]] = {}
    busy: list[str] = []
    for n, (model, seed, k) in enumerate(todo, 1):
        path = unit_path(out, config.key(data, model), model, k, config.folds, seed, config.epochs, config.grouping)
        tag = f"[{n}/{len(todo)}] {model} fold {k} seed {seed}"
        if path.is_file():
            units[model][(k, seed)] = json.loads(path.read_text())
            continue
        if summary_only:
            missing.setdefault(model, []).append(f"f{k}s{seed}")
            continue
        claim = contextlib.ExitStack()
        try:
            claim.enter_context(exclusive(path, "study unit"))
        except UserError:  # another process of this study is computing it
            busy.append(tag)
            continue
        with claim:
            if path.is_file():  # finished by another process since the check above
                units[model][(k, seed)] = json.loads(path.read_text())
                continue
            units[model][(k, seed)] = compute_unit(data, config, model, seed, k, path, refs_cache, tag, log)
    if busy:
        log(f"{len(busy)} unit(s) left to the other process(es) computing them: {'; '.join(busy)}")
    for model, which in missing.items():
        log(f"{model}: {len(which)} unit(s) not cached, left out (--summary-only): {' '.join(which)}")
    return units, busy


def run_study(config: StudyConfig, *, log: Callable[[str], None] = _say,
              worker: Callable[[int], Sequence[str]] | None = None) -> dict[str, Any]:
    """Compute (or reuse) every unit, then write results.json, table.md, accuracy.png (and the table into
    `config.table_file`); returns the result (with units_only: the count of units and the busy ones)."""
    from esnet_tf.atomic import write_text

    if config.threads and not (config.jobs > 1 and not config.summary_only):  # before TensorFlow starts its pools
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(config.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    copied = take_snapshot(out, Path(config.demo), config.new_snapshot)
    pool = Path(config.pool) if config.grouping == POOL else None
    if pool is not None:
        copied = take_pool_snapshot(out, pool, config.new_snapshot) or copied
    data = StudyData(out, out / "work", Path(config.demo), pool, config.pool_training_roles)
    log(f"snapshot {data.hash} (with the variants {data.aug_hash}; {'new copy' if copied else 'reused'}): "
        f"{len(data.y)} structures, {len(data.aug['id'])} variants ({data.n_orphan_variants} without a parent in "
        f"labels.csv left out); features {data.featurize_s:.0f} s")
    if pool is not None:
        test_set = pool_test_set(data)
        sizes = {"train": int((~data.is_pool_test).sum()), "test": int(data.is_pool_test.sum())}
        log(f"training rows (every demo row) {sizes['train']}; test rows (the pool snapshot) {sizes['test']} "
            f"({', '.join(f'{n} {r}' for r, n in test_set['roles'].items())}); left out of the test set: "
            + "; ".join(f"{k.replace('_', ' ')}: {len(v)}" for k, v in data.pool_left_out.items()))
    else:
        sizes = {str(s): fold_sizes(data.folds(config.folds, s, config.grouping), config.folds) for s in config.seeds}
        log(f"fold sizes (structures; grouped by {config.grouping}): "
            + "; ".join(f"seed {s}: {'/'.join(map(str, n))}" for s, n in sizes.items()))
        empty = [s for s, n in sizes.items() if min(n) == 0]
        if empty:
            raise UserError(f"--group-by {config.grouping} leaves a fold without structures for seed(s) "
                            f"{', '.join(empty)}: use fewer --folds or other --seeds")
    t0 = time.time()
    units, busy = load_units(config, data, log, worker)
    if config.units_only:
        return {"units": sum(len(u) for u in units.values()), "busy": busy}
    summary = (pool_summary(units, config.seeds, test_set["role_of"]) if pool is not None
               else summarise(units, config.folds, config.seeds))
    result = {"snapshot_hash": data.hash, "augmented_snapshot_hash": data.aug_hash,
              "augmented_models": [m for m in config.models if MODELS[m].augmented],
              "snapshot": [SNAPSHOT, AUG_SNAPSHOT], "n_structures": int(len(data.y)),
              "n_variants": int(len(data.aug["id"])), "folds": config.folds, "seeds": list(config.seeds),
              "epochs": config.epochs, "batch_size": config.batch_size, "models": list(config.models),
              "magpie_imputed_for_snapshot_elements": imputed_properties(data),
              "truth_stable": "label e_above_hull <= 0 (hull of the whole snapshot); oof_hull_* keys: true E_f "
                              "placed on the out-of-fold hull",
              "ci": f"percentile bootstrap ({N_BOOTSTRAP} resamples) over structures of the pooled out-of-fold "
                    "predictions, per complete seed, bounds averaged over seeds",
              "paired_test": "per (fold, seed) MAE pairs: Wilcoxon signed-rank (scipy.stats.wilcoxon) and a "
                             "t-interval of the mean difference",
              "summary": summary, "wall_s": time.time() - t0, "command": config.command}
    if config.grouping != "chemsys":  # the chemical-system study's results.json keeps its keys
        result.update(grouping=config.grouping, fold_sizes=sizes)
    if pool is not None:
        result.update(snapshot=[SNAPSHOT, AUG_SNAPSHOT, POOL_SNAPSHOT], n_structures=sizes["train"],
                      demo_snapshot_hash=data.demo_hash,
                      test_set={k: v for k, v in test_set.items() if k != "role_of"},
                      ci="percentile bootstrap (2000 resamples) over the test set's structures, per seed, bounds "
                         "averaged over seeds",
                      paired_test="per-structure paired bootstrap of |error| - |error of the best baseline| over the "
                                  "same test structures (2000 resamples), per seed, bounds averaged over seeds; no p value "
                                  "(one test set: the seeds repeat the training, not the sample)")
    write_text(out / "results.json", json.dumps(result, indent=1))
    table = table_markdown(result)
    write_text(out / "table.md", table)
    log(table)
    figure = study_figure(result, units, out / FIGURE)
    if figure is not None:
        log(f"wrote {figure}")
    if config.table_file is not None:
        doc = Path(config.table_file)
        write_text(doc, replace_table(doc.read_text(encoding="utf-8"), table, str(doc), config.grouping))
        log(f"rewrote the accuracy table in {doc}")
    return result


def pool_test_set(data: StudyData) -> dict[str, Any]:
    """What the pool test set holds: its snapshot, rows, roles ({role: count} and {id: role}), the rows left out."""
    import csv

    from esnet_tf.labels import open_table
    from esnet_tf.study.data import file_hash

    with open_table(data.pool_labels) as fh:
        role = {r["id"]: (r.get("role") or "") for r in csv.DictReader(fh)}
    ids = data.is_["id"][data.is_pool_test].tolist()
    role_of = {i: role.get(i, "") for i in ids}
    roles: dict[str, int] = {}
    for r in role_of.values():
        roles[r] = roles.get(r, 0) + 1
    return {"pool_snapshot_hash": file_hash(data.pool_labels), "pool": str(data.pool), "n_structures": len(ids),
            "roles": dict(sorted(roles.items())), "left_out": data.pool_left_out, "role_of": role_of,
            "n_pool_training_rows": int((data.is_pool & ~data.is_pool_test).sum()),
            "pool_training_roles": list(data.pool_training_roles),
            "training": "every demo row of labels_snapshot.csv (the variants too, for augmented rows) and the pool "
                        f"snapshot's rows of the roles {', '.join(data.pool_training_roles) or '(none)'}; no "
                        "candidate is used for training, early stopping, tuning or the gas references"}


def imputed_properties(data: StudyData) -> dict[str, list[str]]:
    """{Magpie property: the snapshot's elements whose value was imputed} (esnet_tf.baselines)."""
    from pymatgen.core import Element

    from esnet_tf.baselines import element_property_table

    present = {Element.from_Z(int(z) + 1).symbol for z in np.flatnonzero(data.is_["composition"].sum(axis=0) > 0)}
    return {p: sorted(set(v) & present) for p, v in element_property_table()[1].items() if set(v) & present}
