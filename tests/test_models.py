"""ResNet-18 for 32x32 inputs with normalisation inside."""

import numpy as np
import pytest
import torch
from torch import nn

from clustr_lib.models import Normalize, WithHead, embedding_dim, resnet18_embedder


def test_normalize_matches_numpy(rng):
    x = rng.uniform(0, 1, size=(4, 3, 5, 5)).astype(np.float32)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
    expected = (x - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    np.testing.assert_allclose(
        Normalize(mean, std)(torch.tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("width", [2, 8])
def test_resnet18_shape_depth_and_embedding(width):
    net = resnet18_embedder(width)
    out = net(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, 8 * width) and embedding_dim(net) == 8 * width
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 17  # 3x3 stem + 8 blocks x 2: ResNet-18 without its linear layer
    assert convs[0].stride == (1, 1) and not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    head = WithHead(net, 8 * width, 10)
    assert head(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_paper_width_has_resnet18_size():
    params = sum(p.numel() for p in WithHead(resnet18_embedder(64), 512, 10).parameters())
    assert 11.1e6 < params < 11.2e6  # the CIFAR ResNet-18's 11.17M parameters
    with pytest.raises(ValueError, match="width"):
        resnet18_embedder(0)
