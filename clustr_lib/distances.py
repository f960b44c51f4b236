"""Squared Euclidean distances in feature space, the quantity every ClusTR formula uses."""

from __future__ import annotations

import torch


def squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` matrix of ``‖points_i − centres_c‖²`` (Sec. 3.1, Eq. 3, Eq. 4).

    Uses the expansion ``‖a‖² − 2a·b + ‖b‖²`` (one matrix product, no ``[N, C, d]``
    intermediate) and clamps the round-off negatives at zero. Differentiable in both
    arguments; the result has the dtype of ``points``.
    """
    centres = centres.to(points.dtype)
    cross = points @ centres.T
    sq = (points * points).sum(1, keepdim=True) - 2.0 * cross + (centres * centres).sum(1)
    return sq.clamp_min(0.0)
