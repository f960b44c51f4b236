"""Training: resumable runs end where uninterrupted ones do; ClusTR learns digits32."""

import pytest
import torch

from clustr_lib import data
from clustr_lib.models import WithHead, resnet18_embedder
from clustr_lib.train import Checkpoint, cluster_model, train_cross_entropy, train_magnet


def small_digits():
    return data.load_images("digits32", train_size=240, test_size=120, seed=0)


def test_interrupted_cross_entropy_run_resumes_to_the_same_weights(tmp_path):
    d = small_digits()
    d.augment = True  # exercise the augmentation stream as well
    kwargs = dict(
        lr=1e-2,
        batch_size=64,
        milestones=(2,),
        seed=3,
        step="qtrades",
        step_args={"lam": 1.0, "eps": 8 / 255, "step_size": 10 / 255},
        progress=False,
    )

    def fresh():
        torch.manual_seed(0)
        return WithHead(resnet18_embedder(2), 16, 10)

    straight = fresh()
    h1 = train_cross_entropy(straight, d, epochs=3, **kwargs)
    resumed = fresh()
    train_cross_entropy(resumed, d, epochs=2, checkpoint=tmp_path / "c.pt", **kwargs)  # "killed"
    assert torch.load(tmp_path / "c.pt", weights_only=True)["epoch"] == 2
    other = fresh()  # the restarted process builds a new model and finds the checkpoint
    h2 = train_cross_entropy(other, d, epochs=3, checkpoint=tmp_path / "c.pt", **kwargs)
    for a, b in zip(straight.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    assert h1.loss == h2.loss


def test_interrupted_magnet_run_resumes_to_the_same_weights_and_clusters(tmp_path):
    d = small_digits()
    kwargs = dict(
        lr=1e-3,
        alpha=1.0,
        clusters_per_class=2,
        clusters_per_batch=4,
        samples_per_cluster=10,
        seed=1,
        qtrades_lambda=1.0,
        progress=False,
    )

    def fresh():
        torch.manual_seed(0)
        return resnet18_embedder(2)

    straight = fresh()
    index1, _ = train_magnet(straight, d, epochs=3, **kwargs)
    train_magnet(fresh(), d, epochs=1, checkpoint=tmp_path / "m.pt", **kwargs)
    resumed = fresh()
    index2, _ = train_magnet(resumed, d, epochs=3, checkpoint=tmp_path / "m.pt", **kwargs)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(index1.centroids_, index2.centroids_)
    assert index1.refreshes_ == index2.refreshes_ == 4  # fitted once, refreshed every epoch


def test_checkpoint_write_is_atomic_and_loads_weights_only(tmp_path):
    ckpt = Checkpoint(tmp_path / "x.pt")
    ckpt.save({"a": torch.ones(2), "b": "text", "c": 3})
    assert ckpt.load()["c"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt", "x.pt.sha256"]
    assert Checkpoint(None).load() is None


def test_short_clustr_run_on_digits32_is_far_above_chance():
    d = data.load_images("digits32", seed=0)
    torch.manual_seed(0)
    net = WithHead(resnet18_embedder(4), 32, 10)
    train_cross_entropy(net, d, epochs=6, lr=1e-2, batch_size=128, milestones=(4,), progress=False)
    index, _ = train_magnet(
        net.embedder,
        d,
        epochs=2,
        lr=1e-3,
        alpha=1.0,
        clusters_per_batch=12,
        samples_per_cluster=20,
        progress=False,
    )
    model = cluster_model(net.embedder, index, num_nearest=20).eval()
    accuracy = float((model(d.test_images()).argmax(1) == d.y_test).float().mean())
    assert accuracy > 0.7  # chance is 0.1


def test_qtrades_terms_match_numpy(rng):
    import numpy as np

    from clustr_lib.train import qtrades_term

    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    log_p = torch.tensor(a).log_softmax(1)
    log_q = torch.tensor(b).log_softmax(1)
    p, q = np.exp(log_p.numpy()), np.exp(log_q.numpy())
    ce = -(p * np.log(q)).sum(1).mean()
    kl = (p * (np.log(p) - np.log(q))).sum(1).mean()
    assert float(qtrades_term(log_q, log_p, "ce")) == pytest.approx(ce, rel=1e-10)
    assert float(qtrades_term(log_q, log_p, "kl")) == pytest.approx(kl, rel=1e-10)
    assert float(qtrades_term(log_p, log_p, "kl")) == pytest.approx(0.0, abs=1e-12)


# --- The official recipe's options (issue 9) ------------------------------------------

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

from clustr_lib.classify import ClusterClassifier, ClusterModel, normalised_scores  # noqa: E402
from clustr_lib.train import magnet_step, official_qtrades_term  # noqa: E402


def _numpy_scores(f, mu, cls, var, L, num_classes):
    sq = ((f[:, None, :] - mu[None]) ** 2).sum(2)
    nearest = np.argsort(sq, 1, kind="stable")[:, :L]
    e = np.zeros_like(sq)
    np.put_along_axis(e, nearest, np.exp(-np.take_along_axis(sq, nearest, 1) / (2 * var)), 1)
    onehot = (cls[:, None] == np.arange(num_classes)[None]).astype(float)
    return e @ onehot, e, onehot


def test_official_qtrades_term_matches_numpy_and_its_target_is_not_detached(rng):
    n, dim, num_classes, k, L = 30, 4, 5, 2, 6
    mu = rng.normal(size=(num_classes * k, dim)) * 1.5
    cls = np.repeat(np.arange(num_classes), k)
    var = 1.3
    f, f_adv = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    clf = ClusterClassifier(
        torch.tensor(mu), torch.tensor(cls), var, num_nearest=L, num_classes=num_classes
    )
    ft = torch.tensor(f, requires_grad=True)
    fa = torch.tensor(f_adv, requires_grad=True)
    term = official_qtrades_term(clf.scores(fa), normalised_scores(clf.scores(ft)))
    g_clean, g_adv = torch.autograd.grad(term, (ft, fa))
    # NumPy: p = s(x)/Σs(x), log q = log_softmax(s(x_adv)), T = mean −Σ p log q
    s, e, onehot = _numpy_scores(f, mu, cls, var, L, num_classes)
    S = s.sum(1, keepdims=True)
    p = s / S
    sa, ea, _ = _numpy_scores(f_adv, mu, cls, var, L, num_classes)
    log_q = sa - sa.max(1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
    value = float(term.detach())
    assert value == pytest.approx(-(p * log_q).sum(1).mean(), rel=1e-12)
    assert 0.8 * np.log(num_classes) < value  # raw scores in [0, K]: q is nearly flat
    # ∂T/∂s(x) = (−log q + Σ p log q) / (N·S): the target carries gradient
    d_s = (-log_q + (p * log_q).sum(1, keepdims=True)) / (n * S)
    expected = ((d_s @ onehot.T) * e)[:, :, None] * (-(f[:, None, :] - mu[None]) / var)
    np.testing.assert_allclose(g_clean.numpy(), expected.sum(1), rtol=1e-9, atol=1e-12)
    assert float(g_clean.abs().max()) > 1e-3
    d_sa = (-p + np.exp(log_q)) / n
    expected_adv = ((d_sa @ onehot.T) * ea)[:, :, None] * (-(f_adv[:, None, :] - mu[None]) / var)
    np.testing.assert_allclose(g_adv.numpy(), expected_adv.sum(1), rtol=1e-9, atol=1e-12)


def test_official_step_adds_the_adversarys_start_gradient(rng):
    torch.manual_seed(0)
    embedder = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).double()
    mu = torch.tensor(rng.normal(size=(6, 4)))
    clf = ClusterClassifier(mu, torch.tensor([0, 0, 1, 1, 2, 2]), 1.0, num_nearest=4)
    x = torch.tensor(rng.uniform(0, 1, size=(12, 3, 2, 2)))
    y = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    clusters = torch.tensor([0] * 4 + [2] * 4 + [4] * 4)
    optimizer = torch.optim.SGD(embedder.parameters(), lr=0.0)
    kwargs = dict(
        alpha=1.0, qtrades_lambda=2.0, qtrades_eps=0.1, qtrades_step=0.05, qtrades_form="official"
    )
    grads, losses = {}, {}
    for leak in (False, True):
        losses[leak] = magnet_step(
            embedder,
            optimizer,
            clf,
            x,
            y,
            clusters,
            adversary_grad=leak,
            generator=torch.Generator().manual_seed(3),
            **kwargs,
        )[0]
        grads[leak] = [p.grad.clone() for p in embedder.parameters()]
    # independently: the adversary's objective at its clipped start, p(x) detached, batch mean
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    start = (x + (2 * noise - 1) * 0.1).clamp(0, 1)
    model = ClusterModel(embedder, clf)
    with torch.no_grad():
        p = normalised_scores(model.scores(x))
    cost = -(p * model.scores(start).log_softmax(1)).sum(1).mean()
    extra = torch.autograd.grad(cost, list(embedder.parameters()))
    for g_leak, g_plain, g_extra in zip(grads[True], grads[False], extra):
        torch.testing.assert_close(g_leak - g_plain, g_extra, rtol=1e-9, atol=1e-12)
    assert losses[True] == losses[False]  # not part of the logged loss


def _blobs(sizes, seed=0):
    g = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(sizes)), sizes)
    x = g.normal(size=(len(y), 2)) * 0.3 + np.stack([np.cos(y * 2.1), np.sin(y * 2.1)], 1) * 3
    return data.TensorData(torch.tensor(x, dtype=torch.float32), torch.tensor(y))


