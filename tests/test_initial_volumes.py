"""Initial-structure volumes (esnet_tf.dft.volumes, benchmarks/initial_volumes.py): the contact rule's
volume against the relaxed one, pymatgen's DLS / RLS predictors, failures counted, the command's guards."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from esnet_tf.dft import volumes as V

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datasets" / "is_dos" / "demo"
SCRIPT = ROOT / "benchmarks" / "initial_volumes.py"


def demo_row(row_id: str) -> dict[str, str]:
    with (DEMO / "labels.csv").open(newline="") as fh:
        return next(r for r in csv.DictReader(fh) if r["id"] == row_id)


def test_volume_per_atom_of_a_demo_calculation():
    """AgCl in CsCl: the contact rule puts Ag-Ag (2 x 1.6 Å Slater radius) at a = 3.2 Å, 2 atoms per cell;
    the EOS relaxed it by labels.csv's rs_scale (a linear factor)."""
    row = demo_row("AgCl_cscl")
    c = V.calc_volumes(DEMO / Path(row["path"]).parent)
    assert (c.id, c.prototype, c.formula, c.n_atoms) == ("AgCl_cscl", "cscl", "AgCl", 2)
    assert c.v_is == pytest.approx(3.2 ** 3 / 2, rel=1e-9)  # 16.384 Å^3/atom
    assert c.v_relaxed / c.v_is == pytest.approx(float(row["rs_scale"]) ** 3, rel=1e-5)
    assert c.v_relaxed == pytest.approx(20.4237, abs=1e-3)


def _write_calc(folder: Path, structure, relaxed) -> None:
    folder.mkdir(parents=True)
    (folder / "task.json").write_text(json.dumps({"id": "Na_box", "structure": structure.as_dict(),
                                                  "prototype": "box", "kind": "crystal"}))
    (folder / "result.json").write_text(json.dumps({"id": "Na_box", "kind": "crystal",
                                                    "rs_structure": relaxed.as_dict()}))


def test_a_structure_the_predictors_fail_on_is_counted_not_dropped(tmp_path):
    """One Na atom in a 12 Å box: DLS finds no bond within its cutoff (pymatgen raises), RLS has no
    reference of its prototype; the row stays, with NaN volumes and the reasons, and the summary counts it."""
    from pymatgen.core import Lattice, Structure

    initial = Structure(Lattice.cubic(12.0), ["Na"], [[0, 0, 0]])
    relaxed = Structure(Lattice.cubic(11.0), ["Na"], [[0, 0, 0]])
    _write_calc(tmp_path / "calcs" / "na", initial, relaxed)
    rows = [{"id": "Na_box", "path": "calcs/na/is.gpawdos.npz", "formation_energy_per_atom": "0.5",
             "is_formation_energy_per_atom": "0.7", "relax_kind": "eos", "role": "candidate"}]
    refs = V.RLSReferences(V.references_from(DEMO, [demo_row("AgCl_cscl")]))  # a cscl reference only
    out = V.volume_rows(tmp_path, rows, V.pool_group, refs)
    assert len(out) == 1
    r = out[0]
    assert r.group == "pool_candidates" and r.v_is == pytest.approx(1728.0) and r.v_relaxed == pytest.approx(1331.0)
    assert r.v_dls != r.v_dls and "Could not find any bonds" in r.dls_error  # NaN, reason kept
    assert r.v_rls != r.v_rls and "no reference structure of prototype 'box'" in r.rls_error
    assert r.is_minus_relaxed_formation_energy == pytest.approx(0.2)
    s = V.summarize(out)["pool_candidates"]
    assert s["n"] == 1 and s["methods"]["is"]["n"] == 1
    for m in ("dls", "rls", "blend"):
        assert (s["methods"][m]["n"], s["methods"][m]["n_failed"]) == (0, 1)
        assert sum(s["methods"][m]["failures"].values()) == 1
    csv_path = V.write_csv(out, tmp_path / "volumes.csv")
    with csv_path.open(newline="") as fh:
        (written,) = list(csv.DictReader(fh))
    assert written["id"] == "Na_box" and written["v_dls"] == "" and "Could not find any bonds" in written["dls_error"]


def test_dls_and_rls_on_a_real_structure():
    """The predictors run on a demo IS: DLS within its 0.5-1.5 clamp of the IS volume, RLS from another
    rocksalt's relaxed volume (its own chemical system is left out)."""
    nacl = V.calc_volumes(DEMO / Path(demo_row("NaCl_rocksalt")["path"]).parent)
    v, clamped = V.dls_volume(nacl.initial)
    assert 0.5 * nacl.v_is <= v <= 1.5 * nacl.v_is and not clamped
    refs = V.RLSReferences(V.references_from(DEMO, [demo_row("NaCl_rocksalt"), demo_row("AgCl_rocksalt")]))
    v_rls, n_refs, _ = refs.predict(nacl.initial, "rocksalt", V.chemsys_of(nacl.initial))
    assert n_refs == 1 and 0.5 * nacl.v_relaxed < v_rls < 2 * nacl.v_relaxed


def _run(*args: str) -> subprocess.CompletedProcess:
    """benchmarks/initial_volumes.py as a user runs it."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_command_refuses_an_existing_output_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    res = _run("--out", str(out))
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1
    assert "summary.json: exists" in err[0] and "--overwrite" in err[0]
    assert (out / "summary.json").read_text() == "{}"


def test_command_names_a_missing_demo_dir_in_one_line(tmp_path):
    res = _run("--demo-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1
    assert "nope" in err[0] and "--demo-dir" in err[0]
    assert not (tmp_path / "out").exists()
