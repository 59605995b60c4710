"""Optimizer relaxations started from a universal potential's geometry (`esnet dft ... --relax-start uip`):
part of the cache key, recorded in result.json and provenance.json, refused in one line when asked wrongly,
and no torch in the worker of an IS-start task."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from esnet_tf.dft.prototypes import noncubic_structure, prototype_structure
from esnet_tf.dft.settings import DFTSettings
from esnet_tf.dft.tasks import Task, relax_start_config, task_hash, uip_relax_start, with_relax_start
from esnet_tf.uip import uip_available

ROOT = Path(__file__).resolve().parents[1]
TINY = DFTSettings.tiny()
needs_gpaw_and_chgnet = pytest.mark.skipif(
    not uip_available() or __import__("importlib").util.find_spec("gpaw") is None,
    reason="GPAW (extra dft) and chgnet/torch (extra uip) are both needed")


def _mg_hcp(settings: DFTSettings = TINY, **kw) -> Task:
    return Task("Mg_hcp", noncubic_structure("hcp", ["Mg"]), settings, relax="optimizer", prototype="hcp", **kw)


def test_the_start_is_part_of_the_cache_key_and_the_is_start_keys_are_unchanged():
    """The IS start keeps every earlier key (values computed before `relax_start` existed); a CHGNet start,
    or other weights, has its own; tasks round-trip through task.json (one without the field is an IS start)."""
    assert task_hash(_mg_hcp()) == "762aa752e57957a2"
    assert task_hash(_mg_hcp(DFTSettings())) == "65533c14ee4f1465"
    assert task_hash(Task("Cu", prototype_structure("fcc", ["Cu"]), DFTSettings(), relax="eos")) == "3ebf882e31a4fdd8"
    start = uip_relax_start()
    assert start == "chgnet-0.3.0" and relax_start_config(start).model_version == "0.3.0"
    assert uip_relax_start("sevennet") == "sevennet-7net-0"  # each potential's own default weights
    assert relax_start_config("sevennet-7net-0").model == "sevennet"
    keys = {task_hash(_mg_hcp(relax_start=s)) for s in ("is", start, "chgnet-0.2.0", "sevennet-7net-0")}
    assert len(keys) == 4
    t = _mg_hcp(relax_start=start)
    assert Task.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    old = _mg_hcp().to_dict()
    del old["relax_start"]  # a task.json written before the option
    assert Task.from_dict(old).relax_start == "is" and task_hash(Task.from_dict(old)) == "762aa752e57957a2"
    eos = Task("Cu", prototype_structure("fcc", ["Cu"]), TINY, relax="eos")
    assert with_relax_start(eos, start) is eos and with_relax_start(_mg_hcp(), start).relax_start == start
    with pytest.raises(ValueError, match="needs relax 'optimizer'"):
        Task("Cu", prototype_structure("fcc", ["Cu"]), TINY, relax="eos", relax_start=start)
    with pytest.raises(ValueError, match="unknown; choose one of is, chgnet-0.3.0"):
        _mg_hcp(relax_start="m3gnet-1")


def test_the_dft_worker_and_cli_load_no_torch_for_an_is_start():
    """The worker, engine, runner and `esnet dft` modules import neither torch nor chgnet, even to key a
    CHGNet-start task (only `engine.uip_start`, in the worker of such a task, loads them)."""
    code = ("import sys\n"
            "import esnet_tf.dft.worker, esnet_tf.dft.engine, esnet_tf.dft.runner, esnet_tf.cli.dft\n"
            "from esnet_tf.dft.prototypes import noncubic_structure\n"
            "from esnet_tf.dft.tasks import Task, task_hash, uip_relax_start\n"
            "t = Task('Mg', noncubic_structure('hcp', ['Mg']), relax='optimizer', relax_start=uip_relax_start())\n"
            "task_hash(t)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'chgnet')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("argv,needle", [
    (["--relax", "optimizer", "--relax-start", "chgnet"], "--relax-start 'chgnet': choose one of is, uip"),
    (["--relax", "eos", "--relax-start", "uip"], "applies to optimizer relaxations only, not --relax eos"),
])
def test_the_cli_refuses_a_bad_relax_start_in_one_line(tmp_path, capsys, argv, needle):
    pytest.importorskip("gpaw", reason="GPAW (extra `dft`) is not installed")
    from esnet_tf.cli import main

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"structures": [{"prototype": "fcc", "species": ["Al"]}]}))
    rc = main(["dft", "run", str(spec), "--out", str(tmp_path / "o"), "--tiny"] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before any work
    rc = main(["dft", "pool", "--out", str(tmp_path / "p"), "--relax-start", "CHGNet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--relax-start 'CHGNet'" in err and err.count("\n") == 1 and not (tmp_path / "p").exists()


@needs_gpaw_and_chgnet
def test_a_relaxation_from_chgnet_is_recorded_and_never_passes_for_an_is_start(tmp_path, capsys):
    """fcc Al compressed 5 % (1 atom, tiny settings, seconds): `esnet dft run --relax optimizer --relax-start uip`
    keeps the IS single point on the unrelaxed cell, scans around CHGNet's cell at the IS's k-mesh, and records
    the start in result.json and provenance.json; the IS-start task finds no result, and the IS-start task
    list is refused for that output in one line."""
    from esnet_tf.cli import main
    from esnet_tf.dft.engine import kpoint_mesh
    from esnet_tf.dft.runner import cached_outcome, relax_start_of

    a = 0.95 * 4.04 / 2 ** 0.5
    al = Structure(Lattice.from_parameters(a, a, a, 60, 60, 60), ["Al"], [[0, 0, 0]])
    (tmp_path / "Al.json").write_text(json.dumps(al.as_dict()))
    out = tmp_path / "out"
    base = ["dft", "run", str(tmp_path / "Al.json"), "--out", str(out), "--tiny", "--relax", "optimizer",
            "--workers", "1"]
    assert main(base + ["--relax-start", "uip"]) == 0, capsys.readouterr()
    capsys.readouterr()
    task = Task("Al", al, TINY, relax="optimizer")
    uip_task = with_relax_start(task, "chgnet-0.3.0")
    r = json.loads((out / "calcs" / task_hash(uip_task) / "result.json").read_text())
    assert r["relax_start"] == "chgnet-0.3.0" and relax_start_of(r) == "chgnet-0.3.0"
    start = Structure.from_dict(r["uip_start"]["structure"])
    assert r["uip_start"]["scale"] > 1.03 and r["uip_start"]["package_version"]  # CHGNet undoes most of the 5 %
    assert r["is_energy"] > r["rs_energy"] and r["relax_converged"] is True
    # the IS-DOS is the unrelaxed cell's; the scan starts at CHGNet's cell (scale 1 of it), at the IS's k-mesh
    from esnet_tf.readers.gpaw import read_gpaw_dos

    is_dos = read_gpaw_dos(out / "calcs" / task_hash(uip_task) / "is.gpawdos.npz")
    assert is_dos.structure.volume == pytest.approx(al.volume, rel=1e-6)
    assert r["eos_points"][0]["scale"] == 1.0 and abs(start.volume / al.volume - r["uip_start"]["scale"] ** 3) < 1e-9
    gpaw_txt = (out / "calcs" / task_hash(uip_task) / "gpaw.txt").read_text(errors="replace")  # the last SCF's
    assert f"kpts=MonkhorstPack(size={kpoint_mesh(task)}" in gpaw_txt
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["relax_start"]["per_row"] == {"Al": "chgnet-0.3.0"}
    assert prov["relax_start"]["counts"] == {"chgnet-0.3.0": 1}
    # a CHGNet-start result never passes for the IS start's, unless a caller asks for either explicitly
    assert cached_outcome(task, out / "calcs") is None
    assert cached_outcome(uip_task, out / "calcs").status == "cached"
    either = cached_outcome(task, out / "calcs", also_starts=("chgnet-0.3.0",))
    assert either is not None and relax_start_of(either.result) == "chgnet-0.3.0"
    rc = main(base)  # the IS start's task list: another task, refused before any work
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Al" in err


def test_a_start_from_a_float32_potential_is_made_exactly_symmetric_in_the_is_setting():
    """CHGNet's hcp Be kept P6_3/mmc only to ~1e-7 (P-1 at symprec 1e-7) and GPAW's symmetry analysis failed on
    it; the start is projected onto the IS's space group, in the IS's setting, before DFT sees it."""
    import numpy as np
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from esnet_tf.dft.engine import _symmetrized_like

    ref = noncubic_structure("hcp", ["Be"])
    moved = ref.copy()
    moved.scale_lattice(ref.volume * 1.2)
    rng = np.random.default_rng(0)
    noisy = Structure(moved.lattice.matrix * (1 + 3e-7 * rng.standard_normal((3, 3))), moved.species,
                      moved.frac_coords + 3e-7 * rng.standard_normal((2, 3)))
    assert SpacegroupAnalyzer(noisy, symprec=1e-8).get_space_group_symbol() != "P6_3/mmc"
    fixed = _symmetrized_like(ref, noisy)
    assert SpacegroupAnalyzer(fixed, symprec=1e-10).get_space_group_symbol() == "P6_3/mmc"
    np.testing.assert_allclose(fixed.frac_coords, ref.frac_coords, atol=1e-12)
    assert fixed.volume == pytest.approx(noisy.volume, rel=1e-5)
    assert fixed.lattice.gamma == pytest.approx(120, abs=1e-10)