class TrainSteps(nn.Module):
    """A small MLP that counts its training-mode forward calls (one per Magnet step)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 4))
        self.calls = 0

    def forward(self, x):
        self.calls += int(self.training)
        return self.net(x)


def test_train_magnet_validates_the_official_options_before_any_work():
    class Boom(nn.Module):
        def forward(self, x):
            raise AssertionError("embedded before validating")

    d = _blobs([20, 20, 20])  # 3 classes, K = 2: 6 clusters
    base = dict(
        epochs=1, lr=1e-3, alpha=1.0, clusters_per_batch=3, samples_per_cluster=4, progress=False
    )
    bad = [
        ({"qtrades_form": "paper"}, "QTRADES form"),
        ({"train_num_nearest": 0}, "train_num_nearest"),
        ({"train_num_nearest": 7}, r"\[1, 6\]"),
        ({"milestones": (30, 30)}, "strictly increasing"),
        ({"milestones": (60, 30)}, "strictly increasing"),
        ({"milestones": (0, 3)}, "positive integer"),
        ({"milestones": (1.5,)}, "positive integer"),
        ({"seed_probability": "loss"}, "seed probability"),
        ({"epoch_length": "round"}, "epoch length"),
        ({"variance_from": "test"}, "variance source"),
        ({"kmeans_n_init": 0}, "kmeans_n_init"),
        ({"kmeans_max_iter": 0}, "kmeans_max_iter"),
        ({"magnet_log_eps": -1e-8}, "magnet_log_eps"),
        ({"flip": True}, "images"),
        ({"qtrades_form": "official", "qtrades_loss": "kl"}, "cross-entropy"),
        ({"qtrades_lambda": 1.0, "train_num_nearest": 4}, "all 6 clusters"),
    ]
    for options, message in bad:
        with pytest.raises(ValueError, match=message):
            train_magnet(Boom(), d, **base, **options)
    # fine: L with the official form, or with no QTRADES term; L = all clusters with logprob
    for options in (
        {"qtrades_lambda": 1.0, "qtrades_form": "official", "train_num_nearest": 4},
        {"train_num_nearest": 4},
        {"qtrades_lambda": 1.0, "train_num_nearest": 6},
    ):
        train_magnet(TrainSteps(), d, **base, **options)


def test_magnet_lr_drops_tenfold_at_each_milestone(tmp_path):
    d = _blobs([30, 30, 30])
    kwargs = dict(
        lr=1e-2,
        alpha=1.0,
        clusters_per_class=1,
        clusters_per_batch=3,
        samples_per_cluster=10,
        progress=False,
    )
    for epochs, expected in [(1, 1e-2), (2, 1e-3), (3, 1e-4), (4, 1e-4)]:
        path = tmp_path / f"m{epochs}.pt"
        train_magnet(TrainSteps(), d, epochs=epochs, milestones=(2, 3), checkpoint=path, **kwargs)
        lr = torch.load(path, weights_only=True)["optimizer"]["param_groups"][0]["lr"]
        assert lr == pytest.approx(expected, rel=1e-12)
    train_magnet(TrainSteps(), d, epochs=3, checkpoint=tmp_path / "none.pt", **kwargs)
    state = torch.load(tmp_path / "none.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-2


@pytest.mark.parametrize(
    "sizes,epoch_length,drop,steps",
    [
        ([50, 45], "ceil", False, 5),  # 95 samples, M·D = 20: ceil 5
        ([50, 45], "floor", False, 4),  # floor 4
        ([50, 45], "floor", True, 4),  # no short batch to drop
        ([5, 90], "floor", False, 4),  # every batch is 5 + 10 = 15 < 20 samples ...
        ([5, 90], "floor", True, 0),  # ... so the official loader drops every one
    ],
)
def test_epoch_length_and_short_batches_by_hand(sizes, epoch_length, drop, steps):
    net = TrainSteps()
    _, history = train_magnet(
        net,
        _blobs(sizes),
        epochs=2,
        lr=1e-3,
        alpha=1.0,
        clusters_per_class=1,
        clusters_per_batch=2,
        samples_per_cluster=10,
        epoch_length=epoch_length,
        drop_short_batches=drop,
        progress=False,
    )
    assert net.calls == 2 * steps
    assert len(history.loss) == 2


class EvalRecorder(nn.Module):
    """A linear embedder that keeps the inputs of its eval-mode (clustering) passes."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 32 * 32, 8)
        self.seen = []

    def forward(self, x):
        if not self.training:
            self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


