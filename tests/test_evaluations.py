"""The evaluation chapters' measurements against independent calculations: analytic input
gradients of a linear model, NumPy transcriptions of Eq. (4) and Theorem 1, and the
recorded-evaluation cache."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from clustr_lib import attacks, evaluations, protocol, sources, studies
from clustr_lib.classify import ClusterClassifier, ClusterModel
from clustr_lib.models import WithHead, resnet18_embedder

ROOT = Path(__file__).resolve().parent.parent


class Data:
    """The slice of ImageData's interface the measurements read."""

    def __init__(self, x_test, y_test, x_train=None, y_train=None, num_classes=None):
        self.x_test, self.y_test = x_test, torch.as_tensor(y_test)
        self.x_train = x_test if x_train is None else x_train
        self.y_train = self.y_test if y_train is None else torch.as_tensor(y_train)
        self.num_classes = num_classes or int(self.y_train.max()) + 1

    def test_images(self, start=None, stop=None):
        return self.x_test[start:stop]

    def train_images(self):
        return self.x_train


def linear_logits(W):
    model = nn.Sequential(nn.Flatten(), nn.Linear(W.shape[1], W.shape[0], bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.as_tensor(W, dtype=torch.float32))
    return model.eval()


def test_gradient_norms_match_the_analytic_gradients_of_a_linear_model(rng):
    W = rng.normal(size=(4, 6))
    x = rng.uniform(size=(20, 1, 2, 3)).astype(np.float32)
    y = rng.integers(0, 4, size=20)
    out = evaluations.gradient_norms(
        linear_logits(W), Data(torch.tensor(x), y), objectives=["ce", "margin"]
    )
    z = x.reshape(20, 6) @ W.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(4)[y]
    ce = np.linalg.norm((p - onehot) @ W, axis=1)  # ∇(−log p_y) = Wᵀ(p − e_y)
    runner = np.where(onehot > 0, -np.inf, z).argmax(1)
    margin = np.linalg.norm(W[runner] - W[y], axis=1)  # ∇(z_j* − z_y)
    np.testing.assert_allclose(np.asarray(out["norms"]["ce"]), ce, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(out["norms"]["margin"]), margin, rtol=1e-4)


def far_cluster_model(distance):
    """Identity features in 2-D, one cluster per class at ±distance, σ² = 1."""
    clf = ClusterClassifier(
        torch.tensor([[distance, 0.0], [-distance, 0.0]]), torch.tensor([0, 1]), 1.0
    )
    return ClusterModel(nn.Flatten(), clf).eval()


def test_the_papers_objective_has_zero_gradient_where_the_scores_underflow():
    x = torch.full((5, 1, 1, 2), 0.5)
    y = torch.zeros(5, dtype=torch.long)
    far = evaluations.gradient_norms(
        far_cluster_model(40.0), Data(x, y), objectives=["paper", "ce"]
    )
    # The scores exp(−d/2) underflow to 0 in float32 (d ≈ 1560 and 1640): the paper's
    # objective is CE on a flat softmax and its gradient is exactly 0. In log space,
    # −log p₀ = log(1 + e^{−(d₁−d₀)/2}) with (d₁−d₀)/2 = 40 and ∇_f (d₁−d₀)/2 = μ₀ − μ₁, so
    # ‖∇‖ = σ(−40) · ‖μ₀ − μ₁‖ = 80 / (1 + e^{40}): tiny, but not zero.
    assert all(n == 0 for n in far["norms"]["paper"])
    np.testing.assert_allclose(far["norms"]["ce"], 80 / (1 + np.exp(40.0)), rtol=1e-3)
    wrong = evaluations.gradient_norms(far_cluster_model(40.0), Data(x, y + 1), objectives=["ce"])
    np.testing.assert_allclose(wrong["norms"]["ce"], 80.0, rtol=1e-5)  # −log p₁ ≈ 40 + …
    near = evaluations.gradient_norms(far_cluster_model(1.0), Data(x, y), objectives=["paper"])
    assert all(n > 0 for n in near["norms"]["paper"])
    assert evaluations.tiny_share([0.0, 1e-9, 1.0]) == {
        "zero": pytest.approx(1 / 3),
        "tiny": pytest.approx(2 / 3),
    }


def test_score_underflow_is_the_share_of_points_whose_float32_scores_are_all_zero(rng):
    """NumPy in float32: ``s_c = Σ exp(−‖f − μ‖²/2σ²)`` is all zero exactly when the nearest
    centre is farther than about √(2σ² · 103.3) (float32's smallest subnormal is e^−103.3)."""
    centroids = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    x = np.concatenate(
        [rng.normal(size=(30, 2)), rng.normal(size=(20, 2)) + 40.0]  # 20 far from every centre
    ).astype(np.float32)
    model = ClusterModel(
        nn.Flatten(), ClusterClassifier(torch.tensor(centroids), torch.tensor([0, 1, 2]), 4.0)
    ).eval()
    sq = ((x[:, None] - centroids[None]) ** 2).sum(-1, dtype=np.float32)
    expected = (np.exp(-sq / np.float32(8.0)) == 0).all(1)
    out = evaluations.score_underflow(
        model, Data(torch.tensor(x).view(50, 1, 1, 2), rng.integers(0, 3, 50)), eval_size=40
    )
    assert out["all_zero"] == pytest.approx(expected.mean()) == pytest.approx(20 / 50)
    assert out["all_zero_attacked"] == pytest.approx(expected[:40].mean())
    assert out["points"] == 50
    with pytest.raises(TypeError, match="cluster model"):
        evaluations.score_underflow(nn.Flatten(), Data(torch.tensor(x), [0] * 50))


def eq4_numpy(feats, centroids, classes, variance, d):
    """Eq. (4) over the D nearest clusters, argmax, transcribed with NumPy."""
    sq = ((feats[:, None] - centroids[None]) ** 2).sum(-1)
    preds = []
    for row in sq:
        nearest = np.argsort(row)[:d]
        scores = np.zeros(classes.max() + 1)
        np.add.at(
            scores, classes[nearest], np.exp(-(row[nearest] - row[nearest].min()) / (2 * variance))
        )
        preds.append(scores.argmax())
    return np.array(preds)


def test_clean_accuracy_by_d_matches_a_numpy_transcription_of_eq4(rng):
    centroids = rng.normal(size=(12, 2)) * 2
    classes = np.repeat(np.arange(3), 4)
    feats = rng.normal(size=(60, 2)) * 2
    y = rng.integers(0, 3, size=60)
    clf = ClusterClassifier(
        torch.tensor(centroids, dtype=torch.float64), torch.tensor(classes), 3.0
    )
    model = ClusterModel(nn.Flatten(), clf).eval()
    out = evaluations.clean_accuracy_by_d(
        model, Data(torch.tensor(feats)[:, None, None, :], y), d_values=[1, 2, 5, 12]
    )
    for d in (1, 2, 5, 12):
        expected = (eq4_numpy(feats, centroids, classes, 3.0, d) == y).mean()
        assert out["accuracy"][str(d)] == pytest.approx(expected)


def test_image_certificate_on_a_linear_embedder_matches_theorem_1(rng):
    W = rng.normal(size=(2, 12))
    embedder = nn.Sequential(nn.Flatten(), nn.Linear(12, 2, bias=False))
    with torch.no_grad():
        embedder[1].weight.copy_(torch.tensor(W, dtype=torch.float32))
    centroids = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0]])
    classes = np.array([0, 1, 1])
    model = ClusterModel(
        embedder,
        ClusterClassifier(torch.tensor(centroids, dtype=torch.float32), torch.tensor(classes), 1.0),
    ).eval()
    x = rng.uniform(size=(31, 3, 2, 2)).astype(np.float32)  # odd: one median
    feats = x.reshape(31, 12) @ W.T
    y = classes[((feats[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)]  # all correct
    out = evaluations.image_certificate(model, Data(torch.tensor(x), y), eps_linf=0.01)
    L = np.linalg.svd(W, compute_uv=False)[0]
    assert out["lipschitz_upper_bound"] == pytest.approx(L, rel=1e-5)
    assert out["l2_radius_needed"] == pytest.approx(0.01 * np.sqrt(12))
    sq = ((feats[:, None] - centroids[None]) ** 2).sum(-1)
    one = sq.argmin(1)
    radii = [
        min(
            (sq[i, j] - sq[i, one[i]]) / (2 * L * np.linalg.norm(centroids[j] - centroids[one[i]]))
            for j in range(3)
            if classes[j] != classes[one[i]]
        )
        for i in range(31)
    ]
    assert out["sound"]["median_radius"] == pytest.approx(np.median(radii), rel=1e-4)
    assert out["sound"]["certified_share"] == pytest.approx(
        np.mean(np.array(radii) > 0.01 * np.sqrt(12))
    )


def test_kmeans_on_nominal_features_of_separated_classes_is_perfect(rng):
    centres = np.array([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    y = np.repeat(np.arange(3), 20)
    feats = (centres[y] + rng.normal(size=(60, 2)) * 0.3).astype(np.float32)
    head = WithHead(nn.Flatten(), 2, 3)
    with torch.no_grad():
        head.head.weight.copy_(torch.tensor(centres, dtype=torch.float32))
        head.head.bias.zero_()
    data = Data(torch.tensor(feats)[:, None, None, :], y)
    out = evaluations.kmeans_on_nominal(head.eval(), data, clusters_per_class=2, num_nearest=4)
    assert out["head_accuracy"] == 1.0 and out["eq4_d"] == 1.0 and out["nearest_cluster"] == 1.0
    with pytest.raises(TypeError, match="WithHead"):
        evaluations.kmeans_on_nominal(
            far_cluster_model(1.0), data, clusters_per_class=2, num_nearest=4
        )


def test_masking_flags_raise_exactly_the_checks_that_hold():
    labels = studies.ATTACK_LABELS
    rows = [
        ("ClusTR + QTRADES", labels["paper"], 70.0),
        ("ClusTR + QTRADES", labels["ce"], 69.0),
        ("ClusTR + QTRADES", labels["margin"], 40.0),
        ("ClusTR + QTRADES", labels["autoattack"], 5.0),
        ("ClusTR + QTRADES", labels["square"], 69.0),
        ("TRADES", labels["ce"], 50.0),
        ("TRADES", labels["margin"], 49.5),
        ("TRADES", labels["autoattack"], 48.5),
        ("TRADES", labels["square"], 60.0),
    ]
    frame = pd.DataFrame(
        [{"source": "s", "method": m, "attack": a, "robust": r, "seed": 0} for m, a, r in rows]
    )
    other = frame.assign(source="t", robust=50.0)  # a second source: its rows must not mix in
    grads = pd.DataFrame(
        {
            "source": "s",
            "method": "ClusTR + QTRADES",
            "objective": "paper",
            "norm": [0.0, 0.0, 1.0, 2.0],
        }
    )
    late = frame[frame["method"] == "TRADES"].assign(seed=1, robust=0.0)  # a seed in progress:
    flags = studies.masking_flags(pd.concat([frame, other, late[:2]]), grads)  # left out
    clustr, trades = flags.loc[("s", "ClusTR + QTRADES")], flags.loc[("s", "TRADES")]
    assert not flags.loc[("t", "ClusTR + QTRADES")]["AutoAttack beats the paper's PGD"]
    assert clustr["paper's objective is weak"] and clustr["AutoAttack beats the paper's PGD"]
    assert clustr["masking: AutoAttack beats PGD on −log p_y"]  # 5 against 69
    assert not clustr["Square alone beats the paper's PGD"]
    assert clustr["zero gradients, paper's objective (%)"] == 50.0
    assert clustr["strongest PGD"] == 40.0 and trades["PGD, paper's objective"] == 50.0
    assert trades["seeds"] == 1  # seed 1 has two of TRADES's four attacks: not in the means
    assert not trades["paper's objective is weak"]
    assert not trades["AutoAttack beats the paper's PGD"]
    assert not trades["masking: AutoAttack beats PGD on −log p_y"]  # 48.5 against 50
    assert not trades["Square alone beats the paper's PGD"]  # 60: black-box does worse


@pytest.fixture
def study_copy(tmp_path):
    """The recorded digits32 study's nominal and ClusTR + QTRADES runs of seed 0, copied."""
    study = sources.digits32_study(ROOT)
    src = ROOT / "results" / "digits32"
    (tmp_path / "models").mkdir()
    for method in ("nominal", "clustr_qtrades"):
        for path in src.glob(f"digits32-{method}-s0-*.json"):
            shutil.copy(path, tmp_path / path.name)
        for path in (src / "models").glob(f"digits32-{method}-s0-*.pt"):
            shutil.copy(path, tmp_path / "models" / path.name)
    study.results_dir, study.seeds = tmp_path, 1
    return study


def test_evaluations_are_recorded_once_and_recomputed_when_asked(study_copy):
    params = {"clusters_per_class": 2, "num_nearest": 20}
    first = study_copy.evaluate("nominal", "kmeans_nominal", params)
    assert len(study_copy.computed) == 1 and not study_copy.loaded
    assert study_copy.evaluate("nominal", "kmeans_nominal", params) == first
    assert len(study_copy.computed) == 1 and len(study_copy.loaded) == 1
    study_copy.evaluate("nominal", "kmeans_nominal", {**params, "num_nearest": 4})
    study_copy.evaluate("nominal", "kmeans_nominal", params, force=True)
    assert len(study_copy.computed) == 3
    assert len(list((study_copy.results_dir / "evaluations").glob("*.json"))) == 2
    with pytest.raises(ValueError, match="unknown evaluation"):
        study_copy.evaluate("nominal", "nope", {})


def test_a_paper_source_has_exactly_the_methods_of_the_papers_table():
    cifar100 = sources.Source("c", "cifar100", "cifar100", {}, 1, Path("."), True, None)
    assert "clustr" not in cifar100.methods and "clustr_qtrades" in cifar100.methods
    with pytest.raises(ValueError, match="has no 'clustr' runs"):
        cifar100.evaluate("clustr", "pgd", {})
    assert cifar100.key == "cifar100"
    study = sources.Source("s", "digits32", None, {}, 1, Path("."), False, None)
    assert study.key == "study" and study.methods == list(protocol.METHODS)


# ---------------------------------------------------------------------------------------
# Shards (issue 16): a large PGD or AutoAttack evaluation is defined shard by shard.


@pytest.mark.parametrize("points,size", [(1, 500), (500, 500), (501, 500), (40, 16), (7, 1)])
def test_shards_cover_the_attacked_points_once_in_order(points, size):
    ranges = evaluations.shards(points, size)
    assert ranges[0][0] == 0 and ranges[-1][1] == points
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, in order
    assert all(0 < stop - start <= size for start, stop in ranges)
    assert len(ranges) == -(-points // size)
    with pytest.raises(ValueError, match="shard_size"):
        evaluations.shards(points, 0)


def linear_linf_robust_points(x, y, W, b, eps):
    """Per point, whether a 2-class linear model is robust under ℓ∞ ∩ [0, 1] (vectorised)."""
    a = W[y] - W[1 - y]  # [N, d]
    margin = np.einsum("nd,nd->n", a, x) + b[y] - b[1 - y]
    lo, hi = np.maximum(-eps, -x), np.minimum(eps, 1 - x)
    worst = margin + np.where(a > 0, a * lo, a * hi).sum(1)
    return (margin > 0) & (worst > 0)


@pytest.mark.parametrize("shard_size", [7, 64, 300])
def test_a_sharded_pgd_reaches_the_analytic_robust_accuracy_of_a_linear_model(rng, shard_size):
    W = rng.normal(size=(2, 12))
    b = np.array([0.0, -float(W[1].sum() - W[0].sum()) / 2])
    x = rng.uniform(0, 1, size=(300, 12))
    y = (x @ W.T + b).argmax(1)
    y[::7] = 1 - y[::7]  # some misclassified points too
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(W, dtype=torch.float32))
        model[1].bias.copy_(torch.tensor(b, dtype=torch.float32))
    data = Data(torch.tensor(x, dtype=torch.float32).view(300, 1, 3, 4), y)
    params = dict(eps=0.05, step_size=0.0125, steps=[5, 20], restarts=2, objective="ce")
    expected = linear_linf_robust_points(x, y, W, b, 0.05)
    parts = [
        evaluations.pgd_shard(model.eval(), data, shard=s, shard_size=shard_size, **params)
        for s in range(len(evaluations.shards(300, shard_size)))
    ]
    robust = np.concatenate([p["robust"]["20"].numpy() for p in parts])
    assert (robust == expected).mean() >= 299 / 300  # per point, in the attacked order
    out = evaluations.pgd_accuracy(model, data, shard_size=shard_size, **params)
    assert out["robust"]["20"] == pytest.approx(expected.mean(), abs=1 / 300)
    assert out["clean"] == pytest.approx(((x @ W.T + b).argmax(1) == y).mean())
    assert 0.05 < expected.mean() < 0.95


def test_an_evaluation_of_one_shard_is_exactly_the_unsharded_attack():
    """Records made before shards existed (all of fewer points than one shard) keep their
    meaning: one shard is :func:`clustr_lib.attacks.pgd` with the evaluation's own seed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    x = torch.rand(90, 1, 3, 4)
    with torch.no_grad():
        model[3].weight.mul_(20)
        y = model(x).argmax(1)
    params = dict(eps=0.1, step_size=0.02, steps=[3, 10], restarts=3, objective="ce", seed=5)
    direct = attacks.pgd(
        model, x, y, **{**params, "steps": 10}, report_steps=[3, 10], rule="any_restart"
    )
    out = evaluations.pgd_accuracy(model, Data(x, y), **params)
    assert out["clean"] == direct.clean_accuracy
    assert out["robust"] == {
        str(t): float(r.float().mean()) for t, r in direct.extra["robust_at"].items()
    }
    # split in three, shard s attacks its 30 points with seed 5 + s · SHARD_SEED_STEP
    second = evaluations.pgd_shard(model, Data(x, y), shard=1, shard_size=30, **params)
    alone = attacks.pgd(
        model,
        x[30:60],
        y[30:60],
        **{**params, "steps": 10, "seed": 5 + evaluations.SHARD_SEED_STEP},
        report_steps=[3, 10],
    )
    assert torch.equal(second["robust"]["10"], alone.robust)
    assert 0 < out["robust"]["10"] < out["clean"]  # the attack breaks some points, not all


def test_a_pgd_shard_on_a_convolutional_network_is_the_attack_in_the_usual_layout(rng):
    """The shard attacks in channels-last layout (a speed choice): the same per-point result
    as :func:`clustr_lib.attacks.pgd` on the untouched model, which is handed back contiguous."""
    torch.manual_seed(0)
    model = WithHead(resnet18_embedder(2), 16, 3).eval()
    x = torch.rand(24, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    params = dict(eps=0.1, step_size=0.025, steps=[4], restarts=2, objective="ce", seed=1)
    direct = attacks.pgd(model, x, y, **{**params, "steps": 4}, rule="any_restart")
    shard = evaluations.pgd_shard(model, Data(x, y), shard=0, **params)
    assert torch.equal(shard["robust"]["4"], direct.robust)
    assert 0 < int(direct.robust.sum()) < 24  # some points break, some do not
    assert all(p.is_contiguous() for p in model.parameters())


def test_merging_shards_takes_the_mean_of_the_concatenated_per_point_results():
    parts = [
        {"clean": [True, True], "robust": {"20": [True, False]}},
        {"clean": [False, True, True], "robust": {"20": [False, False, True]}},
    ]
    f32 = lambda v: float(np.float32(v))  # noqa: E731  (as one float32 mean gives it)
    assert evaluations.merge_shards(parts) == {"clean": f32(0.8), "robust": {"20": f32(0.4)}}


def test_autoattack_in_one_shard_is_the_attack_and_in_two_shards_each_its_own(rng):
    W = rng.normal(size=(2, 16))
    b = np.array([0.0, -float(W[1].sum() - W[0].sum()) / 2])
    # two decoy classes that never win (AutoAttack's targeted attacks need 4 classes)
    W4, b4 = np.concatenate([W, W[:2]]), np.concatenate([b, [-1e3, -1e3]])
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(W4, dtype=torch.float32))
        model[1].bias.copy_(torch.tensor(b4, dtype=torch.float32))
    x = rng.uniform(0, 1, size=(40, 16))
    y = (x @ W.T + b).argmax(1)
    data = Data(torch.tensor(x, dtype=torch.float32).view(40, 1, 4, 4), y, num_classes=4)
    attacks_run = ["apgd-ce", "square"]
    one = evaluations.autoattack_accuracy(model, data, eps=0.05, attacks=attacks_run, seed=3)
    direct = attacks.autoattack(
        model,
        data.x_test,
        data.y_test,
        eps=0.05,
        attacks=tuple(attacks_run),
        seed=3,
        batch_size=500,
    )
    assert one["robust_after"] == direct.extra["robust_after"]
    expected = linear_linf_robust_points(x, y, W, b, 0.05).mean()
    two = evaluations.autoattack_accuracy(
        model, data, eps=0.05, attacks=attacks_run, seed=3, shard_size=25
    )
    assert list(two["robust_after"]) == ["clean", "apgd-ce", "square"]
    assert two["robust_after"]["square"] == pytest.approx(expected, abs=1 / 40)
    second = evaluations.autoattack_shard(
        model, data, shard=1, eps=0.05, attacks=attacks_run, seed=3, shard_size=25
    )
    assert len(second["clean"]) == 15  # points 25–39
