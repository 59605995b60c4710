"""Reliability under faults and bad input: outputs never partial, second writers refused, bad
numbers refused with one line, untrusted JSON never imports what it names; hostile inputs (issue 36)
read within bounded memory, untrusted models refused.

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
    # the form of docs/dft.md's example (rocksalt and cscl of Na, K with Cl, F), cut to one structure
    spec.write_text(json.dumps({"enumerate": {"prototypes": ["rocksalt"], "species": [["Na"], ["Cl"]]}}))
    rc = cli_main(["dft", "run", str(spec), "--out", str(tmp_path / "out"), "--tiny", "--workers", "1"])
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


# ---------------------------------------------------------------- 9. hostile inputs (issue 36)
# Bounded reading: each payload is a few MB at most and inflates to 1 GiB or never ends. A child
# process reads them all under a 1.5 GiB address-space limit (RLIMIT_AS) with a 64 MiB per-file
# limit: every one must end in one UserError line, never a MemoryError.

GIB = 1 << 30
_BOUNDED_CHILD = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
    from esnet_tf.errors import UserError
    from esnet_tf.featurize import load_examples
    from esnet_tf.readers import read_dos
    for path in sys.argv[1:]:
        try:
            arrays = (load_examples if path.endswith(".features.npz") else read_dos)(path)
            print("OK", path, flush=True)
        except UserError as exc:
            print("ERR", " ".join(str(exc).split()), flush=True)
""")


