"""The fast vasprun reader equals the pymatgen `Vasprun` path on every vasprun fixture."""
from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest

from esnet_tf.featurize import featurize_dos
from esnet_tf.isdos import DOSInputError
from esnet_tf.readers.vasp import read_vasprun
from esnet_tf.readers.vasp_stream import _fixed_width, read_vasprun_any, read_vasprun_fast, vasprun_reader

FILES = ["vasp/Al.vasprun.xml.gz", "vasp/Fe_monomer_spin.vasprun.xml.gz", "vasp/GaAs_mp-2534.vasprun.xml.gz",
         "vasp/LiF.vasprun.xml.gz", "vasp/Li_no_projected.vasprun.xml.gz", "vasp/bad.vasprun.xml.gz",
         "vasp/dielectric_6.0.8.vasprun.xml.gz", "vasp/hse06.vasprun.xml.gz", "vasp/indirect.vasprun.xml.gz",
         "vasp/magmom_ldau.vasprun.xml.gz", "vasp/nonlm.vasprun.xml.gz", "vasp/unconverged.vasprun.xml.gz",
         "vasp/vdw.vasprun.xml.gz", "doscar/hea_spin_polarized/vasprun.xml.gz"]


def _read(reader, path: Path):
    """(ProjectedDOS, None) or (None, DOSInputError)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return reader(path), None
        except DOSInputError as exc:
            return None, exc


def test_fixture_list_is_complete(fixtures_dir):
    found = {p.relative_to(fixtures_dir).as_posix() for p in fixtures_dir.glob("vasp/*vasprun*")}
    found |= {p.relative_to(fixtures_dir).as_posix() for p in fixtures_dir.glob("doscar/*/vasprun*")}
    assert found == set(FILES)


@pytest.mark.parametrize("rel", FILES)
def test_fast_reader_equals_pymatgen(fixtures_dir, rel):
    path = fixtures_dir / rel
    ref, ref_err = _read(read_vasprun, path)
    fast, fast_err = _read(read_vasprun_fast, path)
    if ref_err is not None:  # rejected by pymatgen: rejected the same way, naming the file, same hint
        assert fast_err is not None, f"fast reader accepted {rel}, pymatgen path said: {ref_err}"
        assert fast_err.path == str(path) and str(path) in str(fast_err)
        assert fast_err.fix == ref_err.fix
        assert fast_err.problem.split("(")[0] == ref_err.problem.split("(")[0]
        return
    assert fast_err is None, f"pymatgen reads {rel} but the fast reader says: {fast_err}"
    # the reader records themselves
    assert np.array_equal(fast.energies, ref.energies) and fast.pdos.shape == ref.pdos.shape
    np.testing.assert_allclose(fast.pdos, ref.pdos, rtol=1e-12, atol=1e-12)
    assert fast.efermi == ref.efermi and fast.structure == ref.structure
    assert (fast.spin_polarized, fast.code, fast.f_channels, fast.warnings, fast.source) == \
        (ref.spin_polarized, ref.code, ref.f_channels, ref.warnings, ref.source)
    # and what the model sees
    a, b = featurize_dos(fast), featurize_dos(ref)
    np.testing.assert_allclose(a.dos_up, b.dos_up, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.dos_down, b.dos_down, rtol=1e-6, atol=1e-6)
    assert np.array_equal(a.composition, b.composition) and a.metadata() == b.metadata()


def test_semantics_on_known_fixtures(fixtures_dir):
    v = fixtures_dir / "vasp"
    fe = read_vasprun_fast(v / "Fe_monomer_spin.vasprun.xml.gz")  # label 'dx2'
    gaas = read_vasprun_fast(v / "GaAs_mp-2534.vasprun.xml.gz")  # label 'x2-y2'
    assert fe.pdos[:, 8].sum() > 0 and gaas.pdos[:, 8].sum() > 0 and fe.spin_polarized
    ce = read_vasprun_fast(v / "hse06.vasprun.xml.gz")
    assert ce.f_channels == ("f_3", "f_2", "f_1", "f0", "f1", "f2", "f3")
    multi = read_vasprun_fast(v / "magmom_ldau.vasprun.xml.gz")
    assert multi.warnings == ("DOS of the final structure of a 3-step run, not IS-DOS",)
    assert not read_vasprun_fast(v / "indirect.vasprun.xml.gz").spin_polarized


def test_missing_file_and_cut_gzip(fixtures_dir, tmp_path):
    with pytest.raises(DOSInputError, match="no such file"):
        read_vasprun_fast(tmp_path / "missing.vasprun.xml.gz")
    raw = (fixtures_dir / "vasp" / "LiF.vasprun.xml.gz").read_bytes()
    cut = tmp_path / "cut.vasprun.xml.gz"
    cut.write_bytes(raw[: len(raw) // 2])  # the .gz itself is cut (not only the XML)
    with pytest.raises(DOSInputError, match="truncated") as info:
        read_vasprun_fast(cut)
    assert "cut.vasprun.xml.gz" in str(info.value)


def test_cut_inside_a_skipped_block_is_caught(fixtures_dir, tmp_path):
    """A file ending inside <eigenvalues> (never parsed by the fast path) is still truncated."""
    xml = gzip.decompress((fixtures_dir / "vasp" / "LiF.vasprun.xml.gz").read_bytes())
    i = xml.index(b"<eigenvalues>")
    plain = tmp_path / "cut.vasprun.xml"
    plain.write_bytes(xml[: i + 200])
    _, ref_err = _read(read_vasprun, plain)
    _, fast_err = _read(read_vasprun_fast, plain)
    assert ref_err is not None and fast_err is not None and fast_err.fix == ref_err.fix


def test_uncompressed_and_multi_member_gzip_equal(fixtures_dir, tmp_path):
    xml = gzip.decompress((fixtures_dir / "vasp" / "vdw.vasprun.xml.gz").read_bytes())
    plain = tmp_path / "vdw.vasprun.xml"
    plain.write_bytes(xml)
    multi = tmp_path / "vdw2.vasprun.xml.gz"
    multi.write_bytes(gzip.compress(xml[:1000]) + gzip.compress(xml[1000:]))
    ref = read_vasprun(plain)
    for p in (plain, multi):
        got = read_vasprun_fast(p)
        assert np.array_equal(got.pdos, ref.pdos) and got.warnings == ref.warnings


def test_fixed_width_parser_is_exact_or_declines():
    rng = np.random.default_rng(0)
    vals = rng.uniform(-999, 999, (50, 4)).round(4)
    text = b"".join(b"<r>" + "".join(f"{x:11.4f}" for x in row).encode() + b" </r>\n" for row in vals)
    b = np.frombuffer(text, np.uint8)
    opens = np.array([i + 3 for i in range(len(text)) if text.startswith(b"<r>", i)])
    closes = np.array([i for i in range(len(text)) if text.startswith(b"</r>", i)])
    got = _fixed_width(b, opens, closes, np.array([0]))
    want = np.array([[float(t) for t in line[3:-5].split()] for line in text.splitlines()])
    assert got is not None and np.array_equal(got, want)
    bad = text.replace(b"  ", b" *", 1)  # an overflow marker: declined, the generic parser takes over
    assert _fixed_width(np.frombuffer(bad, np.uint8), opens, closes, np.array([0])) is None


def test_reader_selection(fixtures_dir, monkeypatch):
    assert vasprun_reader("fast") is read_vasprun_fast and vasprun_reader("pymatgen") is read_vasprun
    monkeypatch.setenv("ESNET_VASPRUN_READER", "pymatgen")
    assert vasprun_reader() is read_vasprun
    monkeypatch.delenv("ESNET_VASPRUN_READER")
    assert vasprun_reader() is read_vasprun_fast
    with pytest.raises(ValueError, match="ESNET_VASPRUN_READER"):
        vasprun_reader("lxml")
    dos = read_vasprun_any(fixtures_dir / "vasp" / "LiF.vasprun.xml.gz", reader="pymatgen")
    assert dos.code.startswith("VASP ")
