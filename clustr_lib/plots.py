"""The book's figures, drawn on axes the caller owns."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import PatchCollection
from matplotlib.patches import Circle

from . import paper
from .protocol import METHODS
from .studies import ATTACK_LABELS, RULE_LABELS, eps_text

CLASS_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def decision_regions(ax, predict, extent, n: int = 300, alpha: float = 0.25):
    """Shade the input plane by predicted class (Fig. 2's Voronoi cells, pulled back)."""
    x0, x1, y0, y1 = extent
    xs, ys = torch.linspace(x0, x1, n), torch.linspace(y0, y1, n)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    classes = predict(grid).reshape(n, n).numpy()
    cmap = plt.matplotlib.colors.ListedColormap(CLASS_COLOURS[: int(classes.max()) + 1])
    ax.imshow(
        classes,
        origin="lower",
        extent=extent,
        cmap=cmap,
        alpha=alpha,
        aspect="auto",
        interpolation="nearest",
    )
    ax.contour(
        xs.numpy(),
        ys.numpy(),
        classes,
        levels=np.arange(classes.max()) + 0.5,
        colors="k",
        linewidths=1.0,
    )


def scatter_classes(ax, x, y, size: float = 8):
    for c in np.unique(np.asarray(y)):
        pts = np.asarray(x)[np.asarray(y) == c]
        ax.scatter(
            pts[:, 0],
            pts[:, 1],
            s=size,
            color=CLASS_COLOURS[c],
            label=f"class {c}",
            edgecolors="none",
        )


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
    (line,) = ax.plot(
        thresholds, curves.mean(0), label=f"{label} (mean of {len(curves)})", color=colour
    )
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
        ax.add_patch(
            Circle(
                tuple(point),
                r,
                fill=False,
                linestyle=style,
                linewidth=1.5,
                label=f"{label}: r = {r:.3f}",
            )
        )
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)


def method_bars(ax, frame, columns: dict, order=None):
    """Grouped bars per method: mean over seeds with min–max whiskers (``columns``: name →
    label)."""
    long = frame.melt(
        id_vars=["method", "seed"],
        value_vars=list(columns),
        var_name="measure",
        value_name="accuracy",
    )
    long["measure"] = long["measure"].map(columns)
    grouped_bars(
        ax, long, "method", "measure", "accuracy", order=order, hue_order=list(columns.values())
    )
    ax.set_xticklabels(ax.get_xticklabels(), rotation=20, ha="right")
    ax.legend(fontsize=8)


def paper_vs_ours_bars(
    ax,
    frame,
    paper_table: dict,
    column: str = "pgd100_paper",
    paper_key: str = "pgd100",
    labels=("paper", "ours"),
):
    """Per method of the paper's table: its reported accuracy next to our mean (min–max);
    ``labels``: the legend's names of the two bars."""
    methods = list(paper_table)
    ours = frame.groupby("method")[column].agg(["mean", "min", "max"]).reindex(methods)
    pos = np.arange(len(methods))
    ax.bar(
        pos - 0.2,
        [paper_table[m][paper_key] for m in methods],
        0.4,
        label=labels[0],
        color="lightgrey",
        edgecolor="k",
    )
    ax.bar(
        pos + 0.2,
        ours["mean"].fillna(0),
        0.4,
        label=labels[1],
        color="tab:blue",
        yerr=[(ours["mean"] - ours["min"]).fillna(0), (ours["max"] - ours["mean"]).fillna(0)],
        capsize=2,
    )
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
    (line,) = ax.plot(stats.index, stats["mean"], marker="o", markersize=3, label=label, **style)
    ax.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.2)
    return line


