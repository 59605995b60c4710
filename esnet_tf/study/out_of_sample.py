"""Scores of a shipped model on held-out rows: the risk–coverage curve and the domain flag's split (also what
`scripts/train_pretrained.py` writes into a model's metadata), and the out-of-sample scores on rows of
chemical systems it never saw (the pool).

`score_predictions` reads the CSV that `esnet predict NAME POOL_DIR` writes (with the pool's truths) and
scores it per group of rows: MAE, Spearman, the MAE of predicting the set's own mean (the reference
row), the `is_shift` baseline (the IS formation energy minus the training data's median relaxation
energy), coverage of the 90 % interval, flagged and unflagged MAE, and the count of unflagged
predictions of E_f < 0 for a compound truly above 0.5 eV/atom. `risk_coverage` gives the MAE of the
rows kept when only the lowest-σ fraction is kept. eV/atom throughout.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: a compound predicted stable-looking (E_f < 0) though truly above this is a confident wrong answer (eV/atom)
WRONG_SIGN_ABOVE = 0.5
#: fractions of the rows kept (lowest σ first) of the risk–coverage curve
COVERAGES = tuple(round(0.1 * k, 1) for k in range(1, 11))


def median_relaxation_energy(labels_csv: str | Path) -> float:
    """Median of E_f(IS) − E_f(relaxed) over the rows of a labels CSV that have both (eV/atom): what
    `is_shift` subtracts (the training data's, never the scored set's)."""
    gaps = []
    with open(labels_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            try:
                gap = float(row["is_formation_energy_per_atom"]) - float(row["formation_energy_per_atom"])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(gap):
                gaps.append(gap)
    if not gaps:
        raise ValueError(f"{labels_csv}: no row with both is_formation_energy_per_atom and formation_energy_per_atom")
    return float(np.median(gaps))


def model_snapshot(splits_json: str | Path) -> tuple[set[str], float | None]:
    """The ids of every row a shipped model's snapshot held (any split of its splits.json: trained on,
    calibrated on, early-stopped on or tested in distribution), and the median relaxation energy
    E_f(IS) − E_f(relaxed) of its train rows (eV/atom; None when they lack the IS energy)."""
    import json

    splits = json.loads(Path(splits_json).read_text(encoding="utf-8"))["splits"]
    seen = {str(r["id"]) for rows in splits.values() for r in rows}
    gaps = [r["is_formation_energy_per_atom"] - r["formation_energy_per_atom"] for r in splits.get("train", [])
            if r.get("is_formation_energy_per_atom") is not None]
    return seen, (float(np.median(gaps)) if gaps else None)


def risk_coverage(truth: np.ndarray, pred: np.ndarray, std: np.ndarray,
                  coverages: Sequence[float] = COVERAGES) -> list[dict[str, float]]:
    """MAE (eV/atom) of the rows kept when keeping the fraction `c` with the lowest σ, for each c:
    [{fraction_kept, n_kept, mae}]."""
    order = np.argsort(np.asarray(std, float), kind="stable")
    err = np.abs(np.asarray(pred, float) - np.asarray(truth, float))[order]
    out = []
    for c in coverages:
        k = max(1, int(round(c * len(err))))
        out.append({"fraction_kept": float(c), "n_kept": k, "mae": float(err[:k].mean())})
    return out


def flag_scores(truth: np.ndarray, pred: np.ndarray, flagged: Sequence[bool]) -> dict[str, Any]:
    """Rows flagged by the domain column (`flagged`), and the MAE (eV/atom) of the flagged and the unflagged rows."""
    flagged = np.asarray(flagged, bool)
    err = np.abs(np.asarray(pred, float) - np.asarray(truth, float))
    return {"n": int(len(err)), "n_flagged": int(flagged.sum()),
            "mae_flagged": float(err[flagged].mean()) if flagged.any() else None,
            "mae_unflagged": float(err[~flagged].mean()) if (~flagged).any() else None}


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) >= 3 else None


def group_scores(rows: Sequence[Mapping[str, Any]], relaxation_median: float) -> dict[str, Any]:
    """Scores of one group of scored rows (dicts with truth, pred, std, lower, upper, flagged, is_ef)."""
    if not rows:
        return {"n": 0}
    truth = np.array([r["truth"] for r in rows], float)
    pred = np.array([r["pred"] for r in rows], float)
    err = np.abs(pred - truth)
    flagged = np.array([r["flagged"] for r in rows], bool)
    out: dict[str, Any] = {
        "n": len(rows), "mae": float(err.mean()), "spearman": _spearman(pred, truth),
        "mae_of_the_set_mean": float(np.abs(truth - truth.mean()).mean()),
        "truth_range": [float(truth.min()), float(truth.max())],
        **{k: v for k, v in flag_scores(truth, pred, flagged).items() if k != "n"},
        "unflagged_negative_but_above_0_5": int(np.sum(~flagged & (pred < 0) & (truth > WRONG_SIGN_ABOVE))),
        "negative_but_above_0_5": int(np.sum((pred < 0) & (truth > WRONG_SIGN_ABOVE))),
    }
    is_ef = np.array([r["is_ef"] for r in rows], float)
    ok = np.isfinite(is_ef)
    out["is_shift"] = {"n": int(ok.sum()), "mae": float(np.abs(is_ef[ok] - relaxation_median - truth[ok]).mean())
                       if ok.any() else None,
                       "spearman": _spearman(is_ef[ok], truth[ok]) if ok.any() else None}
    lower = np.array([r["lower"] for r in rows], float)
    upper = np.array([r["upper"] for r in rows], float)
    if np.all(np.isfinite(lower) & np.isfinite(upper)):
        out["interval_coverage"] = float(np.mean((truth >= lower) & (truth <= upper)))
    out["risk_coverage"] = risk_coverage(truth, pred, np.array([r["std"] for r in rows], float))
    return out


def score_predictions(predictions_csv: str | Path, labels_csv: str | Path, relaxation_median: float,
                      group_column: str = "role", exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Scores of `esnet predict`'s CSV against `labels_csv` (its truths and `group_column`, the pool's role):
    all rows, then each group. Rows without a truth are counted, not scored; rows in `exclude` (the
    model's own snapshot) are counted and left out."""
    from esnet_tf.pretrained import DOMAIN_COLUMN, LOWER_COLUMN, PREDICTION_COLUMN, PREDICTION_STD_COLUMN, \
        UPPER_COLUMN

    with open(labels_csv, newline="", encoding="utf-8") as fh:
        labels = {r["id"]: r for r in csv.DictReader(fh)}
    scored, no_truth, excluded = [], [], []
    with open(predictions_csv, newline="", encoding="utf-8") as fh:
        for p in csv.DictReader(fh):
            if p["id"] in exclude:
                excluded.append(p["id"])
                continue
            lab = labels.get(p["id"], {})
            try:
                truth = float(lab["formation_energy_per_atom"])
            except (KeyError, TypeError, ValueError):
                no_truth.append(p["id"])
                continue

            def num(key: str, row: Mapping[str, Any] = p) -> float:
                try:
                    return float(row.get(key) or "nan")
                except ValueError:
                    return math.nan

            scored.append({"id": p["id"], "group": lab.get(group_column) or "", "truth": truth,
                           "pred": num(PREDICTION_COLUMN), "std": num(PREDICTION_STD_COLUMN),
                           "lower": num(LOWER_COLUMN), "upper": num(UPPER_COLUMN),
                           "flagged": bool((p.get(DOMAIN_COLUMN) or "").strip()),
                           "is_ef": num("is_formation_energy_per_atom", lab)})
    groups = sorted({r["group"] for r in scored})
    return {"n_rows": len(scored) + len(no_truth) + len(excluded), "without_truth": no_truth,
            "n_in_the_models_training_snapshot": len(excluded),
            "relaxation_median_ev_per_atom": relaxation_median,
            "all": group_scores(scored, relaxation_median),
            "by_" + group_column: {g: group_scores([r for r in scored if r["group"] == g], relaxation_median)
                                   for g in groups}}


