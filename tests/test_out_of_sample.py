"""Out-of-sample scoring of a shipped model (esnet_tf.study.out_of_sample, benchmarks/out_of_sample.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from esnet_tf.study import out_of_sample as oos

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("id,formula,predicted_formation_energy_per_atom,predicted_formation_energy_per_atom_std,"
          "predicted_formation_energy_per_atom_lower,predicted_formation_energy_per_atom_upper,domain\n")


def test_risk_coverage_keeps_the_lowest_sigma_rows_first():
    truth = np.zeros(4)
    pred = np.array([0.4, 0.1, 0.2, 0.3])  # |error| = pred
    std = np.array([0.9, 0.1, 0.2, 0.5])
    curve = oos.risk_coverage(truth, pred, std, coverages=(0.25, 0.5, 1.0))
    assert [p["n_kept"] for p in curve] == [1, 2, 4]
    assert [p["mae"] for p in curve] == pytest.approx([0.1, 0.15, 0.25])


def test_scores_per_role_with_baselines_coverage_flags_and_wrong_signs(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("id,formation_energy_per_atom,is_formation_energy_per_atom,role\n"
                      "a,0.0,0.2,element\nb,-1.0,-0.6,competitor\nc,1.0,1.5,candidate\nd,,0.3,candidate\n")
    preds = tmp_path / "p.csv"
    preds.write_text(HEADER + "a,A,0.1,0.1,-0.1,0.3,\nb,B,-0.8,0.2,-1.2,-0.4,element(s) B not in the training data\n"
                     "c,C,-0.2,0.3,-0.8,0.4,\nd,D,0.0,0.1,-0.2,0.2,\n")
    shift = oos.median_relaxation_energy(labels)  # over rows with both energies: 0.2, 0.4, 0.5
    assert shift == pytest.approx(0.4)
    r = oos.score_predictions(preds, labels, shift)
    assert r["n_rows"] == 4 and r["without_truth"] == ["d"]  # counted, not scored
    a = r["all"]
    assert a["n"] == 3 and a["mae"] == pytest.approx((0.1 + 0.2 + 1.2) / 3)
    assert a["mae_of_the_set_mean"] == pytest.approx(2 / 3)
    assert a["is_shift"]["mae"] == pytest.approx((0.2 + 0.0 + 0.1) / 3)
    assert a["interval_coverage"] == pytest.approx(2 / 3)  # c's 1.0 is above its upper bound 0.4
    assert (a["n_flagged"], a["mae_flagged"], a["mae_unflagged"]) == (1, pytest.approx(0.2), pytest.approx(0.65))
    assert a["unflagged_negative_but_above_0_5"] == 1 and a["negative_but_above_0_5"] == 1  # c: -0.2 for 1.0
    assert sorted(r["by_role"]) == ["candidate", "competitor", "element"] and r["by_role"]["element"]["n"] == 1
    with pytest.raises(ValueError, match="no row with both"):
        oos.median_relaxation_energy(preds)
    # rows of the model's own snapshot are counted and left out
    r = oos.score_predictions(preds, labels, shift, exclude={"a", "b"})
    assert (r["n_rows"], r["n_in_the_models_training_snapshot"], r["all"]["n"]) == (4, 2, 1)
    assert set(r["by_role"]) == {"candidate"}


def test_screening_of_hull_complete_candidates_with_and_without_the_flag(tmp_path):
    """Na2Cl (true E_hull +0.33 over NaCl + Na) is predicted stable but flagged: without the flag a false positive,
    with it sent to DFT; NaCl3 (below the NaCl-Cl line) is found either way; NaCl2 (hull incomplete) and the
    excluded row are not screened."""
    labels = tmp_path / "labels.csv"
    labels.write_text("id,formula,formation_energy_per_atom,role,hull_complete\n"
                      "Na,Na,0.0,element,True\nCl,Cl,0.0,element,True\nNaCl,NaCl,-2.0,competitor,True\n"
                      "Na2Cl,Na2Cl,-1.0,candidate,True\nNaCl3,NaCl3,-1.5,candidate,True\n"
                      "NaCl2,NaCl2,-1.0,candidate,False\nNa3Cl,Na3Cl,-0.1,candidate,True\n")
    refs = tmp_path / "refs.csv"
    refs.write_text("id,formula,formation_energy_per_atom\nNa_bcc,Na,0.0\n")
    preds = tmp_path / "p.csv"
    preds.write_text(HEADER + "Na2Cl,Na2Cl,-1.5,0.1,-1.7,-1.3,sigma above the threshold\n"
                     "NaCl3,NaCl3,-1.2,0.1,-1.4,-1.0,\nNaCl2,NaCl2,-2.5,0.1,-2.7,-2.3,\nNa3Cl,Na3Cl,-2.0,0.1,-2.2,-1.8,\n")
    r = oos.screening_scores(preds, labels, [refs], exclude={"Na3Cl"})
    assert r["n"] == 2
    m = r["ranked_by_mean"]
    assert m["n_truly_stable"] == 1 and m["needs_dft"]["n_flagged_predicted_stable"] == 1
    assert (m["needs_dft"]["without_flag"]["tp"], m["needs_dft"]["without_flag"]["fp"]) == (1, 1)
    assert (m["needs_dft"]["with_flag"]["tp"], m["needs_dft"]["with_flag"]["fp"]) == (1, 0)
    assert m["needs_dft"]["with_flag"]["precision"] == 1.0 and m["precision"] == 0.5
    none = oos.screening_scores(preds, labels, [refs], exclude={"Na2Cl", "NaCl3", "Na3Cl"})
    assert none["n"] == 0


def test_model_snapshot_reads_every_split_and_the_train_rows_relaxation_median(tmp_path):
    splits = {"splits": {
        "train": [{"id": "a", "formation_energy_per_atom": -1.0, "is_formation_energy_per_atom": -0.5},
                  {"id": "b", "formation_energy_per_atom": 0.0, "is_formation_energy_per_atom": 0.1},
                  {"id": "c", "formation_energy_per_atom": 0.0, "is_formation_energy_per_atom": None}],
        "test": [{"id": "t", "formation_energy_per_atom": 0.2, "is_formation_energy_per_atom": 2.0}]}}
    (tmp_path / "splits.json").write_text(json.dumps(splits))
    seen, median = oos.model_snapshot(tmp_path / "splits.json")
    assert seen == {"a", "b", "c", "t"} and median == pytest.approx(0.3)  # train rows only: 0.5 and 0.1


def _run(*args: str) -> subprocess.CompletedProcess:
    """benchmarks/out_of_sample.py as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "out_of_sample.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_command_refuses_bad_inputs_and_an_existing_output_in_one_line(tmp_path):
    res = _run("--pool-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and "--pool-dir" in err[0] and "no labels.csv" in err[0]
    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    res = _run("--out", str(out))
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and "summary.json: exists" in err[0] and "--overwrite" in err[0]
    assert json.loads((out / "summary.json").read_text()) == {}


def test_committed_summary_is_the_scoring_of_the_committed_predictions():
    """benchmarks/results/out_of_sample: summary.json is what score_predictions gives for predictions.csv
    against the pool labels snapshot scored beside it (the figures in docs come from it)."""
    from esnet_tf.pretrained import resolve

    res = ROOT / "benchmarks" / "results" / "out_of_sample"
    summary = json.loads((res / "summary.json").read_text())
    seen, median = oos.model_snapshot(resolve(summary["model"]) / "splits.json")
    again = oos.score_predictions(res / "predictions.csv", res / summary["labels"],
                                  summary["relaxation_median_ev_per_atom"], exclude=seen)
    assert again["n_rows"] == summary["n_rows"] and again["all"]["n"] == summary["all"]["n"] > 0
    assert again["n_in_the_models_training_snapshot"] == summary["n_in_the_models_training_snapshot"]
    for key in ("mae", "spearman", "mae_of_the_set_mean", "interval_coverage", "mae_flagged"):
        assert again["all"][key] == pytest.approx(summary["all"][key]), key
    assert summary["relaxation_median_ev_per_atom"] == pytest.approx(median)


def test_label_histogram_counts_the_label_range_and_refuses_an_existing_output(tmp_path):
    """benchmarks/label_histogram.py: per set the rows above 0.5, 1 and 3 eV/atom, from the labels files it names;
    an existing output needs --overwrite; a missing dataset is one line."""
    demo, pool = tmp_path / "demo", tmp_path / "pool"
    demo.mkdir()
    pool.mkdir()
    (demo / "labels.csv").write_text("id,formation_energy_per_atom\na,-1.0\nb,0.7\nc,3.5\nd,\n")
    (pool / "labels.csv").write_text("id,formation_energy_per_atom,role\n"
                                     "e,2.0,candidate\nf,0.0,element\ng,3.2,label_range\n")
    script = str(ROOT / "benchmarks" / "label_histogram.py")
    args = [sys.executable, script, "--demo-dir", str(demo), "--pool-dir", str(pool), "--out", str(tmp_path / "o")]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    sets = json.loads((tmp_path / "o" / "summary.json").read_text())["sets"]
    assert (sets["demo"]["n"], sets["demo"]["n_above_0.5"], sets["demo"]["n_above_1"], sets["demo"]["n_above_3"]) \
        == (3, 2, 1, 1)  # the empty label is not a row
    assert sets["pool candidates"]["n_above_1"] == 1 and sets["pool elements"]["max"] == 0.0
    assert sets["pool competitors"] == {"n": 0} and (tmp_path / "o" / "histogram.png").stat().st_size > 0
    assert sets["pool label-range compounds"]["n_above_3"] == 1
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "exists" in res.stderr and "--overwrite" in res.stderr
    res = subprocess.run([*args[:2], "--demo-dir", str(tmp_path / "no")], capture_output=True, text=True, timeout=300)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and "--demo-dir" in err[0] and "no labels.csv" in err[0]


def test_compare_with_study_pairs_per_structure_over_the_rows_seeds(tmp_path):
    """The model's |error| against a study row's |error| averaged over its seeds, on the structures both scored;
    units of seeds outside results.json are ignored."""
    cache = tmp_path / "cache" / "h"
    cache.mkdir(parents=True)
    (tmp_path / "results.json").write_text(json.dumps({"snapshot_hash": "h", "seeds": [0, 1]}))
    for seed, preds in ((0, [0.1, 1.2, 2.0]), (1, [0.3, 1.0, 2.0]), (5, [9.0, 9.0, 9.0])):
        (cache / f"gbr_uip_f0of1_s{seed}_e0_bypool-candidates.json").write_text(json.dumps(
            {"model": "gbr_uip", "seed": seed, "test_ids": ["a", "b", "c"], "pred": preds, "truth": [0.0, 1.0, 2.0]}))
    preds = tmp_path / "p.csv"
    preds.write_text(HEADER + "a,A,0.0,0.1,,,\nb,B,1.5,0.1,,,\nc,C,2.4,0.1,,,\nz,Z,0.0,0.1,,,\n")
    r = oos.compare_with_study(preds, tmp_path)["rows"]["gbr_uip"]
    # row |error|: a 0.2, b 0.1, c 0.0 (seed means); model: 0.0, 0.5, 0.4
    assert r["n"] == 3 and r["mae_row"] == pytest.approx(0.1) and r["mae_model"] == pytest.approx(0.3)
    assert r["diff"] == pytest.approx(0.2) and r["ci_low"] <= 0.2 <= r["ci_high"] and r["n_model_lower"] == 1
    assert oos.compare_with_study(preds, tmp_path, exclude={"a", "b"})["rows"] == {}  # one pair is no comparison


def test_compare_pool_studies_pairs_each_model_on_the_candidates_both_tested(tmp_path):
    """An ablation against its full study: per model both computed, seed-averaged |error| paired per structure;
    a model only one study has is no row."""
    for name, roles, preds in (("abl", ["element"], {"gbr_uip": [[0.2, 1.0, 2.0], [0.4, 1.0, 2.0]],
                                                      "uip": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]}),
                               ("full", ["element", "label_range"], {"gbr_uip": [[0.1, 1.1, 2.0], [0.1, 0.9, 2.0]]})):
        cache = tmp_path / name / "cache" / "h"
        cache.mkdir(parents=True)
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"snapshot_hash": "h", "seeds": [0, 1], "models": sorted(preds), "n_structures": 10,
             "test_set": {"pool_training_roles": roles}}))
        for model, per_seed in preds.items():
            for seed, p in enumerate(per_seed):
                (cache / f"{model}_f0of1_s{seed}_e0_bypool-candidates.json").write_text(json.dumps(
                    {"model": model, "seed": seed, "test_ids": ["a", "b", "c"], "pred": p, "truth": [0.0, 1.0, 2.0]}))
    c = oos.compare_pool_studies(tmp_path / "abl", tmp_path / "full")
    assert list(c["rows"]) == ["gbr_uip"] and c["trained_on"][str(tmp_path / "full")] == ["element", "label_range"]
    r = c["rows"]["gbr_uip"]  # ablation |error| a 0.3, b 0, c 0; full: a 0.1, b 0.1, c 0
    assert r["n"] == 3 and r["mae_model"] == pytest.approx(0.1) and r["mae_row"] == pytest.approx(0.2 / 3)
    assert r["diff"] == pytest.approx(0.1 / 3) and r["n_model_lower"] == 1
