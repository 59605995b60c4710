"""The study's summary: pooled intervals and paired tests per model, the markdown table and the figure.

`summarise` turns the unit records into per-model statistics (pooled out-of-fold MAE / RMSE with
bootstrap intervals per complete seed, averaged over seeds; fold-level mean ± std; polymorph
ranking; screening) and paired tests of every ESNet and baseline row against the best baseline row;
`table_markdown` writes the table a document embeds between `TABLE_START` and `TABLE_END`
(`replace_table`); `study_figure` draws MAE with intervals and a parity plot. eV/atom.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.errors import UserError
from esnet_tf.study.data import check_grouping
from esnet_tf.study.metrics import SCREEN_KEYS
from esnet_tf.study.models import MODELS
from esnet_tf.study.stats import bootstrap_ci, mae_of, mean_std, paired_comparison, rmse_of

TABLE_START, TABLE_END = "<!-- accuracy-table:start -->", "<!-- accuracy-table:end -->"
#: the markers of each grouping's table (`data.GROUPINGS`): the chemical-system study's is TABLE_START/END
MARKERS = {"chemsys": (TABLE_START, TABLE_END),
           "prototype": ("<!-- lopo-table:start -->", "<!-- lopo-table:end -->"),
           "pool": ("<!-- pool-table:start -->", "<!-- pool-table:end -->")}
#: how the caption names each grouping's folds
FOLD_CAPTION = {"chemsys": "grouped {folds}-fold CV by chemical system",
                "prototype": "leave-prototype-out {folds}-fold CV (grouped by structure prototype; the IS-augmentation "
                             "variants follow their parent)",
                "pool": "trained on the demo and the pool's elements, competitors and label-range rows, tested on "
                        "the pool's candidates (one unit per seed)"}
#: how the table names the comparator of the paired tests: the best `baseline` row by pooled MAE, whatever its
#: inputs (composition only, the IS energy or the potential's energy)
COMPARATOR = "best baseline"

Units = Mapping[str, Mapping[tuple[int, int], Mapping[str, Any]]]
"""model -> (fold, seed) -> unit record (`pred`, `truth`, `metrics`, `wall_s`, ...)."""


def _group(model: str) -> str | None:
    entry = MODELS.get(model)
    return entry.group if entry is not None else None


def summarise(units: Units, folds: int, seeds: Sequence[int]) -> dict[str, Any]:
    """Per model: pooled out-of-fold MAE / RMSE with bootstrap CIs (per complete seed, then averaged
    over seeds), fold-level mean ± std, polymorph ranking, screening; paired tests of the ESNet and other baseline rows
    against the best baseline row (`best_composition_model`)."""
    summary: dict[str, Any] = {}
    for model, got in units.items():
        if not got:
            continue
        complete = [s for s in seeds if all((k, s) in got for k in range(folds))]
        s_out: dict[str, Any] = {"units": len(got), "complete_seeds": complete}
        cis: dict[str, list] = {"mae": [], "rmse": []}
        for s in complete:
            err = np.concatenate([np.asarray(got[(k, s)]["pred"]) - np.asarray(got[(k, s)]["truth"])
                                  for k in range(folds)])
            cis["mae"].append(bootstrap_ci(err, mae_of, seed=s))
            cis["rmse"].append(bootstrap_ci(err, rmse_of, seed=s))
        for key in ("mae", "rmse"):
            s_out[f"pooled_{key}"] = ({"value": float(np.mean([c[0] for c in cis[key]])),
                                       "ci_low": float(np.mean([c[1] for c in cis[key]])),
                                       "ci_high": float(np.mean([c[2] for c in cis[key]])),
                                       "per_seed": {str(s): c for s, c in zip(complete, cis[key])}}
                                      if complete else None)
        rows = list(got.values())
        for key in ("mae", "rmse", *SCREEN_KEYS, "cost_reduction_at_90_recall",
                    *(f"oof_hull_{k}" for k in SCREEN_KEYS)):
            s_out[key] = mean_std([r["metrics"].get(key) for r in rows])
        pc = sum(r["metrics"]["polymorph_correct"] for r in rows)
        pt = sum(r["metrics"]["polymorph_total"] for r in rows)
        s_out["polymorph_ranking"] = {"correct": pc, "total": pt, "fraction": pc / pt if pt else None}
        s_out["wall_s"] = mean_std([r.get("wall_s") for r in rows])
        summary[model] = s_out
    comp = [m for m in MODELS if _group(m) == "baseline" and summary.get(m, {}).get("pooled_mae")]
    best = min(comp, key=lambda m: summary[m]["pooled_mae"]["value"]) if comp else None
    for model, s_out in summary.items():
        if best and model != best and _group(model) in ("esnet", "baseline"):  # every row but the reference
            keys = sorted(set(units[model]) & set(units[best]))
            s_out["vs_best_composition"] = {
                "baseline": best, **paired_comparison([units[model][u]["metrics"]["mae"] for u in keys],
                                                      [units[best][u]["metrics"]["mae"] for u in keys])}
    return {"best_composition_model": best, "models": summary, "cpu_s_per_candidate": _cpu_costs(units)}


def _ci(d: Mapping[str, Any] | None) -> str:
    return "n/a" if not d else f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def _ms(d: Mapping[str, Any]) -> str:
    return "n/a" if d["mean"] is None else f"{d['mean']:.2f} ± {d['std']:.2f}"


def _polymorph_cell(pr: Mapping[str, Any]) -> str:
    """'0.86 (465.0/543)': the fraction of compositions whose lowest polymorph was predicted lowest, or n/a."""
    return f"{pr['fraction']:.2f} ({pr['correct']:.1f}/{pr['total']})" if pr["total"] else "n/a"


def _not_computed(result: Mapping[str, Any]) -> list[str]:
    """The table's last lines naming the rows asked for that have no unit yet (said, not dropped)."""
    missing = [m for m in result.get("models", []) if m not in result["summary"]["models"]]
    return ["", f"Not computed yet (no unit in the cache): {', '.join(missing)}."] if missing else []


