"""Bounded reading: what a reader may inflate, read and hold per input file.

A small compressed file can expand to gigabytes (a gzip bomb), an `.npz` can hold members nobody
asked for, and a path can name a device (`/dev/zero`) or a FIFO that never ends. Every reader
opens its input through this module:

- `regular_file(path)` refuses anything but a regular file, after resolving symlinks;
- `open_bounded(path)` streams the decompressed bytes (`.gz`, `.bz2`, `.xz`, `.Z`, or plain) and
  stops with `InputLimitError` as soon as they pass the limit: never more than the limit is
  inflated, and the reader holds only what it keeps of it;
- `read_bounded(path, fraction)` returns the whole content of a file the reader decodes at once
  (JSON, POSCAR), with a smaller share of the limit;
- `load_npz(path, names)` reads only the named members of an `.npz`, without pickle, after
  checking each member's uncompressed size in the zip directory and its `.npy` header.

The limit: `ESNET_MAX_INFLATED_BYTES` (bytes, or with a unit: `4GiB`, `500MB`), default 2 GiB per
input file (`DEFAULT_MAX_INFLATED_BYTES`). What each reader may hold in memory is a share of it:
a quarter for what the vasprun.xml reader parses and keeps; an eighth for the text of a JSON document
or a POSCAR (decoded whole; `check_json_size` also caps a JSON's estimated Python objects at half the
limit); the DOSCAR reader sums as it streams and holds one line and one atom's block. With the
default limit, the compressed-bomb probes peaked below 0.7 GB (see docs/input.md). The error names
the file, the limit that was hit and how to raise it.
"""
from __future__ import annotations

import bz2
import functools
import gzip
import io
import lzma
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from esnet_tf.errors import DOSInputError, UserError

#: environment variable overriding the per-file limit (bytes; units B, KB, MB, GB, KiB, MiB, GiB accepted)
LIMIT_ENV = "ESNET_MAX_INFLATED_BYTES"
#: default per-file limit on inflated (decompressed) bytes: 2 GiB
DEFAULT_MAX_INFLATED_BYTES = 2 << 30
#: compressed bytes read per step (the output of each step is capped separately)
_RAW_CHUNK = 1 << 20
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10 ** 6, "mb": 10 ** 6, "g": 10 ** 9, "gb": 10 ** 9,
          "t": 10 ** 12, "tb": 10 ** 12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


class InputLimitError(DOSInputError):
    """An input file passes a size limit of bounded reading (the message names the limit and the fix)."""


def human(n: int | float) -> str:
    """Bytes as '2 GiB', '512 MiB', '1.5 KiB'."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def max_inflated_bytes() -> int:
    """The per-file limit (bytes): $ESNET_MAX_INFLATED_BYTES, else 2 GiB. A bad value raises UserError."""
    raw = os.environ.get(LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_INFLATED_BYTES
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?(?:[eE][0-9]+)?)\s*([A-Za-z]*)", raw)
    unit = m and _UNITS.get(m.group(2).lower())
    if not m or unit is None or float(m.group(1)) * unit < 1:
        raise UserError(f"{LIMIT_ENV}={raw!r}: give a positive number of bytes, e.g. 4GiB or 500MB")
    return int(float(m.group(1)) * unit)


def limit_error(path: Path | str, limit: int, what: str = "inflates past", share: str = "") -> InputLimitError:
    """The one-line refusal: which limit was hit, and how to raise it."""
    total = max_inflated_bytes()
    where = (f"{share} of the {human(total)} per-file limit of bounded reading (the share a reader may hold "
             "in memory)") if share else "the per-file limit of bounded reading"
    return InputLimitError(path, f"{what} {human(limit)}, {where}",
                           f"if the file is genuine, raise the limit with the environment variable {LIMIT_ENV}, "
                           f"e.g. {LIMIT_ENV}={_spec(2 * total)}")


def _spec(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{-(-n // size)}{unit}"
    return str(n)


def _share(fraction: float) -> tuple[int, str]:
    total = max_inflated_bytes()
    if fraction >= 1:
        return total, ""
    return max(1, int(total * fraction)), {0.5: "half", 0.25: "a quarter", 0.125: "an eighth"}.get(
        fraction, f"{fraction:g}")


def regular_file(path: str | Path) -> Path:
    """`path` when it is (or links to) a regular file; else `DOSInputError` naming what it is.

    FIFOs, sockets and devices (`/dev/zero`, `/dev/urandom`, also behind a symlink) never end or
    block: they are refused before anything is read.
    """
    path = Path(path)
    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        raise DOSInputError(path, "no such file", "check the path") from None
    except OSError as exc:
        raise DOSInputError(path, f"cannot read ({exc.strerror or exc})",
                            "check the path and its permissions") from None
    if stat.S_ISREG(st.st_mode):
        return path
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
            else "a character device" if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
            else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
    target = os.path.realpath(path)
    via = f" (the link resolves to {target})" if target != os.path.abspath(path) else ""
    raise DOSInputError(path, f"is {kind}{via}, not a regular file", "pass the DFT output file itself")


class _ReadStream(io.RawIOBase):
    """A readable raw stream whose subclasses implement only `read(size)`."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


