"""The `esnet` command: one entry point, one subcommand per verb (DESIGN.md section 6).

This package is the only place that knows argparse. Each verb lives in its own module
`esnet_tf.cli.<verb>` exposing `configure_parser(parser)` and `run(args) -> int`: it turns the
flags into the library's typed config objects and calls library functions. Verb modules are
imported lazily so `esnet --help` stays fast. Errors a user can fix (`esnet_tf.errors.UserError`:
bad input files, missing datasets) end as one line on stderr and exit code 2.

Negative numbers in scientific notation (`--threshold -1e-3`, `--e-min -2E+1`, `-inf`) are values,
not options: argparse only recognises `-1` and `-0.5` as negative numbers, so `main` joins such a
value to the option before it (`--threshold=-1e-3`) for every verb, in one place
(`join_negative_numbers`).
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys

from esnet_tf.errors import UserError

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "featurize": ("esnet_tf.cli.featurize", "DFT outputs -> IS-DOS arrays (.npz)"),
    "train": ("esnet_tf.cli.train", "train ESNet on an IS-DOS dataset"),
    "evaluate": ("esnet_tf.cli.evaluate", "metrics (eV/atom) and parity plot on a split"),
    "predict": ("esnet_tf.cli.predict", "predict formation energies (eV/atom) for DFT files or .npz"),
    "models": ("esnet_tf.cli.models", "list the shipped pretrained models (name, data, MAE eV/atom, F1, size)"),
    "export": ("esnet_tf.cli.export", "export a .keras model as a TF Serving SavedModel"),
    "tune": ("esnet_tf.cli.tune", "KerasTuner architecture search"),
    "screen": ("esnet_tf.cli.screen", "stability screening and DFT-cost analysis"),
    "dataset": ("esnet_tf.cli.dataset", "build (or reuse) an is_dos TFDS dataset; report its cost"),
    "demo": ("esnet_tf.cli.demo", "the whole pipeline on the embedded demo dataset"),
    "dft": ("esnet_tf.cli.dft", "GPAW single points / relaxations that write IS-DOS"),
    "campaign": ("esnet_tf.cli.campaign", "HTVS campaign: stable found vs DFT spent (replay or live GPAW), resumable"),
    "uip": ("esnet_tf.cli.uip", "relax structures with a universal potential (CHGNet; extra uip): E, E_f in eV/atom"),
}


#: a negative number argparse would take for an option: scientific notation, or -inf
_NEGATIVE_NUMBER = re.compile(r"^-(?:(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+|inf(?:inity)?)$", re.IGNORECASE)


def join_negative_numbers(argv: list[str]) -> list[str]:
    """`argv` with each negative number in scientific notation (or -inf) that follows an option
    joined to it: ['--threshold', '-1e-3'] -> ['--threshold=-1e-3'] (argparse would read '-1e-3' as an
    option and report "expected one argument"). Anything after '--' is left alone."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        prev = out[-1] if out else ""
        if _NEGATIVE_NUMBER.match(arg) and prev.startswith("-") and prev != "-" and "=" not in prev \
                and not _NEGATIVE_NUMBER.match(prev):
            out[-1] = f"{prev}={arg}"
        else:
            out.append(arg)
    return out


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esnet", description="ESNet: relaxed formation energy and stability from the "
        "DOS of unrelaxed structures (IS-DOS). Energies in eV, per atom where stated.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(_module=module)
        if name == chosen:  # only the chosen command's module is imported
            _configure(module, p)
    return parser


def _configure(module: str, parser: argparse.ArgumentParser) -> None:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        # accept any arguments so that the import problem, not argparse, is what the user sees
        parser.add_argument("_args", nargs=argparse.REMAINDER)
        parser.set_defaults(_import_error=f"cannot import {module}: {exc} (is the optional extra "
                            "installed, and esnet-tf installed with `pip install -e .`? see README)")
        return
    mod.configure_parser(parser)


def _one_line(exc: BaseException) -> str:
    """The message on one line, printable whatever bytes a file name holds."""
    text = " ".join(str(exc).split())
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _os_hint(exc: OSError) -> str:
    """The fix for an OSError on an output path (the errno decides)."""
    import errno

    if exc.errno == errno.EISDIR:
        return "that path is a directory: name a file, or pass another path"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a part of that path is a file, not a directory: choose another path"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "the path is not writable: choose a writable directory"
    return "check that the disk has space and the path is writable"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("esnet-tf")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = join_negative_numbers(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_import_error", None):
        print(f"esnet {args.command}: {args._import_error}", file=sys.stderr)
        return 2
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except (UserError, FileNotFoundError) as exc:
        print(f"esnet {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only or full disks, permissions: the file and the reason, not a traceback
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"esnet {args.command}: error: {where}{exc.strerror or exc} ({_os_hint(exc)})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"esnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
