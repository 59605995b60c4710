"""esnet-tf: ESNet on the DOS of unrelaxed structures (IS-DOS).

    from esnet_tf import ESNetConfig, build_esnet, featurize
    model = esnet_tf.load_model("ESNet-GPAWDemo-2026.12-EFormPerAtom")   # shipped models: list_models()
    table = model.predict(["vasprun.xml.gz", example])   # eV/atom, with std and a domain column
    esnet_tf.predict_formation_energy(name_or_model, inputs)   # the same in one call

TensorFlow is imported only when a model-related name is first used. On a Linux machine without an
NVIDIA device, the lines TensorFlow prints while it probes for CUDA ("Could not find cuda drivers",
"failed call to cuInit") are dropped, and only those: see `quiet_cuda_probe`.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

from esnet_tf.isdos import ORBITALS, PAPER_GRID, DOSInputError, EnergyGrid, ISDOSExample

__version__ = "0.1.0"

_LAZY = {
    "featurize": "esnet_tf.featurize",
    "ESNetConfig": "esnet_tf.model",
    "build_esnet": "esnet_tf.model",
    "load_model": "esnet_tf.pretrained",
    "predict_formation_energy": "esnet_tf.pretrained",
    "list_models": "esnet_tf.pretrained",
}

__all__ = ["ORBITALS", "PAPER_GRID", "DOSInputError", "EnergyGrid", "ISDOSExample", *_LAZY]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'esnet_tf' has no attribute {name!r}")


# ---------------------------------------------------------------- TensorFlow's CUDA probe
#
# The `tensorflow` wheel is built with CUDA. On a machine without a GPU its import logs "Could not
# find cuda drivers on your machine" (xla/tsl/cuda/cudart_stub.cc, once per library that loads the
# stub, each after absl's "All log messages before absl::InitializeLog()" banner) and its first
# device query logs "failed call to cuInit ... (303)" at ERROR level. They come from C++ straight to
# file descriptor 2 before TF_CPP_MIN_LOG_LEVEL applies to them (TF 2.21: even level 3 keeps the
# stub's lines), and CUDA_VISIBLE_DEVICES="" does not stop the cuInit call. So, only where no CUDA
# device can exist, the first `import tensorflow` and its device query run with fd 2 sent to a
# temporary file, which is then written back to fd 2 without the lines below, in order.

#: the lines dropped: TensorFlow's CUDA probe when there is no GPU, nothing else
CUDA_PROBE_LINES = re.compile(
    rb"cudart_stub\.cc:\d+\] Could not find cuda drivers"
    rb"|failed call to cuInit"
    rb"|^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$")
#: set to 1 to keep TensorFlow's CUDA probe lines
KEEP_ENV = "ESNET_CUDA_PROBE_LOG"


def cuda_device_possible() -> bool:
    """Whether this machine may have a CUDA device: not Linux, or an NVIDIA (or WSL GPU) device node."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(glob.glob("/dev/nvidia*")) or os.path.exists("/dev/dxg")


@contextlib.contextmanager
def quiet_cuda_probe(pattern: re.Pattern[bytes] = CUDA_PROBE_LINES) -> Iterator[None]:
    """Run the block with file descriptor 2 captured; afterwards write back every line not matching `pattern`.

    Lines keep their order. Python-level writes to `sys.stderr` are flushed into the capture first, so
    they stay in order with TensorFlow's C++ output. If fd 2 cannot be duplicated, nothing is captured.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = b"".join(line for line in tmp.read().splitlines(keepends=True)
                            if not pattern.search(line.rstrip(b"\r\n")))
            view = memoryview(kept)
            while view:
                view = view[os.write(2, view):]


class _QuietLoader(importlib.abc.Loader):
    """Wraps TensorFlow's own loader: its module body and first device query run in `quiet_cuda_probe`."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        _remove_quiet_tensorflow_import()  # tensorflow is being imported: the finder's work is done
        with quiet_cuda_probe():
            self.loader.exec_module(module)
            module.config.list_physical_devices()  # cuInit happens here, once per process


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` the usual way and hands back its spec with `_QuietLoader`.

    It stays in `sys.meta_path` until tensorflow is actually imported: a mere availability check
    (`importlib.util.find_spec("tensorflow")`, as tensorflow-datasets makes) must not use it up."""

    def __init__(self) -> None:
        self._finding = False

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow" or self._finding:
            return None
        self._finding = True  # the lookup below passes through `sys.meta_path` again
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding = False
        if spec is not None and spec.loader is not None and not isinstance(spec.loader, _QuietLoader):
            spec.loader = _QuietLoader(spec.loader)
        return spec


def _remove_quiet_tensorflow_import() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowImport)]


def _install_quiet_tensorflow_import() -> None:
    if ("tensorflow" in sys.modules or os.environ.get(KEEP_ENV) == "1" or cuda_device_possible()
            or any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path)):
        return
    sys.meta_path.insert(0, _QuietTensorFlowImport())


_install_quiet_tensorflow_import()
