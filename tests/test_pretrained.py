"""Shipped pretrained models: load by name, reproduce the README's test MAE, ensemble outputs,
domain check on real VASP / Materials Project files, `esnet predict` / `esnet models`; the IS-energy
model's calibrated interval and domain flag on real GPAW calculation directories."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from esnet_tf import resources
from esnet_tf.cli import main
from esnet_tf.domain import Domain
from esnet_tf.isdos import DOMAIN_COLUMN, PREDICTION_COLUMN, PREDICTION_STD_COLUMN
from esnet_tf.pretrained import IS_RELAX_MODEL, NAME_PATTERN, UIP_MODEL, list_models, load_model, load_split_arrays

SHIPPED = list_models()
NAMES = [m.name for m in SHIPPED]
LIMIT_MB = 32.0  # four ensembles of five `small` members (~7.5 MB each: model.keras + SavedModel)
LOWER, UPPER = f"{PREDICTION_COLUMN}_lower", f"{PREDICTION_COLUMN}_upper"
IS_EF = "is_formation_energy_per_atom"
DEMO_CALCS = resources.demo_dir() / "calcs"
#: real GPAW calculation directories of the demo (AgCl_cscl, AgCl_rocksalt), and an IS-augmentation variant of
#: AlAs_cscl whose cell is compressed ×1.45 in lattice constant (IS E_f 13.0 eV/atom; labels_augmented.csv)
GPAW_DIRS = ("42e784dfac2a90db", "41040e63ad348ad8")
COMPRESSED_DIR = "25f883b63b4d333f"


def _readme_mae(folder: Path, split: str) -> float:
    """The MAE of `split` in the model README's errors table (| split | n | MAE | ...)."""
    for line in (folder / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == split and len(cells) > 3:
            return float(cells[2])
    raise AssertionError(f"{folder}/README.md has no '{split}' row in its errors table")


@pytest.fixture(scope="module")
def shipped():
    if not SHIPPED:
        pytest.fail("no shipped model in esnet_tf.saved_models (run scripts/train_pretrained.py)")
    return {name: load_model(name) for name in NAMES}


def test_models_ship_with_layout_and_size():
    assert SHIPPED, "saved_models/ ships no model"
    total = 0.0
    for m in SHIPPED:
        assert NAME_PATTERN.match(m.name), m.name
        for f in ("README.md", "model.json", "model.keras", "domain.json", "splits.json", "1/saved_model.pb",
                  "1/assets.extra/tf_serving_warmup_requests"):
            assert (m.path / f).is_file(), f"{m.name}: missing {f}"
        assert m.n_members >= 5
        total += m.size_mb
    total += sum(p.stat().st_size for p in resources.saved_models_dir().glob("*") if p.is_file()) / 1e6
    assert total <= LIMIT_MB, f"shipped models take {total:.1f} MB > {LIMIT_MB} MB"


@pytest.mark.parametrize("name", NAMES)
def test_reproduces_readme_test_mae(shipped, name):
    model = shipped[name]
    arrays = load_split_arrays(name, "test")
    table = model.predict_arrays(arrays)
    mae = float(np.mean(np.abs(table[PREDICTION_COLUMN] - arrays["formation_energy_per_atom"].astype(np.float64))))
    assert abs(mae - _readme_mae(model.path, "test")) <= 1e-4  # README gives 4 decimals
    assert abs(mae - model.info["metrics"]["test"]["mae"]) <= 1e-4
    splits = json.loads((model.path / "splits.json").read_text())["splits"]
    assert [r["id"] for r in splits["test"]] == list(table["id"])
    # no chemical system in two splits
    systems = {s: {r["chemsys"] for r in rows} for s, rows in splits.items()}
    assert not systems["train"] & systems["test"] and not systems["validation"] & systems["test"]


def test_pool_models_never_saw_a_candidate_or_a_label_range_row():
    """Every pool row in a shipped model's splits (train, calibration, validation, test) is one of the pool's
    elements or competitors (scripts/train_pretrained.py's SHIPPED_POOL_ROLES): the candidates are the
    out-of-sample set, and the label-range compounds' 5-58 eV/atom relaxation energies are kept out of the
    shipped recipes."""
    import csv

    with open(resources.pool_dir() / "labels.csv", newline="", encoding="utf-8") as fh:
        role = {r["id"]: r["role"] for r in csv.DictReader(fh)}
    seen_pool = 0
    for m in SHIPPED:
        splits = json.loads((m.path / "splits.json").read_text())["splits"]
        rows = [r for part in splits.values() for r in part if r.get("dataset") == "pool"]
        seen_pool += len(rows)
        roles = {role.get(r["id"], "(not in the pool's labels.csv)") for r in rows}
        assert roles <= {"element", "competitor"}, f"{m.name} trained or tested on pool rows of roles {roles}"
    assert seen_pool, "no shipped model holds pool rows"


@pytest.mark.parametrize("name", NAMES)
def test_ensemble_savedmodel_has_mean_and_std(shipped, name):
    import tensorflow as tf

    from esnet_tf.export import WARMUP_FILE, read_warmup

    model = shipped[name]
    sig = tf.saved_model.load(str(model.path / "1")).signatures["serving_default"]
    outs = sig.structured_outputs
    interval = {"formation_energy_per_atom_lower", "formation_energy_per_atom_upper"} if model.info.get("interval") \
        else set()
    assert set(outs) == {"formation_energy_per_atom", "formation_energy_per_atom_std"} | interval
    for spec in outs.values():
        assert spec.shape.as_list() == [None, 1] and spec.dtype == tf.float32
    inputs = {k: v.shape.as_list() for k, v in sig.structured_input_signature[1].items()}
    energy = {k: [None, 1] for k in model.predictor.energy_inputs}
    assert inputs == {"dos_up": [None, 1500, 9], "dos_down": [None, 1500, 9], "composition": [None, 118], **energy}
    if model.info.get("uip"):  # the model that corrects CHGNet takes its formation energy too
        assert inputs["uip_formation_energy_per_atom"] == [None, 1] and model.takes_uip
    assert sorted(model.info.get("inputs", inputs)) == sorted(inputs)
    arrays = load_split_arrays(name, "validation")
    batch = {k: tf.constant(np.asarray(arrays[k][:3], np.float32).reshape((3, *inputs[k][1:]))) for k in inputs}
    got = sig(**batch)
    mean, std = model.predictor.predict_with_std(arrays)
    assert got["formation_energy_per_atom"].shape == (3, 1) and got["formation_energy_per_atom_std"].shape == (3, 1)
    np.testing.assert_allclose(got["formation_energy_per_atom"].numpy().ravel(), mean[:3], atol=1e-5)
    np.testing.assert_allclose(got["formation_energy_per_atom_std"].numpy().ravel(), std[:3], atol=1e-5)
    assert (std > 0).all()
    logs = read_warmup(model.path / "1" / "assets.extra" / WARMUP_FILE)
    assert len(logs) >= 1 and logs[0].predict_log.request.model_spec.name == name
    assert all(set(log.predict_log.request.inputs) == set(inputs) for log in logs)  # the energy input too
    if interval:
        q = model.info["interval"]["interval_scale"]
        for k, sign in (("formation_energy_per_atom_lower", -1), ("formation_energy_per_atom_upper", 1)):
            np.testing.assert_allclose(got[k].numpy().ravel(), mean[:3] + sign * q * std[:3], atol=1e-5)


def test_python_api_one_or_many(shipped):
    import esnet_tf
    from esnet_tf.featurize import featurize
    from esnet_tf.labels import read_labels

    name = NAMES[0]
    rows = read_labels(resources.demo_labels())[:2]
    example = featurize(rows[1].file, id=rows[1].id)
    one = shipped[name].predict(rows[0].file)  # the model the fixture loaded by name with esnet_tf.load_model
    many = esnet_tf.predict_formation_energy(shipped[name], [rows[0].file, example])
    assert len(one) == 1 and len(many) == 2
    assert many["id"][1] == rows[1].id
    assert one.units[PREDICTION_COLUMN] == "eV/atom" and one.units[PREDICTION_STD_COLUMN] == "eV/atom"
    np.testing.assert_allclose(one[PREDICTION_COLUMN][0], many[PREDICTION_COLUMN][0], atol=1e-5)
    assert list(many[DOMAIN_COLUMN]) == ["", ""]  # GPAW demo IS-DOS: inside the training domain
    df = many.to_pandas()
    assert df.attrs["units"][PREDICTION_STD_COLUMN] == "eV/atom" and len(df) == 2


VASP_FILES = ("Al.vasprun.xml.gz", "GaAs_mp-2534.vasprun.xml.gz", "indirect.vasprun.xml.gz", "LiF.vasprun.xml.gz")
MP_FILES = ("Nb3Sn_complete_dos.json", "Si_complete_dos.json")


def test_vasp_fixtures_flagged_and_strict_refuses(shipped, fixtures_dir):
    from esnet_tf.errors import UserError

    name = NAMES[0]
    files = [fixtures_dir / "vasp" / f for f in VASP_FILES] + [fixtures_dir / "mp" / f for f in MP_FILES]
    table = shipped[name].predict([str(f) for f in files])
    assert len(table) == len(files)
    for i, reason in enumerate(table[DOMAIN_COLUMN]):
        assert "DFT code VASP" in reason, (table["id"][i], reason)
    assert any("DOS scale" in r or "occupied states" in r for r in table[DOMAIN_COLUMN])
    with pytest.raises(UserError) as err:
        shipped[name].predict([str(files[0])], strict=True)
    assert "\n" not in str(err.value) and "Al.vasprun" in str(err.value)


def test_cli_models_and_list(capsys, tmp_path):
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert all(n in listing for n in NAMES)
    assert main(["predict", "--list"]) == 0
    listing = capsys.readouterr().out  # once: a second readouterr() is empty
    assert all(n in listing for n in NAMES)
    assert "+ input is_formation_energy_per_atom; 90% interval" in listing
    assert main(["predict", "ESNet-Nothing-2000.01-X", str(resources.demo_labels()), "--out",
                 str(tmp_path / "p.csv")]) == 2
    assert "shipped" in capsys.readouterr().err


def test_cli_predicts_gpaw_in_domain_and_flags_vasp(fixtures_dir, tmp_path, capsys):
    """`esnet predict NAME FILES`: GPAW demo files get an empty domain column and σ > 0; a VASP file in the
    same run a domain reason and one warning line; `--strict` refuses that run (exit 2, no CSV)."""
    from esnet_tf.labels import read_labels

    rows = read_labels(resources.demo_labels())[:3]
    vasp = fixtures_dir / "vasp" / VASP_FILES[0]
    out = tmp_path / "p.csv"
    capsys.readouterr()
    assert main(["predict", NAMES[0], *[r.file for r in rows], str(vasp), "--out", str(out)]) == 0
    assert "outside the training domain" in capsys.readouterr().err
    with out.open() as fh:
        got = list(csv.DictReader(fh))
    assert {PREDICTION_COLUMN, PREDICTION_STD_COLUMN, DOMAIN_COLUMN} <= set(got[0])
    assert [r[DOMAIN_COLUMN] for r in got[:3]] == ["", "", ""] and "VASP" in got[3][DOMAIN_COLUMN]
    assert all(float(r[PREDICTION_STD_COLUMN]) > 0 for r in got)
    strict = tmp_path / "strict.csv"
    assert main(["predict", "--model", NAMES[0], str(vasp), "--strict", "--out", str(strict)]) == 2
    assert "--strict" in capsys.readouterr().err and not strict.exists()


def test_domain_rules():
    rng = np.random.default_rng(0)
    n = 6
    comp = np.zeros((n, 118), np.float32)
    comp[:3, 10] = 1.0            # Na
    comp[3:, 10], comp[3:, 16] = 0.5, 0.5  # NaCl
    up = rng.uniform(0.1, 0.3, (n, 1500, 9)).astype(np.float32)
    arrays = {"dos_up": up, "dos_down": up.copy(), "composition": comp}
    d = Domain.fit(arrays, ["GPAW 26"] * n)
    assert d.codes == ("GPAW",) and d.elements == ("Na", "Cl")
    assert list(d.check({**arrays, "code": np.array(["GPAW 1"] * n)})) == [""] * n
    d2 = Domain.from_dict(json.loads(json.dumps(d.to_dict())))
    assert d2 == d
    probe = {"dos_up": np.concatenate([up[:1], up[:1] * 0.1, up[:1]]),
             "dos_down": np.concatenate([up[:1], up[:1] * 0.1, up[:1]]),
             "composition": np.concatenate([comp[:1], comp[:1], np.eye(1, 118, 25, dtype=np.float32)]),
             "code": np.array(["VASP 5.4", "", ""])}
    reasons = d.check(probe)
    assert "DFT code VASP" in reasons[0] and "occupied states" not in reasons[0]
    assert "occupied states" in reasons[1] and "DOS scale" in reasons[1] and "DFT code" not in reasons[1]
    assert "Fe" in reasons[2] and "not in the training data" in reasons[2]


def test_domain_energy_range_and_sigma_rule():
    """The IS energy range (eV/atom) and the σ threshold of a Domain, its rule text and round trip."""
    rng = np.random.default_rng(1)
    n = 8
    comp = np.zeros((n, 118), np.float32)
    comp[:, 10], comp[:, 16] = 0.5, 0.5  # NaCl
    up = rng.uniform(0.1, 0.3, (n, 1500, 9)).astype(np.float32)
    ef = np.linspace(-1.0, 1.0, n, dtype=np.float32).reshape(-1, 1)
    arrays = {"dos_up": up, "dos_down": up.copy(), "composition": comp, IS_EF: ef}
    d = Domain.fit(arrays, ["GPAW 26"] * n, energy_inputs=(IS_EF,))
    assert d.energy_ranges == {IS_EF: (-1.0, 1.0)} and d.sigma_threshold is None
    d = d.with_sigma_threshold(np.linspace(0.01, 0.1, 10), 0.9, rows="test rows")
    assert d.sigma_threshold == pytest.approx(np.quantile(np.linspace(0.01, 0.1, 10), 0.9))
    assert Domain.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    rule = d.to_dict()["rule"]
    assert IS_EF in rule and "-1.20 to 1.20 eV/atom" in rule and "σ exceeds" in rule  # ±10 % of the 2 eV width
    assert d.to_dict()["inputs"] == ["dos_up", "dos_down", "composition", IS_EF]
    probe = {**arrays, IS_EF: np.array([[0.0], [1.19], [1.25], [-1.5], [0.0], [0.0], [0.0], [0.0]], np.float32)}
    std = np.array([0.01, 0.01, 0.01, 0.01, 0.2, 0.01, 0.01, 0.01])
    reasons = d.check(probe, std)
    assert list(reasons[:2]) == ["", ""] and all(IS_EF in r for r in reasons[2:4])
    assert "σ 0.200" in reasons[4] and IS_EF not in reasons[4]
    assert list(d.check(probe)[4:]) == [""] * 4  # without σ, only the inputs are checked


def test_fit_interval_scale_is_the_conformal_quantile():
    from esnet_tf.ensemble import fit_interval_scale, interval_coverage

    std = np.full(19, 0.5)
    errors = np.arange(1, 20) * 0.05  # |error| / σ = 0.1, 0.2, ..., 1.9
    q = fit_interval_scale(errors, np.zeros(19), std, 0.9)
    assert q == pytest.approx(1.8)  # ceil(20 * 0.9) = 18th smallest score
    assert interval_coverage(errors, -q * std, q * std) == pytest.approx(18 / 19)
    with pytest.raises(ValueError, match="too few"):
        fit_interval_scale(errors[:5], np.zeros(5), std[:5], 0.9)


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def is_model(shipped):
    if IS_RELAX_MODEL not in NAMES:
        pytest.fail(f"{IS_RELAX_MODEL} is not shipped (scripts/train_pretrained.py --recipe is_relax)")
    return shipped[IS_RELAX_MODEL]  # loaded by name once for the module


def test_is_energy_model_predicts_gpaw_calc_dirs_with_interval_and_flag(is_model, tmp_path):
    """`esnet predict NAME calcs/...` on real GPAW calculation directories, no extra flag: the IS energy comes
    from the engine's references, the CSV has the 90 % interval beside the mean and σ, and the strongly
    compressed cell (IS E_f 13 eV/atom) gets a domain reason naming the IS energy."""
    out = tmp_path / "p.csv"
    dirs = [str(DEMO_CALCS / d) for d in (*GPAW_DIRS, COMPRESSED_DIR)]
    assert main(["predict", IS_RELAX_MODEL, *dirs, "--out", str(out)]) == 0
    rows = _csv(out)
    assert [r["id"] for r in rows] == ["AgCl_cscl", "AgCl_rocksalt", "AlAs_cscl__iso_a"]  # the IS, not rs.gpawdos
    head = list(rows[0])
    assert head[:6] == ["id", "formula", PREDICTION_COLUMN, PREDICTION_STD_COLUMN, LOWER, UPPER]
    assert DOMAIN_COLUMN in head
    q = is_model.info["interval"]["interval_scale"]
    for r in rows:
        mean, std, lo, hi = (float(r[k]) for k in (PREDICTION_COLUMN, PREDICTION_STD_COLUMN, LOWER, UPPER))
        # the CSV rounds to 1e-6 and the served bounds are float32 (ulp ~1e-6 at 15 eV/atom, the compressed cell)
        assert lo < mean < hi and hi - lo == pytest.approx(2 * q * std, abs=5e-6)
    compressed = rows[2][DOMAIN_COLUMN]
    assert IS_EF in compressed and "13.00 eV/atom outside the accepted" in compressed
    assert IS_EF not in rows[0][DOMAIN_COLUMN] and IS_EF not in rows[1][DOMAIN_COLUMN]
    assert is_model.info["interval"]["coverage"]["test"] >= 0.8  # measured on held-out rows, in the README


def test_is_energy_model_strict_refuses_the_compressed_cell(is_model):
    from esnet_tf.errors import UserError

    with pytest.raises(UserError) as err:
        is_model.predict([str(DEMO_CALCS / COMPRESSED_DIR / "is.gpawdos.npz")], strict=True)
    assert "\n" not in str(err.value) and "AlAs_cscl__iso_a" in str(err.value) and IS_EF in str(err.value)


def test_is_energy_model_asks_vasp_inputs_for_references(is_model, fixtures_dir, tmp_path, capsys):
    """A VASP input has no IS formation energy of its own: one line asking for --references; with the MP
    elemental references it is predicted and flagged (another code's IS-DOS)."""
    vasp = fixtures_dir / "vasp" / "GaAs_mp-2534.vasprun.xml.gz"
    out = tmp_path / "p.csv"
    assert main(["predict", IS_RELAX_MODEL, str(vasp), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--references" in err[0] and IS_EF in err[0] and "VASP" in err[0]
    assert not out.exists()
    refs = fixtures_dir / "mp" / "mp_elemental_reference_entries_2023-02-07.json.gz"
    assert main(["predict", IS_RELAX_MODEL, str(vasp), "--references", str(refs), "--out", str(out)]) == 0
    rows = _csv(out)
    assert len(rows) == 1 and "DFT code VASP" in rows[0][DOMAIN_COLUMN]
    assert float(rows[0][LOWER]) < float(rows[0][PREDICTION_COLUMN]) < float(rows[0][UPPER])


def test_ensemble_round_trip_and_export(tmp_path):
    """A tiny untrained 2-member ensemble: .keras round trip and SavedModel with both outputs."""
    import keras
    import tensorflow as tf

    from esnet_tf.ensemble import EnsembleMeanStd, build_ensemble
    from esnet_tf.export import export_ensemble
    from esnet_tf.model import ESNetConfig, build_esnet, load_model as load_keras

    TINY = ESNetConfig.small().replace(stem_filters=8, stage_widths=(8, 16), blocks_per_stage=1, merge_filters=16,
                                       composition_units=8, head_units=(16,), name="tiny")
    paths = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        p = tmp_path / f"m{seed}.keras"
        build_esnet(TINY).save(str(p))
        paths.append(p)
    result = export_ensemble(paths, tmp_path / "sm", "tiny-ensemble", 1, std_scale=2.0, n_warmup=2)
    assert result["outputs"] == ["formation_energy_per_atom", "formation_energy_per_atom_std"]
    assert result["max_abs_diff"] <= 1e-5 and result["n_warmup"] == 2
    ens = load_keras(result["keras"])
    assert any(isinstance(layer, EnsembleMeanStd) and layer.statistic == "std" and layer.std_scale == 2.0
               for layer in ens.layers)
    from esnet_tf.export import demo_examples

    x = demo_examples(2)
    batch = {k: x[k] for k in ("dos_up", "dos_down", "composition")}
    members = [load_keras(p).predict_on_batch(batch)["formation_energy_per_atom"].ravel() for p in paths]
    out = ens.predict_on_batch(batch)
    np.testing.assert_allclose(out["formation_energy_per_atom"].ravel(), np.mean(members, axis=0), atol=1e-5)
    np.testing.assert_allclose(out["formation_energy_per_atom_std"].ravel(),
                               2.0 * np.std(members, axis=0, ddof=1), atol=1e-5)
    sig = tf.saved_model.load(result["path"]).signatures["serving_default"]
    got = sig(**{k: tf.constant(v) for k, v in batch.items()})
    assert got["formation_energy_per_atom_std"].shape == (2, 1)
    with pytest.raises(ValueError):
        build_ensemble([load_keras(paths[0])])


def test_calibration_metrics_known_answers():
    from esnet_tf.ensemble import calibration_metrics

    truth = np.zeros(4)
    pred = np.array([0.5, -1.5, 2.5, 0.1])  # errors in units of σ = 1
    m = calibration_metrics(truth, pred, np.ones(4))
    assert (m["within_1_sigma"], m["within_2_sigma"]) == (0.5, 0.75)
    assert m["mean_squared_z"] == pytest.approx((0.25 + 2.25 + 6.25 + 0.01) / 4)
    assert m["mean_sigma"] == 1.0 and m["spearman_abs_error_vs_sigma"] is None  # a constant σ ranks nothing
    # σ that ranks the errors perfectly
    m = calibration_metrics(truth, np.array([0.1, 0.2, -0.4, 0.8]), np.array([0.1, 0.3, 0.35, 2.0]))
    assert m["spearman_abs_error_vs_sigma"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="> 0"):
        calibration_metrics(truth, pred, np.array([1.0, 0.0, 1.0, 1.0]))


def test_miscalibration_area_known_answers():
    from scipy.stats import norm

    from esnet_tf.ensemble import miscalibration_area

    n = 4000
    exact_gaussian = norm.ppf((1 + (np.arange(n) + 0.5) / n) / 2)  # |z| at the quantiles of |N(0, 1)|
    assert miscalibration_area(exact_gaussian) == pytest.approx(0.0, abs=1e-3)
    # σ far too large: every interval holds every error -> ∫ (1 - p) dp = 0.5
    assert miscalibration_area(np.zeros(10)) == pytest.approx(0.5)
    # σ far too small: no interval but the infinite one holds any -> ∫ p dp = 0.5 less the last trapezoid's half
    assert miscalibration_area(np.full(10, 1e9), n_levels=101) == pytest.approx(0.5 - 0.5 / 100)
    # half the errors at 0, half far out: |observed - p| = |0.5 - p| -> 0.25
    assert miscalibration_area(np.r_[np.zeros(50), np.full(50, 1e9)], n_levels=1001) == pytest.approx(0.25, abs=1e-3)


def test_std_scale_recalibrates_to_unit_mean_squared_z():
    from esnet_tf.ensemble import calibration_metrics, fit_std_scale

    mean = np.array([0.0, 1.0, -2.0, 0.5])
    members = np.stack([mean - 1.0, mean + 1.0], axis=1)  # raw sample std sqrt(2) on every row
    truth = mean + np.array([2.0, -2.0, 2.0, -2.0]) * np.sqrt(2)  # every error is 2 raw σ
    scale = fit_std_scale(truth, members)
    assert scale == pytest.approx(2.0)
    m = calibration_metrics(truth, members.mean(axis=1), scale * members.std(axis=1, ddof=1))
    assert m["mean_squared_z"] == pytest.approx(1.0) and m["within_1_sigma"] == 1.0
    with pytest.raises(ValueError, match="M >= 2"):
        fit_std_scale(truth, members[:, :1])


# ---------------------------------------------------------------- the model that corrects CHGNet (--uip)

UIP_EF = "uip_formation_energy_per_atom"
GPAW_DIRS_IDS = ("AgCl_cscl", "AgCl_rocksalt")  # the ids of GPAW_DIRS
DEMO_UIP = resources.demo_dir() / "uip_chgnet.csv"


@pytest.fixture(scope="module")
def uip_model(shipped):
    if UIP_MODEL not in NAMES:
        pytest.fail(f"{UIP_MODEL} is not shipped (scripts/train_pretrained.py --recipe uip_correction_pool)")
    return shipped[UIP_MODEL]


def _uip_csv(path: Path, ids: tuple[str, ...], **changes: str) -> Path:
    """The rows `ids` of the demo's `esnet uip relax` CSV (CHGNet 0.3.0), with columns set to `changes`."""
    with DEMO_UIP.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [{**r, **changes} for r in reader if r["id"] in ids]
        fields = reader.fieldnames
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def test_uip_model_predicts_gpaw_calc_dirs_with_its_own_chgnet_references(uip_model, tmp_path):
    """`esnet predict UIP_MODEL calcs... --uip uip.csv` on real GPAW calculation directories, streamed one input
    per chunk: CHGNet's formation energy is taken with the model's stored references (the fitted Cl one for
    AgCl), not the CSV's formation column (blank or wrong); the Python API gives the same numbers. (Its
    SavedModel's signature: test_ensemble_savedmodel_has_mean_and_std.)"""
    from esnet_tf.uip import formation_energy

    uip = uip_model.info["uip"]
    assert uip["model"] == "chgnet" and uip["model_version"] == "0.3.0" and "Cl" in uip["fitted_references"]
    assert uip["references"]["Cl"] == uip["fitted_references"]["Cl"] and "Ag" in uip["elemental_references"]
    assert UIP_EF in uip_model.domain.energy_ranges  # the flag covers the CHGNet energy like the IS energy

    csv_path = _uip_csv(tmp_path / "uip.csv", GPAW_DIRS_IDS,
                        uip_formation_energy_per_atom="9.999")  # never read
    dirs = [str(DEMO_CALCS / d) for d in GPAW_DIRS]
    out = tmp_path / "p.csv"
    assert main(["predict", UIP_MODEL, *dirs, "--uip", str(csv_path), "--out", str(out), "--chunk-size", "1"]) == 0
    rows = _csv(out)
    assert [r["id"] for r in rows] == ["AgCl_cscl", "AgCl_rocksalt"]
    assert [r[DOMAIN_COLUMN] for r in rows] == ["", ""]
    energies = {r["id"]: float(r["uip_energy_per_atom"]) for r in _csv(csv_path)}
    expect = np.array([[formation_energy(energies[i], {"Ag": 0.5, "Cl": 0.5}, uip["references"])]
                       for i in GPAW_DIRS_IDS], np.float32)
    arrays = uip_model.with_uip(_inputs_of(dirs), uip_model.uip_inputs(csv_path))
    np.testing.assert_allclose(arrays[UIP_EF], expect, atol=1e-6)
    mean, std = uip_model.predictor.predict_with_std(arrays)
    np.testing.assert_allclose([float(r[PREDICTION_COLUMN]) for r in rows], mean, atol=2e-6)
    assert all(float(r[LOWER]) < float(r[PREDICTION_COLUMN]) < float(r[UPPER]) for r in rows)
    table = uip_model.predict(dirs, uip=csv_path)
    np.testing.assert_allclose(table[PREDICTION_COLUMN], mean, atol=1e-6)
    # the Beam pipeline (DirectRunner) reads the same CSV and writes the same file
    pytest.importorskip("apache_beam")
    beam = tmp_path / "beam.csv"
    assert main(["predict", UIP_MODEL, *dirs, "--uip", str(csv_path), "--out", str(beam), "--chunk-size", "1",
                 "--beam-pipeline-options", "runner=DirectRunner"]) == 0
    assert beam.read_text() == out.read_text()


def _inputs_of(paths: list[str]) -> dict:
    """The stacked inputs of `paths` as `esnet predict` reads them."""
    from esnet_tf.predict import load_inputs

    arrays, failures = load_inputs(paths)
    assert not failures
    return arrays


def test_uip_model_refusals_are_one_line(uip_model, is_model, tmp_path, capsys):
    """`esnet predict` without --uip: one line naming `esnet uip relax ... --out uip.csv`; an input id the CSV
    lacks: one line naming it; exit 2 and no CSV (nor partial folder) for both. A CSV of other CHGNet weights,
    --uip given to a model that takes no CHGNet energy, an element without a stored reference: one line each."""
    from esnet_tf.errors import UserError
    from esnet_tf.uip import UIPInputs

    dirs = [str(DEMO_CALCS / d) for d in GPAW_DIRS]
    out = tmp_path / "p.csv"
    one = _uip_csv(tmp_path / "one.csv", ("AgCl_cscl",))
    capsys.readouterr()
    for extra, words in (([], ("esnet uip relax", "--out uip.csv", "--uip", UIP_EF)),
                         (["--uip", str(one)], ("AgCl_rocksalt", "one.csv", "esnet uip relax"))):
        assert main(["predict", UIP_MODEL, *dirs, *extra, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and all(w in err[0] for w in words), (extra, err)
        assert not out.exists() and not Path(f"{out}.partial").exists()
    refusals = [
        (lambda: uip_model.uip_inputs(_uip_csv(tmp_path / "old.csv", GPAW_DIRS_IDS, model_version="0.2.0")),
         ("old.csv", "0.2.0", "0.3.0", "--model-version")),
        (lambda: is_model.uip_inputs(one), ("takes no", "drop --uip")),
        (lambda: UIPInputs(one, {**uip_model.info["uip"], "references": {
            k: v for k, v in uip_model.info["uip"]["references"].items() if k != "Cl"}}, UIP_MODEL)
         .formation_energies(["AgCl_cscl"], ["AgCl"]), ("AgCl_cscl", "no chgnet reference for Cl")),
    ]
    for call, words in refusals:
        with pytest.raises(UserError) as exc:
            call()
        assert "\n" not in str(exc.value) and all(w in str(exc.value) for w in words), str(exc.value)



def test_uip_streamed_inputs_with_colliding_path_ids_are_refused(uip_model, fixtures_dir, tmp_path, capsys):
    """Two copies of a real vasprun.xml whose path-derived ids collide: the streaming reader would rename the
    second after predicting it with the CHGNet row of the first's id; with --uip that is refused in one line
    naming both files (exit 2, no CSV)."""
    import shutil

    from esnet_tf.featurize import default_id

    paths = []
    for folder in ("a/run1/vasprun.xml.gz", "b/run1/vasprun.xml.gz"):
        dst = tmp_path / "in" / folder
        dst.parent.mkdir(parents=True)
        shutil.copy(fixtures_dir / "vasp" / "Al.vasprun.xml.gz", dst)
        paths.append(str(dst))
    rid = default_id(Path(paths[0]))
    assert rid == default_id(Path(paths[1]))
    uip_csv = _uip_csv(tmp_path / "uip.csv", ("Al_fcc",), id=rid, formula="Al")
    refs = tmp_path / "refs.csv"
    refs.write_text("element,energy_per_atom\nAl,-3.75\n")  # VASP inputs take their references from the user
    out = tmp_path / "p.csv"
    capsys.readouterr()
    assert main(["predict", UIP_MODEL, *paths, "--uip", str(uip_csv), "--references", str(refs),
                 "--out", str(out), "--chunk-size", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in ("a/run1", "b/run1", "--uip", repr(rid))), err
    assert not out.exists()
