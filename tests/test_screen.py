"""Stability screening on the real Materials Project Li-Fe-O hull (../shared/fixtures/mp)."""
from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from esnet_tf import screening as S
from esnet_tf.errors import UserError
from esnet_tf.cli import main as cli_main

LIFEO = "Li-Fe-O_computed_structure_entries.json.gz"
ELEMENTAL = "mp_elemental_reference_entries_2023-02-07.json.gz"


@pytest.fixture(scope="session")
def mp(fixtures_dir: Path) -> dict:
    """The 375 real MP Li-Fe-O entries, their formation energies (eV/atom) and pymatgen's E_hull."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    warnings.filterwarnings("ignore", message="No Pauling electronegativity")
    d = fixtures_dir / "mp"
    entries = S.load_entries(d / LIFEO)
    elemental = S.load_entries(d / ELEMENTAL)
    mu = {e.composition.elements[0].symbol: e.energy_per_atom for e in elemental}
    # formation energy of each entry against MP's elemental reference entries (Matbench convention)
    ef = np.array([(e.energy - sum(n * mu[el.symbol] for el, n in e.composition.items()))
                   / e.composition.num_atoms for e in entries])
    pd = PhaseDiagram(entries)
    ehull = np.array([pd.get_e_above_hull(e) for e in entries])
    return {"dir": d, "entries": entries, "elemental": elemental, "ef": ef, "ehull": ehull, "pd": pd}


def _rows(mp: dict, pred: np.ndarray | None = None, **extra_cols) -> list[dict[str, str]]:
    pred = mp["ef"] if pred is None else pred
    rows = []
    for i, e in enumerate(mp["entries"]):
        r = {"id": e.entry_id, "formula": e.composition.reduced_formula,
             S.PRED_COL: repr(float(pred[i])), S.EF_COL: repr(float(mp["ef"][i])),
             S.EHULL_COL: repr(float(mp["ehull"][i]))}
        r.update({k: repr(float(v[i])) for k, v in extra_cols.items()})
        rows.append(r)
    return rows


def _refs(mp: dict) -> S.ReferenceSet:
    return S.load_references([mp["dir"] / LIFEO], mp["dir"] / ELEMENTAL)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


# ------------------------------------------------------------------------ E_hull and metrics

def test_true_energies_reproduce_pymatgen_ehull_and_perfect_metrics(mp):
    res = S.screen_rows(_rows(mp), _refs(mp), keep_overlapping_references=True, progress=False)
    pred = np.array([r["predicted_e_above_hull"] for r in res.rows])
    np.testing.assert_allclose(pred, mp["ehull"], atol=1e-9)
    m = res.metrics
    n_stable = int(np.sum(mp["ehull"] <= 1e-9))
    assert n_stable == len(mp["pd"].stable_entries) > 3
    assert m["status_counts"] == {"ok": 375} and m["n_candidates"] == 375
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (n_stable, 0, 0, 375 - n_stable)
    assert m["precision"] == m["recall"] == m["f1"] == m["accuracy"] == 1.0
    assert m["daf"] == pytest.approx(375 / n_stable)
    assert m["mae"] == pytest.approx(0, abs=1e-9) and m["mae_formation_energy_per_atom"] == 0


def test_candidates_in_hull_rebuilds_the_full_phase_diagram(mp):
    """Only elemental references + the candidates' (true) predictions = pymatgen on all entries."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    refs = S.load_references([mp["dir"] / ELEMENTAL])
    res = S.screen_rows(_rows(mp), refs, candidates_in_hull=True, progress=False)
    li_fe_o = [e for e in mp["elemental"] if e.composition.elements[0].symbol in ("Li", "Fe", "O")]
    pd = PhaseDiagram(mp["entries"] + li_fe_o)
    want = [pd.get_e_above_hull(e) for e in mp["entries"]]
    np.testing.assert_allclose([r["predicted_e_above_hull"] for r in res.rows], want, atol=1e-9)
    assert res.metrics["f1"] == 1.0


