"""PGD, objectives, QTRADES and AutoAttack against analytic answers on linear models."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clustr_lib.attacks import attack_objective, autoattack, pgd, qtrades_adversary
from clustr_lib.classify import ClusterClassifier, ClusterModel


class LinearLogits(nn.Module):
    def __init__(self, W, b):
        super().__init__()
        self.W = nn.Parameter(torch.as_tensor(W, dtype=torch.float32))
        self.b = nn.Parameter(torch.as_tensor(b, dtype=torch.float32))

    def forward(self, x):
        return x.flatten(1) @ self.W.T + self.b


class Recorder(nn.Module):
    """Passes inputs through and keeps every input it is called on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


def binary_linear(rng, n_features=12):
    W = rng.normal(size=(2, n_features))
    b = np.array([0.0, -float(W[1].sum() - W[0].sum()) / 2])
    return W, b


def analytic_linf_robust(x, y, W, b, eps):
    """Exact robust accuracy of a 2-class linear model under ℓ∞ ∩ [0, 1]."""
    robust = []
    for xi, yi in zip(x, y):
        a = W[yi] - W[1 - yi]
        margin = a @ xi + b[yi] - b[1 - yi]
        lo, hi = np.maximum(-eps, -xi), np.minimum(eps, 1 - xi)
        worst = margin + np.sum(np.where(a > 0, a * lo, a * hi))
        robust.append(margin > 0 and worst > 0)
    return np.mean(robust)


@pytest.mark.parametrize("eps", [0.02, 0.05, 0.1])
def test_pgd_reaches_the_analytic_linf_robust_accuracy(rng, eps):
    W, b = binary_linear(rng)
    x = rng.uniform(0, 1, size=(300, 12))
    y = (x @ W.T + b).argmax(1)
    y[::7] = 1 - y[::7]  # some misclassified points too
    model = LinearLogits(W, b)
    expected = analytic_linf_robust(x, y, W, b, eps)
    for objective in ("ce", "margin", "paper"):
        result = pgd(
            model,
            torch.tensor(x, dtype=torch.float32),
            torch.tensor(y),
            eps=eps,
            step_size=eps / 4,
            steps=20,
            restarts=1,
            objective=objective,
        )
        assert result.robust_accuracy == pytest.approx(expected, abs=1 / 300), objective
    assert 0.05 < expected < 0.95


def test_pgd_reaches_the_analytic_l2_robust_accuracy(rng):
    W, b = binary_linear(rng)
    x = rng.uniform(0.35, 0.65, size=(300, 12))  # the box never binds at this ε
    y = (x @ W.T + b).argmax(1)
    eps = 0.15
    a = W[y] - W[1 - y]
    margin = (a * x).sum(1) + b[y] - b[1 - y]
    expected = np.mean(margin - eps * np.linalg.norm(a, axis=1) > 0)
    result = pgd(
        LinearLogits(W, b),
        torch.tensor(x, dtype=torch.float32),
        torch.tensor(y),
        eps=eps,
        step_size=eps / 4,
        steps=30,
        norm="l2",
        objective="ce",
    )
    assert result.robust_accuracy == pytest.approx(expected, abs=1 / 300)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_iterates_stay_in_the_ball_and_the_box(rng, norm):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5))
    recorder = Recorder(net)
    x = torch.tensor(rng.uniform(0, 1, size=(20, 3, 4, 4)), dtype=torch.float32)
    x[:, 0] = 0.0  # pixels on the box's faces
    x[:, 1] = 1.0
    y = torch.tensor(rng.integers(0, 5, size=20))
    eps = 0.1 if norm == "linf" else 0.5
    pgd(recorder, x, y, eps=eps, step_size=0.08, steps=7, restarts=3, norm=norm, prune=False)
    iterates = [s for s in recorder.seen if s.shape[0] == 60]
    assert len(iterates) >= 8  # the start and 7 steps, 3 restarts side by side
    for s in iterates:
        delta = s - x.repeat(3, 1, 1, 1)
        size = (
            delta.abs().flatten(1).max(1).values if norm == "linf" else delta.flatten(1).norm(dim=1)
        )
        assert float(size.max()) <= eps + 1e-6
        assert float(s.min()) >= 0.0 and float(s.max()) <= 1.0


