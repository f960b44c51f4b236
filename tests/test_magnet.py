"""Magnet loss (Eq. 3) and the cluster index against direct NumPy transcriptions."""

import numpy as np
import pytest
import torch

from clustr_lib.magnet import ClusterIndex, magnet_loss, magnet_loss_fixed_clusters


def numpy_magnet(f, cluster, cls, alpha):
    """Eq. (3), batch approximation, written out sample by sample."""
    n = len(f)
    ids = sorted(set(cluster.tolist()))
    mu = {c: f[cluster == c].mean(0) for c in ids}
    cclass = {c: cls[cluster == c][0] for c in ids}
    var = sum(np.sum((f[i] - mu[cluster[i]]) ** 2) for i in range(n)) / (n - 1)
    out = []
    for i in range(n):
        own = np.sum((f[i] - mu[cluster[i]]) ** 2) / (2 * var)
        others = [
            np.exp(-np.sum((f[i] - mu[c]) ** 2) / (2 * var)) for c in ids if cclass[c] != cls[i]
        ]
        out.append(max(0.0, alpha + own + np.log(np.sum(others))))
    return np.array(out), var


@pytest.mark.parametrize(
    "n_clusters,per_cluster,dim,alpha",
    [(4, 5, 3, 0.0), (6, 7, 16, 1.0), (12, 20, 8, 12.5), (3, 2, 2, 0.3)],
)
def test_magnet_loss_matches_numpy(rng, n_clusters, per_cluster, dim, alpha):
    cluster = np.repeat(np.arange(n_clusters) * 3 + 1, per_cluster)  # arbitrary ids
    cls = (cluster // 3) % max(2, n_clusters // 2)
    f = rng.normal(size=(len(cluster), dim)) + rng.normal(size=(n_clusters, dim)).repeat(
        per_cluster, 0
    )
    expected, var = numpy_magnet(f, cluster, cls, alpha)
    mean, per_sample, variance = magnet_loss(
        torch.tensor(f), torch.tensor(cluster), torch.tensor(cls), alpha
    )
    np.testing.assert_allclose(per_sample.numpy(), expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(float(mean), expected.mean(), rtol=1e-9)
    np.testing.assert_allclose(float(variance), var, rtol=1e-9)


def test_magnet_loss_hinge_is_active_for_well_separated_clusters():
    f = torch.tensor([[0.0, 0.0], [0.1, 0.0], [100.0, 0.0], [100.1, 0.0]], dtype=torch.float64)
    _, per_sample, _ = magnet_loss(f, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]), 0.5)
    assert torch.all(per_sample == 0)


def test_magnet_gradient_flows_through_variance(rng):
    """Analytic gradients equal finite differences of the full expression (σ² included)."""
    cluster = torch.tensor(np.repeat(np.arange(4), 3))
    cls = cluster // 2
    f = torch.tensor(rng.normal(size=(12, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: magnet_loss(e, cluster, cls, 5.0)[0], (f,))
    # a detached σ² would give a different gradient: the dependence is real
    g_full = torch.autograd.grad(magnet_loss(f, cluster, cls, 5.0)[0], f)[0]
    fd = np.zeros(f.shape)
    base = f.detach().numpy()
    for i in range(12):
        for j in range(3):
            h = np.zeros_like(base)
            h[i, j] = 1e-6
            up = numpy_magnet(base + h, cluster.numpy(), cls.numpy(), 5.0)[0].mean()
            down = numpy_magnet(base - h, cluster.numpy(), cls.numpy(), 5.0)[0].mean()
            fd[i, j] = (up - down) / 2e-6
    np.testing.assert_allclose(g_full.numpy(), fd, rtol=1e-5, atol=1e-7)


def test_magnet_loss_rejects_bad_input():
    f = torch.randn(4, 2)
    with pytest.raises(ValueError, match="same class"):
        magnet_loss(f, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), 1.0)
    with pytest.raises(ValueError, match="another class"):
        magnet_loss(f, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 0]), 1.0)
    with pytest.raises(ValueError, match="alpha"):
        magnet_loss(f, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]), -1.0)
    with pytest.raises(ValueError, match="2-D"):
        magnet_loss(torch.randn(4), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]), 1.0)
    with pytest.raises(ValueError, match="entries"):
        magnet_loss(f, torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1, 1]), 1.0)