def test_default_places_candidates_against_references_without_themselves(mp):
    """Ternary candidates vs the binary hull: pymatgen's allow_negative E_hull, self excluded."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    idx = [i for i, e in enumerate(mp["entries"]) if len(e.composition.elements) == 3]
    rows = [r for i, r in enumerate(_rows(mp)) if i in set(idx)]
    res = S.screen_rows(rows, _refs(mp), progress=False)
    assert res.metrics["references"]["n_excluded_as_candidates"] == len(idx) == 175
    others = [e for i, e in enumerate(mp["entries"]) if i not in set(idx)]
    pd = PhaseDiagram(others)
    want = [pd.get_decomp_and_e_above_hull(mp["entries"][i], allow_negative=True)[1] for i in idx]
    np.testing.assert_allclose([r["predicted_e_above_hull"] for r in res.rows], want, atol=1e-9)
    # truth is placed on the same hull, so the E_hull error equals the formation-energy error (0)
    assert res.metrics["mae"] == pytest.approx(0, abs=1e-9)
    assert any(w < 0 for w in want)  # some ternaries lie below the binary hull: newly stable


def test_perturbed_predictions_match_hand_confusion_matrix(mp):
    ehull, pred = mp["ehull"], mp["ef"].copy()
    stable = np.flatnonzero(ehull <= 1e-9)
    near = [i for i in np.argsort(ehull) if 1e-3 < ehull[i] < 0.2][:4]
    fn_idx = stable[:3]
    pred[fn_idx] += 0.05                      # 3 stable ones predicted 50 meV/atom too high
    pred[near] -= ehull[near] + 0.03          # 4 unstable ones predicted 30 meV/atom below the hull
    res = S.screen_rows(_rows(mp, pred), _refs(mp), keep_overlapping_references=True, progress=False)
    m = res.metrics
    n_pos = len(stable)
    tp, fn, fp = n_pos - 3, 3, 4
    tn = 375 - tp - fn - fp
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (tp, fn, fp, tn)
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["recall"] == pytest.approx(tp / n_pos)
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["accuracy"] == pytest.approx((tp + tn) / 375)
    assert m["daf"] == pytest.approx((tp / (tp + fp)) / (n_pos / 375))
    assert m["mae"] == pytest.approx((3 * 0.05 + np.sum(ehull[near] + 0.03)) / 375)
    by_id = {r["id"]: r for r in res.rows}
    for i in near:
        r = by_id[mp["entries"][i].entry_id]
        assert r["predicted_e_above_hull"] == pytest.approx(-0.03) and r["decision"] == "relax"
        assert r["true_stable"] is False
    # formation-energy mode on the same numbers: stable if E_f < -1.5 eV/atom
    res = S.screen_rows(_rows(mp, pred), None, mode="formation-energy", threshold=-1.5, progress=False)
    t, p = mp["ef"] < -1.5, pred < -1.5
    m = res.metrics
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (
        np.sum(t & p), np.sum(~t & p), np.sum(t & ~p), np.sum(~t & ~p))
    assert m["mae"] == pytest.approx(np.mean(np.abs(pred - mp["ef"])))


def test_matbench_metrics_edge_cases():
    m = S.classification_metrics(np.array([True, False, False, False]), np.array([True, True, False, False]))
    assert (m["precision"], m["recall"], m["prevalence"], m["daf"]) == (0.5, 1.0, 0.25, 2.0)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == 0.75
    none = S.classification_metrics(np.array([False, False]), np.array([False, False]))
    assert none["precision"] is None and none["recall"] is None and none["daf"] is None
    assert none["accuracy"] == 1.0


# ------------------------------------------------------------------------ cost curve

def test_cost_curve_monotone_and_complete(mp):
    rng = np.random.default_rng(0)
    pred = mp["ef"] + rng.normal(0, 0.05, len(mp["ef"]))
    n_sites = np.array([len(e.structure) for e in mp["entries"]], float)
    is_t, relax_t = 2.0 * n_sites, 15.0 * n_sites ** 1.5  # bigger cells cost more
    res = S.screen_rows(_rows(mp, pred, is_wall_time_s=is_t, relax_wall_time_s=relax_t), _refs(mp),
                   keep_overlapping_references=True, progress=False)
    c = res.curve
    for key in ("recall", "relax_cost_fraction", "cost_fraction", "fraction_sent"):
        assert np.all(np.diff(c[key]) >= 0), key
    assert c["recall"][0] == 0 and c["recall"][-1] == 1.0
    assert c["relax_cost_fraction"][-1] == pytest.approx(1.0) and c["fraction_sent"][-1] == 1.0
    assert c["cost_fraction"][-1] == pytest.approx(1 + is_t.sum() / relax_t.sum())
    cost = res.metrics["cost"]
    assert cost["source"].startswith("wall time (s) from predictions CSV")
    tr = cost["at_target_recall"]
    k = tr["n_relaxed"]
    assert tr["recall"] >= 0.9 > c["recall"][k - 1]
    assert tr["cost_reduction"] == pytest.approx(1 - c["cost_fraction"][k])
    chosen = [r for r in res.rows if r["decision"] == "relax"]
    at = cost["at_model_threshold"]
    assert at["n_relaxed"] == len(chosen)
    assert at["cost_fraction"] == pytest.approx(
        (is_t.sum() + sum(r["relax_wall_time_s"] for r in chosen)) / relax_t.sum())
    # a margin only ever sends more candidates to DFT
    wider = S.screen_rows(_rows(mp, pred), _refs(mp), keep_overlapping_references=True, margin=0.05,
                     progress=False)
    assert wider.metrics["n_relax_decisions"] > len(chosen)
    assert wider.metrics["cost"]["source"].startswith("unit cost")


def test_uncertainty_weight_ranks_optimistically(mp):
    std = np.linspace(0.0, 0.2, 375)
    rows = _rows(mp, mp["ef"] + 0.1, predicted_formation_energy_per_atom_std=std)
    res = S.screen_rows(rows, _refs(mp), keep_overlapping_references=True, uncertainty_weight=1.0, progress=False)
    for r, s_, e in zip(res.rows, std, mp["ehull"]):
        assert r["score"] == pytest.approx(e + 0.1 - s_, abs=1e-9)
        assert (r["decision"] == "relax") == (e + 0.1 - s_ <= 1e-6)
    with pytest.raises(UserError, match="predicted_formation_energy_per_atom_std"):
        S.screen_rows(_rows(mp), _refs(mp), uncertainty_weight=1.0, progress=False)


# ------------------------------------------------------------------------ bad input

def test_bad_rows_are_reported_not_dropped(mp):
    rows = _rows(mp)[:40]
    rows[0][S.PRED_COL] = "nan"
    rows[1][S.PRED_COL] = ""
    rows[2]["formula"] = "LiCoO2"      # Co: the Li-Fe-O references don't span it
    rows[3]["formula"] = "Xx2Q"        # not a formula
    rows[4][S.EF_COL] = rows[4][S.EHULL_COL] = ""  # no truth
    res = S.screen_rows(rows, _refs(mp), keep_overlapping_references=True, progress=False)
    st = {r["id"]: (r["status"], r["reason"]) for r in res.rows}
    assert len(res.rows) == 40
    assert st[rows[0]["id"]][0] == st[rows[1]["id"]][0] == "nan_prediction"
    assert st[rows[2]["id"]][0] == "unspanned" and "Co" in st[rows[2]["id"]][1]
    assert st[rows[3]["id"]][0] == "bad_formula"
    assert st[rows[4]["id"]][0] == "no_truth"
    assert res.metrics["status_counts"] == {"ok": 35, "nan_prediction": 2, "unspanned": 1,
                                            "bad_formula": 1, "no_truth": 1}
    # Matbench Discovery convention (DESIGN.md section 6): the 2 NaN predictions have truths, so they
    # count as predicted unstable and stay in every denominator (35 ok + 2); the unspanned / bad-formula
    # rows have no truth on the hull and the no_truth row none at all: those 3 are not in the metrics
    m = res.metrics
    assert m["n_candidates"] == 37 and m["n_missing_prediction"] == 2
    in_metrics = [i for i in range(40) if i not in (2, 3, 4)]
    true_st = mp["ehull"][in_metrics] <= 1e-9
    pred_st = true_st & ~np.isin(in_metrics, [0, 1])  # exact predictions, except the 2 NaN ones
    tp, fn = int(np.sum(true_st & pred_st)), int(np.sum(true_st & ~pred_st))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (tp, 0, fn, 37 - tp - fn)
    assert m["accuracy"] == pytest.approx((37 - fn) / 37)
    for r in res.rows[:2]:
        assert r["predicted_stable"] is False and r["decision"] == "unscreened" and r["true_stable"] is False
    no_truth = next(r for r in res.rows if r["id"] == rows[4]["id"])
    assert no_truth["decision"] in ("relax", "skip")  # still decided, only left out of metrics


def test_bad_inputs_raise_clear_errors(mp, tmp_path):
    rows = _rows(mp)[:10]
    costs = _write_csv(tmp_path / "costs.csv", [{"id": r["id"], "is_wall_time_s": 1, "relax_wall_time_s": 5}
                                                for r in rows[1:]])
    with pytest.raises(UserError, match=rf"costs.csv: no cost row .*{rows[0]['id']}"):
        S.screen_rows(rows, _refs(mp), costs=costs, progress=False)
    with pytest.raises(UserError, match="duplicate id"):
        S.read_csv_rows(_write_csv(tmp_path / "dup.csv", [rows[0], rows[0]]))
    with pytest.raises(UserError, match="needs reference entries"):
        S.screen_rows(rows, None, mode="ehull", progress=False)
    with pytest.raises(UserError, match="missing column"):
        S.read_csv_rows(_write_csv(tmp_path / "nopred.csv", [{"id": "a", "formula": "Li"}]),
                        ("id", S.PRED_COL))
    (tmp_path / "bad.json").write_text('[{"@class": "Structure", "lattice": {}}]')
    with pytest.raises(UserError, match="bad.json: expected entry dicts"):
        S.load_entries(tmp_path / "bad.json")


def test_truths_file_ids(mp, tmp_path):
    """--truths by id: predictions whose id the truths file lacks are reported as no_truth."""
    rows = [{k: r[k] for k in ("id", "formula", S.PRED_COL)} for r in _rows(mp)[:12]]
    truths = _write_csv(tmp_path / "labels.csv", [
        {"id": r["id"], "formula": r["formula"], S.EF_COL: r[S.EF_COL], S.EHULL_COL: r[S.EHULL_COL]}
        for r in _rows(mp)[2:12]])
    res = S.screen_rows(S.merge_truths(rows, truths), _refs(mp), keep_overlapping_references=True, progress=False)
    assert [r["status"] for r in res.rows[:2]] == ["no_truth", "no_truth"]
    assert res.metrics["n_candidates"] == 10


def test_labels_csv_references_match_computed_entries(mp, tmp_path):
    """A labels.csv of formation energies (elements at 0) gives the same hull as the entries."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    labels = _write_csv(tmp_path / "labels.csv", [
        {"id": e.entry_id, "formula": e.composition.formula.replace(" ", ""), S.EF_COL: repr(float(f))}
        for e, f in zip(mp["entries"], mp["ef"])])
    res = S.screen_rows(_rows(mp), S.load_references([labels]), keep_overlapping_references=True, progress=False)
    li_fe_o = [e for e in mp["elemental"] if e.composition.elements[0].symbol in ("Li", "Fe", "O")]
    pd = PhaseDiagram(mp["entries"] + li_fe_o)  # the labels' elements at 0 = MP elemental references
    np.testing.assert_allclose([r["predicted_e_above_hull"] for r in res.rows],
                               [pd.get_e_above_hull(e) for e in mp["entries"]], atol=1e-9)


