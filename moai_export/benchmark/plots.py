"""PNG figures of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.ticker
import numpy as np

from ..evaluation.plotting import panel_grid, save_figure
from ..evaluation.plotting import pyplot as plt

PCTS = ("p50", "p90", "p95", "p99", "max")


def _log_y(ax) -> None:
    """Log scale with plain numbers (1, 2, 5, 10 ms) instead of 10^x labels."""
    ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=6)


def _panels(rows: Sequence[dict], mode: str) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    for r in rows:
        key = (r["workload"], r["batch_size"])
        if r["mode"] == mode and key not in seen:
            seen.append(key)
    return seen


def _targets(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(r["target"] for r in rows))


def _bars(ax, groups: Sequence[str], series: dict[str, Sequence[float]]) -> None:
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [v if v == v else 0 for v in values], width, label=name)
    ax.set_xticks(x, groups)


def throughput_plot(rows: Sequence[dict], path: Path) -> Path | None:
    """Sentences/s against closed-loop concurrency, one panel per workload and batch size."""
    panels = _panels(rows, "closed")
    if not panels:
        return None
    targets = _targets(rows)
    ncols = len({b for _, b in panels})
    fig, axes = panel_grid(len(panels), ncols)
    for ax, (workload, batch) in zip(axes, panels):
        cell = [r for r in rows if r["mode"] == "closed" and (r["workload"], r["batch_size"]) == (workload, batch)]
        levels = sorted({r["level"] for r in cell})
        value = {(r["target"], r["level"]): r.get("sentences_per_s", float("nan")) for r in cell}
        _bars(ax, [f"{int(c)}" for c in levels],
              {t: [value.get((t, c), float("nan")) for c in levels] for t in targets})
        ax.set_title(f"{workload}, batch {batch}", fontsize=9)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("sentences/s")
    axes[0].legend(fontsize=7)
    fig.suptitle("throughput vs concurrency (closed loop)", fontsize=10)
    return save_figure(fig, path)


def latency_plot(rows: Sequence[dict], path: Path) -> Path | None:
    """p50/p90/p95/p99/max per target at the lowest closed-loop concurrency (unloaded latency)."""
    panels = _panels(rows, "closed")
    if not panels:
        return None
    ncols = len({b for _, b in panels})
    fig, axes = panel_grid(len(panels), ncols)
    targets = _targets(rows)
    for ax, (workload, batch) in zip(axes, panels):
        cell = [r for r in rows if r["mode"] == "closed" and (r["workload"], r["batch_size"]) == (workload, batch)]
        level = min(r["level"] for r in cell)
        lat = {r["target"]: r.get("latency_ms") or {} for r in cell if r["level"] == level}
        _bars(ax, targets, {p: [lat.get(t, {}).get(p, float("nan")) for t in targets] for p in PCTS})
        _log_y(ax)
        ax.set_title(f"{workload}, batch {batch}, {int(level)} client(s)", fontsize=9)
        ax.set_ylabel("latency (ms)")
        ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle("latency percentiles per request", fontsize=10)
    return save_figure(fig, path)


def open_loop_plot(rows: Sequence[dict], path: Path) -> Path | None:
    """p50 and p99 latency against the offered rate: where the curve bends is the knee."""
    panels = _panels(rows, "open")
    if not panels:
        return None
    fig, axes = panel_grid(len(panels), len({b for _, b in panels}))
    for ax, (workload, batch) in zip(axes, panels):
        cell = [r for r in rows if r["mode"] == "open" and (r["workload"], r["batch_size"]) == (workload, batch)]
        for target in _targets(cell):
            pts = sorted((r["level"], r.get("latency_ms") or {}) for r in cell if r["target"] == target)
            rates = [p[0] for p in pts]
            line = ax.plot(rates, [p[1].get("p50", np.nan) for p in pts], marker="o", label=f"{target} p50")
            ax.plot(rates, [p[1].get("p99", np.nan) for p in pts], marker="x", linestyle="--",
                    color=line[0].get_color(), label=f"{target} p99")
        _log_y(ax)
        ax.set_xlabel("offered requests/s")
        ax.set_ylabel("latency from due time (ms)")
        ax.set_title(f"{workload}, batch {batch}", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("open loop: latency vs offered rate", fontsize=10)
    return save_figure(fig, path)


def parity_plot(cosines: dict[str, np.ndarray], path: Path, title: str) -> Path | None:
    """Distribution of 1 - cosine to the reference per target (log scale; 0 is clipped to 1e-9)."""
    cosines = {k: np.asarray(v, dtype=np.float64) for k, v in cosines.items() if len(v)}
    if not cosines:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.logspace(-9, 0, 46)
    styles = ["-", "--", ":", "-."]
    for i, (name, cos) in enumerate(cosines.items()):
        distance = 1.0 - cos
        exact = int(np.sum(distance <= 1e-9))  # identical targets would hide under each other: say so
        label = f"{name} ({exact}/{len(cos)} at <= 1e-9)" if exact else name
        ax.hist(np.clip(distance, 1e-9, 1.0), bins=bins, histtype="step", linewidth=2.2 - 0.4 * (i % 3),
                linestyle=styles[i % len(styles)], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("1 - cosine to the reference (clipped at 1e-9)")
    ax.set_ylabel("texts")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def retrieval_plot(rows: Sequence[dict], metrics: Sequence[str], path: Path) -> Path | None:
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    _bars(ax, list(metrics), {r["target"]: [r["metrics"][m] for m in metrics] for r in rows})
    top = max((r["metrics"][m] for r in rows for m in metrics), default=1.0)
    ax.set_ylim(0, min(1.0, top * 1.2) or 1.0)
    ax.set_ylabel("score")
    ax.set_title("retrieval quality per target", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def dimension_plot(rows: Sequence[dict], metric: str, path: Path) -> Path | None:
    """The Matryoshka sweep: `metric` against the kept width, one line per target."""
    rows = [r for r in rows if r.get("dimension_sweep")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        sweep = r["dimension_sweep"]
        ax.plot([s["dims"] for s in sweep], [s[metric] for s in sweep], marker="o", label=r["target"])
    ax.set_xscale("log", base=2)
    ax.set_xticks([s["dims"] for s in rows[0]["dimension_sweep"]], [str(s["dims"]) for s in rows[0]["dimension_sweep"]])
    ax.set_xlabel("dimensions kept (first k, renormalized)")
    ax.set_ylabel(metric.upper())
    ax.set_title(f"{metric.upper()} per Matryoshka size", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
