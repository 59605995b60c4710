"""Fast VASP `vasprun.xml[.gz]` reader: only what IS-DOS needs, streamed.

Same result as `esnet_tf.readers.vasp.read_vasprun` (pymatgen `Vasprun`), checked equal on
every fixture by `tests/test_vasp_stream.py`, several times faster (`benchmarks/bench_featurize.py`):

- the file is decompressed in chunks and fed to an lxml pull parser (start/end events,
  elements cleared as soon as they are read; no object model of the run);
- the blocks IS-DOS never uses, `<eigenvalues>`, `<projected>` (band energies and projections
  per k-point: 80-95 % of a large vasprun.xml), `<kpoints>`, `<dielectricfunction>` and
  `<dynmat>`, are skipped at the byte level (found with `bytes.find`, never tokenised), so a
  file truncated inside them still fails;
- reading is bounded (`esnet_tf.readers.limits`): special files are refused, at most the per-file
  limit ($ESNET_MAX_INFLATED_BYTES, default 2 GiB) is inflated, and at most a quarter of it is
  parsed or kept (skipped blocks cost time, not memory), so a gzip bomb ends in one line;
- the `<partial>` block is kept raw and its fixed-width rows are parsed with numpy column
  arithmetic, bit-identical to pymatgen's `np.loadtxt` (generic parser for anything unusual).

Which structure the DOS belongs to, and the warnings, are those of `read_vasprun`: the DOS of
a single point (one ionic step) is attached to the initial structure (`initialpos`) and is
IS-DOS; for a multi-step run it is attached to the final structure (`finalpos`) with the
warning "DOS of the final structure of an N-step run, not IS-DOS"; an unconverged run is read
with "electronic SCF not converged" / "ionic relaxation not converged" recorded (pymatgen's
`converged_electronic` / `converged_ionic` rules, NELM / NSW / IBRION / EDIFFG / LEPSILON).
Orbital columns are mapped by their `<field>` label with `orbital_channel` ('dx2' and
'x2-y2' -> dx2-y2); f columns are recorded in `f_channels`. Errors are the same
`DOSInputError`s (missing or truncated file, noncollinear run, no projections, LORBIT=10).

Machine-learned force-field MD (ML_LMLFF) and NMR chemical-shielding (LCHIMAG) runs, whose
ionic steps pymatgen counts differently, are handed to the pymatgen reader unchanged.
Select the reader with `read_vasprun_any(path, reader=...)` or the environment variable
`ESNET_VASPRUN_READER` ('fast', the default, or 'pymatgen').
"""
from __future__ import annotations

import os
import re
import warnings as _warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from esnet_tf.isdos import F_ORBITALS, ORBITALS, DOSInputError, ProjectedDOS
from esnet_tf.readers.common import (check_vasprun_run, ionic_step_energy, not_m_resolved, orbital_channel,
                                     vasprun_energy_source)

#: Decompressed bytes read per step (bytes).
CHUNK_BYTES = 1 << 22
#: Environment variable choosing the vasprun reader of `read_vasprun_any`.
READER_ENV = "ESNET_VASPRUN_READER"
READERS = ("fast", "pymatgen")

# Blocks skipped unparsed: a start tag followed by whitespace or '>' (not '/', not '_kpoints_opt').
_SKIP_OPEN = re.compile(rb"<(eigenvalues|projected|kpoints|dielectricfunction|dynmat|partial)[\s>]")
_FIELD = re.compile(rb"<field[^>]*>([^<]*)</field>")
_COMMENT = re.compile(rb'comment="([^"]*)"')
_P10 = 10.0 ** np.arange(23)
_SP, _MINUS, _DOT, _LT = 32, 45, 46, 60
_MAX_OPEN = len(b"<dielectricfunction ")  # longest pattern
_TAGS = ("generator", "incar", "parameters", "atominfo", "structure", "calculation", "scstep", "dos")
# VASP's f labels (lm order, m = -3..3) -> pymatgen's Orbital names.
_F_LABELS = dict(zip(("fy3x2", "fxyz", "fyz2", "fz3", "fxz2", "fzx2", "fx3"), F_ORBITALS))
# pymatgen's names of the lm columns in VASP order (Orbital enum) and of l-only columns (OrbitalType).
_LM_NAMES = ("s", "py", "pz", "px", "dxy", "dyz", "dz2", "dxz", "dx2") + F_ORBITALS
_L_NAMES = ("s", "p", "d", "f")
_PARAM_KEYS = frozenset({"NELM", "NSW", "IBRION", "EDIFFG", "LNONCOLLINEAR", "LSORBIT", "LCHIMAG"})
_INCAR_KEYS = frozenset({"ALGO", "NELM", "LEPSILON", "ML_LMLFF"})


class _Delegate(Exception):
    """The run is of a kind the fast reader leaves to pymatgen."""


# ---------------------------------------------------------------------------------- helpers

def _open(path: Path):
    """Binary stream of the decompressed file (the compressions pymatgen's `zopen` handles), bounded:
    `esnet_tf.readers.limits.open_bounded` refuses special files and stops past the per-file limit."""
    from esnet_tf.readers.limits import open_bounded

    return open_bounded(path)


@lru_cache(maxsize=None)
def _proc_val(key: str, text: str):
    from pymatgen.io.vasp.inputs import Incar

    return Incar.proc_val(key, text)


def _incar_value(key: str, val):
    """A typed value as pymatgen's `Incar.__setitem__` stores it."""
    return _proc_val(key, str(val)) if isinstance(val, str | float | int) else val


def _typed(ptype: str, text: str | None):
    """vasprun <i> value -> Python value (pymatgen's `_parse_parameters`)."""
    val = text.strip() if text else ""
    if ptype == "logical":
        return val == "T"
    if ptype == "int":
        return int(val)
    if ptype == "string":
        return val.strip()
    return float(val)


def _params(elem, wanted: frozenset[str]) -> dict:
    """The `wanted` <i> parameters of a <parameters>/<incar> block, nested separators flattened.

    Keys inside the 'response functions' separator do not override earlier ones (as pymatgen).
    """
    out: dict = {}
    for c in elem:
        name = (c.get("name") or "").strip()
        if c.tag not in ("i", "v"):
            sub = _params(c, wanted)
            if name == "response functions":
                sub = {k: v for k, v in sub.items() if k not in out}
            out.update(sub)
        elif c.tag == "i" and name.upper() in wanted:
            key = name.upper()
            out[key] = _incar_value(key, _typed(c.get("type", ""), c.text))
    return out


@lru_cache(maxsize=None)
def _symbol(sym: str) -> str:
    from pymatgen.core import Element

    try:
        return str(Element(sym))
    except ValueError:  # vasprun.xml writes "X" for Xe and "r" for Zr
        if sym == "X":
            return "Xe"
        if sym == "r":
            return "Zr"
        raise


def _floats(text: str, n: int | None = None) -> np.ndarray:
    """Whitespace-separated floats; '****' overflows become NaN (as pymatgen)."""
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", DeprecationWarning)
        arr = np.fromstring(text, dtype=np.float64, sep=" ")
    if n is not None and arr.size == n:
        return arr
    tokens = text.split()
    if n is None and arr.size == len(tokens):
        return arr
    return np.array([float(t) if "*" not in t else np.nan for t in tokens], dtype=np.float64)


def _rows(elem) -> np.ndarray:
    """A <set>/<varray> of <r>/<v> rows -> 2-D float array (n_rows, n_cols)."""
    rows = list(elem)
    if not rows:
        return np.zeros((0, 0))
    n_cols = len(rows[0].text.split())
    data = _floats(elem.xpath("string()"), len(rows) * n_cols)
    if data.size != len(rows) * n_cols:  # rows glued without whitespace, ragged rows: one by one
        data = np.array([_floats(r.text) for r in rows], dtype=np.float64)
    return data.reshape(len(rows), n_cols)


def _structure(elem, symbols: list[str]):
    """<structure> -> pymatgen Structure (lattice, fractional positions, selective dynamics)."""
    from pymatgen.core import Structure

    lattice = _rows(elem.find("crystal").find("varray"))
    pos = _rows(elem.find("varray"))
    struct = Structure(lattice, symbols, pos)
    sel = elem.find("varray/[@name='selective']")
    if sel is not None:
        struct.add_site_property("selective_dynamics", [[t == "T" for t in v.text.split()] for v in sel])
    return struct