class _Inflate(_ReadStream):
    """Decompressed bytes of a gzip file (every member; each member's CRC-32 and size checked by zlib),
    produced at most `size` bytes per read: a bomb never inflates more than asked for."""

    def __init__(self, fh) -> None:
        self._fh = fh
        self._z = _decompressor()
        self._in = b""
        self._fed = False
        self._done = False

    def read(self, size: int = -1) -> bytes:
        size = 1 << 22 if size is None or size < 0 else size
        out: list[bytes] = []
        n = 0
        while n < size and not self._done:
            if not self._in:
                self._in = self._fh.read(_RAW_CHUNK)
                if not self._in:
                    if self._fed and not self._z.eof:
                        raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                    self._done = True
                    break
            if self._z.eof:  # a member ended: zero padding, or the next member
                rest = self._in.lstrip(b"\0")
                self._in = rest
                if not rest:
                    continue
                self._z = _decompressor()
            self._fed = True
            piece = self._z.decompress(self._in, size - n)
            self._in = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
            out.append(piece)
            n += len(piece)
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:
        self._fh.close()
        super().close()


def _decompressor(wbits: int = 31):
    """ISA-L's decompressor (same API and checks as zlib's, about 2x faster), else zlib's; `wbits` 31:
    gzip, -15: raw deflate."""
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.decompressobj(wbits)
    return isal_zlib.decompressobj(wbits)


