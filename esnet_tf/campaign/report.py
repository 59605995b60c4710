"""Campaign report: strategies compared on stable found against DFT spent; JSON, Markdown table, PNG, CSV.

For each strategy: the DFT cost (s, relaxation equivalents, fraction of relaxing every candidate)
to find 50 / 90 / 100 % of the truly stable candidates, the saving against relaxing everything,
and the fraction of the oracle's saving. The oracle relaxes in true-E_hull order and pays the IS
single points as the ESNet strategies do; the `ideal` row is a perfect ranking that needs no
screening calculation at all (the lower bound of any campaign). Costs without the IS single
points (`relaxations only`) are given too, because their share depends on the DFT settings.

    rep = compare(results, pool)             # results: {strategy: CampaignResult}
    write_report(rep, results, "campaign/")  # report.json, report.md, campaign.png, discovered_stable.csv
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.atomic import write_text
from esnet_tf.campaign.engine import RECALL_LEVELS, CampaignResult, json_text, write_discovered
from esnet_tf.campaign.hull import true_e_above_hull
from esnet_tf.campaign.pool import Pool
from esnet_tf.campaign.strategies import ESNET_STRATEGIES, ranking
from esnet_tf.screening.cost import cost_at_recall
from esnet_tf.screening.metrics import stable_mask
from esnet_tf.screening.pipeline import HULL_TOL

#: the target check: an ESNet strategy reaches TARGET_RECALL of the stable at >= this fraction of the oracle's saving
TARGET_FRACTION_OF_ORACLE = 0.8
TARGET_RECALL = 0.9


def _ideal(pool: Pool, threshold: float,
           results: Mapping[str, CampaignResult] | None = None) -> dict[str, np.ndarray]:
    """Cost (s) and stable found of the true order without any screening calculation.

    When the oracle ran, its own acquisition order with its round-0 cost (IS single points,
    references) taken off: the two rows then differ by exactly that cost (candidates with E_hull
    equal up to round-off, e.g. all those on the hull, are not re-ordered by a fresh hull's noise).
    """
    if results is not None and "oracle" in results:
        t = results["oracle"].trajectory
        return {"cost_s": np.asarray(t["cost_s"], float) - float(t["cost_s"][0]),
                "n_stable_found": np.asarray(t["n_stable_found"])}
    eh = true_e_above_hull(pool.references, pool.compositions, pool.truth, pool.ids)
    stable = stable_mask(eh, threshold, tol=HULL_TOL)
    order = ranking(eh)
    rx = np.asarray(pool.relax_wall_time_s, float)[order]
    return {"cost_s": np.concatenate([[0.0], np.cumsum(rx)]),
            "n_stable_found": np.concatenate([[0], np.cumsum(stable[order])])}


def _row(name: str, cost: np.ndarray, found: np.ndarray, n_stable: int, relax_all: float, unit_s: float,
         is_s: float, screening_s: float = 0.0) -> dict[str, Any]:
    row: dict[str, Any] = {"strategy": name, "is_single_points_s": is_s}
    for q in RECALL_LEVELS:
        row[f"recall_{q:g}"] = cost_at_recall(cost, found, n_stable, q, relax_all_s=relax_all, unit_s=unit_s)
        rel = cost_at_recall(cost - is_s - screening_s, found, n_stable, q, relax_all_s=relax_all, unit_s=unit_s)
        row[f"recall_{q:g}_relaxations_only"] = {k: rel.get(k) for k in ("cost_s", "cost_fraction", "saving")}
    return row


def compare(results: Mapping[str, CampaignResult], pool: Pool, *, threshold: float = 0.0) -> dict[str, Any]:
    """The strategies table (JSON-ready) of finished replay campaigns over one pool."""
    if not results:
        raise ValueError("no campaign results to compare")
    if not pool.is_replay:
        return {"replay": False, "strategies": {k: r.summary for k, r in results.items()},
                "note": "a live campaign: no truths, so no recall; see each strategy's discovered list"}
    any_res = next(iter(results.values()))
    n_stable = int(any_res.summary["n_true_stable"])
    relax_all = float(np.sum(pool.relax_wall_time_s))
    unit = pool.relaxation_equivalent_s()
    rows: dict[str, dict[str, Any]] = {}
    for name, res in results.items():
        t = res.trajectory
        rows[name] = _row(name, t["cost_s"], t["n_stable_found"], n_stable, relax_all, unit,
                          res.summary["is_single_points_s"], res.summary.get("screening_s", 0.0))
        rows[name]["screening_s"] = res.summary.get("screening_s", 0.0)
        rows[name].update({k: res.summary[k] for k in ("stop", "n_rounds", "n_relaxed", "n_discovered",
                                                        "total_cost_s", "total_cost_relaxations")})
    ideal = _ideal(pool, threshold, results)
    rows["ideal"] = _row("ideal (true order, no IS single points)", ideal["cost_s"], ideal["n_stable_found"],
                         n_stable, relax_all, unit, 0.0)
    oracle_saving = {q: (rows["oracle"][f"recall_{q:g}"].get("saving") if "oracle" in rows else None)
                     for q in RECALL_LEVELS}
    ideal_saving = {q: rows["ideal"][f"recall_{q:g}"].get("saving") for q in RECALL_LEVELS}
    for row in rows.values():
        for q in RECALL_LEVELS:
            s = row[f"recall_{q:g}"].get("saving")
            row[f"recall_{q:g}"]["fraction_of_oracle_saving"] = (
                s / oracle_saving[q] if s is not None and oracle_saving[q] else None)
            row[f"recall_{q:g}"]["fraction_of_ideal_saving"] = (
                s / ideal_saving[q] if s is not None and ideal_saving[q] else None)
    target = _target(rows)
    return {"replay": True, "n_candidates": pool.n, "n_references": len(pool.references.ids),
            "n_true_stable": n_stable, "threshold_ev_per_atom": threshold,
            "relax_all_s": relax_all, "relaxation_equivalent_s": unit,
            "is_single_points_all_s": float(np.sum(pool.is_wall_time_s)),
            "is_share_of_relax_all": float(np.sum(pool.is_wall_time_s)) / relax_all,
            "strategies": rows, "target": target}


def _cost90(rows: Mapping[str, Any], name: str) -> float:
    c = rows.get(name, {}).get(f"recall_{TARGET_RECALL:g}", {}).get("cost_s")
    return math.inf if c is None else float(c)


def _target(rows: Mapping[str, Any]) -> dict[str, Any]:
    """The target check, per ESNet strategy (the recommended one first): it reaches 90 % of the stable at
    >= 80 % of the oracle's saving and at lower cost than random and composition."""
    out: dict[str, Any] = {"recall": TARGET_RECALL, "fraction_of_oracle_saving_needed": TARGET_FRACTION_OF_ORACLE}
    for name in ESNET_STRATEGIES:
        if name not in rows:
            continue
        r = rows[name][f"recall_{TARGET_RECALL:g}"]
        frac = r.get("fraction_of_oracle_saving")
        beats = {b: _cost90(rows, name) < _cost90(rows, b) for b in ("random", "composition") if b in rows}
        out[name] = {"fraction_of_oracle_saving": frac, "saving": r.get("saving"),
                     "meets_oracle_fraction": bool(frac is not None and frac >= TARGET_FRACTION_OF_ORACLE),
                     "beats": beats, "met": bool(frac is not None and frac >= TARGET_FRACTION_OF_ORACLE
                                                  and all(beats.values()))}
    return out


def _fmt(x: Any, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def table_markdown(rep: Mapping[str, Any]) -> str:
    """The strategies table: cost to 50/90/100 % of the stable (s and relaxation equivalents), savings."""
    if not rep.get("replay"):
        return "live campaign: no truths, no table\n"
    unit = rep["relaxation_equivalent_s"]
    head = ["| strategy | IS single points (s) | cost to 50 % (s / relax.) | cost to 90 % (s / relax.) | "
            "cost to 100 % (s / relax.) | saving at 90 % | fraction of oracle saving at 90 % | "
            "saving at 90 %, relaxations only |",
            "|---|---|---|---|---|---|---|---|"]
    lines = []
    for name, row in rep["strategies"].items():
        cells = []
        for q in RECALL_LEVELS:
            c = row[f"recall_{q:g}"].get("cost_s")
            cells.append("not reached" if c is None else f"{c:,.0f} / {c / unit:.1f}")
        r90 = row[f"recall_{TARGET_RECALL:g}"]
        screen = row.get("screening_s") or 0.0
        is_cell = f"{row['is_single_points_s']:,.0f}" + (f" (+ {screen:,.0f} CPU s of the potential)" if screen else "")
        lines.append(f"| {name if name != 'ideal' else row['strategy']} | {is_cell} | "
                     + " | ".join(cells) + f" | {_fmt(r90.get('saving'), '.1%')} | "
                     f"{_fmt(r90.get('fraction_of_oracle_saving'), '.2f')} | "
                     f"{_fmt(row[f'recall_{TARGET_RECALL:g}_relaxations_only'].get('saving'), '.1%')} |")
    foot = (f"\n{rep['n_candidates']} candidates, {rep['n_true_stable']} truly stable (E_hull <= "
            f"{rep['threshold_ev_per_atom']:g} eV/atom against references + all candidates); relaxing all costs "
            f"{rep['relax_all_s']:,.0f} s = {rep['n_candidates']} relaxations (1 relaxation = {unit:.1f} s); the IS "
            f"single points of all candidates cost {rep['is_single_points_all_s']:,.0f} s "
            f"({rep['is_share_of_relax_all']:.0%} of relaxing all).\n")
    screened = {n: r["screening_s"] for n, r in rep["strategies"].items() if r.get("screening_s")}
    if screened:
        foot += ("Screening without DFT (counted in the costs, and taken off in 'relaxations only'): "
                 + "; ".join(f"{n} {v:,.0f} s" for n, v in screened.items())
                 + " (the potential's CPU seconds: the candidates' relaxations and its elemental references).\n")
    return "\n".join(head + lines) + "\n" + foot


def campaign_plot(rep: Mapping[str, Any], results: Mapping[str, CampaignResult], pool: Pool,
                  path: str | Path, *, threshold: float = 0.0) -> Path:
    """Stable found against cumulative DFT cost (s; top axis: relaxation equivalents), one line per strategy."""
    from esnet_tf.screening.plots import pyplot, save_figure

    plt = pyplot()
    unit = rep["relaxation_equivalent_s"]
    n_stable = rep["n_true_stable"]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.11, top=0.84)
    styles = {"lcb": ("tab:blue", "-"), "greedy": ("tab:cyan", "-"), "stable_per_cost": ("tab:green", "-"),
              "random": ("tab:grey", "-"), "composition": ("tab:orange", "-"), "uip": ("tab:red", "-"),
              "oracle": ("k", "--")}
    for name, res in results.items():
        t = res.trajectory
        colour, ls = styles.get(name, (None, "-"))
        r90 = rep["strategies"][name][f"recall_{TARGET_RECALL:g}"]
        label = name + (f" (90 %: {r90['saving']:.0%} saved)" if r90.get("saving") is not None else "")
        ax.step(t["cost_s"], t["n_stable_found"], where="post", color=colour, ls=ls, lw=1.4, label=label)
    ideal = _ideal(pool, threshold, results)
    ax.step(ideal["cost_s"], ideal["n_stable_found"], where="post", color="0.5", ls=":", lw=1.0,
            label="ideal (true order, no IS)")
    ax.axvline(rep["relax_all_s"], color="k", lw=0.7)
    ax.text(rep["relax_all_s"], 0.55 * n_stable, " relax all", fontsize=7, va="bottom")
    for q in (0.5, 0.9):
        ax.axhline(q * n_stable, color="0.8", lw=0.6, ls="--")
    ax.set_xlabel("cumulative DFT wall time (s): IS single points + relaxations"
                  + (" (+ potential CPU s)" if any(r.get("screening_s") for r in rep["strategies"].values()) else ""))
    ax.set_ylabel(f"truly stable found (of {n_stable})")
    top = ax.secondary_xaxis("top", functions=(lambda s: s / unit, lambda r: r * unit))
    top.set_xlabel(f"relaxation equivalents (1 = {unit:.0f} s)", fontsize=8)
    ax.set_xlim(0, max(float(r.trajectory["cost_s"][-1]) for r in results.values()) * 1.02)
    ax.set_ylim(0, n_stable * 1.03)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"HTVS campaign replay: {rep['n_candidates']} candidates", fontsize=9)
    return save_figure(fig, Path(path), 150)


def write_report(rep: Mapping[str, Any], results: Mapping[str, CampaignResult], pool: Pool,
                 out_dir: str | Path, *, threshold: float = 0.0) -> list[Path]:
    """report.json, report.md, campaign.png (replay) and discovered_stable.csv (of the recommended ESNet
    strategy when it ran, else of the first ESNet strategy that ran, else of the first strategy)."""
    out = Path(out_dir)
    written = [write_text(out / "report.json", json_text(rep))]
    written.append(write_text(out / "report.md", table_markdown(rep)))
    if rep.get("replay"):
        written.append(campaign_plot(rep, results, pool, out / "campaign.png", threshold=threshold))
    main = next((n for n in (*ESNET_STRATEGIES, *results) if n in results), None)
    if main is not None:
        written.append(write_discovered(results[main].summary["discovered"], out / "discovered_stable.csv"))
    return written
