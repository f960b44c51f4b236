"""Networks: the 3-layer MLP of the 2-D study (Sec. 4.1), the ResNet-18 for 32×32 images
with normalisation inside (App. D), and the linear head of the cross-entropy warm start."""

from __future__ import annotations

import torch
from torch import nn


def mlp_2d(hidden: int = 20, embedding_dim: int = 20, in_features: int = 2) -> nn.Sequential:
    """The 2-D study's feature map ``f_θ``: 3 linear layers, ``hidden`` ReLU units (Sec. 4.1)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, embedding_dim),
    )


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


class Normalize(nn.Module):
    """Channel-wise ``(x − mean) / std`` inside the model, so attacks work in [0, 1] pixels."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 convolutions with batch norm and a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18_embedder(width: int = 64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> nn.Sequential:
    """ResNet-18 for 32×32 inputs up to the penultimate layer (App. D).

    3×3 stem, no max-pool, four stages of two basic blocks (``width``, 2·, 4·, 8·``width``
    channels), global average pooling: an ``8·width``-d embedding (512 at the paper's
    ``width = 64``). Inputs are ``[0, 1]`` pixels, normalised inside by ``mean``/``std``.
    """
    if int(width) < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    layers, cin = [], width
    for stage, stride in enumerate((1, 2, 2, 2)):
        cout = width * 2**stage
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def embedding_dim(embedder: nn.Module) -> int:
    """Output dimension of an embedder built here (last linear layer or 8·width)."""
    convs = [m for m in embedder.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    last = convs[-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels
