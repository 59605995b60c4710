"""Featurization throughput: fast vasprun reader vs pymatgen `Vasprun`, same files, same run.

    python benchmarks/bench_featurize.py [--fixtures ../shared/fixtures] [--repeats 7] [--json out.json]

Times `featurize_dos(reader(path))` (read + IS-DOS on the paper grid) over every vasprun fixture
that the pymatgen path reads, both readers interleaved in each repetition (the machine is shared
and noisy: the ratio of the same repetition is what counts; the median over repetitions is
reported). Reports files/s and MB/s (uncompressed XML and on-disk .gz), per-file times, the
ratio fast / pymatgen (target >= 5x), checks the outputs are identical, and measures the peak
RSS of featurizing the largest fixture with each reader in a fresh subprocess
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, with the RSS after imports for reference).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURES = Path(os.environ.get("ESNET_FIXTURES", ROOT.parent / "shared" / "fixtures"))
READERS = ("pymatgen", "fast")


def vasprun_fixtures(fixtures: Path) -> list[Path]:
    """Every vasprun fixture (vasp/*.vasprun.xml.gz and doscar/*/vasprun.xml.gz)."""
    return sorted(fixtures.glob("vasp/*vasprun*.xml*")) + sorted(fixtures.glob("doscar/*/vasprun*.xml*"))


def uncompressed_size(path: Path) -> int:
    """Size of the XML in bytes (decompressed)."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return sum(len(b) for b in iter(lambda: fh.read(1 << 22), b""))
    return path.stat().st_size


def featurize_with(reader: str, path: Path):
    """Read `path` with `reader` and featurize on the paper grid."""
    from esnet_tf.featurize import featurize_dos
    from esnet_tf.readers.vasp_stream import vasprun_reader

    return featurize_dos(vasprun_reader(reader)(path))


