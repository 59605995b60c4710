"""esnet_tf.uip and `esnet uip`: CHGNet relaxations (extra `uip`), references fitted on training rows only."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from esnet_tf import uip
from esnet_tf.cli import main

ROOT = Path(__file__).resolve().parents[1]
needs_chgnet = pytest.mark.skipif(not uip.uip_available(), reason="chgnet/torch not installed: the extra "
                                  "esnet-tf[uip] (scripts/setup.sh installs it with ESNET_UIP=1 and in CI)")
needs_sevennet = pytest.mark.skipif(not uip.uip_available("sevennet"), reason="sevenn/torch not installed: the "
                                    "extra esnet-tf[uip] (scripts/setup.sh installs it with ESNET_UIP=1 and in CI)")


def _al() -> Structure:
    """fcc Al, 1-atom primitive cell, compressed 3 % (a = 3.92 Å conventional)."""
    return Structure(Lattice.from_parameters(*(3.92 / 2 ** 0.5,) * 3, 60, 60, 60), ["Al"], [[0, 0, 0]])


def _nacl() -> Structure:
    """rocksalt NaCl, 2-atom primitive cell, expanded (a = 5.9 Å conventional)."""
    a = 5.9 / 2 ** 0.5
    return Structure(Lattice.from_parameters(a, a, a, 60, 60, 60), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_core_never_imports_torch_or_chgnet():
    """`import esnet_tf`, `esnet --help`, `esnet uip relax --help` and importing esnet_tf.uip load no torch."""
    code = ("import sys, contextlib, io\n"
            "import esnet_tf, esnet_tf.uip\n"
            "from esnet_tf.cli import main\n"
            "for argv in (['--help'], ['uip', 'relax', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'chgnet', 'sevenn', 'e3nn')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_missing_extra_is_one_line(tmp_path, monkeypatch, capsys):
    real = uip.importlib.util.find_spec
    monkeypatch.setattr(uip.importlib.util, "find_spec", lambda name, *a: None if name == "chgnet" else real(name, *a))
    (tmp_path / "Al.json").write_text(json.dumps(_al().as_dict()))
    rc = main(["uip", "relax", str(tmp_path / "Al.json"), "--out", str(tmp_path / "u.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "install esnet-tf[uip]" in err
    assert not (tmp_path / "u.csv").exists()


@needs_chgnet
def test_relax_tiny_structures_with_two_workers_then_from_the_cache(tmp_path):
    cfg = uip.UIPConfig(workers=2, fmax=0.05, max_steps=200)
    res = uip.relax_structures([("Al", _al()), ("NaCl", _nacl())], cfg, cache_dir=tmp_path, progress=False)
    assert [r.id for r in res] == ["Al", "NaCl"] and not any(r.error for r in res)
    for r in res:
        assert r.converged and r.stop_reason == "converged" and 0 < r.steps <= 200 and not r.cached
        assert r.model == "chgnet" and r.model_version == "0.3.0" and r.package_version
        assert -6.0 < r.energy_per_atom < -2.0 and r.wall_time_s > 0
    al, nacl = (Structure.from_dict(r.structure) for r in res)
    # the potential relaxes toward the experimental/PBE lattice constants (Al 4.04, NaCl 5.64-5.70 Å)
    assert 3.95 < al.lattice.a * 2 ** 0.5 < 4.15 and 5.4 < nacl.lattice.a * 2 ** 0.5 < 5.85
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 2 and all(json.loads(f.read_text())["settings"] == cfg.key() for f in files)
    again = uip.relax_structures([("Al", _al()), ("NaCl", _nacl())], uip.UIPConfig(max_steps=200),
                                 cache_dir=tmp_path, progress=False)
    assert all(r.cached for r in again)
    assert [r.energy_per_atom for r in again] == [r.energy_per_atom for r in res]


def test_each_potential_has_its_default_weights_and_refuses_others():
    assert uip.UIPConfig().model_version == "0.3.0"
    assert uip.UIPConfig(model="sevennet").model_version == "7net-0"
    assert uip.UIPConfig(model="sevennet").key() != uip.UIPConfig().key()
    with pytest.raises(uip.UserError, match="unknown for sevennet"):
        uip.UIPConfig(model="sevennet", model_version="0.3.0")
    with pytest.raises(uip.UserError, match="choose one of"):
        uip.UIPConfig(model="mace")


@needs_sevennet
def test_sevennet_relaxes_tiny_structures(tmp_path):
    """SevenNet (7net-0, weights in the sevenn wheel) relaxes fcc Al and rocksalt NaCl toward their PBE lattice
    constants, in this process; its cache entries never pass for CHGNet's."""
    cfg = uip.UIPConfig(model="sevennet", max_steps=200)
    res = uip.relax_structures([("Al", _al()), ("NaCl", _nacl())], cfg, cache_dir=tmp_path, progress=False)
    assert not any(r.error for r in res), [r.error for r in res]
    for r in res:
        assert r.converged and r.model == "sevennet" and r.model_version == "7net-0" and r.package_version
        assert -6.0 < r.energy_per_atom < -2.0
    al, nacl = (Structure.from_dict(r.structure) for r in res)
    assert 3.95 < al.lattice.a * 2 ** 0.5 < 4.15 and 5.4 < nacl.lattice.a * 2 ** 0.5 < 5.85
    assert {r.key for r in res}.isdisjoint({uip.cache_key(s, uip.UIPConfig(), uip.package_version("chgnet"))
                                            for s in (_al(), _nacl())})