def _fixed_width(b: np.ndarray, starts: np.ndarray, ends: np.ndarray, first: np.ndarray) -> np.ndarray | None:
    """Rows b[starts[i]:ends[i]] of decimals in fixed columns (VASP's F format) -> (n_rows, n_cols) float64.

    Exact: each number is its integer mantissa (sum of digit * 10**p, < 2**53) divided by 10**k,
    which IEEE division rounds exactly as strtod does. Returns None for anything else (exponents,
    '****', ragged rows), and the caller falls back to the generic parser.
    """
    n = len(starts)
    width = int(ends[0] - starts[0]) if n else 0
    if width <= 0 or np.any(ends - starts != width):
        return None
    # rows of one set are equally spaced: a strided (width, rows) view per set, one copy in all
    step = np.diff(starts)
    inner = np.ones(max(n - 1, 0), bool)
    inner[first[(first > 0) & (first < n)] - 1] = False
    stride = int(step[inner][0]) if inner.any() else width
    if stride < width or np.any(step[inner] != stride):
        return None
    bounds = np.unique(np.r_[first, n])
    bounds = bounds[(bounds >= 0) & (bounds <= n)]
    views = [np.lib.stride_tricks.as_strided(b[starts[a]:], shape=(width, z - a), strides=(1, stride))
             for a, z in zip(bounds[:-1], bounds[1:]) if z > a]
    m = np.concatenate([v.T for v in views]) if len(views) > 1 else views[0].T  # (n_rows, width)
    # column layout from the first row: integer part, '.', fraction digits, per field; trailing blanks
    row0 = bytes(m[0])
    cls = np.full(width, 3, np.int8)  # 0 integer part, 1 dot, 2 fraction, 3 trailing blank
    field = np.full(width, -1)
    dots = [i for i, ch in enumerate(row0) if ch == _DOT]
    if not dots:
        return None
    lo, ks = 0, []
    for f, d in enumerate(dots):
        hi = d + 1
        while hi < width and 48 <= row0[hi] <= 57:
            hi += 1
        k = hi - d - 1
        if k == 0 or d == lo or hi - lo - 1 > 15 or (f and row0[lo] != _SP) or (f + 1 < len(dots) and dots[f + 1] < hi):
            return None
        cls[lo:d], cls[d], cls[d + 1:hi] = 0, 1, 2
        field[lo:hi] = f
        ks.append(k)
        lo = hi
    # no BLAS here (threads fight on a busy machine): weighted digits summed per field with reduceat
    digit_cols = np.flatnonzero((cls == 0) | (cls == 2))
    weight = np.zeros(len(digit_cols))
    digit_start = np.searchsorted(field[digit_cols], np.arange(len(dots)))
    for f in range(len(dots)):
        sel = np.flatnonzero(field[digit_cols] == f)
        weight[sel] = _P10[np.arange(len(sel))[::-1]]
    int_cols = np.flatnonzero(cls == 0)
    int_start = np.searchsorted(field[int_cols], np.arange(len(dots)))
    pairs = int_cols[:-1][(np.diff(int_cols) == 1) & (field[int_cols[:-1]] == field[int_cols[1:]])]
    dot_cols, frac_cols, trail_cols = (np.flatnonzero(cls == c) for c in (1, 2, 3))
    scale = _P10[ks]
    out = np.empty((n, len(dots)))
    for a in range(0, n, 8192):  # row blocks that stay in cache
        blk = m[a:a + 8192]
        dig = blk - np.uint8(48)
        isd = dig < 10
        mi = blk[:, int_cols]
        isp, ineg = mi == _SP, mi == _MINUS
        if not ((blk[:, dot_cols] == _DOT).all() and isd[:, frac_cols].all() and (blk[:, trail_cols] == _SP).all()
                and (isd[:, int_cols] | isp | ineg).all()):
            return None
        # integer part: blanks, then an optional '-', then digits (nothing else after a sign or digit)
        if pairs.size and ((blk[:, pairs] != _SP) & ~isd[:, pairs + 1]).any():
            return None
        mant = np.add.reduceat(np.where(isd, dig, 0)[:, digit_cols] * weight, digit_start, axis=1)
        if mant.size and mant.max() >= 2.0 ** 53:
            return None
        vals = mant / scale
        neg = np.logical_or.reduceat(ineg, int_start, axis=1)
        np.negative(vals, out=vals, where=neg)
        out[a:a + 8192] = vals
    return out


