"""The book's figures, drawn on axes the caller owns."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import PatchCollection
from matplotlib.patches import Circle

CLASS_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def decision_regions(ax, predict, extent, n: int = 300, alpha: float = 0.25):
    """Shade the input plane by predicted class (Fig. 2's Voronoi cells, pulled back)."""
    x0, x1, y0, y1 = extent
    xs, ys = torch.linspace(x0, x1, n), torch.linspace(y0, y1, n)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    classes = predict(grid).reshape(n, n).numpy()
    cmap = plt.matplotlib.colors.ListedColormap(CLASS_COLOURS[: int(classes.max()) + 1])
    ax.imshow(classes, origin="lower", extent=extent, cmap=cmap, alpha=alpha, aspect="auto",
              interpolation="nearest")
    ax.contour(xs.numpy(), ys.numpy(), classes, levels=np.arange(classes.max()) + 0.5,
               colors="k", linewidths=1.0)


def scatter_classes(ax, x, y, size: float = 8):
    for c in np.unique(np.asarray(y)):
        pts = np.asarray(x)[np.asarray(y) == c]
        ax.scatter(pts[:, 0], pts[:, 1], s=size, color=CLASS_COLOURS[c], label=f"class {c}",
                   edgecolors="none")


def certified_circles(ax, x, radii, colour="k"):
    """Draw each point's certified ℓ2 ball."""
    circles = [Circle(tuple(p), float(r)) for p, r in zip(np.asarray(x), np.asarray(radii))]
    ax.add_collection(PatchCollection(circles, facecolor="none", edgecolor=colour, linewidth=0.7))


def exact_vs_certified(ax, exact, certified: dict):
    """Exact minimal distance against certified radius (one series per ``label: radii``),
    with the diagonal below which a certificate would be unsound."""
    exact = np.asarray(exact)
    top = float(exact[np.isfinite(exact)].max())
    for label, radii in certified.items():
        radii = np.asarray(radii)
        ax.scatter(radii, exact, s=10, label=label, alpha=0.7)
        top = max(top, float(radii.max()))
    ax.plot([0, top], [0, top], "k--", linewidth=1, label="exact = certified")
    ax.set_xlabel("certified radius (Theorem 1)")
    ax.set_ylabel("exact minimal ℓ2 distance")


def curves_with_spread(ax, thresholds, curves, label: str, colour=None):
    """Mean curve over seeds with the min–max band (``curves`` is ``[seeds, radii]``)."""
    curves = np.asarray(curves)
    line, = ax.plot(thresholds, curves.mean(0), label=f"{label} (mean of {len(curves)})", color=colour)
    ax.fill_between(thresholds, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("radius r")
    ax.set_ylim(0, 1.02)


def bisector_example(ax, point, centroids, classes, radii: dict, extent=(-1, 4, -1.5, 3)):
    """Feature-space picture of the multi-cluster reduction (App. A.1) with ``L = 1``.

    Draws the centroids, the point, the bisector between the point's nearest centroid
    and every centroid of another class, and one circle per entry of ``radii``.
    """
    point, centroids, classes = (np.asarray(a) for a in (point, centroids, classes))
    nearest = int(((centroids - point) ** 2).sum(1).argmin())
    xs = np.linspace(extent[0], extent[1], 200)
    for j in np.nonzero(classes != classes[nearest])[0]:
        normal = centroids[j] - centroids[nearest]
        offset = (centroids[j] @ centroids[j] - centroids[nearest] @ centroids[nearest]) / 2
        if abs(normal[1]) > 1e-9:
            ax.plot(xs, (offset - normal[0] * xs) / normal[1], color="grey", linewidth=1)
        else:
            ax.axvline(offset / normal[0], color="grey", linewidth=1)
    for c, mu in zip(classes, centroids):
        ax.scatter(*mu, s=80, marker="*", color=CLASS_COLOURS[c], zorder=3)
    ax.scatter(*point, s=30, color="k", zorder=3, label="f(x)")
    for (label, r), style in zip(radii.items(), ("-", "--", ":")):
        ax.add_patch(Circle(tuple(point), r, fill=False, linestyle=style, linewidth=1.5,
                            label=f"{label}: r = {r:.3f}"))
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)


def method_bars(ax, frame, columns: dict, order=None):
    """Grouped bars per method: mean over seeds with min–max whiskers (``columns``: name → label)."""
    long = frame.melt(id_vars=["method", "seed"], value_vars=list(columns), var_name="measure",
                      value_name="accuracy")
    long["measure"] = long["measure"].map(columns)
    grouped_bars(ax, long, "method", "measure", "accuracy", order=order,
                 hue_order=list(columns.values()))
    ax.set_xticklabels(ax.get_xticklabels(), rotation=20, ha="right")
    ax.legend(fontsize=8)


def paper_vs_ours_bars(ax, frame, paper_table: dict, column: str = "pgd100_paper",
                       paper_key: str = "pgd100", labels=("paper", "ours")):
    """Per method of the paper's table: its reported accuracy next to our mean (min–max);
    ``labels``: the legend's names of the two bars."""
    methods = list(paper_table)
    ours = frame.groupby("method")[column].agg(["mean", "min", "max"]).reindex(methods)
    pos = np.arange(len(methods))
    ax.bar(pos - 0.2, [paper_table[m][paper_key] for m in methods], 0.4, label=labels[0],
           color="lightgrey", edgecolor="k")
    ax.bar(pos + 0.2, ours["mean"].fillna(0), 0.4, label=labels[1], color="tab:blue",
           yerr=[(ours["mean"] - ours["min"]).fillna(0), (ours["max"] - ours["mean"]).fillna(0)],
           capsize=2)
    for p, missing in zip(pos, ours["mean"].isna()):
        if missing:
            ax.text(p + 0.2, 1, "not run", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(pos)
    ax.set_xticklabels(methods, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)


# ---------------------------------------------------------------------------------------
# The evaluation chapters (7-11). Frames come from clustr_lib.studies; mean over seeds with
# the min-max band or whiskers.


def _band(ax, frame, x, y, label, **style):
    stats = frame.groupby(x)[y].agg(["mean", "min", "max"]).sort_index()
    line, = ax.plot(stats.index, stats["mean"], marker="o", markersize=3, label=label, **style)
    ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.2)
    return line


def eps_curves(ax, frame, paper_points: dict | None = None, column: str = "pgd100"):
    """Table 4 as a figure: robust accuracy vs ε (units of 1/255) per objective; the paper's
    values as black crosses."""
    for objective, group in frame.groupby("objective", sort=False):
        _band(ax, group, "eps_255", column, f"ours, {objective}")
    if paper_points:
        ax.scatter(list(paper_points), [v[1] for v in paper_points.values()], marker="x",
                   color="k", zorder=3, label="paper (PGD-100)")
    ax.set_xlabel("ε (× 1/255)")
    ax.set_ylabel(f"{column.upper()} accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)


def d_curves(ax, clean, robust, paper_point: tuple | None = None, table_d: int = 20,
             column: str = "pgd20"):
    """Fig. 4: clean and PGD accuracy vs D (log axis); the paper's best point as a star and
    the tables' D as a dotted line."""
    _band(ax, clean, "D", "clean", "ours, clean", color="grey")
    for objective, group in robust.groupby("objective", sort=False):
        _band(ax, group, "D", column, f"ours, {column.upper()}, {objective}")
    if paper_point:
        ax.scatter([paper_point[0]], [paper_point[1]], marker="*", s=150, color="k", zorder=3,
                   label=f"paper: best {column.upper()} {paper_point[1]}% at D = {paper_point[0]}")
    ax.axvline(table_d, color="k", linestyle=":", linewidth=1, label=f"D = {table_d} (tables)")
    ax.set_xscale("log")
    ax.set_xlabel("D (nearest clusters in Eq. 4)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)


def grouped_bars(ax, frame, group: str, hue: str, value: str, order=None, hue_order=None):
    """Bars of ``value`` per ``group`` and ``hue``: mean over seeds, min-max whiskers."""
    groups = order or list(dict.fromkeys(frame[group]))
    hues = hue_order or list(dict.fromkeys(frame[hue]))
    width = 0.8 / len(hues)
    for k, h in enumerate(hues):
        stats = (frame[frame[hue] == h].groupby(group)[value].agg(["mean", "min", "max"])
                 .reindex(groups))
        pos = np.arange(len(groups)) + (k - (len(hues) - 1) / 2) * width
        ax.bar(pos, stats["mean"].fillna(0), width, label=h,
               yerr=[(stats["mean"] - stats["min"]).fillna(0), (stats["max"] - stats["mean"]).fillna(0)],
               capsize=2)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel(f"{value} (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)


def gradient_histograms(ax, frame, floor: float = 1e-12):
    """Distribution of ``‖∇_x loss‖₂`` per objective on a log axis; exact zeros are drawn at
    ``floor`` and counted in the legend."""
    values = frame["norm"].to_numpy(dtype=float)
    top = max(float(values.max()), floor * 10) if len(values) else 1.0
    bins = np.logspace(np.log10(floor) - 0.5, np.log10(top) + 0.5, 40)
    for objective, group in frame.groupby("objective", sort=False):
        norms = group["norm"].to_numpy(dtype=float)
        zeros = int((norms == 0).sum())
        ax.hist(np.where(norms == 0, floor, norms), bins=bins, histtype="step", linewidth=1.5,
                label=f"{objective} ({zeros} of {len(norms)} exactly 0)")
    ax.axvline(float(np.finfo(np.float32).eps), color="k", linestyle=":", linewidth=1,
               label="float32 resolution (1.2e-7)")
    ax.set_xscale("log")
    ax.set_xlabel("‖∇ₓ loss‖₂ at the clean input (zeros drawn at the left edge)")
    ax.set_ylabel("points")
    ax.legend(fontsize=7)


def attack_path_curves(loss_ax, acc_ax, frame):
    """Mean objective (symmetric-log axis: the objectives differ in sign and scale) and
    accuracy along one PGD run, per objective."""
    for objective, group in frame.groupby("objective", sort=False):
        mean = group.groupby("iteration")[["mean_loss", "accuracy"]].mean()
        loss_ax.plot(mean.index, mean["mean_loss"], label=objective)
        acc_ax.plot(mean.index, mean["accuracy"], label=objective)
    loss_ax.set_yscale("symlog", linthresh=1e-3)
    loss_ax.set_xlabel("PGD iteration")
    loss_ax.set_ylabel("mean objective (symlog)")
    acc_ax.set_xlabel("PGD iteration")
    acc_ax.set_ylabel("accuracy along the path (%)")
    acc_ax.set_ylim(0, 100)
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=7)


# ---------------------------------------------------------------------------------------
# The benchmark chapters (3-6): figure-level, one panel per source of a
# clustr_lib.studies.runs_frame, stacked vertically, legend outside the data.


def _runs_panels(runs, width: float, height: float):
    """A figure with one row of axes per source of ``runs`` (order of appearance), and the
    ``(label, rows)`` of each source; closed in pyplot so a notebook shows it once, as the
    returned value."""
    groups = list(runs.groupby("source", sort=False))
    fig, axes = plt.subplots(len(groups), 1, figsize=(width, height * len(groups)),
                             squeeze=False, layout="constrained")
    plt.close(fig)
    return fig, list(zip(axes[:, 0], groups))


def paper_vs_ours_figure(runs, paper_table: dict, column: str = "pgd100_paper",
                         paper_key: str = "pgd100"):
    """Chapters 3–5 (Table 1 or 3 as a figure): per method of the paper's table, its reported
    accuracy (``paper_key``) next to ours (``column`` of :func:`clustr_lib.studies.runs_frame`:
    mean over seeds, min–max whiskers; "not run" where we have no run), one panel per source.
    Returns the figure."""
    steps = paper_key.upper().replace("PGD", "PGD-")
    fig, panels = _runs_panels(runs, 9, 3.8)
    for ax, (label, group) in panels:
        paper_vs_ours_bars(ax, group, paper_table, column, paper_key,
                           labels=(f"paper (reported, {steps})", f"ours: {steps}, paper's objective"))
        ax.set_title(f"{label}: {steps} accuracy, {group['seed'].nunique()} seed(s)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def method_objective_bars(runs, steps: int = 100):
    """Chapter 6 (the digits32 study, Table 1's protocol): per method, clean accuracy and
    PGD-``steps`` accuracy under the paper's objective and under −log p_y (bars: mean over
    seeds, whiskers: min–max), one panel per source of :func:`clustr_lib.studies.runs_frame`.
    Returns the figure."""
    columns = {"clean_accuracy": "ours: clean (whole test set)",
               f"pgd{steps}_paper": f"ours: PGD-{steps}, paper's objective",
               f"pgd{steps}_ce": f"ours: PGD-{steps}, −log p_y"}
    fig, panels = _runs_panels(runs, 10, 4)
    for ax, (label, group) in panels:
        method_bars(ax, group, columns)
        ax.set_title(f"{label}, {group['seed'].nunique()} seed(s) (bars: mean, whiskers: min–max)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig
