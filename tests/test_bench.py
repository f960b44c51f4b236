"""The benchmark's projection of the paper protocol's time (clustr_lib.bench), by hand."""

import pytest

from clustr_lib import bench

FIGURES = {  # made-up rates: round numbers to check the arithmetic
    "ce_step_batch256_images_per_s": 1000.0,
    "qtrades_head_step_images_per_s": 400.0,
    "trades_step_images_per_s": 100.0,
    "free_at_replay_images_per_s": 1000.0,
    "magnet_step_images_per_s": 500.0,
    "clustr_qtrades_step_images_per_s": 250.0,
    "pgd_every_iterate_image_iterations_per_s": 2000.0,
    "embedding_images_per_s": 10_000.0,
    "kmeans_seconds": 5.0,
}


def test_projection_of_clustr_on_cifar10_by_hand():
    p = bench.paper_projection(FIGURES)
    refresh = 2 / 10_000 + 5.0 / 50_000  # two embedding passes and k-means, per image
    nominal = 90 * 50_000 / 1000.0  # the warm start: 90 epochs at the CE rate
    clustr = 30 * 50_000 * (1 / 500.0 + refresh) + 50_000 * refresh  # + the first clustering
    assert p["clustr_cifar10_minutes"] == pytest.approx((nominal + clustr) / 60, rel=1e-12)
    qtrades = 30 * 50_000 * (1 / 250.0 + refresh) + 50_000 * refresh
    assert p["clustr_qtrades_cifar10_minutes"] == pytest.approx((nominal + qtrades) / 60)
    runs = p["training_minutes_per_run"]["cifar10"]
    assert runs["free_at"] == pytest.approx(11 * 8 * 50_000 / 1000.0 / 60)  # round(90/8) x m
    assert runs["trades"] == pytest.approx(90 * 50_000 / 100.0 / 60)
    assert runs["magnet"] == pytest.approx(
        (120 * 50_000 * (1 / 500 + refresh) + 50_000 * refresh) / 60
    )
    # SVHN's and CIFAR-100's k-means (n_init 10, max_iter 40) costs 20x CIFAR-10's (1, 20)
    svhn = p["training_minutes_per_run"]["svhn"]["clustr"] * 60
    refresh_svhn = 2 / 10_000 + 20 * 5.0 / 50_000
    assert svhn == pytest.approx(61 * 73_257 * refresh_svhn + 60 * 73_257 / 500.0)


def test_chapter_three_is_its_training_and_its_protocol_pgd():
    p = bench.paper_projection(FIGURES)
    training = sum(p["training_minutes_per_run"]["cifar10"].values()) * 60
    # 4 cross-entropy runs x 1 objective + 3 cluster runs x 2, each under 2 rules: PGD-100 x 10
    pgd = 20 * 10_000 * 10 * 100 / 2000.0
    assert p["chapter_hours"]["03_cifar10"] == pytest.approx((training + pgd) / 3600)
    assert p["book_paper_scale_hours"] == pytest.approx(sum(p["chapter_hours"].values()))
    assert set(p["chapter_hours"]) == {
        "03_cifar10",
        "04_svhn",
        "05_cifar100",
        "07_eps_ablation",
        "08_d_ablation",
        "09_adaptive_attack",
        "10_audit",
        "11_kmeans_nominal",
    }


def test_fewer_attacked_points_and_whole_epochs_change_only_their_parts():
    full, reduced = bench.paper_projection(FIGURES), bench.paper_projection(FIGURES, 1000)
    assert reduced["training_hours"] == full["training_hours"]
    assert reduced["book_paper_scale_hours"] < full["book_paper_scale_hours"]
    # evaluation chapters scale with the points: 1,000 of CIFAR-10's 10,000 test images
    assert reduced["chapter_hours"]["07_eps_ablation"] < full["chapter_hours"]["07_eps_ablation"]
    measured = {
        **FIGURES,
        "epoch_images": 1000,
        "epoch_seconds": {"nominal": 2.0, "magnet": 4.0},  # 2 ms and 4 ms per image
    }
    p = bench.paper_projection(measured)
    runs = p["training_minutes_per_run"]["cifar10"]
    assert runs["nominal"] == pytest.approx(90 * 50_000 * 2e-3 / 60)
    refresh = 2 / 10_000 + 5.0 / 50_000
    assert runs["clustr"] == pytest.approx((30 * 50_000 * 4e-3 + 50_000 * refresh) / 60)
    assert runs["trades"] == full["training_minutes_per_run"]["cifar10"]["trades"]


def test_the_command_line_refuses_bad_sizes():
    for argv in (["--repeats", "0"], ["--width", "0"], ["--epoch-size", "100"]):
        with pytest.raises(SystemExit):
            bench.main(["--device", "cpu", *argv])


def test_autoattack_costs_by_hand():
    # 2000 image-iterations/s for gradients, 10,000 forwards/s for Square's queries
    robust, clean = bench.AUTOATTACK_ROBUST_SHARE, bench.AUTOATTACK_CLEAN_SHARE
    standard = ("apgd-ce", "apgd-t", "fab-t", "square")
    expected = 100 * (100 + 2 * 900 * robust) / 2000 + 100 * 5000 * robust / 10_000
    assert bench.autoattack_seconds(FIGURES, 100, standard) == pytest.approx(expected)
    assert bench.autoattack_seconds(FIGURES, 100) == pytest.approx(100 * 5000 * clean / 10_000)
    assert bench.autoattack_seconds(FIGURES, 100, ("apgd-ce",)) == pytest.approx(100 * 100 / 2000)
