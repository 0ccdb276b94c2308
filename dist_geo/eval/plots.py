"""Pictures of a training run and of an evaluation, as PNG files (matplotlib, Agg backend: no
display needed). Each answers one question a person asks:

- `plot_training`: is it learning? The loss per logged step, the epochs (and the group each
  trains, CosPlace's schedule) as bands, val recall@1 at each epoch's end on a second axis.
- `plot_recall_curves`: how good, against what? recall@N against N for several models (runs,
  the raw-pixel baseline, the demo's untrained network) and splits on one plot.
- `plot_recall_bars`: the demo's table at a glance: recall@N per model, one panel per split.
- `plot_retrievals`: what does it get right and wrong? Queries it places right and queries it
  places wrong, each with its top predictions (framed green within the positive threshold, red
  beyond, titled with their distance) and, last, the right database image it should have put
  first when the row does not show one: the first right one it retrieved further down (and
  its rank), else its closest positive.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dist_geo.atomic import atomic_path  # noqa: E402
from dist_geo.eval.evaluate import SplitResult  # noqa: E402
from dist_geo.eval.recall import first_hit_rank, utm_array  # noqa: E402

RIGHT, WRONG, NEUTRAL = "#1a9850", "#d73027", "#777777"
STYLES = ("-", "--", ":", "-.")
LOSS, RECALL = "#2166ac", "#e08214"
THUMB_SIDE = 160

Series = Sequence[tuple[int, float]]  # (step, value)
Models = Mapping[str, Mapping[str, Mapping[str, float]]]  # {model: {split: metrics}}


def _save(fig: plt.Figure, path: Path) -> Path:
    """Rendered to a temporary name then renamed, like every file we write."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def plot_training(loss: Series, val_recall: Series, epoch_ends: Series, num_groups: int,
                  path: str | Path) -> Path:
    """The training curves of one run from its MLflow history: `loss` (step, mean loss),
    `val_recall` (step, val recall@1 %) and `epoch_ends` (step, epoch number) at each epoch's
    last step."""
    fig, ax = plt.subplots(figsize=(9, 4.2))
    starts = [0, *(step for step, _ in epoch_ends[:-1])]
    for start, (end, epoch) in zip(starts, epoch_ends):
        group = int(epoch) % num_groups
        ax.axvspan(start, end, color=f"C{group % 10}", alpha=0.08, lw=0)
        ax.axvline(end, color=NEUTRAL, lw=0.6, ls=":")
        if len(epoch_ends) <= 16:  # labels stay legible
            ax.text((start + end) / 2, 1.0, f"epoch {int(epoch)}\ngroup {group}",
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7)
    if loss:
        ax.plot(*zip(*loss), color=LOSS, lw=1.2, label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss", color=LOSS)
    ax.grid(alpha=0.3)
    last = max([step for step, _ in [*loss, *epoch_ends]], default=1)
    ax.set_xlim(0, last * 1.04)
    handles = ax.get_legend_handles_labels()[0]
    if val_recall:
        twin = ax.twinx()
        handles += twin.plot(*zip(*val_recall), color=RECALL, marker="o", lw=1.5,
                             label="val recall@1 (%)")
        for step, value in val_recall:
            twin.annotate(f"{value:.1f}", (step, value), textcoords="offset points",
                          xytext=(0, 6), ha="center", fontsize=7, color=RECALL)
        twin.set_ylabel("val recall@1 (%)", color=RECALL)
        twin.set_ylim(0, 100)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              fontsize=8, frameon=False)
    ax.set_title("training: loss per logged step; bands are epochs, coloured by group",
                 fontsize=9, pad=24)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_recall_curves(curves: Models, recall_values: Sequence[int], path: str | Path) -> Path:
    """recall@N (%) against N for {model: {split: metrics}} (metrics as `evaluate` returns):
    one colour per model (a run, a baseline), one line style per split."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles: dict[str, str] = {}
    for colour, (model, splits) in enumerate(curves.items()):
        for split, metrics in splits.items():
            style = styles.setdefault(split, STYLES[len(styles) % len(STYLES)])
            ax.plot(recall_values, [metrics[f"recall_at_{n}"] for n in recall_values],
                    marker="o", ls=style, color=f"C{colour % 10}", label=f"{model}: {split}")
    ax.set_xscale("log")
    ax.set_xticks(list(recall_values), [str(n) for n in recall_values])
    ax.minorticks_off()
    ax.set_xlabel("N (database images retrieved)")
    ax.set_ylabel("recall@N (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title("share of queries with a right database image among the first N", fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_recall_bars(table: Models, recall_values: Sequence[int], path: str | Path) -> Path:
    """{model: {split: metrics}} as grouped bars: one panel per split, recall@N on the x
    axis, one bar per model, its value on top."""
    models = list(table)
    splits = list(next(iter(table.values())))
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.4), squeeze=False,
                             sharey=True)
    width = 0.8 / len(models)
    x = np.arange(len(recall_values))
    for ax, split in zip(axes[0], splits):
        for i, model in enumerate(models):
            values = [table[model][split][f"recall_at_{n}"] for n in recall_values]
            bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, values, width, label=model)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(x, [f"R@{n}" for n in recall_values])
        ax.set_title(split, fontsize=10)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("recall (%)")
    axes[0][-1].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _save(fig, Path(path))


def _thumb(path: str) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        return np.asarray(image)


def _show(ax: plt.Axes, path: str, title: str, colour: str) -> None:
    ax.imshow(_thumb(path))
    ax.set_title(title, fontsize=8, color=colour if colour != NEUTRAL else "black")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)


def _pick(rng: np.random.Generator, right: np.ndarray, wrong: np.ndarray,
          count: int) -> list[int]:
    """Up to count/2 queries placed right and as many placed wrong (more of one kind when the
    other runs short), random within each kind, successes first."""
    right, wrong = rng.permutation(right), rng.permutation(wrong)
    take_wrong = min(len(wrong), max(count - len(right), count // 2))
    take_right = min(len(right), count - take_wrong)
    return [*np.sort(right[:take_right]), *np.sort(wrong[:take_wrong])]


def _true_match(result: SplitResult, q: int, rank: int, distances: np.ndarray) -> tuple[int, str]:
    """The database image query `q` should have found, and a title saying so: the first right
    one among its predictions (what the model found, and how far down), else its closest
    positive, else (no positive) the closest image of all."""
    positives = result.positives[q]
    if rank < result.predictions.shape[1]:
        match = int(result.predictions[q, rank])
        return match, f"first right one: #{rank + 1}, {distances[match]:.0f} m"
    if len(positives):
        match = int(positives[np.argmin(distances[positives])])
        return match, f"closest right one, {distances[match]:.0f} m: not in top {rank}"
    match = int(np.argmin(distances))
    return match, f"none within threshold; closest {distances[match]:.0f} m"


def plot_retrievals(
    result: SplitResult,
    path: str | Path,
    threshold: float,
    num_queries: int = 6,
    top: int = 5,
    seed: int = 0,
) -> Path:
    """Rows of (query, its `top` predictions, its true match) for queries placed right and
    queries placed wrong at rank 1 (see the module docstring)."""
    rank = first_hit_rank(result.predictions, result.positives)
    chosen = _pick(np.random.default_rng(seed), np.flatnonzero(rank == 0),
                   np.flatnonzero(rank > 0), num_queries)
    top = min(top, result.predictions.shape[1])
    database = utm_array(result.database)
    queries = utm_array(result.queries)
    fig, axes = plt.subplots(len(chosen), top + 2, squeeze=False,
                             figsize=(1.9 * (top + 2), 2.15 * len(chosen) + 0.5),
                             gridspec_kw={"width_ratios": [1] * (top + 1) + [1.15]})
    for row, q in zip(axes, chosen):
        right = rank[q] == 0
        _show(row[0], result.queries[q].path, f"query {q}: {'right' if right else 'wrong'}",
              RIGHT if right else WRONG)
        distances = np.hypot(*(database - queries[q]).T)
        for i, (ax, db_index) in enumerate(zip(row[1:top + 1], result.predictions[q, :top])):
            metres = distances[db_index]
            _show(ax, result.database[db_index].path, f"#{i + 1}: {metres:.0f} m",
                  RIGHT if metres <= threshold else WRONG)
        if rank[q] < top:  # the first right one is in the row already
            row[-1].axis("off")
            row[-1].text(0.5, 0.5, f"first right one:\n#{rank[q] + 1}, shown", ha="center",
                         va="center", fontsize=8, color=NEUTRAL, transform=row[-1].transAxes)
            continue
        match, title = _true_match(result, q, int(rank[q]), distances)
        _show(row[-1], result.database[match].path, title,
              RIGHT if distances[match] <= threshold else NEUTRAL)
    fig.suptitle(f"{result.split}: queries placed right and wrong, their top-{top} predictions "
                 f"(green = within {threshold:g} m), and the match they should find",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))