def test_more_restarts_never_raise_robust_accuracy(rng):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.tensor(rng.uniform(0, 1, size=(200, 10)), dtype=torch.float32)
    y = net(x).argmax(1).detach()
    accs = [
        pgd(net, x, y, eps=0.08, step_size=0.01, steps=3, restarts=r, seed=5).robust_accuracy
        for r in (1, 2, 4, 8)
    ]
    assert all(later <= earlier for earlier, later in zip(accs, accs[1:]))
    assert accs[-1] < accs[0]  # the weak attack does gain from restarts here
    one_pass = pgd(
        net, x, y, eps=0.08, step_size=0.01, steps=3, restarts=8, seed=5, restarts_per_pass=8
    )
    sequential = pgd(
        net,
        x,
        y,
        eps=0.08,
        step_size=0.01,
        steps=3,
        restarts=8,
        seed=5,
        restarts_per_pass=1,
        prune=False,
    )
    # the same random starts side by side or one after the other: the same result
    assert torch.equal(one_pass.robust, sequential.robust)
    assert torch.equal(one_pass.broken_by_restart, sequential.broken_by_restart)


def test_shorter_attack_is_read_off_the_longer_run(rng):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.tensor(rng.uniform(0, 1, size=(200, 10)), dtype=torch.float32)
    y = net(x).argmax(1).detach()
    kwargs = dict(eps=0.06, step_size=0.005, restarts=3, seed=9, prune=False)
    both = pgd(net, x, y, steps=12, report_steps=(4, 12), **kwargs)
    short = pgd(net, x, y, steps=4, **kwargs)
    assert torch.equal(both.extra["robust_at"][4], short.robust)
    assert torch.equal(both.extra["robust_at"][12], both.robust)
    assert both.robust_accuracy < short.robust_accuracy  # longer is stronger here
    pruned = pgd(
        net,
        x,
        y,
        steps=12,
        report_steps=(4, 12),
        **{**kwargs, "prune": True, "restarts_per_pass": 1},
    )
    unpruned = pgd(net, x, y, steps=12, report_steps=(4, 12), **{**kwargs, "restarts_per_pass": 1})
    # the first restart attacks every point either way; later ones only the survivors
    assert torch.equal(pruned.broken_by_restart[0], unpruned.broken_by_restart[0])
    assert not (pruned.robust & pruned.broken_by_restart.any(0)).any()


@pytest.fixture
def cluster_model(rng):
    W = rng.normal(size=(4, 6)).astype(np.float32)
    centroids = torch.tensor(rng.normal(size=(8, 4)) * 2, dtype=torch.float32)
    classes = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    embed = nn.Linear(6, 4, bias=False)
    embed.weight.data = torch.tensor(W)
    return ClusterModel(embed, ClusterClassifier(centroids, classes, variance=1.5, num_nearest=4))


def test_objectives_on_a_cluster_model_match_numpy(cluster_model, rng):
    x = torch.tensor(rng.uniform(0, 1, size=(15, 6)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 4, size=15))
    f = (x @ cluster_model.embedder.weight.T).detach().numpy().astype(np.float64)
    mu = cluster_model.classifier.centroids.numpy().astype(np.float64)
    classes = cluster_model.classifier.centroid_classes.numpy()
    d = ((f[:, None] - mu[None]) ** 2).sum(-1) / (2 * 1.5)
    scores = np.zeros((15, 4))
    for i in range(15):
        for j in np.argsort(d[i])[:4]:
            scores[i, classes[j]] += np.exp(-d[i, j])
    paper = -np.log(np.exp(scores[np.arange(15), y]) / np.exp(scores).sum(1))
    with np.errstate(divide="ignore"):
        logp = np.log(scores) - np.log(scores.sum(1, keepdims=True))
    ce = -logp[np.arange(15), y]
    other = logp.copy()
    other[np.arange(15), y] = -np.inf
    margin = other.max(1) - logp[np.arange(15), y]
    np.testing.assert_allclose(
        attack_objective(cluster_model, x, y, "paper").detach(), paper, rtol=1e-4
    )
    got_ce = attack_objective(cluster_model, x, y, "ce").detach().numpy()
    got_margin = attack_objective(cluster_model, x, y, "margin").detach().numpy()
    np.testing.assert_allclose(got_ce[np.isfinite(ce)], ce[np.isfinite(ce)], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        got_margin[np.isfinite(margin)], margin[np.isfinite(margin)], rtol=1e-4, atol=1e-4
    )
    assert np.all(np.isinf(got_ce) == np.isinf(ce))


