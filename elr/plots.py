"""The book's figures: one style entry point, and plot functions that take arrays and an optional ``ax``.

Layers are coloured by depth as in the paper: blue for the lowest layers, red
for the highest.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from elr import dynamics

DEPTH_CMAP = "coolwarm"


def setup(width: float = 7.0, height: float = 3.2) -> None:
    """The one style of every figure in the book."""
    mpl.rcParams.update({
        "figure.figsize": (width, height), "figure.dpi": 110, "savefig.dpi": 110,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
        "font.size": 9, "axes.titlesize": 9, "legend.fontsize": 8, "legend.frameon": False,
        "figure.constrained_layout.use": True,
    })


def glue(name: str, value, display: bool = False) -> None:
    """Store a figure or value in the executed notebook for ``{glue:figure}`` / ``{glue:text}`` in the book.

    Returns None, so that a glue call ending a cell does not also print the value.
    """
    from myst_nb import glue as _glue

    _glue(name, value, display=display)
    if isinstance(value, mpl.figure.Figure):
        plt.close(value)


def _axes(ax):
    if ax is None:
        fig, ax = plt.subplots()
        return fig, ax
    return ax.figure, ax


def depth_colors(n_layers: int) -> np.ndarray:
    return plt.get_cmap(DEPTH_CMAP)(np.linspace(0.0, 1.0, n_layers))


def layer_profiles(profiles: Mapping[str, np.ndarray], ylabel: str, ax=None, logy: bool = True):
    """One line per network: a per-layer quantity against layer index i = 1..L."""
    fig, ax = _axes(ax)
    for label, values in profiles.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=label, lw=1.5)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel="layer i (1 = lowest)", ylabel=ylabel)
    ax.legend()
    return fig


def _split_format(style: str) -> tuple[str, str | None]:
    """A matplotlib format string split into (line style and marker, colour or None): 'k--' -> ('--', 'k')."""
    m = re.search(r"C[0-9]|[bgrcmykw]", style)  # no marker or line-style character is one of these letters
    if m is None:
        return style, None
    return style[:m.start()] + style[m.end():], m.group(0)


def layer_paths(x: np.ndarray, values: np.ndarray, ax=None, logx: bool = False, logy: bool = True,
                style: str = "-", lw: float = 1.0, alpha: float = 1.0, xlabel: str = "step", ylabel: str = ""):
    """One line per layer over time; ``values`` has shape (T, L), ``x`` shape (T,).

    Lines are coloured by depth, unless ``style`` names a colour ('k--'): then every layer takes it."""
    fig, ax = _axes(ax)
    # a colour in both the format string and color= makes matplotlib warn (a UserWarning on the page)
    linestyle, fixed = _split_format(style)
    for color, column in zip(depth_colors(values.shape[-1]), values.T):
        ax.plot(x, column, linestyle, color=fixed or color, lw=lw, alpha=alpha)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    return fig


def add_depth_colorbar(fig, ax, n_layers: int) -> None:
    sm = mpl.cm.ScalarMappable(cmap=DEPTH_CMAP, norm=mpl.colors.Normalize(1, n_layers))
    fig.colorbar(sm, ax=ax, label="layer", fraction=0.05, pad=0.01)


def spread_against_lr(lrs: np.ndarray, curves: Mapping[str, np.ndarray], marks: Mapping[str, float],
                      ax=None, ylabel: str = r"$S_{rel}$", xlabel: str = r"learning rate $\lambda$"):
    """S_rel (or any scalar) against λ on log axes, with vertical lines at named rates."""
    fig, ax = _axes(ax)
    for (label, values), style in zip(curves.items(), ["-o", ":", "--", "-."]):
        ax.plot(lrs, values, style, label=label, ms=3, color="C0")
    for (label, value), color in zip(marks.items(), ["C3", "C2", "C1"]):
        ax.axvline(value, color=color, lw=1.2, label=label)
    ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend()
    return fig


def schedule_grid(trajectories: Mapping[str, dynamics.Trajectory]):
    """The paper's Figure 1: per schedule, ELRs, σ², and λ against κ_ℓh over steps (all log y)."""
    names = list(trajectories)
    fig, axes = plt.subplots(3, len(names), figsize=(2.2 * len(names) + 0.8, 6.0), sharex=True, squeeze=False)
    for col, name in enumerate(names):
        traj = trajectories[name]
        steps = np.arange(traj.sigma2.shape[0])
        layer_paths(steps, traj.elr, ax=axes[0, col], ylabel="ELR $E_i$" if col == 0 else "")
        layer_paths(steps, traj.sigma2, ax=axes[1, col], ylabel=r"$\sigma_i^2$" if col == 0 else "")
        ax = axes[2, col]
        ax.plot(steps[:-1], traj.lr, color="k", lw=1.2, label=r"$\lambda$")
        ax.plot(steps, traj.critical_lr, color="C3", lw=1.2, ls="--", label=r"$\kappa_{\ell h}$")
        ax.set(yscale="log", xlabel="step", ylabel="rate" if col == 0 else "")
        axes[0, col].set_title(name)
    axes[2, 0].legend()
    add_depth_colorbar(fig, axes[:, -1].tolist(), next(iter(trajectories.values())).sigma2.shape[-1])
    return fig


