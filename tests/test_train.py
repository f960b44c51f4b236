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
    kwargs = dict(lr=1e-2, batch_size=64, milestones=(2,), seed=3, step="qtrades",
                  step_args={"lam": 1.0, "eps": 8 / 255, "step_size": 10 / 255}, progress=False)

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
    kwargs = dict(lr=1e-3, alpha=1.0, clusters_per_class=2, clusters_per_batch=4,
                  samples_per_cluster=10, seed=1, qtrades_lambda=1.0, progress=False)

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
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    assert Checkpoint(None).load() is None


def test_short_clustr_run_on_digits32_is_far_above_chance():
    d = data.load_images("digits32", seed=0)
    torch.manual_seed(0)
    net = WithHead(resnet18_embedder(4), 32, 10)
    train_cross_entropy(net, d, epochs=6, lr=1e-2, batch_size=128, milestones=(4,), progress=False)
    index, _ = train_magnet(net.embedder, d, epochs=2, lr=1e-3, alpha=1.0, clusters_per_batch=12,
                            samples_per_cluster=20, progress=False)
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