def eps_curves(ax, frame, paper_points: dict | None = None, column: str = "pgd100"):
    """Table 4 as a figure: robust accuracy vs ε (units of 1/255) per objective; the paper's
    values (``{ε: (PGD-20, PGD-100)}``, the one of ``column``) as black crosses."""
    for objective, group in frame.groupby("objective", sort=False):
        _band(ax, group, "eps_255", column, f"ours: {ATTACK_LABELS[objective]}")
    if paper_points:
        reported = [v[0 if column == "pgd20" else 1] for v in paper_points.values()]
        ax.scatter(
            list(paper_points), reported, marker="x", color="k", zorder=3, label="paper (reported)"
        )
    ax.set_xlabel("ε (× 1/255)")
    ax.set_ylabel(f"{column.upper().replace('PGD', 'PGD-')} accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)


def d_curves(
    ax, clean, robust, paper_point: tuple | None = None, table_d: int = 20, column: str = "pgd20"
):
    """Fig. 4: clean and PGD accuracy vs D (log axis); the paper's best point as a star and
    the tables' D as a dotted line."""
    steps = column.upper().replace("PGD", "PGD-")
    _band(ax, clean, "D", "clean", "ours: clean (whole test set)", color="grey")
    for objective, group in robust.groupby("objective", sort=False):
        _band(ax, group, "D", column, f"ours: {ATTACK_LABELS[objective].replace('PGD', steps)}")
    if paper_point:
        ax.scatter(
            [paper_point[0]],
            [paper_point[1]],
            marker="*",
            s=150,
            color="k",
            zorder=3,
            label=f"paper (reported): best {steps} {paper_point[1]}% at D = {paper_point[0]}",
        )
    ax.axvline(table_d, color="k", linestyle=":", linewidth=1, label=f"D = {table_d} (tables)")
    ax.set_xscale("log")
    ticks = sorted({int(d) for d in robust["D"]} | {table_d})
    ax.set_xticks(ticks, [str(d) for d in ticks])
    ax.minorticks_off()
    ax.set_xlabel("D (nearest clusters in Eq. 4)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)


def grouped_bars(ax, frame, group: str, hue: str, value: str, order=None, hue_order=None):
    """Bars of ``value`` per ``group`` and ``hue``: mean over seeds, min-max whiskers.
    Returns ``{(group, hue): x}``, where each bar stands (to mark reported values on it)."""
    groups = order or list(dict.fromkeys(frame[group]))
    hues = hue_order or list(dict.fromkeys(frame[hue]))
    width = 0.8 / len(hues)
    positions = {}
    for k, h in enumerate(hues):
        stats = (
            frame[frame[hue] == h].groupby(group)[value].agg(["mean", "min", "max"]).reindex(groups)
        )
        pos = np.arange(len(groups)) + (k - (len(hues) - 1) / 2) * width
        whiskers = [
            (stats["mean"] - stats["min"]).fillna(0),
            (stats["max"] - stats["mean"]).fillna(0),
        ]
        ax.bar(pos, stats["mean"].fillna(0), width, label=h, yerr=whiskers, capsize=2)
        positions.update({(g, h): x for g, x in zip(groups, pos)})
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel(f"{value} (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    return positions


def gradient_histograms(ax, frame, floor: float = 1e-12):
    """Distribution of ``‖∇_x loss‖₂`` per objective on a log axis; exact zeros are drawn at
    ``floor`` and counted in the legend."""
    values = frame["norm"].to_numpy(dtype=float)
    top = max(float(values.max()), floor * 10) if len(values) else 1.0
    bins = np.logspace(np.log10(floor) - 0.5, np.log10(top) + 0.5, 40)
    for objective, group in frame.groupby("objective", sort=False):
        norms = group["norm"].to_numpy(dtype=float)
        zeros = int((norms == 0).sum())
        ax.hist(
            np.where(norms == 0, floor, norms),
            bins=bins,
            histtype="step",
            linewidth=1.5,
            label=f"{ATTACK_LABELS.get(objective, objective).removeprefix('PGD, ')} "
            f"({zeros} of {len(norms)} exactly 0)",
        )
    ax.axvline(
        float(np.finfo(np.float32).eps),
        color="k",
        linestyle=":",
        linewidth=1,
        label="float32 resolution (1.2e-7)",
    )
    ax.set_xscale("log")
    ax.set_xlabel("‖∇ₓ loss‖₂ at the clean input (zeros drawn at the left edge)")
    ax.set_ylabel("points")
    ax.legend(fontsize=7)


def attack_path_curves(loss_ax, acc_ax, frame):
    """Mean objective (symmetric-log axis: the objectives differ in sign and scale) and
    accuracy along one PGD run, per objective."""
    for objective, group in frame.groupby("objective", sort=False):
        mean = group.groupby("iteration")[["mean_loss", "accuracy"]].mean()
        label = f"ours: {ATTACK_LABELS.get(objective, objective)}"
        loss_ax.plot(mean.index, mean["mean_loss"], label=label)
        acc_ax.plot(mean.index, mean["accuracy"], label=label)
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
# clustr_lib.studies.runs_frame, stacked vertically, legend outside the data (the panel
# helpers are those of the evaluation chapters, below).


def paper_vs_ours_figure(
    runs, paper_table: dict, column: str = "pgd100_paper", paper_key: str = "pgd100"
):
    """Chapters 3–5 (Table 1 or 3 as a figure): per method of the paper's table, its reported
    accuracy (``paper_key``) next to ours (``column`` of :func:`clustr_lib.studies.runs_frame`:
    mean over seeds, min–max whiskers; "not run" where we have no run), one panel per source.
    Returns the figure."""
    steps = paper_key.upper().replace("PGD", "PGD-")
    labels = list(dict.fromkeys(runs["source"]))
    fig, axes = _source_panels(labels, 3.8, 9)
    for ax, label in zip(axes[:, 0], labels):
        own = _of(runs, label)
        paper_vs_ours_bars(
            ax,
            own,
            paper_table,
            column,
            paper_key,
            labels=(f"paper (reported, {steps})", f"ours: {steps}, paper's objective"),
        )
        _title(ax, label, own, f"{steps} accuracy, paper vs ours")
        _outside(ax)
    return fig


def method_objective_bars(runs, steps: int = 100):
    """Chapter 6 (the digits32 study, Table 1's protocol): per method, clean accuracy and
    PGD-``steps`` accuracy under the paper's objective and under −log p_y (bars: mean over
    seeds, whiskers: min–max), one panel per source of :func:`clustr_lib.studies.runs_frame`.
    Returns the figure."""
    columns = {
        "clean_accuracy": "ours: clean (whole test set)",
        f"pgd{steps}_paper": f"ours: PGD-{steps}, paper's objective",
        f"pgd{steps}_ce": f"ours: PGD-{steps}, −log p_y",
    }
    labels = list(dict.fromkeys(runs["source"]))
    fig, axes = _source_panels(labels, 4, 10)
    for ax, label in zip(axes[:, 0], labels):
        own = _of(runs, label)
        method_bars(ax, own, columns)
        _title(ax, label, own, "accuracy per method (bars: mean, whiskers: min–max)")
        _outside(ax)
    return fig


# ---------------------------------------------------------------------------------------
# The 2-D chapters (1-2), figure-level: panels stacked at page width, legends outside the
# data (right of the panel).


def _legend_right_2d(ax, **kwargs):
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8, **kwargs)


def certified_balls_figure(predict, x, y, radii: dict, extent, title: str | None = None):
    """Chapter 1, Fig. 2 in the input plane: decision regions of ``predict``, the points ``x``
    (classes ``y``) and their certified ℓ2 balls, one panel per ``label: radii``, stacked."""
    fig, axes = plt.subplots(len(radii), 1, figsize=(7.5, 4.8 * len(radii)), squeeze=False)
    for ax, (label, r) in zip(axes[:, 0], radii.items()):
        decision_regions(ax, predict, extent)
        scatter_classes(ax, x, y, size=12)
        certified_circles(ax, x, r)
        ax.set(
            title=label, xlim=extent[:2], ylim=extent[2:], xlabel="x₁", ylabel="x₂", aspect="equal"
        )
    _legend_right_2d(axes[0, 0])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def exact_vs_certified_figure(exact, certified: dict, title: str | None = None):
    """Chapter 1: exact minimal distance against certified radius (:func:`exact_vs_certified`),
    one series per ``label: radii``; Theorem 1 is sound when no point lies below the diagonal."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    exact_vs_certified(ax, exact, certified)
    _legend_right_2d(ax)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def robust_curves_figure(thresholds, exact_curve, certified: dict):
    """Chapter 1: exact robust accuracy (black) and the certified accuracy of each
    ``label: curve`` (Theorem 1) against the radius; the certified curves lie below."""
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.plot(thresholds, exact_curve, "k", label="exact (search)")
    for label, curve in certified.items():
        ax.plot(thresholds, curve, label=f"Theorem 1, {label}")
    ax.set_xlabel("radius r")
    ax.set_ylabel("accuracy (fraction of points)")
    ax.set_ylim(0, 1.02)
    _legend_right_2d(ax)
    fig.tight_layout()
    return fig


def reduction_figure(point, centroids, classes, radii: dict):
    """Chapter 1 (App. A.1): :func:`bisector_example` with its legend outside the plane."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    bisector_example(ax, point, centroids, classes, radii)
    _legend_right_2d(ax)
    ax.set_title("the paper's reduction against the sound one (L = 1)")
    fig.tight_layout()
    return fig


def datasets_figure(datasets, n_train: int, n_test: int, noise: float, seed: int = 0):
    """Chapter 2, Fig. 3(a), (c): the training points of each 2-D set as seed ``seed`` draws
    them (:func:`clustr_lib.data.train_test_2d`), one panel per set side by side, coloured by
    class, the legend below. Returns the figure."""
    from .data import train_test_2d

    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 4.8), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        (x, y), _ = train_test_2d(name, n_train, n_test, noise, seed)
        scatter_classes(ax, x.numpy(), y.numpy(), size=6)
        ax.set(title=f"{name}: {n_train} training points", xlabel="x₁", ylabel="x₂")
        ax.set_aspect("equal", adjustable="datalim")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    plt.close(fig)
    return fig


def warm_start_figure(
    thresholds, curves: dict, certified_xlim: float | None = 0.3, colours=("tab:orange", "tab:blue")
):
    """Chapter 2, Fig. 3(b), (d): per set (``{set: {method: {"certified"|"exact": [seeds,
    radii]}}}``) one panel of certified accuracy (Theorem 1) and one of exact robust accuracy,
    stacked; mean over seeds with the min–max band, one colour per method (legend beside the
    first panel)."""
    panels = [(name, kind) for name in curves for kind in ("certified", "exact")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 3.2 * len(panels)), squeeze=False)
    titles = {
        "certified": "certified accuracy (Theorem 1, product bound)",
        "exact": "exact robust accuracy (search)",
    }
    for ax, (name, kind) in zip(axes[:, 0], panels):
        for (method, c), colour in zip(curves[name].items(), colours):
            curves_with_spread(ax, thresholds, c[kind], method, colour)
        ax.set_title(f"{name}: {titles[kind]}")
        ax.set_ylabel("accuracy")
        if kind == "certified" and certified_xlim:
            ax.set_xlim(0, certified_xlim)
    _legend_right_2d(axes[0, 0])
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# The evaluation chapters (7-11), figure-level: one panel (or row) per source of a
# clustr_lib.studies frame, stacked vertically at page width, legends outside the data.