def test_pgd_on_cluster_model_runs_every_objective_without_nan(cluster_model, rng):
    x = torch.tensor(rng.uniform(0, 1, size=(30, 6)), dtype=torch.float32)
    y = cluster_model(x).argmax(1).detach()
    for objective in ("paper", "ce", "margin", "magnet"):
        result = pgd(
            cluster_model,
            x,
            y,
            eps=0.1,
            step_size=0.03,
            steps=5,
            restarts=2,
            objective=objective,
            alpha=1.0,
            trace=True,
        )
        assert torch.isfinite(result.x_adv).all()
        assert result.loss_trace.shape == (6, 2, 30)
        assert result.robust_accuracy <= result.clean_accuracy == 1.0


def test_attack_parameters_are_validated_before_any_work(cluster_model):
    x, y = torch.rand(4, 6), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="objective"):
        pgd(cluster_model, x, y, eps=0.1, step_size=0.01, steps=1, objective="hinge")
    with pytest.raises(ValueError, match="eps"):
        pgd(cluster_model, x, y, eps=-0.1, step_size=0.01, steps=1)
    with pytest.raises(ValueError, match="norm"):
        pgd(cluster_model, x, y, eps=0.1, step_size=0.01, steps=1, norm="l1")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd(cluster_model, x * 3, y, eps=0.1, step_size=0.01, steps=1)
    with pytest.raises(ValueError, match="alpha"):
        pgd(cluster_model, x, y, eps=0.1, step_size=0.01, steps=1, objective="magnet")
    with pytest.raises(ValueError, match="ClusterModel"):
        pgd(nn.Linear(6, 2), x, y, eps=0.1, step_size=0.01, steps=1, objective="magnet", alpha=1.0)


def test_qtrades_adversary_is_one_signed_step_of_the_soft_cross_entropy(rng):
    W = rng.normal(size=(3, 8)).astype(np.float32)
    model = LinearLogits(W, np.zeros(3))
    x = torch.tensor(rng.uniform(0, 1, size=(50, 8)), dtype=torch.float32)
    eps, step = 8 / 255, 10 / 255
    x_adv = qtrades_adversary(
        model, x, eps=eps, step_size=step, generator=torch.Generator().manual_seed(7)
    )
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(7)).numpy()
    xs = x.numpy() + (2 * noise - 1) * eps
    p = F.softmax(torch.tensor(x.numpy() @ W.T), 1).numpy()
    q = F.softmax(torch.tensor(xs @ W.T), 1).numpy()
    grad = (q - p) @ W  # ∇_{x'} of −Σ p log q for logits Wx'
    expected = np.clip(np.clip(xs + step * np.sign(grad), x.numpy() - eps, x.numpy() + eps), 0, 1)
    np.testing.assert_allclose(x_adv.numpy(), expected, atol=1e-6)
    assert float((x_adv - x).abs().max()) <= eps + 1e-6