def _set_tree(block: bytes, pos: int) -> list[tuple[str, int, int, list]]:
    """Nested <set comment=...> elements of a raw block from `pos`: [(comment, start, end, children)]."""
    root: list = []
    stack: list[list] = [root]
    open_ends: list[tuple[str, int, list]] = []
    while True:
        i = block.find(b"<set", pos)
        j = block.find(b"</set>", pos)
        if j < 0 and i < 0:
            break
        if i >= 0 and (j < 0 or i < j):
            gt = block.find(b">", i)
            m = _COMMENT.search(block, i, gt)
            children: list = []
            open_ends.append(((m.group(1).decode("latin-1") if m else ""), gt + 1, children))
            stack.append(children)
            pos = gt + 1
        else:
            if not open_ends:
                raise ValueError("unbalanced <set> in <partial>")
            comment, start, children = open_ends.pop()
            stack.pop()
            stack[-1].append((comment, start, j, children))
            pos = j + 6
    if open_ends:
        raise ValueError("unbalanced <set> in <partial>")
    return root


class _Partial:
    """The raw <partial> block: labels and layout at once, numbers only when asked (`data()`)."""

    def __init__(self, block: bytes) -> None:
        first = block.find(b"<set")
        self.block = block
        fields = _FIELD.findall(block, 0, first if first >= 0 else len(block))
        self.labels = [t.decode("latin-1").strip() for t in fields][1:]
        top = _set_tree(block, first) if first >= 0 else []
        ions = top[0][3] if top else []
        self.leaves = [leaf for ion in ions for leaf in ion[3]]
        self.ion_spins = [[0 if leaf[0] == "spin 1" else 1 for leaf in ion[3]] for ion in ions]
        if any(leaf[3] for leaf in self.leaves):
            raise ValueError("unexpected nesting in <partial>")

    def data(self, n_e: int) -> list[list[np.ndarray]]:
        """Per ion, per spin set: (n_E, 1 + n_labels) float64 rows."""
        b = np.frombuffer(self.block, np.uint8)
        lt = np.flatnonzero(b[:-3] == _LT)
        nx, nx2 = b[lt + 1], b[lt + 2]
        opens = lt[(nx == 114) & (nx2 == 62)] + 3  # <r>
        closes = lt[(nx == 47) & (nx2 == 114) & (b[lt + 3] == 62)]  # </r>
        bounds = np.array([(s, e) for _, s, e, _ in self.leaves], dtype=np.int64).reshape(-1, 2)
        first = np.searchsorted(opens, bounds[:, 0])
        last = np.searchsorted(opens, bounds[:, 1])
        if len(opens) != len(closes) or np.any(closes < opens) or np.any(opens[1:] < closes[:-1]) \
                or int(np.sum(last - first)) != len(opens):
            raise ValueError("<r> rows outside the ion/spin sets of <partial>")
        n_col = len(self.labels) + 1
        rows = _fixed_width(b, opens, closes, first) if len(opens) else None
        if rows is None or rows.shape[1] != n_col:
            rows = _floats(" ".join(self.block[s:e].decode("latin-1") for s, e in zip(opens, closes)))
            if rows.size != len(opens) * n_col:
                raise ValueError("ragged rows in <partial>")
            rows = rows.reshape(len(opens), n_col)
        out, k = [], 0
        for ion in self.ion_spins:
            sets = []
            for _ in ion:
                a, z = first[k], last[k]
                if z - a != n_e:
                    raise ValueError(f"<partial> set of {z - a} rows for {n_e} energies")
                sets.append(rows[a:z])
                k += 1
            out.append(sets)
        return out


def _parse_dos(elem, partial: bytes | None) -> dict:
    """<dos> (its <partial> given raw) -> efermi (eV), energies (eV), total spins, partial (lazy)."""
    efermi = float(elem.find("i").text)
    sets = elem.find("total").find("array").find("set").findall("set")
    soc = len(sets) > 2
    energies, spins = None, []
    for s in sets:
        spin = 0 if s.get("comment") == "spin 1" else 1
        data = _rows(s)
        energies = data[:, 0]
        if spin and soc:
            continue
        if spin not in spins:
            spins.append(spin)
    if energies is None:
        raise ValueError("energies is None")
    out = {"efermi": efermi, "energies": energies, "spins": sorted(spins), "partial": None}
    if partial is not None:
        part = _Partial(partial)
        # pymatgen reads the columns as Orbital(i) when any label holds an 'x', else OrbitalType(i)
        names = _LM_NAMES if any("x" in lab for lab in part.labels) else _L_NAMES
        if len(part.labels) > len(names):
            raise ValueError("more partial DOS columns than orbitals")
        out.update(partial=part, names=names[: len(part.labels)])
    elem.clear()
    return out


