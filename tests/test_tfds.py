"""The is_dos TFDS dataset: builds from dummy data and real fixtures, splits, determinism,
bad inputs, Apache Beam, and the conventional ways users load it (tfds CLI, tfds.load)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from esnet_tf import dataset as isd
from esnet_tf.featurize import featurize
from esnet_tf.isdos import DOSInputError

ROOT = Path(__file__).resolve().parents[1]
DUMMY = ROOT / "datasets" / "is_dos" / "dummy_data"
TFDS_CLI = str(Path(sys.executable).with_name("tfds"))
ENERGIES = ("is_energy_per_atom", "is_formation_energy_per_atom")  # eV/atom, NaN unknown (version 1.1.0)
KEYS = {"dos_up", "dos_down", "composition", "formation_energy_per_atom", "e_above_hull",
        "id", "formula", "chemsys", "prototype", *ENERGIES}
VERSION = "1.1.0"

# (id, fixture path, formation energy eV/atom (made-up labels: the files carry none), formula or '')
GOOD = [
    ("vasp_Fe", "vasp/Fe_monomer_spin.vasprun.xml.gz", 0.0, "Fe"),
    ("vasp_LiF", "vasp/LiF.vasprun.xml.gz", -3.1, ""),
    ("vasp_Si", "vasp/indirect.vasprun.xml.gz", 0.0, "Si"),
    ("vasp_Al", "vasp/Al.vasprun.xml.gz", 0.0, ""),
    ("vasp_CsCl", "vasp/vdw.vasprun.xml.gz", -2.2, "CsCl"),
    ("mp_Si", "mp/Si_complete_dos.json", 0.0, ""),
    ("mp_Nb3Sn", "mp/Nb3Sn_complete_dos.json", -0.2, "Nb3Sn"),
    ("mp_Co2TaZn", "mp/mp-865805_Co2TaZn_complete_dos.json", -0.3, ""),
    ("mp_Fe", "mp/Fe_bcc_complete_dos.json.gz", 0.0, ""),
    ("doscar_hea", "doscar/hea_spin_polarized", -0.4, ""),
]
BAD = [  # a truncated file (no formula: found bad locally) and a total-DOS-only run (routed by formula)
    ("vasp_bad", "vasp/bad.vasprun.xml.gz", 0.0, ""),
    ("vasp_Li_total_only", "vasp/Li_no_projected.vasprun.xml.gz", 0.0, "Li"),
]


def _write_labels(dirpath: Path, fixtures: Path, rows) -> Path:
    """labels.csv with absolute paths, except every other row relative to `dirpath`."""
    dirpath.mkdir(parents=True, exist_ok=True)
    with (dirpath / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "path", "formation_energy_per_atom", "e_above_hull", "prototype", "formula", "extra"])
        for id_, rel, ef, formula in rows:
            i = [r[0] for r in GOOD + BAD].index(id_)  # labels depend on the row, not on its position
            target = (fixtures / rel).resolve()
            path = os.path.relpath(target, dirpath) if i % 2 else str(target)
            w.writerow([id_, path, ef, "" if i % 3 == 0 else 0.01 * i, f"proto{i}" if i % 2 else "", formula, "x"])
    return dirpath


def _records(builder) -> dict[str, list[bytes]]:
    """Serialized examples per split, in stored order."""
    out = {}
    for split, info in builder.info.splits.items():
        files = [os.fspath(f) for f in info.filepaths]
        out[split] = [r.numpy() for r in tf.data.TFRecordDataset(files)]
    return out


def _examples(builder) -> dict[str, list[dict]]:
    return {s: list(tfds.as_numpy(builder.as_dataset(split=s, shuffle_files=False)))
            for s in builder.info.splits.keys()}


def _assert_same_examples(a, b) -> None:
    """Same splits, same example order, bit-identical values (NaN == NaN)."""
    ea, eb = _examples(a), _examples(b)
    assert list(ea) == list(eb)
    for split in ea:
        assert [x["id"] for x in ea[split]] == [x["id"] for x in eb[split]]
        for x, y in zip(ea[split], eb[split]):
            assert x.keys() == y.keys() == KEYS
            for key in KEYS:
                if isinstance(x[key], bytes):
                    assert x[key] == y[key], (split, x["id"], key)
                else:
                    assert np.array_equal(x[key], y[key], equal_nan=True), (split, x["id"], key)


def _assert_contract(builder) -> None:
    features = builder.info.features
    assert set(features.keys()) == KEYS
    for split, exs in _examples(builder).items():
        for ex in exs:
            assert ex["dos_up"].shape == (1500, 9) and ex["dos_up"].dtype == np.float32
            assert ex["dos_down"].shape == (1500, 9) and ex["dos_down"].dtype == np.float32
            assert ex["composition"].shape == (118,) and ex["composition"].dtype == np.float32
            assert np.isclose(ex["composition"].sum(), 1.0, atol=1e-5)
            assert ex["formation_energy_per_atom"].dtype == np.float32 and ex["formation_energy_per_atom"].shape == ()
            assert ex["e_above_hull"].dtype == np.float32
            for key in ENERGIES:
                assert ex[key].dtype == np.float32 and ex[key].shape == ()
            for key in ("id", "formula", "chemsys", "prototype"):
                assert isinstance(ex[key], bytes)


def _chemsys_by_split(builder) -> dict[str, set[str]]:
    return {s: {ex["chemsys"].decode() for ex in exs} for s, exs in _examples(builder).items()}


@pytest.fixture(scope="session")
def dummy_plain(tmp_path_factory):
    return isd.build_dataset("is_dos/manual", tmp_path_factory.mktemp("dummy"), DUMMY, verbose=False)


@pytest.fixture(scope="session")
def fx_dirs(tmp_path_factory, fixtures_dir):
    base = tmp_path_factory.mktemp("fx")
    return {"good": _write_labels(base / "good", fixtures_dir, GOOD),
            "bad": _write_labels(base / "bad", fixtures_dir, GOOD[:4] + BAD + GOOD[4:]),
            "beam_bad": _write_labels(base / "beam_bad", fixtures_dir, GOOD[:3] + BAD[1:]),
            "base": base}


@pytest.fixture(scope="session")
def fx_plain(fx_dirs):
    return [isd.build_dataset("is_dos/manual", fx_dirs["base"] / f"data_{k}", fx_dirs["good"], verbose=False)
            for k in ("a", "b")]


@pytest.fixture(scope="session")
def fx_skip_env(fx_dirs):
    """Plain build of labels with bad files, skip turned on by the environment variable."""
    old = os.environ.get(isd.SKIP_ENV)
    os.environ[isd.SKIP_ENV] = "1"
    try:
        return isd.build_dataset("is_dos/manual", fx_dirs["base"] / "data_skip", fx_dirs["bad"], verbose=False)
    finally:
        if old is None:
            del os.environ[isd.SKIP_ENV]
        else:
            os.environ[isd.SKIP_ENV] = old


@pytest.fixture(scope="session")
def fx_beam_skip(fx_dirs):
    """The same labels on Apache Beam (DirectRunner), skip turned on by the builder kwarg."""
    return isd.build_dataset("is_dos/manual", fx_dirs["base"] / "data_beam", fx_dirs["bad"], skip_bad_inputs=True,
                             beam_pipeline_options="runner=DirectRunner", verbose=False)


# ------------------------------------------------------------------------------ dummy data

def test_dummy_build_matches_featurizer_and_labels(dummy_plain):
    _assert_contract(dummy_plain)
    exs = {ex["id"].decode(): ex for split in _examples(dummy_plain).values() for ex in split}
    rows = {r.id: r for r in isd.read_labels(DUMMY / "labels.csv")}
    assert set(exs) == set(rows) and len(rows) == 5
    for id_, row in rows.items():
        ref = featurize(row.file, id=id_)
        np.testing.assert_array_equal(exs[id_]["dos_up"], ref.dos_up)
        np.testing.assert_array_equal(exs[id_]["dos_down"], ref.dos_down)
        np.testing.assert_array_equal(exs[id_]["composition"], ref.composition)
        assert exs[id_]["formation_energy_per_atom"] == np.float32(row.formation_energy_per_atom)
        assert exs[id_]["chemsys"].decode() == ref.chemsys and exs[id_]["formula"].decode() == ref.formula
    assert np.isnan(exs["Mg_fcc"]["e_above_hull"]) and exs["Li_bcc"]["prototype"] == b""
    assert exs["Al_fcc"]["prototype"] == b"fcc" and exs["Si_diamond"]["e_above_hull"] == 0.0


def test_reuse_when_prepared_and_rebuild_when_labels_change(tmp_path):
    manual = tmp_path / "m"
    manual.mkdir()
    lines = (DUMMY / "labels.csv").read_text().splitlines()
    for f in (DUMMY / "calcs").iterdir():
        (manual / "calcs").mkdir(exist_ok=True)
        (manual / "calcs" / f.name).write_bytes(f.read_bytes())
    (manual / "labels.csv").write_text("\n".join(lines[:4]) + "\n")
    b1 = isd.build_dataset("is_dos/manual", tmp_path / "d", manual, verbose=False)
    assert b1.info.splits.total_num_examples == 3
    stamp = (Path(b1.data_dir) / "dataset_info.json").stat().st_mtime_ns
    b2 = isd.build_dataset("is_dos/manual", tmp_path / "d", manual, verbose=False)  # reused
    assert (Path(b2.data_dir) / "dataset_info.json").stat().st_mtime_ns == stamp
    (manual / "labels.csv").write_text("\n".join(lines) + "\n")  # two more rows
    b3 = isd.build_dataset("is_dos/manual", tmp_path / "d", manual, verbose=False)
    assert b3.info.splits.total_num_examples == 5
    ds = isd.load_tfds_split(str(manual), "train", data_dir=str(tmp_path / "d"))  # a manual dir by path
    assert len(list(ds)) == b3.info.splits["train"].num_examples


# ------------------------------------------------------------------------------ real fixtures

def test_fixture_build_shapes_splits_grouped(fx_plain):
    builder = fx_plain[0]
    _assert_contract(builder)
    assert builder.info.splits.total_num_examples == len(GOOD)
    by_split = _chemsys_by_split(builder)
    splits = list(by_split)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not by_split[a] & by_split[b], f"chemical system in {a} and {b}"
    # Si (VASP + MP) and Fe (VASP + MP): different sources, one chemical system, one split
    ids = {s: {ex["id"].decode() for ex in exs} for s, exs in _examples(builder).items()}
    for pair in (("vasp_Si", "mp_Si"), ("vasp_Fe", "mp_Fe")):
        assert sum(set(pair) <= v for v in ids.values()) == 1
    exs = {ex["id"].decode(): ex for v in _examples(builder).values() for ex in v}
    assert np.isnan(exs["vasp_Fe"]["e_above_hull"]) and exs["vasp_LiF"]["e_above_hull"] == np.float32(0.01)
    assert exs["doscar_hea"]["chemsys"] == b"Fe-H-N-O-Pd"


def test_two_builds_identical_order_and_values(fx_plain):
    a, b = (_records(x) for x in fx_plain)
    assert a == b and sum(map(len, a.values())) == len(GOOD)


def test_bad_file_fails_naming_it(fx_dirs, tmp_path, monkeypatch):
    monkeypatch.delenv(isd.SKIP_ENV, raising=False)
    with pytest.raises(DOSInputError) as err:
        isd.build_dataset("is_dos/manual", tmp_path, fx_dirs["bad"], verbose=False)
    msg = str(err.value)
    assert "bad.vasprun.xml.gz" in msg and "vasp_bad" in msg and isd.SKIP_ENV in msg
    assert not (tmp_path / "is_dos" / "manual" / VERSION).exists()


def test_skip_writes_rejected_list(fx_skip_env, fx_plain):
    rejected = Path(fx_skip_env.data_dir) / isd.REJECTED_FILE
    rows = list(csv.DictReader(rejected.open()))
    assert [r["id"] for r in rows] == ["vasp_Li_total_only", "vasp_bad"]
    reasons = {r["id"]: r["reason"] for r in rows}
    assert "truncated" in reasons["vasp_bad"] or "parse" in reasons["vasp_bad"]
    assert "LORBIT=11" in reasons["vasp_Li_total_only"]
    assert all(r["path"] for r in rows)
    assert _records(fx_skip_env) == _records(fx_plain[0])  # the good rows, exactly


def test_beam_build_equals_plain_build(fx_beam_skip, fx_skip_env):
    assert json.loads((Path(fx_beam_skip.data_dir) / isd.SOURCE_FILE).read_text())["beam"] is True
    assert _records(fx_beam_skip) == _records(fx_skip_env)
    _assert_same_examples(fx_beam_skip, fx_skip_env)
    assert (Path(fx_beam_skip.data_dir) / isd.REJECTED_FILE).read_text() == \
        (Path(fx_skip_env.data_dir) / isd.REJECTED_FILE).read_text()
    assert not (Path(fx_beam_skip.data_dir) / "rejected-parts").exists()


def test_beam_bad_file_fails_naming_it(fx_dirs, tmp_path, monkeypatch):
    monkeypatch.delenv(isd.SKIP_ENV, raising=False)
    with pytest.raises(Exception) as err:  # raised on a Beam worker, re-raised by the runner
        isd.build_dataset("is_dos/manual", tmp_path, fx_dirs["beam_bad"], verbose=False,
                          beam_pipeline_options="runner=DirectRunner")
    assert "Li_no_projected.vasprun.xml.gz" in str(err.value)


# ------------------------------------------------------------------------------ labels and API errors

def test_labels_errors_name_the_file(tmp_path):
    (tmp_path / "labels.csv").write_text("id,path\na,x.npz\n")
    with pytest.raises(isd.DatasetError, match="labels.csv: missing column.*formation_energy_per_atom"):
        isd.read_labels(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("id,path,formation_energy_per_atom\na,x,0\na,y,1\n")
    with pytest.raises(isd.DatasetError, match="labels.csv:3: duplicate id 'a'"):
        isd.read_labels(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("id,path,formation_energy_per_atom\na,x,abc\n")
    with pytest.raises(isd.DatasetError, match="labels.csv:2: 'formation_energy_per_atom' is 'abc'"):
        isd.read_labels(tmp_path / "labels.csv")
    with pytest.raises(FileNotFoundError, match="nowhere/labels.csv"):
        isd.read_labels(tmp_path / "nowhere" / "labels.csv")


def test_load_errors(tmp_path, dummy_plain):
    with pytest.raises(isd.DatasetError, match="needs manual_dir"):
        isd.build_dataset("is_dos/manual", tmp_path, verbose=False)
    with pytest.raises(isd.DatasetError, match="unknown config"):
        isd.build_dataset("is_dos/nope", tmp_path, verbose=False)
    with pytest.raises(isd.DatasetError, match="no split 'validation'"):
        isd.load_tfds_split(dummy_plain.data_dir, "validation")
    with pytest.raises(isd.DatasetError, match="neither a prepared TFDS dataset"):
        isd.load_tfds_split(str(tmp_path), "train")


# ------------------------------------------------------------------------------ the tfds CLI and tfds.load

def _tfds_build(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop(isd.SKIP_ENV, None)
    proc = subprocess.run([TFDS_CLI, "build", str(ROOT / "datasets" / "is_dos"), *args],
                          capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_tfds_cli_build_demo_then_tfds_load_and_builder(tmp_path):
    _tfds_build("--config", "demo", "--data_dir", str(tmp_path))
    version_dir = tmp_path / "is_dos" / "demo" / VERSION
    source = json.loads((version_dir / isd.SOURCE_FILE).read_text())
    assert source["labels_csv"].endswith("datasets/is_dos/demo/labels.csv") and source["beam"] is False
    builder = tfds.builder("is_dos/demo", data_dir=str(tmp_path))
    assert builder.is_prepared()
    assert builder.info.splits.total_num_examples == source["n_rows"] - source["n_rejected"] > 0
    ds = tfds.load("is_dos/demo", data_dir=str(tmp_path), split="train")
    ex = next(iter(ds))
    assert ex["dos_up"].shape == (1500, 9) and ex["dos_up"].dtype == tf.float32
    assert ex["composition"].shape == (118,) and ex["id"].dtype == tf.string
    by_split = _chemsys_by_split(builder)
    assert sum(len(v) for v in by_split.values()) == len(set().union(*by_split.values()))
    ds2 = isd.load_tfds_split(str(version_dir), "train")  # a prepared dataset directory
    assert len(list(ds2)) == builder.info.splits["train"].num_examples


def test_tfds_cli_beam_build_equals_plain(tmp_path, dummy_plain):
    _tfds_build("--config", "manual", "--manual_dir", str(DUMMY), "--data_dir", str(tmp_path),
                "--beam_pipeline_options=runner=DirectRunner")
    beam = tfds.builder_from_directory(str(tmp_path / "is_dos" / "manual" / VERSION))
    _assert_same_examples(beam, dummy_plain)  # (protobuf map order may differ between processes)


def test_tfds_load_builds_after_register_builder(tmp_path, dummy_plain):
    isd.register_builder()  # the checkout's datasets/ is not an installed package
    ds = tfds.load("is_dos/manual", data_dir=str(tmp_path), split="test", download_and_prepare_kwargs={
        "download_config": tfds.download.DownloadConfig(manual_dir=str(DUMMY))})
    assert [ex["id"].numpy() for ex in ds] == \
        [ex["id"] for ex in tfds.as_numpy(dummy_plain.as_dataset(split="test", shuffle_files=False))]
    _assert_same_examples(tfds.builder("is_dos/manual", data_dir=str(tmp_path)), dummy_plain)


def test_demo_augmented_config_builds_and_variants_share_their_parents_split(tmp_path):
    """`is_dos/demo_augmented`: the demo's own IS per structure plus its IS variants (labels_augmented.csv);
    `parent_id` / `variant` features; a variant is always in its parent's split."""
    builder = isd.build_dataset("is_dos/demo_augmented", tmp_path, verbose=False)
    split_of_id, rows = {}, []
    for split in builder.info.splits.keys():
        for ex in tfds.as_numpy(builder.as_dataset(split=split)):
            rec = {k: ex[k].decode() for k in ("id", "parent_id", "variant")}
            split_of_id[rec["id"]] = split
            rows.append((rec, split))
    variants = [(r, s) for r, s in rows if r["variant"]]
    assert variants, "labels_augmented.csv holds no finished variant"
    assert all(split_of_id[r["parent_id"]] == s for r, s in variants)
    n_plain = sum(1 for r, _ in rows if not r["variant"])
    with open(ROOT / "datasets" / "is_dos" / "demo" / "labels.csv") as fh:
        assert n_plain == sum(1 for _ in csv.DictReader(fh))  # every relaxed structure's own IS once