def screening_scores(predictions_csv: str | Path, labels_csv: str | Path, reference_labels: Sequence[str | Path],
                     exclude: set[str] | frozenset[str] = frozenset(), role: str = "candidate") -> dict[str, Any]:
    """Stability screening (E_hull <= 0 eV/atom) of the rows of `role` whose hull is complete (`hull_complete`
    in `labels_csv`), outside `exclude`: the predicted and the true E_hull against the hull of `reference_labels`
    and `labels_csv`'s other rows (the candidates themselves left out of it; candidates of one system compete,
    each side with its own energies). Precision and recall with the domain flag (a flagged candidate is
    not predicted stable: it needs DFT) and without it, ranked by the mean and by the 90 % interval's
    lower bound (`esnet_tf.screening`)."""
    from esnet_tf.errors import UserError
    from esnet_tf.screening.pipeline import screen_rows
    from esnet_tf.screening.references import load_references

    with open(labels_csv, newline="", encoding="utf-8") as fh:
        labels = {r["id"]: r for r in csv.DictReader(fh)}
    rows = []
    with open(predictions_csv, newline="", encoding="utf-8") as fh:
        for p in csv.DictReader(fh):
            lab = labels.get(p["id"])
            if (p["id"] in exclude or lab is None or lab.get("role") != role
                    or str(lab.get("hull_complete")).lower() != "true" or not lab.get("formation_energy_per_atom")):
                continue
            rows.append({**p, "formula": lab.get("formula") or p.get("formula", ""),
                         "formation_energy_per_atom": lab["formation_energy_per_atom"]})
    if not rows:
        return {"n": 0, "note": f"no {role} row with a complete hull"}
    refs = load_references([*map(str, reference_labels), str(labels_csv)])
    out: dict[str, Any] = {"n": len(rows), "rule": "stable if E_hull <= 0 eV/atom; hull of the reference labels "
                           f"and the other rows; {role}s of one system compete (candidates_in_hull)"}
    for rank_by in ("mean", "lower"):
        try:
            res = screen_rows(rows, refs, mode="ehull", threshold=0.0, candidates_in_hull=True, rank_by=rank_by,
                              costs=str(labels_csv) if "relax_wall_time_s" in next(iter(labels.values())) else None)
        except UserError as exc:
            return {"n": len(rows), "error": str(exc)}
        m = res.metrics
        out[f"ranked_by_{rank_by}"] = {
            "n_truly_stable": int(np.sum(res.table["true_stable"] & res.table["has_truth"])),
            **{k: m.get(k) for k in ("precision", "recall", "f1")},
            "needs_dft": m.get("needs_dft"),
            "saving_at_90_recall": (m.get("cost") or {}).get("at_target_recall")}
    return out