@pytest.mark.parametrize("augment,second_pass", [(False, False), (True, False), (True, True)])
def test_cluster_refresh_embeds_the_augmented_training_set_when_asked(augment, second_pass):
    d = data.load_images("digits32", train_size=120, test_size=10, seed=0)
    d.augment = True
    torch.manual_seed(0)
    net = EvalRecorder()
    train_magnet(
        net,
        d,
        epochs=2,
        lr=1e-3,
        alpha=1.0,
        clusters_per_class=1,
        clusters_per_batch=3,
        samples_per_cluster=5,
        flip=True,
        refresh_augment=augment,
        variance_from="second_pass" if second_pass else "assignments",
        progress=False,
    )
    seen = torch.cat(net.seen)
    passes = 3 * (2 if second_pass else 1)  # the initial clustering and one refresh per epoch
    assert len(seen) == passes * 120
    plain = d.train_images()
    unchanged = (seen.view(passes, 120, -1) == plain.flatten(1)).all(2).float().mean()
    if augment:
        assert float(unchanged) < 0.2  # cropped (and flipped): almost never the original
    else:
        assert float(unchanged) == 1.0


def test_interrupted_official_recipe_run_resumes_to_the_same_weights_and_clusters(tmp_path):
    d = small_digits()
    d.augment = True
    kwargs = dict(
        lr=1e-3,
        alpha=12.5,
        clusters_per_class=2,
        clusters_per_batch=4,
        samples_per_cluster=10,
        seed=1,
        qtrades_lambda=2.0,
        qtrades_form="official",
        qtrades_adversary_grad=True,
        train_num_nearest=6,
        milestones=(2,),
        flip=True,
        seed_probability="official",
        epoch_length="floor",
        drop_short_batches=True,
        kmeans_random_state=1,
        kmeans_n_init=2,
        kmeans_max_iter=20,
        refresh_augment=True,
        variance_from="second_pass",
        magnet_log_eps=1e-8,
        progress=False,
    )

    def fresh():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=4),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 8 * 8, 8),
        )

    straight = fresh()
    index1, h1 = train_magnet(straight, d, epochs=3, **kwargs)
    train_magnet(fresh(), d, epochs=2, checkpoint=tmp_path / "m.pt", **kwargs)
    resumed = fresh()
    index2, h2 = train_magnet(resumed, d, epochs=3, checkpoint=tmp_path / "m.pt", **kwargs)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(index1.centroids_, index2.centroids_)
    assert index1.variance_ == index2.variance_ and h1.loss == h2.loss
    assert all(np.isfinite(h1.loss)) and max(h1.loss) < 12.5 + 2.0 * 10 + 18.5


