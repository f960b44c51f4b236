"""On a CUDA device (issue 11): every training step and a short run of each method, PGD and
AutoAttack, torch's k-means against scikit-learn, and mixed precision against fp32.

Marked ``cuda``: skipped without CUDA. ``CLUSTR_CUDA_TESTS_DEVICE=cpu`` runs them on the CPU
instead (tests/conftest.py), which checks everything but the CUDA-only parts (host syncs,
TF32 and cudnn flags), which skip themselves there.
"""

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clustr_lib import data, protocol, sources, studies
from clustr_lib.attacks import autoattack, pgd
from clustr_lib.classify import ClusterClassifier
from clustr_lib.magnet import ClusterIndex
from clustr_lib.models import WithHead, resnet18_embedder
from clustr_lib.records import device_name
from clustr_lib.train import (
    TrainingPrecision,
    _free_at_step,
    _qtrades_step,
    _trades_step,
    cluster_model,
    magnet_step,
    nominal_step,
    resolve_precision,
    train_cross_entropy,
    train_magnet,
)

pytestmark = pytest.mark.cuda

S = protocol.settings("cifar10")
CE_STEPS = {
    "nominal": (nominal_step, {}),
    "qtrades": (
        _qtrades_step,
        {
            "lam": 8.0,
            "eps": 8 / 255,
            "step_size": 10 / 255,
            "kind": "official_kl",
            "form": "official",
        },
    ),
    "trades": (_trades_step, {"beta": 6.0, "eps": 8 / 255, "step_size": 2 / 255, "iters": 3}),
    "free_at": (_free_at_step, {"replays": 2, "eps": 8 / 255}),
}
RECIPE = {  # the protocol's official Magnet recipe, at this size
    "qtrades_form": "official",
    "qtrades_adversary_grad": True,
    "train_num_nearest": 10,
    "flip": True,
    "seed_probability": "official",
    "epoch_length": "floor",
    "drop_short_batches": True,
    "kmeans_random_state": 1,
    "kmeans_n_init": 1,
    "kmeans_max_iter": 20,
    "refresh_augment": True,
    "variance_from": "second_pass",
}


def digits(device, train=240, test=60):
    d = data.load_images("digits32", device=device, train_size=train, test_size=test, seed=0)
    d.augment = True  # crops and flips as CIFAR-10
    return d


def precisions(device):
    return ["fp32", resolve_precision("bf16", device), "fp16"]


