"""Reliability under faults and bad input: outputs never partial, second writers refused, bad
numbers refused with one line, untrusted JSON never imports what it names.

Each test reproduces one probe class of the reliability issue (kill during a write, concurrent
writers, inputs that are finite but not IS-DOS, JSON naming modules, CLI numbers out of range).
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from esnet_tf.cli import main as cli_main
from esnet_tf.errors import DOSInputError, UserError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datasets" / "is_dos" / "demo"


def demo_examples(n: int):
    from esnet_tf.featurize import featurize
    from esnet_tf.labels import read_labels

    return [featurize(r.file, id=r.id) for r in read_labels(DEMO / "labels.csv")[:n]]


# ---------------------------------------------------------------- 1. outputs are never partial

def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    from esnet_tf import featurize as fz

    out = tmp_path / "features.npz"
    fz.save_examples(demo_examples(2), out)
    before = out.read_bytes()

    def crash(*args, **kwargs):
        args[0].write(b"PK\x03\x04 half an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fz.np, "savez_compressed", crash)
    with pytest.raises(OSError, match="No space"):
        fz.save_examples(demo_examples(3), out)
    assert out.read_bytes() == before  # the old, complete file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npz"]  # no temporary left behind


def test_sigkill_during_writes_never_leaves_a_truncated_npz(tmp_path):
    """A writer rewriting a large .npz is SIGKILLed at several instants; the file always loads."""
    out = tmp_path / "big.npz"
    script = textwrap.dedent(f"""
        import numpy as np, sys
        sys.path.insert(0, {str(ROOT)!r})
        from esnet_tf.atomic import atomic_path
        rng = np.random.default_rng(0)
        a = rng.random((400, 1500, 9), dtype=np.float32)
        while True:
            with atomic_path({str(out)!r}) as tmp:
                np.savez_compressed(tmp, dos_up=a, dos_down=a)
            print("written", flush=True)
    """)
    for delay in (0.5, 1.3, 2.2):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # the first complete file exists
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with np.load(out, allow_pickle=False) as d:
            assert d["dos_up"].shape == (400, 1500, 9)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["big.npz"]


def test_second_writer_of_the_same_output_is_refused(tmp_path):
    from esnet_tf.atomic import exclusive

    out = tmp_path / "f.npz"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from esnet_tf.atomic import exclusive
        with exclusive({str(out)!r}, "features file"):
            print("locked", flush=True)
            time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"f.npz: this features file is being written by pid {holder.pid}"):
            with exclusive(out, "features file"):
                pass
        gpaw = next(DEMO.glob("calcs/*/is.gpawdos.npz"))
        assert cli_main(["featurize", str(gpaw), "--out", str(out), "--quiet"]) == 2
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    with exclusive(out):  # released by the kernel when the holder died
        pass


def test_export_overwrite_with_a_broken_model_keeps_the_served_version(tmp_path):
    from esnet_tf.model import ESNetConfig, build_esnet

    model = build_esnet(ESNetConfig.small().replace(stem_filters=8, stage_widths=(8, 16), blocks_per_stage=1,
                                                    merge_filters=16, composition_units=8, head_units=(16,)))
    good = tmp_path / "good.keras"
    model.save(good)
    served = tmp_path / "served"
    assert cli_main(["export", "--model", str(good), "--out", str(served), "--name", "m", "--version", "1"]) == 0
    before = sorted(p.relative_to(served) for p in served.rglob("*"))
    broken = tmp_path / "broken.keras"
    broken.write_bytes(good.read_bytes()[:2000])  # truncated
    assert cli_main(["export", "--model", str(broken), "--out", str(served), "--name", "m", "--version", "1",
                     "--overwrite"]) != 0
    assert sorted(p.relative_to(served) for p in served.rglob("*")) == before  # nothing deleted, nothing left over
    import tensorflow as tf

    assert "serving_default" in tf.saved_model.load(str(served / "m" / "1")).signatures


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ""])
def test_export_name_stays_inside_out(tmp_path, name):
    from esnet_tf.export import check_model_name

    with pytest.raises(UserError, match="--name"):
        check_model_name(name)


# ---------------------------------------------------------------- 2. bad numbers are refused

def _mp_doc(fixtures_dir: Path) -> dict:
    return json.loads((fixtures_dir / "mp" / "Si_complete_dos.json").read_text())


def test_nan_fermi_level_is_refused(fixtures_dir, tmp_path):
    from esnet_tf.featurize import featurize

    doc = _mp_doc(fixtures_dir)
    doc["efermi"] = float("nan")
    path = tmp_path / "nan_efermi.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DOSInputError, match=r"nan_efermi.json: Fermi level is nan"):
        featurize(path)


def test_negative_dos_is_refused(tmp_path):
    from esnet_tf.featurize import featurize

    from esnet_tf.readers.gpaw import read_gpaw_dos, write_gpaw_dos

    dos = read_gpaw_dos(next(DEMO.glob("calcs/*/is.gpawdos.npz")))
    bad = write_gpaw_dos(tmp_path / "negative.gpawdos.npz", energies=dos.energies, efermi=dos.efermi,
                         pdos=(dos.pdos - 0.5 * np.abs(dos.pdos).max()).astype(np.float32),
                         structure=dos.structure.as_dict(), code=dos.code, settings_json="{}",
                         energy=0.0, doc_id="negative")
    with pytest.raises(DOSInputError, match="negative DOS"):
        featurize(bad)


def test_inputs_that_are_not_is_dos_are_refused_before_prediction():
    from esnet_tf.data import check_finite, stack_examples

    arrays = stack_examples(demo_examples(3))
    check_finite(arrays, "ok")
    comp = arrays["composition"].copy()
    comp[1] *= 2.0
    with pytest.raises(UserError, match=r"src: input 'composition' is not a set of atomic fractions .* for id "
                                         + arrays["id"][1]):
        check_finite({**arrays, "composition": comp}, "src")
    comp = arrays["composition"].copy()
    comp[0, 0] = -0.1
    comp[0, 1] += 0.1
    with pytest.raises(UserError, match="composition"):
        check_finite({**arrays, "composition": comp}, "src")
    dos = arrays["dos_down"].copy()
    dos[2, 10, 3] = -0.5
    with pytest.raises(UserError, match=r"'dos_down' holds negative DOS .* for id " + arrays["id"][2]):
        check_finite({**arrays, "dos_down": dos}, "src")


def test_cli_numbers_out_of_range_get_one_line(tmp_path, capsys):
    gpaw = str(next(DEMO.glob("calcs/*/is.gpawdos.npz")))
    model = tmp_path / "missing.keras"
    assert cli_main(["predict", str(model), gpaw, "--batch-size", "-5", "--out", str(tmp_path / "p.csv")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "batch-size" in err[0]
    assert not (tmp_path / "p.csv").exists()
    assert cli_main(["featurize", gpaw, "--out", str(tmp_path / "f.txt")]) == 2
    assert cli_main(["dft", "run", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0"]) == 2


def test_readme_dft_spec_without_elements_does_not_exit_0(tmp_path, capsys):
    pytest.importorskip("gpaw")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"enumerate": {"prototypes": ["rocksalt", "cscl"],
                                              "species": [["Na", "K"], ["Cl", "F"]]}}))  # README's example
    rc = cli_main(["dft", "run", str(spec), "--out", str(tmp_path / "out"), "--tiny", "--workers", "2"])
    out = capsys.readouterr().out
    assert rc == 1 and "no labelled example" in out and "elemental references" in out


# ---------------------------------------------------------------- 6. untrusted JSON

@pytest.fixture()
def probe_module(tmp_path, monkeypatch):
    """A module that records its import; a JSON input names it in @module."""
    marker = tmp_path / "imported.txt"
    (tmp_path / "esnet_probe_mod.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nclass Evil:\n    @classmethod\n"
        "    def from_dict(cls, d):\n        return cls()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("esnet_probe_mod", None)
    return marker


def test_mp_document_naming_a_module_is_refused_without_importing_it(fixtures_dir, tmp_path, probe_module):
    from esnet_tf.featurize import featurize

    doc = _mp_doc(fixtures_dir)
    doc["structure"]["sites"][0]["properties"] = {"x": {"@module": "esnet_probe_mod", "@class": "Evil"}}
    path = tmp_path / "evil_dos.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump(doc, fh)
    with pytest.raises(DOSInputError, match=r"evil_dos.json.gz: .*names module 'esnet_probe_mod'"):
        featurize(path)
    assert not probe_module.exists() and "esnet_probe_mod" not in sys.modules


def test_reference_entries_naming_a_module_are_refused(fixtures_dir, tmp_path, probe_module):
    from esnet_tf.screening import load_entries

    with gzip.open(fixtures_dir / "mp" / "Li-Fe-O_computed_structure_entries.json.gz", "rt") as fh:
        entries = json.load(fh)
    entries = entries["entries"] if isinstance(entries, dict) and "entries" in entries else entries
    entries = list(entries.values()) if isinstance(entries, dict) else entries
    entries[0].setdefault("data", {})["payload"] = {"@module": "esnet_probe_mod", "@class": "Evil"}
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(UserError, match="names module 'esnet_probe_mod'"):
        load_entries(path)
    assert not probe_module.exists() and "esnet_probe_mod" not in sys.modules
    assert os.environ.get("ESNET_PROBE") is None


# ---------------------------------------------------------------- 5. the DFT runner

def test_cached_result_with_a_truncated_dos_file_is_not_trusted(tmp_path):
    import shutil

    from esnet_tf.dft.runner import cache_problem

    src = next(p.parent for p in DEMO.glob("calcs/*/rs.gpawdos.npz"))
    work = tmp_path / src.name
    shutil.copytree(src, work)
    assert cache_problem(work) == ""
    dos = work / "rs.gpawdos.npz"
    dos.write_bytes(dos.read_bytes()[: dos.stat().st_size // 2])
    assert "rs.gpawdos.npz" in cache_problem(work)
    (work / "result.json").write_text('{"id": "x", "is_dos"')
    assert "result.json unreadable" in cache_problem(work)


def test_killed_dft_parent_leaves_no_worker_and_a_second_run_is_refused(tmp_path):
    pytest.importorskip("gpaw")
    spec = tmp_path / "spec.json"
    # several structures, so that the parent is still running (and holds the cache) when the second
    # run starts: one tiny Al cell alone can finish first on a fast, idle machine
    spec.write_text(json.dumps({"structures": [{"prototype": "fcc", "species": [el]}
                                               for el in ("Al", "Cu", "Ag", "Pd", "Pt", "Au")]}))
    out = tmp_path / "out"
    parent = subprocess.Popen([sys.executable, "-m", "esnet_tf.cli", "dft", "run", str(spec), "--out", str(out),
                               "--tiny", "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def workers() -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    env = (proc / "environ").read_bytes()
                except OSError:
                    continue
                if f"ESNET_DFT_PARENT={parent.pid}".encode() in env and int(proc.name) != parent.pid:
                    found.append(int(proc.name))
        return found

    deadline = time.time() + 60
    while not workers() and time.time() < deadline and parent.poll() is None:
        time.sleep(0.2)
    assert workers(), "the worker did not start"
    assert parent.poll() is None, "the first run finished before the second started: give it more structures"
    assert cli_main(["dft", "run", str(spec), "--out", str(out), "--tiny"]) == 2  # the cache is locked
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while workers() and time.time() < deadline:
        time.sleep(0.2)
    assert workers() == []


# ---------------------------------------------------------------- 3. duplicate ids

def test_same_relative_paths_get_distinct_ids_and_repeats_are_reported(fixtures_dir, tmp_path, capsys):
    import shutil

    from esnet_tf.featurize import featurize_paths, load_examples

    for run, name in (("a", "Al"), ("b", "LiF")):
        (tmp_path / run / "run1").mkdir(parents=True)
        shutil.copy(fixtures_dir / "vasp" / f"{name}.vasprun.xml.gz", tmp_path / run / "run1" / "vasprun.xml.gz")
    a, b = (str(tmp_path / r / "run1" / "vasprun.xml.gz") for r in ("a", "b"))
    examples, failures = featurize_paths([a, b], progress=False)
    assert sorted(e.id for e in examples) == ["a/run1/vasprun", "b/run1/vasprun"] and failures == []
    assert {e.id: e.formula for e in examples} == {"a/run1/vasprun": "Al", "b/run1/vasprun": "LiF"}
    examples, failures = featurize_paths([a, a], progress=False)  # the same file twice
    assert len(examples) == 1 and len(failures) == 1 and "given twice" in failures[0]
    doc = json.loads((fixtures_dir / "mp" / "Si_complete_dos.json").read_text())
    twice = tmp_path / "two_tasks.json"
    twice.write_text(json.dumps([{"task_id": "mp-149", "data": doc}, {"task_id": "mp-149", "data": doc}]))
    out = tmp_path / "f.npz"
    assert cli_main(["featurize", str(twice), "--out", str(out), "--quiet"]) == 1
    assert "duplicate example id 'mp-149'" in capsys.readouterr().err
    assert list(load_examples(out)["id"]) == ["mp-149"]


# ---------------------------------------------------------------- training runs

def _tiny_run(tmp_path: Path) -> tuple[list[str], Path]:
    from esnet_tf.model import ESNetConfig

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(ESNetConfig.small().replace(
        stem_filters=8, stage_widths=(8, 16), blocks_per_stage=1, merge_filters=16, composition_units=8,
        head_units=(16,), name="tiny").to_dict()))
    run_dir = tmp_path / "run"
    return ["train", "--dataset", str(ROOT / "datasets" / "is_dos" / "dummy_data"), "--config", str(cfg),
            "--batch-size", "2", "--split-fractions", "0.6,0.4,0.0", "--run-dir", str(run_dir),
            "--verbose", "0"], run_dir


def test_resume_with_another_config_is_one_line_and_best_keras_is_promoted_whole(tmp_path, capsys):
    argv, run_dir = _tiny_run(tmp_path)
    assert cli_main([*argv, "--epochs", "2"]) == 0
    assert (run_dir / "best.keras").is_file() and not (run_dir / ".best.staged.keras").exists()
    import zipfile

    assert zipfile.is_zipfile(run_dir / "best.keras")
    capsys.readouterr()
    assert cli_main(["train", "--dataset", argv[2], "--config", "small", "--run-dir", str(run_dir), "--resume"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "--config" in err[0] and "resume it without --config" in err[0]


def test_second_training_into_one_run_directory_is_refused(tmp_path):
    from esnet_tf.atomic import exclusive

    argv, run_dir = _tiny_run(tmp_path)
    with exclusive(run_dir, "run directory"):  # as a first `esnet train` holds it
        code = subprocess.run([sys.executable, "-m", "esnet_tf.cli", *argv, "--epochs", "1"],
                              capture_output=True, text=True)
    assert code.returncode == 2 and "run directory is being written by pid" in code.stderr
    assert not (run_dir / "config.json").exists()


def test_full_disk_gives_one_line_and_no_partial_file(tmp_path, capsys):
    """A 256 KiB tmpfs fills while the .npz is written (root in CI mounts it; skipped elsewhere)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and mount permission)")
    try:
        files = [str(p) for p in sorted(DEMO.glob("calcs/*/is.gpawdos.npz"))[:40]]
        assert cli_main(["featurize", *files, "--out", str(mnt / "f.npz"), "--quiet"]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and "No space left on device" in err[0]
        assert [p.name for p in mnt.iterdir() if not p.name.startswith(".")] == []  # nothing partial
        assert not [p for p in mnt.iterdir() if p.name.endswith(".npz")]
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_outputs_get_the_usual_permissions(tmp_path):
    from esnet_tf.atomic import atomic_dir, write_text

    mask = os.umask(0o022)
    try:
        write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("x")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_features_on_another_grid_with_the_same_length_are_refused(tmp_path, capsys):
    from esnet_tf.featurize import save_examples
    from esnet_tf.isdos import EnergyGrid
    from esnet_tf.model import ESNetConfig, build_esnet

    gpaw = next(DEMO.glob("calcs/*/is.gpawdos.npz"))
    from esnet_tf.featurize import featurize

    shifted = tmp_path / "shifted.npz"
    save_examples([featurize(gpaw, grid=EnergyGrid(-15.0, 15.0, 1500))], shifted)  # 1500 points, other window
    model = tmp_path / "m.keras"
    build_esnet(ESNetConfig.small().replace(stem_filters=8, stage_widths=(8, 16), blocks_per_stage=1,
                                            merge_filters=16, composition_units=8, head_units=(16,))).save(model)
    assert cli_main(["predict", str(model), str(shifted), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "shifted.npz: features on E - E_F [-15, 15] eV, 1500 points, but the model takes [-20, 10] eV" in err
    assert not (tmp_path / "p.csv").exists()
    ok = tmp_path / "ok.npz"
    save_examples([featurize(gpaw)], ok)
    assert cli_main(["predict", str(model), str(ok), "--out", str(tmp_path / "p.csv")]) == 0


def test_null_fermi_level_is_one_line(fixtures_dir, tmp_path, capsys):
    doc = _mp_doc(fixtures_dir)
    doc["efermi"] = None
    path = tmp_path / "null_efermi.json"
    path.write_text(json.dumps(doc))
    assert cli_main(["featurize", str(path), "--out", str(tmp_path / "f.npz"), "--quiet"]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "null_efermi.json: Fermi level is None, not a number" in err[0]