# ------------------------------------------------------------------------ CLI

def test_cli_end_to_end(mp, tmp_path, capsys):
    import matplotlib.image as mpimg

    rng = np.random.default_rng(1)
    n_sites = np.array([len(e.structure) for e in mp["entries"]], float)
    rows = _rows(mp, mp["ef"] + rng.normal(0, 0.03, 375))
    rows[5][S.PRED_COL] = "nan"
    preds = _write_csv(tmp_path / "preds.csv", rows)
    costs = _write_csv(tmp_path / "costs.csv", [
        {"id": r["id"], "is_wall_time_s": 3 * n, "relax_wall_time_s": 20 * n} for r, n in zip(rows, n_sites)])
    out = tmp_path / "screen"
    argv = ["screen", "--predictions", str(preds), "--references", str(mp["dir"] / LIFEO),
            "--elemental-references", str(mp["dir"] / ELEMENTAL), "--costs", str(costs),
            "--keep-overlapping-references", "--out", str(out)]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    # the NaN prediction has a truth: predicted unstable, in the metrics (Matbench Discovery convention)
    assert "375 candidates" in captured.out and "1 of 375 candidates not ok" in captured.err
    assert "1 with a truth but no usable prediction count as predicted unstable" in captured.err
    with open(out / "candidates.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 375 and {"predicted_e_above_hull", "decision", "status", "reason"} <= set(table[0])
    assert sum(r["status"] == "nan_prediction" for r in table) == 1
    m = json.loads((out / "metrics.json").read_text())
    for key in ("precision", "recall", "f1", "accuracy", "daf", "n_candidates", "mae"):
        assert key in m and m[key] is not None
    assert m["cost"]["at_target_recall"]["recall"] >= 0.9
    for png in ("recall_vs_cost.png", "predicted_vs_true.png"):
        img = mpimg.imread(out / png)
        assert img.ndim == 3 and img.shape[0] > 100 and np.ptp(img) > 0
    # formation-energy mode needs no references; --strict turns bad rows into an exit code 2
    assert cli_main(["screen", "--predictions", str(preds), "--mode", "formation-energy",
                     "--threshold", "-1", "--out", str(tmp_path / "ef")]) == 0
    m_ef = json.loads((tmp_path / "ef" / "metrics.json").read_text())
    assert m_ef["mode"] == "formation-energy" and m_ef["cost"]["source"].startswith("unit cost")
    assert cli_main(argv[:-2] + ["--strict", "--out", str(tmp_path / "strict")]) == 2
    assert "not screened" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()


# ------------------------------------------------------------------------ array API, NaN convention, hull

def test_nan_prediction_is_predicted_unstable_and_stays_in_the_denominators():
    """Matbench Discovery: 4 candidates, truths stable/stable/unstable/unstable, the 2nd prediction NaN.

    Before the split (NaN rows left out): n 3, TP 1, FP 1, FN 0, TN 1 -> recall 1, accuracy 2/3, DAF 1.5.
    Now: n 4, TP 1, FP 1, FN 1, TN 1 -> precision 1/2, recall 1/2, accuracy 1/2, prevalence 1/2, DAF 1.
    """
    cands = S.Candidates(ids=["a", "b", "c", "d"], predicted=[-0.4, np.nan, 0.1, -0.1],
                         formation_energy=[-0.5, -0.3, 0.2, 0.4])
    res = S.screen(cands, None, S.ScreenConfig(mode="formation-energy", threshold=0.0))
    m = res.metrics
    assert (m["n_candidates"], m["tp"], m["fp"], m["fn"], m["tn"]) == (4, 1, 1, 1, 1)
    assert (m["precision"], m["recall"], m["accuracy"], m["prevalence"], m["daf"]) == (0.5, 0.5, 0.5, 0.5, 1.0)
    assert m["f1"] == pytest.approx(0.5) and m["n_missing_prediction"] == 1
    assert m["status_counts"] == {"ok": 3, "nan_prediction": 1}
    assert m["mae"] == pytest.approx((0.1 + 0.1 + 0.5) / 3)  # regression errors over finite pairs only
    b = res.rows[1]
    assert b["status"] == "nan_prediction" and b["predicted_stable"] is False and b["decision"] == "unscreened"
    # the cost curve keeps it too, ranked last: recall reaches 1 only when all 4 are relaxed
    assert list(res.curve["recall"]) == [0.0, 0.5, 0.5, 0.5, 1.0]
    assert res.metrics["cost"]["at_target_recall"]["n_relaxed"] == 4
    # the same numbers through the energy-threshold form (what `esnet evaluate` reports)
    e = S.threshold_metrics([-0.5, -0.3, 0.2, 0.4], [-0.4, np.nan, 0.1, -0.1], threshold=0.0)
    assert (e["tp"], e["fp"], e["fn"], e["tn"]) == (1, 1, 1, 1)
    assert e["recall"] == 0.5 and e["daf"] == 1.0


def test_metrics_match_hand_formulas_on_random_labels():
    rng = np.random.default_rng(3)
    t, p = rng.random(200) < 0.3, rng.random(200) < 0.4
    m = S.classification_metrics(t, p)
    tp, fp, fn, tn = (int(np.sum(t & p)), int(np.sum(~t & p)), int(np.sum(t & ~p)), int(np.sum(~t & ~p)))
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["n_candidates"]) == (tp, fp, fn, tn, 200)
    prec, rec = tp / (tp + fp), tp / (tp + fn)
    assert m["precision"] == pytest.approx(prec) and m["recall"] == pytest.approx(rec)
    assert m["f1"] == pytest.approx(2 * prec * rec / (prec + rec))
    assert m["daf"] == pytest.approx(prec / ((tp + fn) / 200)) and m["accuracy"] == pytest.approx((tp + tn) / 200)
    assert m["fpr"] == pytest.approx(fp / (fp + tn)) and m["tnr"] == pytest.approx(tn / (tn + fp))
    # precision undefined -> F1 undefined (not 0), as Matbench Discovery computes it
    assert S.classification_metrics(np.array([True, False]), np.array([False, False]))["f1"] is None
    assert list(S.stable_mask([-1.0, 0.0, np.nan, 1e-7], 0.0, tol=1e-6)) == [True, True, False, True]
    assert list(S.stable_mask([-1.0, 0.0, np.nan], 0.0, inclusive=False)) == [True, False, False]
    r = S.regression_metrics([1.0, 2.0, 3.0, 4.0], [1.5, 2.0, 2.0, np.nan])
    assert r["n"] == 3 and r["mae"] == pytest.approx(0.5) and r["rmse"] == pytest.approx(math.sqrt(1.25 / 3))
    assert r["r2"] == pytest.approx(1 - 1.25 / 2.0)
    assert S.regression_metrics([1.0], [np.nan]) == {"n": 0, "mae": None, "rmse": None, "r2": None,
                                                     "mean_truth": None}


