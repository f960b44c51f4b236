"""The 2-D study's tools against analytic answers."""

import numpy as np
import pytest
import torch
from torch import nn

from clustr_lib import data, twod
from clustr_lib.certify import max_jacobian_norm, minimal_adversarial_distance_2d


def test_exact_search_finds_the_distance_to_a_line(rng):
    w, b = np.array([0.6, -0.8]), 0.3
    predict = lambda p: (p @ torch.tensor(w, dtype=p.dtype) + b > 0).long()  # noqa: E731
    x = torch.tensor(rng.uniform(-1, 1, size=(30, 2)), dtype=torch.float64)
    expected = np.abs(x.numpy() @ w + b) / np.linalg.norm(w)
    got = minimal_adversarial_distance_2d(predict, x, max_radius=3.0, n_angles=720, n_radii=100)
    assert np.all(got.numpy() >= expected - 1e-9)  # never below the truth
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_exact_search_reports_inf_without_a_boundary():
    predict = lambda p: torch.zeros(len(p), dtype=torch.long)  # noqa: E731
    got = minimal_adversarial_distance_2d(predict, torch.zeros(3, 2), max_radius=1.0)
    assert torch.all(torch.isinf(got))
    with pytest.raises(ValueError, match="2-D"):
        minimal_adversarial_distance_2d(predict, torch.zeros(3, 3), max_radius=1.0)


def test_grid_jacobian_of_a_relu_net_with_one_active_region_is_its_spectral_norm(rng):
    lin = nn.Linear(2, 5)
    net = nn.Sequential(lin, nn.ReLU())
    with torch.no_grad():
        lin.bias.fill_(100.0)  # every unit active on the grid: the net is linear there
    points = torch.tensor(rng.uniform(-1, 1, size=(500, 2)), dtype=torch.float32)
    expected = np.linalg.svd(lin.weight.detach().numpy(), compute_uv=False)[0]
    assert max_jacobian_norm(net, points) == pytest.approx(expected, rel=1e-5)


def test_synthetic_sets_are_standardised_binary_and_split_disjointly():
    (xtr, ytr), (xte, yte) = data.train_test_2d("circles", 300, 100, noise=0.05, seed=3)
    assert xtr.shape == (300, 2) and xte.shape == (100, 2)
    assert set(ytr.tolist()) == {0, 1}
    both = torch.cat([xtr, xte])
    np.testing.assert_allclose(both.mean(0).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(both.std(0, unbiased=False).numpy(), 1, atol=1e-4)
    assert not (torch.cdist(xtr, xte) == 0).any()
    with pytest.raises(ValueError, match="synthetic 2-D set"):
        data.synthetic_2d("spirals", 100)


def test_clustr_2d_training_is_accurate_and_certified_radii_are_sound():
    (xtr, ytr), (xte, yte) = data.train_test_2d("moons", 400, 100, noise=0.1, seed=0)
    model = twod.train_2d(xtr, ytr, warm_start=True, seed=0, ce_epochs=20, magnet_epochs=15)
    assert model.accuracy(xte, yte) > 0.95
    lipschitz = twod.lipschitz_two_ways(model, xtr, margin=1.0)
    assert lipschitz["grid_jacobian"] <= lipschitz["product_bound"] * (1 + 1e-6)
    radius = twod.radii_2d(model, xte[:20], lipschitz["product_bound"])
    exact = twod.exact_distances_2d(model, xte[:20], max_radius=1.0, n_angles=180, n_radii=50)
    assert torch.all(exact >= radius * (1 - 1e-4))
