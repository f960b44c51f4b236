"""The soft nearest-cluster classifier of Eq. (4), restricted to the D nearest clusters
(Sec. 4.2, App. E.4), and the model that puts it on top of a feature extractor."""

from __future__ import annotations

import torch
from torch import nn

from .checks import as_float_tensor, as_label_tensor, check_positive
from .distances import squared_distances


class ClusterClassifier(nn.Module):
    """Eq. (4): ``p_c(f) ∝ Σ_j exp(−‖f − μ_{c,j}‖² / (2σ²))`` over the D nearest clusters.

    Only the ``num_nearest`` (= D) clusters nearest to ``f`` enter the sums, as in
    the paper's tables (D = 20). A class with no cluster among those D gets
    probability zero: ``log_proba`` is ``−inf`` there and ``scores`` is ``0``.

    Args:
        centroids: ``[C, d]`` cluster centres ``μ``.
        centroid_classes: ``[C]`` class of each centre.
        variance: the training-set ``σ²`` (see :class:`clustr_lib.magnet.ClusterIndex`).
        num_nearest: D, ``1 ≤ D ≤ C``; ``None`` uses all clusters (plain Eq. 4).
        num_classes: number of classes L; defaults to ``max(centroid_classes) + 1``.
    """

    def __init__(
        self,
        centroids,
        centroid_classes,
        variance: float,
        num_nearest: int | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        centroids = as_float_tensor(centroids, "centroids", ndim=2)
        classes = as_label_tensor(centroid_classes, "centroid_classes", centroids.shape[0])
        num_clusters = centroids.shape[0]
        num_nearest = num_clusters if num_nearest is None else int(num_nearest)
        if not 1 <= num_nearest <= num_clusters:
            raise ValueError(f"num_nearest must be in [1, {num_clusters}], got {num_nearest}")
        self.num_classes = int(classes.max()) + 1 if num_classes is None else int(num_classes)
        if int(classes.max()) >= self.num_classes:
            raise ValueError("centroid_classes exceed num_classes")
        self.num_nearest = num_nearest
        self.register_buffer(
            "variance",
            torch.tensor(
                check_positive(float(variance), "variance"),
                dtype=centroids.dtype,
                device=centroids.device,
            ),
        )
        self.register_buffer("centroids", centroids.detach().clone())
        self.register_buffer("centroid_classes", classes.to(centroids.device))

    def _nearest_logits(self, embeddings):
        """``−d/(2σ²)`` of the D nearest clusters and their classes, both ``[N, D]``."""
        embeddings = as_float_tensor(embeddings, "embeddings", ndim=2)
        if embeddings.shape[1] != self.centroids.shape[1]:
            raise ValueError(
                f"embeddings have dimension {embeddings.shape[1]}, "
                f"centroids {self.centroids.shape[1]}"
            )
        sq = squared_distances(embeddings, self.centroids)
        nearest_sq, nearest = sq.topk(self.num_nearest, dim=1, largest=False)
        return -nearest_sq / (2.0 * self.variance), self.centroid_classes[nearest]

    def _class_onehot(self, classes):
        return classes[:, :, None] == torch.arange(self.num_classes, device=classes.device)

    def log_proba(self, embeddings) -> torch.Tensor:
        """``[N, L]`` log-probabilities of Eq. (4), computed in log space.

        Per class, ``logsumexp`` of ``−d/(2σ²)`` over its clusters among the D nearest,
        minus the ``logsumexp`` over all D. Classes without a cluster among the D get
        ``−inf`` (with zero, not NaN, gradient).
        """
        logits, classes = self._nearest_logits(embeddings)
        member = self._class_onehot(classes)
        lowest = torch.finfo(logits.dtype).min
        per_class = torch.logsumexp(logits[:, :, None].masked_fill(~member, lowest), dim=1)
        per_class = torch.where(member.any(1), per_class, torch.full_like(per_class, -torch.inf))
        return per_class - torch.logsumexp(logits, dim=1, keepdim=True)

    def scores(self, embeddings) -> torch.Tensor:
        """``[N, L]`` unnormalised class scores ``Σ_j exp(−‖f − μ_{c,j}‖²/(2σ²))``.

        These are the numerators of Eq. (4), summed literally in exponential space
        (values in ``[0, K]``, underflowing to 0 far from every centre), exactly the
        tensor the public evaluation code passes to ``F.cross_entropy``.
        """
        logits, classes = self._nearest_logits(embeddings)
        return (logits.exp()[:, :, None] * self._class_onehot(classes)).sum(1)

    def predict(self, embeddings) -> torch.Tensor:
        """``[N]`` argmax class of Eq. (4)."""
        return self.log_proba(embeddings).argmax(1)

    def forward(self, embeddings) -> torch.Tensor:
        return self.log_proba(embeddings)


def normalised_scores(scores: torch.Tensor) -> torch.Tensor:
    """``p = s / max(Σ_c s_c, 1e-12)``: Eq. (4)'s probabilities from its raw class scores
    (:meth:`ClusterClassifier.scores`), as the official code computes them
    (``F.normalize(scores, p=1)`` in utils/utils.py ``get_softmax_probs``): differentiable, and
    all zeros where every score underflowed (where :meth:`ClusterClassifier.log_proba` is exact)."""
    return scores / scores.sum(1, keepdim=True).clamp_min(1e-12)


class ClusterModel(nn.Module):
    """A feature extractor ``f_θ`` followed by the Eq. (4) classifier.

    ``forward`` returns log-probabilities, so the model can be handed to any
    attack or evaluation that expects logits (``softmax`` of log-probabilities is
    the probability vector itself); ``scores`` gives the paper's unnormalised scores
    and ``embed`` the features.
    """

    def __init__(self, embedder: nn.Module, classifier: ClusterClassifier):
        super().__init__()
        self.embedder = embedder
        self.classifier = classifier

    def embed(self, x) -> torch.Tensor:
        return self.embedder(x)

    def scores(self, x) -> torch.Tensor:
        return self.classifier.scores(self.embedder(x))

    def forward(self, x) -> torch.Tensor:
        return self.classifier.log_proba(self.embedder(x))
