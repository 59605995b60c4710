"""What a set of the pool's training rows does: one `--group-by pool` study against another on the same candidates.

    python benchmarks/accuracy.py --group-by pool --pool-training-roles element,competitor \\
        --out benchmarks/results/accuracy_pool_no_label_range --seeds 0,1,2 --epochs 40 --models MODELS
    python benchmarks/pool_ablation.py --doc docs/study.md

Both studies need the same snapshot: copy `labels_snapshot.csv`, `labels_augmented_snapshot.csv` and
`pool_labels_snapshot.csv` of the full study (benchmarks/results/accuracy_pool) into the ablation's --out
before it runs (without --new-snapshot). Per model that both computed: MAE of each on the candidates both
tested (|error| averaged over the seeds), the paired difference (ablation − full) with a 95 % bootstrap
interval over structures and the Wilcoxon signed-rank p (`esnet_tf.study.out_of_sample.compare_pool_studies`),
eV/atom. Writes --json and, with --doc, the table between `<!-- pool-ablation-table:start -->` and
`<!-- pool-ablation-table:end -->`.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARKERS = ("<!-- pool-ablation-table:start -->", "<!-- pool-ablation-table:end -->")


def table_markdown(comparison: Mapping[str, Any]) -> str:
    """The comparison as a markdown table with a caption naming both studies' training rows."""
    study, other = comparison["study"], comparison["other"]
    roles = comparison["trained_on"]
    n = comparison["n_training"]

    def name(path: str) -> str:
        return Path(path).name

    lines = [f"`{name(study)}` trains on the demo and the pool's {', '.join(roles[study]) or 'no'} rows "
             f"({n[study]} structures); `{name(other)}` on the demo and the pool's {', '.join(roles[other])} rows "
             f"({n[other]} structures); snapshots {comparison['snapshot_hash'][study]} and "
             f"{comparison['snapshot_hash'][other]}. MAE on the candidates both tested (|error| averaged over the "
             "seeds), eV/atom; Δ = ablation − full, paired per structure, 95 % bootstrap interval, Wilcoxon p.",
             "", f"| model | n | MAE `{name(study)}` | MAE `{name(other)}` | Δ [95 % CI] | p | ablation lower |",
             "|---|---|---|---|---|---|---|"]
    for model, r in comparison["rows"].items():
        p = "n/a" if r["p_value"] is None else f"{r['p_value']:.2g}"
        lines.append(f"| {model} | {r['n']} | {r['mae_model']:.3f} | {r['mae_row']:.3f} | {r['diff']:+.3f} "
                     f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}] | {p} | {r['n_model_lower']} of {r['n']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from esnet_tf.atomic import write_text
    from esnet_tf.errors import UserError
    from esnet_tf.study.out_of_sample import compare_pool_studies
    from esnet_tf.study.report import replace_between

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ablation", default=str(RESULTS / "accuracy_pool_no_label_range"),
                    help="the study trained on fewer of the pool's roles (its --out)")
    ap.add_argument("--full", default=str(RESULTS / "accuracy_pool"), help="the study trained on all of them")
    ap.add_argument("--json", default=None, help="the comparison as JSON (default: ABLATION/comparison.json)")
    ap.add_argument("--doc", default=None, help="rewrite the table between the pool-ablation-table markers")
    args = ap.parse_args(argv)
    try:
        for d in (args.ablation, args.full):
            if not (Path(d) / "results.json").is_file():
                raise UserError(f"{d}: no results.json: run `benchmarks/accuracy.py --group-by pool --out {d}` first")
        comparison = compare_pool_studies(args.ablation, args.full)
        if not comparison["rows"]:
            raise UserError(f"{args.ablation} and {args.full}: no model tested on the same candidates in both: "
                            "give both studies the same snapshot and models")
        table = table_markdown(comparison)
        out = Path(args.json) if args.json else Path(args.ablation) / "comparison.json"
        write_text(out, json.dumps(comparison, indent=1))
        print(table + f"wrote {out}")
        if args.doc:
            doc = Path(args.doc)
            write_text(doc, replace_between(doc.read_text(encoding="utf-8"), table, MARKERS, str(doc)))
            print(f"rewrote the ablation table in {doc}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
