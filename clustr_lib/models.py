"""Networks: the 3-layer MLP of the 2-D study (Sec. 4.1) and the linear head used
for the cross-entropy warm start."""

from __future__ import annotations

from torch import nn


def mlp_2d(hidden: int = 20, embedding_dim: int = 20, in_features: int = 2) -> nn.Sequential:
    """The 2-D study's feature map ``f_θ``: 3 linear layers, ``hidden`` ReLU units (Sec. 4.1)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, embedding_dim))


class WithHead(nn.Module):
    """``f_θ`` followed by a linear head: the network of the cross-entropy warm start.

    ClusTR trains this, then drops ``head`` and fine-tunes ``embedder`` with the
    Magnet loss (Sec. 3.3).
    """

    def __init__(self, embedder: nn.Module, embedding_dim: int, num_classes: int):
        super().__init__()
        self.embedder = embedder
        self.head = nn.Linear(embedding_dim, num_classes)

    def forward(self, x):
        return self.head(self.embedder(x))