def neighbourhood_batch(device, width):
    cluster_ids = torch.arange(12, device=device).repeat_interleave(5)
    y = cluster_ids // 2
    x = torch.rand(60, 3, 32, 32, device=device)
    classifier = ClusterClassifier(
        torch.randn(20, 8 * width, device=device),
        torch.arange(10).repeat_interleave(2),
        1.0,
        num_nearest=10,
    )
    return x, y, cluster_ids, classifier


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_training_step_runs_on_the_device(cuda_device, precision):
    precision = resolve_precision(precision, cuda_device)
    torch.manual_seed(0)
    model = WithHead(resnet18_embedder(4), 32, 10).to(cuda_device)
    amp = TrainingPrecision(precision, cuda_device)
    net = amp.network(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(32, 3, 32, 32, device=cuda_device)
    y = torch.randint(0, 10, (32,), device=cuda_device)
    generator = torch.Generator(device=cuda_device).manual_seed(0)
    with amp.flags():
        for name, (step, args) in CE_STEPS.items():
            loss, logits = step(net, optimizer, x, y, generator, state={}, amp=amp, **args)
            assert loss.dtype == torch.float32 and torch.isfinite(loss), name
            assert logits.dtype == torch.float32 and logits.device.type == cuda_device.type
        xb, yb, ids, clf = neighbourhood_batch(cuda_device, 4)
        embedder = amp.network(model.embedder)
        for lam in (0.0, 8.0):
            loss, per_sample, log_p = magnet_step(
                embedder, optimizer, clf, xb, yb, ids, alpha=12.5, qtrades_lambda=lam,
                generator=generator, qtrades_form="official", adversary_grad=True, amp=amp,
            )  # fmt: skip
            assert torch.isfinite(loss) and loss.dtype == per_sample.dtype == torch.float32
        if cuda_device.type == "cuda":
            assert torch.backends.cudnn.benchmark
        if cuda_device.type == "cuda" and amp.scaler is None:  # fp16's scaler reads found_inf
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")  # a host sync raises
            try:
                for step, args in CE_STEPS.values():
                    step(net, optimizer, x, y, generator, state={}, amp=amp, **args)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    if cuda_device.type == "cuda":  # the steps train channels-last there
        assert model.embedder[1].weight.is_contiguous(memory_format=torch.channels_last)


def test_cross_entropy_training_syncs_once_per_epoch(cuda_device):
    if cuda_device.type != "cuda":
        pytest.skip("host syncs are a CUDA matter (the CPU check: tests/test_train.py)")
    counts = []
    for batch_size in (120, 30):  # 2 and 8 steps per epoch
        d = digits(cuda_device)
        net = WithHead(resnet18_embedder(2), 16, 10).to(cuda_device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_cross_entropy(
                    net, d, epochs=2, lr=1e-2, batch_size=batch_size, precision="bf16",
                    progress=False,
                )  # fmt: skip
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], counts


def test_a_short_run_of_each_method_on_the_device(cuda_device):
    d = digits(cuda_device)
    precision = resolve_precision("bf16", cuda_device)
    for step, (_, args) in CE_STEPS.items():
        torch.manual_seed(0)
        net = WithHead(resnet18_embedder(2), 16, 10).to(cuda_device)
        history = train_cross_entropy(
            net, d, epochs=2, lr=1e-2, batch_size=64, step=step, step_args=args, flip=True,
            precision=precision, progress=False,
        )  # fmt: skip
        assert np.isfinite(history.loss).all() and len(history.loss) == 2, step
    for lam in (0.0, 8.0):  # Magnet (ClusTR) and ClusTR + QTRADES, the official recipe
        torch.manual_seed(0)
        embedder = resnet18_embedder(2).to(cuda_device)
        index, history = train_magnet(
            embedder, d, epochs=2, lr=1e-3, alpha=12.5, clusters_per_batch=12,
            samples_per_cluster=5, qtrades_lambda=lam, precision=precision, progress=False,
            **RECIPE,
        )  # fmt: skip
        assert np.isfinite(history.loss).all() and index.refreshes_ == 3
        assert index.backend_ == ("torch" if cuda_device.type == "cuda" else "sklearn")
        assert index.centroids_.device.type == cuda_device.type
        model = cluster_model(embedder, index, num_nearest=20).eval()
        out = model(d.test_images())
        assert out.dtype == torch.float32 and out.shape == (60, 10)


def trained_model(device):
    d = digits(device, train=400, test=60)
    d.augment = False
    torch.manual_seed(0)
    net = WithHead(resnet18_embedder(4), 32, 10).to(device)
    train_cross_entropy(net, d, epochs=3, lr=1e-2, batch_size=64, progress=False)
    return net.eval(), d


def test_pgd_and_autoattack_run_in_float32_on_channels_last_inputs(cuda_device):
    net, d = trained_model(cuda_device)
    assert net.embedder[1].weight.is_contiguous()  # trained channels-last, handed back plain
    full = autoattack(net, d.test_images()[:6], d.y_test[:6], eps=8 / 255, seed=0)  # standard
    assert full.robust_accuracy <= full.clean_accuracy
    net = net.to(memory_format=torch.channels_last)
    x, y = d.test_images()[:24], d.y_test[:24]
    autocast_seen = []
    net.embedder[1].register_forward_hook(
        lambda m, i, o: autocast_seen.append((o.dtype, torch.is_autocast_enabled(cuda_device.type)))
    )
    x_last = x.contiguous(memory_format=torch.channels_last)
    kwargs = dict(eps=8 / 255, step_size=2 / 255, steps=10, restarts=3, seed=0)
    plain, last = pgd(net, x, y, **kwargs), pgd(net, x_last, y, **kwargs)
    assert abs(plain.robust_accuracy - last.robust_accuracy) <= 1 / 24
    assert last.robust_accuracy <= last.clean_accuracy
    assert float((last.x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    # pyautoattack's APGD-T views the input gradient flat: channels-last *inputs* fail there,
    # so AutoAttack gets contiguous ones (on the channels-last model)
    aa = autoattack(net, x, y, eps=8 / 255, attacks=("apgd-ce", "apgd-t"), seed=0)
    assert aa.robust_accuracy <= last.robust_accuracy + 1 / 24
    assert all(dtype == torch.float32 and not on for dtype, on in autocast_seen)
    # the same attack on the CPU copy agrees (the numerics differ only in rounding)
    cpu = pgd(copy.deepcopy(net).cpu(), x.cpu(), y.cpu(), **kwargs)
    assert torch.equal(cpu.clean_correct, plain.clean_correct.cpu())
    assert abs(cpu.robust_accuracy - plain.robust_accuracy) <= 2 / 24


def test_torch_kmeans_on_the_device_matches_sklearn(cuda_device):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    f = torch.tensor(x, dtype=torch.float32, device=cuda_device)
    labels = torch.tensor(y, device=cuda_device)
    device_index = ClusterIndex(2, random_state=1, n_init=10, kmeans_backend="torch").fit(f, labels)
    reference = ClusterIndex(2, random_state=1, n_init=10, kmeans_backend="sklearn")
    reference.fit(f.cpu(), labels.cpu())
    auto = ClusterIndex(2, random_state=1).fit(f, labels)
    assert auto.backend_ == ("torch" if cuda_device.type == "cuda" else "sklearn")

    def inertia(index, f):
        sq = ((f - index.centroids_.to(f.device)[index.assignments_.to(f.device)]) ** 2).sum(1)
        return np.array([float(sq[labels == c].sum()) for c in range(10)])

    np.testing.assert_allclose(inertia(device_index, f), inertia(reference, f), rtol=0.01)
    assert device_index.centroids_.device.type == cuda_device.type
    again = ClusterIndex(2, random_state=1, n_init=10, kmeans_backend="torch").fit(f, labels)
    assert torch.equal(again.centroids_, device_index.centroids_)  # seeded: reproducible
    # well separated: the same clusters as scikit-learn
    g = torch.Generator().manual_seed(0)
    modes = torch.randint(0, 2, (600,), generator=g)
    cls = torch.arange(600) % 3
    blobs = torch.randn(600, 16, generator=g) + 20.0 * cls[:, None] + 8.0 * modes[:, None]
    a = ClusterIndex(2, kmeans_backend="torch").fit(blobs.to(cuda_device), cls.to(cuda_device))
    b = ClusterIndex(2, kmeans_backend="sklearn").fit(blobs, cls)
    pairs = set(zip(a.assignments_.tolist(), b.assignments_.tolist()))
    assert len(pairs) == 6


def by_update(amp, step, count=5):
    """``{updates applied so far: loss}`` over ``count`` calls of ``step(noise)``: fp16's
    gradient scaler skips an update that overflowed, and the next call then sees the same
    weights; the QTRADES noise is drawn by update count, so the runs stay comparable."""
    out, applied = {}, 0
    for _ in range(count):
        scale = amp.scaler.get_scale() if amp.scaler is not None else None
        noise = torch.Generator(device=amp.device).manual_seed(applied)
        out.setdefault(applied, float(step(noise)))
        skipped = scale is not None and amp.scaler.get_scale() < scale
        applied += 0 if skipped else 1
    return out


@pytest.mark.parametrize("half", ["bf16", "fp16"])
def test_mixed_precision_stays_close_to_fp32_on_the_device(cuda_device, half):
    """5 steps from the same weights: losses after the same updates within 2 % (cross-entropy)
    and 3 % (Magnet + QTRADES) of fp32's, the first within 0.5 %."""
    half = resolve_precision(half, cuda_device)
    torch.manual_seed(0)
    base = WithHead(resnet18_embedder(8), 64, 10).to(cuda_device)
    d = digits(cuda_device, train=120, test=10)
    x, y = d.train_images(), d.y_train
    ids = y * 2 + torch.arange(len(y), device=cuda_device) % 2

    def run(precision):
        net = copy.deepcopy(base)
        amp = TrainingPrecision(precision, cuda_device)
        f = amp.network(net)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        with amp.flags():
            ce = by_update(amp, lambda noise: nominal_step(f, opt, x, y, None, amp=amp)[0])
        embedder = copy.deepcopy(base.embedder)
        with torch.no_grad():
            feats = embedder(x)
        clf = ClusterClassifier(
            torch.stack([feats[ids == c].mean(0) for c in range(20)]),
            torch.arange(10).repeat_interleave(2),
            float(feats.var(0).sum()),
        )
        emb = amp.network(embedder)
        opt = torch.optim.Adam(embedder.parameters(), lr=1e-3)
        with amp.flags():
            mag = by_update(
                amp,
                lambda noise: magnet_step(
                    emb, opt, clf, x, y, ids, alpha=1.0, qtrades_lambda=1.0, generator=noise,
                    amp=amp,
                )[0],
            )  # fmt: skip
        return ce, mag

    runs = {precision: run(precision) for precision in ("fp32", half)}
    (ce32, mag32), (ce16, mag16) = runs["fp32"], runs[half]
    assert len(ce16) >= 3 and len(mag16) >= 3
    assert ce16[0] == pytest.approx(ce32[0], rel=5e-3)
    for updates in ce16:
        assert ce16[updates] == pytest.approx(ce32[updates], rel=0.02)
    for updates in mag16:
        assert mag16[updates] == pytest.approx(mag32[updates], rel=0.03)
    xa = x[:8].clone().requires_grad_(True)  # evaluation after a mixed run: float32 gradients
    grad = torch.autograd.grad(F.cross_entropy(base.eval()(xa), y[:8]), xa)[0]
    assert grad.dtype == torch.float32


def test_chapter_three_runs_end_to_end_on_full_size_fake_cifar10(
    cuda_device, tmp_path, fake_cifar10
):
    """Chapter 3's computation (its source, runs frame and findings; the page's rendering
    needs myst-nb, absent on the GPU machine) on CIFAR-10 written in torchvision's format:
    full size (50,000 + 10,000 images) on CUDA, 500 + 100 on the CPU stand-in device."""
    full = cuda_device.type == "cuda"
    fake_cifar10(tmp_path / "data", per_batch=10_000 if full else 100, test=10_000 if full else 100)
    scale = dict(
        data_dir=tmp_path / "data",
        results_dir=tmp_path / "results",
        device=str(cuda_device),
        overrides=dict(
            width=8,
            ce_epochs=1,
            ce_milestones=[1],
            magnet_epochs=1,
            eval_size=64,
            pgd_restarts=1,
            pgd_steps=[2],
            trades_steps=1,
            free_replays=1,
        ),
    )
    src = sources.paper_source("cifar10", **scale)
    assert len(src.data.y_train) == (50_000 if full else 500)
    frame = studies.runs_frame([src])
    assert sorted(frame["method"]) == sorted(protocol.METHODS.values())
    assert frame["device"].eq(device_name(cuda_device)).all()
    assert frame[["clean_accuracy", "pgd2_paper"]].stack().between(0, 100).all()
    recorded = sorted(p.name for p in (tmp_path / "results").glob("*.json"))
    assert len(recorded) == len(protocol.METHODS)
    again = studies.runs_frame([sources.paper_source("cifar10", **scale)])  # read, not retrained
    assert again["train_minutes"].tolist() == frame["train_minutes"].tolist()
    findings = studies.by_source([src], studies.benchmark_findings, frame)
    assert findings