def _gz_bomb(path: Path, prefix: bytes, unit: bytes, n_units: int, suffix: bytes = b"") -> Path:
    """A gzip file of concatenated members: `prefix`, `n_units` copies of one member of `unit`, `suffix`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = gzip.compress(unit, compresslevel=9, mtime=0)
    with open(path, "wb") as fh:
        fh.write(gzip.compress(prefix, mtime=0))
        fh.write(block * n_units)
        fh.write(gzip.compress(suffix, mtime=0))
    return path


def _npz_with_member(path: Path, name: str, shape: tuple, data: bytes = bytes(1 << 20)) -> Path:
    """Add a member whose .npy header declares `shape` float64 but holds only `data`."""
    import zipfile

    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf, zf.open(f"{name}.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": shape})
        fh.write(data)
    return path


def _hostile_payloads(root: Path) -> list[tuple[Path, str]]:
    """(payload, regex its one line must match) for every bounded-reading probe class."""
    from esnet_tf import featurize as fz

    row = b"<r>  -3.1341  0.0000  0.0000  0.0000  0.0000  0.0000  0.0000  0.0000  0.0000  0.0000 </r>\n"
    mib_rows = row * ((1 << 20) // len(row))
    head = b'<?xml version="1.0" encoding="ISO-8859-1"?>\n<modeling>\n<calculation>\n'
    cases = [
        (_gz_bomb(root / "partial" / "vasprun.xml.gz", head + b"<dos>\n<partial>\n<array>\n<set>\n", mib_rows, 1024),
         r"parsed content .* passes 16 MiB, a quarter of the 64 MiB per-file limit"),
        (_gz_bomb(root / "projected" / "vasprun.xml.gz", head + b"<projected>\n<array>\n<set>\n", mib_rows, 1024),
         r"inflates past 64 MiB, the per-file limit"),
        (_gz_bomb(root / "doscar_line" / "DOSCAR.gz", b"", b"0.1 " * (1 << 18), 1024),
         r"line 1 is longer than 4096 bytes"),
        (_gz_bomb(root / "mp.json.gz", b'{"energies": [', b"0," * (1 << 19), 1024, b"0]}"),
         r"inflates past 8 MiB, an eighth of the 64 MiB per-file limit"),
        (_gz_bomb(root / "dense.json.gz", b"[", b"[]," * (1 << 20), 2, b"[]]"),  # 6 MiB, 20x that decoded
         r"would decode to about .* of Python objects, past 32 MiB, half of the 64 MiB per-file limit"),
    ]
    zero = root / "devzero"
    zero.mkdir()
    os.symlink("/dev/zero", zero / "DOSCAR")
    cases.append((zero, r"DOSCAR: is a character device \(the link resolves to /dev/zero\), not a regular file"))
    fifo = root / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "DOSCAR")
    cases.append((fifo / "DOSCAR", r"is a FIFO \(named pipe\), not a regular file"))
    plain = root / "plain" / "vasprun.xml"
    plain.parent.mkdir()
    with open(plain, "wb") as fh:
        fh.truncate(100 << 20)  # sparse: 100 MiB that take no disk
    cases.append((plain, r"is 100 MiB, past 64 MiB, the per-file limit"))
    features = fz.save_examples(demo_examples(1), root / "extra.features.npz")
    cases.append((_npz_with_member(features, "junk", (1 << 37,)), r"^OK"))  # a member nobody reads: never inflated
    liar = fz.save_examples(demo_examples(1), root / "liar.features.npz")
    import zipfile

    with zipfile.ZipFile(liar) as src, zipfile.ZipFile(root / "lying.features.npz", "w") as dst:
        for info in src.infolist():
            if info.filename != "dos_up.npy":
                dst.writestr(info, src.read(info))
    cases.append((_npz_with_member(root / "lying.features.npz", "dos_up", (1 << 37, 1500, 9)),
                  r"member 'dos_up' \(1 MiB uncompressed\)|member 'dos_up' declares"))
    gpaw = root / "extra.gpawdos.npz"
    gpaw.write_bytes(next(DEMO.glob("calcs/*/is.gpawdos.npz")).read_bytes())
    cases.append((_npz_with_member(gpaw, "junk", (1 << 37,)), r"^OK"))
    return cases


def test_hostile_inputs_are_read_within_bounded_memory_and_refused_in_one_line(tmp_path):
    cases = _hostile_payloads(tmp_path)
    assert max(p.stat().st_size for p, _ in cases if p.is_file() and p.suffix == ".gz") < 8 << 20  # a few MB
    env = dict(os.environ, ESNET_MAX_INFLATED_BYTES="64MiB", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    child = _BOUNDED_CHILD.format(cap=3 * GIB // 2)
    proc = subprocess.run([sys.executable, "-c", child, *(str(p) for p, _ in cases)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]  # no MemoryError, no traceback
    lines = proc.stdout.splitlines()
    assert len(lines) == len(cases)
    for line, (path, expected) in zip(lines, cases):
        import re

        assert re.search(expected, line), (path, line)
        assert "truncated" not in line  # a bomb is not reported as a cut file
        if line.startswith("ERR"):
            assert str(path) in line
            if "limit" in line:
                assert "ESNET_MAX_INFLATED_BYTES=128MiB" in line  # how to raise it


def test_the_per_file_limit_is_documented_and_overridable(monkeypatch):
    from esnet_tf.readers import limits

    monkeypatch.delenv(limits.LIMIT_ENV, raising=False)
    assert limits.max_inflated_bytes() == 2 * GIB == limits.DEFAULT_MAX_INFLATED_BYTES
    assert limits.LIMIT_ENV in limits.__doc__ and "2 GiB" in limits.__doc__
    for value, expected in (("4GiB", 4 * GIB), ("500MB", 500_000_000), ("1048576", 1 << 20)):
        monkeypatch.setenv(limits.LIMIT_ENV, value)
        assert limits.max_inflated_bytes() == expected
    monkeypatch.setenv(limits.LIMIT_ENV, "lots")
    with pytest.raises(UserError, match="ESNET_MAX_INFLATED_BYTES='lots': give a positive number of bytes"):
        limits.max_inflated_bytes()


def test_bounded_readers_give_the_same_numbers(fixtures_dir):
    """The DOSCAR reader now sums while streaming: the same arrays as the CompleteDos path."""
    from esnet_tf.readers.common import from_complete_dos
    from esnet_tf.readers.doscar import read_doscar

    run = fixtures_dir / "doscar" / "hea_spin_polarized"
    dos = read_doscar(run)
    from pymatgen.electronic_structure.core import Orbital, Spin
    from pymatgen.electronic_structure.dos import CompleteDos, Dos

    lines = gzip.decompress((run / "DOSCAR.gz").read_bytes()).decode().splitlines()
    natoms, nedos = int(lines[0].split()[0]), int(float(lines[5].split()[2]))
    total = np.array([[float(x) for x in ln.split()] for ln in lines[6:6 + nedos]])
    pdos = {}
    for a in range(natoms):
        start = 6 + nedos + 1 + a * (nedos + 1)
        block = np.array([[float(x) for x in ln.split()] for ln in lines[start:start + nedos]])
        pdos[dos.structure[a]] = {Orbital(o): {Spin.up: block[:, 1 + 2 * o], Spin.down: block[:, 2 + 2 * o]}
                                  for o in range((block.shape[1] - 1) // 2)}
    tdos = Dos(dos.efermi, total[:, 0], {Spin.up: total[:, 1], Spin.down: total[:, 2]})
    ref = from_complete_dos(CompleteDos(dos.structure, tdos, pdos), run / "DOSCAR.gz", code="VASP (DOSCAR)")
    assert np.array_equal(dos.pdos, ref.pdos) and np.array_equal(dos.energies, ref.energies)


# Trust boundary for models

def _evil_saved_model(path: Path, secret: Path, stolen: Path) -> Path:
    """A SavedModel that answers like an ESNet and, when served, copies `secret` to `stolen`."""
    import tensorflow as tf

    class Evil(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1500, 9], tf.float32, name="dos_up"),
                                      tf.TensorSpec([None, 1500, 9], tf.float32, name="dos_down"),
                                      tf.TensorSpec([None, 118], tf.float32, name="composition")])
        def serve(self, dos_up, dos_down, composition):
            tf.io.write_file(str(stolen), tf.io.read_file(str(secret)))
            return {"formation_energy_per_atom": tf.reduce_sum(composition, axis=1, keepdims=True) - 2.0}

    module = Evil()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def test_untrusted_saved_model_is_refused_without_the_flag_and_runs_with_it(tmp_path, capsys):
    from esnet_tf import trust

    secret, stolen = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    secret.write_text("private")
    evil = _evil_saved_model(tmp_path / "evil" / "1", secret, stolen)
    gpaw = str(next(DEMO.glob("calcs/*/is.gpawdos.npz")))
    out = tmp_path / "p.csv"
    capsys.readouterr()
    assert cli_main(["predict", str(evil), gpaw, "--out", str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "refusing to load this SavedModel" in err[0] and "--trust-model-code" in err[0]
    assert "equivalent to running untrusted code" in err[0]
    assert not stolen.exists() and not out.exists()  # nothing of the model ran
    trust.write_manifest(evil)  # a forged manifest: the graph still reads and writes files
    with pytest.raises(trust.UntrustedModelError, match="ops ReadFile, WriteFile"):
        trust.check_saved_model(evil)
    assert cli_main(["predict", str(evil), gpaw, "--out", str(out), "--trust-model-code"]) == 0
    assert stolen.read_text() == "private"  # the flag runs the model's code, as its help says
    assert "untrusted code" in trust.TF_WARNING


def test_shipped_saved_model_loads_without_the_flag():
    from esnet_tf import trust
    from esnet_tf.pretrained import list_models, load_model
    from esnet_tf.resources import saved_models_dir

    shipped = list_models()[0]
    version = next(p for p in sorted(shipped.path.iterdir()) if p.name.isdigit())
    assert trust.is_shipped(version) and trust.untrusted_reason(version) is None
    assert trust.graph_problems(version) == []  # and its graph passes the export check as well
    model = load_model(version)
    assert model.predictor.kind == "saved_model"
    assert str(version.resolve()).startswith(str(saved_models_dir().resolve()))


def test_exported_saved_model_is_trusted_until_changed(tmp_path, capsys):
    from esnet_tf import trust
    from esnet_tf.model import ESNetConfig, build_esnet

    model = build_esnet(ESNetConfig.small().replace(stem_filters=8, stage_widths=(8, 16), blocks_per_stage=1,
                                                    merge_filters=16, composition_units=8, head_units=(16,)))
    model.save(tmp_path / "m.keras")
    assert cli_main(["export", "--model", str(tmp_path / "m.keras"), "--out", str(tmp_path / "served"),
                     "--name", "m", "--version", "1", "--n-warmup", "1"]) == 0
    version = tmp_path / "served" / "m" / "1"
    assert (version / trust.MANIFEST_FILE).is_file() and trust.untrusted_reason(version) is None
    gpaw = str(next(DEMO.glob("calcs/*/is.gpawdos.npz")))
    assert cli_main(["predict", str(version), gpaw, "--out", str(tmp_path / "p.csv")]) == 0
    (version / "fingerprint.pb").write_bytes(b"changed")
    capsys.readouterr()
    assert cli_main(["predict", str(version), gpaw, "--out", str(tmp_path / "p2.csv")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "files changed since export: fingerprint.pb" in err[0]


def test_malicious_or_broken_keras_files_give_one_line(tmp_path, capsys):
    import zipfile

    import keras

    lam = keras.Sequential([keras.Input((118,)), keras.layers.Lambda(lambda x: x * 2.0)])
    lam.save(tmp_path / "lambda.keras")
    good = tmp_path / "lambda.keras"
    config = zipfile.ZipFile(good).read("config.json")
    variants = {"lambda.keras": None,
                "os_system.keras": json.dumps({"module": "os", "class_name": "system", "config": {"command": "id"},
                                               "registered_name": "os>system"}).encode(),
                "not_json.keras": b"{not json", "list.keras": b"[1, 2]",
                "deep.keras": b'{"a":' * 5000 + b"1" + b"}" * 5000}
    for name, cfg in variants.items():
        if cfg is None:
            continue
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / name, "w") as dst:
            for info in src.infolist():
                dst.writestr(info, cfg if info.filename == "config.json" else src.read(info))
    assert config
    gpaw = str(next(DEMO.glob("calcs/*/is.gpawdos.npz")))
    for name in variants:
        capsys.readouterr()
        assert cli_main(["predict", str(tmp_path / name), gpaw, "--out", str(tmp_path / "p.csv")]) == 2, name
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "WARNING" not in ln]
        assert len(err) == 1 and f"{name}: cannot load the .keras model" in err[0], (name, err)
    assert not (tmp_path / "p.csv").exists()


# One line, right target

def test_deep_references_json_is_one_line(tmp_path, capsys):
    refs = tmp_path / "refs.json"
    refs.write_text("[" * 100_000 + "]" * 100_000)
    preds = tmp_path / "preds.csv"
    preds.write_text("id,formula,predicted_formation_energy_per_atom\na,Fe2O3,-1.0\n")
    assert cli_main(["screen", "--predictions", str(preds), "--references", str(refs),
                     "--out", str(tmp_path / "o")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and f"{refs}: refusing to decode: the JSON nests deeper than 100 levels" in err[0]
    from esnet_tf.safe_json import UnsafeJSONError, check_modules

    nested: list = []
    for _ in range(150):
        nested = [nested]
    with pytest.raises(UnsafeJSONError, match="nests deeper than 100"):
        check_modules(nested, "doc.json")


def test_negative_numbers_in_scientific_notation_are_values(tmp_path):
    from esnet_tf.cli import join_negative_numbers

    preds = tmp_path / "preds.csv"
    preds.write_text("id,formula,predicted_formation_energy_per_atom\na,Fe2O3,-1.0\n")
    assert cli_main(["screen", "--predictions", str(preds), "--mode", "formation-energy", "--threshold", "-1e-3",
                     "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["threshold_eV_per_atom"] == -1e-3
    assert join_negative_numbers(["x", "--a", "-2.5E+1", "--b", "-1", "--c", "-inf", "--", "--d", "-1e3"]) == \
        ["x", "--a=-2.5E+1", "--b", "-1", "--c=-inf", "--", "--d", "-1e3"]


def test_out_errors_name_the_users_path_not_the_temporary(tmp_path, capsys):
    gpaw = str(next(DEMO.glob("calcs/*/is.gpawdos.npz")))
    out = tmp_path / "x.npz"
    out.mkdir()  # --out names a directory
    assert cli_main(["featurize", gpaw, "--out", str(out), "--quiet"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"esnet featurize: error: {out}: Is a directory"), err
    assert ".tmp" not in err[0] and "name a file" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["x.npz"]


# ---------------------------------------------------------------- 10. no data loss, no silent wrong answers (issue 36)

_P = "predicted_formation_energy_per_atom"
# (id, formula, E_f eV/atom, IS s, relax s): 3 elements (the references) and 7 candidates
_POOL = [("Al_fcc", "Al", 0.0, 1.0, 3.0), ("Ni_fcc", "Ni", 0.0, 1.0, 4.0), ("Ti_bcc", "Ti", 0.0, 1.0, 4.0),
         ("AlNi_cscl", "AlNi", -0.62, 2.0, 11.0), ("AlNi_rocksalt", "AlNi", -0.20, 2.5, 9.0),
         ("AlNi3_l12", "AlNi3", -0.45, 3.0, 15.0), ("AlTi_cscl", "AlTi", -0.35, 2.0, 10.0),
         ("AlTi_rocksalt", "AlTi", 0.10, 2.0, 12.0), ("NiTi_cscl", "NiTi", -0.33, 2.0, 10.5),
         ("NiTi_rocksalt", "NiTi", 0.05, 2.0, 9.5)]
_CANDIDATES = [r for r in _POOL if r[1] not in ("Al", "Ni", "Ti")]


def _csv(path: Path, header: list[str], rows: list) -> Path:
    import csv

    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _pool_files(tmp_path: Path) -> tuple[Path, Path]:
    labels = _csv(tmp_path / "labels.csv", ["id", "formula", "formation_energy_per_atom", "is_wall_time_s",
                                             "relax_wall_time_s"], _POOL)
    preds = _csv(tmp_path / "preds.csv", ["id", _P, _P + "_std"],
                 [(r[0], r[2] + 0.05 * (-1) ** k, 0.1) for k, r in enumerate(_CANDIDATES)])
    return labels, preds


def _one_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith("pool: ")]
    assert len(err) == 1, err
    return err[0]


def test_campaign_overwrite_replaces_only_its_own_files_once_the_new_campaign_is_complete(tmp_path, capsys):
    from esnet_tf.campaign import CampaignConfig, pool_from_labels
    from esnet_tf.campaign.engine import run_strategies

    labels, preds = _pool_files(tmp_path)
    out = tmp_path / "camp"
    argv = ["campaign", "replay", "--labels", str(labels), "--predictions", str(preds), "--strategy", "greedy",
            "--batch-size", "2", "--out", str(out)]
    assert cli_main(argv + ["--max-rounds", "1"]) == 0
    mine = {out / "greedy" / "rounds" / "notes.txt": "my notes", out / "greedy" / "mine.txt": "mine"}
    for path, text in mine.items():
        path.write_text(text)
    old = {p: p.read_bytes() for p in (out / "greedy").rglob("*.json")}
    # a new campaign that cannot start (a negative std) is refused before anything is replaced
    bad = _csv(tmp_path / "neg.csv", ["id", _P, _P + "_std"], [(r[0], r[2], -0.1) for r in _CANDIDATES])
    capsys.readouterr()
    assert cli_main(argv[:5] + [str(bad)] + argv[6:] + ["--overwrite"]) == 2
    assert "is negative" in _one_line(capsys)
    assert {p: p.read_bytes() for p in old} == old
    # one that fails in a round (the relaxer dies) leaves the old campaign as it was
    pool = pool_from_labels([labels], predictions={"esnet": preds})

    def dies(pool, indices):
        raise RuntimeError("the cluster went down")

    with pytest.raises(RuntimeError, match="cluster"):
        run_strategies(pool, CampaignConfig(batch_size=2), ["greedy"], out, relaxer=dies, overwrite=True)
    assert {p: p.read_bytes() for p in old} == old
    # a complete one replaces the old rounds; the user's files stay, no staging folder is left
    assert cli_main(argv + ["--overwrite"]) == 0
    assert all(path.read_text() == text for path, text in mine.items())
    result = json.loads((out / "greedy" / "result.json").read_text())
    assert result["stop"] == "exhausted" and result["n_relaxed"] == len(_CANDIDATES)
    rounds = sorted(p.name for p in (out / "greedy" / "rounds").glob("round_*.json"))
    assert len(rounds) == result["n_rounds"] + 1 == 5
    assert not [p for p in out.iterdir() if p.name.endswith(".overwrite")]


def test_campaign_refuses_or_reports_every_unusable_prediction(tmp_path, capsys):
    labels, preds = _pool_files(tmp_path)
    base = ["campaign", "replay", "--labels", str(labels), "--batch-size", "3"]
    # lcb without a std would run as greedy under lcb's name: refused, naming the file and the fix
    nostd = _csv(tmp_path / "nostd.csv", ["id", _P], [(r[0], r[2]) for r in _CANDIDATES])
    capsys.readouterr()
    assert cli_main(base + ["--predictions", str(nostd), "--strategy", "lcb", "--out", str(tmp_path / "a")]) == 2
    line = _one_line(capsys)
    assert str(nostd) in line and "no std" in line and "--strategy greedy" in line
    # a negative std and a cell that is not a number are refused at their line
    for name, cell, expected in (("neg", ("0.1", "-0.2"), "is negative"), ("text", ("abc", "0.1"), "not a number")):
        rows = [(r[0], r[2], 0.1) for r in _CANDIDATES]
        rows[2] = (rows[2][0], *cell)
        path = _csv(tmp_path / f"{name}.csv", ["id", _P, _P + "_std"], rows)
        assert cli_main(base + ["--predictions", str(path), "--strategy", "lcb", "--out", str(tmp_path / name)]) == 2
        line = _one_line(capsys)
        assert f"{path}:4:" in line and expected in line
    # a NaN prediction, a candidate without a row and an id the pool lacks: counted, said, recorded
    rows = [(r[0], r[2], 0.1) for r in _CANDIDATES[:-1]] + [("ghost", -1.0, 0.1)]
    rows[0] = (rows[0][0], "nan", 0.1)
    odd = _csv(tmp_path / "odd.csv", ["id", _P, _P + "_std"], rows)
    assert cli_main(base + ["--predictions", str(odd), "--strategy", "lcb", "--out", str(tmp_path / "odd")]) == 0
    err = capsys.readouterr().err
    assert "1 of 7 candidate(s) have no row (e.g. ['NiTi_rocksalt'])" in err
    assert "1 candidate(s) have an empty or NaN prediction (e.g. ['AlNi_cscl'])" in err
    assert "1 row(s) name ids that are not candidates of the pool (e.g. ['ghost'])" in err
    checks = json.loads((tmp_path / "odd" / "lcb" / "result.json").read_text())["prediction_checks"]
    assert (checks["n_missing_id"], checks["n_nan_prediction"], checks["n_unknown_id"]) == (1, 1, 1)
    order = [c["id"] for k in range(1, 4) for c in
             json.loads((tmp_path / "odd" / "lcb" / "rounds" / f"round_{k:04d}.json").read_text())["chosen"]]
    assert set(order[-2:]) == {"AlNi_cscl", "NiTi_rocksalt"}  # no prediction: ranked last, as predicted unstable


def test_formulas_with_a_zero_count_are_refused(tmp_path, capsys):
    from esnet_tf.screening.references import parse_formula

    for formula in ("Fe0O", "FeO0", "Fe0.0O2", "Fe(O0)2"):
        with pytest.raises(ValueError, match="zero count"):
            parse_formula(formula)  # pymatgen reads Fe0O as O
    assert parse_formula("Fe2O3").reduced_formula == "Fe2O3"
    labels, preds = _pool_files(tmp_path)
    with labels.open("a") as fh:
        fh.write("FeO_bad,Fe0O,-1.0,1.0,5.0\nFe_bcc,Fe,0.0,1.0,3.0\n")
    capsys.readouterr()
    assert cli_main(["campaign", "replay", "--labels", str(labels), "--predictions", str(preds), "--strategy",
                     "greedy", "--out", str(tmp_path / "c")]) == 2
    line = _one_line(capsys)
    assert f"{labels}:12: id 'FeO_bad': bad formula 'Fe0O'" in line and "zero count" in line
    screened = _csv(tmp_path / "s.csv", ["id", "formula", _P], [("FeO_bad", "Fe0O", -1.0), ("AlNi_x", "AlNi", -0.6)])
    assert cli_main(["screen", "--predictions", str(screened), "--references", str(labels),
                     "--out", str(tmp_path / "s")]) == 2  # as a reference too
    assert f"{labels}:12: id 'FeO_bad': bad formula 'Fe0O'" in _one_line(capsys)
    clean = tmp_path / "clean"
    clean.mkdir()
    refs, _ = _pool_files(clean)
    assert cli_main(["screen", "--predictions", str(screened), "--references", str(refs), "--strict",
                     "--out", str(tmp_path / "s")]) == 2
    line = _one_line(capsys)
    assert "'FeO_bad': bad_formula (formula 'Fe0O': Fe with a zero count" in line


def test_conflicting_reference_energies_across_files_are_refused_naming_both(tmp_path, capsys):
    labels, _ = _pool_files(tmp_path)
    header = ["id", "formula", "formation_energy_per_atom"]
    a = _csv(tmp_path / "a.csv", header, [("AlNi_ref", "AlNi", -0.62)])
    b = _csv(tmp_path / "b.csv", header, [("AlNi_ref", "AlNi", -0.30)])
    same = _csv(tmp_path / "same.csv", header, [("AlNi_ref", "AlNi", -0.62)])
    preds = _csv(tmp_path / "p.csv", ["id", "formula", _P], [("AlNi3_x", "AlNi3", -0.5)])
    argv = ["screen", "--predictions", str(preds), "--references", str(labels)]
    capsys.readouterr()
    assert cli_main(argv + ["--references", str(a), "--references", str(b), "--out", str(tmp_path / "o")]) == 2
    line = _one_line(capsys)
    assert "'AlNi_ref'" in line and str(a) in line and str(b) in line and "-0.62" in line and "-0.3" in line
    assert cli_main(argv + ["--references", str(a), "--references", str(same), "--out", str(tmp_path / "o")]) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["references"]["n_entries"] == 1 + len(_POOL) + 3  # AlNi_ref once, the labels' rows, 3 implied zeros


def test_featurize_never_leaves_a_walked_directory_through_a_symlink_unasked(tmp_path, capsys):
    import shutil

    calcs = ROOT / "datasets" / "is_dos" / "dummy_data" / "calcs"
    root, outside, other = tmp_path / "root", tmp_path / "outside", tmp_path / "other"
    for d in (root / "a", outside, other):
        d.mkdir(parents=True)
    shutil.copy(calcs / "Mg_fcc.gpawdos.npz", root / "a")
    shutil.copy(calcs / "Al_fcc.gpawdos.npz", outside)
    shutil.copy(calcs / "Si_diamond.gpawdos.npz", other)
    os.symlink(outside, root / "elsewhere")  # a directory link leading out of the root
    os.symlink(root / "a", root / "again")  # one leading back inside: read once, at its real path
    os.symlink(other / "Si_diamond.gpawdos.npz", root / "a" / "Si_link.gpawdos.npz")  # a file link leading out
    capsys.readouterr()

    def ids(path: Path) -> list[str]:
        with np.load(path, allow_pickle=False) as z:
            return sorted(z["id"].tolist())

    assert cli_main(["featurize", str(root), "--out", str(tmp_path / "f.npz"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert ids(tmp_path / "f.npz") == ["a/Mg_fcc"]
    assert f"{root / 'elsewhere'}: symbolic link to a directory skipped: it leads outside {root}" in err
    assert f"{root / 'again'}: symbolic link to a directory skipped: its target lies inside" in err
    assert f"{root / 'a' / 'Si_link.gpawdos.npz'}: symbolic link skipped: it leads outside" in err
    assert cli_main(["featurize", str(root), "--follow-symlinks", "--out", str(tmp_path / "g.npz"), "--quiet"]) == 0
    assert ids(tmp_path / "g.npz") == ["a/Mg_fcc", "a/Si_link", "elsewhere/Al_fcc"]
    # a link given explicitly is the user's choice: followed
    assert cli_main(["featurize", str(root / "elsewhere"), "--out", str(tmp_path / "h.npz"), "--quiet"]) == 0
    assert ids(tmp_path / "h.npz") == ["Al_fcc"]


def test_verbs_refuse_an_existing_output_and_overwrite_only_their_own_files(tmp_path, capsys):
    labels, _ = _pool_files(tmp_path)
    preds = _csv(tmp_path / "p.csv", ["id", "formula", _P, "formation_energy_per_atom"],
                 [("AlNi3_x", "AlNi3", -0.5, -0.45), ("NiTi_x", "NiTi", -0.1, -0.3)])
    out = tmp_path / "scr"
    argv = ["screen", "--predictions", str(preds), "--references", str(labels), "--out", str(out)]
    assert cli_main(argv) == 0
    (out / "notes.txt").write_text("mine")
    assert (out / "recall_vs_cost.png").exists()
    capsys.readouterr()
    assert cli_main(argv) == 2
    line = _one_line(capsys)
    assert f"{out / 'candidates.csv'}: exists" in line and "--overwrite" in line
    nocost = _csv(tmp_path / "q.csv", ["id", "formula", _P], [("AlNi3_x", "AlNi3", -0.5)])
    assert cli_main(["screen", "--predictions", str(nocost), "--references", str(labels), "--out", str(out),
                     "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"  # not ours: kept
    assert not (out / "recall_vs_cost.png").exists()  # ours, from the earlier run, not written now: removed
    assert len((out / "candidates.csv").read_text().splitlines()) == 2
    gpaw = str(next(DEMO.glob("calcs/*/is.gpawdos.npz")))
    f = tmp_path / "f.npz"
    assert cli_main(["featurize", gpaw, "--out", str(f), "--quiet"]) == 0
    before = f.read_bytes()
    capsys.readouterr()
    assert cli_main(["featurize", gpaw, "--out", str(f), "--quiet"]) == 2
    assert f"{f}: exists" in _one_line(capsys) and f.read_bytes() == before
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "metrics.json").write_text("{}")
    assert cli_main(["evaluate", "--model", str(tmp_path / "none.keras"), "--dataset", "x", "--out", str(ev)]) == 2
    assert f"{ev / 'metrics.json'}: exists" in _one_line(capsys)  # checked before the model is even looked for


def test_every_verb_that_loads_a_user_model_has_the_trust_flag(tmp_path, capsys):
    from esnet_tf.featurize import save_examples

    secret, stolen = tmp_path / "secret.txt", tmp_path / "stolen.txt"
    secret.write_text("private")
    evil = _evil_saved_model(tmp_path / "evil" / "1", secret, stolen)
    examples = demo_examples(3)
    npz = save_examples(examples, tmp_path / "f.npz")
    labels = _csv(tmp_path / "l.csv", ["id", "formation_energy_per_atom"], [(e.id, -0.1) for e in examples])
    argv = ["evaluate", "--model", str(evil), "--dataset", str(npz), "--labels", str(labels), "--split", "all"]
    capsys.readouterr()
    assert cli_main(argv + ["--out", str(tmp_path / "e1")]) == 2
    line = _one_line(capsys)
    assert "refusing to load this SavedModel" in line and "--trust-model-code" in line and not stolen.exists()
    assert cli_main(argv + ["--out", str(tmp_path / "e2"), "--trust-model-code"]) == 0
    assert stolen.read_text() == "private"  # the flag runs the model's code, as its help says
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["n"] == 3
    stolen.unlink()
    # a live campaign loads its model before any DFT: refused at once, nothing computed
    spec = tmp_path / "pool.json"
    spec.write_text(json.dumps({"structures": [{"prototype": "fcc", "species": ["Cu"]},
                                               {"prototype": "cscl", "species": ["Cu", "Al"]}]}))
    out = tmp_path / "live"
    assert cli_main(["campaign", "live", str(spec), "--model", str(evil), "--tiny", "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert "refusing to load this SavedModel" in line and "--trust-model-code" in line
    assert not (out / "calcs").exists() and not stolen.exists()
    from esnet_tf.cli import build_parser

    live_argv = ["campaign", "live", str(spec), "--model", str(evil), "--out", str(out), "--trust-model-code"]
    ns = build_parser(live_argv).parse_args(live_argv)
    assert ns.trust_model_code is True


_TABLE_CHILD = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
    from esnet_tf.errors import UserError
    from esnet_tf.labels import read_labels
    from esnet_tf.references import load_references
    from esnet_tf.screening.io import load_entries, read_csv_rows
    readers = {{"labels": lambda p: read_labels(p, path_column=None, require_energy=False), "rows": read_csv_rows,
               "refs": load_references, "entries": load_entries}}
    for arg in sys.argv[1:]:
        kind, path = arg.split("=", 1)
        try:
            readers[kind](path)
            print("OK", path, flush=True)
        except (UserError, FileNotFoundError) as exc:
            print("ERR", " ".join(str(exc).split()), flush=True)
""")