# ---------------------------------------------------------------------------------- streaming

class _Run:
    """What the stream yields: header, ionic-step bookkeeping, the last DOS, final structure."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.incar: dict = {}
        self.params: dict | None = None
        self.symbols: list[str] | None = None
        self.initial = None
        self.final = None
        self.n_calc = 0
        self.in_calc = False
        self.scsteps: list[frozenset[str]] = []  # energy names of each electronic step, current calc
        self.last_scsteps: list[frozenset[str]] = []
        self.last_sc_energy: dict | None = None  # energies of the current calculation's last electronic step
        self.step_energies: list[float | None] = []  # total energy (eV per cell) of each ionic step
        self.dos: dict | None = None
        self.dos_error = False
        self.skipped = 0
        self.pending_partial: bytes | None = None  # raw <partial> block of the <dos> being read

    def handle(self, event: str, elem) -> None:
        tag = elem.tag
        if event == "start":
            if tag == "calculation":
                self.in_calc = True
                self.scsteps = []
            return
        header = self.n_calc == 0 and not self.in_calc
        if tag == "scstep":
            energy = elem.find("energy")
            if energy is not None:
                self.scsteps.append(frozenset(i.get("name") for i in energy.findall("i")))
                self.last_sc_energy = _energies(energy)
            elem.clear()
        elif tag == "calculation":
            if self.params is None:
                raise AttributeError("'Vasprun' object has no attribute 'parameters'")
            self.n_calc += 1
            self.in_calc = False
            self.last_scsteps = self.scsteps
            step = elem.find("energy")
            self.step_energies.append(ionic_step_energy(_energies(step), self.last_sc_energy)
                                      if step is not None else None)
            self.last_sc_energy = None
            elem.clear()
            parent = elem.getparent()
            while elem.getprevious() is not None:  # drop what is already read
                del parent[0]
        elif tag == "dos":
            if elem.get("comment") == "kpoints_opt":
                elem.clear()
                return
            partial, self.pending_partial = self.pending_partial, None
            try:
                self.dos = _parse_dos(elem, partial)
                self.dos_error = False
            except Exception:
                self.dos_error = True
                elem.clear()
        elif tag == "structure":
            name = elem.get("name")
            if name == "initialpos" and header:
                self.initial = _structure(elem, self._symbols())
                self.final = self.initial
            elif name == "finalpos":
                self.final = _structure(elem, self._symbols())
            if not self.in_calc:
                elem.clear()
        elif header:
            if tag == "generator":
                gen = {(i.get("name") or "").strip().upper(): i for i in elem.iter("i")}
                self.version = (_incar_value("VERSION", _typed(gen["VERSION"].get("type", ""), gen["VERSION"].text))
                                if "VERSION" in gen else None)
            elif tag == "incar":
                self.incar = _params(elem, _INCAR_KEYS)
                if self.incar.get("ML_LMLFF"):
                    raise _Delegate("ML_LMLFF")
            elif tag == "parameters":
                self.params = _params(elem, _PARAM_KEYS)
                if self.params.get("LCHIMAG", False):
                    raise _Delegate("LCHIMAG")
            elif tag == "atominfo":
                for a in elem.findall("array"):
                    if a.get("name") == "atoms":
                        self.symbols = [_symbol(rc.find("c").text.strip()) for rc in a.find("set")]
            elem.clear()

    def _symbols(self) -> list[str]:
        if self.symbols is None:
            raise AttributeError("'Vasprun' object has no attribute 'atomic_symbols'")
        return self.symbols


def _energies(energy) -> dict:
    """{name: value} of an <energy> block's <i> entries (values that do not parse are left out)."""
    out = {}
    for i in energy.findall("i"):
        try:
            out[i.get("name")] = float(i.text)
        except (TypeError, ValueError):
            pass
    return out


