"""Theorem 1's certified ℓ2 radius for nearest-cluster classifiers (Sec. 3.1, App. A),
certified-accuracy curves (Sec. 4.1, Fig. 3) and Lipschitz constants.

All radii are computed in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .checks import as_float_tensor, as_label_tensor, check_choice, check_positive
from .distances import squared_distances
from .models import BasicBlock, Normalize

REDUCTIONS = ("sound", "paper")


def nearest_cluster_predict(embeddings, centroids, centroid_classes) -> torch.Tensor:
    """``[N]`` class of the nearest centroid (the classifier Theorem 1 certifies)."""
    sq = squared_distances(
        torch.as_tensor(embeddings).double(), torch.as_tensor(centroids).double()
    )
    return torch.as_tensor(centroid_classes).to(sq.device)[sq.argmin(1)]


def certified_radius(
    embeddings, centroids, centroid_classes, lipschitz: float, reduction: str = "sound"
) -> torch.Tensor:
    """``[N]`` ℓ2 radius within which the nearest-cluster prediction cannot change.

    Theorem 1, for the nearest centroid ``μ₁`` and a centroid ``μ₂`` of another class::

        r = (‖f − μ₂‖² − ‖f − μ₁‖²) / (2 L ‖μ₂ − μ₁‖)

    ``reduction="paper"`` takes ``μ₂`` as the nearest centroid of another class
    (App. A.1). ``reduction="sound"`` takes the minimum of the bound over every
    centroid of another class, i.e. the feature-space distance to the nearest
    bisector divided by ``L``, which is what the proof guarantees: the nearest other
    centroid need not have the nearest bisector, so ``paper ≥ sound`` and the paper's
    reduction can over-state the radius.

    Args:
        embeddings: ``[N, d]`` features ``f_θ(x)``.
        centroids: ``[C, d]``; centroid_classes: ``[C]``.
        lipschitz: an upper bound ``L`` on the ℓ2 Lipschitz constant of ``f_θ``.
        reduction: ``"sound"`` or ``"paper"``.
    """
    check_choice(reduction, "reduction", REDUCTIONS)
    lipschitz = check_positive(lipschitz, "lipschitz")
    feats = as_float_tensor(embeddings, "embeddings", ndim=2).detach().double()
    mus = as_float_tensor(centroids, "centroids", ndim=2).detach().double().to(feats.device)
    classes = as_label_tensor(centroid_classes, "centroid_classes", mus.shape[0]).to(feats.device)
    if feats.shape[1] != mus.shape[1]:
        raise ValueError("embeddings and centroids differ in dimension")
    if len(torch.unique(classes)) < 2:
        raise ValueError("a certificate needs centroids of at least two classes")

    sq = squared_distances(feats, mus)
    nearest = sq.argmin(1)
    other = classes[None, :] != classes[nearest][:, None]
    gap = sq - sq.gather(1, nearest[:, None])
    separation = torch.cdist(mus[nearest], mus)  # ‖μ_j − μ₁‖ for every j, [N, C]
    bound = gap / (2.0 * lipschitz * separation.clamp_min(torch.finfo(torch.float64).tiny))
    bound = bound.masked_fill(~other, float("inf"))
    if reduction == "sound":
        return bound.min(1).values
    runner_up = sq.masked_fill(~other, float("inf")).argmin(1)
    return bound.gather(1, runner_up[:, None]).squeeze(1)


def certified_accuracy(radii, correct, thresholds) -> np.ndarray:
    """Certified accuracy at each radius ``r`` in ``thresholds`` (Sec. 4.1).

    The fraction of points that are correctly classified *and* whose radius exceeds
    ``r`` (strictly, as in the paper's definition).
    """
    radii = np.asarray(torch.as_tensor(radii).cpu(), dtype=np.float64)
    correct = np.asarray(torch.as_tensor(correct).cpu(), dtype=bool)
    if radii.shape != correct.shape or radii.ndim != 1:
        raise ValueError("radii and correct must be 1-D arrays of the same length")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    return ((radii[None, :] > thresholds[:, None]) & correct[None, :]).mean(1)


def spectral_norm(weight) -> float:
    """Exact ℓ2 operator norm (largest singular value) of a linear map's matrix."""
    weight = torch.as_tensor(weight).detach().double()
    if weight.ndim != 2:
        raise ValueError(f"a linear map's weight must be 2-D, got shape {tuple(weight.shape)}")
    return float(torch.linalg.matrix_norm(weight, ord=2))


@torch.no_grad()
def minimal_adversarial_distance_2d(
    predict,
    x,
    *,
    max_radius: float,
    n_angles: int = 720,
    n_radii: int = 200,
    bisection_steps: int = 30,
    chunk: int = 16,
) -> torch.Tensor:
    """``[N]`` smallest ℓ2 distance from each 2-D point to an input of another predicted class.

    An exact search up to grid resolution (feasible in 2-D only): along each of
    ``n_angles`` directions, find the first radius in a grid of ``n_radii`` where the
    prediction changes, refine it by bisection, and take the minimum over directions.
    ``inf`` when no change occurs within ``max_radius``. It can only over-estimate the
    true distance by the angular resolution (relative error ``≈ 1 − cos(π/n_angles)``)
    or where a region thinner than the radial grid is crossed.

    Args:
        predict: maps ``[M, 2]`` inputs to ``[M]`` classes.
        x: ``[N, 2]`` points.
    """
    x = as_float_tensor(x, "x", ndim=2)
    if x.shape[1] != 2:
        raise ValueError("the exact search works in 2-D only")
    check_positive(max_radius, "max_radius")
    angles = torch.arange(n_angles, dtype=x.dtype, device=x.device) * (2 * torch.pi / n_angles)
    dirs = torch.stack([angles.cos(), angles.sin()], 1)  # [A, 2]
    radii = torch.linspace(0, max_radius, n_radii + 1, dtype=x.dtype, device=x.device)[1:]
    out = []
    for first in range(0, len(x), chunk):
        pts = x[first : first + chunk]  # [n, 2]
        base = predict(pts)  # [n]
        grid = pts[:, None, None] + radii[None, None, :, None] * dirs[None, :, None]  # [n, A, R, 2]
        changed = predict(grid.reshape(-1, 2)).view(grid.shape[:3]) != base[:, None, None]
        hit = changed.any(2)
        k = changed.float().argmax(2)  # first change
        hi = radii[k]
        lo = torch.where(k > 0, radii[(k - 1).clamp_min(0)], torch.zeros_like(hi))
        for _ in range(bisection_steps):
            mid = (lo + hi) / 2
            moved = pts[:, None] + mid[..., None] * dirs[None]
            flip = predict(moved.reshape(-1, 2)).view(mid.shape) != base[:, None]
            hi, lo = torch.where(flip, mid, hi), torch.where(flip, lo, mid)
        hi = torch.where(hit, hi, torch.full_like(hi, float("inf")))
        out.append(hi.min(1).values)
    return torch.cat(out)


def max_jacobian_norm(f, points, chunk: int = 4096) -> float:
    """Largest spectral norm of the Jacobian of ``f`` over ``points``.

    For a ReLU network the Jacobian is constant on each linear region, so evaluating
    it on a fine grid over a region enumerates the regions of that grid: the result is
    the Lipschitz constant of ``f`` restricted to that region (up to regions thinner
    than the grid), a tight estimate, not a global upper bound.
    """
    points = as_float_tensor(points, "points", ndim=2)
    jac = torch.func.vmap(torch.func.jacrev(f))
    best = 0.0
    for first in range(0, len(points), chunk):
        with torch.no_grad():
            j = jac(points[first : first + chunk])
        best = max(best, float(torch.linalg.matrix_norm(j.double(), ord=2).max()))
    return best


# ---------------------------------------------------------------------------------------
# An honest ℓ2 Lipschitz upper bound for the ResNet-18 embedder (chapter 10).


def conv_lipschitz_upper_bound(conv: nn.Conv2d) -> float:
    """Upper bound on the ℓ2 operator norm of a zero-padded 2-D convolution.

    The convolution is ``y = Σ_o W_o S_o x`` over the ``k_h·k_w`` kernel offsets ``o``,
    with ``W_o`` the ``[c_out, c_in]`` matrix at offset ``o`` and ``S_o`` a zero-padded
    shift (operator norm ≤ 1; a stride only drops outputs). Two bounds follow, and the
    smaller is returned:

    * the triangle inequality, ``Σ_o ‖W_o‖₂``;
    * ``y = [W_1 … W_k] · [S_1 x; …; S_k x]`` with ``‖[S_o x]_o‖ ≤ √k ‖x‖``, so
      ``‖conv‖ ≤ √(k_h k_w) · ‖W reshaped to [c_out, c_in·k_h·k_w]‖₂``.

    Both hold for any input size, stride, zero padding and dilation (not for groups).
    """
    if conv.groups != 1:
        raise TypeError("grouped convolutions are not supported")
    if conv.padding_mode != "zeros":
        raise TypeError(f"padding mode {conv.padding_mode!r} is not supported (zeros only)")
    weight = conv.weight.detach().double()  # [c_out, c_in, kh, kw]
    per_offset = torch.linalg.matrix_norm(weight.permute(2, 3, 0, 1), ord=2).sum()
    offsets = weight.shape[2] * weight.shape[3]
    stacked = offsets**0.5 * spectral_norm(weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1))
    return float(min(per_offset, stacked))


def batchnorm_lipschitz(bn: nn.BatchNorm2d) -> float:
    """Exact ℓ2 Lipschitz constant of batch norm in eval mode: ``max_c |γ_c| / √(var_c + ε)``."""
    if bn.training or bn.running_var is None:
        raise ValueError("batch norm must be in eval mode with running statistics")
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(bn.running_var).double()
    return float((gamma.abs() / (bn.running_var.double() + bn.eps).sqrt()).max())


def lipschitz_upper_bound(module: nn.Module, input_size: int = 32) -> float:
    """Upper bound on the ℓ2 Lipschitz constant of ``module`` on ``[C, input_size, input_size]``
    inputs (Theorem 1 needs ``L``; chapter 10 computes it for ResNet-18).

    Composition multiplies bounds; a residual block ``relu(main(x) + shortcut(x))`` is
    bounded by ``L(main) + L(shortcut)``. Rules: convolutions
    (:func:`conv_lipschitz_upper_bound`), batch norm in eval mode (exact), the input
    normalisation (``1 / min std``), ReLU and LeakyReLU with slope ≤ 1 (1), linear layers
    (exact spectral norm), and global average pooling over ``H × W`` (exactly ``1/√(HW)``).
    Any other layer raises.
    """
    return _lipschitz(module, int(input_size))[0]


