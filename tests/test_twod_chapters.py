"""Chapters 1 and 2 (the 2-D study): their measurements, tables and figures against
hand-made inputs whose answers are known, and the paths the claims registry reads."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PatchCollection
from matplotlib.patches import Circle

from clustr_lib import plots, twod
from clustr_lib.paper import CLAIMS
from clustr_lib.verdicts import lookup

CLUSTR, MAGNET = twod.METHODS_2D[True], twod.METHODS_2D[False]


def claim_paths(chapter):
    return [c.measurement for c in CLAIMS if c.chapter == chapter]


# --------------------------------------------------------------------------- chapter 1


def test_soundness_counts_only_points_with_a_boundary_and_takes_the_median_ratio():
    exact = torch.tensor([1.0, 0.5, math.inf, 0.2])
    radius = torch.tensor([0.5, 0.5, 0.3, 0.4])
    sound, tight = twod.soundness(exact, radius)
    assert sound == pytest.approx(100 * 2 / 3)  # the last point's radius exceeds its distance
    assert tight == pytest.approx(1.0)  # median of 0.5, 1.0, 2.0
    # overstated: only the last point; a point without boundary (inf) never is
    assert twod.share_overstated(exact, radius) == pytest.approx(25.0)
    # within the relative tolerance 1e-4 an equal radius is not overstated
    assert twod.share_overstated(torch.tensor([1.0]), torch.tensor([1.00005])) == 0.0


def test_reduction_example_is_where_the_papers_radius_exceeds_the_sound_one():
    point, centroids, classes, radii = twod.reduction_example()
    # nearest centroid (0, 0): bisector with (3, 0) at x = 1.5, 0.5 away from the point
    assert radii["sound"] == pytest.approx(0.5)
    # the paper takes the nearest other-class centroid (1, 1.9) (distance 1.9 < 2)
    assert radii["paper"] == pytest.approx((1.9**2 - 1) / (2 * math.hypot(1, 1.9)), rel=1e-6)
    assert radii["paper"] > radii["sound"]


MEASURED_1 = {
    "lipschitz": {"product_bound": 50.0, "grid_jacobian": 10.0},
    "median_radius": {"product_bound": 0.1, "grid_jacobian": 0.5},
    "sound": {"product_bound": 100.0, "grid_jacobian": 97.5},
    "tightness": {"product_bound": 0.2, "grid_jacobian": 0.9},
    "paper_larger": 12.5,
    "paper_overstates": 5.0,
    "sound_overstates": 0.0,
}


def test_estimates_table_puts_each_estimate_on_a_row():
    table = twod.estimates_table(MEASURED_1)
    assert list(table.index) == ["product of spectral norms", "largest Jacobian norm on a grid"]
    assert table.loc["largest Jacobian norm on a grid", "L"] == 10.0
    assert table.loc["largest Jacobian norm on a grid", "sound (% of searched points)"] == 97.5
    assert table.loc["product of spectral norms", "median certified / exact"] == 0.2


def test_reduction_table_compares_the_papers_radius_with_the_sound_one():
    table = twod.reduction_table(MEASURED_1)
    assert table.iloc[0].tolist() == [12.5, 5.0]  # the paper's reduction
    assert table.iloc[1].tolist() == [0.0, 0.0]  # the sound one


def test_certificate_study_records_what_claims_c1_to_c3_read():
    study = twod.certificate_study(
        "moons",
        n_train=200,
        n_test=40,
        ce_epochs=8,
        magnet_epochs=6,
        n_exact=10,
        n_angles=90,
        n_radii=40,
        k_multi=2,
    )
    m = study.measurements
    for path in claim_paths("01_certificate_2d"):
        assert lookup(m, path) is not None, path
    assert m["sound_min"] == min(m["sound"].values()) == 100.0  # Theorem 1 holds
    assert m["tight_product"] == m["tightness"]["product_bound"] <= 1.0
    assert m["lipschitz"]["grid_jacobian"] <= m["lipschitz"]["product_bound"] * (1 + 1e-6)
    exact, certified = study.searched()
    assert len(exact) == 10 - m["no_boundary"]
    assert all(len(r) == len(exact) for r in certified.values())
    thresholds, exact_curve, curves = study.curves(20)
    assert exact_curve[0] >= max(c[0] for c in curves.values())
    assert all(np.all(c <= exact_curve + 1e-12) for c in curves.values())  # certified ≤ exact


# --------------------------------------------------------------------------- chapter 2


def runs_by_hand(certified_gains, exact_gains, accuracy=None):
    """Runs of two methods on the seeds 0… of each set: Magnet's areas are 0.5, ClusTR's
    0.5 + the gain of that seed."""
    rows = []
    for name in certified_gains:
        for seed, (cg, eg) in enumerate(zip(certified_gains[name], exact_gains[name])):
            for method, c, e in ((MAGNET, 0.5, 0.5), (CLUSTR, 0.5 + cg, 0.5 + eg)):
                acc = (accuracy or {}).get((name, method), [1.0] * 10)[seed]
                ours = method == CLUSTR
                rows.append(
                    {
                        "dataset": name,
                        "method": method,
                        "seed": seed,
                        "test_accuracy": acc,
                        "train_seconds": 2.0 if ours else 1.0,
                        "lipschitz_bound": 30.0 if ours else 3.0,
                        "median_certified_radius": 0.1,
                        "median_exact_distance": 0.5,
                        "certified_area": c,
                        "exact_area": e,
                    }
                )
    return pd.DataFrame(rows)


def test_area_gains_count_the_seeds_where_clustr_is_higher():
    runs = runs_by_hand(
        {"moons": [0.1, 0.2, 0.3], "circles": [0.1, -0.1, 0.3]},
        {"moons": [0.1, -0.2, 0.0], "circles": [0.1, 0.1, 0.1]},
    )
    gains = twod.area_gains(runs)
    assert gains.loc[("moons", "certified"), "seeds_clustr_higher"] == 3
    assert gains.loc[("moons", "certified"), "mean_area_gain"] == pytest.approx(20.0)  # points
    assert gains.loc[("moons", "exact"), "seeds_clustr_higher"] == 1  # a tie is not higher
    assert gains.loc[("circles", "certified"), "seeds_clustr_higher"] == 2
    assert gains.loc[("circles", "exact"), "mean_area_gain"] == pytest.approx(10.0)
    assert (gains["seeds"] == 3).all()


def test_warm_start_findings_agree_only_when_clustr_wins_every_seed_of_every_set():
    accuracy = {("circles", MAGNET): [0.97, 0.98, 0.99]}
    runs = runs_by_hand(
        {"moons": [0.1, 0.2, 0.3], "circles": [0.1, -0.1, 0.3]},
        {"moons": [0.1, 0.1, 0.1], "circles": [0.1, 0.1, 0.1]},
        accuracy,
    )
    found = twod.warm_start_findings(runs)
    assert found["certified_agrees"] is False  # circles: 2 of 3 seeds
    assert found["exact_agrees"] is True
    assert found["min_accuracy"] == pytest.approx(98.0)  # circles, Magnet: mean of 97, 98, 99
    assert found["seeds"] == 3
    assert found["circles"]["certified"] == {
        "mean_area_gain": pytest.approx(10.0),
        "seeds_clustr_higher": 2,
        "seeds": 3,
    }
    assert found["moons"]["accuracy"] == {"Magnet": 100.0, "ClusTR": 100.0}
    assert found["circles"]["accuracy"]["Magnet"] == pytest.approx(98.0)
    assert found["moons"]["seconds"] == {"Magnet": 1.0, "ClusTR": 2.0}
    assert found["moons"]["lipschitz_bound"] == {"Magnet": 3.0, "ClusTR": 30.0}
    for path in claim_paths("02_warm_start_2d"):
        assert lookup(found, path) is not None, path
    runs = runs_by_hand({"moons": [0.1, 0.2]}, {"moons": [0.1, 0.1]})
    everywhere = twod.warm_start_findings(runs)
    assert everywhere["certified_agrees"] is True and everywhere["exact_agrees"] is True


def test_warm_start_table_gives_mean_and_sd_of_accuracy_in_percent():
    runs = runs_by_hand(
        {"moons": [0.1, 0.1]}, {"moons": [0.1, 0.1]}, {("moons", MAGNET): [0.98, 1.0]}
    )
    table = twod.warm_start_table(runs)
    assert table.loc[("moons", MAGNET), "accuracy"] == pytest.approx(99.0)
    sd = np.std([98, 100], ddof=1)
    assert table.loc[("moons", MAGNET), "accuracy_sd"] == pytest.approx(sd, abs=1e-3)
    assert table.loc[("moons", CLUSTR), "seconds"] == 2.0


def test_warm_start_sets_record_each_runs_curve_areas():
    sets = twod.warm_start_sets(
        ["circles"],
        n_train=200,
        n_test=40,
        seeds=1,
        ce_epochs=5,
        magnet_epochs=4,
        n_exact=8,
        n_angles=60,
        n_radii=30,
    )
    assert len(sets.runs) == 2 and set(sets.runs["method"]) == {CLUSTR, MAGNET}
    for _, run in sets.runs.iterrows():
        for kind in ("certified", "exact"):
            curve = sets.curves["circles"][run["method"]][kind][run["seed"]]
            assert run[f"{kind}_area"] == pytest.approx(curve.mean())
    assert len(sets.thresholds) == 101 and sets.thresholds[-1] == 1.0


# --------------------------------------------------------------------------- figures


def legend_is_outside(fig, ax):
    fig.canvas.draw()
    return ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1


def test_certified_balls_figure_stacks_one_panel_per_radius_set():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 0.5]])
    y = torch.tensor([0, 1, 0])
    predict = lambda p: (p[:, 0] > 0.5).long()  # noqa: E731
    radii = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([0.4, 0.5, 0.6])}
    fig = plots.certified_balls_figure(predict, x, y, radii, (-2, 2, -2, 2), title="t")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["a", "b"]
    assert axes[0].get_position().y0 > axes[1].get_position().y1  # stacked, first on top
    for ax in axes:
        circles = [c for c in ax.collections if isinstance(c, PatchCollection)]
        assert len(circles) == 1 and len(circles[0].get_paths()) == 3
        assert ax.get_xlim() == (-2, 2)
    assert legend_is_outside(fig, axes[0])
    plt.close(fig)


def test_exact_vs_certified_and_robust_curves_figures_draw_the_given_values():
    exact = np.array([0.5, 1.0])
    fig = plots.exact_vs_certified_figure(exact, {"L = 2": np.array([0.2, 0.4])}, title="t")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[0.2, 0.5], [0.4, 1.0]])
    assert legend_is_outside(fig, ax)
    plt.close(fig)

    thresholds = np.array([0.0, 0.5, 1.0])
    fig = plots.robust_curves_figure(
        thresholds, np.array([1.0, 0.5, 0.0]), {"L = 2": np.array([1.0, 0.2, 0.0])}
    )
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["exact (search)", "Theorem 1, L = 2"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [1.0, 0.2, 0.0])
    assert legend_is_outside(fig, ax)
    plt.close(fig)


def test_reduction_figure_draws_both_radii_with_the_legend_outside():
    point, centroids, classes, radii = twod.reduction_example()
    fig = plots.reduction_figure(point, centroids, classes, radii)
    ax = fig.axes[0]
    drawn = sorted(p.get_radius() for p in ax.patches if isinstance(p, Circle))
    assert drawn == pytest.approx(sorted(radii.values()))
    assert legend_is_outside(fig, ax)
    plt.close(fig)


def test_warm_start_figure_has_a_certified_and_an_exact_panel_per_set():
    thresholds = np.linspace(0, 1, 5)
    seeds = np.array([[1.0, 0.8, 0.4, 0.2, 0.0], [1.0, 0.6, 0.4, 0.0, 0.0]])
    curves = {
        name: {
            MAGNET: {"certified": seeds, "exact": seeds},
            CLUSTR: {"certified": seeds + 0.0, "exact": seeds},
        }
        for name in ("moons", "circles")
    }
    fig = plots.warm_start_figure(thresholds, curves)
    axes = fig.axes
    assert len(axes) == 4
    assert [ax.get_title().split(":")[0] for ax in axes] == ["moons", "moons", "circles", "circles"]
    assert axes[0].get_xlim() == (0, 0.3) and axes[1].get_xlim()[1] >= 1.0
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), [1.0, 0.7, 0.4, 0.1, 0.0])
    assert [line.get_label() for line in axes[0].lines] == [
        f"{MAGNET} (mean of 2)",
        f"{CLUSTR} (mean of 2)",
    ]
    assert legend_is_outside(fig, axes[0])
    plt.close(fig)
