"""HTVS campaign replay on the demo data: cross-fitted predictions, then `esnet campaign` per strategy.

    python benchmarks/campaign_replay.py                 # both steps
    python benchmarks/campaign_replay.py --step crossfit # only the out-of-fold predictions
    python benchmarks/campaign_replay.py --step replay   # only the campaigns (needs the CSVs)
    python benchmarks/campaign_replay.py --step replay --overwrite   # start them over (a strategy was added)
    python benchmarks/campaign_replay.py --new-snapshot --seeds 2   # on the demo labels as they are now
    python benchmarks/campaign_replay.py --from-study esnet_is_relax_elements   # a study row's predictions

Step 1 (crossfit): `esnet_tf.study.crossfit.crossfit`, grouped k-fold cross-fitting by chemical
system with the accuracy study's protocol: each compound is predicted by `--seeds` ESNet members
that never saw its chemical system (mean and spread), and by a composition-only gradient-boosting
regressor. Writes, in --out: labels_snapshot.csv, oof_predictions.csv, composition_predictions.csv
and crossfit.json. Members finished are kept in --work, so a killed run continues.

With --from-study MODEL, step 1 trains nothing: the out-of-fold predictions are the accuracy study's
cached units of that registry row (`esnet_tf.study.crossfit.oof_from_study`; the study's snapshot must
be the campaign's), written with both replays into OUT/MODEL/ (the composition predictions and CHGNet
relaxations of OUT are reused).

Step 2 (replay): `esnet campaign replay` with every strategy on the snapshot and these predictions
(OUT/replay; the uip strategy reads the demo's CHGNet relaxations, copied to OUT/uip_chgnet.csv
and .json), and the model-guided strategies again with `--refit residual` (OUT/replay_refit);
each writes report.json, report.md, campaign.png, discovered_stable.csv, command.txt and one
folder per strategy (its rounds).
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from esnet_tf.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datasets" / "is_dos" / "demo"
OUT = ROOT / "benchmarks" / "results" / "campaign"
UIP_CSV = "uip_chgnet.csv"


def snapshot_uip(out: Path, new: bool) -> None:
    """Copy the demo's CHGNet relaxations (`esnet uip relax` CSV and JSON) into OUT beside the labels
    snapshot, when it is missing or `new` (--new-snapshot): the replay then reads committed files only."""
    import shutil

    for suffix in (".csv", ".json"):
        src, dst = (DEMO / UIP_CSV).with_suffix(suffix), (out / UIP_CSV).with_suffix(suffix)
        if new or not dst.exists():
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)


def replay(out: Path, batch_size: int, kappa: float, seed: int, start_over: bool = False,
           shared: Path | None = None) -> None:
    """Every strategy without refit (OUT/replay), and the model-guided ones with `--refit residual` (OUT/replay_refit).

    The uip strategy reads OUT/uip_chgnet.csv (+ .json), the potential's relaxations of the snapshot's
    structures (`snapshot_uip`), its N/O/F/Cl references fitted on the other folds of oof_predictions.csv.
    `start_over` (after --new-snapshot, or --overwrite): replace campaigns of an earlier pool (`--overwrite`);
    otherwise a campaign folder of the same pool resumes and one of another pool is an error.
    """
    from esnet_tf.campaign.strategies import STRATEGIES
    from esnet_tf.isdos import PREDICTION_COLUMN

    shared = shared or out  # labels snapshot, composition predictions and CHGNet relaxations
    base = [sys.executable, "-m", "esnet_tf.cli", "campaign", "replay",
            "--labels", str(shared / "labels_snapshot.csv"),
            "--predictions", str(out / "oof_predictions.csv"),
            "--composition-predictions", str(shared / "composition_predictions.csv"),
            "--uip", str(shared / UIP_CSV),
            "--batch-size", str(batch_size), "--kappa", str(kappa), "--seed", str(seed)]
    with open(out / "oof_predictions.csv", newline="") as fh:
        columns = next(csv.reader(fh))
    # lower_bound ranks by a calibrated interval: cross-fitted members give a spread, not an interval
    usable = [s for s in STRATEGIES if s != "lower_bound" or f"{PREDICTION_COLUMN}_lower" in columns]
    refittable = [s for s in usable if s != "random"]  # a refit does not change the random order
    for strategies, extra, name in ((",".join(usable), [], "replay"),
                                    (",".join(refittable), ["--refit", "residual"], "replay_refit")):
        cmd = base + ["--strategy", strategies, *extra, "--out", str(out / name),
                      *(["--overwrite"] if start_over else [])]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        write_text(out / name / "command.txt", " ".join(["esnet", *cmd[3:]]).replace(str(ROOT) + "/", "") + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step", choices=("all", "crossfit", "replay"), default="all")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fold-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3, help="ESNet members per fold (their spread is sigma)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--train-batch-size", type=int, default=16, help="ESNet training batch (examples)")
    ap.add_argument("--only-seed", type=int, help="train only this seed's members (parallel runs), then stop")
    ap.add_argument("--batch-size", type=int, default=10, help="candidates relaxed per round")
    ap.add_argument("--kappa", type=float, default=1.0, help="LCB weight on sigma")
    ap.add_argument("--seed", type=int, default=0, help="campaign seed (random strategy)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--work", default="/tmp/esnet_campaign_crossfit",
                    help="trained members, one subfolder per snapshot hash and setup (a killed run resumes)")
    ap.add_argument("--config", default="small", choices=("small", "small_element_properties", "small_no_attention"),
                    help="ESNet variant of the members (esnet_tf.study.crossfit.ESNET_VARIANTS)")
    ap.add_argument("--augmented", action="store_true",
                    help="train each member also on the IS-augmentation variants of its training structures")
    ap.add_argument("--overwrite", action="store_true",
                    help="start the replays over (e.g. after a strategy or a prediction source was added)")
    ap.add_argument("--from-study", metavar="MODEL",
                    help="out-of-fold predictions from the accuracy study's cached units of this registry row "
                         "(no training; --seeds 3 means study seeds 0,1,2); outputs in OUT/MODEL/")
    ap.add_argument("--study-out", default=str(ROOT / "benchmarks" / "results" / "accuracy"),
                    help="the accuracy study's folder (its cache/ and labels_snapshot.csv)")
    ap.add_argument("--study-epochs", type=int, default=40, help="the study units' epochs")
    ap.add_argument("--new-snapshot", action="store_true",
                    help="copy the current demo labels into OUT/labels_snapshot.csv (the DFT job may have added "
                         "rows; the replays then start over); without it the committed snapshot is reused")
    args = ap.parse_args()
    out = Path(args.out)
    if args.from_study:
        from esnet_tf.study.crossfit import oof_from_study

        if args.new_snapshot:
            raise SystemExit("--from-study reuses the committed snapshot: drop --new-snapshot")
        sub = out / args.from_study
        if args.step in ("all", "crossfit"):
            info = oof_from_study(sub, Path(args.study_out), args.from_study, seeds=tuple(range(args.seeds)),
                                  folds=args.folds, epochs=args.study_epochs, snapshot=out / "labels_snapshot.csv",
                                  command=" ".join(["python", *sys.argv]))
            print(json.dumps(info, indent=1))
        if args.step in ("all", "replay"):
            snapshot_uip(out, False)
            replay(sub, args.batch_size, args.kappa, args.seed, start_over=args.overwrite, shared=out)
        return 0
    if args.step in ("all", "crossfit"):
        from esnet_tf.study.crossfit import crossfit

        info = crossfit(out, Path(args.work), DEMO, folds=args.folds, seeds=args.seeds, epochs=args.epochs,
                        fold_seed=args.fold_seed, batch_size=args.train_batch_size, only_seed=args.only_seed,
                        new_snapshot=args.new_snapshot, augmented=args.augmented, config=args.config,
                        command=" ".join(["python", *sys.argv]))
        if info is None:
            return 0
        print(json.dumps({k: v for k, v in info.items() if k != "trainings"}, indent=1))
    if args.step in ("all", "replay"):
        snapshot_uip(out, args.new_snapshot)
        replay(out, args.batch_size, args.kappa, args.seed, start_over=args.new_snapshot or args.overwrite)
    return 0


if __name__ == "__main__":
    from esnet_tf.errors import UserError

    try:
        sys.exit(main())
    except UserError as err:
        sys.exit(f"campaign_replay: {err}")
