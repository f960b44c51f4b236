"""Results as data: every number the book shows is written to a small JSON with its
provenance (git commit, device, library versions, wall time, profile)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch


def device_name(device: torch.device | str | None = None) -> str:
    """Human-readable name of the device that ran a computation."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_commit() -> str:
    """Commit of the working tree that produced a result (``unknown`` outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(device=None, **extra) -> dict:
    """Where a result came from: commit, device, versions, time, plus ``extra`` fields."""
    import sklearn

    from . import __version__
    return {
        "git_commit": git_commit(),
        "device": device_name(device),
        "versions": {"clustr_lib": __version__, "torch": torch.__version__,
                     "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                     "python": platform.python_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def _plain(value):
    """JSON-ready copy of numpy/torch scalars and arrays."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if torch.is_tensor(value):
        return _plain(value.detach().cpu().numpy())
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_json(path, data: dict) -> Path:
    """Write ``data`` as JSON atomically: a killed run never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_plain(data), handle, indent=2, allow_nan=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_json(path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def glue_all(values: dict) -> None:
    """Glue each ``key: value`` into the executing notebook for the book's pages.

    Values are converted to plain Python numbers and strings first: the book formats a
    glued ``np.float64(…)`` repr as text it cannot parse.
    """
    from myst_nb import glue

    for key, value in values.items():
        glue(key, _plain(value), display=False)
