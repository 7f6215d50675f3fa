"""Figures of a run: the learning curve and the optimisation diagnostics (matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from npgjax.cli.report import nan_stats

__all__ = ["complete_mean", "plot_diagnostics", "plot_learning_curve"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style_axes(ax: Any) -> None:
    from matplotlib.ticker import EngFormatter

    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


def complete_mean(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over seeds (axis 0), NaN wherever any seed has no value.

    A mean over only the seeds that have a value jumps when a seed joins; this one
    starts when every seed has finished an episode.

    Examples:
      >>> import numpy as np
      >>> complete_mean(np.array([[np.nan, 1.0], [2.0, 3.0]]))[0]
      array([nan,  2.])
    """
    y = np.asarray(y, np.float64)
    mean, std = nan_stats(y)
    every = np.all(np.isfinite(y), axis=0)
    return np.where(every, mean, np.nan), np.where(every, std, np.nan)


def plot_learning_curve(path: Path, metrics: dict[str, np.ndarray], config: Any,
                        target: float | None) -> None:
    """Training return (and evaluation return) against env steps: every seed, and the
    mean ± std where every seed has a value."""
    plt = _pyplot()
    x = np.asarray(metrics["env_steps"][0], np.float64)
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=150)
    series = [("train_return", "#1f77b4",
               f"training return (last {config.return_window} episodes)")]
    if np.any(np.isfinite(np.asarray(metrics.get("eval_return", np.nan), np.float64))):
        series.append(("eval_return", "#ff7f0e", "evaluation return (deterministic)"))
    seeds = np.asarray(metrics["train_return"]).shape[0]
    alpha = 0.45 if seeds <= 8 else 0.2
    for key, color, label in series:
        y = np.asarray(metrics[key], np.float64)
        pts = np.any(np.isfinite(y), axis=0)  # evaluation: only the evaluated updates
        marker = "o" if key == "eval_return" else None
        for s in range(seeds):
            ax.plot(x[pts], y[s, pts], color=color, alpha=alpha, linewidth=0.8, marker=marker,
                    markersize=2.5)
        mean, std = complete_mean(y[:, pts])
        with np.errstate(invalid="ignore"):
            lo, hi = np.nanmin(y[:, pts], axis=0), np.nanmax(y[:, pts], axis=0)
        ax.fill_between(x[pts], np.maximum(mean - std, lo), np.minimum(mean + std, hi),
                        color=color, alpha=0.15, linewidth=0)
        ax.plot(x[pts], mean, color=color, linewidth=2.2, marker=marker, markersize=4,
                label=f"{label}: mean ± std over {seeds} seeds (thin: each seed)")
    if target is not None:
        ax.axhline(target, color="#d62728", linestyle="--", linewidth=1.2,
                   label=f"target {target:g}")
    ax.set_xlabel("environment steps (per seed)")
    ax.set_ylabel("return")
    ax.set_title(f"{config.env_name} · {config.algo.upper()} · {seeds} seed"
                 f"{'s' * (seeds > 1)}")
    ax.set_xlim(0, x[-1] if x.size else 1)
    _style_axes(ax)
    ax.legend(loc="best", frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)



def plot_diagnostics(path: Path, metrics: dict[str, np.ndarray], config: Any) -> bool:
    """Panels of the optimisation diagnostics that were recorded (not all NaN)."""
    plt = _pyplot()

    def present(k: str) -> bool:
        return k in metrics and bool(np.any(np.isfinite(np.asarray(metrics[k], float))))

    panels = [
        ("kl", "KL divergence per update", False),
        ("entropy", "policy entropy", False),
        ("explained_variance", "explained variance (critic)", False),
        ("value_loss", "value loss", True),
        ("cg_residual", "CG residual", True),
        ("ls_tries", "line-search tries", False),
    ]
    panels = [p for p in panels if present(p[0])]
    if not panels:
        return False
    x = np.asarray(metrics["env_steps"][0], np.float64)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.2 * nrows), dpi=130,
                             squeeze=False)
    colors = {"main": "#1f77b4", "pred": "#ff7f0e"}

    for ax, (key, title, log) in zip(axes.flat, panels, strict=False):
        if key == "kl":
            if "max_kl" in metrics:  # the bound of each update (it may decay)
                ax.plot(x, np.asarray(metrics["max_kl"], np.float64)[0], color="0.35",
                        linestyle=":", linewidth=1.4, label="max_kl", zorder=1)
            else:
                ax.axhline(config.max_kl, color="0.35", linestyle=":", linewidth=1.4,
                           label=f"max_kl = {config.max_kl:g}", zorder=1)
            _band(ax, x, metrics["kl"], colors["main"], "measured", log)
            if present("predicted_kl"):
                _band(ax, x, metrics["predicted_kl"], colors["pred"], "predicted (quadratic)", log)
                ax.lines[-1].set_linestyle("--")
            ax.set_ylim(bottom=0)
            ax.legend(frameon=False, fontsize=8, loc="lower right")
        else:
            _band(ax, x, metrics[key], colors["main"], None, log)
            if key == "ls_tries":
                ax.set_ylim(bottom=0)
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("environment steps (per seed)", fontsize=8)
        ax.tick_params(which="both", labelsize=8)
        _style_axes(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    seeds = np.asarray(metrics["env_steps"]).shape[0]
    fig.suptitle(f"{config.env_name} · {config.algo.upper()} · diagnostics "
                 f"(mean ± std over {seeds} seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _band(ax: Any, x: np.ndarray, y: np.ndarray, color: str, label: str | None,
      log: bool) -> None:
    """Mean over seeds with a ± std band (geometric in log scale)."""
    y = np.asarray(y, np.float64)
    if log:
        y = np.where(y > 0, y, np.nan)
    mean, std = nan_stats(y)
    if log:  # a band in log space: geometric mean × / ÷ geometric std
        lm, ls = nan_stats(np.log(y))
        lo, hi, mean = np.exp(lm - ls), np.exp(lm + ls), np.exp(lm)
    else:
        lo, hi = mean - std, mean + std
    ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
    ax.plot(x, mean, color=color, linewidth=1.6, label=label)