def test_fixed_cluster_magnet_matches_numpy(rng):
    centroids = rng.normal(size=(6, 4)) * 3
    classes = np.array([0, 0, 1, 1, 2, 2])
    f = rng.normal(size=(10, 4)) * 3
    y = rng.integers(0, 3, size=10)
    var, alpha = 2.5, 1.5
    got = magnet_loss_fixed_clusters(
        torch.tensor(f), torch.tensor(y), torch.tensor(centroids), torch.tensor(classes), var, alpha
    ).numpy()
    for i in range(10):
        d = ((f[i] - centroids) ** 2).sum(1) / (2 * var)
        own = d[classes == y[i]].min()
        expected = max(0.0, alpha + own + np.log(np.exp(-d[classes != y[i]]).sum()))
        assert got[i] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("backend", ["sklearn", "torch"])
def test_cluster_index_is_a_per_class_kmeans_fixed_point(rng, backend):
    labels = np.repeat(np.arange(3), 40)
    f = rng.normal(size=(120, 5)) + labels[:, None] * 4.0
    f[::2] += 10.0  # two well separated modes per class
    index = ClusterIndex(clusters_per_class=2, random_state=0, kmeans_backend=backend).fit(
        torch.tensor(f), torch.tensor(labels)
    )
    cent, cls, assign = (
        index.centroids_.numpy(),
        index.centroid_classes_.numpy(),
        index.assignments_.numpy(),
    )
    assert cent.shape == (6, 5) and cls.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(cls[assign], labels)
    for c in range(6):
        np.testing.assert_allclose(cent[c], f[assign == c].mean(0), atol=1e-9)
    for i in range(120):  # each sample sits in the nearest centroid of its own class
        own = np.nonzero(cls == labels[i])[0]
        assert assign[i] == own[np.argmin(((f[i] - cent[own]) ** 2).sum(1))]
    # the two modes of each class are separated
    for c in range(3):
        members = labels == c
        assert len(set(assign[members & (np.arange(120) % 2 == 0)])) == 1
    expected_var = ((f - cent[assign]) ** 2).sum() / (120 - 1)
    assert index.variance_ == pytest.approx(expected_var, rel=1e-9)


@pytest.mark.parametrize("backend", ["sklearn", "torch"])
def test_cluster_index_k1_uses_class_means_and_refresh_updates(rng, backend):
    labels = np.repeat(np.arange(2), 10)
    f = rng.normal(size=(20, 3))
    index = ClusterIndex(1, kmeans_backend=backend).fit(torch.tensor(f), torch.tensor(labels))
    np.testing.assert_allclose(index.centroids_.numpy()[1], f[10:].mean(0))
    index.refresh(torch.tensor(f + 5.0))
    np.testing.assert_allclose(index.centroids_.numpy()[1], f[10:].mean(0) + 5.0)
    assert index.refreshes_ == 2


def test_cluster_index_rejects_bad_input():
    with pytest.raises(ValueError, match="fewer than clusters_per_class"):
        ClusterIndex(3).fit(torch.randn(5, 2), torch.tensor([0, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match=">= 1"):
        ClusterIndex(0)
    index = ClusterIndex(1).fit(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="expected 4"):
        index.refresh(torch.randn(5, 2))
    with pytest.raises(RuntimeError, match="fit"):
        ClusterIndex(1).refresh(torch.randn(4, 2))


# --- Official-recipe options (issue 9) --------------------------------------------------


def numpy_official_magnet(f, cluster, cls, alpha, eps):
    """The official code's per-sample loss, written in exp space as it is there:
    relu(−log(num / (den + ε) + ε)), num = exp(−d_own/(2σ²) − α), den = Σ_other exp(−d/(2σ²))."""
    n = len(f)
    ids = sorted(set(cluster.tolist()))
    mu = {c: f[cluster == c].mean(0) for c in ids}
    cclass = {c: cls[cluster == c][0] for c in ids}
    var = sum(np.sum((f[i] - mu[cluster[i]]) ** 2) for i in range(n)) / (n - 1)
    out = []
    for i in range(n):
        num = np.exp(-np.sum((f[i] - mu[cluster[i]]) ** 2) / (2 * var) - alpha)
        den = sum(
            np.exp(-np.sum((f[i] - mu[c]) ** 2) / (2 * var)) for c in ids if cclass[c] != cls[i]
        )
        out.append(max(0.0, -np.log(num / (den + eps) + eps)))
    return np.array(out)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 12.5])