def test_the_official_head_qtrades_term_is_torchs_kl_div_on_probabilities(rng):
    import numpy as np

    from clustr_lib.train import qtrades_term

    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    log_p, log_q = torch.tensor(a).log_softmax(1), torch.tensor(b).log_softmax(1)
    p, q = np.exp(log_p.numpy()), np.exp(log_q.numpy())
    expected = (p * (np.log(p) - q)).mean()  # F.kl_div(input=q, target=p), mean over elements
    assert float(qtrades_term(log_q, log_p, "official_kl")) == pytest.approx(expected, rel=1e-10)
    # bounded: at most max(p log p) − min(p q), whatever the adversary does
    assert abs(float(qtrades_term(torch.full_like(log_q, -50.0), log_p, "official_kl"))) < 1.0


def test_interrupted_free_at_run_resumes_with_its_carried_perturbation(tmp_path):
    """Free AT carries δ from batch to batch, across epochs too when the training size divides
    by the batch size (128 = 4 × 32): the checkpoint must hold it for an exact resume."""
    gen = torch.Generator().manual_seed(0)
    d = data.TensorData(
        torch.rand(128, 6, generator=gen), torch.randint(0, 3, (128,), generator=gen)
    )
    kwargs = dict(
        lr=1e-2,
        batch_size=32,
        seed=2,
        step="free_at",
        step_args={"replays": 2, "eps": 0.1},
        progress=False,
    )

    def fresh():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    straight = fresh()
    h1 = train_cross_entropy(straight, d, epochs=2, **kwargs)
    train_cross_entropy(fresh(), d, epochs=1, checkpoint=tmp_path / "f.pt", **kwargs)  # "killed"
    resumed = fresh()
    h2 = train_cross_entropy(resumed, d, epochs=2, checkpoint=tmp_path / "f.pt", **kwargs)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert h1.loss == h2.loss