@needs_chgnet
def test_step_and_time_limits_are_respected(tmp_path):
    strained = _nacl()
    strained.perturb(0.15, 0.15)
    (r,) = uip.relax_structures([("x", strained)], uip.UIPConfig(max_steps=2), cache_dir=tmp_path, progress=False)
    assert r.steps <= 2 and not r.converged and r.stop_reason == "step limit" and math.isfinite(r.energy_per_atom)
    (t,) = uip.relax_structures([("x", strained)], uip.UIPConfig(timeout_s=1e-9), cache_dir=tmp_path / "t",
                                progress=False)
    assert not t.converged and t.stop_reason == "time limit" and t.steps <= 1
    # a time-limited result is computed again when more time is given
    (t2,) = uip.relax_structures([("x", strained)], uip.UIPConfig(timeout_s=600), cache_dir=tmp_path / "t",
                                 progress=False)
    assert not t2.cached and t2.stop_reason != "time limit"


class _TrainOnly(Mapping):
    """DFT formation energies that fail the test on any read of a test row."""

    def __init__(self, data: dict[str, float], test_ids: set[str]):
        self.data, self.test_ids = data, test_ids

    def __getitem__(self, key):
        assert key not in self.test_ids, f"fit_gas_references read the DFT label of test row {key}"
        return self.data[key]

    def __iter__(self):
        raise AssertionError("fit_gas_references iterated over all labels")

    def __len__(self):
        raise AssertionError("fit_gas_references looked at all labels")


def test_gas_references_are_fitted_on_training_rows_only():
    mu_true = {"Mg": -1.5, "Ti": -7.8, "O": -4.9, "F": -1.9}
    comps = {"MgO": {"Mg": 0.5, "O": 0.5}, "TiO2": {"Ti": 1 / 3, "O": 2 / 3}, "MgF2": {"Mg": 1 / 3, "F": 2 / 3},
             "TiF3": {"Ti": 0.25, "F": 0.75}, "MgTi": {"Mg": 0.5, "Ti": 0.5},
             "test_MgO_b": {"Mg": 0.5, "O": 0.5}, "test_MgF2_b": {"Mg": 1 / 3, "F": 2 / 3}}
    dft = {"MgO": -3.0, "TiO2": -3.2, "MgF2": -3.7, "TiF3": -3.0, "MgTi": 0.05,
           "test_MgO_b": -2.5, "test_MgF2_b": -3.1}
    energies = {i: dft[i] + sum(x * mu_true[el] for el, x in c.items()) for i, c in comps.items()}
    test_ids = {"test_MgO_b", "test_MgF2_b"}
    train = [i for i in comps if i not in test_ids]
    crystal = {"Mg": -1.5, "Ti": -7.8}
    mu = uip.fit_gas_references(train, energies, comps, _TrainOnly(dft, test_ids), crystal)
    assert set(mu) == {"O", "F"}  # N and Cl: no training row holds them, so no value
    assert mu["O"] == pytest.approx(-4.9, abs=1e-9) and mu["F"] == pytest.approx(-1.9, abs=1e-9)
    table = uip.UIPTable(energies, comps, crystal, {})
    ef = table.formation_energies(mu)
    assert ef["test_MgO_b"] == pytest.approx(-2.5) and math.isnan(table.formation_energies()["test_MgO_b"])
    # the fold helper reads only the training labels too
    ef2 = table.fold_formation_energies(train, _TrainOnly(dft, test_ids))
    assert ef2["test_MgF2_b"] == pytest.approx(-3.1)
    # a solid of fitted elements only (the pool's label-range OF) says nothing about O or F in compounds: the
    # fit ignores it, however far off the potential is there (with it, least squares moves both potentials)
    comps["OF"], dft["OF"], energies["OF"] = {"O": 0.5, "F": 0.5}, 1.7, 1.7 + 0.5 * (-4.9 - 1.9) - 3.0
    assert uip.fit_gas_references(train + ["OF"], energies, comps, _TrainOnly(dft, test_ids), crystal) == mu
    comps["MgOF"], dft["MgOF"] = {"Mg": 1 / 3, "O": 1 / 3, "F": 1 / 3}, -2.0
    energies["MgOF"] = -2.0 + (-1.5 - 4.9 - 1.9) / 3 - 3.0  # one crystalline element: a row like any other
    moved = uip.fit_gas_references(train + ["MgOF"], energies, comps, _TrainOnly(dft, test_ids), crystal)
    assert moved["O"] != pytest.approx(mu["O"], abs=1e-3)