def test_magnet_loss_with_the_official_log_epsilon_matches_numpy(rng, alpha):
    cluster = np.repeat(np.arange(6), 5)
    cls = cluster // 2
    f = rng.normal(size=(30, 4)) + rng.normal(size=(6, 4)).repeat(5, 0) * 1.5
    expected = numpy_official_magnet(f, cluster, cls, alpha, 1e-8)
    _, per_sample, _ = magnet_loss(
        torch.tensor(f), torch.tensor(cluster), torch.tensor(cls), alpha, log_eps=1e-8
    )
    np.testing.assert_allclose(per_sample.numpy(), expected, rtol=1e-9, atol=1e-9)
    exact = magnet_loss(torch.tensor(f), torch.tensor(cluster), torch.tensor(cls), alpha)[1].numpy()
    # −log(r + ε) = ℓ − log(1 + ε·e^ℓ) (the impostor sum ≫ ε here): ~1e-4 lower at ℓ = 10
    active = exact > 0
    np.testing.assert_allclose(
        per_sample.numpy()[active],
        exact[active] - np.log1p(1e-8 * np.exp(exact[active])),
        rtol=1e-7,
        atol=1e-7,
    )


def test_the_official_log_epsilon_caps_the_per_sample_loss_near_18_4(rng):
    # 20 samples around 0 and 20 around (100, 0); sample 0, of the first cluster, sits on the second
    f = np.concatenate([rng.normal(size=(20, 2)) * 0.1, rng.normal(size=(20, 2)) * 0.1 + [100, 0]])
    f[0] = [100.0, 0.0]
    f = torch.tensor(f)
    cluster = torch.tensor([0] * 20 + [1] * 20)
    exact = magnet_loss(f, cluster, cluster, 12.5)[1]
    capped = magnet_loss(f, cluster, cluster, 12.5, log_eps=1e-8)[1]
    cap = -np.log(1e-8)
    assert cap == pytest.approx(18.4207, abs=1e-4)
    assert float(exact[0]) > 30  # α + d_own/(2σ²) + log(≈1)
    assert cap - 1e-3 < float(capped[0]) <= cap + 1e-12
    assert float(capped.max()) <= cap + 1e-12
    # and its gradient is (almost) gone: the sample lies far past the cap
    f.requires_grad_(True)
    g_exact = torch.autograd.grad(magnet_loss(f, cluster, cluster, 12.5)[1][0], f)[0]
    g_capped = torch.autograd.grad(magnet_loss(f, cluster, cluster, 12.5, log_eps=1e-8)[1][0], f)[0]
    assert float(g_capped.norm()) < 1e-3 * float(g_exact.norm())
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0]], dtype=torch.float64)
    fixed = magnet_loss_fixed_clusters(
        f[:1].detach(), torch.tensor([0]), centres, torch.tensor([0, 1]), 1.0, 12.5, log_eps=1e-8
    )
    assert float(fixed[0]) == pytest.approx(cap, abs=1e-6)
    with pytest.raises(ValueError, match="magnet_log_eps"):
        magnet_loss(f, cluster, cluster, 12.5, log_eps=0.0)


def test_kmeans_with_a_fixed_state_is_sklearns_with_the_official_settings(rng):
    from sklearn.cluster import KMeans

    labels = np.repeat(np.arange(3), 40)
    f = rng.normal(size=(120, 5)) + labels[:, None] * 3.0
    index = ClusterIndex(2, random_state=1, n_init=10, max_iter=40, fixed_random_state=True)
    index.fit(torch.tensor(f), torch.tensor(labels))
    first = index.centroids_.clone()
    index.refresh(torch.tensor(f))  # the same state at every refresh: the same clustering
    assert torch.equal(index.centroids_, first) and index.refreshes_ == 2
    for c in range(3):
        km = KMeans(n_clusters=2, init="k-means++", n_init=10, max_iter=40, random_state=1)
        local = km.fit_predict(f[labels == c])
        np.testing.assert_allclose(first[2 * c : 2 * c + 2].numpy(), km.cluster_centers_)
        np.testing.assert_array_equal(index.assignments_.numpy()[labels == c], 2 * c + local)
    moving = ClusterIndex(2, random_state=1).fit(torch.tensor(f), torch.tensor(labels))
    assert moving.random_state + moving.refreshes_ - 1 == 1  # today's: seed + refresh count
    with pytest.raises(ValueError, match="n_init and max_iter"):
        ClusterIndex(2, n_init=0)
    with pytest.raises(ValueError, match="n_init and max_iter"):
        ClusterIndex(2, max_iter=0)


