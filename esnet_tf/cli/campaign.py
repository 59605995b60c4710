"""`esnet campaign`: an HTVS campaign over a pool, replayed from labels or run live with GPAW.

Flags -> `CampaignConfig` and a pool (`esnet_tf.campaign.pool_from_labels` / `live.live_pool`) ->
`run_strategies` -> `report`. Energies in eV/atom, costs in s of DFT wall time.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from esnet_tf.errors import UserError


def _common(p: argparse.ArgumentParser) -> None:
    from esnet_tf.campaign.engine import REFITS
    from esnet_tf.campaign.strategies import RECOMMENDED, STRATEGIES

    p.add_argument("--strategy", default=RECOMMENDED, metavar="NAME[,NAME...]",
                   help=f"acquisition rule(s), comma-separated, each run in OUT/NAME/: {', '.join(STRATEGIES)} "
                   "(stable_per_cost, the recommended rule: P(stable) per estimated relaxation second; greedy: "
                   "lowest predicted E_hull; lcb: E_hull - kappa sigma (needs a std column); lower_bound: E_hull of "
                   "the calibrated 90 %% interval's lower bound (needs predicted_formation_energy_per_atom_lower); "
                   "random; composition: a composition-only "
                   "model's E_hull; uip: a universal potential's E_hull, no IS single point (replay: --uip CSV); "
                   "oracle: true E_hull, replay only)")
    p.add_argument("--batch-size", type=int, default=10, metavar="N", help="candidates relaxed per round")
    p.add_argument("--kappa", type=float, default=1.0, metavar="K",
                   help="LCB weight on the predicted std sigma (eV/atom)")
    p.add_argument("--threshold", type=float, default=0.0, metavar="EV",
                   help="stable if E_hull <= threshold (eV/atom)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategy")
    p.add_argument("--refit", choices=REFITS, default="none",
                   help="after each round, update the predictions from what has been relaxed (residual: shift "
                   "by the mean error of the relaxed candidates of the same chemical system; fine-tune: retrain "
                   "the --model .keras on them, live only)")
    p.add_argument("--budget-s", type=float, metavar="S", help="stop at this DFT wall time (s)")
    p.add_argument("--budget-relaxations", type=float, metavar="N",
                   help="stop at this many relaxation equivalents of DFT")
    p.add_argument("--stop-expected-stable", type=float, metavar="N",
                   help="stop when the expected number of stable candidates left (from the predictions and "
                   "their std, floor --min-std) is below N")
    p.add_argument("--min-std", type=float, default=0.05, metavar="EV",
                   help="floor of the predicted std (eV/atom) in the expected number of stable left")
    p.add_argument("--max-rounds", type=int, metavar="N",
                   help="stop after round N (a rerun with a larger N, or none, continues the campaign)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="campaign directory: one folder per strategy with campaign.json, rounds/round_NNNN.json, "
                   "result.json, discovered_stable.csv; report.json, report.md, campaign.png; a rerun resumes")
    p.add_argument("--overwrite", action="store_true",
                   help="start the campaigns in --out again from round 0: each new campaign runs in a hidden folder "
                   "beside the old one and replaces the old one's own files (campaign.json, rounds/round_NNNN.json, "
                   "result.json, discovered_stable.csv) only once it is complete; other files are never removed. "
                   "Without it, a rerun continues the campaigns in --out")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """`esnet campaign replay ...` and `esnet campaign live ...`."""
    sub = parser.add_subparsers(dest="mode", metavar="MODE", required=True)
    rp = sub.add_parser("replay", help="replay a campaign over labelled data whose relaxations and DFT costs are "
                        "known", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    rp.add_argument("--labels", action="append", required=True, metavar="CSV",
                    help="labels.csv (formula, formation_energy_per_atom eV/atom, is_wall_time_s, "
                    "relax_wall_time_s s); repeatable; elemental rows are the references, compounds the pool")
    rp.add_argument("--predictions", metavar="CSV",
                    help="ESNet predictions CSV (id, predicted_formation_energy_per_atom[, _std] eV/atom), "
                    "out-of-fold for an honest replay (benchmarks/campaign_replay.py makes one)")
    rp.add_argument("--composition-predictions", metavar="CSV",
                    help="a composition-only model's predictions CSV, for the composition strategy")
    rp.add_argument("--uip", metavar="CSV",
                    help="an `esnet uip relax` CSV (its .json beside it) for the uip strategy: the potential's "
                    "formation energies, its N/O/F/Cl references fitted on the other folds' labels only (the "
                    "`fold` column of --predictions when it has one, else --uip-folds grouped by chemical system); "
                    "its CPU seconds are the strategy's screening cost. Needs no torch")
    rp.add_argument("--uip-folds", type=int, default=5, metavar="K",
                    help="grouped folds (by chemical system) for --uip when --predictions has no fold column")
    rp.add_argument("--uip-fold-seed", type=int, default=0, metavar="S", help="seed of those folds")
    rp.add_argument("--target-recall", type=float, metavar="R",
                    help="stop when this fraction of the truly stable candidates is found (default: run until "
                    "every candidate is relaxed, which gives the whole curve)")
    _common(rp)
    lv = sub.add_parser("live", help="a live campaign: GPAW IS single points, ESNet predictions, GPAW relaxations",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    lv.add_argument("structures", nargs="+", metavar="STRUCTURE",
                    help="CIF, POSCAR, pymatgen Structure JSON or prototype spec JSON; the elemental structures "
                    "among them are the references (relaxed first)")
    lv.add_argument("--model", metavar="PATH", help="ESNet .keras or SavedModel (an ensemble's std is used)")
    lv.add_argument("--predictions", metavar="CSV", help="instead of --model: predictions CSV by id")
    from esnet_tf.trust import TRUST_FLAG, TRUST_HELP

    lv.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)
    lv.add_argument("--relax", choices=("eos", "optimizer"), default="eos", help="relaxation of the chosen")
    lv.add_argument("--tiny", action="store_true", help="GPAW's tiny settings (seconds per structure; tests)")
    lv.add_argument("--workers", type=int, default=2, help="parallel single-threaded GPAW processes")
    lv.add_argument("--fine-tune-epochs", type=int, default=10, metavar="N",
                    help="epochs of each round's fine-tune (--refit fine-tune), from the original model")
    _common(lv)


def _config(args: argparse.Namespace):
    from esnet_tf.campaign import CampaignConfig

    return CampaignConfig(batch_size=args.batch_size, kappa=args.kappa, threshold=args.threshold, seed=args.seed,
                          refit=args.refit, budget_s=args.budget_s, budget_relaxations=args.budget_relaxations,
                          target_recall=getattr(args, "target_recall", None),
                          stop_expected_stable=args.stop_expected_stable, min_std=args.min_std,
                          max_rounds=args.max_rounds)


def _strategies(text: str) -> list[str]:
    from esnet_tf.campaign.strategies import STRATEGIES

    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STRATEGIES]
    if not names or bad:
        raise UserError(f"--strategy {text!r}: unknown {bad or 'empty'}; use one or more of {', '.join(STRATEGIES)}")
    return names


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the campaigns, then write the report."""
    from esnet_tf.atomic import exclusive
    from esnet_tf.campaign.engine import run_strategies
    from esnet_tf.campaign.report import compare, table_markdown, write_report

    config = _config(args)
    strategies = _strategies(args.strategy)
    relaxer = refitter = None
    if args.refit == "fine-tune" and (args.mode != "live" or not args.model):
        raise UserError("--refit fine-tune needs a live campaign with --model M.keras (a replay has no model)")
    if args.mode == "replay":
        from esnet_tf.campaign import pool_from_labels

        preds = {k: v for k, v in (("esnet", args.predictions), ("composition", args.composition_predictions)) if v}
        if "uip" in strategies and not args.uip:
            raise UserError("--strategy uip needs --uip CSV: the `esnet uip relax` CSV of the pool's structures "
                            "(its .json beside it)")
        pool = pool_from_labels(args.labels, predictions=preds)
        if args.uip:
            from esnet_tf.campaign.pool import fold_column, uip_predictions

            if args.uip_folds < 2:
                raise UserError(f"--uip-folds must be >= 2, got {args.uip_folds}")
            folds = fold_column(args.predictions) if args.predictions else None
            pool.sources["uip"] = uip_predictions(args.uip, pool, folds, folds=args.uip_folds,
                                                  fold_seed=args.uip_fold_seed)
    else:
        from esnet_tf.campaign.live import live_pool
        from esnet_tf.dft.settings import DFTSettings

        if args.workers < 1:
            raise UserError(f"--workers must be >= 1, got {args.workers}")
        pool, relaxer = live_pool(args.structures, cache_dir=Path(args.out) / "calcs",
                                  settings=DFTSettings.tiny() if args.tiny else DFTSettings(),
                                  model=args.model, predictions=args.predictions, relax=args.relax,
                                  workers=args.workers, trust_model_code=args.trust_model_code)
        if args.refit == "fine-tune":
            from esnet_tf.campaign.refit import ESNetFineTune

            refitter = ESNetFineTune(args.model, relaxer.inputs, epochs=args.fine_tune_epochs, seed=args.seed,
                                     std=pool.sources["esnet"].std)
    print(f"pool: {pool.n} candidates, {len(pool.references.ids)} references, predictions: "
          f"{', '.join(pool.sources) or 'none'}", file=sys.stderr)
    out = Path(args.out)
    with exclusive(out / "report.json", "campaign report"):
        kw = {"relaxer": relaxer} if relaxer is not None else {}
        results = run_strategies(pool, config, strategies, out, overwrite=args.overwrite, refitter=refitter,
                                 progress=lambda m: print(m, file=sys.stderr), **kw)
        rep = compare(results, pool, threshold=config.threshold)
        written = write_report(rep, results, pool, out, threshold=config.threshold)
    said: set[str] = set()
    for name, res in results.items():
        s = res.summary
        for line in s.get("warnings", []):  # the same source's checks once, not once per strategy
            if line not in said:
                said.add(line)
                print(f"warning: {line}", file=sys.stderr)
        nd = s.get("needs_dft")
        if nd:
            print(f"{name}: needs DFT: {nd['n_flagged']} candidate(s) flagged outside the model's domain, "
                  f"{nd['n_flagged_predicted_stable']} of the {nd['n_predicted_stable']} predicted stable; "
                  f"{nd['n_flagged_not_relaxed']} flagged never relaxed (see needs_dft in {name}/result.json)")
        print(f"{name}: stop {s['stop']} after {s['n_rounds']} rounds, relaxed {s['n_relaxed']}/{s['n_candidates']}, "
              f"DFT {s['total_cost_s']:.0f} s, on the hull {s['n_discovered']}"
              + (f", truly stable found {s['n_stable_found']}/{s['n_true_stable']}" if s["n_true_stable"] else ""))
    if rep.get("replay"):
        print(table_markdown(rep))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
