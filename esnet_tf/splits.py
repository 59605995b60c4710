"""Deterministic train/validation/test splits grouped by chemical system.

Every example of a chemical system (e.g. all Fe-O polymorphs and compositions) lands in the
same split, chosen by a hash of the chemical system string, so splits do not depend on the
order or the number of examples and never leak a chemical system across splits.
"""
from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")
#: default fractions of chemical systems (not of examples) per split
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def split_of(chemsys: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, seed: int = 0) -> str:
    """Split name for a chemical system such as 'Fe-O' (element order does not matter)."""
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    key = "-".join(sorted(chemsys.split("-")))
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2 ** 64
    edge = 0.0
    for name, frac in zip(SPLITS, fractions):
        edge += frac
        if h < edge:
            return name
    return SPLITS[-1]


def kfold_of(chemsys: str, k: int, seed: int = 0) -> int:
    """Fold index 0..k-1 of a chemical system for grouped k-fold cross-validation."""
    key = "-".join(sorted(chemsys.split("-")))
    h = int.from_bytes(hashlib.sha256(f"fold{seed}:{key}".encode()).digest()[:8], "big")
    return h % k