# --- Issue 11: bookkeeping on the device, precision and layout --------------------------

import copy  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from clustr_lib import train as train_module  # noqa: E402
from clustr_lib.attacks import pgd  # noqa: E402
from clustr_lib.magnet import ClusterIndex, NeighbourhoodSampler  # noqa: E402
from clustr_lib.train import (  # noqa: E402
    TrainingPrecision,
    _Generators,
    embed_all,
    nominal_step,
    resolve_precision,
)


def _old_cross_entropy(model, d, *, epochs, lr, batch_size, milestones, seed):
    """train_cross_entropy's nominal loop as it was before issue 11: Python floats per step."""
    y_all = d.y_train
    generators = _Generators(seed, y_all.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=0.1)
    losses, accuracies = [], []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y_all), generator=generators.cpu).to(y_all.device)
        total, correct = 0.0, 0
        for first in range(0, len(order), batch_size):
            idx = order[first : first + batch_size]
            x = d.train_batch(idx, generators.device)
            loss, logits = nominal_step(model, optimizer, x, y_all[idx], generators.device)
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y_all[idx]).sum())
        scheduler.step()
        losses.append(total / len(order))
        accuracies.append(correct / len(order))
    return losses, accuracies


def _old_magnet(embedder, d, *, epochs, lr, alpha, k, m, dd, seed):
    """train_magnet's default loop as it was before issue 11: Python floats per step."""
    y_all = d.y_train
    generators = _Generators(seed, y_all.device)
    index = ClusterIndex(k, random_state=seed)
    index.fit(embed_all(embedder, d.train_images()), y_all.cpu())
    sampler = NeighbourhoodSampler(index, m, dd, seed=seed)
    optimizer = torch.optim.Adam(embedder.parameters(), lr=lr)
    losses, accuracies = [], []
    embedder.train()
    for _ in range(epochs):
        total, correct, seen, trained = 0.0, 0, 0, 0
        classifier = ClusterClassifier(
            index.centroids_, index.centroid_classes_, index.variance_, num_classes=10
        )
        for batch in sampler:
            idx = torch.from_numpy(batch.indices)
            x, y = d.train_batch(idx, generators.device), y_all[idx]
            loss, per_sample, log_p = magnet_step(
                embedder,
                optimizer,
                classifier,
                x,
                y,
                torch.from_numpy(batch.cluster_ids),
                alpha=alpha,
                generator=generators.device,
            )
            sampler.record_losses(batch.indices, per_sample)
            total += loss.item()
            correct += int((log_p.argmax(1) == y).sum())
            seen += len(y)
            trained += 1
        index.refresh(embed_all(embedder, d.train_images()))
        losses.append(total / max(trained, 1))
        accuracies.append(correct / max(seen, 1))
    return index, losses, accuracies


