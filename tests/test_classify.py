"""Eq. (4) with the D nearest clusters, against a naive per-sample loop."""

import numpy as np
import pytest
import torch

from clustr_lib.classify import ClusterClassifier


def naive_eq4(f, centroids, classes, var, num_nearest, num_classes):
    log_p = np.full((len(f), num_classes), -np.inf)
    scores = np.zeros((len(f), num_classes))
    for i in range(len(f)):
        d = np.array([np.sum((f[i] - mu) ** 2) for mu in centroids])
        near = np.argsort(d)[:num_nearest]
        total = sum(np.exp(-d[j] / (2 * var)) for j in near)
        for c in range(num_classes):
            mass = sum(np.exp(-d[j] / (2 * var)) for j in near if classes[j] == c)
            scores[i, c] = mass
            if mass > 0:
                log_p[i, c] = np.log(mass) - np.log(total)
    return log_p, scores


@pytest.mark.parametrize("num_nearest", [1, 2, 5, 9, 12])
def test_log_proba_and_scores_match_naive_loop(rng, num_nearest):
    centroids = rng.normal(size=(12, 6))
    classes = np.repeat(np.arange(4), 3)
    f = rng.normal(size=(25, 6))
    clf = ClusterClassifier(torch.tensor(centroids), torch.tensor(classes), 3.0, num_nearest)
    log_p, scores = naive_eq4(f, centroids, classes, 3.0, num_nearest, 4)
    got = clf.log_proba(torch.tensor(f)).numpy()
    assert np.array_equal(np.isinf(got), np.isinf(log_p))
    finite = np.isfinite(log_p)
    np.testing.assert_allclose(got[finite], log_p[finite], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(clf.scores(torch.tensor(f)).numpy(), scores, rtol=1e-9, atol=1e-300)
    np.testing.assert_array_equal(clf.predict(torch.tensor(f)).numpy(), log_p.argmax(1))


def test_log_space_survives_where_exponentials_underflow():
    """Far from every centre the scores underflow to 0, the log-probabilities do not."""
    centroids = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    clf = ClusterClassifier(centroids, torch.tensor([0, 1]), variance=0.01)
    f = torch.tensor([[60.0, 0.0]])
    assert torch.all(clf.scores(f) == 0)
    log_p = clf.log_proba(f)
    assert torch.all(torch.isfinite(log_p))
    # class 1 is nearer by Δd = 60² − 59² = 119, log-odds = 119 / (2σ²)
    assert float(log_p[0, 1] - log_p[0, 0]) == pytest.approx(119 / 0.02, rel=1e-5)


def test_missing_class_gets_minus_inf_with_finite_gradient():
    centroids = torch.tensor([[0.0], [1.0], [10.0]])
    clf = ClusterClassifier(centroids, torch.tensor([0, 1, 2]), 1.0, num_nearest=2)
    f = torch.tensor([[0.2]], requires_grad=True)
    log_p = clf.log_proba(f)
    assert log_p[0, 2] == -np.inf
    loss = -log_p[0, 0] + torch.nan_to_num(log_p[0, 2], neginf=0.0)
    (grad,) = torch.autograd.grad(loss, f)
    assert torch.isfinite(grad).all()


def test_classifier_rejects_bad_parameters():
    with pytest.raises(ValueError, match="num_nearest"):
        ClusterClassifier(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), 1.0, num_nearest=5)
    with pytest.raises(ValueError, match="variance"):
        ClusterClassifier(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), 0.0)
    clf = ClusterClassifier(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), 1.0)
    with pytest.raises(ValueError, match="dimension"):
        clf.log_proba(torch.randn(3, 5))