def test_cross_fitted_prediction_never_sees_its_own_label():
    """Changing one row's DFT label changes the fits of the other folds, never that row's own prediction."""
    mu_true = {"Mg": -1.5, "Ti": -7.8, "O": -4.9}
    comps = {f"r{i}": {"Mg": x, "O": 1 - x} if i % 2 else {"Ti": x, "O": 1 - x}
             for i, x in enumerate([0.5, 0.4, 1 / 3, 0.25, 0.6, 0.45, 0.3, 0.55])}
    dft = {i: -2.0 - 0.1 * n for n, i in enumerate(comps)}
    energies = {i: dft[i] + 0.05 * (n % 3) + sum(x * mu_true[el] for el, x in comps[i].items())
                for n, i in enumerate(comps)}
    table = uip.UIPTable(energies, comps, {"Mg": -1.5, "Ti": -7.8}, {})
    fold_of = {i: n % 4 for n, i in enumerate(comps)}
    pred, mus = uip.cross_fitted_formation_energies(table, dft, fold_of)
    assert len(mus) == 4 and all(math.isfinite(v) for v in pred.values())
    for i in comps:
        poisoned, _ = uip.cross_fitted_formation_energies(table, {**dft, i: 1e3}, fold_of)
        assert poisoned[i] == pred[i]
        assert any(poisoned[j] != pred[j] for j in comps if fold_of[j] != fold_of[i])


def test_elemental_references_take_the_lowest_crystal():
    def res(id_, comp, e, error=""):
        return uip.UIPResult(id_, id_, e, None, 1, 0.1, True, "converged", "chgnet", "0.3.0", "0", composition=comp,
                             error=error)

    refs = uip.elemental_references([res("Al_fcc", {"Al": 1.0}, -3.7), res("Al_bcc", {"Al": 1.0}, -3.6),
                                     res("Al_hcp", {"Al": 1.0}, -9.0, error="boom"), res("O2", {"O": 1.0}, -4.9),
                                     res("AlO", {"Al": 0.5, "O": 0.5}, -6.0)])
    assert refs == {"Al": {"energy_per_atom": -3.7, "id": "Al_fcc"}}


def test_demo_initial_structures_are_the_tasks_structures():
    from esnet_tf.labels import read_labels
    from esnet_tf.resources import demo_labels

    items = uip.demo_structures()
    rows = read_labels(demo_labels())
    assert [i for i, _ in items] == [r.id for r in rows]
    for (_id, s), row in zip(items[:20], rows[:20]):
        assert s.composition.reduced_formula == row.formula


@pytest.mark.parametrize("model", sorted(uip.MODELS))
def test_committed_demo_column_covers_every_row(model):
    """datasets/is_dos/demo/uip_<model>.csv: one converged relaxation per labels row; references consistent."""
    from esnet_tf.labels import read_labels
    from esnet_tf.resources import demo_labels

    path = uip.demo_uip_csv(model)
    rows = {r.id: r for r in read_labels(demo_labels())}
    with open(path, newline="") as fh:
        data = list(csv.DictReader(fh))
    assert [d["id"] for d in data] == list(rows) and all(not d["error"] for d in data)
    table = uip.read_table(path)
    assert table.meta["model"] == model and table.meta["n_structures"] == len(rows)
    assert {d["model_version"] for d in data} == {uip.UIPConfig(model=model).model_version}
    ef = table.formation_energies()
    for ref in table.meta["elemental_references"].values():
        assert ef[ref["id"]] == pytest.approx(0.0, abs=1e-6)  # the reference phase itself
    gas = [d for d in data if set(table.compositions[d["id"]]) & set(uip.GAS_ELEMENTS)]
    assert gas and all(d["uip_formation_energy_per_atom"] == "" for d in gas)  # only with fitted references
    assert all(d["uip_formation_energy_per_atom"] != "" for d in data if d not in gas)