def test_device_bookkeeping_gives_the_old_histories_and_weights_bit_for_bit():
    d = data.load_images("digits32", train_size=200, test_size=10, seed=0)
    d.augment = True  # the augmentation stream as well
    ce = dict(epochs=2, lr=1e-2, batch_size=48, milestones=(1,), seed=3)  # a short last batch

    def fresh():
        torch.manual_seed(0)
        return WithHead(resnet18_embedder(2), 16, 10)

    new, old = fresh(), fresh()
    history = train_cross_entropy(new, d, progress=False, **ce)
    losses, accuracies = _old_cross_entropy(old, d, **ce)
    assert history.loss == losses and history.accuracy == accuracies
    for a, b in zip(new.state_dict().values(), old.state_dict().values()):
        assert torch.equal(a, b)
    new, old = fresh().embedder, fresh().embedder
    index, history = train_magnet(
        new,
        d,
        epochs=2,
        lr=1e-3,
        alpha=1.0,
        clusters_per_batch=4,
        samples_per_cluster=10,
        seed=1,
        progress=False,
    )
    old_index, losses, accuracies = _old_magnet(
        old, d, epochs=2, lr=1e-3, alpha=1.0, k=2, m=4, dd=10, seed=1
    )
    assert history.loss == losses and history.accuracy == accuracies
    for a, b in zip(new.state_dict().values(), old.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(index.centroids_, old_index.centroids_)
    assert index.variance_ == old_index.variance_


def _count_reads_from_train_py(monkeypatch):
    """Count the tensor -> Python reads (host syncs on a GPU) made by clustr_lib/train.py."""
    reads = []
    here = train_module.__file__
    for name in ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename == here:
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


@pytest.mark.parametrize("step", ["nominal", "qtrades", "trades", "free_at"])
def test_cross_entropy_loops_read_the_device_once_per_epoch(monkeypatch, step):
    gen = torch.Generator().manual_seed(0)
    d = data.TensorData(torch.rand(96, 5, generator=gen), torch.randint(0, 3, (96,), generator=gen))
    step_args = {
        "nominal": {},
        "qtrades": {"lam": 1.0, "eps": 0.1, "step_size": 0.1},
        "trades": {"beta": 1.0, "eps": 0.1, "step_size": 0.05, "iters": 2},
        "free_at": {"replays": 2, "eps": 0.1},
    }[step]
    reads = _count_reads_from_train_py(monkeypatch)
    counts = []
    for batch_size in (48, 8):  # 2 and 12 steps per epoch
        reads.clear()
        net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
        train_cross_entropy(
            net,
            d,
            epochs=2,
            lr=1e-2,
            batch_size=batch_size,
            step=step,
            step_args=step_args,
            progress=False,
        )
        counts.append(len(reads))
    assert counts[0] == counts[1] <= 2 * 3  # per epoch: loss, accuracy (Free AT: its δ)


def test_the_magnet_loop_reads_the_device_once_per_epoch(monkeypatch):
    reads = _count_reads_from_train_py(monkeypatch)
    counts = []
    for size in (20, 60):  # 2 and 6 steps per epoch (M·D = 20 of 3 classes)
        reads.clear()
        train_magnet(
            TrainSteps(),
            _blobs([size, size, size]),
            epochs=2,
            lr=1e-3,
            alpha=1.0,
            clusters_per_class=1,
            clusters_per_batch=2,
            samples_per_cluster=10,
            progress=False,
        )
        counts.append(len(reads))
    assert counts[0] == counts[1]
    assert counts[0] <= 2 * 2 + 4  # per epoch loss and accuracy; a few for the clustering


def _digits_batch(n=120):
    d = data.load_images("digits32", train_size=n, test_size=10, seed=0)
    return d.train_images(), d.y_train


def test_bf16_autocast_on_the_cpu_stays_close_to_fp32():
    """5 steps from the same weights in fp32 and bf16: per-step losses within 2 % (cross-
    entropy) and 3 % (Magnet + QTRADES), the first within 0.5 %, and the update itself close
    (the weight change differs by under half its size: Adam's first steps are about
    ``lr · sign(g)`` per weight, so bf16's rounding flips the step of the weights whose
    gradient is near 0 — 0.34 of the size measured on a CPU with AMX-BF16, while a wrong
    update would differ by about √2 of it)."""
    x, y = _digits_batch()
    torch.manual_seed(0)
    base = WithHead(resnet18_embedder(8), 64, 10)
    ids = y * 2 + torch.arange(len(y)) % 2
    runs = {}
    for precision in ("fp32", "bf16"):
        net = copy.deepcopy(base)
        amp = TrainingPrecision(precision)
        assert amp.plain == (precision == "fp32")
        f = amp.network(net)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        with amp.flags():  # as the trainers run their epochs
            ce = [float(nominal_step(f, opt, x, y, None, amp=amp)[0]) for _ in range(5)]
        with torch.no_grad():
            feats = net.embedder(x)
        clf = ClusterClassifier(
            torch.stack([feats[ids == c].mean(0) for c in range(20)]),
            torch.arange(10).repeat_interleave(2),
            float(feats.var(0).sum()),
        )
        embedder = copy.deepcopy(base.embedder)  # Magnet + QTRADES from the same weights too
        emb = amp.network(embedder)
        opt = torch.optim.Adam(embedder.parameters(), lr=1e-3)
        noise = torch.Generator().manual_seed(0)  # the same QTRADES starts in both runs
        with amp.flags():
            mag = [
                float(
                    magnet_step(
                        emb, opt, clf, x, y, ids, alpha=1.0, qtrades_lambda=1.0, generator=noise,
                        amp=amp,
                    )[0]
                )
                for _ in range(5)
            ]  # fmt: skip
        runs[precision] = (np.array(ce), np.array(mag), copy.deepcopy(net.state_dict()))
    (ce32, mag32, w32), (ce16, mag16, w16) = runs["fp32"], runs["bf16"]
    np.testing.assert_allclose(ce16[0], ce32[0], rtol=5e-3)
    np.testing.assert_allclose(mag16[0], mag32[0], rtol=5e-3)
    np.testing.assert_allclose(ce16, ce32, rtol=0.02)
    np.testing.assert_allclose(mag16, mag32, rtol=0.03)
    assert not np.array_equal(ce16, ce32)  # bf16 did run
    keys = [k for k, v in w32.items() if v.is_floating_point() and "running" not in k]
    moved = sum(float(((w32[k] - base.state_dict()[k]) ** 2).sum()) for k in keys) ** 0.5
    apart = sum(float(((w32[k] - w16[k]) ** 2).sum()) for k in keys) ** 0.5
    assert apart < moved / 2


def test_the_losses_eq4_and_distances_stay_float32_under_autocast(monkeypatch):
    import clustr_lib.classify as classify_module
    import clustr_lib.magnet as magnet_module

    seen = []

    def recorder(module, name):
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            tensors = [a for a in args if torch.is_tensor(a) and a.is_floating_point()]
            seen.append((name, [t.dtype for t in tensors], out, torch.is_autocast_enabled("cpu")))
            return out

        monkeypatch.setattr(module, name, wrapped)

    recorder(classify_module, "squared_distances")  # Eq. 4
    recorder(magnet_module, "squared_distances")  # the Magnet loss
    recorder(train_module, "magnet_loss")
    recorder(train_module, "qtrades_term")
    recorder(train_module, "official_qtrades_term")
    x, y = _digits_batch(48)
    ids = y * 2 + torch.arange(len(y)) % 2
    torch.manual_seed(0)
    embedder = resnet18_embedder(2)
    conv_dtypes = []
    embedder[1].register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    clf = ClusterClassifier(torch.randn(20, 16), torch.arange(10).repeat_interleave(2), 1.0)
    amp = TrainingPrecision("bf16")
    for form in ("logprob", "official"):
        for network, ambient in ((amp.network(embedder), False), (embedder, True)):
            seen.clear()
            opt = torch.optim.Adam(embedder.parameters(), lr=1e-3)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=ambient):
                loss, per_sample, log_p = magnet_step(
                    network, opt, clf, x, y, ids, alpha=1.0, qtrades_lambda=1.0,
                    qtrades_form=form, amp=amp,
                )  # fmt: skip
            # the network runs in bf16 through TrainingPrecision.network; magnet_step turns a
            # caller's own autocast off for everything, so there it is float32 too
            assert conv_dtypes[-1] == (torch.float32 if ambient else torch.bfloat16)
            names = {name for name, *_ in seen}
            assert {"squared_distances", "magnet_loss"} <= names
            assert names & {"qtrades_term", "official_qtrades_term"}
            for name, dtypes, out, autocast_on in seen:
                assert not autocast_on, name
                assert all(t == torch.float32 for t in dtypes), (name, dtypes)
                outs = out if isinstance(out, tuple) else (out,)
                assert all(o.dtype == torch.float32 for o in outs if torch.is_tensor(o)), name
            for t in (loss, per_sample, log_p):
                assert t.dtype == torch.float32


