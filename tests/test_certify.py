"""Theorem 1 on a linear feature map, where the exact minimal perturbation is known."""

import numpy as np
import pytest
import torch
from torch import nn

from clustr_lib.attacks import pgd
from clustr_lib.certify import (
    certified_accuracy,
    certified_radius,
    lipschitz_upper_bound,
    nearest_cluster_predict,
    spectral_norm,
)


def predict_np(feats, centroids, classes):
    d = ((feats[:, None, :] - centroids[None]) ** 2).sum(-1)
    return classes[d.argmin(1)]


def exact_linear_distance(x, W, centroids, classes):
    """Exact minimal ℓ2 input perturbation that changes the nearest-cluster class of Wx.

    Class c keeps winning while every bisector inequality holds, so the minimal
    change reaches the nearest input-space hyperplane (μ_j − μ₁)ᵀ(Wx') = (‖μ_j‖² − ‖μ₁‖²)/2
    over centroids j of other classes.
    """
    f = W @ x
    d = ((f - centroids) ** 2).sum(1)
    one = d.argmin()
    best = np.inf
    for j in np.nonzero(classes != classes[one])[0]:
        normal = W.T @ (centroids[j] - centroids[one])
        best = min(best, (d[j] - d[one]) / (2 * np.linalg.norm(normal)))
    return best


class Linear(nn.Module):
    def __init__(self, W):
        super().__init__()
        self.W = nn.Parameter(torch.tensor(W, dtype=torch.float64), requires_grad=False)

    def forward(self, x):
        return x.flatten(1) @ self.W.T


@pytest.fixture
def linear_setup(rng):
    W = rng.normal(size=(5, 8))
    centroids = rng.normal(size=(6, 5)) * 2
    classes = np.array([0, 0, 1, 1, 2, 2])
    x = rng.uniform(0.3, 0.7, size=(40, 8))
    return W, centroids, classes, x


def test_radius_is_sound_against_random_and_exact_perturbations(linear_setup, rng):
    W, centroids, classes, x = linear_setup
    L = spectral_norm(W)
    assert L == pytest.approx(np.linalg.svd(W, compute_uv=False)[0])
    feats = x @ W.T
    r = certified_radius(
        torch.tensor(feats), torch.tensor(centroids), torch.tensor(classes), L
    ).numpy()
    pred = predict_np(feats, centroids, classes)
    for i in range(len(x)):
        exact = exact_linear_distance(x[i], W, centroids, classes)
        assert r[i] <= exact * (1 + 1e-9)
        directions = rng.normal(size=(2000, 8))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        moved = (x[i] + 0.999 * r[i] * directions) @ W.T
        assert np.all(predict_np(moved, centroids, classes) == pred[i])


def test_radius_is_sound_against_l2_pgd(linear_setup):
    W, centroids, classes, x = linear_setup
    from clustr_lib.classify import ClusterClassifier, ClusterModel

    L = spectral_norm(W)
    feats = x @ W.T
    r = certified_radius(torch.tensor(feats), torch.tensor(centroids), torch.tensor(classes), L)
    clf = ClusterClassifier(torch.tensor(centroids), torch.tensor(classes), variance=0.05)
    model = ClusterModel(Linear(W), clf)
    y = torch.tensor(predict_np(feats, centroids, classes))
    xt = torch.tensor(x)
    result = pgd(
        model,
        xt,
        y,
        eps=0.999 * r,
        step_size=0.05,
        steps=60,
        restarts=3,
        norm="l2",
        objective="margin",
    )
    assert bool(result.robust.all())
    # and the same attack does break points at 3x the exact distance
    exact = torch.tensor(
        [exact_linear_distance(x[i], W, centroids, classes) for i in range(len(x))]
    )
    result = pgd(
        model,
        xt,
        y,
        eps=3 * exact,
        step_size=0.05,
        steps=100,
        restarts=1,
        norm="l2",
        objective="margin",
    )
    assert result.robust.float().mean() < 0.5


def test_tightness_along_the_top_singular_direction(rng):
    """App. C: with μ₂ − μ₁ along W's top left singular vector the radius is exact."""
    W = rng.normal(size=(4, 6))
    U, S, Vt = np.linalg.svd(W)
    L = S[0]
    x = rng.normal(size=6)
    f = W @ x
    mu1 = f + 0.3 * U[:, 1]  # f is nearest to μ₁
    mu2 = mu1 + 2.0 * U[:, 0]
    centroids, classes = np.stack([mu1, mu2]), np.array([0, 1])
    r = float(
        certified_radius(torch.tensor(f[None]), torch.tensor(centroids), torch.tensor(classes), L)[
            0
        ]
    )
    assert r == pytest.approx(exact_linear_distance(x, W, centroids, classes), rel=1e-9)
    assert predict_np((W @ (x + 0.999 * r * Vt[0]))[None], centroids, classes)[0] == 0
    assert predict_np((W @ (x + 1.001 * r * Vt[0]))[None], centroids, classes)[0] == 1


def test_paper_reduction_never_below_sound_and_strictly_above_in_a_constructed_case(rng):
    centroids = rng.normal(size=(9, 3))
    classes = np.repeat(np.arange(3), 3)
    feats = rng.normal(size=(500, 3))
    args = (torch.tensor(centroids), torch.tensor(classes), 1.7)
    sound = certified_radius(torch.tensor(feats), *args, reduction="sound")
    paper = certified_radius(torch.tensor(feats), *args, reduction="paper")
    assert torch.all(paper >= sound)
    # nearest other-class centroid μ_b is not the one with the nearest bisector (μ_a)
    centroids = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 1.9]])
    f = torch.tensor([[1.0, 0.0]])
    classes = torch.tensor([0, 1, 2])
    sound = float(certified_radius(f, centroids, classes, 1.0, "sound")[0])
    paper = float(certified_radius(f, centroids, classes, 1.0, "paper")[0])
    assert sound == pytest.approx(0.5)  # bisector x = 1.5
    assert paper == pytest.approx((1.9**2 + 0 - 1.0) / (2 * np.hypot(1.0, 1.9)))
    assert paper > sound
    # a perturbation of norm 0.55 < paper radius changes the nearest-cluster class
    moved = f + torch.tensor([[0.55, 0.0]])
    assert int(nearest_cluster_predict(moved, centroids, classes)[0]) == 1


def test_certified_accuracy_counts_correct_points_with_larger_radius():
    radii = np.array([0.0, 0.5, 1.0, 2.0])
    correct = np.array([True, True, False, True])
    np.testing.assert_allclose(
        certified_accuracy(radii, correct, [0.0, 0.5, 1.5, 2.0]), [0.5, 0.25, 0.25, 0.0]
    )


def test_mlp_bound_is_product_of_spectral_norms_and_bounds_the_jacobian(rng):
    mlp = nn.Sequential(nn.Linear(2, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 3))
    expected = np.prod(
        [
            np.linalg.svd(m.weight.detach().numpy(), compute_uv=False)[0]
            for m in mlp
            if isinstance(m, nn.Linear)
        ]
    )
    bound = lipschitz_upper_bound(mlp)
    assert bound == pytest.approx(expected, rel=1e-5)
    x = torch.tensor(rng.normal(size=(200, 2)), dtype=torch.float32)
    jac = torch.func.vmap(torch.func.jacrev(mlp))(x)
    assert float(torch.linalg.matrix_norm(jac.detach(), ord=2).max()) <= bound * (1 + 1e-5)
    with pytest.raises(TypeError, match="Lipschitz rule"):
        lipschitz_upper_bound(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))


def test_certify_rejects_bad_input():
    c, k = torch.randn(4, 2), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="reduction"):
        certified_radius(torch.randn(3, 2), c, k, 1.0, reduction="loose")
    with pytest.raises(ValueError, match="lipschitz"):
        certified_radius(torch.randn(3, 2), c, k, 0.0)
    with pytest.raises(ValueError, match="two classes"):
        certified_radius(torch.randn(3, 2), c, torch.zeros(4, dtype=torch.long), 1.0)
