"""The accuracy study (esnet_tf.study, benchmarks/accuracy.py) and esnet_tf/baselines.py.

ESNet trains only in tiny configs."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from esnet_tf import baselines
from esnet_tf.errors import UserError
from esnet_tf.study import data as study_data
from esnet_tf.study import models as study_models
from esnet_tf.study import report, stats
from esnet_tf.study.metrics import polymorph_ranking

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datasets" / "is_dos" / "demo"
SCRIPT = ROOT / "benchmarks" / "accuracy.py"


def _fractions(**atoms: float) -> np.ndarray:
    from pymatgen.core import Element

    x = np.zeros((1, baselines.N_ELEMENTS))
    for symbol, n in atoms.items():
        x[0, Element(symbol).Z - 1] = n
    return x


def _features(x: np.ndarray) -> dict[str, float]:
    return dict(zip(baselines.magpie_feature_names(), baselines.magpie_features(x)[0]))


def test_magpie_features_by_hand():
    # pymatgen Element data: Fe Z 26, X 1.83, Mendeleev 61, [Ar].3d6.4s2 (8 outside the core);
    # O Z 8, X 3.44, Mendeleev 101, [He].2s2.2p4 (6)
    f = _features(_fractions(Fe=2, O=3))  # counts are renormalised to fractions 0.4, 0.6
    assert f["Z_mean"] == pytest.approx(0.4 * 26 + 0.6 * 8)
    assert (f["Z_min"], f["Z_max"], f["Z_range"]) == (8, 26, 18)
    assert f["X_mean"] == pytest.approx(2.796)
    assert f["X_range"] == pytest.approx(1.61)
    assert f["X_mad"] == pytest.approx(0.4 * abs(1.83 - 2.796) + 0.6 * abs(3.44 - 2.796))
    assert f["mendeleev_no_mean"] == pytest.approx(0.4 * 61 + 0.6 * 101)
    assert f["n_valence_mean"] == pytest.approx(6.8)
    # Na: X 0.93, melting point 370.87 K, [Ne].3s1; Cl: X 3.16, 171.6 K, [Ne].3s2.3p5; both row 3
    f = _features(_fractions(Na=1, Cl=1))
    assert f["X_mean"] == pytest.approx((0.93 + 3.16) / 2)
    assert f["melting_point_min"] == pytest.approx(171.6)
    assert f["melting_point_max"] == pytest.approx(370.87)
    assert (f["n_valence_mean"], f["n_valence_mad"]) == (pytest.approx(4.0), pytest.approx(3.0))
    assert (f["row_mean"], f["row_range"], f["row_mad"]) == (3.0, 0.0, 0.0)
    # a single element: every range and deviation is 0
    f = _features(_fractions(Fe=1))
    assert all(f[f"{p}_range"] == 0 and f[f"{p}_mad"] == 0 for p in baselines.ELEMENT_PROPERTIES)


def test_magpie_missing_properties_are_imputed_explicitly():
    table, imputed = baselines.element_property_table()
    assert "He" in imputed["X"] and "Kr" in imputed["atomic_radius"]
    assert np.isfinite(table).all()
    j = baselines.ELEMENT_PROPERTIES.index("X")
    known = [baselines._property(__import__("pymatgen.core", fromlist=["Element"]).Element.from_Z(z), "X")
             for z in range(1, 104)]
    assert table[1, j] == pytest.approx(np.nanmedian(known))  # He (Z = 2) gets the median
    assert np.isfinite(baselines.magpie_features(_fractions(He=1, Fe=1))).all()
    with pytest.raises(ValueError, match="no atoms"):
        baselines.magpie_features(np.zeros((1, baselines.N_ELEMENTS)))


def test_crossfit_never_uses_a_rows_own_group():
    idx = np.arange(10, 22)
    groups = np.repeat([0, 1, 2], 4)
    calls = []

    def predict(fit, pred):
        calls.append((set(fit.tolist()), set(pred.tolist())))
        return np.full(len(pred), float(len(calls)))

    out = baselines.crossfit(predict, idx, groups)
    assert len(calls) == 3 and np.isfinite(out).all()
    for fit, pred in calls:
        assert not fit & pred and fit | pred == set(idx.tolist())
    with pytest.raises(ValueError, match="2 groups"):
        baselines.crossfit(predict, idx, np.zeros(12))


def test_residual_baseline_is_out_of_fold_within_the_training_folds(monkeypatch):
    chemsys = np.array([f"A-X{i % 9}" for i in range(40)])
    study = SimpleNamespace(is_={"chemsys": chemsys})
    train_idx = np.arange(0, 40, 2)  # the outer training rows
    seen = []

    def baseline(arrays, fit, pred, seed):
        seen.append((fit.copy(), pred.copy()))
        return np.zeros(len(pred))

    monkeypatch.setitem(baselines.BASELINES, study_models.RESIDUAL_BASELINE, baseline)
    oof, inner = study_models.residual_targets(study, train_idx, seed=0)
    assert len(oof) == len(train_idx) and len(seen) == len(np.unique(inner)) >= 2
    inner_of = dict(zip(train_idx.tolist(), inner.tolist()))
    predicted = []
    for fit, pred in seen:
        assert set(fit.tolist()) <= set(train_idx.tolist())  # only training rows
        assert {inner_of[i] for i in fit}.isdisjoint({inner_of[i] for i in pred})  # never its own inner fold
        assert set(chemsys[fit]).isdisjoint(set(chemsys[pred]))  # grouped by chemical system
        predicted += pred.tolist()
    assert sorted(predicted) == sorted(train_idx.tolist())


def test_paired_comparison_known_case():
    r = stats.paired_comparison([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert r["n_pairs"] == 5 and r["mean_diff"] == pytest.approx(3.0)
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) x sd / sqrt(n)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(3 - half, rel=1e-5), pytest.approx(3 + half, rel=1e-5))
    assert r["p_value"] == pytest.approx(2 / 2 ** 5)  # exact: all 5 differences positive, two-sided
    assert stats.paired_comparison([1.0], [1.0])["p_value"] is None


def test_bootstrap_ci():
    value, lo, hi = stats.bootstrap_ci(np.array([1.0, -1.0] * 10), stats.mae_of)
    assert (value, lo, hi) == (1.0, 1.0, 1.0)
    err = np.random.default_rng(1).normal(size=200)
    value, lo, hi = stats.bootstrap_ci(err, stats.rmse_of)
    assert lo < value < hi and value == pytest.approx(np.sqrt(np.mean(err ** 2)))


def test_polymorph_ranking_tie_rule():
    formulas = np.array(["A", "A", "B", "B", "B", "C"])
    truth = np.array([0.0, -1.0, 0.0, -2.0, 1.0, 0.0])
    pred = np.array([0.5, -0.5, 0.0, 0.0, 1.0, 0.0])  # A right; B: true lowest among 2 tied -> 1/2; C single
    assert polymorph_ranking(formulas, truth, pred) == (1.5, 2)
    assert polymorph_ranking(formulas, truth, np.zeros(6)) == (pytest.approx(0.5 + 1 / 3), 2)


def test_table_marker_rewrite():
    start, end = report.TABLE_START, report.TABLE_END
    text = f"# T\n\nintro\n{start}\nold | table\n{end}\nafter\n"
    new = report.replace_table(text, "| new |\n")
    assert new == f"# T\n\nintro\n{start}\n| new |\n{end}\nafter\n"
    assert report.replace_table(new, "| new |\n") == new
    with pytest.raises(UserError, match="exactly one"):
        report.replace_table("no markers", "x")
    with pytest.raises(UserError, match="exactly one"):
        report.replace_table(f"{end}\n{start}\n", "x")  # out of order


def test_bad_options_are_one_line_errors(capsys, tmp_path):
    import subprocess
    import sys

    from esnet_tf.study import StudyConfig

    base = {"out": tmp_path, "demo": DEMO}
    with pytest.raises(UserError, match=r"unknown model\(s\) \['bogus'\]"):
        StudyConfig(**base, models=("esnet_is", "bogus"))
    with pytest.raises(UserError, match="--folds must be >= 2"):
        StudyConfig(**base, folds=1)
    with pytest.raises(UserError, match="--seeds must be distinct"):
        StudyConfig(**base, seeds=(0, 0))
    (tmp_path / "R.md").write_text("no markers\n")
    with pytest.raises(UserError, match="exactly one"):  # checked before any work
        StudyConfig(**base, table_file=tmp_path / "R.md")
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--seeds", "0,x"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr == "accuracy.py: error: --seeds must be comma-separated integers, got '0,x'\n"


def test_a_registered_model_is_one_more_row():
    """A model added with `register` appears in the summary and the table, in registry order, and
    an ESNet row is tested against the best baseline row."""
    def record(pred, truth):
        return {"pred": pred, "truth": truth, "wall_s": 1.0,
                "metrics": {"mae": float(np.mean(np.abs(np.subtract(pred, truth)))), "rmse": 0.0,
                            "polymorph_correct": 0.0, "polymorph_total": 0}}

    truth = [0.0, 1.0]
    try:
        study_models.register("toy_baseline", "a baseline", group="baseline")(lambda unit: (None, {}))
        study_models.register("toy_esnet", "an ESNet", group="esnet")(lambda unit: (None, {}))
        with pytest.raises(ValueError, match="twice"):
            study_models.register("toy_esnet", "again", group="esnet")
        with pytest.raises(ValueError, match="group"):
            study_models.register("toy_other", "x", group="nonsense")
        units = {"toy_baseline": {(k, 0): record([0.5, 0.5], truth) for k in range(2)},
                 "toy_esnet": {(0, 0): record([0.0, 0.9], truth), (1, 0): record([0.1, 1.0], truth)},
                 "mean": {(k, 0): record([0.7, 0.7], truth) for k in range(2)}}
        summary = report.summarise(units, folds=2, seeds=[0])
        assert summary["best_composition_model"] == "toy_baseline"  # "mean" is a reference, never the comparator
        vs = summary["models"]["toy_esnet"]["vs_best_composition"]
        assert vs["baseline"] == "toy_baseline" and vs["n_pairs"] == 2
        assert vs["mean_diff"] == pytest.approx(0.05 - 0.5)
        assert "vs_best_composition" not in summary["models"]["mean"]
        result = {"summary": summary, "snapshot_hash": "h", "n_structures": 2, "n_variants": 0, "folds": 2,
                  "seeds": [0], "epochs": 1}
        rows = [line.split(" | ")[0] for line in report.table_markdown(result).splitlines() if line.startswith("| ")]
        assert rows == ["| model", "| mean", "| toy_baseline", "| toy_esnet"]
        asked = {**result, "models": ["mean", "toy_baseline", "toy_esnet", "gbr_magpie", "esnet_is"]}
        assert report.table_markdown(asked).splitlines()[-1] == \
            "Not computed yet (no unit in the cache): gbr_magpie, esnet_is."  # asked for: said, not dropped
    finally:
        study_models.MODELS.pop("toy_baseline", None)
        study_models.MODELS.pop("toy_esnet", None)


def test_augmented_variants_never_train_on_a_test_fold_structure():
    """On a small synthetic snapshot: every variant trains exactly in the folds where its parent does."""
    from esnet_tf.splits import kfold_of

    systems = [f"A-B{i}" for i in range(12)] + [f"C{i}-D" for i in range(8)]
    is_ = {"id": np.array([f"s{i}" for i in range(40)]),
           "chemsys": np.array([systems[i % len(systems)] for i in range(40)])}
    parents = np.repeat(np.arange(40), 3)
    aug = {"id": np.array([f"s{p}_v{j}" for j, p in enumerate(parents)]),
           "parent_id": is_["id"][parents], "chemsys": is_["chemsys"][parents]}
    data = SimpleNamespace(is_=is_, aug=aug)
    for seed in (0, 1, 2):
        fold = np.array([kfold_of(c, 5, seed) for c in is_["chemsys"]])
        used = set()
        for k in range(5):
            sel = study_data.augmented_training_rows(data, fold, k, 5, seed)
            test_ids = set(is_["id"][fold == k].tolist())
            assert not set(aug["parent_id"][sel].tolist()) & test_ids
            assert set(aug["parent_id"][sel].tolist()) == set(is_["id"][fold != k].tolist())
            used |= set(sel.tolist())
        assert used == set(range(len(aug["id"])))
    wrong = dict(aug, chemsys=np.roll(aug["chemsys"], 3))  # variants filed under another chemical system
    fold = np.array([kfold_of(c, 5, 0) for c in is_["chemsys"]])
    with pytest.raises(AssertionError, match="test-fold structures"):
        for k in range(5):
            study_data.augmented_training_rows(SimpleNamespace(is_=is_, aug=wrong), fold, k, 5, 0)


def _small_snapshot(out: Path, n: int = 40) -> None:
    """The study's snapshot files in `out`: the first n structures of the demo and their variants."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    with open(DEMO / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    keep = {r["id"] for r in rows}
    with open(DEMO / "labels_augmented.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        aug = [r for r in reader if r["id"] in keep or r["parent_id"] in keep]
        aug_fields = reader.fieldnames
    for name, fields, data in (("labels_snapshot.csv", list(rows[0]), rows),
                               ("labels_augmented_snapshot.csv", aug_fields, aug)):
        with open(out / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(data)


def _study(out: Path, *extra: str) -> Any:
    import subprocess
    import sys

    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--models", "mean,gbr_fraction",
           "--folds", "2", "--seeds", "0,1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_jobs_share_the_units_and_match_one_process(tmp_path):
    import json

    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    for out in (serial, parallel):
        _small_snapshot(out)
    one = _study(serial)
    two = _study(parallel, "--jobs", "2")
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 worker processes" in two.stdout
    for model in ("mean", "gbr_fraction"):
        for seed in (0, 1):
            for k in (0, 1):
                tag = f"{model} fold {k} seed {seed}:"
                assert two.stdout.count(tag) == 1, f"{tag} computed {two.stdout.count(tag)} times"
    a, b = (json.loads((out / "results.json").read_text())["summary"] for out in (serial, parallel))
    for summary in (a, b):
        for model in summary["models"].values():
            model.pop("wall_s")  # the one thing that may differ
    assert a == b


def test_a_unit_locked_by_another_process_is_left_to_it(tmp_path):
    from esnet_tf.atomic import exclusive

    _small_snapshot(tmp_path)
    first = _study(tmp_path, "--units-only")  # computes everything once, to learn the snapshot hash
    assert first.returncode == 0, first.stderr[-2000:]
    cached = sorted((tmp_path / "cache").glob("*/*.json"))
    assert len(cached) == 8 and not (tmp_path / "results.json").exists()  # --units-only does not summarise
    held = next(p for p in cached if p.name.startswith("gbr_fraction_f1of2_s0"))
    held.unlink()
    with exclusive(held, "study unit"):
        again = _study(tmp_path, "--units-only")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 unit(s) left to the other process(es)" in again.stdout and "gbr_fraction fold 1 seed 0" in again.stdout
    assert not held.exists()
    summary = _study(tmp_path, "--summary-only")
    assert "gbr_fraction: 1 unit(s) not cached, left out (--summary-only): f1s0" in summary.stdout


def test_new_variants_invalidate_only_the_units_that_train_on_them(tmp_path):
    import csv

    _small_snapshot(tmp_path)
    first = _study(tmp_path, "--units-only")
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count(" fold ") == 8
    from esnet_tf.study import StudyConfig

    config = StudyConfig(out=tmp_path, demo=DEMO)
    before = study_data.StudyData(tmp_path, tmp_path / "work", DEMO)
    aug = tmp_path / study_data.AUG_SNAPSHOT
    with open(aug, newline="") as fh:
        reader = csv.DictReader(fh)
        rows, fields = list(reader), reader.fieldnames
    dropped = next(i for i, r in enumerate(rows) if r["id"] != r["parent_id"])
    with open(aug, "w", newline="") as fh:  # one variant fewer, as if the DFT job had not finished it yet
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows[:dropped] + rows[dropped + 1:])
    after = study_data.StudyData(tmp_path, tmp_path / "work", DEMO)
    assert len(after.aug["id"]) == len(before.aug["id"]) - 1
    assert config.key(after, "esnet_is") == config.key(before, "esnet_is") == after.hash
    assert config.key(after, "esnet_is_aug") not in (config.key(before, "esnet_is_aug"), after.hash)
    again = _study(tmp_path, "--units-only")
    assert again.returncode == 0, again.stderr[-2000:]
    assert " fold " not in again.stdout, again.stdout  # the mean and gbr units were all reused


def test_terminating_the_study_stops_its_worker_processes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    _small_snapshot(tmp_path)
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--models", "esnet_is",
           "--folds", "2", "--seeds", "0", "--epochs", "40", "--jobs", "2"]
    study = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in study.stdout:  # wait until both workers are up
        lines.append(line)
        if sum("snapshot" in x and "reused" in x for x in lines) == 2:
            break
    children = subprocess.run(["pgrep", "-P", str(study.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2, "".join(lines)
    study.send_signal(signal.SIGTERM)
    assert study.wait(timeout=60) == 128 + signal.SIGTERM
    time.sleep(0.5)
    alive = [c for c in children if subprocess.run(["kill", "-0", c], capture_output=True).returncode == 0]
    assert not alive, f"worker processes {alive} outlived the study"


def test_tuned_esnet_is_chosen_by_a_search_on_the_training_rows_only(tmp_path, monkeypatch):
    """esnet_is_tuned: a real KerasTuner search on the training folds' rows; the best trial's config is kept."""
    import json

    from esnet_tf.model import ESNetConfig
    from esnet_tf.study.fit import tune_esnet
    from esnet_tf.tuning import search

    searched = []
    real_tune = search.tune

    def tune_and_record(*args, train_data, validation_data, **kwargs):  # the real search, its rows recorded
        searched.extend([*train_data["id"].tolist(), *validation_data["id"].tolist()])
        return real_tune(*args, train_data=train_data, validation_data=validation_data, **kwargs)

    monkeypatch.setattr(search, "tune", tune_and_record)

    _small_snapshot(tmp_path / "out", n=120)  # enough chemical systems for a 10 % validation split
    study = study_data.StudyData(tmp_path / "out", tmp_path / "work", DEMO)
    fold = study.folds(2, 0)
    train_idx, test_idx = np.flatnonzero(fold != 0), np.flatnonzero(fold == 0)
    space = tmp_path / "space.json"  # tiny models: 1 stage, 1 head layer
    space.write_text(json.dumps({"base": "small", "hyperparameters": {
        "stem_filters": {"values": [4, 8]}, "n_stages": 1, "first_width": {"values": [4, 8]},
        "composition_units": 8, "head_layers": 1, "head_width": {"values": [8, 16]},
        "dropout": {"min": 0.0, "max": 0.2, "step": 0.1}}}))
    work = tmp_path / "search"
    path, notes = tune_esnet(study_data.take(study.is_, train_idx), work, epochs=4, seed=0, batch_size=16,
                             space=space, trials=2)
    assert sorted(searched) == sorted(study.is_["id"][train_idx].tolist())
    assert not set(searched) & set(study.is_["id"][test_idx].tolist())
    scores = [json.loads(p.read_text())["score"] for p in (work / "search").glob("trial_*/trial.json")]
    assert notes["n_trials"] == len(scores) == 2 and notes["trial_epochs"] == 1
    assert notes["best_trial_val_mae_ev_per_atom"] == min(scores)
    chosen = ESNetConfig.named(path)
    assert chosen.stem_filters == notes["hyperparameters"]["stem_filters"]
    assert chosen.stage_widths == (notes["hyperparameters"]["first_width"],)
    assert chosen.head_units == (notes["hyperparameters"]["head_width"],)


def test_study_doc_table_is_the_summary_of_the_committed_units(tmp_path):
    """docs/study.md's accuracy table is what `accuracy.py --summary-only --doc docs/study.md` writes from
    the committed snapshot and unit records (run here on copies, so that nothing in the checkout changes)."""
    import shutil
    import subprocess
    import sys

    committed = ROOT / "benchmarks" / "results" / "accuracy"
    shutil.copytree(committed / "cache", tmp_path / "cache")
    for name in ("labels_snapshot.csv", "labels_augmented_snapshot.csv"):
        shutil.copy(committed / name, tmp_path / name)
    doc = tmp_path / "study.md"
    shutil.copy(ROOT / "docs" / "study.md", doc)
    cmd = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--seeds", "0,1,2", "--epochs", "40",
           "--summary-only", "--doc", str(doc)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "table.md").read_text(encoding="utf-8") == (committed / "table.md").read_text(encoding="utf-8")
    assert doc.read_text(encoding="utf-8") == (ROOT / "docs" / "study.md").read_text(encoding="utf-8"), (
        "docs/study.md's accuracy table is stale: run `python benchmarks/accuracy.py --seeds 0,1,2 --epochs 40 "
        "--summary-only --doc docs/study.md`")


# ---------------------------------------------------------------- baselines with an energy input (issues 32, 33)


def _energy_study(y, is_ef, chemsys=None, composition=None, uip_table=None, n_folds=2):
    """A tiny synthetic StudyData: labels y, IS formation energies, two folds (fold 1 = test)."""
    n = len(y)
    ids = np.array([f"s{i}" for i in range(n)])
    comp = composition if composition is not None else np.tile(_fractions(Fe=1, O=1), (n, 1))
    data = SimpleNamespace(
        y=np.asarray(y, float), is_formation_energy=np.asarray(is_ef, float), labels=Path("labels_snapshot.csv"),
        is_={"id": ids, "chemsys": np.asarray(chemsys if chemsys is not None else [f"Fe-O{i % 7}" for i in range(n)]),
             "composition": comp}, uip_table=lambda model="chgnet": {"chgnet": uip_table}[model])
    fold = np.arange(n) % n_folds
    return data, study_models.Unit(data, fold, 1, n_folds, 0, 1, 4, Path("unused"))


def test_is_shift_is_the_is_energy_minus_the_training_median_relaxation_energy():
    y = np.array([-1.0, -2.0, -1.0, -2.0, -1.0, -2.0])
    rel = np.array([0.1, 9.0, 0.3, 9.0, 0.2, 9.0])  # the test rows' own relaxation energy (9) must not count
    _, unit = _energy_study(y, y + rel)
    pred, notes = study_models.run_model("is_shift", unit)
    assert notes["median_relaxation_energy"] == pytest.approx(0.2)
    np.testing.assert_allclose(pred, (y + rel)[1::2] - 0.2)
    nan = (y + rel).copy()
    nan[3] = np.nan
    with pytest.raises(UserError, match="is_formation_energy_per_atom"):
        study_models.run_model("is_shift", _energy_study(y, nan)[1])


def test_gbr_with_the_is_energy_reads_it():
    """Same composition everywhere: the composition-only baseline predicts one value, the one with the IS
    energy follows it (y = E_f(IS) - 0.1)."""
    rng = np.random.default_rng(0)
    is_ef = rng.uniform(-2, 0, 40)
    y = is_ef - 0.1
    data, unit = _energy_study(y, is_ef)
    arrays = {"composition": data.is_["composition"], "formation_energy_per_atom": y}
    flat = baselines.gbr_magpie(arrays, unit.train_idx, unit.test_idx, 0)
    assert np.ptp(flat) < 1e-9
    for name in ("gbr_magpie_is", "gbr_fraction_is", "gbr_magpie_is_relax"):
        pred, _ = study_models.run_model(name, unit)
        assert np.abs(pred - y[unit.test_idx]).mean() < 0.1 * np.abs(flat - y[unit.test_idx]).mean(), name
    with pytest.raises(ValueError, match="missing"):
        baselines.with_energies(np.zeros((2, 3)), np.array([0.0, np.nan]))


def test_gbr_relaxation_energy_row_extrapolates_the_is_energy():
    """Relaxation energy 0.3 everywhere; the test rows' IS energies (1 to 2 eV/atom) lie above every training
    row's (-2 to 0): the relaxation-energy row predicts E_f(IS) - 0.3 there, the relaxed-E_f row cannot leave
    the training labels' range (trees do not extrapolate)."""
    is_ef = np.where(np.arange(40) % 2 == 0, np.linspace(-2, 0, 40), np.linspace(1, 2, 40))
    y = is_ef - 0.3
    _, unit = _energy_study(y, is_ef)
    relax, _ = study_models.run_model("gbr_magpie_is_relax", unit)
    np.testing.assert_allclose(relax, y[unit.test_idx], atol=1e-9)
    direct, _ = study_models.run_model("gbr_magpie_is", unit)
    assert direct.max() <= y[unit.train_idx].max() + 1e-9 < y[unit.test_idx].min()
    assert study_models.candidate_needs("gbr_magpie_is_relax") == ("is_single_point",)


def _uip_table(energies: dict, compositions: dict):
    from esnet_tf.uip import UIPTable

    return UIPTable(energies=energies, compositions=compositions, crystal_mu={"Fe": -8.0}, meta={"model": "chgnet"})


def test_uip_references_never_see_a_test_row():
    """Fe-O rows whose potential energies put mu_O at -5 exactly on the training rows: the test rows' E_f
    follow from it whatever their labels (poisoned here), and a test-only gas element gets no reference."""
    n = 12
    x_o = np.linspace(0.2, 0.7, n)
    ef_true = -0.5 * x_o
    comps = {f"s{i}": {"Fe": 1 - x_o[i], "O": x_o[i]} for i in range(n)}
    energies = {f"s{i}": ef_true[i] + (1 - x_o[i]) * -8.0 + x_o[i] * -5.0 for i in range(n)}
    y = ef_true.copy()
    y[1::2] = 1e3  # the test fold's labels: any use of them would move mu_O
    _, unit = _energy_study(y, y, uip_table=_uip_table(energies, comps))
    pred, notes = study_models.run_model("uip", unit)
    assert notes["fitted_mu"]["O"] == pytest.approx(-5.0)
    np.testing.assert_allclose(pred, ef_true[1::2], atol=1e-9)
    comps["s1"] = {"Fe": 0.5, "F": 0.5}  # F only in a test row: no reference fitted, refused
    with pytest.raises(AssertionError, match="without a potential formation energy"):
        study_models.run_model("uip", _energy_study(y, y, uip_table=_uip_table(energies, comps))[1])


def test_gbr_uip_training_energies_are_cross_fitted():
    """A training row's potential E_f does not move with its own label (its gas reference comes from the
    other inner folds); the test rows get references fitted on all training rows."""
    n = 40
    x_o = np.linspace(0.2, 0.7, n)
    comps = {f"s{i}": {"Fe": 1 - x_o[i], "O": x_o[i]} for i in range(n)}
    energies = {f"s{i}": -0.5 * x_o[i] + (1 - x_o[i]) * -8.0 + x_o[i] * -5.0 for i in range(n)}
    y = -0.5 * x_o
    chemsys = [f"Fe-O{i % 10}" for i in range(n)]
    table = _uip_table(energies, comps)
    _, unit = _energy_study(y, y, chemsys=chemsys, uip_table=table)
    base, fallback = study_models.uip_training_energies(unit)
    assert fallback == 0
    np.testing.assert_allclose(base, y[unit.train_idx], atol=1e-9)
    moved = y.copy()
    moved[unit.train_idx[0]] += 1.0  # one training label off: only the other rows' references move
    got, _ = study_models.uip_training_energies(_energy_study(moved, moved, chemsys=chemsys, uip_table=table)[1])
    assert got[0] == pytest.approx(base[0], abs=1e-12)
    assert not np.allclose(got[1:], base[1:])
    pred, notes = study_models.run_model("gbr_uip", _energy_study(y, y, chemsys=chemsys, uip_table=table)[1])
    assert len(pred) == len(unit.test_idx) and notes["training_rows_not_cross_fitted"] == 0


def test_gbr_on_two_potentials_reads_both_and_leaves_out_a_failed_relaxation():
    """gbr_uip_both takes CHGNet's and SevenNet's E_f: the label is their mean, so neither alone fits it; a
    training row SevenNet failed on (NaN energy) is left out of the fit and named in the notes."""
    n = 40
    x_o = np.linspace(0.2, 0.7, n)
    comps = {f"s{i}": {"Fe": 1 - x_o[i], "O": x_o[i]} for i in range(n)}
    rng = np.random.default_rng(1)
    ef_a, ef_b = rng.uniform(-2, 0, n), rng.uniform(-2, 0, n)
    y = (ef_a + ef_b) / 2
    base = {f"s{i}": (1 - x_o[i]) * -8.0 + x_o[i] * -5.0 for i in range(n)}
    tables = {"chgnet": _uip_table({k: v + ef_a[i] for i, (k, v) in enumerate(base.items())}, comps),
              "sevennet": _uip_table({k: v + ef_b[i] for i, (k, v) in enumerate(base.items())}, comps)}
    data, unit = _energy_study(y, y, chemsys=[f"Fe-O{i % 10}" for i in range(n)])
    data.uip_table = lambda model="chgnet": tables[model]
    both, notes = study_models.run_model("gbr_uip_both", unit)
    one, _ = study_models.run_model("gbr_uip", unit)
    truth = y[unit.test_idx]
    assert np.abs(both - truth).mean() < 0.5 * np.abs(one - truth).mean()
    assert set(notes) == {"chgnet", "sevennet"} and "training_rows_without_potential_energy" not in notes
    failed = str(data.is_["id"][unit.train_idx[3]])
    tables["sevennet"].energies[failed] = float("nan")
    _, notes = study_models.run_model("gbr_uip_both", unit)
    assert notes["training_rows_without_potential_energy"] == [failed]
    assert study_models.candidate_needs("gbr_uip_both") == ("uip_relaxation", "sevennet_relaxation")


def test_cpu_seconds_per_candidate(tmp_path):
    """Per-step means from the calculations' result.json (CPU time, else wall time) and the potential's CSV;
    a row's cell sums its steps."""
    import json

    for name, doc in (("a", {"is_cpu_time": 10.0, "is_wall_time": 11.0, "relax_cpu_time": 100.0}),
                      ("b", {"is_wall_time": 30.0, "relax_wall_time": 50.0}), ("c", {"is_cpu_time": 1e6})):
        (tmp_path / "calcs" / name).mkdir(parents=True)
        (tmp_path / "calcs" / name / "result.json").write_text(json.dumps(doc))
    (tmp_path / "labels.csv").write_text("id,path\nA,calcs/a/is.npz\nB,calcs/b/is.npz\nC,calcs/c/is.npz\n")
    (tmp_path / "uip_chgnet.csv").write_text("id,cpu_time_s\nA,0.5\nB,1.5\nC,99\n")
    (tmp_path / "uip_sevennet.csv").write_text("id,cpu_time_s\nA,2.0\nB,3.0\n")
    costs = study_data.candidate_cpu_seconds(tmp_path, ["A", "B"])  # C is not a study structure
    assert costs["is_single_point"] == {"mean_s": 20.0, "n": 2, "n_cpu_timed": 1}
    assert costs["dft_relaxation"]["mean_s"] == 75.0 and costs["uip_relaxation"]["mean_s"] == 1.0
    assert report._cpu_cell("gbr_magpie", costs) == "~0"
    assert report._cpu_cell("uip", costs) == "1.0" and report._cpu_cell("uip_sevennet", costs) == "2.5"
    assert report._cpu_cell("gbr_uip_both", costs) == "3.5"
    assert report._cpu_cell("gbr_magpie_is", costs) == report._cpu_cell("esnet_is", costs) == "20.0"
    assert report._cpu_cell("esnet_rs", costs) == "95.0"
    assert report._cpu_cell("esnet_is", {}) == "n/a"


# ---------------------------------------------------------------- ESNet with an energy input (issue 32)


def _energy_esnet_data(n: int = 24, n_variants: int = 2) -> Any:
    """A tiny synthetic StudyData with IS-DOS arrays, IS formation energies, a UIP table and IS-augmentation
    variants (each variant with its own IS energy, its parent's label)."""
    from esnet_tf.isdos import PAPER_GRID

    rng = np.random.default_rng(0)
    ids = np.array([f"s{i}" for i in range(n)])
    chemsys = np.array([f"Fe-O{i}" for i in range(n)])  # one structure per system: every grouped split has rows
    y = rng.uniform(-2.0, -0.5, n)
    is_ef = y + rng.uniform(0.0, 0.3, n)

    def rows(m: int, row_ids, systems, labels, energies) -> dict:
        return {"dos_up": rng.uniform(0, 1, (m, PAPER_GRID.n_points, 9)).astype(np.float32),
                "dos_down": rng.uniform(0, 1, (m, PAPER_GRID.n_points, 9)).astype(np.float32),
                "composition": np.tile(_fractions(Fe=0.5, O=0.5), (m, 1)).astype(np.float32),
                "id": np.asarray(row_ids), "formula": np.full(m, "FeO"), "chemsys": np.asarray(systems),
                "formation_energy_per_atom": np.asarray(labels, np.float32),
                "e_above_hull": np.zeros(m, np.float32),
                "is_formation_energy_per_atom": np.asarray(energies, np.float32).reshape(-1, 1)}

    parents = np.repeat(np.arange(n), n_variants)
    aug = rows(len(parents), [f"{ids[p]}_v{j}" for j, p in enumerate(parents)], chemsys[parents], y[parents],
               is_ef[parents] + rng.uniform(0.0, 0.2, len(parents)))
    aug["parent_id"] = ids[parents]
    table = _uip_table({str(i): float(e) - 6.5 for i, e in zip(ids, y)},  # mu_Fe = -8, mu_O fitted: -5
                       {str(i): {"Fe": 0.5, "O": 0.5} for i in ids})
    return SimpleNamespace(is_=rows(n, ids, chemsys, y, is_ef), aug=aug, y=y, is_formation_energy=is_ef,
                           labels=Path("labels_snapshot.csv"), aug_labels=Path("labels_augmented_snapshot.csv"),
                           uip_table=lambda model="chgnet": {"chgnet": table}[model])


class _Built(Exception):
    """Raised once a row's model is built (the rows not trained in the test)."""


def test_energy_input_esnet_rows_build_a_model_with_the_energy_input(tmp_path, monkeypatch):
    """Each energy-input ESNet row builds (tiny topology) a model that takes its named energy inputs with its
    target; the augmented and the two-input rows also train 1 epoch on their rows (the augmented one with the
    variants, each with its own IS energy) and predict every test row; a row without its IS energy is refused in
    one line."""
    from esnet_tf.model import ESNetConfig, build_esnet, energy_inputs_of, load_model
    from esnet_tf.splits import kfold_of
    from esnet_tf.study import fit as study_fit

    def tiny(**changes: Any) -> ESNetConfig:
        return ESNetConfig.small().replace(stem_filters=8, stage_widths=(8, 16), blocks_per_stage=1, merge_filters=16,
                                           composition_units=8, head_units=(16,), name="tiny", **changes)

    trained = ("esnet_is_relax_aug", "esnet_uip_relax")
    seen: dict = {}
    real_fit = study_fit.fit_esnet

    def fit_and_look(train, test, work, config, *args, **kwargs):
        assert all(k in train and k in test for k in config.energy_inputs)
        if seen["name"] not in trained:
            seen["got"] = (energy_inputs_of(build_esnet(config)), config.target, config.element_properties, None)
            raise _Built
        out = real_fit(train, test, work, config, *args, **kwargs)
        model = load_model(work / "run" / "best.keras")
        seen["got"] = (energy_inputs_of(model), config.target, config.element_properties, len(train["id"]))
        return out

    monkeypatch.setattr(study_models, "_small", tiny)
    monkeypatch.setattr(study_fit, "fit_esnet", fit_and_look)
    data = _energy_esnet_data()
    fold = np.array([kfold_of(c, 2, 0) for c in data.is_["chemsys"]])
    is_ef, uip_ef = "is_formation_energy_per_atom", "uip_formation_energy_per_atom"
    want = {"esnet_is_energy": ((is_ef,), "formation_energy", False),
            "esnet_is_relax": ((is_ef,), "relaxation_energy", False),
            "esnet_is_relax_elements": ((is_ef,), "relaxation_energy", True),
            "esnet_is_relax_aug": ((is_ef,), "relaxation_energy", False),
            "esnet_uip_relax": ((is_ef, uip_ef), "relaxation_energy", False),
            "esnet_uip_is": ((is_ef, uip_ef), "formation_energy", False)}
    n_test, n_train = int((fold == 1).sum()), int((fold == 0).sum())
    for name, (inputs, target, elements) in want.items():
        assert study_models.MODELS[name].group == "esnet"
        seen.clear()
        seen["name"] = name
        unit = study_models.Unit(data, fold, 1, 2, 0, 1, 4, tmp_path / name)
        if name not in trained:
            with pytest.raises(_Built):
                study_models.run_model(name, unit)
            assert seen["got"] == (inputs, target, elements, None), name
            continue
        pred, _ = study_models.run_model(name, unit)
        assert pred.shape == (n_test,) and np.all(np.isfinite(pred)), name
        rows = n_train * 3 if name == "esnet_is_relax_aug" else n_train  # + its 2 variants per training structure
        assert seen["got"] == (inputs, target, elements, rows), name
    assert study_models.MODELS["esnet_is_relax_aug"].augmented
    assert study_models.candidate_needs("esnet_uip_relax") == ("is_single_point", "uip_relaxation")
    missing = SimpleNamespace(**{**vars(data), "is_formation_energy": np.where(fold == 1, np.nan, data.y)})
    with pytest.raises(UserError, match="is_formation_energy_per_atom"):
        study_models.run_model("esnet_is_relax", study_models.Unit(missing, fold, 1, 2, 0, 1, 4, tmp_path / "x"))


def test_levers_of_the_best_row_train_longer_wider_or_tuned_with_its_inputs(tmp_path, monkeypatch):
    """The levers tried on esnet_uip_correction: `_long` trains twice the unit's epochs, `_paper` has the paper's
    widths, `_tuned` runs a real KerasTuner search (1 tiny trial) whose base is the row's own config (its two
    energy inputs, target and element properties kept) on the training rows with those inputs, and hands the chosen
    config to the final training."""
    import json

    from esnet_tf.model import ESNetConfig
    from esnet_tf.splits import kfold_of
    from esnet_tf.study import fit as study_fit

    inputs = ("is_formation_energy_per_atom", "uip_formation_energy_per_atom")
    seen: dict = {}
    real_tune = study_fit.tune_esnet

    def fit_and_look(train, test, work, config, epochs, *args, **kwargs):
        config = ESNetConfig.named(config) if isinstance(config, str) else config
        assert all(k in train and k in test for k in config.energy_inputs)
        seen["got"] = (config.energy_inputs, config.target, config.element_properties, config.stage_widths, epochs)
        raise _Built

    monkeypatch.setattr(study_fit, "fit_esnet", fit_and_look)
    space = tmp_path / "space.json"  # tiny models: 1 stage, 1 head layer
    space.write_text(json.dumps({"base": "small", "hyperparameters": {
        "stem_filters": 4, "n_stages": 1, "first_width": {"values": [4, 8]}, "composition_units": 8,
        "head_layers": 1, "head_width": 8}}))
    data = _energy_esnet_data()
    fold = np.array([kfold_of(c, 2, 0) for c in data.is_["chemsys"]])
    small, paper = ESNetConfig.small().stage_widths, ESNetConfig.paper().stage_widths
    want = {"esnet_uip_correction_long": (small, 8), "esnet_uip_correction_paper": (paper, 4)}
    for name, (widths, epochs) in want.items():
        seen["name"] = name
        with pytest.raises(_Built):
            study_models.run_model(name, study_models.Unit(data, fold, 1, 2, 0, 4, 4, tmp_path / name, space))
        assert seen["got"] == (inputs, "uip_correction", True, widths, epochs), name
        assert study_models.candidate_needs(name) == ("is_single_point", "uip_relaxation")
    seen["name"] = "esnet_uip_correction_tuned"

    def tune_two_trials(*args, **kwargs):
        seen["space"] = json.loads(Path(args[-1]).read_text())
        seen["base"] = ESNetConfig.named(seen["space"]["base"])  # the unit's work folder goes with the unit
        seen["tuned"] = real_tune(*args, trials=1, **kwargs)
        return seen["tuned"]

    monkeypatch.setattr(study_fit, "tune_esnet", tune_two_trials)
    with pytest.raises(_Built):
        study_models.run_model(seen["name"], study_models.Unit(data, fold, 1, 2, 0, 4, 4, tmp_path / "t", space))
    assert seen["space"]["hyperparameters"]["first_width"] == {"values": [4, 8]}
    assert (seen["base"].energy_inputs, seen["base"].target) == (inputs, "uip_correction")
    notes = seen["tuned"][1]
    assert notes["n_trials"] == 1 and seen["got"][:3] == (inputs, "uip_correction", True)
    assert seen["got"][3] == (notes["hyperparameters"]["first_width"],)


def test_campaign_predictions_from_study_units_are_their_out_of_fold_ensemble(tmp_path):
    """oof_from_study: members = a candidate's units under each seed (mean, std ddof=1), fold = its
    first seed's fold, elements left out; a missing unit or another snapshot is a one-line error."""
    import csv
    import json

    from esnet_tf.study.crossfit import oof_from_study
    from esnet_tf.study.data import SNAPSHOT, file_hash
    from esnet_tf.study.run import unit_path

    study, camp = tmp_path / "study", tmp_path / "camp"
    study.mkdir()
    camp.mkdir()
    header = "id,formula,formation_energy_per_atom,e_above_hull\n"
    body = "Al_fcc,Al,0,0\nAlN_wurtzite,AlN,-1.2,0\nNaCl_rocksalt,NaCl,-2.0,0\nNaCl_cscl,NaCl,-1.9,0.1\n"
    (study / SNAPSHOT).write_text(header + body)
    (camp / SNAPSHOT).write_text(header + body)
    key = file_hash(study / SNAPSHOT)
    folds = {0: [["Al_fcc", "AlN_wurtzite"], ["NaCl_rocksalt", "NaCl_cscl"]],
             1: [["NaCl_rocksalt", "NaCl_cscl", "Al_fcc"], ["AlN_wurtzite"]]}
    preds = {0: {"Al_fcc": 0.1, "AlN_wurtzite": -1.0, "NaCl_rocksalt": -1.8, "NaCl_cscl": -1.7},
             1: {"Al_fcc": 0.0, "AlN_wurtzite": -1.4, "NaCl_rocksalt": -2.2, "NaCl_cscl": -1.5}}
    for seed, parts in folds.items():
        for k, ids in enumerate(parts):
            path = unit_path(study, key, "esnet_is", k, 2, seed, 40)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"test_ids": ids, "pred": [preds[seed][i] for i in ids], "wall_s": 1.0}))
    info = oof_from_study(camp / "out", study, "esnet_is", seeds=(0, 1), folds=2, snapshot=camp / SNAPSHOT)
    rows = {r["id"]: r for r in csv.DictReader((camp / "out" / "oof_predictions.csv").open())}
    assert set(rows) == {"AlN_wurtzite", "NaCl_rocksalt", "NaCl_cscl"}  # elements are references
    assert math.isclose(float(rows["AlN_wurtzite"]["predicted_formation_energy_per_atom"]), -1.2)
    assert math.isclose(float(rows["AlN_wurtzite"]["predicted_formation_energy_per_atom_std"]),
                        float(np.std([-1.0, -1.4], ddof=1)), rel_tol=1e-5)
    assert [rows[i]["fold"] for i in ("AlN_wurtzite", "NaCl_cscl")] == ["0", "1"]
    assert info["n_candidates"] == 3 and info["training_wall_s"] == 4.0
    with pytest.raises(UserError, match=r"1 study unit\(s\) of esnet_is missing.*--units-only"):
        unit_path(study, key, "esnet_is", 1, 2, 1, 40).unlink()
        oof_from_study(camp / "out", study, "esnet_is", seeds=(0, 1), folds=2, snapshot=camp / SNAPSHOT)
    (camp / SNAPSHOT).write_text(header + body + "KCl_rocksalt,KCl,-2.1,0\n")
    with pytest.raises(UserError, match="is not the study's snapshot"):
        oof_from_study(camp / "out", study, "esnet_is", seeds=(0, 1), folds=2, snapshot=camp / SNAPSHOT)