@pytest.mark.parametrize("backend", ["sklearn", "torch"])
def test_variance_from_a_second_pass_uses_the_nearest_centroid_of_the_own_class(rng, backend):
    labels = np.repeat(np.arange(3), 30)
    f = rng.normal(size=(90, 4)) + labels[:, None] * 4.0
    g = f + rng.normal(size=f.shape) * 0.5  # another (augmented) pass
    index = ClusterIndex(2, random_state=0, kmeans_backend=backend).fit(
        torch.tensor(f), torch.tensor(labels), variance_embeddings=torch.tensor(g)
    )
    cent, cls = index.centroids_.numpy(), index.centroid_classes_.numpy()
    expected = (
        sum(
            min(((g[i] - cent[j]) ** 2).sum() for j in range(6) if cls[j] == labels[i])
            for i in range(90)
        )
        / 89
    )
    assert index.variance_ == pytest.approx(expected, rel=1e-10)
    same = ClusterIndex(2, random_state=0, kmeans_backend=backend)
    same.fit(torch.tensor(f), torch.tensor(labels))
    assert torch.equal(same.centroids_, index.centroids_)  # k-means sees only the first pass
    with pytest.raises(ValueError, match="variance_embeddings"):
        index.refresh(torch.tensor(f), variance_embeddings=torch.tensor(g[:10]))


# --- k-means on the device (issue 11): torch's batched k-means++ against scikit-learn -------

from sklearn.cluster import KMeans  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from clustr_lib.magnet import kmeans_plusplus_torch, kmeans_torch  # noqa: E402


def per_class_inertia(index, f, labels):
    f = torch.as_tensor(f)
    own = index.centroids_.to(f.dtype)[index.assignments_]
    sq = ((f - own) ** 2).sum(1)
    return np.array(
        [float(sq[torch.as_tensor(labels) == c].sum()) for c in range(index.num_classes_)]
    )


def same_partition(a, b):
    """Whether two labelings split the points alike, up to the names of the parts."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.fixture(scope="module")
def digits_embeddings():
    """A tiny embedder trained on scikit-learn's 8×8 digits, and its 16-d embeddings."""
    from clustr_lib.data import TensorData
    from clustr_lib.train import train_cross_entropy

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    embedder = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16)
    )
    net = torch.nn.Sequential(embedder, torch.nn.ReLU(), torch.nn.Linear(16, 10))
    train_cross_entropy(net, TensorData(x, y), epochs=4, lr=1e-2, batch_size=128, progress=False)
    with torch.no_grad():
        return embedder(x), y, x


@pytest.mark.parametrize("k,n_init", [(2, 10), (3, 10), (4, 10)])
def test_torch_kmeans_inertia_is_sklearns_within_1_percent_on_real_data(
    digits_embeddings, k, n_init
):
    features, labels, pixels = digits_embeddings
    for f in (features, pixels):  # a trained embedder's features, and the raw digits
        got = {}
        for backend in ("sklearn", "torch"):
            index = ClusterIndex(k, random_state=1, n_init=n_init, kmeans_backend=backend)
            index.fit(f, labels)
            assert index.backend_ == backend
            got[backend] = per_class_inertia(index, f, labels)
        # within 1 % in total; per class too at the paper's K = 2, where both find the best
        # split; at larger K each ends in one of several local optima (sklearn's seeds too)
        assert got["torch"].sum() == pytest.approx(got["sklearn"].sum(), rel=0.01)
        np.testing.assert_allclose(got["torch"], got["sklearn"], rtol=0.01 if k == 2 else 0.03)