def test_a_mixed_precision_run_hands_back_a_plain_float32_model_for_the_attacks():
    d = small_digits()
    torch.manual_seed(0)
    net = WithHead(resnet18_embedder(2), 16, 10)
    flags = torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32
    history = train_cross_entropy(
        net, d, epochs=1, lr=1e-2, batch_size=64, precision="bf16", channels_last=True,
        progress=False,
    )  # fmt: skip
    assert np.isfinite(history.loss).all()
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32) == flags
    assert not torch.is_autocast_enabled("cpu")
    assert type(net) is WithHead  # the model itself, not a wrapper
    assert net.embedder[1].weight.is_contiguous()  # handed back in the usual layout
    x, y = d.test_images()[:12], d.y_test[:12]
    net.eval().to(memory_format=torch.channels_last)  # PGD on a channels-last model and inputs
    assert net(x).dtype == torch.float32
    x_last = x.contiguous(memory_format=torch.channels_last)
    kwargs = dict(eps=8 / 255, step_size=2 / 255, steps=5, restarts=2, seed=0)
    plain, last = pgd(net, x, y, **kwargs), pgd(net, x_last, y, **kwargs)
    assert torch.equal(plain.robust, last.robust)
    torch.testing.assert_close(plain.x_adv, last.x_adv)
    x_adv = last.x_adv.detach().requires_grad_(True)  # the attacks' gradients: float32
    grad = torch.autograd.grad(F.cross_entropy(net(x_adv), y), x_adv)[0]
    assert grad.dtype == torch.float32