def _source_panels(labels, height: float, width: float = 10.0, ncols: int = 1):
    """A figure with one row of ``ncols`` axes per source label; closed in pyplot so a
    notebook shows it once, as the returned value."""
    fig, axes = plt.subplots(
        len(labels),
        ncols,
        figsize=(width, height * len(labels)),
        squeeze=False,
        layout="constrained",
    )
    plt.close(fig)
    return fig, axes


def _outside(ax) -> None:
    """The axes' legend to the right of its data."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)


def _of(frame, source: str):
    return frame[frame["source"] == source]


def seeds_text(frame) -> str:
    """How many seeds a figure's points average: ``"3 seeds"``, or ``"1–2 seeds"`` when its
    methods and attacks (a recording under way) have different numbers recorded."""
    if not len(frame):
        return "0 seeds"
    keys = [c for c in ("method", "attack") if c in frame]
    counts = frame.groupby(keys)["seed"].nunique() if keys else frame["seed"].agg(["nunique"])
    low, high = int(counts.min()), int(counts.max())
    count = f"{low}" if low == high else f"{low}–{high}"
    return f"{count} seed" + ("" if high == 1 else "s")


def _title(ax, label: str, frame, what: str) -> None:
    ax.set_title(f"{label}: {what} ({seeds_text(frame)})", fontsize=10)


def _mark_reported(ax, points, label: str = "paper (reported)") -> None:
    """Black markers at ``[(x, value)]``: values another party reported, on our bars."""
    if points:
        xs, ys = zip(*points)
        ax.scatter(xs, ys, marker="D", s=40, color="k", zorder=4, label=label)


def eps_ablation(frame, sources, column: str = "pgd100"):
    """Chapter 7, Table 4 as a figure: ClusTR + QTRADES' ``column`` accuracy against ε per
    objective (:func:`clustr_lib.studies.eps_ablation`), one panel per source, with the
    paper's Table 4 values where the source has a paper dataset. Returns the figure."""
    fig, axes = _source_panels(sources, 3.4)
    for ax, s in zip(axes[:, 0], sources):
        own = _of(frame, s.label)
        eps_curves(ax, own, paper.table4(s.paper_dataset) if s.paper_dataset else None, column)
        _title(ax, s.label, own, "ClusTR + QTRADES against ε")
        _outside(ax)
    return fig