# ---------------------------------------------------------------- leave-prototype-out folds (issue 40, 1a)

LOPO = ROOT / "benchmarks" / "results" / "accuracy_lopo"


def _prototype_snapshot() -> SimpleNamespace:
    """A synthetic study: 60 structures in 12 prototypes (elements' fcc/bcc/hcp among them), 3 variants each,
    the variants' own prototype labels deliberately not their parent's."""
    prototypes = ["fcc", "bcc", "hcp", "rocksalt", "cscl", "zincblende", "fluorite", "l12", "d03", "c15",
                  "perovskite", "heusler"]
    is_ = {"id": np.array([f"s{i}" for i in range(60)]),
           "chemsys": np.array([f"A-B{i % 17}" for i in range(60)]),
           "prototype": np.array([prototypes[(7 * i) % len(prototypes)] for i in range(60)])}
    parents = np.repeat(np.arange(60), 3)
    aug = {"id": np.array([f"s{p}_v{j}" for j, p in enumerate(parents)]), "parent_id": is_["id"][parents],
           "chemsys": is_["chemsys"][parents], "prototype": np.array(["perturbed"] * len(parents))}
    return SimpleNamespace(is_=is_, aug=aug)


def test_prototype_folds_hold_each_prototype_in_one_fold_and_variants_follow_their_parent():
    from esnet_tf.splits import kfold_of

    data = _prototype_snapshot()
    for seed in (0, 1, 2):
        fold = study_data.StudyData.folds(data, 5, seed, "prototype")
        assert fold.tolist() == [kfold_of(p, 5, seed) for p in data.is_["prototype"]]  # the same hashing helper
        for proto in set(data.is_["prototype"].tolist()):
            assert len(set(fold[data.is_["prototype"] == proto].tolist())) == 1
        assert study_data.fold_sizes(fold, 5) == [int((fold == k).sum()) for k in range(5)]
        used = set()
        for k in range(5):
            sel = study_data.augmented_training_rows(data, fold, k, 5, seed, "prototype")
            assert set(data.aug["parent_id"][sel].tolist()) == set(data.is_["id"][fold != k].tolist())
            used |= set(sel.tolist())
        assert used == set(range(len(data.aug["id"])))  # every variant trains exactly where its parent does
        chem = study_data.StudyData.folds(data, 5, seed)  # the default grouping is unchanged
        assert chem.tolist() == [kfold_of(c, 5, seed) for c in data.is_["chemsys"]]
    with pytest.raises(AssertionError, match="test-fold structures"):  # structures folded by another grouping
        for k in range(5):
            study_data.augmented_training_rows(data, study_data.StudyData.folds(data, 5, 0), k, 5, 0, "prototype")


def test_unit_paths_of_the_chemsys_study_are_unchanged_and_prototype_ones_differ():
    from esnet_tf.study.run import unit_path

    out = ROOT / "benchmarks" / "results" / "accuracy"
    esnet = unit_path(out, "a795d73e514d", "esnet_is", 1, 5, 2, 40)
    assert esnet == out / "cache" / "a795d73e514d" / "esnet_is_f1of5_s2_e40.json"
    assert unit_path(out, "a795d73e514d", "gbr_uip", 0, 5, 0, 40, "chemsys").name == "gbr_uip_f0of5_s0_e0.json"
    for model in ("mean", "gbr_uip", "esnet_is"):  # the committed units load under their names
        assert unit_path(out, "a795d73e514d", model, 4, 5, 2, 40).is_file()
    lopo = unit_path(out, "a795d73e514d", "gbr_uip", 0, 5, 0, 40, "prototype")
    assert lopo.name == "gbr_uip_f0of5_s0_e0_byprototype.json"
    assert unit_path(LOPO, "a795d73e514d", "gbr_uip", 4, 5, 2, 40, "prototype").is_file()  # the committed LOPO units


def test_bad_grouping_is_one_line(tmp_path):
    import subprocess
    import sys

    from esnet_tf.study import StudyConfig

    with pytest.raises(UserError, match=r"^unknown grouping 'formula' of the outer folds: choose --group-by from "
                                        r"chemsys, prototype, pool$"):
        StudyConfig(out=tmp_path, demo=DEMO, grouping="formula")
    with pytest.raises(UserError, match="unknown grouping"):
        report.replace_table("", "", "doc", "formula")
    done = subprocess.run([sys.executable, str(SCRIPT), "--group-by", "spacegroup", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and not list(tmp_path.iterdir())
    assert done.stderr == ("accuracy.py: error: unknown grouping 'spacegroup' of the outer folds: choose --group-by "
                           "from chemsys, prototype, pool\n")


def test_a_prototype_study_rewrites_only_its_own_table():
    start, end = report.MARKERS["prototype"]
    text = f"{report.TABLE_START}\nchemsys | table\n{report.TABLE_END}\nreading\n{start}\nold\n{end}\n"
    new = report.replace_table(text, "| lopo |\n", "doc", "prototype")
    assert new == f"{report.TABLE_START}\nchemsys | table\n{report.TABLE_END}\nreading\n{start}\n| lopo |\n{end}\n"
    assert report.replace_table(new, "| chem |\n") == new.replace("chemsys | table", "| chem |")
    with pytest.raises(UserError, match="lopo-table:start"):
        report.replace_table(f"{report.TABLE_START}\n{report.TABLE_END}\n", "x", "doc", "prototype")


def test_study_doc_lopo_table_is_the_summary_of_the_committed_lopo_units():
    """docs/study.md's leave-prototype-out table is table.md of benchmarks/results/accuracy_lopo, whose
    results.json summarises the committed unit records (pooled MAE recomputed from them here)."""
    import json

    result = json.loads((LOPO / "results.json").read_text(encoding="utf-8"))
    assert result["grouping"] == "prototype"
    table = report.table_markdown(result)
    assert "leave-prototype-out 5-fold CV" in table
    assert table == (LOPO / "table.md").read_text(encoding="utf-8")
    doc = (ROOT / "docs" / "study.md").read_text(encoding="utf-8")
    start, end = report.MARKERS["prototype"]
    assert doc[doc.index(start) + len(start):doc.index(end)].strip("\n") == table.strip("\n")
    for model, got in result["summary"]["models"].items():
        epochs = result["epochs"] if study_models.MODELS[model].uses_epochs else 0
        recs = [json.loads(p.read_text()) for p in (LOPO / "cache" / result["snapshot_hash"]).glob(
            f"{model}_f*of5_s*_e{epochs}_byprototype.json")]
        seeds = got["complete_seeds"]
        assert len(recs) == got["units"] == 5 * len(seeds) and {r["grouping"] for r in recs} == {"prototype"}
        assert sum(len(r["test_ids"]) for r in recs) == len(seeds) * result["n_structures"]  # each once per seed
        per_seed = [sum(abs(np.asarray(r["pred"]) - np.asarray(r["truth"])).sum() for r in recs if r["seed"] == s)
                    / result["n_structures"] for s in seeds]
        assert got["pooled_mae"]["value"] == pytest.approx(np.mean(per_seed), abs=1e-9)


def test_group_by_prototype_has_its_own_folder_and_reaches_the_workers():
    """Each grouping's default folder (`default_out`, what benchmarks/accuracy.py uses under benchmarks/results)
    is its own; a worker process gets the grouping and the folder (`worker_args`)."""
    from esnet_tf.study import StudyConfig
    from esnet_tf.study.run import default_out, worker_args

    results = ROOT / "benchmarks" / "results"
    assert default_out("chemsys", results) == results / "accuracy" and default_out("prototype", results) == LOPO
    config = StudyConfig(out=LOPO, demo=DEMO, models=("mean",), grouping="prototype")
    worker = worker_args(config, 1)
    assert worker[worker.index("--group-by") + 1] == "prototype" and worker[worker.index("--out") + 1] == str(LOPO)
    assert worker[worker.index("--threads") + 1] == "1" and "--units-only" in worker


# ---------------------------------------------------------------- the pool as a test set (issue 40, 1b)

POOL_STUDY = ROOT / "benchmarks" / "results" / "accuracy_pool"


def _snapshot_rows(path: Path) -> dict[str, dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def _chemsys(formula: str) -> str:
    from pymatgen.core import Composition

    return "-".join(sorted(el.symbol for el in Composition(formula).elements))


def test_pool_protocol_trains_on_demo_and_pool_training_rows_and_tests_only_on_candidates():
    """A pool Unit tests exactly the pool's candidates and trains on the demo's rows (with every demo variant) and
    the pool's elements and competitors; the committed pool units test only pool-snapshot candidates in chemical
    systems absent from the demo snapshot and from the pool's training rows."""
    import json

    ids = np.array([f"d{i}" for i in range(8)] + ["p0", "p1", "p2"])
    data = SimpleNamespace(is_={"id": ids}, is_pool=np.arange(11) >= 8, is_pool_test=np.arange(11) >= 9,
                           pool=Path("pool"),
                           aug={"id": np.array(["d0_v0", "d3_v1"]), "parent_id": np.array(["d0", "d3"]),
                                "chemsys": np.array(["A-B", "A-C"])})
    for seed in (0, 1, 2):
        fold = study_data.StudyData.folds(data, 1, seed, "pool")
        unit = study_models.Unit(data, fold, 0, 1, seed, 1, 4, Path("unused"), grouping="pool")
        assert ids[unit.test_idx].tolist() == ["p1", "p2"]
        assert ids[unit.train_idx].tolist() == [f"d{i}" for i in range(8)] + ["p0"]
        assert not set(ids[unit.test_idx]) & set(ids[unit.train_idx])
        assert study_data.augmented_training_rows(data, fold, 0, 1, seed, "pool").tolist() == [0, 1]
    with pytest.raises(UserError, match="needs the pool's rows"):
        study_data.StudyData.folds(SimpleNamespace(pool=None), 1, 0, "pool")

    demo = _snapshot_rows(POOL_STUDY / "labels_snapshot.csv")
    pool = _snapshot_rows(POOL_STUDY / "pool_labels_snapshot.csv")
    demo_systems = {_chemsys(r["formula"]) for r in demo.values()}
    result = json.loads((POOL_STUDY / "results.json").read_text(encoding="utf-8"))
    recs = [json.loads(p.read_text()) for p in
            (POOL_STUDY / "cache" / result["snapshot_hash"]).glob("*_bypool-candidates.json")]
    assert recs and {(r["grouping"], r["fold"], r["folds"]) for r in recs} == {("pool", 0, 1)}
    training_systems = demo_systems | {_chemsys(r["formula"]) for r in pool.values()
                                       if r["role"] in study_data.POOL_TRAINING_ROLES}
    n_pool_training = result["test_set"]["n_pool_training_rows"]
    assert n_pool_training > 0
    for r in recs:
        assert set(r["test_ids"]) <= set(pool) and not set(r["test_ids"]) & set(demo)
        assert {pool[i]["role"] for i in r["test_ids"]} == {"candidate"}
        assert not {_chemsys(pool[i]["formula"]) for i in r["test_ids"]} & training_systems
        assert len(r["test_ids"]) == result["test_set"]["n_structures"]
        if "n_train" in r["notes"]:  # the ESNet rows record their training rows: the demo's and the pool's
            assert r["notes"]["n_train"] == len(demo) + n_pool_training == result["n_structures"]
    left = result["test_set"]["left_out"]["chemical_system_in_the_demo"]
    assert {_chemsys(pool[i]["formula"]) for i in left} <= demo_systems  # left out for that reason only


def test_pool_units_have_their_own_names_folder_and_options():
    from esnet_tf.study import StudyConfig
    from esnet_tf.study.run import unit_path

    key = "a795d73e514d"
    names = {g: unit_path(Path("out"), key, "gbr_uip", 0, f, 0, 40, g).name
             for g, f in (("chemsys", 5), ("prototype", 5), ("pool", 1))}
    assert names == {"chemsys": "gbr_uip_f0of5_s0_e0.json", "prototype": "gbr_uip_f0of5_s0_e0_byprototype.json",
                     "pool": "gbr_uip_f0of1_s0_e0_bypool-candidates.json"}
    assert unit_path(Path("out"), key, "esnet_is", 0, 1, 2, 40, "pool").name == \
        "esnet_is_f0of1_s2_e40_bypool-candidates.json"
    from esnet_tf.study.run import default_folds, default_out, worker_args

    results = ROOT / "benchmarks" / "results"
    assert (default_out("pool", results), default_folds("pool"), default_folds("prototype")) == (POOL_STUDY, 1, 5)
    assert len({default_out(g, results) for g in ("chemsys", "prototype", "pool")}) == 3
    pool = ROOT / "datasets" / "is_dos" / "pool"
    config = StudyConfig(out=POOL_STUDY, demo=DEMO, folds=1, models=("mean",), grouping="pool", pool=pool)
    worker = worker_args(config, 1)
    assert worker[worker.index("--group-by") + 1] == "pool" and worker[worker.index("--pool") + 1] == str(pool)
    assert worker[worker.index("--folds") + 1] == "1"
    with pytest.raises(UserError, match="^--group-by pool has no folds"):
        StudyConfig(out=POOL_STUDY, demo=DEMO, folds=5, models=("mean",), grouping="pool", pool=pool)
    with pytest.raises(UserError, match="^--pool goes with --group-by pool"):
        StudyConfig(out=POOL_STUDY, demo=DEMO, models=("mean",), pool=pool)
    with pytest.raises(UserError, match="no pool labels.csv"):
        StudyConfig(out=Path("out"), demo=DEMO, folds=1, grouping="pool", pool=ROOT / "no_such_pool")


def test_pool_training_roles_are_checked_and_reach_the_workers():
    """`--pool-training-roles` takes the pool's training roles only (candidates are the test set), goes with
    --group-by pool, and each worker process gets it."""
    from esnet_tf.study import StudyConfig
    from esnet_tf.study.run import worker_args

    pool = ROOT / "datasets" / "is_dos" / "pool"
    assert study_data.check_training_roles(["element", "competitor"]) == ("element", "competitor")
    for bad in (("candidate",), ("element", "element"), ("elements",)):
        with pytest.raises(UserError, match=r"^pool training role\(s\) .* from element, competitor, label_range"):
            study_data.check_training_roles(bad)
    config = StudyConfig(out=Path("out"), demo=DEMO, folds=1, models=("mean",), grouping="pool", pool=pool,
                         pool_training_roles=("element", "competitor"))
    worker = worker_args(config, 1)
    assert worker[worker.index("--pool-training-roles") + 1] == "element,competitor"
    with pytest.raises(UserError, match="^--pool-training-roles goes with --group-by pool"):
        StudyConfig(out=Path("out"), demo=DEMO, models=("mean",), pool_training_roles=("element",))
    with pytest.raises(UserError, match="candidates are the test set"):
        StudyConfig(out=Path("out"), demo=DEMO, folds=1, models=("mean",), grouping="pool", pool=pool,
                    pool_training_roles=("candidate",))


POOL_ABLATION = ROOT / "benchmarks" / "results" / "accuracy_pool_no_label_range"


def test_committed_pool_ablation_drops_exactly_the_roles_it_does_not_train_on():
    """The label-range ablation shares the full pool study's snapshot and test candidates; its units train on
    the full study's rows minus the label-range rows of the snapshot (with a relaxed energy, outside the demo's
    systems), which results.json lists as left out; its cache is keyed apart from the full study's."""
    import json

    full = json.loads((POOL_STUDY / "results.json").read_text(encoding="utf-8"))
    ablation = json.loads((POOL_ABLATION / "results.json").read_text(encoding="utf-8"))
    for name in ("labels_snapshot.csv", "labels_augmented_snapshot.csv", "pool_labels_snapshot.csv"):
        assert (POOL_ABLATION / name).read_bytes() == (POOL_STUDY / name).read_bytes()
    assert ablation["test_set"]["pool_training_roles"] == ["element", "competitor"]
    assert ablation["snapshot_hash"] == full["snapshot_hash"] + "-train-element+competitor"
    pool = _snapshot_rows(POOL_STUDY / "pool_labels_snapshot.csv")
    dropped = ablation["test_set"]["left_out"]["role_not_trained_on"]
    demo_systems = {_chemsys(r["formula"]) for r in _snapshot_rows(POOL_STUDY / "labels_snapshot.csv").values()}
    expected = sorted(i for i, r in pool.items() if r["role"] == "label_range" and r["formation_energy_per_atom"]
                      and _chemsys(r["formula"]) not in demo_systems)
    assert sorted(dropped) == expected and expected
    assert ablation["n_structures"] == full["n_structures"] - len(expected)
    for path in (POOL_ABLATION / "cache" / ablation["snapshot_hash"]).glob("*_bypool-candidates.json"):
        rec = json.loads(path.read_text(encoding="utf-8"))
        twin = json.loads((POOL_STUDY / "cache" / full["snapshot_hash"] / path.name).read_text(encoding="utf-8"))
        assert rec["test_ids"] == twin["test_ids"] and rec["truth"] == twin["truth"]
        if "n_train" in rec["notes"]:
            assert rec["notes"]["n_train"] == twin["notes"]["n_train"] - len(expected)


def test_study_doc_pool_ablation_table_is_the_committed_comparison(tmp_path):
    """docs/study.md's ablation table is what benchmarks/pool_ablation.py computes from the two committed
    studies' units."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pool_ablation", ROOT / "benchmarks" / "pool_ablation.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    doc = tmp_path / "study.md"
    doc.write_text("before\n" + "\n".join(script.MARKERS) + "\nafter\n")
    assert script.main(["--ablation", str(POOL_ABLATION), "--full", str(POOL_STUDY), "--json",
                        str(tmp_path / "c.json"), "--doc", str(doc)]) == 0
    table = doc.read_text().split(script.MARKERS[0])[1].split(script.MARKERS[1])[0]
    committed = (ROOT / "docs" / "study.md").read_text(encoding="utf-8")
    assert table.strip() and committed.split(script.MARKERS[0])[1].split(script.MARKERS[1])[0] == table
    assert doc.read_text().startswith("before\n") and doc.read_text().endswith("after\n")
    assert script.main(["--ablation", str(tmp_path), "--full", str(POOL_STUDY)]) == 2  # no results.json there


def test_study_doc_pool_table_is_the_summary_of_the_committed_pool_units():
    """docs/study.md's pool table is table.md of benchmarks/results/accuracy_pool, the table of its results.json;
    the rows of the reference and the best baseline (and the set mean) are recomputed here from
    the committed unit records (`report.pool_summary`) and the committed pool snapshot's roles (a subset: the
    bootstrap of every row takes longer than a test may)."""
    import json

    from scipy.stats import spearmanr

    result = json.loads((POOL_STUDY / "results.json").read_text(encoding="utf-8"))
    assert result["grouping"] == "pool" and result["folds"] == 1
    table = report.table_markdown(result)
    assert table == (POOL_STUDY / "table.md").read_text(encoding="utf-8")
    doc = (ROOT / "docs" / "study.md").read_text(encoding="utf-8")
    start, end = report.MARKERS["pool"]
    assert doc[doc.index(start) + len(start):doc.index(end)].strip("\n") == table.strip("\n")
    best = result["summary"]["best_composition_model"]
    pool = _snapshot_rows(POOL_STUDY / "pool_labels_snapshot.csv")
    units: dict[str, dict] = {m: {} for m in ("mean", best)}
    for p in (POOL_STUDY / "cache" / result["snapshot_hash"]).glob("*_bypool-candidates.json"):
        rec = json.loads(p.read_text())
        if rec["model"] in units:
            units[rec["model"]][(rec["fold"], rec["seed"])] = rec
    summary = report.pool_summary(units, result["seeds"], {i: pool[i]["role"] for i in pool})
    assert summary["best_composition_model"] == best
    mine = report.table_markdown({**result, "summary": summary, "models": list(units)}).splitlines()
    rows = [line for line in mine if line.startswith(("| mean |", f"| {best} |", "| set mean"))]
    assert len(rows) == 3 and all(line in table.splitlines() for line in rows)
    truth = np.asarray(units["mean"][(0, 0)]["truth"], float)
    assert summary["set_mean"]["value"] == pytest.approx(np.abs(truth - truth.mean()).mean(), abs=1e-12)
    assert np.allclose(truth, [float(pool[i]["formation_energy_per_atom"]) for i in units["mean"][(0, 0)]["test_ids"]],
                       atol=1e-6)  # the truths are the pool snapshot's labels (float32)
    rho = summary["models"][best]["spearman"]
    assert rho["n"] == len(units[best])
    assert rho["mean"] == pytest.approx(np.mean([spearmanr(r["pred"], r["truth"]).statistic
                                                 for r in units[best].values()]), abs=1e-12)
    assert summary["models"]["mean"]["spearman"] is None  # a constant prediction has no rank correlation