def bars(labels: Sequence[str], values: Sequence[float], ax=None, ylabel: str = "", logy: bool = False):
    fig, ax = _axes(ax)
    ax.bar(labels, values, color="C0")
    if logy:
        ax.set_yscale("log")
    ax.set(ylabel=ylabel)
    return fig


def seed_band(x: Sequence[float], values: np.ndarray, ax=None, label: str = "", color: str | None = None,
              style: str = "-o", band: str = "range", show_seeds: bool = True, ms: float = 3.0):
    """The mean over seeds of a curve, with a band, and (faintly) every seed: never one run as the result.

    ``values`` has shape (n_seeds, len(x)); NaN entries (a diverged run) are left out of the mean and band.
    ``band="range"`` shades min..max over seeds; ``band="interval"`` shades the 95 % bootstrap interval of
    the mean (elr.evidence), which needs at least 2 finite seeds per point.
    """
    fig, ax = _axes(ax)
    values = np.atleast_2d(np.asarray(values, dtype=float))
    x = np.asarray(x, dtype=float)
    mean = np.nanmean(values, axis=0)
    line, = ax.plot(x, mean, style, color=color, label=label, ms=ms)
    color = line.get_color()
    if band == "range":
        low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    elif band == "interval":
        from elr import evidence

        cis = [evidence.mean_interval(col[np.isfinite(col)]) if np.isfinite(col).sum() >= 2 else None
               for col in values.T]
        low = np.array([c.low if c else np.nan for c in cis])
        high = np.array([c.high if c else np.nan for c in cis])
    else:
        raise ValueError(f"band must be 'range' or 'interval', got {band!r}")
    if values.shape[0] > 1:
        ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)
    if show_seeds and values.shape[0] > 1:
        for row in values:
            ax.plot(x, row, ".", color=color, ms=ms * 0.8, alpha=0.35)
    return fig


def seed_strip(values: Mapping[str, Sequence[float]], ax=None, ylabel: str = "", color: str = "C0",
               logy: bool = False):
    """One column per label: every seed as a dot, the mean as a bar, its 95 % bootstrap interval as a line."""
    from elr import evidence

    fig, ax = _axes(ax)
    for i, (label, v) in enumerate(values.items()):
        v = np.asarray(v, dtype=float)
        jitter = np.linspace(-0.12, 0.12, len(v)) if len(v) > 1 else np.zeros(1)
        ax.plot(i + jitter, v, "o", color=color, ms=3, alpha=0.5)
        ax.plot([i - 0.25, i + 0.25], [np.mean(v)] * 2, "-", color="k", lw=1.5)
        if len(v) >= 2 and np.all(np.isfinite(v)):
            ci = evidence.mean_interval(v)
            ax.plot([i, i], [ci.low, ci.high], "-", color="k", lw=0.8)
    ax.set_xticks(range(len(values)), list(values), rotation=20, ha="right", fontsize=7)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    return fig