def test_autoattack_matches_the_analytic_robust_accuracy_of_a_linear_model(rng):
    W, b = binary_linear(rng, n_features=16)
    x = rng.uniform(0, 1, size=(60, 16))
    y = (x @ W.T + b).argmax(1)
    eps = 0.05
    expected = analytic_linf_robust(x, y, W, b, eps)
    # two decoy classes that can never win (AutoAttack's targeted DLR needs 4 classes)
    W4, b4 = np.concatenate([W, W[:2]]), np.concatenate([b, [-1e3, -1e3]])
    result = autoattack(
        LinearLogits(W4, b4),
        torch.tensor(x, dtype=torch.float32).view(60, 1, 4, 4),
        torch.tensor(y),
        eps=eps,
        batch_size=60,
    )
    assert result.robust_accuracy == pytest.approx(expected, abs=1 / 60)
    assert list(result.extra["robust_after"]) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]


def test_autoattack_refuses_targeted_attacks_below_four_classes(rng):
    W, b = binary_linear(rng, n_features=4)
    x, y = torch.rand(5, 1, 2, 2), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="4 classes"):
        autoattack(LinearLogits(W, b), x, y, eps=0.1)


def test_autoattack_runs_on_a_cluster_model(cluster_model, rng):
    x = torch.tensor(rng.uniform(0, 1, size=(12, 6)), dtype=torch.float32)
    y = cluster_model(x).argmax(1).detach()
    flat = ClusterModel(
        nn.Sequential(nn.Flatten(), cluster_model.embedder), cluster_model.classifier
    )
    result = autoattack(flat, x.view(12, 1, 2, 3), y, eps=0.05, batch_size=12)
    assert result.clean_accuracy == 1.0
    assert torch.all((result.x_adv - x.view(12, 1, 2, 3)).abs() <= 0.05 + 1e-6)
    # what the attack reports must hold at the points it returns: a robust point is still
    # classified correctly at its x_adv, a broken one is not; each attack only removes points
    predicted = flat(result.x_adv).argmax(1)
    assert torch.equal(predicted[result.robust], y[result.robust])
    assert bool((predicted[~result.robust] != y[~result.robust]).all())
    after = list(result.extra["robust_after"].values())
    assert after == sorted(after, reverse=True) and after[-1] == result.robust_accuracy


# ---------------------------------------------------------------------------------------
# PGD rules: when a point counts as broken.


@pytest.mark.parametrize("rule", ["official", "any_restart", "any_iterate"])
def test_every_pgd_rule_reaches_the_analytic_robust_accuracy_of_a_linear_model(rng, rule):
    W, b = binary_linear(rng)
    x = rng.uniform(0, 1, size=(300, 12))
    y = (x @ W.T + b).argmax(1)
    eps = 0.05
    expected = analytic_linf_robust(x, y, W, b, eps)
    result = pgd(
        LinearLogits(W, b),
        torch.tensor(x, dtype=torch.float32),
        torch.tensor(y),
        eps=eps,
        step_size=eps / 4,
        steps=20,
        restarts=2,
        objective="ce",
        rule=rule,
    )
    assert result.robust_accuracy == pytest.approx(expected, abs=1 / 300)
    assert result.extra["rule"] == rule


def test_any_iterate_never_leaves_more_points_robust_than_any_restart(rng):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.tensor(rng.uniform(0, 1, size=(300, 10)), dtype=torch.float32)
    y = net(x).argmax(1).detach()
    kwargs = dict(eps=0.1, step_size=0.04, steps=8, restarts=3, seed=4, report_steps=(2, 8))
    restart = pgd(net, x, y, rule="any_restart", **kwargs)
    iterate = pgd(net, x, y, rule="any_iterate", **kwargs)
    for t in (2, 8):  # same starts and path: a break at the end is a break at some iterate
        assert not (iterate.extra["robust_at"][t] & ~restart.extra["robust_at"][t]).any()
    assert not (iterate.extra["robust_at"][8] & ~iterate.extra["robust_at"][2]).any()
    one_by_one = pgd(net, x, y, rule="any_iterate", restarts_per_pass=1, prune=False, **kwargs)
    assert torch.equal(one_by_one.robust, iterate.robust)  # the same starts, one at a time
    official = pgd(net, x, y, rule="official", restarts_per_pass=1, **kwargs)
    assert torch.equal(official.robust, pgd(net, x, y, rule="official", **kwargs).robust)