def pool_study_errors(study_dir: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, float]], dict[str, float]]:
    """(results.json, {model: {id: |error| averaged over the seeds}}, {id: truth}) of a `--group-by pool` study's
    cached units of its results.json's snapshot and seeds (eV/atom)."""
    import json

    study_dir = Path(study_dir)
    result = json.loads((study_dir / "results.json").read_text(encoding="utf-8"))
    errors: dict[str, dict[str, list[float]]] = {}
    truth: dict[str, float] = {}
    for path in sorted((study_dir / "cache" / result["snapshot_hash"]).glob("*_bypool-candidates.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        if rec["seed"] not in result["seeds"]:
            continue
        for i, p, t in zip(rec["test_ids"], rec["pred"], rec["truth"]):
            errors.setdefault(rec["model"], {}).setdefault(i, []).append(abs(p - t))
            truth[i] = t
    return result, {m: {i: float(np.mean(v)) for i, v in per_id.items()} for m, per_id in errors.items()}, truth


def paired_errors(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, Any] | None:
    """|error| of `a` against `b` on the ids both hold: MAE of each, the mean difference (a − b) with a 95 %
    bootstrap interval over structures, the Wilcoxon signed-rank p and how often a is lower (eV/atom); None
    below two shared ids."""
    from esnet_tf.study.stats import bootstrap_ci, paired_comparison

    ids = sorted(set(a) & set(b))
    if len(ids) < 2:
        return None
    x, y = np.array([a[i] for i in ids]), np.array([b[i] for i in ids])
    diff, low, high = bootstrap_ci(x - y, lambda d: float(d.mean()))
    return {"n": len(ids), "mae_model": float(x.mean()), "mae_row": float(y.mean()), "diff": diff, "ci_low": low,
            "ci_high": high, "p_value": paired_comparison(x, y)["p_value"], "n_model_lower": int(np.sum(x < y))}


def compare_with_study(predictions_csv: str | Path, study_dir: str | Path,
                       exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """The model's |error| against each row of the study's pool test set (`--group-by pool` units in
    `study_dir`, its results.json's snapshot), paired per structure on the rows both scored: per study row,
    MAE of both, the mean difference (model − row; the row's |error| averaged over its seeds) with a
    95 % bootstrap interval over structures and the Wilcoxon signed-rank p (eV/atom)."""
    from esnet_tf.pretrained import PREDICTION_COLUMN

    result, errors, truth = pool_study_errors(study_dir)
    with open(predictions_csv, newline="", encoding="utf-8") as fh:
        ours = {r["id"]: abs(float(r[PREDICTION_COLUMN]) - truth[r["id"]]) for r in csv.DictReader(fh)
                if r["id"] in truth and r["id"] not in exclude}
    out: dict[str, Any] = {"study": str(study_dir), "snapshot_hash": result["snapshot_hash"],
                           "seeds": result["seeds"], "rows": {}}
    for model, per_id in errors.items():
        paired = paired_errors(ours, per_id)
        if paired is not None:
            out["rows"][model] = paired
    return out


def compare_pool_studies(study_dir: str | Path, other_dir: str | Path) -> dict[str, Any]:
    """Each model of two `--group-by pool` studies (an ablation and its full run) on the test structures both
    scored: `paired_errors` of `study_dir`'s row against `other_dir`'s (seed-averaged |error|, eV/atom), and
    what each study trained on (results.json's test_set)."""
    result, errors, _ = pool_study_errors(study_dir)
    other, other_errors, _ = pool_study_errors(other_dir)
    rows = {m: paired_errors(errors[m], other_errors[m]) for m in result["models"]
            if m in errors and m in other_errors}
    return {"study": str(study_dir), "other": str(other_dir),
            "trained_on": {str(study_dir): result["test_set"].get("pool_training_roles"),
                           str(other_dir): other["test_set"].get("pool_training_roles")},
            "n_training": {str(study_dir): result["n_structures"], str(other_dir): other["n_structures"]},
            "snapshot_hash": {str(study_dir): result["snapshot_hash"], str(other_dir): other["snapshot_hash"]},
            "rows": {m: r for m, r in rows.items() if r is not None}}


def risk_coverage_figure(result: Mapping[str, Any], path: Path, title: str) -> Path:
    """PNG of MAE against the fraction kept (lowest σ first), all rows and each group, with the set-mean MAE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from esnet_tf.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    curves = {"all rows": result["all"], **{k: v for k, v in next(
        v for k, v in result.items() if k.startswith("by_")).items()}}
    for name, g in curves.items():
        if not g.get("n"):
            continue
        rc = g["risk_coverage"]
        ax.plot([p["fraction_kept"] for p in rc], [p["mae"] for p in rc], marker="o", label=f"{name} (n = {g['n']})")
    ax.axhline(result["all"]["mae_of_the_set_mean"], color="grey", ls="--", label="predicting the set's mean (all)")
    ax.set_xlabel("fraction kept (lowest ensemble σ first)")
    ax.set_ylabel("MAE of the kept rows (eV/atom)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
