"""Paper-vs-ours tables and the protocol settings."""

import pandas as pd
import pytest

from clustr_lib import paper, tables


def result(method, seed, clean, pgd100, minutes):
    return {"config": {"method": method, "seed": seed},
            "metrics": {"clean_accuracy": clean, "pgd20_paper": pgd100 + 0.01,
                        "pgd100_paper": pgd100, "pgd20_ce": pgd100, "pgd100_ce": pgd100 / 2,
                        "clean_accuracy_eval_ce": 0.5},
            "training": {"seconds": 60 * minutes}, "provenance": {"device": "CPU"}}


def test_paper_vs_ours_reports_mean_sd_and_difference():
    runs = tables.runs_frame([result("clustr_qtrades", 0, 0.90, 0.70, 2.0),
                              result("clustr_qtrades", 1, 0.92, 0.74, 4.0),
                              result("nominal", 0, 0.95, 0.0, 1.0)])
    table = tables.paper_vs_ours(runs, paper.TABLE1["cifar10"])
    row = table.loc["ClusTR + QTRADES"]
    assert row[("natural", "paper")] == 91.03
    assert row[("natural", "ours")] == "91.00 ± 1.41"
    assert row[("pgd100", "Δ")] == pytest.approx(72.0 - 74.04)
    assert table.loc["TRADES"][("pgd100", "ours")] == "not run"
    times = tables.training_times(runs, paper.TRAINING_MINUTES["cifar10"])
    assert times.loc["ClusTR + QTRADES", "ours (min)"] == 3.0
    assert "Nominal Training" not in times.index  # the paper's Table 2 has no nominal row
    assert times.loc["ClusTR + QTRADES", "ours / nominal"] == 3.0
    objectives = tables.objectives_table(runs)
    assert objectives.loc["ClusTR + QTRADES", "pgd100_ce"] == pytest.approx(36.0)
    assert objectives.loc["ClusTR + QTRADES", "clean_attacked"] == pytest.approx(50.0)


def test_settings_resolve_per_dataset_values_and_refuse_unknown_keys():
    s = paper.settings("svhn", {"width": 8})
    assert s["alpha"] == 13.0 and s["alpha_qtrades"] == 10.0 and s["qtrades_lambda"] == 9.7
    assert s["magnet_epochs"] == 60 and s["width"] == 8 and s["eps"] == pytest.approx(8 / 255)
    with pytest.raises(ValueError, match="unknown protocol setting"):
        paper.settings("cifar10", {"widht": 8})
    assert paper.accuracy_table("cifar100")["ClusTR + QTRADES"]["pgd100"] == 52.40


def test_eps_table_puts_the_papers_values_next_to_our_means():
    frame = pd.DataFrame([
        {"eps_255": e, "objective": o, "seed": s, "pgd20": v + s, "pgd100": v + s - 1}
        for e, v in ((2.0, 80.0), (16.0, 50.0)) for o in ("paper", "ce") for s in (0, 2)])
    table = tables.eps_table(frame, {2: (81.99, 81.54), 16: (57.67, 57.05)})
    assert list(table.index) == [2.0, 16.0]
    assert table.loc[16.0, "paper PGD-100"] == 57.05 and table.loc[2.0, "paper PGD-20"] == 81.99
    assert table.loc[2.0, "ours PGD100, paper"] == 80.0  # mean of 79 and 81
    assert table.loc[16.0, "ours PGD20, ce"] == 51.0


def test_mean_sd_table_formats_each_cell_over_seeds():
    frame = pd.DataFrame({"method": ["A", "A", "B"], "attack": ["x", "x", "x"], "seed": [0, 1, 0],
                          "robust": [10.0, 20.0, 5.0]})
    table = tables.mean_sd_table(frame, "method", "attack", "robust")
    assert table.loc["A", "x"] == "15.00 ± 7.07" and table.loc["B", "x"] == "5.00"
    two = pd.concat([frame, pd.DataFrame({"method": ["A"], "attack": ["y"], "seed": [0], "robust": [1.0]})])
    assert tables.mean_sd_table(two, "method", "attack", "robust").loc["B", "y"] == "—"