def test_array_api_equals_rows_adapter(mp):
    rng = np.random.default_rng(5)
    pred = mp["ef"] + rng.normal(0, 0.04, 375)
    pred[7] = np.nan
    config = S.ScreenConfig(threshold=0.02, margin=0.01)
    by_rows = S.screen_rows(_rows(mp, pred), _refs(mp), config)
    cands = S.Candidates(ids=[e.entry_id for e in mp["entries"]], predicted=pred,
                         formulas=[e.composition.reduced_formula for e in mp["entries"]],
                         formation_energy=mp["ef"], e_above_hull=mp["ehull"])
    by_arrays = S.screen(cands, _refs(mp), config)
    assert by_arrays.metrics == by_rows.metrics
    for col in ("predicted_e_above_hull", "true_e_above_hull", "score"):
        np.testing.assert_allclose(by_arrays.table[col], by_rows.table[col], atol=1e-9)
    assert list(by_arrays.table["decision"]) == list(by_rows.table["decision"])
    with pytest.raises(UserError, match="duplicate id"):
        S.Candidates(ids=["a", "a"], predicted=[0.0, 1.0])
    with pytest.raises(UserError, match="unknown mode"):
        S.ScreenConfig(mode="hull")
    with pytest.raises(UserError, match="target recall"):
        S.ScreenConfig(target_recall=0.0)


