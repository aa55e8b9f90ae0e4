"""elr.plots: figures that put no warning on a page."""
import warnings

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from elr import plots  # noqa: E402


def test_layer_paths_with_a_colour_in_the_format_warns_nothing():
    values = np.exp(np.random.default_rng(0).normal(size=(20, 5)))
    fig, ax = plots.plt.subplots()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "color is redundantly defined" would raise here
        plots.layer_paths(np.arange(1, 21), values, ax=ax, logx=True, style="k--", lw=0.6)
        plots.layer_paths(np.arange(1, 21), values, ax=ax, style="C3:")
        plots.layer_paths(np.arange(1, 21), values, ax=ax, style="-o")
    lines = ax.get_lines()
    assert all(to_rgba(line.get_color()) == to_rgba("k") and line.get_linestyle() == "--" for line in lines[:5])
    assert all(to_rgba(line.get_color()) == to_rgba("C3") and line.get_linestyle() == ":" for line in lines[5:10])
    depth = [to_rgba(line.get_color()) for line in lines[10:]]
    assert len(set(depth)) == 5 and lines[10].get_marker() == "o"  # one colour per layer, by depth
    plots.plt.close(fig)
