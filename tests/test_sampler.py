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


# --- Seed probabilities and epoch length as the official code has them (issue 9) --------


@pytest.fixture
def tiny_index():
    """3 classes x 1 cluster: samples 0-3 (class 0), 4-7 (class 1), 8-11 (class 2)."""
    labels = np.repeat(np.arange(3), 4)
    f = labels[:, None] * 10.0 + np.arange(12)[:, None] * 0.01
    return ClusterIndex(1).fit(torch.tensor(f), torch.tensor(labels))


def test_seed_probabilities_by_hand(tiny_index):
    samplers = {
        m: NeighbourhoodSampler(tiny_index, 2, 2, seed=0, seed_probability=m)
        for m in ("all_members", "recorded", "official")
    }
    for s in samplers.values():
        np.testing.assert_allclose(s.seed_probabilities(), [1 / 3] * 3)  # no loss yet: uniform
        s.record_losses(np.array([0, 1, 4]), np.array([2.0, 4.0, 6.0]))
    # cluster 0: losses 2, 4 recorded of 4 members; cluster 1: 6 of 4 members; cluster 2: none
    np.testing.assert_allclose(samplers["all_members"].cluster_losses(), [6 / 4, 6 / 4, 0])
    np.testing.assert_allclose(samplers["recorded"].cluster_losses(), [3.0, 6.0, 0.0])
    np.testing.assert_allclose(samplers["official"].cluster_losses(), [3.0, 6.0, 0.0])
    np.testing.assert_allclose(samplers["all_members"].seed_probabilities(), [0.5, 0.5, 0.0])
    np.testing.assert_allclose(samplers["recorded"].seed_probabilities(), [1 / 3, 2 / 3, 0.0])
    # a refresh moves samples 3 and 4 into other clusters (a hand-made assignment)
    tiny_index.assignments_ = torch.tensor([0, 0, 0, 1, 2, 1, 1, 1, 2, 2, 2, 2])
    tiny_index.refreshes_ += 1
    # recorded: re-keyed at once. cluster 0 = {0,1,2}: (2+4)/2; cluster 1 = {3,5,6,7}: none;
    # cluster 2 = {4,8,...}: 6
    np.testing.assert_allclose(samplers["recorded"].cluster_losses(), [3.0, 0.0, 6.0])
    # official: kept under the old ids until a batch touches the cluster
    np.testing.assert_allclose(samplers["official"].cluster_losses(), [3.0, 6.0, 0.0])
    for s in samplers.values():
        s.record_losses(np.array([8]), np.array([1.0]))  # touches cluster 2 only
    np.testing.assert_allclose(samplers["official"].cluster_losses(), [3.0, 6.0, 3.5])  # (6+1)/2
    np.testing.assert_allclose(
        samplers["official"].seed_probabilities(), [3 / 12.5, 6 / 12.5, 3.5 / 12.5]
    )
    np.testing.assert_allclose(samplers["recorded"].cluster_losses(), [3.0, 0.0, 3.5])
    np.testing.assert_allclose(samplers["all_members"].cluster_losses(), [2.0, 0.0, 7 / 5])


def test_official_seed_draws_follow_the_stored_losses(tiny_index):
    sampler = NeighbourhoodSampler(tiny_index, 2, 1, seed=4, seed_probability="official")
    sampler.record_losses(np.arange(12), np.repeat([1.0, 3.0, 0.0], 4))
    seeds = [int(sampler.sample().cluster_ids[0]) for _ in range(4000)]
    observed = np.bincount(seeds, minlength=3)
    assert observed[2] == 0  # a cluster with zero loss never seeds
    assert stats.binomtest(int(observed[1]), 4000, 0.75).pvalue > 1e-3


def test_all_zero_recorded_losses_draw_uniformly(tiny_index):
    for mode in ("all_members", "recorded", "official"):
        sampler = NeighbourhoodSampler(tiny_index, 2, 1, seed=0, seed_probability=mode)
        sampler.record_losses(np.arange(12), np.zeros(12))
        np.testing.assert_allclose(sampler.seed_probabilities(), [1 / 3] * 3)


def test_epoch_length_floor_and_ceil_by_hand(index):
    # 300 samples, M·D = 40: ceil 8 batches (today), floor 7 (official drop_last)
    assert len(NeighbourhoodSampler(index, 4, 10, epoch_length="ceil")) == 8
    floor = NeighbourhoodSampler(index, 4, 10, epoch_length="floor")
    assert len(floor) == 7 == len(list(floor))
    assert len(NeighbourhoodSampler(index, 5, 12, epoch_length="floor")) == 5  # 300 / 60 exactly
    assert floor.batch_size == 40
    with pytest.raises(ValueError, match="no batch"):
        NeighbourhoodSampler(index, 6, 60, epoch_length="floor")  # 360 > 300


def test_sampler_rejects_unknown_modes(index):
    with pytest.raises(ValueError, match="seed probability"):
        NeighbourhoodSampler(index, 2, 2, seed_probability="loss")
    with pytest.raises(ValueError, match="epoch length"):
        NeighbourhoodSampler(index, 2, 2, epoch_length="round")
