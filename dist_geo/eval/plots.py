"""Pictures of an evaluation, as PNG files (matplotlib, Agg backend: no display needed).

- recall@N curves of several runs (or splits, or test-time methods) on one plot;
- a grid of queries, each followed by its top retrieved database images, framed green when
  within the positive threshold and red otherwise, titled with their distance in metres.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dist_geo.atomic import atomic_path
from dist_geo.eval.evaluate import SplitResult  # noqa: E402

RIGHT, WRONG = "#1a9850", "#d73027"
THUMB_SIDE = 160


def _save(fig: plt.Figure, path: Path) -> Path:
    """Rendered to a temporary name then renamed, like every file we write."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def plot_recall_curves(
    curves: Mapping[str, Mapping[str, float]], recall_values: Sequence[int], path: str | Path
) -> Path:
    """One line per label: recall@N (%) against N, from metrics dicts as `evaluate` returns."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, metrics in curves.items():
        ax.plot(recall_values, [metrics[f"recall_at_{n}"] for n in recall_values],
                marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xticks(list(recall_values), [str(n) for n in recall_values])
    ax.set_xlabel("N")
    ax.set_ylabel("recall@N (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def _thumb(path: str) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        return np.asarray(image)


def _frame(ax: plt.Axes, colour: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)


def plot_retrievals(
    result: SplitResult,
    path: str | Path,
    threshold: float,
    num_queries: int = 6,
    top: int = 5,
    seed: int = 0,
) -> Path:
    """Rows of (query, its `top` predictions), for `num_queries` random queries of the split."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(result.queries))[:num_queries])
    top = min(top, result.predictions.shape[1])
    fig, axes = plt.subplots(len(chosen), top + 1, figsize=(2 * (top + 1), 2.1 * len(chosen)),
                             squeeze=False)
    for row, q in zip(axes, chosen):
        query = result.queries[q]
        row[0].imshow(_thumb(query.path))
        row[0].set_title(f"query {q}", fontsize=8)
        _frame(row[0], "black")
        for ax, db_index in zip(row[1:], result.predictions[q, :top]):
            match = result.database[db_index]
            metres = float(np.hypot(match.utm_east - query.utm_east,
                                    match.utm_north - query.utm_north))
            ax.imshow(_thumb(match.path))
            ax.set_title(f"{metres:.0f} m", fontsize=8)
            _frame(ax, RIGHT if metres <= threshold else WRONG)
    fig.suptitle(f"{result.split}: top-{top} predictions (green = within {threshold:g} m)",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))
