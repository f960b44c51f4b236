"""The chapters' tables and figures against hand-made frames."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from clustr_lib import paper, plots, tables


def test_the_papers_table_for_each_dataset():
    assert paper.accuracy_table("cifar100")["ClusTR + QTRADES"]["pgd100"] == 52.40
    assert paper.accuracy_table("svhn") is paper.TABLE1["svhn"]
    with pytest.raises(ValueError, match="no table"):
        paper.accuracy_table("digits32")


def test_eps_table_puts_the_papers_values_next_to_our_means():
    frame = pd.DataFrame(
        [
            {"eps_255": e, "objective": o, "seed": s, "pgd20": v + s, "pgd100": v + s - 1}
            for e, v in ((2.0, 80.0), (16.0, 50.0))
            for o in ("paper", "ce")
            for s in (0, 2)
        ]
    )
    table = tables.eps_table(frame, {2: (81.99, 81.54), 16: (57.67, 57.05)})
    assert list(table.index) == [2.0, 16.0]
    assert table.loc[16.0, "paper PGD-100"] == 57.05 and table.loc[2.0, "paper PGD-20"] == 81.99
    assert table.loc[2.0, "ours PGD100, paper"] == 80.0  # mean of 79 and 81
    assert table.loc[16.0, "ours PGD20, ce"] == 51.0


def test_mean_sd_table_formats_each_cell_over_seeds():
    frame = pd.DataFrame(
        {
            "method": ["A", "A", "B"],
            "attack": ["x", "x", "x"],
            "seed": [0, 1, 0],
            "robust": [10.0, 20.0, 5.0],
        }
    )
    table = tables.mean_sd_table(frame, "method", "attack", "robust")
    assert table.loc["A", "x"] == "15.00 ± 7.07" and table.loc["B", "x"] == "5.00"
    two = pd.concat(
        [frame, pd.DataFrame({"method": ["A"], "attack": ["y"], "seed": [0], "robust": [1.0]})]
    )
    assert tables.mean_sd_table(two, "method", "attack", "robust").loc["B", "y"] == "—"
    ordered = tables.mean_sd_table(two, "method", "attack", "robust", column_order=["y", "z"])
    assert list(ordered.columns) == ["y", "x"] and list(ordered.index) == ["A", "B"]
    counted = tables.mean_sd_table(two, "method", "attack", "robust", seeds=True)
    assert list(counted.columns) == ["seeds", "x", "y"] and list(counted["seeds"]) == [2, 1]


def test_the_audit_columns_start_with_the_papers_objective_and_end_with_autoattack():
    from clustr_lib import studies

    labels = studies.AUDIT_LABELS
    assert labels[:4] == ["PGD, paper's objective", "PGD, paper's objective (official rule)",
                          "PGD, paper's objective (any restart)",
                          "PGD, paper's objective (any iterate)"]  # fmt: skip
    assert labels[4] == "PGD, −log p_y" and labels[-2:] == [
        "AutoAttack (standard)", "Square alone (black-box)"
    ]  # fmt: skip
    # 4 objectives, unmarked (the protocol's first rule) or under each of the 3 rules named
    assert len(labels) == 4 * 4 + 2 == len(set(labels))


# ---------------------------------------------------------------------------------------
# Chapters 3-6: tables and figures over clustr_lib.studies.runs_frame (hand-made frames).


def benchmark_runs(rows):
    """A runs frame as studies.runs_frame makes it, from
    ``(source, method, seed, clean, PGD-100 paper's objective, PGD-100 -log p_y, minutes)``;
    PGD-20 is PGD-100 + 1 and the attacked points' clean accuracy is clean - 10."""
    return pd.DataFrame(
        [
            {
                "source": s,
                "method": m,
                "seed": k,
                "clean_accuracy": c,
                "clean_attacked": c - 10,
                "train_minutes": t,
                "device": "CPU",
                "pgd20_paper": p + 1,
                "pgd100_paper": p,
                "pgd20_ce": ce + 1,
                "pgd100_ce": ce,
            }
            for s, m, k, c, p, ce, t in rows
        ]
    )


def test_benchmark_tables_read_the_runs_frame():
    runs = benchmark_runs(
        [
            ("cifar10", "ClusTR + QTRADES", 0, 90.0, 70.0, 30.0, 0.014),
            ("cifar10", "ClusTR + QTRADES", 1, 92.0, 74.0, 34.0, 0.016),
            ("cifar10", "Nominal Training", 0, 95.0, 0.0, 0.0, 0.006),
        ]
    )
    table = tables.paper_vs_ours(runs, "cifar10")
    row = table.loc["ClusTR + QTRADES"]
    assert "WRN-34-10" in table.loc["TRADES", ("the paper's row", "source")]
    assert "90%" in table.loc["Nominal Training", ("the paper's row", "source")]
    assert table.loc["ClusTR + QTRADES", ("the paper's row", "source")] == "the paper's ResNet-18"
    assert row[("natural", "paper")] == 91.03 and row[("natural", "ours")] == "91.00 ± 1.41"
    assert row[("pgd20", "ours")] == "73.00 ± 2.83"  # 71 and 75
    assert row[("pgd100", "Δ")] == pytest.approx(72.0 - 74.04)
    assert table.loc["Nominal Training", ("pgd100", "ours")] == "0.00"  # one seed: no sd
    assert table.loc["TRADES", ("natural", "ours")] == "not run"
    assert np.isnan(table.loc["TRADES", ("natural", "Δ")])
    objectives = tables.objectives_table(runs)
    assert list(objectives.index) == ["ClusTR + QTRADES", "Nominal Training"]
    assert objectives.loc["ClusTR + QTRADES", "clean_attacked"] == 81.0
    assert objectives.loc["ClusTR + QTRADES", "pgd20_paper"] == 73.0
    assert objectives.loc["ClusTR + QTRADES", "pgd100_ce"] == 32.0
    assert list(objectives["seeds"]) == [2, 1]


def test_training_times_ratio_uses_the_unrounded_means():
    runs = benchmark_runs(
        [
            ("cifar10", "ClusTR + QTRADES", 0, 90.0, 70.0, 30.0, 0.014),
            ("cifar10", "ClusTR + QTRADES", 1, 92.0, 74.0, 34.0, 0.016),
            ("cifar10", "Nominal Training", 0, 95.0, 0.0, 0.0, 0.006),
        ]
    )
    times = tables.training_times(runs, paper.TRAINING_MINUTES["cifar10"])
    assert list(times.index) == list(paper.TRAINING_MINUTES["cifar10"])  # no nominal row
    assert times.loc["ClusTR + QTRADES", "paper (min, GTX 1080Ti)"] == 115
    assert times.loc["ClusTR + QTRADES", "ours / nominal"] == 2.5  # 0.015 / 0.006
    assert np.isnan(times.loc["TRADES", "ours (min)"])
    assert np.isnan(times.loc["TRADES", "ours / nominal"])
    without = runs[runs["method"] != "Nominal Training"]
    no_nominal = tables.training_times(without, {"ClusTR + QTRADES": 115})
    assert no_nominal.loc["ClusTR + QTRADES", "ours (min)"] == pytest.approx(0.01, abs=0.01)
    assert np.isnan(no_nominal.loc["ClusTR + QTRADES", "ours / nominal"])


def test_paper_vs_ours_figure_stacks_one_panel_per_source():
    runs = benchmark_runs(
        [
            ("cifar10", "ClusTR + QTRADES", 0, 90.0, 70.0, 30.0, 1.0),
            ("cifar10", "ClusTR + QTRADES", 1, 92.0, 74.0, 34.0, 1.0),
            ("cifar10", "Nominal Training", 0, 95.0, 10.0, 10.0, 1.0),
            ("digits32 for cifar10", "ClusTR + QTRADES", 0, 50.0, 40.0, 20.0, 1.0),
        ]
    )
    reported = {
        m: paper.TABLE1["cifar10"][m] for m in ("Nominal Training", "ClusTR + QTRADES", "TRADES")
    }
    fig = plots.paper_vs_ours_figure(runs, reported)
    fig.canvas.draw()
    top, bottom = fig.axes
    assert top.get_position().y0 > bottom.get_position().y1  # stacked vertically
    assert top.get_title().startswith("cifar10: PGD-100") and "(1–2 seeds)" in top.get_title()
    assert bottom.get_title().startswith("digits32 for cifar10")
    # the paper's bars (Nominal, ClusTR + QTRADES, TRADES), then our means (TRADES: not run)
    heights = [p.get_height() for p in top.patches]
    assert heights == pytest.approx([0.0, 74.04, 56.43, 10.0, 72.0, 0.0])
    assert [p.get_height() for p in bottom.patches][3:] == pytest.approx([0.0, 40.0, 0.0])
    assert "not run" in [t.get_text() for t in top.texts]
    legend = top.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "paper (reported, PGD-100)",
        "ours: PGD-100, paper's objective",
    ]
    assert legend.get_window_extent().x0 >= top.get_window_extent().x1  # outside the data