def test_fp16_trains_with_a_gradient_scaler_and_resumes_exactly(tmp_path):
    d = small_digits()
    kwargs = dict(lr=1e-2, batch_size=64, seed=3, precision="fp16", progress=False)

    def fresh():
        torch.manual_seed(0)
        return WithHead(resnet18_embedder(2), 16, 10)

    straight = fresh()
    h1 = train_cross_entropy(straight, d, epochs=2, **kwargs)
    train_cross_entropy(fresh(), d, epochs=1, checkpoint=tmp_path / "c.pt", **kwargs)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the scaler is checkpointed
    resumed = fresh()
    h2 = train_cross_entropy(resumed, d, epochs=2, checkpoint=tmp_path / "c.pt", **kwargs)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert h1.loss == h2.loss and np.isfinite(h1.loss).all()
    train_cross_entropy(
        fresh(), d, epochs=1, checkpoint=tmp_path / "f.pt", **{**kwargs, "precision": "fp32"}
    )
    assert "scaler" not in torch.load(tmp_path / "f.pt", weights_only=True)  # fp32: as before


def test_precision_is_validated_and_bf16_falls_back_to_fp16_where_missing(monkeypatch):
    class Boom(nn.Module):
        def forward(self, x):
            raise AssertionError("ran before validating")

    with pytest.raises(ValueError, match="precision"):
        train_cross_entropy(
            Boom(), _blobs([10, 10]), epochs=1, lr=1e-2, batch_size=4, precision="fp8"
        )
    with pytest.raises(ValueError, match="precision"):
        train_magnet(Boom(), _blobs([10, 10]), epochs=1, lr=1e-3, alpha=1.0, precision="half")
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert TrainingPrecision("fp32").plain and TrainingPrecision("fp32").scaler is None
    monkeypatch.setattr(train_module, "bf16_supported", lambda device: False)  # e.g. a T4
    assert resolve_precision("bf16", "cuda") == "fp16"
    with pytest.warns(UserWarning, match="fp16"):
        amp = TrainingPrecision("bf16", "cpu")
    assert amp.name == "fp16" and amp.requested == "bf16" and amp.scaler is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TrainingPrecision("fp16", "cpu").dtype == torch.float16


def test_train_magnet_passes_the_kmeans_backend_and_precision_on():
    d = _blobs([30, 30, 30])
    kwargs = dict(epochs=1, lr=1e-3, alpha=1.0, clusters_per_batch=3, samples_per_cluster=5)
    index, history = train_magnet(TrainSteps(), d, kmeans_backend="torch", progress=False, **kwargs)
    assert index.backend_ == "torch" and index.refreshes_ == 2
    index, history = train_magnet(TrainSteps(), d, precision="bf16", progress=False, **kwargs)
    assert index.backend_ == "sklearn" and np.isfinite(history.loss).all()
    assert index.centroids_.dtype == torch.float32
