"""Accuracy study: grouped k-fold cross-validation of ESNet against baselines (`esnet_tf.study`).

Folds are grouped by chemical system (default), or by structure prototype with `--group-by prototype`
(leave-prototype-out; default --out benchmarks/results/accuracy_lopo, table markers `lopo-table`).
`--group-by pool` has no folds: every demo row and the hypothetical pool's elements, competitors and label-range rows
train, and the pool's candidates (--pool, its labels snapshotted into --out) are the test set, one unit
per seed (default --out benchmarks/results/accuracy_pool, table markers `pool-table`):

    python benchmarks/accuracy.py --seeds 0,1,2 --epochs 40                 # run / resume every unit
    python benchmarks/accuracy.py --seeds 0,1,2 --epochs 40 --jobs 2        # the same in 2 processes
    python benchmarks/accuracy.py --seeds 0,1,2 --epochs 40 --summary-only --doc docs/study.md
    python benchmarks/accuracy.py --group-by prototype --models mean,gbr_magpie --doc docs/study.md
    python benchmarks/accuracy.py --group-by pool --models mean,gbr_uip,esnet_uip_correction --doc docs/study.md

The study itself (snapshot, folds, the model registry, metrics, statistics, table, figure) is the
library package `esnet_tf.study`; this command turns flags into its `StudyConfig`. Models: see
`esnet_tf.study.models` (`--models` lists them). Results in --out: the labels snapshot, cache/
(one JSON per (model, fold, seed) unit), results.json, table.md and accuracy.png; `--doc FILE`
rewrites the table between `<!-- accuracy-table:start -->` and `<!-- accuracy-table:end -->`
(`<!-- lopo-table:start -->` and `<!-- lopo-table:end -->` with --group-by prototype; `pool-table`
with --group-by pool).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"  # each grouping's --out default below it (esnet_tf.study.run.default_out)
DEMO = ROOT / "datasets" / "is_dos" / "demo"
POOL = ROOT / "datasets" / "is_dos" / "pool"  # --group-by pool's test set
TUNE_SPACE = ROOT / "benchmarks" / "accuracy_search_space.json"  # esnet_is_tuned's search space


def parse_args(argv: Sequence[str] | None):
    from esnet_tf.errors import UserError
    from esnet_tf.dft.pool import POOL_TRAINING_ROLES
    from esnet_tf.study import MODELS, StudyConfig
    from esnet_tf.study.data import check_grouping
    from esnet_tf.study.run import default_folds, default_out

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=None, help="outer folds (default 5; --group-by pool: 1, no folds)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated fold/initialisation seeds")
    ap.add_argument("--epochs", type=int, default=40, help="ESNet maximum epochs (early stopping)")
    ap.add_argument("--batch-size", type=int, default=16, help="ESNet batch (examples)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from: {', '.join(MODELS)}")
    ap.add_argument("--group-by", default="chemsys", metavar="{chemsys,prototype,pool}",
                    help="what the outer folds group by: chemical system, or structure prototype "
                         "(leave-prototype-out); pool: no folds, train on the demo and test on the hypothetical pool "
                         "(--pool)")
    ap.add_argument("--out", help="the study folder (default: benchmarks/results/accuracy, or accuracy_lopo "
                                  "with --group-by prototype, accuracy_pool with --group-by pool)")
    ap.add_argument("--pool", default=None,
                    help="with --group-by pool: the pool dataset folder (labels.csv, calcs/, uip_chgnet.csv; default "
                         "datasets/is_dos/pool)")
    ap.add_argument("--pool-training-roles", default=None, metavar="ROLES",
                    help="with --group-by pool: the pool's roles trained on, comma-separated (default: all of "
                         "element,competitor,label_range; fewer is an ablation: give it its own --out)")
    ap.add_argument("--demo", default=str(DEMO), help="the demo dataset folder (labels.csv, labels_augmented.csv)")
    ap.add_argument("--new-snapshot", action="store_true",
                    help="copy the current labels files into --out (default: reuse the snapshot there if any)")
    ap.add_argument("--summary-only", action="store_true", help="no training: summarise the cached units")
    ap.add_argument("--doc", "--readme", dest="doc",
                    help="rewrite the table between the accuracy-table markers of this file (docs/study.md)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="worker processes computing units in parallel, each with cores/JOBS TensorFlow threads")
    ap.add_argument("--threads", type=int, help="TensorFlow intra-op threads (default: TensorFlow's choice)")
    ap.add_argument("--units-only", action="store_true",
                    help="compute units, no summary (what each --jobs worker runs)")
    args = ap.parse_args(argv)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    grouping = check_grouping(args.group_by)  # one line naming the choices, before any default is looked up
    out = Path(args.out) if args.out else default_out(grouping, RESULTS)
    if args.pool and grouping != "pool":
        raise UserError("--pool goes with --group-by pool (the pool is a test set, not extra folds)")
    pool = (Path(args.pool) if args.pool else POOL) if grouping == "pool" else None
    folds = args.folds if args.folds is not None else default_folds(grouping)
    if args.pool_training_roles is not None and grouping != "pool":
        raise UserError("--pool-training-roles goes with --group-by pool (the pool's rows train only there)")
    roles = (POOL_TRAINING_ROLES if args.pool_training_roles is None
             else tuple(r.strip() for r in args.pool_training_roles.split(",") if r.strip()))
    config = StudyConfig(out=out, demo=Path(args.demo), folds=folds, seeds=seeds, epochs=args.epochs,
                         batch_size=args.batch_size, models=models,
                         new_snapshot=args.new_snapshot, summary_only=args.summary_only, units_only=args.units_only,
                         jobs=args.jobs, threads=args.threads, tune_space=TUNE_SPACE,
                         table_file=Path(args.doc) if args.doc else None, grouping=grouping, pool=pool,
                         pool_training_roles=roles,
                         command="python benchmarks/accuracy.py " + " ".join(sys.argv[1:]))
    return config


def worker_command(config, threads: int) -> list[str]:
    """This script as one units-only worker process of `config`."""
    from esnet_tf.study.run import worker_args

    return [sys.executable, str(Path(__file__).resolve()), *worker_args(config, threads)]


def main(argv: Sequence[str] | None = None) -> int:
    from esnet_tf.errors import UserError
    from esnet_tf.study import run_study

    try:
        config = parse_args(argv)
        run_study(config, worker=lambda threads: worker_command(config, threads))
    except UserError as exc:
        print(f"accuracy.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