def test_pool_config_loads_every_row_of_the_pool_labels_with_role_family_and_energies(tmp_path):
    """`is_dos/pool`: every row of datasets/is_dos/pool/labels.csv once (splits by chemical system), with its
    `role` / `family` / `hull_complete` text features and the labels' relaxed and IS formation energies."""
    with open(ROOT / "datasets" / "is_dos" / "pool" / "labels.csv", newline="") as fh:
        want = {r["id"]: r for r in csv.DictReader(fh)}
    builder = isd.build_dataset("is_dos/pool", tmp_path, verbose=False)
    got = {}
    for split in builder.info.splits.keys():
        for ex in tfds.as_numpy(builder.as_dataset(split=split)):
            got[ex["id"].decode()] = ex
    assert sorted(got) == sorted(want)
    assert {"candidate", "competitor", "element", "label_range"} >= {ex["role"].decode() for ex in got.values()}
    for i, ex in got.items():
        row = want[i]
        assert (ex["role"].decode(), ex["family"].decode(), ex["hull_complete"].decode()) == \
            (row["role"], row["family"], row["hull_complete"])
        assert ex["formation_energy_per_atom"] == pytest.approx(float(row["formation_energy_per_atom"]), abs=1e-6)
        assert ex["is_formation_energy_per_atom"] == pytest.approx(float(row["is_formation_energy_per_atom"]),
                                                                   abs=1e-5)


