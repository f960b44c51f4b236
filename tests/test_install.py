"""The set-up must end with a working torchvision (its compiled operators included), installed
from a lock that agrees with pyproject.toml."""

import hashlib
import re
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement


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


ROOT = Path(__file__).resolve().parent.parent


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """The lock's pins, read here independently of the library."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[normalised(name)] = version
    return out


def test_the_lock_pins_every_dependency_within_pyprojects_ranges():
    """Issue 16: the lock and pyproject.toml never disagree (every dependency, the optional
    groups included, is pinned to one version its range admits)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [
        r for group in project["optional-dependencies"].values() for r in group
    ]
    locked = pins(ROOT / "requirements.lock")
    assert "clustr-lib" not in locked  # the library itself is installed from the tree
    for text in wanted:
        req = Requirement(text)
        name = normalised(req.name)
        assert name in locked, f"{req.name} is not in requirements.lock"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={locked[name]}, outside {req.specifier}"
        )


def test_environment_yml_installs_the_lock():
    text = (ROOT / "environment.yml").read_text()
    assert "-r requirements.lock" in text and "--no-deps -e ." in text


def test_provenance_names_the_lock_and_whether_this_environment_is_it():
    from clustr_lib import records

    lock = records.provenance()["environment"]
    expected = hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()[:16]
    assert lock["lock_sha256"] == expected
    mismatched = [
        name
        for name, version in pins(ROOT / "requirements.lock").items()
        if version != _installed(name)
    ]
    assert lock["matches_lock"] == (not mismatched)


def _installed(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_a_lock_line_without_one_version_is_refused():
    from clustr_lib import records

    assert records.lock_pins("# c\nFoo_Bar.baz==1.0\n\n") == {"foo-bar-baz": "1.0"}
    with pytest.raises(ValueError, match="pin"):
        records.lock_pins("numpy>=1.0\n")
