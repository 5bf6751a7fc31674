"""Plots every lesson uses: loss curves (with an optional tokens-seen axis) and bar charts."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Moving average over ``window`` points (shorter at the start), for readable noisy curves."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(len(values)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def plot_losses(histories: dict, title: str, ax=None, x: str = "step", smooth_window: int = 1,
                tokens_per_step: dict | None = None, log_y: bool = False):
    """Train (thin) and test (markers) loss of one or more runs on one axis.

    ``histories`` maps a run's label to its ``History``. ``x="tokens"`` puts tokens seen on the x
    axis; ``tokens_per_step`` maps a label to how many (target) tokens one step sees, when that is
    what should be counted (Lesson 2: final-token training sees T times fewer targets).
    """
    if x not in ("step", "tokens"):
        raise ValueError("x must be 'step' or 'tokens'")
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5))
    for i, (label, h) in enumerate(histories.items()):
        colour = f"C{i}"
        per_step = (tokens_per_step or {}).get(label)

        def xs(steps, h=h, per_step=per_step):
            if x == "step":
                return np.asarray(steps)
            if per_step is not None:
                return np.asarray(steps) * per_step
            lookup = dict(zip(h.step, h.tokens_seen))
            return np.asarray([lookup.get(s, 0) for s in steps])

        ax.plot(
            xs(h.step), smooth(h.train_loss, smooth_window), color=colour, alpha=0.8, lw=1.2, label=f"{label} train"
        )
        if h.test_loss:
            ax.plot(xs(h.eval_step), h.test_loss, "o--", color=colour, ms=4, label=f"{label} test")
    ax.set_title(title)
    ax.set_xlabel("optimizer step" if x == "step" else ("target tokens seen" if tokens_per_step else "tokens seen"))
    ax.set_ylabel("loss (nats)")
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str, ax=None,
              annotate: str = "{:.3g}", errors: Sequence[float] | None = None):
    """A labelled bar chart, each bar annotated with its value (timing and memory comparisons)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(max(5, 1.2 * len(labels)), 4))
    bars = ax.bar(range(len(labels)), values, yerr=errors, color=[f"C{i}" for i in range(len(labels))], capsize=3)
    ax.set_xticks(range(len(labels)), labels, rotation=20 if max(map(len, labels)) > 10 else 0, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    for bar, v in zip(bars, values):
        ax.annotate(
            annotate.format(v),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.grid(axis="y", alpha=0.3)
    return ax