def test_patched_phase_diagram_matches_phase_diagram(mp, monkeypatch):
    """The PatchedPhaseDiagram path (many elements) gives PhaseDiagram's E_hull, also off its patches."""
    from pymatgen.analysis.phase_diagram import PatchedPhaseDiagram, PhaseDiagram

    from esnet_tf.screening import hull as H

    monkeypatch.setattr(H, "MAX_PHASE_DIAGRAM_ELEMENTS", 2)
    assert isinstance(S.Hull(mp["entries"]).diagram, PatchedPhaseDiagram)
    np.testing.assert_allclose(S.e_above_hull_of_entries(mp["entries"]), mp["ehull"], atol=1e-9)
    # ternary candidates against binary references only: no patch covers Li-Fe-O, one is added
    idx = [i for i, e in enumerate(mp["entries"]) if len(e.composition.elements) == 3]
    others = [e for i, e in enumerate(mp["entries"]) if i not in set(idx)]
    hull = S.Hull(others)
    got = [hull.e_above_hull(mp["entries"][i].composition, mp["entries"][i].energy_per_atom) for i in idx]
    pd = PhaseDiagram(others)
    want = [pd.get_decomp_and_e_above_hull(mp["entries"][i], allow_negative=True)[1] for i in idx]
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_shared_hull_reproduces_the_demo_labels_e_above_hull():
    """esnet_tf.dft.labels writes e_above_hull with this hull: the demo labels.csv is reproduced."""
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    from esnet_tf.labels import read_labels

    labels = Path(__file__).resolve().parents[1] / "datasets" / "is_dos" / "demo" / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"{labels} not found")
    rows = read_labels(labels, path_column=None, required_columns=("formula",))
    entries = [PDEntry(Composition(r.formula), r.formation_energy_per_atom * Composition(r.formula).num_atoms,
                       name=r.id) for r in rows]
    elements = sorted({el.symbol for e in entries for el in e.composition.elements})
    assert len(elements) > 10  # the PatchedPhaseDiagram path
    entries += [PDEntry(Composition(el), 0.0) for el in elements]
    got = S.e_above_hull_of_entries(entries)[:len(rows)]
    # labels are written with 6 decimals: formation energies and E_hull each round by 5e-7
    np.testing.assert_allclose(got, [r.e_above_hull for r in rows], atol=1.5e-6)