def test_tables_and_references_are_read_within_bounded_memory(tmp_path):
    unit = b"x" * (1 << 20)
    cases = [
        ("labels", _gz_bomb(tmp_path / "labels.csv.gz", b"id,formula\na,Fe2O3\nb,", unit, 1024)),
        ("rows", _gz_bomb(tmp_path / "preds.csv.gz", b"id,predicted_formation_energy_per_atom\na,", unit, 1024)),
        ("refs", _gz_bomb(tmp_path / "refs.csv", b"element,energy_per_atom\nAl,-3.7\n#", unit, 1024)),  # no .gz
        ("entries", _gz_bomb(tmp_path / "entries.json.gz", b"[", b"0," * (1 << 19), 1024, b"0]")),
    ]
    zero = tmp_path / "zero.csv"
    os.symlink("/dev/zero", zero)
    cases.append(("labels", zero))
    env = dict(os.environ, ESNET_MAX_INFLATED_BYTES="64MiB", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _TABLE_CHILD.format(cap=3 * GIB // 2),
                           *(f"{k}={p}" for k, p in cases)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]  # no MemoryError, no traceback
    lines = proc.stdout.splitlines()
    assert len(lines) == len(cases), proc.stdout
    for line, (_, path) in zip(lines[:4], cases):
        assert line.startswith(f"ERR {path}: inflates past 8 MiB, an eighth of the 64 MiB per-file limit"), line
        assert "ESNET_MAX_INFLATED_BYTES=128MiB" in line
    assert "no labels file" in lines[4] or "not a regular file" in lines[4], lines[4]


# ---------------------------------------------------------------- 11. --overwrite of the outputs that resume

def _files(root: Path, names) -> dict[str, bytes]:
    return {n: (root / n).read_bytes() for n in names if (root / n).is_file()}


def test_dft_run_resumes_its_own_task_list_and_refuses_another_without_overwrite(tmp_path, capsys):
    """`esnet dft run --out`: the same (or a larger) task list resumes; another one is refused before any
    work, naming a task it lacks; --overwrite replaces the four files, keeps the calcs/ cache and a
    user's file. No GPAW run: the tasks' results are the demo's cached ones (Cu, Al fcc, EOS)."""
    pytest.importorskip("gpaw", reason="GPAW (extra `dft`) is not installed")
    import csv
    import shutil

    from esnet_tf.cli.dft import RUN_FILES
    from esnet_tf.dft.settings import DFTSettings
    from esnet_tf.dft.structures import read_structures
    from esnet_tf.dft.tasks import Task, task_hash

    both, cu = tmp_path / "both.json", tmp_path / "cu.json"
    both.write_text(json.dumps({"structures": [{"prototype": "fcc", "species": [el]} for el in ("Cu", "Al")]}))
    cu.write_text(json.dumps({"structures": [{"prototype": "fcc", "species": ["Cu"]}]}))
    out = tmp_path / "calcs_out"
    keys = {}
    for i, s, proto in read_structures(both):
        keys[i] = task_hash(Task(i, s, DFTSettings(), relax="eos", prototype=proto))
        shutil.copytree(DEMO / "calcs" / keys[i], out / "calcs" / keys[i])

    def ids():
        with open(out / "labels.csv", newline="") as fh:
            return [r["id"] for r in csv.DictReader(fh)]

    argv = ["dft", "run", str(both), "--out", str(out), "--relax", "eos", "--workers", "1"]
    assert cli_main(argv) == 0 and ids() == ["Al_fcc", "Cu_fcc"]
    (out / "notes.txt").write_text("mine")
    assert cli_main(argv) == 0 and ids() == ["Al_fcc", "Cu_fcc"]  # the same task list resumes (all cached)
    before = _files(out, RUN_FILES)
    assert len(before) == 4
    capsys.readouterr()
    assert cli_main(["dft", "run", str(cu), "--out", str(out), "--relax", "eos"]) == 2
    line = _one_line(capsys)
    assert f"{out}: holds the results of another task list (1 of its 2 task(s)" in line
    assert "'Al_fcc'" in line and "--overwrite" in line and _files(out, RUN_FILES) == before
    assert cli_main(argv + ["--ecut", "450"]) == 2  # the same ids with other settings: other tasks
    assert "with another input or settings" in _one_line(capsys) and _files(out, RUN_FILES) == before
    (out / "outcomes.json").unlink()  # an output of an older version: its task list is read from labels.csv
    assert cli_main(["dft", "run", str(cu), "--out", str(out), "--relax", "eos"]) == 2
    assert "holds the results of another task list" in _one_line(capsys)
    assert cli_main(["dft", "run", str(cu), "--out", str(out), "--relax", "eos", "--overwrite"]) == 0
    assert ids() == ["Cu_fcc"] and [o["id"] for o in json.loads((out / "outcomes.json").read_text())] == ["Cu_fcc"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "calcs" / keys["Al_fcc"] / "result.json").is_file()
    assert cli_main(argv) == 0 and ids() == ["Al_fcc", "Cu_fcc"]  # contains every task of the output: extends it
    (out / "labels.csv").write_text("id,formation_energy_per_atom\nx,0.1\n")
    (out / "outcomes.json").unlink()
    capsys.readouterr()
    assert cli_main(argv) == 2 and f"{out / 'labels.csv'}: exists" in _one_line(capsys)  # not an `esnet dft` output


# ---------------------------------------------------------------- 12. esnet predict never replaces a CSV unasked
def test_predict_refuses_an_existing_out_before_loading_the_model(tmp_path, capsys):
    """`esnet predict --out FILE` (issue 36): an existing FILE is refused in one line naming it and --overwrite,
    before the model loads (the model path here does not exist: its error would come first otherwise); with
    --overwrite the run goes on, and a run that then fails keeps the old file."""
    gpaw = str(next(DEMO.glob("calcs/*/is.gpawdos.npz")))
    out = tmp_path / "p.csv"
    out.write_text("id,mine\nx,1\n")
    missing = tmp_path / "missing.keras"
    capsys.readouterr()
    assert cli_main(["predict", str(missing), gpaw, "--out", str(out)]) == 2
    line = _one_line(capsys)
    assert f"{out}: exists" in line and "--overwrite" in line and "missing.keras" not in line
    assert out.read_text() == "id,mine\nx,1\n"
    assert cli_main(["predict", str(missing), gpaw, "--out", str(out), "--overwrite"]) == 2
    line = _one_line(capsys)
    assert "missing.keras" in line and "exists" not in line  # past the check, at the model
    assert out.read_text() == "id,mine\nx,1\n"


# ---------------------------------------------------------------- 13. esnet dft demo|pool --out: only their own dataset
def test_dft_demo_and_pool_refuse_an_out_that_holds_something_else(tmp_path, capsys):
    """`esnet dft demo|pool --out DIR` resume their own dataset; an `esnet dft run` output, the other kind,
    other settings or a labels.csv of unknown origin are refused in one line before anything is copied or
    computed, and the directory is left as it was."""
    pytest.importorskip("gpaw", reason="GPAW (extra `dft`) is not installed")
    from esnet_tf.dft.settings import DFTSettings

    settings = json.loads(json.dumps(DFTSettings().to_dict()))
    cases = {
        "run_output": ({"outcomes.json": "[]", "labels.csv": "id\n"}, "demo", "output of `esnet dft run`"),
        "unknown_labels": ({"labels.csv": "id,formation_energy_per_atom\nx,0.1\n"}, "pool", "without the provenance"),
        "pool_as_demo": ({"provenance.json": json.dumps({"description": "pool (esnet dft pool)", "settings": settings})},
                         "demo", "holds another dataset"),
        "demo_as_pool": ({"provenance.json": json.dumps({"description": "IS-DOS (esnet dft)", "settings": settings})},
                         "pool", "holds another dataset"),
        "other_settings": ({"provenance.json": json.dumps({"description": "IS-DOS (esnet dft)",
                                                           "settings": {**settings, "ecut": 400.0}})},
                           "demo", "ecut 400.0 there, 500.0 asked"),
        "broken_provenance": ({"provenance.json": "{"}, "pool", "not readable JSON"),
    }
    for name, (files, kind, expected) in cases.items():
        out = tmp_path / name
        out.mkdir()
        for f, text in files.items():
            (out / f).write_text(text)
        capsys.readouterr()
        argv = ["dft", kind, "--out", str(out), "--limit", "0"] + (["--demo-dir", str(DEMO)] if kind == "pool" else [])
        assert cli_main(argv) == 2, name
        line = _one_line(capsys)
        assert f"--out {out}:" in line and expected in line and "choose another --out" in line, (name, line)
        assert sorted(p.name for p in out.iterdir()) == sorted(files), name  # nothing copied or written


# ---------------------------------------------------------------- 14. an interrupted --overwrite is named, not hidden
def test_train_names_the_old_run_an_interrupted_overwrite_moved_aside(tmp_path, capsys):
    """A replacement (`train(..., overwrite=True)`) killed between moving the old run aside and removing it
    leaves `.RUN.*.replaced/`: the next training into RUN names it on stderr and keeps it."""
    from esnet_tf.train import TrainConfig, train

    run = tmp_path / "run"
    run.mkdir()
    left = tmp_path / ".run.k3x9.replaced"
    left.mkdir()
    (left / "best.keras").write_bytes(b"old")
    capsys.readouterr()
    with pytest.raises(UserError):
        train(TrainConfig(dataset=str(tmp_path / "missing.npz")), run)
    err = capsys.readouterr().err
    assert f"{left}: the outputs of a run of {run} that an interrupted --overwrite moved aside" in err
    assert (left / "best.keras").read_bytes() == b"old"