def table_markdown(result: Mapping[str, Any]) -> str:
    """The results table (markdown) with a caption line; rows in the registry's order (the pool test set's:
    `pool_table_markdown`)."""
    if result.get("grouping") == "pool":
        return pool_table_markdown(result)
    s = result["summary"]
    best = s["best_composition_model"]
    augmented = ", ".join(result.get("augmented_models", [])) or "no model"
    lines = [
        f"Snapshot `{result['snapshot_hash']}` (labels.csv): {result['n_structures']} structures; "
        f"`{result.get('augmented_snapshot_hash', result['snapshot_hash'])}` with labels_augmented.csv's "
        f"{result['n_variants']} IS-augmentation variants ({augmented}); "
        f"{FOLD_CAPTION[result.get('grouping', 'chemsys')].format(folds=result['folds'])}, "
        f"{_fold_sizes_caption(result)}seeds "
        f"{','.join(map(str, result['seeds']))}, ESNet {result['epochs']} epochs max. MAE / RMSE in eV/atom on the "
        f"pooled out-of-fold predictions, 95 % bootstrap CI over structures (per seed, averaged over seeds); "
        f"ΔMAE = paired per (fold, seed) MAE difference to the {COMPARATOR} ({best}), t-interval and "
        f"Wilcoxon signed-rank p; screening (E_hull <= 0, mean ± std over units) and polymorph ranking pooled "
        f"over units. {_cost_caption(s.get('cpu_s_per_candidate') or {})}",
        "",
        f"| model | seeds done (units) | MAE [95 % CI] | RMSE [95 % CI] | ΔMAE vs {COMPARATOR.removesuffix(' model')} "
        "[95 % CI], p "
        "| polymorph ranking | precision | recall | F1 | DAF | CPU s per candidate |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        m = s["models"].get(model)
        if m is None:
            continue
        v = m.get("vs_best_composition")
        delta = "—"
        if v and v["n_pairs"]:
            ci = f" [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]" if v["ci_low"] is not None else ""
            p = f", p = {v['p_value']:.3g}" if v["p_value"] is not None else ""
            delta = f"{v['mean_diff']:+.3f}{ci}{p} (n = {v['n_pairs']})"
        pr = m["polymorph_ranking"]
        frac = _polymorph_cell(pr)
        seeds = ",".join(map(str, m["complete_seeds"])) or "none"
        lines.append(f"| {model} | {seeds} ({m['units']}) | {_ci(m['pooled_mae'])} | {_ci(m['pooled_rmse'])} | "
                     f"{delta} | {frac} | {_ms(m['precision'])} | {_ms(m['recall'])} | {_ms(m['f1'])} | "
                     f"{_ms(m['daf'])} | {_cpu_cell(model, s.get('cpu_s_per_candidate') or {})} |")
    return "\n".join(lines + _not_computed(result)) + "\n"


def _fold_sizes_caption(result: Mapping[str, Any]) -> str:
    """'structures per fold (seed 0: a/b/...; ...), ' from results.json's `fold_sizes` (recorded for the
    non-default groupings: their folds can be very unequal)."""
    sizes = result.get("fold_sizes")
    if not sizes:
        return ""
    return ("structures per fold (" + "; ".join(f"seed {s}: {'/'.join(map(str, n))}" for s, n in sizes.items())
            + "), ")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def study_figure(result: Mapping[str, Any], units: Units, path: Path) -> Path | None:
    """Pooled out-of-fold MAE [95 % CI] per model (left), and predicted against true E_f of esnet_is
    and the best baseline on one seed's out-of-fold predictions (right), as a PNG at `path`. None
    when no model has a complete seed."""
    from esnet_tf.screening.plots import pyplot, save_figure

    models, best = result["summary"]["models"], result["summary"]["best_composition_model"]
    rows = sorted(((m, s["pooled_mae"]) for m, s in models.items() if s.get("pooled_mae")),
                  key=lambda r: -r[1]["value"])  # the lowest MAE at the top
    if not rows:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.6), gridspec_kw={"width_ratios": [1.15, 1]})

    def colour(model: str) -> str:
        return {"esnet": "tab:blue", "baseline": "0.35"}.get(_group(model) or "", "0.65")

    for i, (m, d) in enumerate(rows):
        left.errorbar(d["value"], i, xerr=[[d["value"] - d["ci_low"]], [d["ci_high"] - d["value"]]], fmt="o",
                      color=colour(m), capsize=3, ms=5)
    left.set_yticks(range(len(rows)), [f"{m} ({_n(len(models[m]['complete_seeds']), 'seed')})" for m, _ in rows],
                    fontsize=8)
    if best:
        left.axvline(models[best]["pooled_mae"]["value"], color="0.35", ls=":", lw=0.8)
    left.set_xlabel("MAE (eV/atom), pooled out of fold, 95 % bootstrap CI")
    by = "leave-prototype-out" if result.get("grouping", "chemsys") == "prototype" else "grouped"
    if result.get("grouping") == "pool":
        left.set_title(f"trained on {result['n_structures']} demo and pool structures, tested on "
                       f"{result['test_set']['n_structures']} pool candidates", fontsize=9)
        left.set_xlabel("MAE (eV/atom) on the pool, 95 % bootstrap CI")
    else:
        left.set_title(f"{result['n_structures']} structures, {by} {result['folds']}-fold CV", fontsize=9)
    shown = [m for m in (best, "esnet_is") if m and models.get(m, {}).get("complete_seeds")]
    seeds = sorted(set.intersection(*(set(models[m]["complete_seeds"]) for m in shown))) if shown else []
    lo, hi = math.inf, -math.inf
    for m in shown if seeds else []:
        got = [units[m][(k, seeds[0])] for k in range(result["folds"])]
        truth = np.concatenate([r["truth"] for r in got])
        pred = np.concatenate([r["pred"] for r in got])
        right.scatter(truth, pred, s=9, alpha=0.6, edgecolors="none", color=colour(m),
                      label=f"{m}: MAE {np.abs(pred - truth).mean():.3f}")
        lo, hi = min(lo, truth.min(), pred.min()), max(hi, truth.max(), pred.max())
    if seeds:
        pad = 0.05 * (hi - lo)
        right.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        right.set_xlim(lo - pad, hi + pad)
        right.set_ylim(lo - pad, hi + pad)
        right.legend(fontsize=8, loc="upper left")
        right.set_title(f"{'pool' if result.get('grouping') == 'pool' else 'out-of-fold'} predictions, seed "
                        f"{seeds[0]}", fontsize=9)
    right.set_xlabel("true formation energy (eV/atom)")
    right.set_ylabel("predicted (eV/atom)")
    fig.tight_layout()
    return save_figure(fig, path, 120)


