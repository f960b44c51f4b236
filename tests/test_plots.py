"""The evaluation chapters' figures (7-11) against hand-made frames: one panel per source,
stacked vertically, legends outside the data, the paper's values only where a source has a
paper dataset."""

from types import SimpleNamespace

import matplotlib
import numpy as np
import pandas as pd
import pytest

from clustr_lib import paper, plots

matplotlib.use("Agg")

CIFAR10 = SimpleNamespace(
    label="digits32 for cifar10", paper_dataset="cifar10", settings={"num_nearest": 20}
)
STUDY = SimpleNamespace(label="digits32 study", paper_dataset=None, settings={"num_nearest": 20})
SOURCES = [CIFAR10, STUDY]


def labels(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def marked(ax, label) -> np.ndarray:
    """The points of the scatter ``label`` (the reported values marked on a panel)."""
    return np.asarray(next(c for c in ax.collections if c.get_label() == label).get_offsets())


def assert_stacked_with_legends_outside(fig, panels):
    fig.canvas.draw()
    axes = fig.axes
    assert len(axes) == panels
    boxes = [ax.get_position() for ax in axes]
    assert all(b.x0 == pytest.approx(boxes[0].x0) for b in boxes)  # one column
    assert all(upper.y0 > lower.y1 for upper, lower in zip(boxes, boxes[1:]))  # top to bottom
    for ax in axes:
        assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1


def test_eps_figure_marks_table4_on_the_paper_source_only():
    frame = pd.DataFrame(
        [
            {
                "source": s.label,
                "eps_255": e,
                "objective": o,
                "seed": k,
                "pgd20": 0.0,
                "pgd100": v + 2 * k,
            }
            for s in SOURCES
            for e, v in ((2.0, 80.0), (8.0, 60.0))
            for o in ("paper", "ce")
            for k in (0, 1)
        ]
    )
    fig = plots.eps_ablation(frame, SOURCES)
    assert_stacked_with_legends_outside(fig, 2)
    top, bottom = fig.axes
    assert labels(top) == [
        "ours: PGD, paper's objective",
        "ours: PGD, −log p_y",
        "paper (reported)",
    ]
    assert "paper (reported)" not in labels(bottom)
    table4 = paper.table4("cifar10")
    assert marked(top, "paper (reported)")[:, 1] == pytest.approx([v[1] for v in table4.values()])
    assert list(top.lines[0].get_ydata()) == [81.0, 61.0]  # mean over the two seeds
    assert "1 seed" not in top.get_title() and "(2 seeds)" in top.get_title()


def test_d_figure_marks_the_papers_best_point_and_the_tables_d():
    clean = pd.DataFrame(
        [
            {"source": s.label, "seed": 0, "D": d, "clean": 90.0}
            for s in SOURCES
            for d in range(1, 21)
        ]
    )
    robust = pd.DataFrame(
        [
            {"source": s.label, "seed": k, "D": d, "objective": o, "pgd20": 10.0 * k + d}
            for s in SOURCES
            for d in (1, 4, 20)
            for o in ("paper", "ce")
            for k in (0, 1)
        ]
    )
    fig = plots.d_ablation(clean, robust, SOURCES)
    assert_stacked_with_legends_outside(fig, 2)
    top, bottom = fig.axes
    star = [t for t in labels(top) if t.startswith("paper (reported)")]
    assert star == ["paper (reported): best PGD-20 77.04% at D = 4"]
    assert marked(top, star[0]).tolist() == [[4.0, 77.04]]
    assert not [t for t in labels(bottom) if t.startswith("paper")]
    assert "ours: PGD-20, paper's objective" in labels(bottom)
    paper_curve = next(
        line for line in bottom.lines if line.get_label() == "ours: PGD-20, paper's objective"
    )
    assert list(paper_curve.get_ydata()) == [6.0, 9.0, 25.0]  # D + 5
    assert any(list(line.get_xdata()) == [20, 20] for line in bottom.lines)  # the tables' D


def test_grouped_bars_returns_where_each_bar_stands():
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(
        {"g": ["a", "a", "b", "b"], "h": ["x", "y", "x", "y"], "seed": 0, "v": [1.0, 2.0, 3.0, 4.0]}
    )
    fig, ax = plt.subplots()
    at = plots.grouped_bars(ax, frame, "g", "h", "v")
    plt.close(fig)
    assert at == pytest.approx(
        {("a", "x"): -0.2, ("a", "y"): 0.2, ("b", "x"): 0.8, ("b", "y"): 1.2}
    )
    heights = {(p.get_x() + p.get_width() / 2): p.get_height() for p in ax.patches}
    assert heights == pytest.approx({-0.2: 1.0, 0.2: 2.0, 0.8: 3.0, 1.2: 4.0})


def test_adaptive_figure_marks_the_papers_two_values_on_clustr_qtrades_bars():
    frame = pd.DataFrame(
        [
            {"source": s.label, "method": m, "seed": 0, "objective": o, "pgd100": v}
            for s in SOURCES
            for m in ("ClusTR + QTRADES", "ClusTR")
            for o, v in (("paper", 70.0), ("magnet", 60.0), ("ce", 50.0))
        ]
    )
    fig = plots.adaptive_attack(frame, SOURCES)
    assert_stacked_with_legends_outside(fig, 2)
    top, bottom = fig.axes
    width = 0.8 / 3  # three objectives per method: paper's, Magnet, -log p_y
    assert marked(top, "paper (reported)") == pytest.approx(
        np.array([[-width, 74.04], [0.0, 66.52]])
    )
    assert "paper (reported)" not in labels(bottom)
    assert "ours: PGD, Magnet loss (adaptive)" in labels(bottom)


def test_attack_figure_marks_the_paper_and_robustbench_on_cifar10_only():
    rows = [
        {"source": s.label, "method": "ClusTR + QTRADES", "seed": 0, "attack": a, "robust": v}
        for s in SOURCES
        for a, v in (("PGD, paper's objective", 60.0), ("AutoAttack (standard)", 30.0))
    ]
    fig = plots.attack_comparison(pd.DataFrame(rows), SOURCES)
    assert_stacked_with_legends_outside(fig, 2)
    top, bottom = fig.axes
    assert marked(top, "paper (reported)") == pytest.approx(np.array([[-0.2, 74.04]]))
    assert marked(top, "RobustBench (reported AutoAttack)") == pytest.approx(np.array([[0.2, 0.0]]))
    assert labels(bottom) == ["ours: PGD, paper's objective", "ours: AutoAttack (standard)"]


def test_gradient_figure_counts_exact_zeros_per_objective_and_source():
    frame = pd.DataFrame(
        [
            {
                "source": s.label,
                "method": "ClusTR + QTRADES",
                "seed": 0,
                "objective": o,
                "norm": n,
                "clean_correct": True,
            }
            for s in SOURCES
            for o, norms in (("paper", (0.0, 1.0)), ("ce", (1e-9, 2.0)))
            for n in norms
        ]
    )
    fig = plots.gradient_norms(frame)
    assert_stacked_with_legends_outside(fig, 2)
    assert labels(fig.axes[1])[:2] == [
        "paper's objective (1 of 2 exactly 0)",
        "−log p_y (0 of 2 exactly 0)",
    ]
    assert fig.axes[1].get_title().startswith("digits32 study")


def test_attack_path_figure_has_a_row_per_source_and_one_legend_above():
    frame = pd.DataFrame(
        [
            {
                "source": s.label,
                "method": "ClusTR + QTRADES",
                "seed": k,
                "objective": o,
                "iteration": t,
                "mean_loss": float(t),
                "accuracy": 80.0 - 10 * t + k,
            }
            for s in SOURCES
            for o in ("paper", "ce")
            for k in (0, 1)
            for t in range(3)
        ]
    )
    fig = plots.attack_paths(frame)
    assert len(fig.axes) == 4
    loss_ax, acc_ax = fig.axes[2:]
    assert loss_ax.get_title() == "digits32 study: mean objective along the path"
    assert list(acc_ax.lines[0].get_ydata()) == [80.5, 70.5, 60.5]  # mean over seeds
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "ours: PGD, paper's objective",
        "ours: PGD, −log p_y",
    ]