# ------------------------------------------------------------------------------ IS energies (version 1.1.0)

def _dummy_examples(builder) -> dict[str, dict]:
    return {ex["id"].decode(): ex for split in _examples(builder).values() for ex in split}


def test_dummy_is_energies_from_labels_column_or_engine_references(dummy_plain):
    """Al_fcc and Si_diamond take the labels column, the others the GPAW engine's references in
    dummy_data/provenance.json: all equal the demo's own labels (computed by `esnet dft`)."""
    demo = {r.id: r for r in isd.read_labels(ROOT / "datasets" / "is_dos" / "demo" / "labels.csv")}
    rows = isd.read_labels(DUMMY / "labels.csv")
    assert {r.id for r in rows if r.get("is_formation_energy_per_atom")} == {"Al_fcc", "Si_diamond"}
    exs = _dummy_examples(dummy_plain)
    for r in rows:
        for key in ENERGIES:
            assert abs(float(exs[r.id][key]) - demo[r.id].float(key)) < 2e-6, (r.id, key)
    assert exs["Al_fcc"]["is_formation_energy_per_atom"] > 0.9  # fcc Al at the IS lattice constant


def _copy_calcs(dst: Path, with_column: bool = False) -> Path:
    (dst / "calcs").mkdir(parents=True)
    for f in (DUMMY / "calcs").iterdir():
        (dst / "calcs" / f.name).write_bytes(f.read_bytes())
    rows = list(csv.DictReader((DUMMY / "labels.csv").open()))
    with (dst / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "path", "formation_energy_per_atom"])
        w.writerows([r["id"], r["path"], r["formation_energy_per_atom"]] for r in rows)
    return dst