def d_ablation(clean, robust, sources, column: str = "pgd20"):
    """Chapter 8, Fig. 4: clean and ``column`` accuracy of ClusTR + QTRADES against D
    (:func:`clustr_lib.studies.d_ablation`), one panel per source, with the paper's best point
    (App. E.4) where the source has a paper dataset and the tables' D dotted. Returns the figure."""
    fig, axes = _source_panels(sources, 3.4)
    for ax, s in zip(axes[:, 0], sources):
        best = paper.D_ABLATION.get(s.paper_dataset)
        d_curves(
            ax,
            _of(clean, s.label),
            _of(robust, s.label),
            (best["best_D"], best["best_pgd20"]) if best and column == "pgd20" else None,
            table_d=s.settings["num_nearest"],
            column=column,
        )
        _title(ax, s.label, _of(robust, s.label), "ClusTR + QTRADES against D")
        _outside(ax)
    return fig


def adaptive_attack(frame, sources, column: str = "pgd100"):
    """Chapter 9 (Sec. 4.2): PGD accuracy per method and objective
    (:func:`clustr_lib.studies.adaptive_attack`; bars: mean over seeds, whiskers: min–max), one
    panel per source, with the paper's two values for ClusTR + QTRADES (PGD-100 on its objective,
    and the Magnet-loss attack) where it reports them for the source's dataset. Returns the
    figure."""
    fig, axes = _source_panels(sources, 3.6)
    for ax, s in zip(axes[:, 0], sources):
        own = _of(frame, s.label)
        own = own.assign(attack="ours: " + own["objective"].map(ATTACK_LABELS))
        at = grouped_bars(ax, own, "method", "attack", column)
        reported = paper.ADAPTIVE.get(s.paper_dataset, {})
        bars = {
            ("ClusTR + QTRADES", f"ours: {ATTACK_LABELS[o]}"): reported.get(key)
            for o, key in (("paper", "pgd100"), ("magnet", "adaptive"))
        }
        _mark_reported(ax, [(at[bar], v) for bar, v in bars.items() if v is not None and bar in at])
        ax.set_ylabel(f"{column.upper().replace('PGD', 'PGD-')} accuracy (%)")
        _title(ax, s.label, own, "the adaptive attack")
        _outside(ax)
    return fig


