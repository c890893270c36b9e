"""A layered picture of a circuit with matplotlib (no graphviz): root on top, edge widths by share."""
from __future__ import annotations

import os
import textwrap

#: Widest edge line, in points, for the circuit's largest share.
MAX_LINE_WIDTH = 8.0


def plot_circuit(circuit, path: str | os.PathLike | None = None, *, dpi: int = 120, wrap: int = 18):
    """Draw ``circuit``: one row per depth, nodes as ``layer:unit`` and their top label, edges as lines
    whose width is the edge's share (relative to the largest) (negative shares dashed). Saves to ``path`` when given; returns the figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    depths = sorted({node.depth for node in circuit.nodes})
    rows = {depth: [node for node in circuit.nodes if node.depth == depth] for depth in depths}
    widest = max(len(row) for row in rows.values())
    position = {}
    for depth, row in rows.items():
        for index, node in enumerate(row):
            position[node.key] = ((index + 0.5) / len(row) * widest, -depth)
    strongest = max([abs(edge.share) for edge in circuit.edges] + [1e-12])
    figure, axes = plt.subplots(figsize=(max(6.0, 1.9 * widest), 1.0 + 2.0 * len(depths)))
    for edge in circuit.edges:
        (x0, y0), (x1, y1) = position[edge.parent], position[edge.child]
        axes.plot([x0, x1], [y0, y1], color="tab:red" if edge.share >= 0 else "tab:blue",
                  linewidth=max(0.3, MAX_LINE_WIDTH * abs(edge.share) / strongest), alpha=0.6,
                  linestyle="-" if edge.share >= 0 else "--", zorder=1)
        axes.text(x0 + 0.6 * (x1 - x0), y0 + 0.6 * (y1 - y0), f"{edge.share:.2f}", fontsize=6,
                  ha="center", va="center", zorder=3, color="0.25")
    for node in circuit.nodes:
        x, y = position[node.key]
        label = node.label or ""
        if node.score is not None:
            label += f" ({node.score:.2f})"
        text = node.key + ("\n" + textwrap.fill(label, wrap) if label else "")
        axes.text(x, y, text, ha="center", va="center", fontsize=7, zorder=4,
                  bbox=dict(boxstyle="round", facecolor="#fff8e0" if node.depth == 0 else "white", edgecolor="0.4"))
    for depth, row in rows.items():
        axes.text(-0.1, -depth, row[0].layer, ha="right", va="center", fontsize=8, color="0.35")
    axes.set_xlim(-0.9, widest + 0.2)
    axes.set_ylim(-depths[-1] - 0.6, 0.6)
    axes.axis("off")
    config = circuit.config
    axes.set_title(f"circuit of {circuit.root} ({config.get('samples')} samples, width {config.get('width')})",
                   fontsize=9)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=dpi)
        plt.close(figure)
    return figure