def _stream(path: Path, run: _Run) -> None:
    """Feed the file to a pull parser; <eigenvalues>/<projected> skipped, <partial> kept raw for numpy."""
    from lxml import etree

    from esnet_tf.readers.limits import limit_error, max_inflated_bytes

    parser = etree.XMLPullParser(events=("start", "end"), tag=_TAGS, huge_tree=True, base_url=path.name)
    budget = max(1, max_inflated_bytes() // 4)  # what is parsed or kept (not skipped) may be held in memory
    held = 0

    def hold(n: int) -> None:
        nonlocal held
        held += n
        if held > budget:
            raise limit_error(path, budget, what="its parsed content (outside <eigenvalues>, <projected> and "
                              "the other skipped blocks) passes", share="a quarter")

    def feed(data: bytes) -> None:
        if data:
            hold(len(data))
            parser.feed(data)
            for event, elem in parser.read_events():
                run.handle(event, elem)

    tail = b""
    close: bytes | None = None  # the end tag being searched for while skipping
    kept: list[bytes] | None = None  # pieces of the <partial> block being captured
    with _open(path) as fh:
        while True:
            chunk = fh.read(CHUNK_BYTES)
            if not chunk:
                break
            buf = tail + chunk if tail else chunk
            pos, n = 0, len(buf)
            while True:
                if close is not None:
                    j = buf.find(close, pos)
                    if j < 0:
                        cut = max(pos, n - len(close) + 1)  # an end tag may straddle chunks
                        if kept is not None:
                            hold(cut - pos)
                            kept.append(buf[pos:cut])
                        pos = cut
                        break
                    if kept is not None:
                        hold(j + len(close) - pos)
                        kept.append(buf[pos:j + len(close)])
                        run.pending_partial, kept = b"".join(kept), None
                    else:
                        run.skipped += 1
                    pos, close = j + len(close), None
                else:
                    m = _SKIP_OPEN.search(buf, pos)
                    if m is None:
                        safe = n - _MAX_OPEN  # a start tag may straddle chunks
                        if safe > pos:
                            feed(buf[pos:safe])
                            pos = safe
                        break
                    feed(buf[pos:m.start()])
                    close = b"</" + m.group(1) + b">"
                    if m.group(1) == b"partial":
                        kept = [buf[m.start():m.end()]]
                    pos = m.end()
            tail = buf[pos:]
    if close is not None:
        raise EOFError(f"Premature end of data in tag {close[2:-1].decode()}")
    feed(tail)
    parser.close()
    for event, elem in parser.read_events():
        run.handle(event, elem)


# ---------------------------------------------------------------------------------- checks

def _converged_electronic(run: _Run) -> bool:
    """pymatgen `Vasprun.converged_electronic`."""
    incar, params = run.incar, run.params
    if incar.get("ALGO", "").lower() == "chi":
        steps: list[frozenset[str]] = []
    else:
        if run.n_calc == 0:
            raise IndexError("list index out of range")
        steps = run.last_scsteps
    if incar.get("LEPSILON"):
        idx = 1
        to_check = {"e_wo_entrp", "e_fr_energy", "e_0_energy"}
        while set(steps[idx]) == to_check:
            idx += 1
        return idx + 1 != params["NELM"]
    if incar.get("ALGO", "") == "Exact" and incar.get("NELM") == 1:
        return True
    return len(steps) < params["NELM"]


def _converged_ionic(run: _Run) -> bool:
    """pymatgen `Vasprun.converged_ionic` (no MLFF runs here: md steps = ionic steps)."""
    params = run.params
    nsw = params.get("NSW", 0)
    ibrion = params.get("IBRION", -1 if nsw in (-1, 0) else 0)
    if ibrion == 0:
        return nsw <= 1 or run.n_calc == nsw
    ediffg = params.get("EDIFFG", 1)
    if ibrion in {1, 2} and ediffg == 0:
        return nsw <= 1 or nsw == run.n_calc
    return nsw <= 1 or run.n_calc < nsw


def _channel_name(label: str, name: str) -> tuple[int | None, str]:
    """(channel or None for f, the name pymatgen gives the column) of one <field> label."""
    ch = orbital_channel(label)
    if ch is None:
        return None, _F_LABELS.get(label.lower(), name)
    return ch, name


def read_vasprun_fast(path: str | Path) -> ProjectedDOS:
    """Read the m-resolved projected DOS of a vasprun.xml[.gz] (fast path, same result as pymatgen's).

    Returns `ProjectedDOS` with pdos summed over sites (n_spin, 9, n_E) in states/eV per cell,
    absolute energies and E_F in eV. Raises `DOSInputError` naming the file and the fix.
    """
    path = Path(path)
    run = _Run()
    try:
        _stream(path, run)
        if run.params is None:
            raise AttributeError("'Vasprun' object has no attribute 'parameters'")
        if run.version is None:
            raise KeyError("version")
        if run.initial is None:
            raise AttributeError("'Vasprun' object has no attribute 'final_structure'")
        conv_e = _converged_electronic(run)
        conv_i = _converged_ionic(run)
    except FileNotFoundError:
        raise DOSInputError(path, "no such file", "check the path") from None
    except DOSInputError:  # a limit of bounded reading, a special file: already one line
        raise
    except _Delegate:
        from esnet_tf.readers.vasp import read_vasprun

        return read_vasprun(path)
    except Exception as exc:  # lxml XMLSyntaxError, EOFError of a cut .gz, ...
        raise DOSInputError(path, f"cannot parse vasprun.xml ({type(exc).__name__}: {str(exc)[:120]})",
                            "the file is truncated or corrupt: rerun or copy it again") from None
    n_steps = run.n_calc
    notes = check_vasprun_run(path, run.params, run.dos is not None, n_steps, conv_e, conv_i)
    dos = run.dos
    structure = run.final if n_steps > 1 else run.initial
    part: _Partial | None = dos["partial"]
    n_ions = 0 if part is None else len(part.ion_spins)
    if n_ions == 0:
        raise DOSInputError(path, "no projected DOS in the file (total DOS only)",
                            "rerun VASP with LORBIT=11 to write m-resolved projections")
    if n_ions > len(run.final):
        raise DOSInputError(path, f"projected DOS of {n_ions} sites for a {len(run.final)}-site structure",
                            "the file is truncated or corrupt: rerun or copy it again")
    spins = dos["spins"]
    energies = np.asarray(dos["energies"], dtype=np.float64)
    channels: list[tuple[int, int]] = []  # (column, channel)
    f_seen: set[str] = set()
    for col, (label, name) in enumerate(zip(part.labels, dos["names"]), start=1):
        try:
            ch, pmg_name = _channel_name(label, name)
        except KeyError:
            raise not_m_resolved(path, name) from None
        if ch is None:
            f_seen.add(pmg_name)
            continue
        for ion_spins in part.ion_spins:
            for spin in spins:
                if spin not in ion_spins:
                    raise DOSInputError(path, f"orbital {name} lacks spin {('up', 'down')[spin]} data",
                                        "the file looks truncated")
        channels.append((col, ch))
    try:
        data = part.data(len(energies))
    except ValueError as exc:
        raise DOSInputError(path, f"cannot parse vasprun.xml ({type(exc).__name__}: {str(exc)[:120]})",
                            "the file is truncated or corrupt: rerun or copy it again") from None
    pdos = np.zeros((len(spins), len(ORBITALS), len(energies)))
    for i, spin in enumerate(spins):
        for ion, ion_spins in enumerate(part.ion_spins):
            # the last set of a spin wins, as in pymatgen's dict; SOC projections are never read
            k = len(ion_spins) - 1 - ion_spins[::-1].index(spin)
            block = data[ion][k]
            for col, ch in channels:
                pdos[i, ch] += block[:, col]
    f_channels = tuple(sorted(f_seen, key=lambda s: F_ORBITALS.index(s) if s in F_ORBITALS else 99))
    energy = run.step_energies[0] if run.step_energies else None  # the initial structure's (first ionic step)
    return ProjectedDOS(energies=energies, pdos=pdos, efermi=float(dos["efermi"]), structure=structure,
                        spin_polarized=len(spins) == 2, source=str(path), code=f"VASP {run.version}",
                        f_channels=f_channels, warnings=tuple(notes), total_energy=energy,
                        energy_source=vasprun_energy_source(n_steps) if energy is not None else "")


def read_vasprun_any(path: str | Path, reader: str | None = None) -> ProjectedDOS:
    """Read a vasprun.xml[.gz] with `reader` ('fast' or 'pymatgen'; default: $ESNET_VASPRUN_READER or 'fast')."""
    return vasprun_reader(reader)(path)


def vasprun_reader(reader: str | None = None) -> Callable[[str | Path], ProjectedDOS]:
    """The vasprun reader function named `reader` ('fast' or 'pymatgen'; None: $ESNET_VASPRUN_READER or 'fast')."""
    name = (reader or os.environ.get(READER_ENV) or "fast").strip().lower()
    if name == "fast":
        return read_vasprun_fast
    if name == "pymatgen":
        from esnet_tf.readers.vasp import read_vasprun

        return read_vasprun
    raise ValueError(f"unknown vasprun reader {name!r} (set {READER_ENV} or reader= to one of {', '.join(READERS)})")