def attack_comparison(comparison, sources):
    """Chapter 10: robust accuracy of the same models under every attack
    (:func:`clustr_lib.studies.attack_comparison`; bars: mean over seeds, whiskers: min–max),
    one panel per source; on a paper dataset the paper's PGD-100 for ClusTR + QTRADES is marked,
    and on CIFAR-10 RobustBench's AutoAttack value. Returns the figure."""
    sources = [s for s in sources if s.label in set(comparison["source"])]  # with rows only
    fig, axes = _source_panels(sources, 3.8)
    for ax, s in zip(axes[:, 0], sources):
        own = _of(comparison, s.label).assign(attack=lambda f: "ours: " + f["attack"])
        at = grouped_bars(ax, own, "method", "attack", "robust")
        bar = ("ClusTR + QTRADES", f"ours: {ATTACK_LABELS['paper']}")
        if s.paper_dataset and bar in at:
            reported = paper.accuracy_table(s.paper_dataset)["ClusTR + QTRADES"]["pgd100"]
            _mark_reported(ax, [(at[bar], reported)])
        bar = ("ClusTR + QTRADES", f"ours: {ATTACK_LABELS['autoattack']}")
        if s.paper_dataset == "cifar10" and bar in at:
            ax.scatter(
                [at[bar]],
                [paper.ROBUSTBENCH_CLUSTR["autoattack"]],
                marker="v",
                s=60,
                color="white",
                edgecolor="k",
                zorder=4,
                clip_on=False,
                label="RobustBench (reported AutoAttack)",
            )
        ax.set_ylabel("robust accuracy (%)")
        _title(ax, s.label, own, "every attack")
        _outside(ax)
    return fig