@pytest.fixture(scope="module")
def cli_relaxed(tmp_path_factory) -> dict:
    """`esnet uip relax` of Al (a POSCAR) and NaCl (pymatgen JSON) with a Cl reference: the inputs, the
    cache (both relaxations in it), the exit code and the output CSV."""
    d = tmp_path_factory.mktemp("uip_cli")
    _al().to(filename=str(d / "POSCAR"))
    (d / "NaCl.json").write_text(json.dumps(_nacl().as_dict()))
    refs = d / "mu.json"
    refs.write_text(json.dumps({"Cl": -1.8}))
    out = d / "out" / "uip.csv"
    inputs = [str(d / "POSCAR"), str(d / "NaCl.json")]
    rc = main(["uip", "relax", *inputs, "--out", str(out), "--cache", str(d / "cache"), "--references", str(refs),
               "--no-progress"])
    return {"dir": d, "inputs": inputs, "cache": d / "cache", "refs": refs, "rc": rc, "out": out}


@needs_chgnet
def test_cli_writes_the_csv_and_refuses_a_bad_file(cli_relaxed, tmp_path, capsys):
    out = cli_relaxed["out"]
    assert cli_relaxed["rc"] == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == uip.CSV_COLUMNS and [r["id"] for r in rows] == [cli_relaxed["dir"].name, "NaCl"]
    meta = json.loads(out.with_suffix(".json").read_text())
    mu = {el: v["energy_per_atom"] for el, v in meta["elemental_references"].items()}
    for r in rows:
        assert r["converged"] == "True" and r["model"] == "chgnet" and r["model_version"] == "0.3.0"
    na, al = mu["Na"], mu["Al"]
    e = float(rows[1]["uip_energy_per_atom"])
    assert float(rows[1]["uip_formation_energy_per_atom"]) == pytest.approx(e - 0.5 * na - 0.5 * -1.8, abs=2e-6)
    assert float(rows[0]["uip_formation_energy_per_atom"]) == pytest.approx(float(rows[0]["uip_energy_per_atom"]) - al,
                                                                            abs=2e-6)
    capsys.readouterr()
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a oops\n")
    rc = main(["uip", "relax", str(bad), "--out", str(tmp_path / "bad.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(bad) in err
    assert not (tmp_path / "bad.csv").exists()


@needs_chgnet
def test_cli_rewrites_its_own_output_and_refuses_another_without_overwrite(cli_relaxed, tmp_path, capsys):
    """--out (issue 36): a rerun of the same (or more) structures, settings and --references rewrites the
    CSV and JSON (from the cache); other ones are refused before any relaxation, the files unchanged;
    --overwrite replaces both; an output without a record of its inputs is refused as any output."""
    import shutil

    assert cli_relaxed["rc"] == 0
    out = tmp_path / "uip.csv"
    meta = out.with_suffix(".json")
    shutil.copy(cli_relaxed["out"], out)
    shutil.copy(cli_relaxed["out"].with_suffix(".json"), meta)
    al, nacl = cli_relaxed["inputs"]
    common = ["--out", str(out), "--cache", str(cli_relaxed["cache"]), "--no-progress"]
    refs = ["--references", str(cli_relaxed["refs"])]
    assert main(["uip", "relax", al, nacl, *common, *refs]) == 0  # the same run: rewritten from the cache
    before = (out.read_bytes(), meta.read_bytes())
    capsys.readouterr()

    def refused(argv: list[str]) -> str:
        assert main(["uip", "relax", *argv, *common]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--overwrite" in err and (out.read_bytes(), meta.read_bytes()) == before
        return err

    assert f"{out}: holds the results of another task list (1 of its 2 task(s)" in refused([nacl, *refs])
    assert "with another input or settings" in refused([al, nacl, *refs, "--fmax", "0.1"])
    assert "other --references" in refused([al, nacl])
    assert main(["uip", "relax", nacl, *common, "--overwrite"]) == 0
    with open(out, newline="") as fh:
        assert [r["id"] for r in csv.DictReader(fh)] == ["NaCl"]
    assert json.loads(meta.read_text())["task_list"]["references"] == {}
    assert main(["uip", "relax", nacl, al, *common]) == 0  # every structure of the output and more: rewritten
    doc = json.loads(meta.read_text())
    del doc["task_list"]  # an output of an older version: no record of its inputs
    meta.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["uip", "relax", nacl, al, *common]) == 2
    assert f"{out}: exists (and 1 more output(s) of an earlier run)" in capsys.readouterr().err