class _Counted(_ReadStream):
    """A byte stream that raises `InputLimitError` once more than `limit` bytes have come out of it."""

    def __init__(self, inner, path: Path, limit: int, share: str) -> None:
        self._inner = inner
        self._path = path
        self.limit = limit
        self._share = share
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        room = self.limit + 1 - self.count  # one byte past the limit proves it is passed (room >= 1 here)
        data = self._inner.read(room if size is None or size < 0 else min(size, room))
        self.count += len(data)
        if self.count > self.limit:
            raise limit_error(self._path, self.limit, share=self._share)
        return data

    def readall(self) -> bytes:
        parts = []
        while True:
            data = self.read(1 << 22)
            if not data:
                return b"".join(parts)
            parts.append(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


def open_bounded(path: str | Path, fraction: float = 1.0) -> io.BufferedReader:
    """A buffered binary stream of `path`'s decompressed content (by suffix: .gz, .bz2, .xz/.lzma, .Z,
    else plain) that raises `InputLimitError` once it passes `fraction` of the per-file limit.

    Special files are refused first (`regular_file`); a plain file larger than the limit is
    refused from its size, before reading.
    """
    path = regular_file(path)
    limit, share = _share(fraction)
    suffix = path.suffix.upper()
    if suffix not in (".GZ", ".Z", ".BZ2", ".XZ", ".LZMA") and path.stat().st_size > limit:
        raise limit_error(path, limit, what=f"is {human(path.stat().st_size)}, past", share=share)
    fh = open(path, "rb")
    try:
        inner = (_Inflate(fh) if suffix == ".GZ" else gzip.GzipFile(fileobj=fh) if suffix == ".Z"
                 else bz2.BZ2File(fh) if suffix == ".BZ2" else lzma.LZMAFile(fh) if suffix in (".XZ", ".LZMA")
                 else fh)
    except Exception:
        fh.close()
        raise
    return io.BufferedReader(_Counted(inner, path, limit, share), buffer_size=1 << 20)


def read_bounded(path: str | Path, fraction: float = 0.125) -> bytes:
    """The whole decompressed content of `path` (for formats decoded at once), at most `fraction` of the limit."""
    with open_bounded(path, fraction) as fh:
        return fh.read()


def check_size(path: str | Path, fraction: float = 0.25) -> Path:
    """Stream `path` once, keeping nothing, and raise `InputLimitError` if it inflates past `fraction`
    of the per-file limit: for libraries (pymatgen) that then read the whole file themselves."""
    if not Path(path).exists():
        return Path(path)  # the library's own 'no such file' applies
    with open_bounded(path, fraction) as fh:
        while fh.read(1 << 22):
            pass
    return Path(path)


def check_json_size(data: bytes, path: str | Path, fraction: float = 0.5) -> bytes:
    """`data` (a JSON text) unless the Python objects it decodes to would take more than `fraction` of the
    per-file limit: estimated from its brackets and commas (about 64 bytes per list or dict, 32 per
    element), since `[[],[],...]` takes 20 times its text once decoded."""
    estimate = len(data) + 64 * (data.count(b"[") + data.count(b"{")) + 32 * data.count(b",")
    limit, share = _share(fraction)
    if estimate > limit:
        raise limit_error(path, limit, what=f"would decode to about {human(estimate)} of Python objects, past",
                          share=share)
    return data


# ---------------------------------------------------------------- .npz

def npz_members(path: str | Path) -> dict[str, zipfile.ZipInfo]:
    """{array name: zip entry} of an `.npz` (the zip directory only; nothing is inflated)."""
    path = regular_file(path)
    with _open_npz(path) as zf:
        return _members(zf)


def _open_npz(path: Path) -> zipfile.ZipFile:
    """The zip directory of a regular file `path`; `DOSInputError` when it is not a readable zip."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DOSInputError(path, f"cannot read npz ({type(exc).__name__}: {exc})",
                            "the file is truncated or not an .npz: write it again") from None


def _members(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    return {i.filename[:-4] if i.filename.endswith(".npy") else i.filename: i for i in zf.infolist()}


#: the header `numpy.lib.format` writes for a plain dtype (no fields): parsed by one match instead of
#: `ast.literal_eval` (0.07 ms a member, most of reading a small `.npz`); anything else goes to numpy
_NPY_HEADER = re.compile(rb"\{'descr': '([<>|=]?[A-Za-z][0-9]*)', 'fortran_order': (True|False), "
                         rb"'shape': \(((?:[0-9]+, )*[0-9]+,?)?\), \} *\n")
#: numpy's `max_header_size` default: a longer header is refused (by numpy, on the slow path)
_NPY_MAX_HEADER = 10000


def read_npy_header(fh, member: str = "") -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the `.npy` stream `fh` (format 1.0 or 2.0), leaving `fh` at the
    data: what `numpy.lib.format.read_magic` and `read_array_header_1_0/2_0` give, with their errors
    (ValueError naming what is wrong; another format version: ValueError naming `member`). The header
    numpy writes is matched directly; any other goes through numpy's own parser."""
    magic = fh.read(8)
    head = magic
    if len(magic) == 8 and magic[:6] == b"\x93NUMPY" and magic[6:8] in (b"\x01\x00", b"\x02\x00"):
        size = 2 if magic[6] == 1 else 4
        raw = fh.read(size)
        head += raw
        if len(raw) == size:
            n = int.from_bytes(raw, "little")
            header = fh.read(n)
            head += header
            m = _NPY_HEADER.fullmatch(header) if len(header) == n and n <= _NPY_MAX_HEADER else None
            try:
                dtype = _npy_dtype(m.group(1).decode("latin1")) if m is not None else None
            except TypeError:  # not a dtype: numpy's error below
                dtype = None
            if dtype is not None:
                shape = tuple(int(x) for x in m.group(3).split(b",") if x.strip()) if m.group(3) else ()
                return shape, m.group(2) == b"True", dtype
    slow = io.BytesIO(head)  # numpy parses what was read (and names what is wrong with it)
    version = np.lib.format.read_magic(slow)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"member {member!r}: .npy format {version} is not read here")
    return read(slow)