class CountingRows(nn.Module):
    """A network that counts the rows of every forward pass."""

    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, 0

    def forward(self, x):
        self.rows += len(x)
        return self.net(x)


@pytest.mark.parametrize("rule", ["official", "any_iterate"])
def test_a_broken_point_is_no_longer_computed_and_its_result_is_the_full_computation(rng, rule):
    """Under ``official`` and ``any_iterate`` a broken point's result cannot change, so PGD
    stops computing it: the same per-point results (at PGD-2 and PGD-8) and kept objectives as
    the exhaustive computation that ``trace`` makes, from under 60 % of its forward rows."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Flatten(), nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.tensor(rng.uniform(0, 1, size=(300, 10)), dtype=torch.float32)
    y = net(x).argmax(1).detach()
    kwargs = dict(eps=0.2, step_size=0.05, steps=8, restarts=3, seed=4, report_steps=(2, 8))
    counted = CountingRows(net)
    fast = pgd(counted, x, y, rule=rule, **kwargs)
    fast_rows, counted.rows = counted.rows, 0
    full = pgd(counted, x, y, rule=rule, trace=True, **kwargs)  # every point, every iterate
    for t in (2, 8):
        assert torch.equal(fast.extra["robust_at"][t], full.extra["robust_at"][t])
    assert 0.1 < fast.robust_accuracy < 0.9 * fast.clean_accuracy  # breaks some, not all
    assert fast_rows < 0.6 * counted.rows
    broken = ~fast.robust & fast.clean_correct  # the kept iterate of a broken point is wrong
    assert (net(fast.x_adv[broken]).argmax(1) != y[broken]).all()


class Bump(nn.Module):
    """1-D input, 3 classes, true class 0 (logit 0): class 1's logit ``2x − 3`` pulls the
    cross-entropy's ascent to the right; class 2 wins only in a narrow band around 0.55."""

    def forward(self, x):
        x = x.flatten(1)[:, :1]
        bump = 5 * torch.exp(-(((x - 0.55) / 0.02) ** 2)) - 1
        return torch.cat([torch.zeros_like(x), 2 * x - 3, bump], 1)


def test_a_point_broken_on_the_way_but_not_at_the_end_is_broken_only_under_any_iterate():
    x, y = torch.full((1, 1), 0.45), torch.tensor([0])
    kwargs = dict(eps=0.2, step_size=0.05, steps=3, restarts=1, random_start=False)
    path = Recorder(Bump())
    restart = pgd(path, x, y, rule="any_restart", **kwargs)
    iterates = [round(float(v), 4) for v in path.seen if v.shape == (1, 1)]
    assert iterates[-3:] == [0.5, 0.55, 0.6]  # into the band at 0.55, then out of it
    assert restart.robust_accuracy == 1.0
    assert pgd(Bump(), x, y, rule="any_iterate", **kwargs).robust_accuracy == 0.0


class TwoRegions(nn.Module):
    """1-D input, 3 classes: left of 0.5 class 1 wins (p = .55 vs .45 for class 0: −log p₀ =
    0.80); from 0.5 on class 0 wins narrowly (p = .34, .33, .33: −log p₀ = 1.08). A break on
    the left has a *smaller* loss than no break on the right."""

    def forward(self, x):
        left = torch.tensor([0.45, 0.55, 1e-9]).log()
        right = torch.tensor([0.34, 0.33, 0.33]).log()
        return torch.where(x.flatten(1)[:, :1] < 0.5, left, right) + 0 * x.flatten(1)[:, :1]