def test_method_objective_bars_show_clean_and_both_objectives_per_method():
    runs = benchmark_runs(
        [
            ("digits32 study", "Nominal Training", 0, 98.0, 50.0, 50.0, 1.0),
            ("digits32 study", "Nominal Training", 1, 96.0, 40.0, 40.0, 1.0),
            ("digits32 study", "ClusTR", 0, 99.0, 60.0, 30.0, 1.0),
        ]
    )
    fig = plots.method_objective_bars(runs)
    fig.canvas.draw()
    (ax,) = fig.axes
    # per series (clean, PGD-100 paper's objective, PGD-100 -log p_y), one bar per method
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([97.0, 99.0, 45.0, 60.0, 45.0, 30.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Nominal Training", "ClusTR"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "ours: clean (whole test set)",
        "ours: PGD-100, paper's objective",
        "ours: PGD-100, −log p_y",
    ]
    clean = next(c for c in ax.containers if getattr(c, "errorbar", None))  # the first series
    whisker = clean.errorbar.lines[2][0].get_segments()[0]  # Nominal's clean: 96 to 98
    assert [y for _, y in whisker] == pytest.approx([96.0, 98.0])
    assert "(1–2 seeds)" in ax.get_title()  # Nominal has 2, ClusTR 1
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1


# ---------------------------------------------------------------------------------------
# Chapters 7-11: tables over clustr_lib.studies frames with a "source" column (hand-made).


def eval_source(label, paper_dataset=None, num_nearest=20):
    """What the tables read of a clustr_lib.sources.Source."""
    return SimpleNamespace(
        label=label, paper_dataset=paper_dataset, settings={"num_nearest": num_nearest}
    )


EVAL_SOURCES = [eval_source("digits32 for cifar10", "cifar10"), eval_source("digits32 study")]


def test_mean_sd_table_indexes_by_several_columns():
    frame = pd.DataFrame(
        {
            "source": ["s", "s", "s", "t"],
            "method": ["A", "A", "B", "A"],
            "attack": ["x"] * 4,
            "seed": [0, 1, 0, 0],
            "robust": [10.0, 20.0, 5.0, 7.0],
        }
    )
    table = tables.mean_sd_table(frame, ["source", "method"], "attack", "robust")
    assert list(table.index) == [("s", "A"), ("s", "B"), ("t", "A")]
    assert table.loc[("s", "A"), "x"] == "15.00 ± 7.07" and table.loc[("t", "A"), "x"] == "7.00"


def test_eps_ablation_table_shows_each_source_and_the_papers_table4_where_it_has_one():
    frame = pd.DataFrame(
        [
            {
                "source": s.label,
                "eps_255": e,
                "objective": o,
                "seed": k,
                "pgd20": v + k,
                "pgd100": v + k - 1,
            }
            for s in EVAL_SOURCES
            for e, v in ((2.0, 80.0), (8.0, 60.0))
            for o in ("paper", "ce")
            for k in (0, 2)
        ]
    )
    table = tables.eps_ablation(frame, EVAL_SOURCES)
    assert list(table.index) == [
        ("digits32 for cifar10", 2.0),
        ("digits32 for cifar10", 8.0),
        ("digits32 study", 2.0),
        ("digits32 study", 8.0),
    ]
    assert list(table.columns[:2]) == ["paper PGD-20", "paper PGD-100"]
    assert table.loc[("digits32 for cifar10", 2.0), "paper PGD-100"] == 81.54  # Table 4
    assert table.loc[("digits32 for cifar10", 8.0), "paper PGD-20"] == 74.44  # Table 1
    assert np.isnan(table.loc[("digits32 study", 8.0), "paper PGD-100"])  # no paper dataset
    assert (
        table.loc[("digits32 study", 2.0), "ours: PGD-100, paper's objective"] == 80.0
    )  # (79 + 81) / 2
    assert table.loc[("digits32 study", 8.0), "ours: PGD-20, −log p_y"] == 61.0


def test_d_ablation_table_puts_clean_accuracy_and_the_papers_best_point_on_its_row():
    clean = pd.DataFrame(
        [
            {"source": s.label, "seed": k, "D": d, "clean": 90.0 + d + k}
            for s in EVAL_SOURCES
            for d in range(1, 5)
            for k in (0, 1)
        ]
    )
    robust = pd.DataFrame(
        [
            {"source": s.label, "seed": k, "D": d, "objective": o, "pgd20": 10.0 * d + k}
            for s in EVAL_SOURCES
            for d in (1, 4)
            for o in ("paper", "ce")
            for k in (0, 1)
        ]
    )
    table = tables.d_ablation(clean, robust, EVAL_SOURCES)
    assert list(table.index) == [
        ("digits32 for cifar10", 1),
        ("digits32 for cifar10", 4),
        ("digits32 study", 1),
        ("digits32 study", 4),
    ]
    assert table.loc[("digits32 study", 4), "ours: clean"] == 94.5
    assert table.loc[("digits32 for cifar10", 4), "ours: PGD-20, paper's objective"] == 40.5
    best = table["paper: best PGD-20 (its D)"]
    assert best[("digits32 for cifar10", 4)] == 77.04  # Fig. 4: CIFAR-10's best at D = 4
    assert best.isna().sum() == 3


def test_adaptive_attack_table_gives_the_papers_values_to_clustr_qtrades_of_its_datasets_only():
    frame = pd.DataFrame(
        [
            {"source": s.label, "method": m, "seed": k, "objective": o, "pgd100": v + 2 * k}
            for s in EVAL_SOURCES
            for m in ("ClusTR + QTRADES", "ClusTR")
            for o, v in (("paper", 70.0), ("magnet", 60.0), ("ce", 50.0))
            for k in (0, 1)
        ]
    )
    table = tables.adaptive_attack(frame, EVAL_SOURCES)
    assert (
        table.loc[
            ("digits32 for cifar10", "ClusTR + QTRADES"), "paper: PGD-100, Magnet loss (adaptive)"
        ]
        == "66.52"
    )
    assert table.loc[("digits32 for cifar10", "ClusTR"), "paper: PGD-100, paper's objective"] == "—"
    assert (
        table.loc[("digits32 study", "ClusTR + QTRADES"), "paper: PGD-100, paper's objective"]
        == "—"
    )
    assert (
        table.loc[("digits32 study", "ClusTR"), "ours: PGD-100, Magnet loss (adaptive)"]
        == "61.00 ± 1.41"
    )


def comparison_frame():
    """An attack_comparison frame: two sources, ClusTR + QTRADES under the paper's PGD and
    AutoAttack (whose attacks leave 50, 40, 40, 30 % of 80 %), two seeds."""
    rows = []
    for label in ("digits32 for cifar10", "digits32 study"):
        for k in (0, 1):
            rows.append(
                {
                    "source": label,
                    "method": "ClusTR + QTRADES",
                    "seed": k,
                    "clean": 80.0 + k,
                    "attack": "PGD, paper's objective",
                    "robust": 60.0 + k,
                }
            )
            rows.append(
                {
                    "source": label,
                    "method": "ClusTR + QTRADES",
                    "seed": k,
                    "clean": 80.0 + k,
                    "attack": "AutoAttack (standard)",
                    "robust": 30.0 + k,
                    "after_apgd-ce": 50.0,
                    "after_apgd-t": 40.0,
                    "after_fab-t": 40.0,
                    "after_square": 30.0 + k,
                }
            )
    return pd.DataFrame(rows)


def test_autoattack_steps_and_external_records_read_the_comparison_per_source():
    steps = tables.autoattack_steps(comparison_frame())
    assert list(steps.columns) == [
        "clean (attacked points)",
        "after APGD-CE",
        "after APGD-T",
        "after FAB-T",
        "after SQUARE",
    ]
    assert steps.loc[("digits32 study", "ClusTR + QTRADES"), "after SQUARE"] == 30.5
    assert steps.loc[("digits32 study", "ClusTR + QTRADES"), "clean (attacked points)"] == 80.5
    records = tables.external_records(comparison_frame(), "smoke")
    assert records.loc["RobustBench entry", "AutoAttack (%)"] == "0.00"
    ours = records.loc["ours: digits32 study, profile smoke"]
    assert list(ours) == ["80.50", "60.50", "30.50"]
    assert "ours: digits32 for cifar10, profile smoke" in records.index


def test_kmeans_table_adds_the_papers_values_to_a_cifar10_source_only():
    frame = pd.DataFrame(
        [
            {
                "source": s.label,
                "seed": k,
                "linear head": 90.0 + k,
                "k-means + Eq. 4 (D in the tables)": 20.0 + k,
                "σ²": 1.234,
            }
            for s in EVAL_SOURCES
            for k in (0, 1)
        ]
    )
    table = tables.kmeans_on_nominal(frame, EVAL_SOURCES)
    assert list(table.index) == [
        ("digits32 for cifar10", 0),
        ("digits32 for cifar10", 1),
        ("digits32 for cifar10", "paper (reported)"),
        ("digits32 study", 0),
        ("digits32 study", 1),
    ]
    assert (
        table.loc[("digits32 for cifar10", "paper (reported)"), "k-means + Eq. 4 (D in the tables)"]
        == 21.6
    )
    assert table.loc[("digits32 study", 1), "linear head"] == 91.0
    assert table.loc[("digits32 study", 0), "σ²"] == 1.23