def replace_table(text: str, table: str, source: str = "the document", grouping: str = "chemsys") -> str:
    """`text` with the block between the markers of `grouping`'s table (MARKERS; TABLE_START and TABLE_END
    for the chemical-system study) replaced by `table`; every other block is left as it is.

    UserError unless the text holds exactly one pair of those markers, in that order.
    """
    return replace_between(text, table, MARKERS[check_grouping(grouping)], source)


def replace_between(text: str, table: str, markers: tuple[str, str], source: str = "the document") -> str:
    """`text` with the block between `markers` (start, end) replaced by `table`; UserError unless the text
    holds exactly one pair of them, in that order."""
    start, end = markers
    a, b = text.find(start), text.find(end)
    if a < 0 or b < 0 or b < a or text.count(start) != 1 or text.count(end) != 1:
        raise UserError(f"{source} needs exactly one {start} ... {end} pair (in that order)")
    return text[:a + len(start)] + "\n" + table.strip("\n") + "\n" + text[b:]


# ---------------------------------------------------------------- the pool test set (no folds)


def _spearman(pred: np.ndarray, truth: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    if len(truth) < 3 or np.ptp(pred) == 0 or np.ptp(truth) == 0:  # undefined for a constant prediction (the mean)
        return None
    return float(spearmanr(pred, truth).statistic)


def pool_summary(units: Units, seeds: Sequence[int], role_of: Mapping[str, str]) -> dict[str, Any]:
    """`summarise` of the pool test set's units (one per seed, fold 0 of 1) plus, per model: Spearman's rank
    correlation of predictions and truths (scipy, per seed; mean, min, max), the MAE per role of the test rows
    (candidate, competitor, element; mean over seeds) and `vs_best_paired`: the per-structure paired bootstrap
    of |error| - |error of the best baseline| on the same structures (per seed, bounds averaged), in place of
    the per-fold test, which has one pair per seed here. `set_mean`: the MAE of predicting the test set's own
    mean (a reference no model can know), with its bootstrap interval. eV/atom."""
    summary = summarise(units, 1, seeds)
    best = summary["best_composition_model"]
    truth_of: dict[str, float] = {}
    for model, got in units.items():
        m = summary["models"].get(model)
        if m is None:
            continue
        rhos, by_role, n_role = [], {}, {}
        for _, rec in sorted(got.items(), key=lambda kv: kv[0][1]):
            pred, truth = np.asarray(rec["pred"], float), np.asarray(rec["truth"], float)
            truth_of.update(zip(rec["test_ids"], truth.tolist()))
            rhos.append(_spearman(pred, truth))
            roles = np.array([role_of.get(i, "") for i in rec["test_ids"]])
            for r in sorted(set(roles.tolist())):
                by_role.setdefault(r, []).append(float(np.abs(pred - truth)[roles == r].mean()))
                n_role[r] = int((roles == r).sum())
        ok = [r for r in rhos if r is not None]
        m["spearman"] = {"mean": float(np.mean(ok)), "min": float(min(ok)), "max": float(max(ok)), "n": len(ok)} \
            if ok else None
        m["mae_by_role"] = {r: {"mean": float(np.mean(v)), "n_structures": n_role[r]} for r, v in by_role.items()}
        m.pop("vs_best_composition", None)  # one pair per seed: replaced by the per-structure paired bootstrap
        if best and model != best and _group(model) in ("esnet", "baseline"):
            m["vs_best_paired"] = _paired_bootstrap(units[model], units[best], seeds, best)
    if truth_of:
        truth = np.array([truth_of[i] for i in sorted(truth_of)], float)
        dev = truth - truth.mean()
        value, lo, hi = bootstrap_ci(dev, lambda e: float(np.abs(e - e.mean()).mean()), seed=0)
        roles = np.array([role_of.get(i, "") for i in sorted(truth_of)])
        summary["set_mean"] = {"value": value, "ci_low": lo, "ci_high": hi, "mean": float(truth.mean()),
                               "n": int(len(truth)),
                               "mae_by_role": {r: float(np.abs(truth[roles == r] - truth[roles == r].mean()).mean())
                                               for r in sorted(set(roles.tolist()))},
                               "note": "the MAE of predicting the test set's own mean (each role's own mean in "
                                       "mae_by_role); the interval resamples structures and recomputes the mean"}
    return summary


def _paired_bootstrap(a: Mapping[tuple[int, int], Mapping[str, Any]], b: Mapping[tuple[int, int], Mapping[str, Any]],
                      seeds: Sequence[int], baseline: str) -> dict[str, Any]:
    """Mean of |error_a| - |error_b| over the structures both units of a seed test (matched by id), with a
    percentile bootstrap over structures (same resample for both), per seed; bounds averaged over seeds."""
    per_seed = {}
    for s in seeds:
        if (0, s) not in a or (0, s) not in b:
            continue
        ea = dict(zip(a[(0, s)]["test_ids"], np.abs(np.asarray(a[(0, s)]["pred"]) - np.asarray(a[(0, s)]["truth"]))))
        eb = dict(zip(b[(0, s)]["test_ids"], np.abs(np.asarray(b[(0, s)]["pred"]) - np.asarray(b[(0, s)]["truth"]))))
        ids = sorted(set(ea) & set(eb))
        d = np.array([ea[i] - eb[i] for i in ids], float)
        value, lo, hi = bootstrap_ci(d, lambda x: float(x.mean()), seed=s)
        per_seed[str(s)] = {"mean_diff": value, "ci_low": lo, "ci_high": hi, "n_structures": len(ids),
                            "n_lower": int((d < 0).sum())}
    if not per_seed:
        return {"baseline": baseline, "seeds": []}
    v = list(per_seed.values())
    return {"baseline": baseline, "seeds": [int(s) for s in per_seed],
            **{k: float(np.mean([x[k] for x in v])) for k in ("mean_diff", "ci_low", "ci_high")},
            "n_structures": v[0]["n_structures"], "per_seed": per_seed}


def _training_roles_text(test_set: Mapping[str, Any]) -> str:
    """The pool rows trained on, in words: `pool_training_roles` of the run (runs before 2026-12-07 record none:
    they trained on the elements and competitors, the only roles then)."""
    names = {"element": "elements", "competitor": "competitors", "label_range": "label-range compounds"}
    words = [names.get(r, r) for r in test_set.get("pool_training_roles", ("element", "competitor"))]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def pool_table_markdown(result: Mapping[str, Any]) -> str:
    """The pool test set's table (markdown) with a caption line: rows in the registry's order, then the set mean."""
    s, t = result["summary"], result["test_set"]
    best = s["best_composition_model"]
    roles = list(t["roles"])
    why = {"no_relaxed_formation_energy": "without a relaxed formation energy",
           "chemical_system_in_the_demo": "in a chemical system the demo has"}
    left = "; ".join(f"{len(v)} {why.get(k, k.replace('_', ' '))}: {', '.join(v[:5])}{', ...' if len(v) > 5 else ''}"
                     for k, v in t["left_out"].items() if v) or "none"
    lines = [
        f"Units keyed by `{result['snapshot_hash']}` (the demo and pool snapshots). Training: every row of the demo "
        f"snapshot `{result['demo_snapshot_hash']}` (labels.csv) and the pool snapshot's "
        f"{t.get('n_pool_training_rows', 0)} {_training_roles_text(t)} ({result['n_structures']} structures; "
        f"{result['n_variants']} IS-augmentation variants of demo rows for augmented rows); test: the pool snapshot "
        f"`{t['pool_snapshot_hash']}`'s {t['n_structures']} structures "
        f"({', '.join(f'{n} {r}' for r, n in t['roles'].items())}), hypothetical ternaries of chemical systems "
        f"no training row has (left out: {left}), never used for training, early stopping, tuning or the gas "
        f"references. Seeds "
        f"{','.join(map(str, result['seeds']))} (one unit each), ESNet {result['epochs']} epochs max. MAE / RMSE "
        f"in eV/atom, 95 % bootstrap CI over the test structures (per seed, averaged over seeds); Spearman: rank "
        f"correlation of prediction and truth (mean over seeds, [min, max] where they differ; n/a: a constant "
        f"prediction); ΔMAE = paired per-structure "
        f"difference of |error| to the {COMPARATOR} on the pool ({best}), bootstrap over structures (no p value: "
        "the seeds repeat the training on one test set); MAE per role: mean over seeds. \"set mean\" predicts "
        "the test set's own mean (a reference no model can know; per role, that role's mean). Screening columns "
        "are left out: most candidates' hulls are not complete yet (the pool's competitors are still being "
        "computed); the campaign scores stability on the complete ones.",
        "",
        f"| model | seeds done (units) | MAE [95 % CI] | RMSE [95 % CI] | Spearman | ΔMAE vs {COMPARATOR} [95 % CI] "
        f"| MAE {' / '.join(roles)} | polymorph ranking |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        m = s["models"].get(model)
        if m is None:
            continue
        v = m.get("vs_best_paired")
        delta = "—"
        if v and v.get("seeds"):
            delta = (f"{v['mean_diff']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}] "
                     f"(n = {v['n_structures']})")
        rho = m.get("spearman")
        spread = rho and f"{rho['min']:.2f}" != f"{rho['max']:.2f}"
        rho_cell = "n/a" if not rho else (f"{rho['mean']:.2f}" + (f" [{rho['min']:.2f}, {rho['max']:.2f}]"
                                                                    if spread else ""))
        by_role = m.get("mae_by_role", {})
        role_cell = " / ".join(f"{by_role[r]['mean']:.3f}" if r in by_role else "n/a" for r in roles)
        pr = m["polymorph_ranking"]
        frac = _polymorph_cell(pr)
        seeds = ",".join(map(str, m["complete_seeds"])) or "none"
        lines.append(f"| {model} | {seeds} ({m['units']}) | {_ci(m['pooled_mae'])} | {_ci(m['pooled_rmse'])} | "
                     f"{rho_cell} | {delta} | {role_cell} | {frac} |")
    sm = s.get("set_mean")
    if sm:
        role_cell = " / ".join(f"{sm['mae_by_role'][r]:.3f}" if r in sm["mae_by_role"] else "n/a" for r in roles)
        lines.append(f"| set mean (reference) | — | {_ci(sm)} | — | — | — | {role_cell} | — |")
    return "\n".join(lines + _not_computed(result)) + "\n"


# ---------------------------------------------------------------- CPU seconds per candidate


def _cpu_costs(units: Units) -> dict[str, Any]:
    """Mean CPU seconds per structure of each per-candidate calculation (`data.candidate_cpu_seconds`) over
    the structures the units test, from the committed demo's calculations; {} when the units name none."""
    from esnet_tf.resources import demo_dir
    from esnet_tf.study.data import candidate_cpu_seconds

    ids = sorted({i for got in units.values() for r in got.values() for i in r.get("test_ids", ())})
    return candidate_cpu_seconds(demo_dir(), ids) if ids else {}


def _cpu_cell(model: str, costs: Mapping[str, Any]) -> str:
    """The CPU seconds one candidate of `model` needs: the sum of its steps' means (`models.candidate_needs`)."""
    from esnet_tf.study.models import candidate_needs

    needs = candidate_needs(model)
    if not needs:
        return "~0"
    if any(n not in costs for n in needs):
        return "n/a"
    return f"{sum(costs[n]['mean_s'] for n in needs):.1f}"


def _cost_caption(costs: Mapping[str, Any]) -> str:
    names = {"is_single_point": "DFT IS single point (GPAW)", "uip_relaxation": "CHGNet relaxation",
             "sevennet_relaxation": "SevenNet relaxation", "dft_relaxation": "DFT relaxation after it"}
    got = [f"{names.get(k, k)} {v['mean_s']:.2f} s ({v['n_cpu_timed']} of {v['n']} CPU-timed, the rest wall)"
           if v["n_cpu_timed"] < v["n"] else f"{names.get(k, k)} {v['mean_s']:.2f} s"
           for k, v in costs.items()]
    return ("CPU s per candidate: the mean CPU seconds of the calculations a row needs per candidate (~0: composition "
            "only), summed: " + "; ".join(got) + ".") if got else "CPU s per candidate: not measured."