def test_manual_is_formation_energy_unknown_without_references_then_from_references_csv(tmp_path, dummy_plain):
    """GPAW files away from their provenance.json and no references: NaN (unknown), never a guess; with
    references.csv of the same engine's elemental energies: the same values as beside provenance.json."""
    manual = _copy_calcs(tmp_path / "m")
    bare = _dummy_examples(isd.build_dataset("is_dos/manual", tmp_path / "d1", manual, verbose=False))
    assert all(np.isnan(ex["is_formation_energy_per_atom"]) for ex in bare.values())
    assert all(np.isfinite(ex["is_energy_per_atom"]) for ex in bare.values())  # the file holds the IS energy
    refs = json.loads((DUMMY / "provenance.json").read_text())["elemental_references"]
    (manual / "references.csv").write_text("element,energy_per_atom\n" + "".join(
        f"{el},{v['energy_per_atom']!r}\n" for el, v in refs.items()))
    with_refs = _dummy_examples(isd.build_dataset("is_dos/manual", tmp_path / "d2", manual, verbose=False))
    want = _dummy_examples(dummy_plain)
    for id_, ex in with_refs.items():
        assert abs(float(ex["is_formation_energy_per_atom"]) - float(want[id_]["is_formation_energy_per_atom"])) < 2e-6


