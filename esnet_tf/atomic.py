"""Write files so that readers never see a partial one: temporary name, then rename into place.

    with atomic_path("features.npz") as tmp:   # tmp is beside the target, same suffix
        np.savez_compressed(tmp, ...)
    # features.npz now holds the complete file; on any error the old file is untouched

`os.replace` is atomic on one filesystem, so an interrupted write (SIGKILL, full disk) leaves
either the old file or the new one, never a truncated mix.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path beside `target` (same suffix); renamed onto `target` if the block succeeds."""
    target = Path(target)
    with _naming(target, target.parent / f".{target.name}."):  # errors name `target`, not the temporary
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{''.join(target.suffixes[-1:])}",
                                   dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets the usual permissions
    try:
        with _naming(target, tmp_path):
            yield tmp_path
            os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def _naming(target: Path, tmp: Path) -> Iterator[None]:
    """OSErrors about the hidden temporary `tmp` (a name starting with it), or a full disk, re-raised
    naming the user's `target`, not the hidden temporary file."""
    try:
        yield
    except OSError as exc:
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        if any(n.startswith(str(tmp)) for n in names) or (not names and exc.errno in _DISK_FULL):
            raise type(exc)(exc.errno, exc.strerror or str(exc), str(target)) from None
        raise


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary directory beside `target`; moved onto `target` if the block succeeds.

    With `overwrite`, an existing `target` is replaced only after the block succeeded (moved
    aside, the new one renamed in, the old one removed), so a failed write keeps the old one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists")
    with _naming(target, target.parent / f".{target.name}."):
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        with _naming(target, tmp):
            yield tmp
            old = None
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
                os.replace(target, old / target.name)
            os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def exclusive(target: str | Path, what: str = "output") -> Iterator[None]:
    """Hold an exclusive lock on `target` (a hidden `.NAME.lock` beside it) for the block.

    A second writer gets a one-line `UserError` instead of racing the first. The lock is an
    `flock`, released by the kernel when the holder exits, so a killed run never leaves it stuck.
    """
    import fcntl

    from esnet_tf.errors import UserError

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    fh = open(lock, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise UserError(f"{target}: this {what} is being written by {holder}; wait for it to finish "
                            "or choose another path") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        fh.close()


#: the help of `--overwrite` in the verbs that write files (featurize, evaluate, screen, dft run, uip relax);
#: `{}` names the command's own outputs
OVERWRITE_HELP = ("replace the outputs of an earlier run ({}): each is replaced only when its new version is "
                  "complete; other files are left alone. Without it an existing output is refused")


def refuse_existing(paths: Iterable[str | Path], overwrite: bool, flag: str = "--out") -> None:
    """One line naming the first of `paths` (this command's own outputs) that exists, unless `overwrite`;
    checked before any work, so that a refused run costs nothing."""
    from esnet_tf.errors import UserError

    if overwrite:
        return
    found = [Path(p) for p in paths if Path(p).is_file() or Path(p).is_symlink()]  # a directory: the write's own line
    if found:
        more = f" (and {len(found) - 1} more output(s) of an earlier run)" if len(found) > 1 else ""
        raise UserError(f"{found[0]}: exists{more}: pass --overwrite to replace it, or choose another {flag}")


def refuse_other_tasks(target: str | Path, recorded: Iterable[tuple[str, str]] | None,
                       planned: Iterable[tuple[str, str]], overwrite: bool, replaced: str,
                       flag: str = "--out") -> None:
    """For outputs that resume: one line when `target` holds the results of another task list, unless `overwrite`.

    `recorded`: the (id, key) of every task of the existing output (None: there is none); `planned`:
    those of this run (the key: a hash of the task's input and settings). A run that contains every
    recorded task resumes or extends the output; any other is refused before any work, naming a task
    it lacks. `replaced`: what `--overwrite` would replace, for the message.
    """
    from esnet_tf.errors import UserError

    if overwrite or recorded is None:
        return
    old, new = list(dict.fromkeys(recorded)), set(planned)
    lacking = [t for t in old if t not in new]
    if lacking:
        tid = lacking[0][0]
        how = " with another input or settings" if tid in {i for i, _ in new} else ""
        raise UserError(f"{target}: holds the results of another task list ({len(lacking)} of its {len(old)} "
                        f"task(s) are not in this run, e.g. {tid!r}{how}): pass --overwrite to replace {replaced}, "
                        f"or choose another {flag}")
