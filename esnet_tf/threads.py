"""The thread environment of child processes: the one place that sets it.

Worker processes (featurizing pools, DFT jobs, universal-potential relaxations, study workers) run
several at a time on a few cores; each should use `threads` math-library threads, not one per core:

    subprocess.Popen(cmd, env=thread_env(1))          # an explicit child environment
    with inherited_thread_env(1):                      # children spawned in the block inherit it
        pool = multiprocessing.get_context("spawn").Pool(4)
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

#: The variables that size the OpenMP / OpenBLAS / MKL thread pools (TensorFlow's CPU kernels,
#: NumPy's BLAS, GPAW, torch read them at start-up).
THREAD_VARIABLES: tuple[str, ...] = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: One thread each: the environment of a single-threaded child process.
SINGLE_THREAD_ENV: Mapping[str, str] = {k: "1" for k in THREAD_VARIABLES}


def thread_env(threads: int = 1, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with every `THREAD_VARIABLES` set to `threads`."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    return {**(os.environ if base is None else base), **{k: str(threads) for k in THREAD_VARIABLES}}


@contextlib.contextmanager
def inherited_thread_env(threads: int = 1) -> Iterator[None]:
    """Set `THREAD_VARIABLES` to `threads` in `os.environ` for the block (processes spawned in it
    inherit them), then restore the previous values."""
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update(thread_env(threads, {}))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
