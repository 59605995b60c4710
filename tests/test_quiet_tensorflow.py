"""No CUDA probe noise from TensorFlow on a machine without a GPU, and nothing else lost.

`esnet_tf/__init__.py` runs the first `import tensorflow` (and its device query) with stderr captured
and writes back every line except TensorFlow's CUDA probe (`CUDA_PROBE_LINES`), only on a Linux machine
without an NVIDIA device node.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import esnet_tf

ESNET = Path(sys.executable).with_name("esnet")
PROBE = ("cuInit", "Could not find cuda drivers", "absl::InitializeLog")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != esnet_tf.KEEP_ENV}
    env.update(OMP_NUM_THREADS="1", TF_NUM_INTEROP_THREADS="1", TF_NUM_INTRAOP_THREADS="1")
    return env


def test_filter_drops_only_the_probe_lines_and_keeps_the_order(capfd):
    with esnet_tf.quiet_cuda_probe():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
                    b"not be used.\n")
        print("python warning before", file=sys.stderr)
        os.write(2, b"W0000 00:00:2.0 1 some_op.cc:12] a real warning\n")
        os.write(2, b"E0000 00:00:3.0 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: (303)\n")
        os.write(2, b"E0000 00:00:4.0 1 other.cc:7] a real error, no newline at the end")
    err = capfd.readouterr().err
    assert err == ("python warning before\nW0000 00:00:2.0 1 some_op.cc:12] a real warning\n"
                   "E0000 00:00:4.0 1 other.cc:7] a real error, no newline at the end")


def test_filter_writes_back_what_was_captured_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError, match="boom"), esnet_tf.quiet_cuda_probe():
        os.write(2, b"kept line\nfailed call to cuInit: x\n")
        raise RuntimeError("boom")
    assert capfd.readouterr().err == "kept line\n"


def test_esnet_help_prints_no_cuda_probe():
    out = subprocess.run([str(ESNET), "--help"], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0 and "featurize" in out.stdout
    assert not any(p in out.stderr for p in PROBE), out.stderr


def _assert_quiet_python(code: str, stdout_start: str) -> None:
    """Run `code` (which prints a result, then 'a real message' on stderr) in a new Python: it succeeds, prints
    `stdout_start`..., and its stderr holds no probe line and ends with the real message."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(stdout_start)
    assert not any(p in out.stderr for p in PROBE), out.stderr
    assert out.stderr.rstrip().endswith("a real message")


@pytest.mark.skipif(esnet_tf.cuda_device_possible(), reason="a CUDA device may exist: the probe is not filtered")
def test_tensorflow_through_esnet_tf_prints_no_cuda_probe():
    """The real import and first op: what every model command does (this TF wheel probes CUDA at both)."""
    _assert_quiet_python("import esnet_tf.model, tensorflow as tf, sys; print(float(tf.constant(2.0) + 1.0), "
                         "[d.device_type for d in tf.config.list_physical_devices()]); "
                         "print('a real message', file=sys.stderr)", "3.0 ['CPU']")


@pytest.mark.skipif(esnet_tf.cuda_device_possible(), reason="a CUDA device may exist: the probe is not filtered")
def test_an_availability_check_before_the_import_keeps_it_quiet():
    """tensorflow-datasets checks `importlib.util.find_spec("tensorflow")` before importing it (the `esnet demo`
    training step printed cuInit that way): the import that follows is still filtered."""
    _assert_quiet_python("import importlib.util, sys, esnet_tf; "
                         "assert importlib.util.find_spec('tensorflow') is not None; "
                         "import tensorflow as tf; print(float(tf.constant(2.0) + 1.0)); "
                         "print('a real message', file=sys.stderr)", "3.0")