def test_manual_vasp_with_mp_references_json(tmp_path, fixtures_dir):
    """VASP single points against the Materials Project elemental references (ComputedEntry JSON)."""
    from esnet_tf.references import load_references

    manual = _write_labels(tmp_path / "v", fixtures_dir, [GOOD[1], GOOD[2]])  # LiF, Si
    mp = fixtures_dir / "mp" / "mp_elemental_reference_entries_2023-02-07.json.gz"
    (manual / "references.json.gz").write_bytes(mp.read_bytes())
    exs = _dummy_examples(isd.build_dataset("is_dos/manual", tmp_path / "d", manual, verbose=False))
    mu = load_references(mp)
    for id_, rel in (("vasp_LiF", GOOD[1][1]), ("vasp_Si", GOOD[2][1])):
        ref = featurize(fixtures_dir / rel, id=id_, references=mu)
        assert np.float32(ref.is_formation_energy_per_atom) == exs[id_]["is_formation_energy_per_atom"]
        assert np.isfinite(ref.is_formation_energy_per_atom)


def test_data_prepared_at_version_1_0_0_still_loads(tmp_path):
    """TFDS keeps each version in its own directory and generates only the current one. A dataset
    prepared at 1.0.0 (the builder as it was: the same code without the IS energies) loads with
    today's builder by name (`is_dos/manual:1.0.0`) and by directory, beside a 1.1.0 build."""
    builder_cls = isd.register_builder()
    assert str(builder_cls.VERSION) == VERSION and "1.0.0" in builder_cls.RELEASE_NOTES
    assert [str(v) for v in builder_cls.SUPPORTED_VERSIONS] == ["1.0.0"]

    class Builder100(builder_cls, skip_registration=True):  # the 1.0.0 builder: version and layout of then
        name = "is_dos"
        VERSION = tfds.core.Version("1.0.0")
        SUPPORTED_VERSIONS = []

    old = Builder100(config="manual", data_dir=str(tmp_path))
    old.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(DUMMY)))
    old_dir = tmp_path / "is_dos" / "manual" / "1.0.0"
    assert json.loads((old_dir / "dataset_info.json").read_text())["version"] == "1.0.0"
    assert set(old.info.features.keys()) == KEYS - set(ENERGIES)
    with pytest.raises(ValueError, match="too old"):  # today's builder does not write 1.0.0 ...
        builder_cls(config="manual", version="1.0.0", data_dir=str(tmp_path / "x")).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(DUMMY)))
    by_name = tfds.load("is_dos/manual:1.0.0", data_dir=str(tmp_path), split="train", download=False)  # ... but reads it
    by_dir = isd.load_tfds_split(str(old_dir), "train")
    ids = sorted(ex["id"].numpy() for ex in by_dir)
    assert sorted(ex["id"].numpy() for ex in by_name) == ids and len(ids) == 3
    assert "is_formation_energy_per_atom" not in next(iter(by_dir))
    new = isd.build_dataset("is_dos/manual", tmp_path, DUMMY, verbose=False)  # the current version beside it
    assert Path(new.data_dir).name == VERSION and set(new.info.features.keys()) == KEYS
    assert tfds.builder_from_directory(str(old_dir)).info.splits.total_num_examples == 5