def test_the_official_rule_keeps_the_largest_loss_restart_and_so_misses_a_break():
    x, y = torch.full((1, 1), 0.5), torch.tensor([0])
    kwargs = dict(eps=0.5, step_size=0.1, steps=0, restarts=20, seed=0, objective="ce")
    iterate = pgd(TwoRegions(), x, y, rule="any_iterate", **kwargs)
    official = pgd(TwoRegions(), x, y, rule="official", **kwargs)
    assert iterate.broken_by_restart.any() and not iterate.broken_by_restart.all()
    assert iterate.robust_accuracy == 0.0  # some random start lands left of 0.5
    assert official.robust_accuracy == 1.0  # the kept restart is a right-hand one
    assert float(official.x_adv) >= 0.5


def test_the_official_rule_stops_updating_a_point_once_it_is_broken(rng):
    W, b = binary_linear(rng, n_features=4)
    x = torch.tensor(rng.uniform(0.3, 0.7, size=(50, 4)), dtype=torch.float32)
    model = Recorder(LinearLogits(W, b))
    y = model(x).argmax(1).detach()
    result = pgd(
        model,
        x,
        y,
        eps=0.3,
        step_size=0.05,
        steps=15,
        restarts=1,
        rule="official",
        random_start=False,
    )
    assert result.robust_accuracy < 1.0
    broken = ~result.robust
    final = model.model(result.x_adv).argmax(1)
    assert bool((final[broken] != y[broken]).all())
    # a frozen point sits just past the boundary: one step back would be correct again
    a = torch.tensor(W[1] - W[0], dtype=torch.float32)
    logit_gap = result.x_adv @ a + float(b[1] - b[0])
    towards = torch.where(y == 0, logit_gap, -logit_gap)  # > 0: misclassified
    assert float(towards[broken].max()) <= 0.05 * float(a.abs().sum()) + 1e-5
    with pytest.raises(ValueError, match="unknown PGD rule"):
        pgd(model, x, y, eps=0.1, step_size=0.05, steps=1, rule="best")


# --- The official QTRADES adversary (issue 9): NumPy transcription of its formula ----------


