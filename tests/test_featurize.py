"""Readers and featurizer on real VASP / Materials Project files and on synthetic CompleteDos."""
from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.electronic_structure.core import Orbital, Spin
from pymatgen.electronic_structure.dos import CompleteDos, Dos

from esnet_tf.cli import main as cli_main
from esnet_tf.featurize import featurize, featurize_all, featurize_dos, load_examples
from esnet_tf.isdos import ORBITALS, PAPER_GRID, DOSInputError, EnergyGrid
from esnet_tf.readers import read_dos
from esnet_tf.readers.common import from_complete_dos, orbital_channel

M_RESOLVED_VASP = ["Al", "Fe_monomer_spin", "GaAs_mp-2534", "LiF", "hse06", "indirect", "magmom_ldau",
                   "unconverged", "vdw"]
BAD = {  # file -> words the error must contain
    "bad.vasprun.xml.gz": "truncated",
    "Li_no_projected.vasprun.xml.gz": "LORBIT=11",
    "nonlm.vasprun.xml.gz": "LORBIT=11",
    "dielectric_6.0.8.vasprun.xml.gz": "noncollinear",
}


# ----------------------------------------------------------------- synthetic (no fixtures needed)

def _synthetic_dos(spin: bool, efermi: float = 3.0) -> CompleteDos:
    s = Structure(Lattice.cubic(4.2), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    e = np.linspace(-25, 15, 4001) + efermi
    peak = lambda c, w=0.3: np.exp(-((e - efermi - c) / w) ** 2)  # noqa: E731
    spins = [Spin.up, Spin.down] if spin else [Spin.up]
    pdos = {
        s[0]: {Orbital.s: {sp: 1.0 * peak(-5) for sp in spins}, Orbital.dx2_y2: {sp: 0.5 * peak(2) for sp in spins}},
        s[1]: {Orbital.px: {sp: 2.0 * peak(-1) * (1.5 if sp == Spin.down else 1) for sp in spins},
               Orbital.f0: {sp: 9.0 * peak(0) for sp in spins}},
    }
    total = {sp: sum(v[sp] for site in pdos.values() for v in site.values()) for sp in spins}
    return CompleteDos(s, Dos(efermi, e, total), pdos)


def test_grid_is_a_parameter_with_paper_default():
    assert PAPER_GRID.n_points == 1500 and PAPER_GRID.energies()[0] == -20 and PAPER_GRID.energies()[-1] == 10
    with pytest.raises(ValueError):
        EnergyGrid(1.0, 0.0, 10)


def test_synthetic_alignment_channels_spin_and_normalisation():
    ex = featurize_dos(from_complete_dos(_synthetic_dos(spin=True), Path("x"), "test"), PAPER_GRID, "x")
    x = PAPER_GRID.energies()
    assert ex.dos_up.shape == (1500, 9) and ex.dos_up.dtype == np.float32
    # E_F at 0: the s peak placed at E_F - 5 eV peaks at grid energy -5
    assert abs(x[np.argmax(ex.dos_up[:, ORBITALS.index("s")])] + 5.0) <= PAPER_GRID.step
    # dx2 (pymatgen's name of dx2-y2) lands in channel 8, per atom (2 atoms)
    assert ORBITALS[8] == "dx2-y2"
    assert np.isclose(ex.dos_up[:, 8].max(), 0.25, rtol=1e-3)
    # spin resolved: down px is 1.5 x up px
    assert np.allclose(ex.dos_down[:, 3], 1.5 * ex.dos_up[:, 3], atol=1e-6)
    assert ex.f_channels == ("f0",)  # f recorded, not in the 9 channels
    assert np.allclose(ex.composition[[11, 7]], [0.5, 0.5]) and np.isclose(ex.composition.sum(), 1.0)
    assert ex.chemsys == "Mg-O" and ex.formula == "MgO" and ex.n_atoms == 2


def test_synthetic_non_spin_splits_total_in_half():
    ex = featurize_dos(from_complete_dos(_synthetic_dos(spin=False), Path("x"), "test"), PAPER_GRID, "x")
    assert np.array_equal(ex.dos_up, ex.dos_down)
    assert np.isclose(ex.dos_up[:, 0].max(), 0.5 * 1.0 / 2, rtol=5e-3)  # half of total, per atom
    assert not ex.spin_polarized


def test_zero_outside_computed_range():
    ex = featurize_dos(from_complete_dos(_synthetic_dos(spin=True), Path("x"), "t"), EnergyGrid(-40, 30, 701), "x")
    x = ex.grid.energies()
    assert np.all(ex.dos_up[(x < -25) | (x > 15)] == 0)


@pytest.mark.parametrize("label", ["dx2", "x2-y2", "dx2_y2", "dx2-y2"])
def test_last_d_channel_spellings(label):
    assert orbital_channel(label) == 8


def test_non_dos_and_missing_inputs(tmp_path):
    with pytest.raises(DOSInputError, match="no such file"):
        read_dos(tmp_path / "missing.vasprun.xml")
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(DOSInputError, match="not a recognised DFT output"):
        featurize(junk)
    fake = tmp_path / "vasprun.xml"
    fake.write_text("<modeling><generator></generator>")
    with pytest.raises(DOSInputError, match="vasprun.xml"):
        featurize(fake)
    js = tmp_path / "entry.json"
    js.write_text(json.dumps({"energy": 1.0}))
    with pytest.raises(DOSInputError, match="not a CompleteDos"):
        featurize(js)


# ----------------------------------------------------------------- real fixtures

@pytest.mark.parametrize("name", M_RESOLVED_VASP)
def test_every_m_resolved_vasp_file_featurizes(fixtures_dir, name):
    ex = featurize(fixtures_dir / "vasp" / f"{name}.vasprun.xml.gz")
    assert ex.dos_up.shape == (1500, 9) and ex.composition.shape == (118,)
    assert np.all(np.isfinite(ex.dos_up)) and ex.dos_up.sum() > 0
    assert np.isclose(ex.composition.sum(), 1.0, atol=1e-6)


def test_multistep_and_unconverged_runs_warn(fixtures_dir):
    ex = featurize(fixtures_dir / "vasp" / "magmom_ldau.vasprun.xml.gz")
    assert any("3-step run" in w for w in ex.warnings)
    ex = featurize(fixtures_dir / "vasp" / "unconverged.vasprun.xml.gz")
    assert any("not converged" in w for w in ex.warnings)
    assert not featurize(fixtures_dir / "vasp" / "LiF.vasprun.xml.gz").warnings


def test_f_states_documented(fixtures_dir):
    ex = featurize(fixtures_dir / "vasp" / "hse06.vasprun.xml.gz")
    assert ex.f_channels == ("f_3", "f_2", "f_1", "f0", "f1", "f2", "f3")
    assert "f_channels" in ex.metadata()


def test_doscar_equals_vasprun(fixtures_dir):
    d = fixtures_dir / "doscar" / "hea_spin_polarized"
    a, b = featurize(d / "DOSCAR.gz"), featurize(d / "vasprun.xml.gz")
    assert a.efermi == pytest.approx(b.efermi)
    # the two files print 4 significant digits (DOSCAR) vs 4 decimals (vasprun): 1e-3 states/eV/atom
    np.testing.assert_allclose(a.dos_up, b.dos_up, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(a.dos_down, b.dos_down, atol=1e-3, rtol=1e-3)
    np.testing.assert_array_equal(a.composition, b.composition)
    assert featurize(d).id  # the directory itself is accepted (DOSCAR reader)


def test_non_spin_file_gives_equal_spins(fixtures_dir):
    ex = featurize(fixtures_dir / "vasp" / "indirect.vasprun.xml.gz")
    assert not ex.spin_polarized and np.array_equal(ex.dos_up, ex.dos_down)


@pytest.mark.parametrize("name,label", [("Fe_monomer_spin", "dx2"), ("LiF", "x2-y2")])
def test_both_spellings_land_in_channel_8(fixtures_dir, name, label):
    path = fixtures_dir / "vasp" / f"{name}.vasprun.xml.gz"
    with gzip.open(path, "rt") as fh:
        assert f"<field>{label}" in fh.read().replace(" ", "")
    from pymatgen.io.vasp import Vasprun

    cd = Vasprun(str(path), parse_potcar_file=False).complete_dos
    direct = sum(np.asarray(site[Orbital.dx2_y2][Spin.up]) for site in cd.pdos.values()) / len(cd.structure)
    expected = np.interp(PAPER_GRID.energies(), np.asarray(cd.energies) - cd.efermi, direct, left=0, right=0)
    np.testing.assert_allclose(featurize(path).dos_up[:, 8], expected, rtol=1e-5, atol=1e-6)


def _direct_occupied_electrons(cd) -> float:
    """Integral over E - E_F in [-20, 0] eV of the s,p,d projected DOS, per atom, from pymatgen."""
    e = np.asarray(cd.energies) - cd.efermi
    tot = np.zeros_like(e)
    for site in cd.pdos.values():
        for orb, dens in site.items():
            if orb.name.startswith("f"):
                continue
            for arr in dens.values():
                tot += np.asarray(arr)
    m = (e >= -20) & (e <= 0)
    return float(np.trapezoid(tot[m], e[m]) / len(cd.structure))


@pytest.mark.parametrize("rel", ["vasp/LiF.vasprun.xml.gz", "vasp/GaAs_mp-2534.vasprun.xml.gz",
                                 "vasp/indirect.vasprun.xml.gz", "mp/Nb3Sn_complete_dos.json",
                                 "mp/Fe_bcc_complete_dos.json.gz"])
def test_occupied_integral_matches_pymatgen(fixtures_dir, rel):
    path = fixtures_dir / rel
    ex = featurize(path)
    if "vasprun" in rel:
        from pymatgen.io.vasp import Vasprun

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cd = Vasprun(str(path), parse_potcar_file=False).complete_dos
    else:
        opener = gzip.open if rel.endswith(".gz") else open
        with opener(path, "rt") as fh:
            cd = CompleteDos.from_dict(json.load(fh))
    x = PAPER_GRID.energies()
    occ = x <= 0
    ours = float(np.trapezoid((ex.dos_up + ex.dos_down).sum(axis=1)[occ], x[occ]))
    direct = _direct_occupied_electrons(cd)
    assert direct > 0.05
    assert ours == pytest.approx(direct, rel=0.03)


def test_materials_project_documents_use_their_efermi(fixtures_dir):
    for name in ["Si_complete_dos.json", "Nb3Sn_complete_dos.json", "mp-865805_Co2TaZn_complete_dos.json"]:
        with open(fixtures_dir / "mp" / name) as fh:
            doc = json.load(fh)
        ex = featurize(fixtures_dir / "mp" / name)
        assert ex.efermi == pytest.approx(doc["efermi"])
    exs = featurize_all(fixtures_dir / "mp" / "mp-823888_WO2_mp-1686587_Si_complete_dos.json.gz")
    assert [e.id for e in exs] == ["mp-823888", "mp-1686587"] and [e.formula for e in exs] == ["WO2", "Si"]


@pytest.mark.parametrize("name,words", sorted(BAD.items()))
def test_bad_inputs_raise_one_clear_error(fixtures_dir, name, words):
    path = fixtures_dir / "vasp" / name
    with pytest.raises(DOSInputError) as err:
        featurize(path)
    assert name in str(err.value) and words in str(err.value)


def test_cli_reports_all_failures_and_processes_the_rest(fixtures_dir, tmp_path, capsys):
    out = tmp_path / "f.npz"
    paths = [str(fixtures_dir / "vasp" / n) for n in ("LiF.vasprun.xml.gz", "bad.vasprun.xml.gz",
                                                      "nonlm.vasprun.xml.gz", "indirect.vasprun.xml.gz")]
    rc = cli_main(["featurize", *paths, str(tmp_path / "missing.xml"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0
    assert "bad.vasprun.xml.gz" in err and "nonlm.vasprun.xml.gz" in err and "missing.xml" in err
    data = load_examples(out)
    assert data["dos_up"].shape == (2, 1500, 9) and list(data["id"]) == ["LiF.vasprun", "indirect.vasprun"]
    assert data["id"].dtype.kind == "U"  # readable without pickle
    assert np.load(out, allow_pickle=False)["composition"].shape == (2, 118)


def test_cli_single_bad_file_one_line(fixtures_dir, tmp_path, capsys):
    rc = cli_main(["featurize", str(fixtures_dir / "vasp" / "dielectric_6.0.8.vasprun.xml.gz"),
                   "--out", str(tmp_path / "x.npz"), "--quiet"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc != 0 and len(err) == 1 and "noncollinear" in err[0]


def test_cli_walks_directories(fixtures_dir, tmp_path, capsys):
    rc = cli_main(["featurize", str(fixtures_dir / "doscar"), "--out", str(tmp_path / "d.npz")])
    assert rc == 0
    data = load_examples(tmp_path / "d.npz")
    # the DOSCAR and vasprun.xml of one run are one calculation: one example (reliability issue, section 3)
    assert sorted(data["id"]) == ["hea_spin_polarized/vasprun"]
    assert "DOSCAR.gz: same calculation as the vasprun.xml beside it" in capsys.readouterr().err


def test_parallel_featurization_gives_the_serial_result(tmp_path):
    """workers=2 (spawned processes) returns the same examples, failures and order as serial."""
    from esnet_tf.featurize import featurize_paths
    from esnet_tf.resources import demo_dir

    files = sorted(demo_dir().glob("calcs/*/is.gpawdos.npz"))[:6]
    assert len(files) == 6
    bad = tmp_path / "broken.gpawdos.npz"
    bad.write_bytes(b"not a zip archive")
    inputs = [str(files[0]), str(bad), *map(str, files[1:]), str(files[2])]  # files[2] twice: refused once
    serial = featurize_paths(inputs, progress=False, workers=1)
    parallel = featurize_paths(inputs, progress=False, workers=2)
    assert [e.id for e in parallel[0]] == [e.id for e in serial[0]] and len(serial[0]) == 6
    assert parallel[1] == serial[1] and len(serial[1]) == 2
    for a, b in zip(serial[0], parallel[0]):
        assert np.array_equal(a.dos_up, b.dos_up) and np.array_equal(a.composition, b.composition)
    with pytest.raises(ValueError, match="workers"):
        featurize_paths(inputs, workers=0)


# ----------------------------------------------------------------- IS energies (spec v2, issue 32)

MP_REFS = "mp/mp_elemental_reference_entries_2023-02-07.json.gz"
ROOT = Path(__file__).resolve().parents[1]


def test_gpaw_demo_energies_from_the_engines_references():
    """A demo calculation: IS energy from the GPAW result, formation energy against the engine's own
    references (the demo's provenance.json), equal to what `esnet dft` wrote to labels.csv."""
    from esnet_tf.labels import read_labels

    rows = read_labels(ROOT / "datasets" / "is_dos" / "demo" / "labels.csv")[:6]
    for row in rows:
        ex = featurize(row.file, id=row.id)
        result = json.loads((Path(row.file).parent / "result.json").read_text())
        assert ex.is_energy_per_atom == pytest.approx(result["is_energy"] / result["n_atoms"], abs=1e-12)
        assert ex.is_energy_per_atom == pytest.approx(row.float("is_energy_per_atom"), abs=2e-6)
        assert ex.is_formation_energy_per_atom == pytest.approx(row.float("is_formation_energy_per_atom"), abs=2e-6)
        assert "engine's elemental references" in ex.energy_source


def test_gpaw_references_need_the_same_settings(tmp_path):
    """A provenance.json of other settings is not the engine's references for this file: NaN, not a guess."""
    from esnet_tf.labels import read_labels

    row = read_labels(ROOT / "datasets" / "is_dos" / "demo" / "labels.csv")[0]
    prov = json.loads((ROOT / "datasets" / "is_dos" / "demo" / "provenance.json").read_text())
    (tmp_path / "calcs").mkdir()
    (tmp_path / "calcs" / "is.gpawdos.npz").write_bytes(Path(row.file).read_bytes())
    prov["settings"]["ecut"] = 400.0
    (tmp_path / "provenance.json").write_text(json.dumps(prov))
    ex = featurize(tmp_path / "calcs" / "is.gpawdos.npz")
    assert np.isfinite(ex.is_energy_per_atom) and np.isnan(ex.is_formation_energy_per_atom)


def test_vasp_single_point_energy_and_mp_references(fixtures_dir):
    """LiF single point: the final (only) ionic step's energy sigma -> 0, as pymatgen's final_energy;
    its formation energy against the Materials Project references fixture."""
    from pymatgen.io.vasp import Vasprun

    from esnet_tf.references import load_references

    path = fixtures_dir / "vasp" / "LiF.vasprun.xml.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = Vasprun(str(path), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
    plain = featurize(path)
    assert plain.is_energy_per_atom == pytest.approx(float(run.final_energy) / 2, abs=1e-9)
    assert np.isnan(plain.is_formation_energy_per_atom)  # no references: unknown
    mu = load_references(fixtures_dir / MP_REFS)
    ex = featurize(path, references=mu)
    assert ex.is_formation_energy_per_atom == pytest.approx(
        (float(run.final_energy) - mu["Li"] - mu["F"]) / 2, abs=1e-9)
    assert -4 < ex.is_formation_energy_per_atom < -2  # LiF is strongly bound


def test_vasp_multistep_run_takes_the_first_ionic_step(fixtures_dir):
    """The IS energy of a relaxation is its first ionic step (the initial structure), not the final energy."""
    from pymatgen.io.vasp import Vasprun

    path = fixtures_dir / "vasp" / "magmom_ldau.vasprun.xml.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = Vasprun(str(path), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
    assert len(run.ionic_steps) == 3
    first = run.ionic_steps[0]
    last_scf = first["electronic_steps"][-1]
    want = first["e_fr_energy"] + last_scf["e_0_energy"] - last_scf["e_fr_energy"]
    ex = featurize(path)
    assert ex.is_energy_per_atom == pytest.approx(want / len(run.initial_structure), abs=1e-7)
    total = ex.is_energy_per_atom * len(run.initial_structure)
    assert abs(total - float(run.final_energy)) > 1e-4  # -66.61356 eV (first step) vs -66.61335 eV (final)
    assert "first ionic step of 3" in ex.energy_source
    from esnet_tf.readers.vasp import read_vasprun
    assert read_vasprun(path).total_energy == pytest.approx(ex.is_energy_per_atom * ex.n_atoms, abs=1e-6)


def test_materials_project_task_document_energy_where_present(fixtures_dir, tmp_path):
    """CompleteDos documents carry no energy (NaN); a task document with output.energy_per_atom does."""
    src = fixtures_dir / "mp" / "mp-823888_WO2_mp-1686587_Si_complete_dos.json.gz"
    docs = json.loads(gzip.decompress(src.read_bytes()))
    assert all(np.isnan(e.is_energy_per_atom) for e in featurize_all(src))
    docs[1]["output"] = {"energy_per_atom": -5.4233}  # as in emmet's TaskDoc
    (tmp_path / "task.json").write_text(json.dumps(docs))
    a, b = featurize_all(tmp_path / "task.json")
    assert np.isnan(a.is_energy_per_atom) and b.is_energy_per_atom == pytest.approx(-5.4233)
    docs[1]["output"] = {"energy_per_atom": "high"}
    (tmp_path / "task.json").write_text(json.dumps(docs))
    with pytest.raises(DOSInputError, match="energy_per_atom 'high' is not a number"):
        featurize_all(tmp_path / "task.json")


def test_references_files_csv_and_mp_json(fixtures_dir, tmp_path):
    from esnet_tf.errors import UserError
    from esnet_tf.references import formation_energy_per_atom, load_references

    mu = load_references(fixtures_dir / MP_REFS)
    assert len(mu) == 89 and mu["Si"] == pytest.approx(-5.42531803)
    csv_path = tmp_path / "refs.csv"
    csv_path.write_text("element,energy_per_atom\nSi,-5.4\nO,-4.9\n")
    assert load_references(csv_path) == {"Si": -5.4, "O": -4.9}
    ef, missing = formation_energy_per_atom(-25.0, {"Si": 1, "O": 2, "Ti": 1}, {"Si": -5.4, "O": -4.9})
    assert np.isnan(ef) and missing == ["Ti"]
    for text, words in (("el,e\nSi,1\n", "expected element,energy_per_atom"),
                        ("element,energy_per_atom\nXx,1\n", "'Xx' is not an element"),
                        ("element,energy_per_atom\nSi,abc\n", "not a number"),
                        ("element,energy_per_atom\nSi,1\nSi,2\n", "given twice"),
                        ('[{"energy": 1}]', "not a ComputedEntry")):
        csv_path.write_text(text)
        with pytest.raises(UserError, match=words) as err:
            load_references(csv_path)
        assert "\n" not in str(err.value) and str(csv_path) in str(err.value)
    with pytest.raises(UserError, match="not found"):
        load_references(tmp_path / "nope.csv")


def test_cli_writes_energy_arrays_and_takes_references(fixtures_dir, tmp_path, capsys):
    paths = [str(fixtures_dir / "vasp" / f) for f in ("LiF.vasprun.xml.gz", "indirect.vasprun.xml.gz")]
    gpaw = str(ROOT / "datasets" / "is_dos" / "dummy_data" / "calcs" / "Mg_fcc.gpawdos.npz")
    out = tmp_path / "f.npz"
    assert cli_main(["featurize", *paths, gpaw, "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "is_formation_energy_per_atom known for 1" in text and "--references FILE" in text
    a = load_examples(out)
    assert a["is_energy_per_atom"].shape == (3, 1) and a["is_energy_per_atom"].dtype == np.float32
    assert np.isfinite(a["is_energy_per_atom"]).all()
    ef = dict(zip(a["id"], a["is_formation_energy_per_atom"][:, 0]))
    assert np.isnan(ef["LiF.vasprun"]) and np.isnan(ef["indirect.vasprun"])  # VASP without --references: unknown
    assert ef["Mg_fcc"] == pytest.approx(0.116743, abs=2e-6)  # the GPAW engine's references (dummy provenance)
    capsys.readouterr()
    assert cli_main(["featurize", *paths, "--out", str(out), "--quiet", "--references",
                     str(fixtures_dir / MP_REFS)]) == 2  # an existing output is refused in one line
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(out) in err and "--overwrite" in err
    assert cli_main(["featurize", *paths, "--out", str(out), "--quiet", "--references",
                     str(fixtures_dir / MP_REFS), "--overwrite"]) == 0
    a = load_examples(out)
    assert np.isfinite(a["is_formation_energy_per_atom"]).all()
    with np.load(out, allow_pickle=False) as raw:  # stored as the model inputs: (N, 1) float32 eV/atom
        assert raw["is_formation_energy_per_atom"].shape == (2, 1)
    capsys.readouterr()
    assert cli_main(["featurize", *paths, "--out", str(out), "--references", str(tmp_path / "no.csv"),
                     "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no.csv" in err


def test_npz_written_before_the_energies_loads_with_nan(tmp_path):
    a = {"dos_up": np.zeros((2, 1500, 9), np.float32), "dos_down": np.zeros((2, 1500, 9), np.float32),
         "composition": np.eye(2, 118, dtype=np.float32), "id": np.array(["a", "b"])}
    np.savez(tmp_path / "old.npz", **a)
    loaded = load_examples(tmp_path / "old.npz")
    assert loaded["is_formation_energy_per_atom"].shape == (2, 1)
    assert np.isnan(loaded["is_formation_energy_per_atom"]).all() and np.isnan(loaded["is_energy_per_atom"]).all()


def test_training_arrays_carry_the_energies_labels_column_first(tmp_path):
    """Arrays of a labels directory and of an .npz + labels carry both energies, (N, 1) float32 eV/atom:
    a labels column where given, else the calculation's value."""
    from esnet_tf.data import load_dir_arrays, load_npz_arrays

    dummy = ROOT / "datasets" / "is_dos" / "dummy_data"
    arrays = load_dir_arrays(dummy)
    ef = dict(zip(arrays["id"], arrays["is_formation_energy_per_atom"][:, 0]))
    assert arrays["is_formation_energy_per_atom"].shape == (5, 1) and np.isfinite(list(ef.values())).all()
    assert ef["Al_fcc"] == np.float32(0.916687) and ef["Mg_fcc"] == pytest.approx(0.116743, abs=2e-6)
    assert cli_main(["featurize", str(dummy / "calcs"), "--out", str(tmp_path / "f.npz"), "--quiet"]) == 0
    (tmp_path / "labels.csv").write_text("id,formation_energy_per_atom,is_formation_energy_per_atom\n"
                                         "Al_fcc,0.0,0.5\nMg_fcc,0.014928,\n")
    npz = load_npz_arrays(str(tmp_path / "f.npz"), tmp_path / "labels.csv")
    got = dict(zip(npz["id"], npz["is_formation_energy_per_atom"][:, 0]))
    assert set(got) == {"Al_fcc", "Mg_fcc"} and got["Al_fcc"] == np.float32(0.5)  # the column wins
    assert got["Mg_fcc"] == pytest.approx(0.116743, abs=2e-6)  # blank: the featurized value
