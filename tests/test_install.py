"""The set-up must end with a working torchvision (its compiled operators included)."""

import torch


def test_torchvision_imports_and_its_operators_run():
    import torchvision
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.01], [5.0, 5.0, 6.0, 6.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert torchvision.__version__


def test_library_imports():
    import clustr_lib
    from clustr_lib import attacks, certify, classify, magnet  # noqa: F401

    assert clustr_lib.__version__
