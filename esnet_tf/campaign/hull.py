"""The final answer of a replay: every candidate's true E_hull once everything is known (eV/atom).

The campaign's hull during the rounds (references plus the candidates relaxed so far) is the
screening module's one hull wrapper, `esnet_tf.screening.references.ReferenceHull` (per chemical
system, rebuilt only where a relaxation added an entry).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from esnet_tf.screening.references import ReferenceHull, ReferenceSet


def true_e_above_hull(refs: ReferenceSet, comps: Sequence[Any], truth: np.ndarray, ids: Sequence[str]) -> np.ndarray:
    """E_hull (eV/atom) of every candidate's true E_f against references + all candidates' truths."""
    hull = ReferenceHull(refs)
    for c, f, i in zip(comps, truth, ids):
        if np.isfinite(f):
            hull.add(c, float(f), str(i))
    return hull.e_above_hull_many(comps, truth)
