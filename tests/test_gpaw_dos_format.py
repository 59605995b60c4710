"""The `*.gpawdos.npz` layouts: the compact one (energy grid as start + step, PDOS as byte planes)
reads back the same numbers as the full one, and `esnet dft compact` shrinks a cache without
invalidating it, also when killed half-way. Real demo DOS files, no GPAW needed."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from esnet_tf import resources
from esnet_tf.dft.runner import cache_problem, compact_cache
from esnet_tf.featurize import featurize
from esnet_tf.isdos import DOSInputError
from esnet_tf.readers.gpaw import has_full_layout, read_gpaw_dos, write_gpaw_dos


def _demo_calc(relaxed: bool) -> Path:
    """A demo cache entry: with IS and RS DOS (relaxed) or an IS-only augmentation variant."""
    demo = resources.demo_dir()
    with open(demo / "labels_augmented.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if bool(row["variant"]) != relaxed and (not relaxed or row["rs_path"]):
                return demo / Path(row["path"]).parent
    pytest.skip("no such demo entry")


def _write_full_layout(src: Path, dst: Path) -> None:
    """`dst` in the full layout (`energies`, `pdos`) of DOS files written before the compact one."""
    dos = read_gpaw_dos(src)
    np.savez_compressed(dst, energies=dos.energies, pdos=dos.pdos.astype(np.float32), efermi=np.float64(dos.efermi),
                        structure_json=np.str_(json.dumps(dos.structure.as_dict())), code=np.str_(dos.code),
                        settings_json=np.str_("{}"), energy=np.float64(-1.5), id=np.str_(dos.doc_id))


@pytest.fixture()
def full_layout_cache(tmp_path):
    """A cache of two demo entries (relaxed + variant) rewritten in the full layout, sizes recorded."""
    cache = tmp_path / "calcs"
    for relaxed in (True, False):
        src = _demo_calc(relaxed)
        dst = cache / src.name
        shutil.copytree(src, dst)
        result = json.loads((dst / "result.json").read_text())
        for key in ("is_dos", "rs_dos"):
            if result.get(key):
                _write_full_layout(src / result[key], dst / result[key])
                result.setdefault("file_sizes", {})[result[key]] = (dst / result[key]).stat().st_size
        (dst / "result.json").write_text(json.dumps(result))
    return cache


def test_compact_layout_reads_the_same_numbers(tmp_path):
    src = _demo_calc(relaxed=True) / "is.gpawdos.npz"
    full, compact = tmp_path / "full.gpawdos.npz", tmp_path / "compact.gpawdos.npz"
    _write_full_layout(src, full)
    dos = read_gpaw_dos(full)
    write_gpaw_dos(compact, energies=dos.energies, efermi=dos.efermi, pdos=dos.pdos.astype(np.float32),
                   structure=dos.structure.as_dict(), code=dos.code, settings_json="{}",
                   energy=-1.0, doc_id=dos.doc_id)
    assert has_full_layout(full) and not has_full_layout(compact)
    assert compact.stat().st_size < 0.7 * full.stat().st_size
    back = read_gpaw_dos(compact)
    assert np.array_equal(back.pdos, dos.pdos)
    assert np.abs(back.energies - dos.energies).max() < 1e-9
    a, b = featurize(full), featurize(compact)
    assert np.array_equal(a.dos_up, b.dos_up) and np.array_equal(a.dos_down, b.dos_down)


def test_non_uniform_axis_is_written_in_full(tmp_path):
    energies = np.array([-1.0, 0.0, 0.5, 2.0])
    out = write_gpaw_dos(tmp_path / "x.gpawdos.npz", energies=energies, efermi=0.0,
                         pdos=np.ones((1, 9, 4), np.float32), structure={}, code="GPAW test",
                         settings_json="{}", energy=0.0, doc_id="x")
    assert has_full_layout(out)
    with np.load(out) as z:
        assert np.array_equal(z["energies"], energies)


def test_inconsistent_compact_file_is_refused_by_name(tmp_path):
    src = _demo_calc(relaxed=False) / "is.gpawdos.npz"
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["pdos_bytes"] = arrays["pdos_bytes"][:3]
    bad = tmp_path / "bad.gpawdos.npz"
    np.savez_compressed(bad, **arrays)
    with pytest.raises(DOSInputError, match="bad.gpawdos.npz.*pdos_bytes"):
        read_gpaw_dos(bad)


def test_compact_cache_shrinks_and_keeps_the_cache_valid(full_layout_cache):
    before = {f: featurize(f) for f in full_layout_cache.glob("*/*.gpawdos.npz")}
    report = compact_cache(full_layout_cache, progress=False)
    assert report.n_rewritten == 3 and report.n_untrusted == 0
    assert report.bytes_after < 0.7 * report.bytes_before
    for workdir in full_layout_cache.iterdir():
        assert cache_problem(workdir) == ""
    for f, feats in before.items():
        assert not has_full_layout(f)
        assert np.array_equal(featurize(f).dos_up, feats.dos_up)
    again = compact_cache(full_layout_cache, progress=False)
    assert again.n_rewritten == 0 and again.n_already_compact == 3


def test_compaction_killed_between_record_and_rename_leaves_a_valid_cache(full_layout_cache):
    """The state after result.json got the new size but before the file was replaced."""
    workdir = next(d for d in full_layout_cache.iterdir())
    result = json.loads((workdir / "result.json").read_text())
    name = result["is_dos"]
    result["file_sizes_before_compaction"] = {name: result["file_sizes"][name]}
    result["file_sizes"][name] = 1234
    (workdir / "result.json").write_text(json.dumps(result))
    assert cache_problem(workdir) == ""
    (workdir / name).write_bytes((workdir / name).read_bytes()[:-100])  # a truncated file is still caught
    assert "bytes" in cache_problem(workdir)


def test_cli_compact_reports_and_refuses_a_directory_without_results(full_layout_cache, tmp_path):
    cmd = [sys.executable, "-m", "esnet_tf.cli", "dft", "compact"]
    ok = subprocess.run(cmd + [str(full_layout_cache.parent)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "3 DOS files rewritten" in ok.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run(cmd + [str(empty)], capture_output=True, text=True)
    assert bad.returncode != 0
    assert str(empty) in bad.stderr and "--out directory" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
