"""The Magnet loss (Sec. 3.2, Eq. 3), the per-class k-means cluster index and the
neighbourhood batch sampler of Rippel et al. that ClusTR trains with (App. D).

Cluster numbering used throughout the library: cluster ``j`` of class ``c`` has the
global id ``c * K + j``, so ``centroid_classes = arange(L).repeat_interleave(K)``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans

from .checks import as_float_tensor, as_label_tensor, check_choice, check_positive
from .distances import squared_distances


def _check_log_eps(log_eps):
    """``None`` (the exact loss) or a finite ``ε > 0``."""
    if log_eps is None:
        return None
    return check_positive(log_eps, "magnet_log_eps")


def _hinged_magnet_terms(
    sq_dist: torch.Tensor,
    own: torch.Tensor,
    other_class: torch.Tensor,
    variance: torch.Tensor,
    alpha: float,
    log_eps: float | None = None,
) -> torch.Tensor:
    """Per-sample ``{α + d_own/(2σ²) + log Σ_other exp(−d/(2σ²))}₊`` in log space.

    ``sq_dist`` is ``[N, C]``, ``own`` the column of each sample's own cluster and
    ``other_class`` a ``[N, C]`` mask of the clusters of other classes. The sum over
    other clusters is a ``logsumexp`` (no exp/log round trip, and by default no epsilon).

    With ``log_eps = ε`` it is instead the official code's expression (``utils/magnet_loss.py``),
    ``{−log(num / (den + ε) + ε)}₊`` with ``num = exp(−d_own/(2σ²) − α)`` and
    ``den = Σ_other exp(−d/(2σ²))``, evaluated in log space as
    ``−logaddexp(−α − d_own/(2σ²) − logaddexp(log den, log ε), log ε)``: the same value, without
    the exp-space underflow. It never exceeds ``−log ε`` (18.42 at ε = 1e-8), and a sample's
    gradient is damped by ``r / (r + ε)``, ``r = num / (den + ε)``: a sample far past the cap
    gives (almost) none.
    """
    scaled = sq_dist / (2.0 * variance)
    own_term = scaled.gather(1, own[:, None]).squeeze(1)
    impostor = torch.logsumexp(scaled.neg().masked_fill(~other_class, float("-inf")), dim=1)
    if log_eps is None:
        return torch.relu(alpha + own_term + impostor)
    log_e = torch.full_like(impostor, math.log(log_eps))
    log_ratio = -alpha - own_term - torch.logaddexp(impostor, log_e)
    return torch.relu(-torch.logaddexp(log_ratio, log_e))


def magnet_loss(embeddings, cluster_ids, class_ids, alpha: float, log_eps: float | None = None):
    """Batch approximation of the Magnet loss, Eq. (3) of the paper.

    Within the batch, the mean ``μ_c`` of each cluster present is the mean of the
    batch's members of that cluster and ``σ² = Σ_i ‖f_i − μ(x_i)‖² / (N − 1)``. Each
    sample then pays::

        ℓ_i = max(0, α + ‖f_i − μ(x_i)‖²/(2σ²) + log Σ_{c: class(c) ≠ y_i} exp(−‖f_i − μ_c‖²/(2σ²)))

    where the sum runs over the clusters of *other* classes present in the batch.
    Gradients flow through the batch means and through ``σ²``, as in the public code.
    ``log_eps`` (default ``None``: the exact expression above) puts the official code's
    ``ε = 1e-8`` inside the log (see :func:`_hinged_magnet_terms`), capping ``ℓ_i`` at ``−log ε``.

    Args:
        embeddings: ``[N, d]`` features ``f_θ(x)``.
        cluster_ids: ``[N]`` integer id of each sample's cluster (any numbering).
        class_ids: ``[N]`` class of each sample; all members of a cluster share it.
        alpha: the margin ``α ≥ 0``.
        log_eps: ``None`` or the official ``ε`` (1e-8).

    Returns:
        ``(mean_loss, per_sample_losses, variance)``: a scalar, an ``[N]`` tensor and
        the scalar ``σ²`` of the batch.
    """
    embeddings = as_float_tensor(embeddings, "embeddings", ndim=2)
    n = embeddings.shape[0]
    cluster_ids = as_label_tensor(cluster_ids, "cluster_ids", n).to(embeddings.device)
    class_ids = as_label_tensor(class_ids, "class_ids", n).to(embeddings.device)
    alpha = check_positive(alpha, "alpha", allow_zero=True)
    log_eps = _check_log_eps(log_eps)
    if n < 2:
        raise ValueError("the Magnet loss needs at least 2 samples (σ² divides by N − 1)")

    clusters, member_of = torch.unique(cluster_ids, return_inverse=True)
    counts = torch.bincount(member_of, minlength=len(clusters)).to(embeddings.dtype)
    means = torch.zeros(
        len(clusters), embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device
    )
    means = means.index_add(0, member_of, embeddings) / counts[:, None]
    cluster_class = torch.empty(len(clusters), dtype=torch.long, device=embeddings.device)
    cluster_class[member_of] = class_ids
    if not torch.equal(cluster_class[member_of], class_ids):
        raise ValueError("every member of a cluster must have the same class")
    other_class = cluster_class[None, :] != class_ids[:, None]
    if not bool(other_class.any(1).all()):
        raise ValueError("every sample needs a cluster of another class in the batch")

    sq_dist = squared_distances(embeddings, means)
    own_sq = sq_dist.gather(1, member_of[:, None]).squeeze(1)
    variance = own_sq.sum() / (n - 1)
    losses = _hinged_magnet_terms(sq_dist, member_of, other_class, variance, alpha, log_eps)
    return losses.mean(), losses, variance


def magnet_loss_fixed_clusters(
    embeddings,
    labels,
    centroids,
    centroid_classes,
    variance,
    alpha: float,
    log_eps: float | None = None,
) -> torch.Tensor:
    """Per-sample Magnet loss against *fixed* clusters (the adaptive attack, Sec. 4.2).

    Same expression as :func:`magnet_loss`, Eq. (3), but with the training set's
    centroids and ``σ²`` held fixed. A test point has no cluster assignment, so its
    own cluster is the nearest centroid of its true class; the impostor sum runs over
    all centroids of the other classes. The hinge is kept, so a point whose loss is
    below zero gives no gradient (the objective is the paper's, masking included).
    ``log_eps``: as in :func:`magnet_loss` (``None``: the exact expression).
    """
    log_eps = _check_log_eps(log_eps)
    embeddings = as_float_tensor(embeddings, "embeddings", ndim=2)
    labels = as_label_tensor(labels, "labels", embeddings.shape[0]).to(embeddings.device)
    centroid_classes = centroid_classes.to(embeddings.device)
    sq_dist = squared_distances(embeddings, centroids)
    same_class = centroid_classes[None, :] == labels[:, None]
    if not bool(same_class.any(1).all()):
        raise ValueError("a label has no centroid of its class")
    own = sq_dist.masked_fill(~same_class, float("inf")).argmin(1)
    variance = torch.as_tensor(variance, dtype=embeddings.dtype, device=embeddings.device)
    return _hinged_magnet_terms(sq_dist, own, ~same_class, variance, alpha, log_eps)


# Where ClusterIndex runs its k-means: "sklearn" (the CPU reference, scikit-learn's KMeans
# class by class), "torch" (:func:`kmeans_torch`, every class at once on the embeddings'
# device) or "auto" (torch for CUDA embeddings, scikit-learn otherwise).
KMEANS_BACKENDS = ("auto", "sklearn", "torch")


@contextlib.contextmanager
def exact_float32(device):
    """Float32 arithmetic as written inside the block, whatever the caller enabled: autocast
    off, and on CUDA no TF32 in matrix products (restored afterwards). Distances computed by
    expansion (``‖a‖² − 2a·b + ‖b‖²``) lose their small values to a 10-bit mantissa."""
    device = torch.device(device)
    with torch.autocast(device.type, enabled=False):
        if device.type != "cuda":
            yield
            return
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before


def _batched_sq_distances(x, x_sq, centres):
    """``[P, N, M]`` squared distances between ``x`` ``[P, N, d]`` (with its squared norms
    ``x_sq`` ``[P, N]``) and ``centres`` ``[P, M, d]``, clamped at zero."""
    cross = torch.bmm(x, centres.transpose(1, 2))
    return (x_sq[:, :, None] - 2.0 * cross + (centres * centres).sum(2)[:, None, :]).clamp_min(0)


def kmeans_plusplus_torch(x, sizes, k: int, restarts: int = 1, generator=None, local_trials=None):
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of ``P`` problems at once, each
    ``restarts`` times: the first centre uniformly among a problem's points, every next one
    by D² sampling (probability proportional to the squared distance to the nearest centre
    chosen so far). With ``local_trials = T > 1`` each step draws ``T`` D² candidates and
    keeps the one that lowers the potential most (scikit-learn's greedy k-means++; ``None``:
    its ``2 + ⌊ln k⌋``); ``T = 1`` is the original algorithm.

    ``x``: ``[P, N, d]``, problem ``p`` holding its points in rows ``< sizes[p]`` (the rest is
    padding, never chosen); ``sizes``: ``[P]`` on ``x.device``, each ``>= 1``. Returns the
    centres ``[P, R, k, d]`` and their row indices ``[P, R, k]``.
    """
    num, rows, dim = x.shape
    trials = 2 + int(math.log(k)) if local_trials is None else int(local_trials)
    valid = torch.arange(rows, device=x.device)[None, :] < sizes[:, None]  # [P, N]
    x_sq = (x * x).sum(2)
    last = (sizes - 1)[:, None, None]

    def rows_of(index):  # [P, R, T] row indices -> [P, R, T, d] points
        flat = index.reshape(num, -1)
        return x.gather(1, flat[:, :, None].expand(-1, -1, dim)).view(*index.shape, dim)

    def distances_to(points):  # [P, R, T, d] -> [P, R, T, N], zero on padding
        flat = points.reshape(num, -1, dim)
        sq = _batched_sq_distances(x, x_sq, flat).transpose(1, 2)
        return (sq * valid[:, None, :]).view(*points.shape[:-1], rows)

    u = torch.rand(num, restarts, 1, generator=generator, device=x.device, dtype=x.dtype)
    first = (u * sizes[:, None, None]).long().minimum(last)  # [P, R, 1]
    chosen, centres = [first], [rows_of(first)]
    closest = distances_to(centres[0])[:, :, 0]  # [P, R, N]
    for _ in range(1, k):
        potential = closest.double().sum(2, keepdim=True)
        draws = torch.rand(
            num, restarts, trials, generator=generator, device=x.device, dtype=torch.float64
        )
        cumulative = closest.double().cumsum(2).contiguous()
        candidates = torch.searchsorted(cumulative, (draws * potential).contiguous())
        candidates = candidates.minimum(last)  # round-off can point past the last row
        points = rows_of(candidates)  # [P, R, T, d]
        after = torch.minimum(closest[:, :, None, :], distances_to(points))  # [P, R, T, N]
        best = after.double().sum(3).argmin(2)  # [P, R]
        pick = best[:, :, None]
        chosen.append(candidates.gather(2, pick))
        centres.append(points.gather(2, pick[:, :, :, None].expand(-1, -1, -1, dim)))
        closest = after.gather(2, pick[:, :, :, None].expand(-1, -1, -1, rows))[:, :, 0]
    return torch.cat(centres, 2), torch.cat(chosen, 2)


def kmeans_torch(
    x,
    sizes,
    k: int,
    *,
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    generator=None,
    local_trials=None,
):
    """Lloyd's k-means with k-means++ starts (:func:`kmeans_plusplus_torch`) on ``P`` padded
    problems at once, on their device: scikit-learn's ``KMeans(init="k-means++",
    n_init, max_iter, tol)`` (algorithm ``lloyd``) restated batched.

    Per problem and restart, as scikit-learn: the data are centred first (exact: k-means is
    translation invariant, and the expansion of distances keeps its precision); an iteration
    assigns every point to its nearest centre and moves each centre to its points' mean, a
    centre left without points moving to the point farthest from its own centre (the
    farthest ones, for several); a restart stops when no label changed or when the centres
    moved by at most ``tol`` times the mean per-feature variance in total (squared), and ends
    with a last assignment to its final centres; of the restarts, the one with the lowest
    inertia is kept. All restarts and problems step together; a finished one is frozen.
    The random stream is torch's (``generator``), not NumPy's: the same seed gives another
    clustering than scikit-learn's, of the same quality.

    ``x``: ``[P, N, d]`` float, problem ``p`` in rows ``< sizes[p]`` (``sizes >= k``).
    Returns ``(centres [P, k, d], labels [P, N] (-1 on padding), inertia [P], iterations)``.
    """
    num, rows, dim = x.shape
    sizes = sizes.to(x.device)
    valid = torch.arange(rows, device=x.device)[None, :] < sizes[:, None]  # [P, N]
    count = sizes.to(x.dtype)
    mean = (x * valid[:, :, None]).sum(1) / count[:, None]
    x = (x - mean[:, None, :]) * valid[:, :, None]
    x_sq = (x * x).sum(2)
    threshold = (x_sq.sum(1) / (count * dim) * tol)[:, None]  # [P, 1]: mean variance × tol
    centres, _ = kmeans_plusplus_torch(x, sizes, k, n_init, generator, local_trials)
    mask = valid[:, None, :, None].to(x.dtype)  # [P, 1, N, 1]

    def assign(centres):  # -> labels [P, R, N], squared distance to the nearest [P, R, N]
        sq = _batched_sq_distances(x, x_sq, centres.reshape(num, -1, dim))
        nearest = sq.view(num, rows, n_init, k).min(3)
        return nearest.indices.transpose(1, 2), nearest.values.transpose(1, 2)

    old_labels = torch.full((num, n_init, rows), -1, dtype=torch.long, device=x.device)
    active = torch.ones(num, n_init, dtype=torch.bool, device=x.device)
    iterations = 0
    for iterations in range(1, int(max_iter) + 1):  # noqa: B007 - read after the loop
        labels, nearest = assign(centres)
        onehot = torch.nn.functional.one_hot(labels, k).to(x.dtype) * mask  # [P, R, N, k]
        members = onehot.sum(2)  # [P, R, k]
        sums = torch.einsum("prnk,pnd->prkd", onehot, x)
        # empty clusters take the points farthest from their centres, as scikit-learn's
        # _relocate_empty_clusters_dense: the j-th empty one the j-th farthest point
        empty = members == 0
        far = nearest.masked_fill(~valid[:, None, :], -1.0).topk(k, dim=2).indices  # [P,R,k]
        rank = (empty.long().cumsum(2) - 1).clamp_min(0)
        far_row = far.gather(2, rank)  # [P, R, k]: the point each empty cluster takes
        far_point = x.gather(1, far_row.view(num, -1, 1).expand(-1, -1, dim)).view(
            num, n_init, k, dim
        )
        weight = empty.to(x.dtype)
        source = labels.gather(2, far_row)  # the cluster it leaves
        sums = sums.scatter_add(
            2, source[..., None].expand(-1, -1, -1, dim), -far_point * weight[..., None]
        )
        members = members.scatter_add(2, source, -weight)
        sums = torch.where(empty[..., None], far_point, sums)
        members = torch.where(empty, torch.ones_like(members), members)
        moved = torch.where(members[..., None] > 0, sums / members.clamp_min(1)[..., None], centres)
        shift = ((moved - centres) ** 2).sum((2, 3))  # [P, R]
        same = ((labels == old_labels) | ~valid[:, None, :]).all(2)
        centres = torch.where(active[..., None, None], moved, centres)
        old_labels = torch.where(active[..., None], labels, old_labels)
        active = active & ~(same | (shift <= threshold))
        if not bool(active.any()):
            break
    labels, nearest = assign(centres)  # the last E-step: labels of the final centres
    inertia = (nearest * valid[:, None, :]).double().sum(2)  # [P, R]
    best = inertia.argmin(1)  # [P]
    take = torch.arange(num, device=x.device)
    centres, labels, inertia = centres[take, best], labels[take, best], inertia[take, best]
    labels = labels.masked_fill(~valid, -1)
    return centres + mean[:, None, :], labels, inertia, iterations


class ClusterIndex:
    """Per-class k-means (k-means++ initialisation) of the training embeddings (App. D).

    After :meth:`fit` the index exposes ``centroids_`` (``[L·K, d]``),
    ``centroid_classes_`` (``[L·K]``), ``assignments_`` (the global cluster id of
    every training sample) and ``variance_``: the ``σ²`` of Eq. (4),
    ``Σ_i ‖f_i − μ(x_i)‖² / (N − 1)`` over the whole training set.

    Args:
        clusters_per_class: ``K`` (2 in the paper's image experiments, 1 in 2-D).
        random_state: seed of the k-means++ initialisation (incremented per refresh,
            unless ``fixed_random_state``).
        n_init: k-means restarts per class (scikit-learn's ``n_init``). The official code
            (``utils/setups.py``) uses 1 on CIFAR-10 and 10 on the other datasets.
        max_iter: Lloyd iterations per restart. Default 300 (scikit-learn's); the official
            code uses 20 on CIFAR-10 and 40 on the others.
        fixed_random_state: every refresh uses ``random_state`` itself, as the official code
            does (``KMeans(random_state=1)`` at every refresh, ``utils/magnet_tools.py``).
        kmeans_backend: :data:`KMEANS_BACKENDS`. ``"sklearn"``: scikit-learn's ``KMeans``
            class by class on the CPU (the reference, and what every recorded run used);
            ``"torch"``: :func:`kmeans_torch`, all classes (and restarts) at once on the
            embeddings' device, the same algorithm and options with torch's random stream;
            ``"auto"`` (default): torch for embeddings on a CUDA device, scikit-learn
            otherwise, so CPU results are scikit-learn's. ``backend_`` says which one ran last.
    """

    def __init__(
        self,
        clusters_per_class: int = 2,
        random_state: int = 0,
        *,
        n_init: int = 1,
        max_iter: int = 300,
        fixed_random_state: bool = False,
        kmeans_backend: str = "auto",
    ):
        if int(clusters_per_class) < 1:
            raise ValueError(f"clusters_per_class must be >= 1, got {clusters_per_class}")
        if int(n_init) < 1 or int(max_iter) < 1:
            raise ValueError(f"k-means n_init and max_iter must be >= 1, got {n_init}, {max_iter}")
        self.kmeans_backend = check_choice(kmeans_backend, "k-means backend", KMEANS_BACKENDS)
        self.clusters_per_class = int(clusters_per_class)
        self.random_state = int(random_state)
        self.n_init, self.max_iter = int(n_init), int(max_iter)
        self.fixed_random_state = bool(fixed_random_state)
        self.refreshes_ = 0

    def fit(
        self, embeddings, labels, num_classes: int | None = None, variance_embeddings=None
    ) -> ClusterIndex:
        """Set the labels, then cluster ``embeddings`` class by class (``variance_embeddings``:
        see :meth:`refresh`)."""
        embeddings = as_float_tensor(embeddings, "embeddings", ndim=2)
        labels = as_label_tensor(labels, "labels", embeddings.shape[0]).cpu()
        num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
        sizes = torch.bincount(labels, minlength=num_classes)
        if len(sizes) > num_classes:
            raise ValueError(f"labels go up to {len(sizes) - 1} but num_classes={num_classes}")
        if int(sizes.min()) < self.clusters_per_class:
            small = int(sizes.argmin())
            raise ValueError(
                f"class {small} has {int(sizes[small])} samples, fewer than "
                f"clusters_per_class={self.clusters_per_class}"
            )
        self.labels_ = labels
        self.num_classes_ = num_classes
        self.members_ = [torch.nonzero(labels == c).squeeze(1).numpy() for c in range(num_classes)]
        self._padded = {}  # per device: the members of every class, padded, for kmeans_torch
        return self.refresh(embeddings, variance_embeddings)

    def backend_for(self, embeddings) -> str:
        """The k-means that :meth:`refresh` runs on these embeddings (``"sklearn"``/``"torch"``)."""
        if self.kmeans_backend != "auto":
            return self.kmeans_backend
        return "torch" if embeddings.device.type == "cuda" else "sklearn"

    def _members_padded(self, device):
        """``[L, n_max]`` member rows of each class (padded with row 0) and the class sizes."""
        key = str(device)
        if key not in getattr(self, "_padded", {}):
            sizes = torch.tensor([len(m) for m in self.members_])
            rows = torch.zeros(self.num_classes_, int(sizes.max()), dtype=torch.long)
            for c, members in enumerate(self.members_):
                rows[c, : len(members)] = torch.from_numpy(members)
            if not hasattr(self, "_padded"):
                self._padded = {}
            self._padded[key] = (rows.to(device), sizes.to(device))
        return self._padded[key]

    def _kmeans_sklearn(self, embeddings, state):
        feats = embeddings.detach().cpu().numpy()
        k = self.clusters_per_class
        centroids = np.empty((self.num_classes_ * k, feats.shape[1]), dtype=feats.dtype)
        assignments = np.empty(len(feats), dtype=np.int64)
        for c, members in enumerate(self.members_):
            km = KMeans(
                n_clusters=k,
                init="k-means++",
                n_init=self.n_init,
                max_iter=self.max_iter,
                random_state=state,
            )
            local = km.fit_predict(feats[members]) if k > 1 else np.zeros(len(members), int)
            centroids[c * k : (c + 1) * k] = (
                km.cluster_centers_ if k > 1 else feats[members].mean(0, keepdims=True)
            )
            assignments[members] = c * k + local
        return torch.from_numpy(centroids).to(embeddings.device), torch.from_numpy(assignments)

    def _kmeans_torch(self, embeddings, state):
        device, k = embeddings.device, self.clusters_per_class
        feats = embeddings.detach()
        dtype = feats.dtype if feats.dtype in (torch.float32, torch.float64) else torch.float32
        rows, sizes = self._members_padded(device)
        valid = torch.arange(rows.shape[1], device=device)[None, :] < sizes[:, None]
        with exact_float32(device):
            x = feats.to(dtype)[rows]  # [L, n_max, d]
            if k == 1:
                valid = torch.arange(rows.shape[1], device=device)[None, :] < sizes[:, None]
                centres = ((x * valid[:, :, None]).sum(1) / sizes[:, None].to(dtype))[:, None]
                local = torch.zeros_like(rows)
            else:
                generator = torch.Generator(device=device).manual_seed(state)
                centres, local, _, _ = kmeans_torch(
                    x, sizes, k, n_init=self.n_init, max_iter=self.max_iter, generator=generator
                )
        global_ids = local + k * torch.arange(self.num_classes_, device=device)[:, None]
        assignments = torch.empty(len(feats), dtype=torch.long, device=device)
        assignments[rows[valid]] = global_ids[valid]
        return centres.reshape(-1, feats.shape[1]).to(feats.dtype), assignments.cpu()

    def refresh(self, embeddings, variance_embeddings=None) -> ClusterIndex:
        """Re-run per-class k-means on new embeddings of the same training set.

        ``σ²`` is by default computed from the same embeddings and the k-means assignments.
        With ``variance_embeddings`` (another pass over the training set, e.g. differently
        augmented, as the official code's ``compute_real_losses``) it is
        ``Σ_i min_{j: class(j) = y_i} ‖g_i − μ_j‖² / (N − 1)`` over those embeddings ``g``:
        each sample to its nearest centroid of its own class.
        """
        embeddings = as_float_tensor(embeddings, "embeddings", ndim=2)
        if not hasattr(self, "labels_"):
            raise RuntimeError("call fit(embeddings, labels) before refresh")
        if embeddings.shape[0] != len(self.labels_):
            raise ValueError(f"expected {len(self.labels_)} embeddings, got {embeddings.shape[0]}")
        if variance_embeddings is not None:
            variance_embeddings = as_float_tensor(variance_embeddings, "variance_embeddings", 2)
            if variance_embeddings.shape != embeddings.shape:
                raise ValueError(
                    f"variance_embeddings must be shaped {tuple(embeddings.shape)}, "
                    f"got {tuple(variance_embeddings.shape)}"
                )
        state = self.random_state + (0 if self.fixed_random_state else self.refreshes_)
        self.backend_ = self.backend_for(embeddings)
        if self.backend_ == "torch":
            self.centroids_, self.assignments_ = self._kmeans_torch(embeddings, state)
        else:
            self.centroids_, self.assignments_ = self._kmeans_sklearn(embeddings, state)
        k = self.clusters_per_class
        self.centroid_classes_ = torch.arange(self.num_classes_).repeat_interleave(k)
        n = embeddings.shape[0]
        if variance_embeddings is None:
            own = embeddings.detach() - self.centroids_[self.assignments_.to(embeddings.device)]
            self.variance_ = float((own.double() ** 2).sum() / (n - 1))
        else:
            g = variance_embeddings.detach().double()
            sq = squared_distances(g, self.centroids_.to(g.device).double())
            same = (self.centroid_classes_[None, :] == self.labels_[:, None]).to(g.device)
            nearest = sq.masked_fill(~same, float("inf")).min(1).values
            self.variance_ = float(nearest.sum() / (n - 1))
        self.refreshes_ += 1
        return self

    @property
    def num_clusters(self) -> int:
        return self.num_classes_ * self.clusters_per_class


@dataclass
class MagnetBatch:
    """One neighbourhood: dataset ``indices`` and the global ``cluster_ids`` they came from."""

    indices: np.ndarray
    cluster_ids: np.ndarray


# How the sampler weighs each cluster's chance to seed a batch (:class:`NeighbourhoodSampler`).
SEED_PROBABILITIES = ("all_members", "recorded", "official")
# Batches per epoch: ceil(N / (M·D)) (every sample counted once) or the official floor.
EPOCH_LENGTHS = ("ceil", "floor")


class NeighbourhoodSampler:
    """Rippel et al.'s neighbourhood sampling for the Magnet loss (App. D).

    Each batch: a seed cluster drawn with probability proportional to its mean
    recorded loss (uniformly while no loss is recorded), the ``M − 1`` centroids of
    *other* classes nearest to the seed centroid, and ``D`` samples drawn without
    replacement from each of those ``M`` clusters (the whole cluster if it is smaller).

    ``seed_probability`` says what a cluster's loss is (:data:`SEED_PROBABILITIES`):

    * ``"all_members"`` (default): the mean over its *current* members of their latest
      recorded losses, a sample never seen counting as 0 (per-sample losses start at zero,
      as in the public code);
    * ``"recorded"``: the mean over its current members *that have a recorded loss*; a
      cluster none of whose members has one weighs 0;
    * ``"official"``: as the official ``ClusterBatchBuilder.update_losses``
      (``utils/magnet_tools.py``): ``"recorded"``, but a cluster's mean is computed only when a
      batch touches it and then kept under its cluster id, so after a refresh a cluster not
      yet touched keeps the mean of its *old* members.

    In every case the seed is drawn uniformly while all cluster losses are 0 (before any
    loss is recorded, or if every recorded loss is 0; the official code would divide by
    1e-8 and fail there).

    ``epoch_length`` (:data:`EPOCH_LENGTHS`): ``"ceil"`` (default) gives ``ceil(N / (M·D))``
    batches, as many samples as the dataset holds counted at the nominal batch size (a batch
    with a cluster smaller than ``D`` is smaller), so every epoch has the same number of
    steps; ``"floor"`` gives ``floor(N / (M·D))``, the official ``DataLoader(..., drop_last=True)``
    over a sampler of length N.

    Both loss updates are vectorised (``bincount`` over the training set).

    Args:
        index: a fitted :class:`ClusterIndex` (read afresh at every batch, so a
            refresh takes effect immediately).
        clusters_per_batch: ``M`` (12 in the paper).
        samples_per_cluster: ``D`` (20 in the paper).
        seed: seed of the sampler's own NumPy generator.
        seed_probability: see above.
        epoch_length: see above.
    """

    def __init__(
        self,
        index: ClusterIndex,
        clusters_per_batch: int = 12,
        samples_per_cluster: int = 20,
        seed: int = 0,
        *,
        seed_probability: str = "all_members",
        epoch_length: str = "ceil",
    ):
        if not hasattr(index, "assignments_"):
            raise ValueError("the cluster index must be fitted before sampling")
        self.seed_probability = check_choice(
            seed_probability, "seed probability", SEED_PROBABILITIES
        )
        self.epoch_length = check_choice(epoch_length, "epoch length", EPOCH_LENGTHS)
        self.index = index
        self.clusters_per_batch = int(clusters_per_batch)
        self.samples_per_cluster = int(samples_per_cluster)
        if self.clusters_per_batch < 2:
            raise ValueError("clusters_per_batch must be >= 2 (a seed and an impostor)")
        if self.samples_per_cluster < 1:
            raise ValueError("samples_per_cluster must be >= 1")
        others = index.num_clusters - index.clusters_per_class
        if self.clusters_per_batch - 1 > others:
            raise ValueError(
                f"clusters_per_batch={self.clusters_per_batch} needs "
                f"{self.clusters_per_batch - 1} impostor clusters; only {others} exist"
            )
        n = len(index.assignments_)
        if self.epoch_length == "floor" and n < self.batch_size:
            raise ValueError(
                f"epoch_length='floor' gives no batch: {n} training samples, fewer "
                f"than M·D = {self.batch_size}"
            )
        self.rng = np.random.default_rng(seed)
        self.sample_losses = np.zeros(n, dtype=np.float64)
        self.has_loss = np.zeros(n, dtype=bool)
        self.stored_cluster_losses = np.zeros(index.num_clusters, dtype=np.float64)

    @property
    def batch_size(self) -> int:
        """The nominal batch size ``M·D``."""
        return self.clusters_per_batch * self.samples_per_cluster

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.sample_losses)
        return n // self.batch_size if self.epoch_length == "floor" else -(-n // self.batch_size)

    def record_losses(self, indices, losses) -> None:
        """Store the latest per-sample losses of a batch (duplicates: last one wins)."""
        losses = losses.detach().cpu().numpy() if torch.is_tensor(losses) else np.asarray(losses)
        indices = np.asarray(indices)
        self.sample_losses[indices] = losses
        self.has_loss[indices] = True
        if self.seed_probability == "official":  # recompute, and keep, the touched clusters'
            touched = np.unique(self.index.assignments_.numpy()[indices])
            sums, counts = self._recorded_sums()
            self.stored_cluster_losses[touched] = sums[touched] / counts[touched]

    def _recorded_sums(self):
        """Per current cluster: the sum of its members' recorded losses and how many have one."""
        assign = self.index.assignments_.numpy()
        n = self.index.num_clusters
        sums = np.bincount(
            assign, weights=np.where(self.has_loss, self.sample_losses, 0.0), minlength=n
        )
        return sums, np.bincount(assign, weights=self.has_loss.astype(np.float64), minlength=n)

    def cluster_losses(self) -> np.ndarray:
        """Every cluster's loss under ``seed_probability`` (see the class docstring)."""
        if self.seed_probability == "official":
            return self.stored_cluster_losses.copy()
        if self.seed_probability == "recorded":
            sums, counts = self._recorded_sums()
            return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        assign = self.index.assignments_.numpy()
        n = self.index.num_clusters
        sums = np.bincount(assign, weights=self.sample_losses, minlength=n)
        counts = np.bincount(assign, minlength=n)
        return sums / np.maximum(counts, 1)

    def seed_probabilities(self) -> np.ndarray:
        """Probability of each cluster to be drawn as the seed."""
        losses = self.cluster_losses()
        total = losses.sum()
        if total <= 0:
            return np.full(len(losses), 1.0 / len(losses))
        return losses / total

    def impostors(self, seed_cluster: int) -> np.ndarray:
        """The ``M − 1`` clusters of other classes nearest to the seed centroid."""
        centroids = self.index.centroids_.double().cpu()
        sq = squared_distances(centroids[seed_cluster : seed_cluster + 1], centroids)[0]
        classes = self.index.centroid_classes_
        sq[classes == classes[seed_cluster]] = float("inf")
        return torch.argsort(sq, stable=True)[: self.clusters_per_batch - 1].numpy()

    def sample(self) -> MagnetBatch:
        """Draw one neighbourhood batch."""
        seed_cluster = int(self.rng.choice(self.index.num_clusters, p=self.seed_probabilities()))
        chosen = np.concatenate([[seed_cluster], self.impostors(seed_cluster)])
        order, starts, sizes = self._members_by_cluster()
        picks = [
            starts[c]
            + self.rng.choice(sizes[c], min(sizes[c], self.samples_per_cluster), replace=False)
            for c in chosen
        ]
        indices = order[np.concatenate(picks)]
        return MagnetBatch(indices=indices, cluster_ids=self.index.assignments_.numpy()[indices])

    def forget_members(self) -> None:
        """Drop the cached cluster membership (after the index was restored from a checkpoint)."""
        self._members_for = None

    def _members_by_cluster(self):
        """Samples sorted by cluster, with each cluster's start and size (cached per refresh)."""
        if getattr(self, "_members_for", None) != self.index.refreshes_:
            assign = self.index.assignments_.numpy()
            order = np.argsort(assign, kind="stable")
            sizes = np.bincount(assign, minlength=self.index.num_clusters)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            self._members = (order, starts, sizes)
            self._members_for = self.index.refreshes_
        return self._members

    def __iter__(self):
        """Yield one epoch: ``len(self)`` batches of nominal size ``M·D``."""
        for _ in range(len(self)):
            yield self.sample()
