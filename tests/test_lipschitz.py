"""The layer-wise Lipschitz upper bound of the ResNet (chapter 10) against exact operator
norms computed independently: dense matrices and Jacobians taken apart with NumPy's SVD."""

import numpy as np
import pytest
import torch
from torch import nn

from clustr_lib.certify import (
    batchnorm_lipschitz,
    conv_lipschitz_upper_bound,
    lipschitz_upper_bound,
)
from clustr_lib.models import resnet18_embedder


def dense_operator_norm(layer, shape):
    """Largest singular value of a linear layer's dense matrix, built column by column."""
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
    with torch.no_grad():
        columns = layer.double()(basis).reshape(n, -1).numpy()
    return float(np.linalg.svd(columns.T, compute_uv=False)[0])


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (5, 1, 2)])
def test_conv_bound_is_above_the_exact_operator_norm(kernel, stride, padding):
    torch.manual_seed(kernel * 10 + stride)
    conv = nn.Conv2d(2, 3, kernel, stride, padding, bias=False)
    exact = dense_operator_norm(conv, (2, 7, 7))
    assert conv_lipschitz_upper_bound(conv) >= exact * (1 - 1e-9)


def test_conv_bound_is_exact_for_a_one_by_one_convolution():
    conv = nn.Conv2d(4, 3, 1, bias=False)
    exact = dense_operator_norm(conv, (4, 5, 5))
    assert conv_lipschitz_upper_bound(conv) == pytest.approx(exact, rel=1e-9)
    assert exact == pytest.approx(
        np.linalg.svd(conv.weight.detach().double().view(3, 4).numpy(), compute_uv=False)[0],
        rel=1e-9,
    )


def test_batchnorm_constant_is_exact_in_eval_mode():
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
        bn.running_var.copy_(torch.tensor([1.0, 0.25, 4.0]))
    bn.eval()
    exact = dense_operator_norm(bn, (3, 2, 2))
    assert batchnorm_lipschitz(bn) == pytest.approx(exact, rel=1e-6)  # 2 / sqrt(0.25 + 1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        batchnorm_lipschitz(bn.train())


def test_average_pooling_rule_is_exact():
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert lipschitz_upper_bound(pool, input_size=6) == pytest.approx(
        dense_operator_norm(pool, (2, 6, 6)), rel=1e-9
    )


def randomised_resnet(width=2):
    """A narrow ResNet-18 with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(0)
    net = resnet18_embedder(width, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.5, 0.5)
                m.weight.uniform_(0.5, 1.5)
    return net.eval().double()


def test_resnet_bound_is_above_every_local_jacobian_norm():
    net = randomised_resnet()
    bound = lipschitz_upper_bound(net, input_size=8)
    torch.manual_seed(1)
    for _ in range(5):
        x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda z: net(z).flatten(), x).reshape(16, -1)
        assert np.linalg.svd(jac.numpy(), compute_uv=False)[0] <= bound
    x, x2 = torch.rand(2, 1, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        ratio = (net(x) - net(x2)).norm() / (x - x2).norm()
    assert float(ratio) <= bound


def test_unknown_layers_are_refused():
    with pytest.raises(TypeError, match="MaxPool2d"):
        lipschitz_upper_bound(nn.Sequential(nn.MaxPool2d(2)))
    with pytest.raises(TypeError, match="grouped"):
        conv_lipschitz_upper_bound(nn.Conv2d(2, 2, 3, groups=2))
