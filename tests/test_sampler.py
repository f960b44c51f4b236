"""The neighbourhood sampler: batch structure, impostors, and seeds drawn ∝ cluster loss."""

import numpy as np
import pytest
import torch
from scipy import stats

from clustr_lib.magnet import ClusterIndex, NeighbourhoodSampler


@pytest.fixture
def index(rng):
    labels = np.repeat(np.arange(6), 50)
    f = rng.normal(size=(300, 4)) + rng.normal(size=(6, 4)).repeat(50, 0) * 3
    return ClusterIndex(2, random_state=0).fit(torch.tensor(f), torch.tensor(labels))


def test_batches_have_seed_plus_nearest_impostors(index):
    sampler = NeighbourhoodSampler(index, clusters_per_batch=5, samples_per_cluster=7, seed=3)
    cent = index.centroids_.numpy()
    cls = index.centroid_classes_.numpy()
    assign = index.assignments_.numpy()
    sizes = np.bincount(assign, minlength=12)
    for _ in range(50):
        batch = sampler.sample()
        order = list(dict.fromkeys(batch.cluster_ids.tolist()))  # clusters in batch order
        assert len(order) == 5
        seed, impostors = order[0], order[1:]
        assert all(cls[c] != cls[seed] for c in impostors)
        # brute force: the 4 nearest centroids of other classes
        d = ((cent - cent[seed]) ** 2).sum(1)
        candidates = [c for c in np.argsort(d, kind="stable") if cls[c] != cls[seed]]
        assert sorted(impostors) == sorted(candidates[:4])
        np.testing.assert_array_equal(assign[batch.indices], batch.cluster_ids)
        assert len(set(batch.indices.tolist())) == len(batch.indices)  # without replacement
        for c in order:
            assert (batch.cluster_ids == c).sum() == min(7, sizes[c])


def test_small_cluster_is_taken_whole(rng):
    labels = np.array([0] * 3 + [1] * 30 + [2] * 30)
    f = rng.normal(size=(63, 2))
    index = ClusterIndex(1).fit(torch.tensor(f), torch.tensor(labels))
    sampler = NeighbourhoodSampler(index, clusters_per_batch=3, samples_per_cluster=10, seed=0)
    batch = sampler.sample()
    assert sorted(np.bincount(batch.cluster_ids, minlength=3).tolist()) == [3, 10, 10]


def test_seed_drawn_proportionally_to_mean_cluster_loss(index):
    sampler = NeighbourhoodSampler(index, clusters_per_batch=2, samples_per_cluster=1, seed=0)
    assign = index.assignments_.numpy()
    target = np.arange(1, 13, dtype=float)  # cluster c has mean loss c + 1
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, size=len(assign))
    noise -= np.bincount(assign, weights=noise)[assign] / np.bincount(assign)[assign]
    sampler.record_losses(np.arange(len(assign)), target[assign] + noise)
    np.testing.assert_allclose(sampler.cluster_losses(), target)
    draws = 12000
    seeds = np.array([sampler.sample().cluster_ids[0] for _ in range(draws)])
    observed = np.bincount(seeds, minlength=12)
    expected = target / target.sum() * draws
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_uniform_seed_until_losses_exist(index):
    sampler = NeighbourhoodSampler(index, clusters_per_batch=2, samples_per_cluster=1, seed=1)
    np.testing.assert_allclose(sampler.seed_probabilities(), np.full(12, 1 / 12))
    seeds = np.array([sampler.sample().cluster_ids[0] for _ in range(6000)])
    assert stats.chisquare(np.bincount(seeds, minlength=12)).pvalue > 1e-3


def test_epoch_yields_as_many_samples_as_the_dataset(index):
    sampler = NeighbourhoodSampler(index, clusters_per_batch=4, samples_per_cluster=10, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 8  # ceil(300 / 40)
    assert len(sampler) * 4 * 10 >= 300 > (len(sampler) - 1) * 4 * 10


def test_sampler_follows_index_refresh(index, rng):
    sampler = NeighbourhoodSampler(index, clusters_per_batch=3, samples_per_cluster=5, seed=0)
    sampler.sample()
    labels = np.repeat(np.arange(6), 50)
    index.refresh(torch.tensor(rng.normal(size=(300, 4)) * 5 + labels[:, None]))
    batch = sampler.sample()
    np.testing.assert_array_equal(index.assignments_.numpy()[batch.indices], batch.cluster_ids)


def test_sampler_rejects_bad_parameters(index):
    with pytest.raises(ValueError, match="impostor"):
        NeighbourhoodSampler(index, clusters_per_batch=12, samples_per_cluster=5)
    with pytest.raises(ValueError, match=">= 2"):
        NeighbourhoodSampler(index, clusters_per_batch=1)
    with pytest.raises(ValueError, match="fitted"):
        NeighbourhoodSampler(ClusterIndex(2))