def _lipschitz(module, size):
    """``(bound, output spatial size)`` of ``module`` on ``size × size`` inputs."""
    if isinstance(module, nn.Sequential):
        bound = 1.0
        for layer in module:
            factor, size = _lipschitz(layer, size)
            bound *= factor
        return bound, size
    if isinstance(module, BasicBlock):
        conv1, out = conv_lipschitz_upper_bound(module.conv1), _conv_size(module.conv1, size)
        main = (
            conv1
            * batchnorm_lipschitz(module.bn1)
            * conv_lipschitz_upper_bound(module.conv2)
            * batchnorm_lipschitz(module.bn2)
        )
        shortcut = _lipschitz(module.shortcut, size)[0] if len(module.shortcut) else 1.0
        return main + shortcut, out
    if isinstance(module, nn.Conv2d):
        return conv_lipschitz_upper_bound(module), _conv_size(module, size)
    if isinstance(module, nn.BatchNorm2d):
        return batchnorm_lipschitz(module), size
    if isinstance(module, Normalize):
        return float(1.0 / module.std.detach().double().min()), size
    if isinstance(module, (nn.ReLU, nn.Identity, nn.Flatten)) or (
        isinstance(module, nn.LeakyReLU) and abs(module.negative_slope) <= 1
    ):
        return 1.0, size
    if isinstance(module, nn.Linear):
        return spectral_norm(module.weight), size
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
        return 1.0 / size, 1
    raise TypeError(f"no Lipschitz rule for layer {type(module).__name__}")


def _conv_size(conv: nn.Conv2d, size: int) -> int:
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    return (size + 2 * p - d * (k - 1) - 1) // s + 1