class LinearEmbed(nn.Module):
    def __init__(self, W):
        super().__init__()
        self.W = nn.Parameter(torch.as_tensor(W, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1) @ self.W.T


class RecordingClusterModel(ClusterModel):
    """Keeps every input the raw scores are asked for."""

    def __init__(self, *args):
        super().__init__(*args)
        self.seen = []

    def scores(self, x):
        self.seen.append(x.detach().clone())
        return super().scores(x)


def numpy_raw_scores(f, mu, cls, var, L, num_classes):
    """Eq. (4)'s raw class scores over the L nearest clusters, and their gradient pieces."""
    sq = ((f[:, None, :] - mu[None]) ** 2).sum(2)
    nearest = np.argsort(sq, 1, kind="stable")[:, :L]
    e = np.zeros_like(sq)
    np.put_along_axis(e, nearest, np.exp(-np.take_along_axis(sq, nearest, 1) / (2 * var)), 1)
    onehot = cls[:, None] == np.arange(num_classes)[None]  # [C, classes]
    return e @ onehot, e, onehot


def numpy_official_adversary(x, noise, W, mu, cls, var, L, eps, step, num_classes):
    """x' = clip(x + U(−ε, ε)); one signed step on −Σ p(x) log_softmax(s(x')); projection."""
    p_s, _, _ = numpy_raw_scores(x @ W.T, mu, cls, var, L, num_classes)
    p = p_s / np.maximum(p_s.sum(1, keepdims=True), 1e-12)
    xs = np.clip(x + (2 * noise - 1) * eps, 0, 1)
    f = xs @ W.T
    s, e, onehot = numpy_raw_scores(f, mu, cls, var, L, num_classes)
    z = s - s.max(1, keepdims=True)
    log_q = z - np.log(np.exp(z).sum(1, keepdims=True))
    loss = -(p * log_q).sum(1)
    d_s = -p + p.sum(1, keepdims=True) * np.exp(log_q)  # ∂loss/∂s
    d_e = d_s @ onehot.T  # ∂loss/∂e_j (0 outside top L)
    d_f = (d_e * e)[:, :, None] * (-(f[:, None, :] - mu[None]) / var)
    grad = d_f.sum(1) @ W
    x_adv = np.clip(np.clip(xs + step * np.sign(grad), x - eps, x + eps), 0, 1)
    return x_adv, xs, loss


def test_official_qtrades_adversary_matches_its_numpy_transcription(rng):
    n, d_in, d_emb, num_classes, k, L = 40, 12, 5, 4, 2, 5
    W = rng.normal(size=(d_emb, d_in))
    mu = rng.normal(size=(num_classes * k, d_emb)) * 2
    cls = np.repeat(np.arange(num_classes), k)
    var = 1.7
    x = rng.uniform(0, 1, size=(n, d_in))
    x[:, :3] = 0.0  # the box binds: the start must be clipped
    x[:, 3:5] = 1.0
    eps, step = 0.1, 0.03
    clf = ClusterClassifier(
        torch.tensor(mu), torch.tensor(cls), var, num_nearest=L, num_classes=num_classes
    )
    model = RecordingClusterModel(LinearEmbed(W), clf)
    xt = torch.tensor(x)
    x_adv, start_loss = qtrades_adversary(
        model,
        xt,
        eps=eps,
        step_size=step,
        form="official",
        generator=torch.Generator().manual_seed(5),
        return_start_loss=True,
    )
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected, xs, loss = numpy_official_adversary(
        x, noise.numpy(), W, mu, cls, var, L, eps, step, num_classes
    )
    np.testing.assert_allclose(x_adv.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(model.seen[-1].numpy(), xs, atol=1e-12)  # the clipped start
    assert float(model.seen[-1].min()) >= 0 and float(model.seen[-1].max()) <= 1
    assert float(start_loss.detach()) == pytest.approx(loss.mean(), rel=1e-10)
    assert start_loss.requires_grad  # its graph is kept for the caller's backward
    assert float((x_adv - xt).abs().max()) <= eps + 1e-12
    # the objective differs from the logprob form's: the ascent direction is not the same
    lp = qtrades_adversary(
        model, xt, eps=eps, step_size=step, generator=torch.Generator().manual_seed(5)
    )
    assert float((lp != x_adv).double().mean()) > 0.05


def test_official_qtrades_adversary_on_logits_only_clips_the_start(rng):
    W = rng.normal(size=(3, 8)).astype(np.float32)
    model = LinearLogits(W, np.zeros(3))
    x = torch.tensor(rng.uniform(0, 1, size=(50, 8)), dtype=torch.float32)
    x[:, 0] = 0.0
    eps, step = 8 / 255, 10 / 255
    x_adv = qtrades_adversary(
        model,
        x,
        eps=eps,
        step_size=step,
        form="official",
        generator=torch.Generator().manual_seed(7),
    )
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(7)).numpy()
    xs = np.clip(x.numpy() + (2 * noise - 1) * eps, 0, 1)
    p = F.softmax(torch.tensor(x.numpy() @ W.T), 1).numpy()
    q = F.softmax(torch.tensor(xs @ W.T), 1).numpy()
    grad = (q - p) @ W
    expected = np.clip(np.clip(xs + step * np.sign(grad), x.numpy() - eps, x.numpy() + eps), 0, 1)
    np.testing.assert_allclose(x_adv.numpy(), expected, atol=1e-6)


def test_qtrades_adversary_rejects_an_unknown_form(cluster_model):
    with pytest.raises(ValueError, match="QTRADES form"):
        qtrades_adversary(cluster_model, torch.rand(2, 6), eps=0.1, step_size=0.1, form="paper")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs_are_refused_by_the_attacks(cluster_model, bad):
    """NaN compares false with both bounds, so a min/max check alone lets it through."""
    x, y = torch.rand(4, 6), torch.zeros(4, dtype=torch.long)
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"finite.*\[0, 1\].*1 of 24"):
        pgd(cluster_model, x, y, eps=0.1, step_size=0.01, steps=1)
    with pytest.raises(ValueError, match="finite"):
        autoattack(cluster_model, x, y, eps=0.1)
