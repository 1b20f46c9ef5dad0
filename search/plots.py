"""Pictures of a search: fitness over evaluations, and an architecture drawn as in the paper's Fig. 2."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from networks import Architecture, topology_wiring  # noqa: E402
from networks.fileio import atomic_write  # noqa: E402

__all__ = ["plot_fitness", "plot_architecture", "OP_COLOURS"]

OP_COLOURS = {"2D": "#1f77b4", "3D": "#d62728", "P3D": "#2ca02c", None: "#7f7f7f"}


def _save(fig: "plt.Figure", path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def plot_fitness(
    records: Sequence[Dict],
    path: Path,
    title: str,
    population_size: int = 0,
    groups: Optional[Dict[str, List]] = None,
    evaluations: Optional[Sequence[Dict]] = None,
) -> Path:
    """Each evaluated candidate's fitness in evaluation order, the running best, and where the aging cycles start.

    ``groups`` (label -> list of fitness values) adds a panel, e.g. the coarse stage's cluster scores;
    ``evaluations`` (records with ``per_class``: class name -> Dice or None) adds one with every evaluated
    architecture's Dice per class, which shows a fitness that never sees a class.
    """
    evaluations = [e for e in (evaluations or []) if e.get("per_class")]
    ncols = 1 + bool(groups) + bool(evaluations)
    fig, axes = plt.subplots(1, ncols, figsize=(7 * ncols, 4), squeeze=False)
    ax = axes[0][0]
    fitness = [r["fitness"] for r in records]
    best = [max(fitness[: i + 1]) for i in range(len(fitness))]
    ax.scatter(range(len(fitness)), fitness, s=14, alpha=0.7, label="candidate")
    ax.plot(range(len(best)), best, color="black", label="best so far")
    if 0 < population_size < len(fitness):
        ax.axvline(population_size - 0.5, color="grey", linestyle=":", label="aging cycles start")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("validation mean Dice (inherited weights)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    if groups:
        ax2 = axes[0][1]
        labels = list(groups)
        ax2.boxplot([groups[k] for k in labels], tick_labels=labels)
        means = [sum(v) / len(v) for v in groups.values()]
        ax2.plot(range(1, len(labels) + 1), means, "o", color="black", label="score (mean)")
        ax2.set_xlabel("cluster")
        ax2.set_ylabel("Dice of sampled members")
        ax2.set_title("cluster scores")
        ax2.legend(loc="lower right", fontsize=8)
    if evaluations:
        ax3 = axes[0][ncols - 1]
        for name in evaluations[0]["per_class"]:
            points = [(i, e["per_class"].get(name)) for i, e in enumerate(evaluations)]
            points = [(i, d) for i, d in points if d is not None]
            ax3.scatter([i for i, _ in points], [d for _, d in points], s=12, alpha=0.7, label=name)
        ax3.set_ylim(-0.02, 1.02)
        ax3.set_xlabel("evaluated architecture")
        ax3.set_ylabel("validation Dice (inherited weights)")
        ax3.set_title("Dice per class")
        ax3.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_architecture(arch: Architecture, path: Path, title: str = "") -> Path:
    """Cells along x, levels down the y axis; the path, op colours, dotted second-input (skip) connections."""
    num_levels = max(4, max(arch.levels))
    positions = [(0, 1)] + [(i, level) for i, level in enumerate(arch.levels, start=1)]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(positions), 3.6))
    for i in range(len(positions)):
        ax.scatter([i] * num_levels, range(1, num_levels + 1), s=18, color="#dddddd", zorder=1)
    xs, ys = zip(*positions)
    ax.plot(xs, ys, color="black", linewidth=1.5, zorder=2)
    for i, w in enumerate(topology_wiring(arch.levels), start=1):
        if w.second >= 0:
            (x0, y0), (x1, y1) = positions[w.second], positions[i]
            bend = 0.35 if w.transition == "up" else 0.25
            ax.annotate(
                "",
                xy=(x1, y1),
                xytext=(x0, y0),
                arrowprops=dict(arrowstyle="->", linestyle=":", color="#555555", connectionstyle=f"arc3,rad=-{bend}"),
                zorder=2,
            )
    ops = arch.ops or (None,) * len(arch.levels)
    ax.scatter([0], [1], s=160, marker="s", color="black", zorder=3)
    for (x, y), op in zip(positions[1:], ops):
        ax.scatter([x], [y], s=220, color=OP_COLOURS[op], edgecolors="black", zorder=3)
    for op in (o for o in OP_COLOURS if o is not None and (arch.ops is None or o in arch.ops)):
        ax.scatter([], [], s=80, color=OP_COLOURS[op], edgecolors="black", label=op)
    ax.scatter([], [], s=60, marker="s", color="black", label="stem")
    ax.set_xticks(range(len(positions)), ["stem"] + [str(i) for i in range(1, len(positions))])
    ax.set_yticks(range(1, num_levels + 1), [f"1/{2 ** lv}" for lv in range(1, num_levels + 1)])
    ax.set_ylim(num_levels + 0.6, 0.4)
    ax.set_xlabel("cell")
    ax.set_ylabel("resolution (level)")
    ax.set_title(title or str(arch), fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)