def test_torch_kmeans_finds_sklearns_clusters_on_separated_data(rng):
    labels = np.repeat(np.arange(4), 60)
    modes = rng.integers(0, 3, size=240)  # three well separated modes per class
    f = rng.normal(size=(240, 8)) + labels[:, None] * 30.0 + modes[:, None] * 10.0
    indices = {
        b: ClusterIndex(3, random_state=0, n_init=2, kmeans_backend=b).fit(
            torch.tensor(f), torch.tensor(labels)
        )
        for b in ("sklearn", "torch")
    }
    for c in range(4):
        members = labels == c
        a = indices["torch"].assignments_.numpy()[members]
        assert same_partition(a, indices["sklearn"].assignments_.numpy()[members])
        assert same_partition(a, modes[members])
    np.testing.assert_allclose(
        np.sort(indices["torch"].centroids_.numpy(), axis=0),
        np.sort(indices["sklearn"].centroids_.numpy(), axis=0),
        rtol=1e-9,
        atol=1e-9,
    )


def test_kmeans_backend_auto_is_sklearn_on_the_cpu(rng):
    labels = np.repeat(np.arange(3), 30)
    f = torch.tensor(rng.normal(size=(90, 4)) + labels[:, None] * 2.0, dtype=torch.float32)
    auto = ClusterIndex(2, random_state=3).fit(f, torch.tensor(labels))
    reference = ClusterIndex(2, random_state=3, kmeans_backend="sklearn").fit(
        f, torch.tensor(labels)
    )
    assert auto.backend_ == "sklearn" and auto.backend_for(f) == "sklearn"
    assert torch.equal(auto.centroids_, reference.centroids_)
    assert torch.equal(auto.assignments_, reference.assignments_)
    assert auto.variance_ == reference.variance_
    for c in range(3):  # and that is scikit-learn's KMeans, class by class
        km = KMeans(n_clusters=2, init="k-means++", n_init=1, random_state=3)
        km.fit(f[labels == c].numpy())
        np.testing.assert_array_equal(
            auto.centroids_[2 * c : 2 * c + 2].numpy(), km.cluster_centers_
        )
    with pytest.raises(ValueError, match="k-means backend"):
        ClusterIndex(2, kmeans_backend="faiss")


def test_torch_kmeans_honours_the_index_options(rng):
    labels = np.repeat(np.arange(3), 50)
    f = torch.tensor(rng.normal(size=(150, 6)) + labels[:, None] * 3.0)
    fixed = ClusterIndex(2, random_state=1, fixed_random_state=True, kmeans_backend="torch")
    fixed.fit(f, torch.tensor(labels))
    first = fixed.centroids_.clone()
    fixed.refresh(f)  # the same random state at every refresh: the same clustering
    assert torch.equal(fixed.centroids_, first)
    # otherwise refresh r uses seed + r; n_init and max_iter are passed on
    moving = ClusterIndex(2, random_state=4, n_init=3, max_iter=7, kmeans_backend="torch")
    moving.fit(f, torch.tensor(labels))
    x = torch.stack([f[labels == c] for c in range(3)])  # the classes, batched
    for refresh in range(1, 3):
        generator = torch.Generator().manual_seed(4 + refresh)
        expected, local, _, _ = kmeans_torch(
            x, torch.tensor([50] * 3), 2, n_init=3, max_iter=7, generator=generator
        )
        moving.refresh(f)
        assert torch.equal(moving.centroids_, expected.reshape(6, 6))
        np.testing.assert_array_equal(
            moving.assignments_.numpy(), (local + 2 * torch.arange(3)[:, None]).flatten().numpy()
        )
    # more restarts never end worse; one Lloyd iteration is one iteration
    sizes = torch.tensor([50])
    one = kmeans_torch(x[:1], sizes, 4, n_init=1, generator=torch.Generator().manual_seed(0))
    many = kmeans_torch(x[:1], sizes, 4, n_init=8, generator=torch.Generator().manual_seed(0))
    assert float(many[2]) <= float(one[2]) + 1e-9
    assert kmeans_torch(x[:1], sizes, 4, max_iter=1, generator=torch.Generator())[3] == 1