# One colour per method in every figure that colours by method (the headline method red)
METHOD_COLOURS = dict(
    zip(
        METHODS.values(),
        ("0.45", "#ff7f0e", "#2ca02c", "#9467bd", "#1f77b4", "#8c564b", "#d62728"),
        strict=True,
    )
)
# Chapter 12's rows, top to bottom: the paper's PGD objective first, the strongest attacks last
AUDIT_ROWS = ("paper", "magnet", "margin", "ce", "autoattack", "square")
RULE_MARKERS = {"official": "o", "any_restart": "^", "any_iterate": "x"}  # AutoAttack: "D"


def attack_dots(comparison, sources):
    """Chapter 12: the audit of :func:`clustr_lib.studies.attack_comparison` at one radius as
    dots, one panel per source: a row per attack (PGD-100 under each objective, AutoAttack,
    Square alone; :data:`AUDIT_ROWS`), robust accuracy along x (the mean over seeds, whiskers
    min–max), a colour per method (:data:`METHOD_COLOURS`, the same in every figure) and a
    marker per PGD rule (:data:`RULE_MARKERS`, the rules a little apart so that equal values
    stay visible). How far a cluster method's dots
    move left from the top row is how much the paper's objective over-states its robustness
    (a cross-entropy network has no dot there: its paper's objective is −log p_y). Returns the
    figure."""
    radii = set(comparison["eps_255"]) if "eps_255" in comparison else set()
    if len(radii) > 1:
        raise ValueError(f"attack_dots draws one radius; got ε·255 = {sorted(radii)}")
    sources = [s for s in sources if s.label in set(comparison["source"])]  # with rows only
    methods = [m for m in METHOD_COLOURS if m in set(comparison["method"])]
    names = {label: key for key, label in ATTACK_LABELS.items()}
    fig, axes = _source_panels(sources, 0.4 * len(AUDIT_ROWS) + 1.2, width=7.5)
    for ax, s in zip(axes[:, 0], sources):
        own = _of(comparison, s.label).copy()
        pgd = own["rule"].notna() if "rule" in own else np.zeros(len(own), bool)
        own["row"] = np.where(pgd, own.get("objective"), own["attack"].map(names))
        own["marker"] = np.where(pgd, own.get("rule"), "autoattack")
        shown = [m for m in methods if m in set(own["method"])]
        for k, method in enumerate(shown):
            offset = (k - (len(shown) - 1) / 2) * 0.6 / max(len(shown), 1)
            for (row, marker), g in own[own["method"] == method].groupby(["row", "marker"]):
                rank = list(RULE_MARKERS).index(marker) if marker in RULE_MARKERS else 1
                y = AUDIT_ROWS.index(row) + offset + (rank - 1) * 0.05  # rules side by side
                lo, mean, hi = g["robust"].min(), g["robust"].mean(), g["robust"].max()
                ax.errorbar(
                    [mean], [y], xerr=[[mean - lo], [hi - mean]], color=METHOD_COLOURS[method],
                    marker=RULE_MARKERS.get(marker, "D"), markersize=6, linestyle="none",
                    capsize=2, label=f"{method}|{marker}",
                )  # fmt: skip
        ax.set_yticks(range(len(AUDIT_ROWS)), [ATTACK_LABELS[r] for r in AUDIT_ROWS])
        ax.set_ylim(len(AUDIT_ROWS) - 0.5, -0.5)  # the paper's objective on top
        ax.set_xlim(-2, 102)
        ax.set_xlabel("robust accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
        for y in range(len(AUDIT_ROWS) - 1):
            ax.axhline(y + 0.5, color="0.85", linewidth=0.8)
        at = f" at ε = {eps_text(next(iter(radii)) / 255)}" if radii else ""
        _title(ax, s.label, own, f"every attack{at}")
        method_keys = [
            plt.Line2D([], [], color=METHOD_COLOURS[m], marker="s", linestyle="none", label=m)
            for m in shown
        ]
        rule_keys = [
            plt.Line2D([], [], color="0.3", marker=RULE_MARKERS.get(r, "D"), linestyle="none",
                       label=RULE_LABELS.get(r, "AutoAttack / Square"))
            for r in dict.fromkeys(own["marker"])
        ]  # fmt: skip
        ax.legend(
            handles=method_keys + rule_keys, fontsize=8, loc="upper left",
            bbox_to_anchor=(1.01, 1), borderaxespad=0,
        )  # fmt: skip
    return fig


def gradient_norms(frame):
    """Chapter 10: the distribution of ``‖∇_x loss‖₂`` at the clean input per objective
    (:func:`gradient_histograms` of :func:`clustr_lib.studies.gradient_norms`), one panel per
    source. Returns the figure."""
    labels = list(dict.fromkeys(frame["source"]))
    fig, axes = _source_panels(labels, 3.2)
    for ax, label in zip(axes[:, 0], labels):
        own = _of(frame, label)
        gradient_histograms(ax, own)
        _title(ax, label, own, f"{', '.join(dict.fromkeys(own['method']))}, input gradients")
        _outside(ax)
    return fig


def attack_paths(frame):
    """Chapter 10: the mean objective and the accuracy along one PGD run per objective
    (:func:`attack_path_curves` of :func:`clustr_lib.studies.attack_paths`, mean over seeds),
    one row of two panels per source, one legend above them. Returns the figure."""
    labels = list(dict.fromkeys(frame["source"]))
    fig, axes = _source_panels(labels, 3.0, ncols=2)
    for (loss_ax, acc_ax), label in zip(axes, labels):
        attack_path_curves(loss_ax, acc_ax, _of(frame, label))
        for ax, what in ((loss_ax, "mean objective"), (acc_ax, "accuracy")):
            ax.get_legend().remove()
            ax.set_title(f"{label}: {what} along the path", fontsize=10)
    fig.legend(
        *axes[0, 0].get_legend_handles_labels(), loc="outside upper center", ncol=4, fontsize=8
    )
    return fig


def kmeans_on_nominal(frame, sources):
    """Chapter 11 (App. B.1): the nominal network's head against k-means + Eq. 4 (and the
    nearest cluster) on its features (:func:`clustr_lib.studies.kmeans_on_nominal`; bars:
    mean over seeds, whiskers: min–max), one panel per source; the paper's CIFAR-10 values are
    marked on a cifar10 source only. Returns the figure."""
    classifiers = [c for c in frame.columns if c not in ("source", "seed", "σ²")]
    reported = {
        "linear head": paper.KMEANS_ON_NOMINAL["nominal_accuracy"],
        "k-means + Eq. 4 (D in the tables)": paper.KMEANS_ON_NOMINAL["kmeans_eq4_accuracy"],
    }
    fig, axes = _source_panels(sources, 3.4)
    for ax, s in zip(axes[:, 0], sources):
        own = _of(frame, s.label)
        long = own.melt(
            id_vars=["seed"], value_vars=classifiers, var_name="classifier", value_name="accuracy"
        ).assign(who="ours: nominal network")
        at = grouped_bars(ax, long, "classifier", "who", "accuracy")
        if s.paper_dataset == "cifar10":
            _mark_reported(
                ax,
                [(at[(c, "ours: nominal network")], v) for c, v in reported.items()],
                "paper (reported, CIFAR-10)",
            )
        ax.set_xticks(range(len(classifiers)), [c.replace(" (", "\n(") for c in classifiers])
        ax.set_ylabel("test accuracy (%)")
        _title(ax, s.label, own, "nominal network")
        _outside(ax)
    return fig
