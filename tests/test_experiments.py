"""Results as data: atomic JSON writes and provenance."""

import json

import numpy as np
import pytest
import torch

from clustr_lib import experiments, paper


def test_save_json_converts_arrays_and_is_atomic(tmp_path):
    path = tmp_path / "r.json"
    experiments.save_json(path, {"a": np.float64(1.5), "b": torch.tensor([1, 2]), "c": np.arange(3)})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [1, 2], "c": [0, 1, 2]}
    with pytest.raises(TypeError):
        experiments.save_json(path, {"bad": object()})
    assert json.loads(path.read_text())["a"] == 1.5  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_provenance_names_commit_device_and_versions():
    prov = experiments.provenance(wall_seconds=1.0)
    assert prov["git_commit"] and prov["device"].startswith("CPU")
    assert {"torch", "numpy", "clustr_lib"} <= set(prov["versions"])
    assert prov["wall_seconds"] == 1.0


def test_verdicts_only_at_the_papers_scale():
    assert paper.verdict(True, "smoke") == "not run at this scale"
    assert paper.verdict(True, "full") == "reproduced"
    assert paper.verdict(False, "full") == "not reproduced"
