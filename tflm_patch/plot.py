"""Memory-per-operator plot in the style of MCUNetV2's Figure 1."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from tflm_patch.analysis import Analysis


@dataclass(frozen=True)
class ArenaLine:
    label: str
    bytes: int
    style: str = "--"
    color: str = "tab:purple"


def plot_memory(
    analysis: Analysis,
    path: str | os.PathLike[str],
    *,
    title: str,
    budget: int | None = None,
    lines: Sequence[ArenaLine] = (),
) -> None:
    """Bars: activation memory alive while each operator runs (KiB); red above the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = analysis.ops
    kib = [s.live_bytes / 1024 for s in ops]
    over = [budget is not None and s.live_bytes > budget for s in ops]
    colors = ["tab:red" if o else "tab:blue" for o in over]
    width = min(max(8.0, 0.16 * len(ops) + 3), 24.0)
    fig, ax = plt.subplots(figsize=(width, 4.8), dpi=110)
    ax.bar(range(len(ops)), kib, color=colors, width=0.8, label="activations alive during the op")
    peak = analysis.peak
    ax.annotate(
        f"peak {peak.live_bytes / 1024:,.0f} KiB\n#{peak.index} {peak.name}",
        xy=(peak.index, peak.live_bytes / 1024),
        xytext=(12, -4),
        textcoords="offset points",
        ha="left",
        va="top",
        fontsize=8,
        arrowprops={"arrowstyle": "-", "color": "gray", "linewidth": 0.8},
    )
    if budget is not None:
        ax.axhline(budget / 1024, color="black", linewidth=1.2)
        ax.text(
            len(ops) - 0.5,
            budget / 1024,
            f" SRAM budget {budget / 1024:,.0f} KiB",
            va="bottom",
            ha="right",
            fontsize=8,
        )
    for line in lines:
        ax.axhline(line.bytes / 1024, color=line.color, linestyle=line.style, linewidth=1.2)
        ax.text(len(ops) - 0.5, line.bytes / 1024, f"{line.label} ", va="bottom", ha="right",
                fontsize=8, color=line.color)
    if len(ops) <= 70:
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels([f"{s.index} {_short(s.name)}" for s in ops], rotation=90, fontsize=6)
    else:
        ax.set_xlabel("operator index (execution order)")
    ax.set_ylabel("memory (KiB)")
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.01)
    ax.set_ylim(0, max([*kib, *(ln.bytes / 1024 for ln in lines), (budget or 0) / 1024]) * 1.15)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


_SHORT = {
    "DEPTHWISE_CONV_2D": "DW",
    "CONV_2D": "CONV",
    "FULLY_CONNECTED": "FC",
    "AVERAGE_POOL_2D": "AVGPOOL",
    "MAX_POOL_2D": "MAXPOOL",
}


def _short(name: str) -> str:
    return _SHORT.get(name, name)


def plot_before_after(before: Sequence[int], after: Sequence[int], names: Sequence[str],
                      path: str | os.PathLike[str], *, title: str, stage: tuple[int, int],
                      lines: Sequence[ArenaLine] = (), budget: int | None = None,
                      more_stages: Sequence[tuple[int, int]] = ()) -> None:
    """MCUNetV2 Figure 1 style: memory alive per operator of the original model,
    layer-by-layer (grey) and with the patched stage (blue; the stage shaded, and the
    other patched stages of a multi-stage plan lighter)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(before)
    width = min(max(8.0, 0.16 * n + 3), 24.0)
    fig, ax = plt.subplots(figsize=(width, 4.8), dpi=110)
    xs = range(n)
    ax.bar([x - 0.2 for x in xs], [b / 1024 for b in before], width=0.4, color="tab:gray",
           label="layer by layer")
    ax.bar([x + 0.2 for x in xs], [a / 1024 for a in after], width=0.4, color="tab:blue",
           label="patched (stage: input + output + patch scratch)")
    ax.axvspan(stage[0] - 0.5, stage[1] + 0.5, color="tab:blue", alpha=0.08,
               label=f"PATCH_EXEC stage (ops {stage[0]}..{stage[1]})")
    for k, (a, b) in enumerate(more_stages):
        ax.axvspan(a - 0.5, b + 0.5, color="tab:cyan", alpha=0.08,
                   label="more patched stages" if k == 0 else None)
    for line in lines:
        ax.axhline(line.bytes / 1024, color=line.color, linestyle=line.style, linewidth=1.2)
        ax.text(-0.5, line.bytes / 1024, f" {line.label}", va="bottom", ha="left",
                fontsize=8, color=line.color)
    if budget is not None:
        ax.axhline(budget / 1024, color="black", linewidth=1.2)
        ax.text(-0.5, budget / 1024, f" SRAM budget {budget / 1024:,.0f} KiB", va="bottom",
                ha="left", fontsize=8)
    if n <= 70:
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{i} {_short(s)}" for i, s in enumerate(names)], rotation=90,
                           fontsize=6)
    else:
        ax.set_xlabel("operator index of the original model (execution order)")
    ax.set_ylabel("activation memory alive (KiB)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    ax.margins(x=0.01)
    top = max([*before, *after, *(ln.bytes for ln in lines), budget or 0]) / 1024
    ax.set_ylim(0, top * 1.35)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