def test_kmeans_figure_marks_the_papers_cifar10_values_on_the_cifar10_source_only():
    frame = pd.DataFrame(
        [
            {
                "source": s.label,
                "seed": k,
                "linear head": 90.0 + k,
                "k-means + Eq. 4 (D in the tables)": 20.0 + k,
                "σ²": 1.0,
            }
            for s in SOURCES
            for k in (0, 1)
        ]
    )
    fig = plots.kmeans_on_nominal(frame, SOURCES)
    assert_stacked_with_legends_outside(fig, 2)
    top, bottom = fig.axes
    assert marked(top, "paper (reported, CIFAR-10)").tolist() == [[0.0, 95.0], [1.0, 21.6]]
    assert labels(bottom) == ["ours: nominal network"]
    assert [p.get_height() for p in bottom.patches] == [90.5, 20.5]


def test_audit_dots_put_each_attack_on_its_row_at_the_mean_over_seeds():
    rows = [
        {"source": STUDY.label, "method": "ClusTR + QTRADES", "seed": k, "attack": "",
         "objective": o, "rule": r, "robust": v + 10 * k, "eps_255": 8.0}
        for k in (0, 1)
        for o, r, v in (("paper", "official", 50.0), ("paper", "any_iterate", 40.0),
                        ("ce", "official", 20.0))
    ] + [
        {"source": STUDY.label, "method": m, "seed": k, "attack": "AutoAttack (standard)",
         "objective": None, "rule": None, "robust": v, "eps_255": 8.0}
        for k in (0, 1)
        for m, v in (("ClusTR + QTRADES", 10.0), ("TRADES", 80.0 + k))
    ]  # fmt: skip
    fig = plots.attack_dots(pd.DataFrame(rows), SOURCES)  # CIFAR10 has no rows: no panel
    assert_stacked_with_legends_outside(fig, 1)
    (ax,) = fig.axes
    offset = 0.6 / 2 / 2  # two methods share a row, in protocol.METHODS' order: TRADES above
    step = 0.05  # the PGD rules a little apart, in RULE_MARKERS' order (official first)
    expected = {  # mean over the two seeds, whiskers to their min and max
        "ClusTR + QTRADES|official": [(55.0, 0 + offset - step), (25.0, 3 + offset - step)],
        "ClusTR + QTRADES|any_iterate": [(45.0, 0 + offset + step)],
        "ClusTR + QTRADES|autoattack": [(10.0, 4 + offset)],
        "TRADES|autoattack": [(80.5, 4 - offset)],
    }
    found, dots = {}, {}
    for c in ax.containers:
        x, y = c.lines[0].get_data()
        found.setdefault(c.get_label(), []).append((round(x[0], 9), round(y[0], 9)))
        dots[c.get_label()] = c
    assert {k: sorted(v) for k, v in found.items()} == {
        k: sorted((round(x, 9), round(y, 9)) for x, y in v) for k, v in expected.items()
    }
    assert dots["TRADES|autoattack"].lines[0].get_marker() == "D"
    assert dots["ClusTR + QTRADES|any_iterate"].lines[0].get_marker() == "x"
    (whiskers,) = dots["ClusTR + QTRADES|any_iterate"].lines[2]
    assert np.asarray(whiskers.get_segments())[0][:, 0] == pytest.approx([40.0, 50.0])
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "PGD, paper's objective"
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the paper's objective on top
    assert labels(ax) == ["TRADES", "ClusTR + QTRADES", "official rule", "any iterate",
                          "AutoAttack / Square"]  # fmt: skip
    assert "ε = 8/255" in ax.get_title()
    at_tenth = plots.attack_dots(pd.DataFrame(rows).assign(eps_255=25.5), SOURCES)
    assert "ε = 0.1" in at_tenth.axes[0].get_title()  # not 25.5/255
    colour = {c.get_label(): c.lines[0].get_color() for c in ax.containers}
    alone = plots.attack_dots(pd.DataFrame(rows[-1:]), SOURCES).axes[0]  # TRADES only
    assert alone.containers[0].lines[0].get_color() == colour["TRADES|autoattack"]
    two_radii = pd.DataFrame(rows).assign(eps_255=[8.0, 25.5] * (len(rows) // 2))
    with pytest.raises(ValueError, match="one radius"):
        plots.attack_dots(two_radii, SOURCES)


def test_a_title_says_how_many_seeds_each_point_averages():
    full = pd.DataFrame({"method": ["a", "a", "b", "b"], "attack": "x", "seed": [0, 1, 0, 1]})
    assert plots.seeds_text(full) == "2 seeds"
    under_way = full.iloc[:3]  # method b has only seed 0 so far
    assert plots.seeds_text(under_way) == "1–2 seeds"
    assert plots.seeds_text(full[full["seed"] == 0]) == "1 seed"
    assert plots.seeds_text(pd.DataFrame({"seed": [0, 1, 2]})) == "3 seeds"
