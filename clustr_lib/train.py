"""Training (Sec. 3.3, App. D): the cross-entropy warm start and Magnet fine-tuning.

Data are tensors already on the training device; batches are drawn by index, so no
data loader and no per-sample Python work sits in the loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ._checks import as_label_tensor, check_positive, progress_enabled
from .classify import ClusterClassifier, ClusterModel
from .magnet import ClusterIndex, NeighbourhoodSampler, magnet_loss


@dataclass
class History:
    """Per-epoch training log and the wall time of training alone (seconds)."""

    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def embed_all(embedder: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Embeddings of a whole set, without autograd, in eval mode (mode restored after)."""
    was_training = embedder.training
    embedder.eval()
    out = torch.cat([embedder(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    embedder.train(was_training)
    return out


def _check_data(x, y):
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError("x must be a floating tensor")
    y = as_label_tensor(y, "y", x.shape[0])
    return y.to(x.device)


def train_cross_entropy(model: nn.Module, x: torch.Tensor, y, *, epochs: int, lr: float,
                        batch_size: int, milestones=(), seed: int = 0, augment=None,
                        progress: bool | None = None) -> History:
    """Nominal training, the ClusTR warm start (App. D: Adam, lr ×0.1 at ``milestones``).

    ``augment`` (optional) maps a batch of inputs to augmented inputs on the device.
    ``progress``: a tqdm bar with loss and accuracy (default: on unless
    ``CLUSTR_PROGRESS=0``).
    """
    y = _check_data(x, y)
    check_positive(lr, "lr")
    if int(epochs) < 0 or int(batch_size) < 1:
        raise ValueError("epochs must be >= 0 and batch_size >= 1")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=0.1)
    history = History()
    start = time.perf_counter()
    model.train()
    progress = progress_enabled() if progress is None else progress
    bar = tqdm(range(int(epochs)), desc="cross-entropy", disable=not progress, leave=False)
    for _ in bar:
        order = torch.randperm(len(x), generator=generator).to(x.device)
        total, correct = 0.0, 0
        for first in range(0, len(x), batch_size):
            idx = order[first:first + batch_size]
            inputs = x[idx] if augment is None else augment(x[idx])
            logits = model(inputs)
            loss = nn.functional.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
        schedule.step()
        history.loss.append(total / len(x))
        history.accuracy.append(correct / len(x))
        bar.set_postfix(loss=f"{history.loss[-1]:.3f}", acc=f"{history.accuracy[-1]:.3f}")
    history.seconds = time.perf_counter() - start
    return history


def train_magnet(embedder: nn.Module, x: torch.Tensor, y, *, epochs: int, lr: float,
                 alpha: float, clusters_per_class: int = 2, clusters_per_batch: int = 12,
                 samples_per_cluster: int = 20, seed: int = 0, augment=None,
                 progress: bool | None = None):
    """Magnet-loss training (Eq. 3) with neighbourhood sampling (App. D).

    Clusters come from per-class k-means++ on the embeddings of the whole training
    set and are recomputed at the end of every epoch; an epoch is as many samples as
    the training set holds. Returns ``(index, history)``.
    """
    y = _check_data(x, y)
    check_positive(lr, "lr")
    index = ClusterIndex(clusters_per_class, random_state=seed).fit(embed_all(embedder, x), y.cpu())
    sampler = NeighbourhoodSampler(index, clusters_per_batch, samples_per_cluster, seed=seed)
    optimizer = torch.optim.Adam(embedder.parameters(), lr=lr)
    history = History()
    start = time.perf_counter()
    embedder.train()
    progress = progress_enabled() if progress is None else progress
    bar = tqdm(range(int(epochs)), desc="magnet", disable=not progress, leave=False)
    for _ in bar:
        total = 0.0
        for batch in sampler:
            idx = torch.from_numpy(batch.indices).to(x.device)
            inputs = x[idx] if augment is None else augment(x[idx])
            loss, per_sample, _ = magnet_loss(embedder(inputs), torch.from_numpy(batch.cluster_ids),
                                              y[idx], alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sampler.record_losses(batch.indices, per_sample)
            total += loss.item()
        index.refresh(embed_all(embedder, x))
        history.loss.append(total / len(sampler))
        bar.set_postfix(loss=f"{history.loss[-1]:.3f}")
    history.seconds = time.perf_counter() - start
    return index, history


def cluster_model(embedder: nn.Module, index: ClusterIndex, num_nearest: int | None = None) -> ClusterModel:
    """The Eq. (4) model of a trained embedder: its final clusters and training-set ``σ²``."""
    classifier = ClusterClassifier(index.centroids_, index.centroid_classes_, index.variance_,
                                   num_nearest=num_nearest, num_classes=index.num_classes_)
    return ClusterModel(embedder, classifier)