def test_cost_at_recall_known_answers():
    """The one cost-to-recall rule (screening and campaigns): first k with found >= ceil(level x n)."""
    cost, found = np.array([0.0, 1.0, 3.0, 6.0, 10.0]), np.array([0, 1, 1, 2, 3])
    half = S.cost_at_recall(cost, found, 3, 0.5, relax_all_s=10.0, unit_s=2.0)
    assert half == {"recall": 0.5, "reached": True, "n_relaxed": 3, "cost_s": 6.0, "cost_relaxations": 3.0,
                    "cost_fraction": 0.6, "saving": pytest.approx(0.4)}
    assert S.cost_at_recall(cost, found, 3, 0.9)["n_relaxed"] == 4  # ceil(2.7) = 3 found
    assert S.cost_at_recall(cost, found, 3, 2 / 3)["n_relaxed"] == 3  # exactly 2 of 3, not 3 of 3
    assert S.cost_at_recall(cost, found, 4, 1.0) == {"recall": 1.0, "reached": False, "cost_s": None}


# ---- the domain flag and the calibrated interval (hand-written predictions CSV, formation-energy mode)

_P = S.PRED_COL
_DOMAIN_ROWS = [  # id, formula, mean, std, lower, upper, domain, truth (eV/atom)
    ("AlNi_cscl", "AlNi", -0.60, 0.05, -0.70, -0.50, "", -0.62),
    ("AlTi_cscl", "AlTi", -0.40, 0.30, -0.90, 0.10, "sigma 0.30 eV/atom above 0.20", 0.20),
    ("NiTi_cscl", "NiTi", -0.30, 0.05, -0.40, -0.20, "", -0.33),
    ("NiTi_rocksalt", "NiTi", 0.10, 0.05, -0.80, 0.20, "", 0.05),
]