def test_torch_kmeans_is_a_lloyd_fixed_point_on_padded_problems(rng):
    sizes = torch.tensor([7, 30, 18])  # three problems of different sizes, padded to 30 rows
    x = torch.tensor(rng.normal(size=(3, 30, 2)))
    x[0, 7:] = 1e6  # padding: must never matter
    x[2, 18:] = -1e6
    centres, labels, inertia, _ = kmeans_torch(x, sizes, 3, n_init=3, generator=torch.Generator())
    for p, n in enumerate(sizes.tolist()):
        pts, lab = x[p, :n], labels[p, :n]
        assert (labels[p, n:] == -1).all() and set(lab.tolist()) == {0, 1, 2}
        sq = ((pts[:, None] - centres[p][None]) ** 2).sum(2)
        assert torch.equal(sq.argmin(1), lab)  # every point at its nearest centre
        for j in range(3):  # every centre the mean of its points
            torch.testing.assert_close(centres[p, j], pts[lab == j].mean(0))
        assert float(inertia[p]) == pytest.approx(float(sq.min(1).values.sum()), rel=1e-9)


def test_an_empty_cluster_takes_the_farthest_point(monkeypatch):
    x = torch.tensor([[0.0], [0.0], [1.0], [9.0], [10.0], [13.0]], dtype=torch.float64)[None]
    start = torch.tensor([[[[0.5], [10.0], [1000.0]]]], dtype=torch.float64)  # the 3rd gets none

    def fixed_start(x, sizes, k, restarts, generator, local_trials):
        mean = torch.tensor([[[[38.0 / 6]]]], dtype=torch.float64)  # kmeans_torch centres x
        return start - mean, None

    monkeypatch.setattr("clustr_lib.magnet.kmeans_plusplus_torch", fixed_start)
    centres, labels, _, _ = kmeans_torch(x, torch.tensor([6]), 3, max_iter=1)
    # 13 is farthest from its centre (10): it moves to the empty cluster, as scikit-learn does
    torch.testing.assert_close(
        centres[0, :, 0], torch.tensor([1 / 3, 9.5, 13.0], dtype=torch.float64)
    )
    assert labels[0].tolist() == [0, 0, 0, 1, 1, 2]
    km = KMeans(3, init=start[0, 0].numpy(), n_init=1, max_iter=1).fit(x[0].numpy())
    np.testing.assert_allclose(np.sort(km.cluster_centers_[:, 0]), [1 / 3, 9.5, 13.0])


def test_kmeans_plusplus_draws_the_next_centre_by_squared_distance():
    """Arthur & Vassilvitskii's D² sampling (one trial per step), over 4,000 problems at once:
    the first centre uniform, the second with probability d²(first, ·) / Σ d²."""
    points = torch.tensor([0.0, 1.0, 3.0, 7.0], dtype=torch.float64)
    problems = 4000
    x = points[None, :, None].expand(problems, 4, 1).contiguous()
    _, chosen = kmeans_plusplus_torch(
        x, torch.full((problems,), 4), 2, 1, torch.Generator().manual_seed(0), local_trials=1
    )
    first, second = chosen[:, 0, 0], chosen[:, 0, 1]
    counts = torch.bincount(first, minlength=4).double()
    assert (counts - problems / 4).abs().max() < 4 * (problems * 0.25 * 0.75) ** 0.5
    for i in range(4):
        d2 = (points - points[i]) ** 2
        expected = d2 / d2.sum()
        seen = torch.bincount(second[first == i], minlength=4).double()
        total = seen.sum()
        sd = (total * expected * (1 - expected)).sqrt()
        assert ((seen - total * expected).abs() <= 4 * sd + 1e-9).all(), (i, seen, expected)
        assert seen[i] == 0  # never the point already chosen

    # greedy k-means++ (scikit-learn's default, 2 + ln k trials) lowers the mean potential
    def potential(trials):
        centres, _ = kmeans_plusplus_torch(
            x, torch.full((problems,), 4), 2, 1, torch.Generator().manual_seed(1), trials
        )
        return float(((x - centres[:, 0, :1]) ** 2).minimum((x - centres[:, 0, 1:]) ** 2).mean())

    assert potential(None) < potential(1)
