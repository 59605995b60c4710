"""Plots of `esnet evaluate` and `esnet screen`: the one parity plot, and recall against DFT cost.

PNG files, written to a temporary name and renamed into place; matplotlib's Agg backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from esnet_tf.atomic import atomic_path

if TYPE_CHECKING:
    from esnet_tf.screening.pipeline import ScreenResult


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int) -> Path:
    """Write `fig` as a PNG at `path` (temporary name, then rename) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return Path(path)


def parity_plot(y_true: np.ndarray, y_pred: np.ndarray, path: str | Path, *, quantity: str = "formation energy",
                title: str = "", threshold: float | None = 0.0, stable: np.ndarray | None = None) -> Path:
    """Predicted against true `quantity` (eV/atom) with the y = x line; a PNG at `path`.

    `threshold` (eV/atom) draws the stability lines; `stable` (bool per point) colours truly
    stable points green, the others red. Pairs with a NaN are not drawn.
    """
    plt = pyplot()
    y, p = np.asarray(y_true, float).ravel(), np.asarray(y_pred, float).ravel()
    ok = np.isfinite(y) & np.isfinite(p)
    colours: Any = None
    if stable is not None:
        colours = np.where(np.asarray(stable, bool).ravel()[ok], "tab:green", "tab:red")
    y, p = y[ok], p[ok]
    lo = float(min(y.min(), p.min())) if len(y) else -1.0
    hi = float(max(y.max(), p.max())) if len(y) else 1.0
    pad = 0.05 * (hi - lo or 1.0)
    fig, ax = plt.subplots(figsize=(4.6, 4.5))
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="y = x")
    ax.scatter(y, p, s=10, alpha=0.7, edgecolors="none", c=colours)
    if threshold is not None and lo - pad < threshold < hi + pad:
        ax.axvline(threshold, color="0.6", ls=":", lw=0.7)
        ax.axhline(threshold, color="0.6", ls=":", lw=0.7)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(f"true {quantity} (eV/atom)" + ("; green: truly stable" if stable is not None else ""))
    ax.set_ylabel(f"predicted {quantity} (eV/atom)")
    ax.set_title(title or (f"n = {len(y)}" if len(y) else "no pairs to plot"), fontsize=9)
    ax.set_aspect("equal")
    fig.tight_layout()
    return save_figure(fig, Path(path), 150)


def recall_cost_plot(result: "ScreenResult", path: str | Path) -> Path:
    """Recall of truly stable candidates against the DFT cost fraction, model-threshold and target-recall points."""
    plt = pyplot()
    c, m = result.curve, result.metrics
    cost = m["cost"]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.plot(c["cost_fraction"], c["recall"], label="IS single points + chosen relaxations")
    if cost["is_single_point_total_s"]:
        ax.plot(c["relax_cost_fraction"], c["recall"], "--", label="relaxations only")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="random order (relaxations only)")
    ax.axvline(1.0, color="k", lw=0.6)
    pt = cost["at_model_threshold"]
    if pt["recall"] is not None:
        ax.plot(pt["cost_fraction"], pt["recall"], "o", label=f"model threshold ({pt['cost_reduction']:.0%} saved)")
    tr = cost["at_target_recall"]
    if tr is not None:
        ax.plot(tr["cost_fraction"], tr["recall"], "s",
                label=f"recall {tr['target_recall']:.0%} ({tr['cost_reduction']:.0%} saved)")
    ax.set_xlabel("DFT cost / cost of relaxing every candidate")
    ax.set_ylabel("recall of truly stable candidates")
    ax.set_title(f"{m['n_candidates']} candidates, cost: {cost['source'].split(' from ')[0][:40]}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, Path(path), 120)


def screen_plots(result: "ScreenResult", out_dir: str | Path) -> list[Path]:
    """recall_vs_cost.png (when there is a cost curve) and predicted_vs_true.png of a screening result."""
    out_dir = Path(out_dir)
    m = result.metrics
    paths = []
    if result.curve is not None:
        paths.append(recall_cost_plot(result, out_dir / "recall_vs_cost.png"))
    x, y, stable = result.parity_arrays()
    mae, f1 = m.get("mae"), m.get("f1")
    title = (f"MAE {mae:.3f} eV/atom, F1 {f1 or 0:.2f}, n = {int(np.sum(np.isfinite(x) & np.isfinite(y)))}"
             if mae is not None else "no truths")
    paths.append(parity_plot(x, y, out_dir / "predicted_vs_true.png",
                             quantity="E_hull" if m["mode"] == "ehull" else "formation energy",
                             title=title, threshold=m["threshold_eV_per_atom"], stable=stable))
    return paths