def _domain_csv(path: Path, rows=_DOMAIN_ROWS) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "formula", _P, S.STD_COL, _P + "_lower", _P + "_upper", "domain",
                    "formation_energy_per_atom"])
        w.writerows(rows)
    return path


def test_flagged_candidates_need_dft_and_precision_recall_are_given_with_and_without_the_flag(tmp_path, capsys):
    preds = _domain_csv(tmp_path / "p.csv")
    out = tmp_path / "o"
    assert cli_main(["screen", "--predictions", str(preds), "--mode", "formation-energy", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "needs DFT: 1 candidate(s) flagged outside the model's domain, 1 of the 3 predicted stable" in text
    with open(out / "candidates.csv") as fh:
        table = {r["id"]: r for r in csv.DictReader(fh)}
    assert table["AlTi_cscl"]["needs_dft"] == "True" and table["AlTi_cscl"]["domain"].startswith("sigma")
    assert table["AlTi_cscl"]["predicted_stable"] == "True"  # the model's call, beside the flag that says so
    assert {r["needs_dft"] for k, r in table.items() if k != "AlTi_cscl"} == {"False"}
    nd = json.loads((out / "metrics.json").read_text())["needs_dft"]
    assert (nd["n_flagged"], nd["n_flagged_predicted_stable"], nd["n_predicted_stable"]) == (1, 1, 3)
    # truly stable: AlNi_cscl, NiTi_cscl; the flagged AlTi_cscl (truth +0.20) is the model's false positive
    assert nd["without_flag"]["precision"] == pytest.approx(2 / 3) and nd["without_flag"]["recall"] == 1.0
    assert nd["with_flag"]["precision"] == 1.0 and nd["with_flag"]["recall"] == 1.0 and nd["with_flag"]["fp"] == 0
    # without a domain column nothing changes: no needs_dft column, no block
    plain = tmp_path / "plain.csv"
    plain.write_text("id,formula,predicted_formation_energy_per_atom\na,AlNi,-0.5\n")
    assert cli_main(["screen", "--predictions", str(plain), "--mode", "formation-energy", "--out",
                     str(tmp_path / "q")]) == 0
    assert "needs_dft" not in (tmp_path / "q" / "candidates.csv").read_text().splitlines()[0]
    assert "needs_dft" not in json.loads((tmp_path / "q" / "metrics.json").read_text())


def test_screen_ranks_by_the_lower_bound_of_the_interval(tmp_path, capsys):
    preds = _domain_csv(tmp_path / "p.csv")
    argv = ["screen", "--predictions", str(preds), "--mode", "formation-energy"]

    def ranked(out: Path) -> list[str]:
        with open(out / "candidates.csv") as fh:
            return [r["id"] for r in csv.DictReader(fh)]

    assert cli_main(argv + ["--out", str(tmp_path / "mean")]) == 0
    assert cli_main(argv + ["--rank-by", "lower", "--out", str(tmp_path / "lower")]) == 0
    assert ranked(tmp_path / "mean") == ["AlNi_cscl", "AlTi_cscl", "NiTi_cscl", "NiTi_rocksalt"]
    assert ranked(tmp_path / "lower") == ["AlTi_cscl", "NiTi_rocksalt", "AlNi_cscl", "NiTi_cscl"]
    m = json.loads((tmp_path / "lower" / "metrics.json").read_text())
    assert m["rank_by"] == "lower" and m["n_relax_decisions"] == 4  # every lower bound is below 0 eV/atom
    capsys.readouterr()
    plain = tmp_path / "plain.csv"
    plain.write_text("id,formula,predicted_formation_energy_per_atom\na,AlNi,-0.5\n")
    assert cli_main(["screen", "--predictions", str(plain), "--mode", "formation-energy", "--rank-by", "lower",
                     "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "predicted_formation_energy_per_atom_lower" in err
    upside = [list(r) for r in _DOMAIN_ROWS]
    upside[2][4] = -0.1  # a lower bound above the mean (-0.30)
    bad = str(_domain_csv(tmp_path / "u.csv", upside))
    assert cli_main(argv[:2] + [bad] + argv[3:] + ["--rank-by", "lower", "--out", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "u.csv" in err and "'NiTi_cscl'" in err and "lower bound lies above" in err


def test_a_negative_std_is_refused_not_used(tmp_path, capsys):
    rows = [list(r) for r in _DOMAIN_ROWS]
    rows[1][3] = -0.3  # would rank AlTi_cscl pessimistically under --uncertainty-weight, silently
    preds = _domain_csv(tmp_path / "neg.csv", rows)
    capsys.readouterr()
    assert cli_main(["screen", "--predictions", str(preds), "--mode", "formation-energy", "--uncertainty-weight",
                     "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "neg.csv" in err and "'AlTi_cscl'" in err and "std is negative" in err
    assert not (tmp_path / "o").exists()