@functools.lru_cache(maxsize=256)
def _npy_dtype(descr: str) -> np.dtype:
    return np.dtype(descr)  # numpy.lib.format.descr_to_dtype of a plain descr string


def read_exact(fh, nbytes: int, name: str) -> bytearray:
    """Exactly `nbytes` from the open zip member `fh` (in 16 MiB reads); EOFError naming member `name`
    when it is cut short."""
    buf = bytearray(nbytes)
    view, got = memoryview(buf), 0
    while got < nbytes:
        n = fh.readinto(view[got:got + (1 << 24)])
        if not n:
            raise EOFError(f"member {name!r} is cut short")
        got += n
    return buf


def load_npz(path: str | Path, names: Iterable[str], *, required: Iterable[str] = (),
             fraction: float = 1.0) -> dict[str, np.ndarray]:
    """The members `names` of an `.npz` that exist (those in `required` must), as arrays, without pickle.

    Other members are never inflated. Before a member is read, its uncompressed size in the zip
    directory, and the size its `.npy` header declares, must be within `fraction` of the per-file
    limit (together, for all the members read); object arrays are refused.
    """
    path = regular_file(path)
    with _open_npz(path) as zf:  # one open for the directory and the members
        return _load_members(path, zf, _members(zf), names, required, fraction)


#: members up to this size (uncompressed) are inflated in one call (`_small_member`)
_ONE_SHOT_BYTES = 1 << 20


def _small_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes | None:
    """The content of a small stored or deflated member, CRC-checked, in one read and one inflate call
    (zipfile's member stream costs about 0.1 ms a member: most of reading a small `.npz`); None for
    anything else or anything unexpected, which the caller then reads through zipfile (and its errors)."""
    if info.file_size > _ONE_SHOT_BYTES or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) \
            or info.flag_bits & 0x61:  # encrypted, compressed patched data, strong encryption
        return None
    fp = zf.fp
    try:
        fp.seek(info.header_offset)
        head = fp.read(30)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            return None
        n_name, n_extra = int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
        if fp.read(n_name) != info.orig_filename.encode("utf-8"):
            return None
        fp.seek(n_extra, os.SEEK_CUR)
        raw = fp.read(info.compress_size)
        if len(raw) != info.compress_size:
            return None
        if info.compress_type == zipfile.ZIP_STORED:
            data = raw
        else:
            inflate = _decompressor(-15)  # raw deflate
            data = inflate.decompress(raw, info.file_size)  # never more than the directory declares
            if not inflate.eof:
                return None
    except Exception:  # noqa: BLE001  (zlib / ISA-L errors, I/O): zipfile reads it and names the problem
        return None
    return data if len(data) == info.file_size and zlib.crc32(data) == info.CRC else None


def _load_members(path: Path, zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], names: Iterable[str],
                  required: Iterable[str], fraction: float) -> dict[str, np.ndarray]:
    missing = [n for n in required if n not in members]
    if missing:
        raise DOSInputError(path, f"missing arrays {missing}", "write it again with esnet-tf")
    limit, share = _share(fraction)
    wanted = [n for n in dict.fromkeys(names) if n in members]
    declared = sum(members[n].file_size for n in wanted)
    if declared > limit:
        big = max(wanted, key=lambda n: members[n].file_size)
        raise limit_error(path, limit, what=f"member {big!r} ({human(members[big].file_size)} uncompressed) "
                          f"brings the arrays read to {human(declared)}, past", share=share)
    out = {}
    try:
        for name in wanted:
            info = members[name]
            small = _small_member(zf, info)
            with (io.BytesIO(small) if small is not None else zf.open(info)) as fh:
                shape, fortran, dtype = read_npy_header(fh, name)
                if dtype.hasobject:
                    raise DOSInputError(path, f"member {name!r} holds Python objects (pickle)",
                                        "esnet-tf never unpickles; write it again with esnet-tf")
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if nbytes > info.file_size:
                    raise DOSInputError(path, f"member {name!r} declares {human(nbytes)} of data in "
                                        f"{human(info.file_size)}", "the file is corrupt: write it again")
                buf = read_exact(fh, nbytes, name)
                out[name] = np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    except DOSInputError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as exc:
        raise DOSInputError(path, f"cannot read npz ({type(exc).__name__}: {str(exc)[:150]})",
                            "the file is truncated or corrupt: write it again") from None
    return out
