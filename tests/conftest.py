"""Shared test fixtures: the real DFT files of ../shared/fixtures (skipped when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# `auto` precision caches its measurements; tests never write (or read) the user's ~/.cache
os.environ.setdefault("ESNET_PRECISION_CACHE", str(Path(__import__("tempfile").mkdtemp(prefix="esnet-precision-"))
                                                  / "precision.json"))

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("ESNET_FIXTURES", ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """../shared/fixtures, or skip: the real VASP / Materials Project files live there."""
    if not FIXTURES.is_dir():
        pytest.skip(f"real DFT fixtures not found at {FIXTURES} (../shared is absent; set ESNET_FIXTURES)")
    return FIXTURES