def _vm_hwm_mib() -> float:
    """This process's own RSS high-water mark (MiB) from /proc (NaN where absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_child(reader: str, path: str) -> None:
    """Subprocess body: print JSON with peak RSS (MiB) after imports and after featurizing."""
    from esnet_tf.isdos import DOSInputError

    import esnet_tf.featurize  # noqa: F401
    import esnet_tf.readers.vasp  # noqa: F401
    import esnet_tf.readers.vasp_stream  # noqa: F401
    from pymatgen.io.vasp import Vasprun  # noqa: F401

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            featurize_with(reader, Path(path))
    except DOSInputError as exc:
        print(json.dumps({"reader": reader, "error": str(exc)}))
        return
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"reader": reader, "rss_after_imports_mib": base, "peak_rss_mib": peak, "vm_hwm_mib": _vm_hwm_mib()}))


def peak_rss(reader: str, path: Path) -> dict:
    """Peak RSS of featurizing `path` with `reader` in a fresh Python process.

    Call it while this process is small: Linux carries the parent's RSS high-water mark into
    ru_maxrss across fork + exec, so a large parent would mask the child's own figure.
    """
    out = subprocess.run([sys.executable, __file__, "--rss-child", reader, str(path)], check=True,
                         capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_example(a, b) -> bool:
    """Arrays equal within float32 tolerance and identical metadata."""
    return (np.allclose(a.dos_up, b.dos_up, rtol=1e-6, atol=1e-6) and np.allclose(a.dos_down, b.dos_down, rtol=1e-6, atol=1e-6)
            and np.array_equal(a.composition, b.composition) and a.metadata() == b.metadata())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES, help="fixtures folder (../shared/fixtures)")
    ap.add_argument("--repeats", type=int, default=7, help="timed repetitions per reader (count)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--rss-child", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0

    # peak RSS first, while this process has imported nothing heavy (see peak_rss)
    candidates = sorted(vasprun_fixtures(args.fixtures), key=uncompressed_size, reverse=True)
    rss, largest = {}, None
    for path in candidates:  # the largest fixture that both readers featurize
        rss = {r: peak_rss(r, path) for r in READERS}
        if not any("error" in v for v in rss.values()):
            largest = path
            break

    from tqdm import tqdm

    from esnet_tf.isdos import DOSInputError

    warnings.simplefilter("ignore")
    files, examples = [], {}
    for path in vasprun_fixtures(args.fixtures):  # readable by the pymatgen path; also warms both readers up
        try:
            ref = featurize_with("pymatgen", path)
        except DOSInputError:
            continue
        files.append(path)
        examples[path] = (ref, featurize_with("fast", path))
    if not files:
        print(f"no readable vasprun fixtures under {args.fixtures}", file=sys.stderr)
        return 2
    identical = all(same_example(*examples[p]) for p in files)
    disk = {p: p.stat().st_size for p in files}
    xml = {p: uncompressed_size(p) for p in files}

    per_file = {r: {p: [] for p in files} for r in READERS}
    totals = {r: [] for r in READERS}
    for rep in tqdm(range(args.repeats), desc="repetitions", unit="rep"):
        order = READERS if rep % 2 == 0 else READERS[::-1]
        for r in order:
            t_all = 0.0
            for p in files:
                t0 = time.perf_counter()
                featurize_with(r, p)
                dt = time.perf_counter() - t0
                per_file[r][p].append(dt)
                t_all += dt
            totals[r].append(t_all)

    med = {r: statistics.median(totals[r]) for r in READERS}
    ratios = [a / b for a, b in zip(totals["pymatgen"], totals["fast"])]
    n, mb_xml, mb_disk = len(files), sum(xml.values()) / 1e6, sum(disk.values()) / 1e6
    print(f"{n} readable vasprun fixtures, {mb_xml:.1f} MB XML, {mb_disk:.2f} MB on disk; "
          f"{args.repeats} repetitions, median total time per pass")
    print(f"{'reader':10s} {'s/pass':>8s} {'files/s':>8s} {'MB/s xml':>9s} {'MB/s disk':>9s}")
    for r in READERS:
        print(f"{r:10s} {med[r]:8.3f} {n / med[r]:8.1f} {mb_xml / med[r]:9.1f} {mb_disk / med[r]:9.2f}")
    print(f"speed-up fast / pymatgen: {med['pymatgen'] / med['fast']:.2f}x (median of total times); "
          f"per repetition {min(ratios):.2f}x .. {max(ratios):.2f}x; outputs identical: {identical}")
    print(f"\n{'file':42s} {'MB xml':>7s} {'pymatgen s':>10s} {'fast s':>8s} {'ratio':>6s}")
    rows = []
    for p in files:
        tp, tf = statistics.median(per_file["pymatgen"][p]), statistics.median(per_file["fast"][p])
        name = str(p.relative_to(args.fixtures))
        rows.append({"file": name, "mb_xml": xml[p] / 1e6, "mb_disk": disk[p] / 1e6, "pymatgen_s": tp, "fast_s": tf})
        print(f"{name:42s} {xml[p] / 1e6:7.2f} {tp:10.4f} {tf:8.4f} {tp / tf:5.1f}x")

    print(f"\npeak RSS featurizing the largest fixture ({largest.relative_to(args.fixtures)}, "
          f"{xml[largest] / 1e6:.1f} MB XML), fresh process per reader, getrusage ru_maxrss:")
    for r in READERS:
        print(f"{r:10s} peak {rss[r]['peak_rss_mib']:7.1f} MiB (after imports {rss[r]['rss_after_imports_mib']:.1f} MiB, "
              f"increase {rss[r]['peak_rss_mib'] - rss[r]['rss_after_imports_mib']:.1f} MiB; "
              f"/proc VmHWM {rss[r]['vm_hwm_mib']:.1f} MiB)")
    if args.json:
        args.json.write_text(json.dumps({
            "n_files": n, "mb_xml": mb_xml, "mb_disk": mb_disk, "repeats": args.repeats,
            "median_s": med, "files_per_s": {r: n / med[r] for r in READERS},
            "mb_per_s_xml": {r: mb_xml / med[r] for r in READERS}, "mb_per_s_disk": {r: mb_disk / med[r] for r in READERS},
            "speedup": med["pymatgen"] / med["fast"], "speedup_per_repeat": ratios, "identical": identical,
            "per_file": rows, "peak_rss": {"file": largest.name, **rss}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
