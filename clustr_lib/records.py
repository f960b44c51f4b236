"""Results as data: every number the book shows is written to a small JSON with its
provenance (git commit, device, library versions, wall time), under one key scheme.

* :func:`save_json` writes atomically, :func:`to_plain` makes NumPy/torch values JSON-ready;
* :func:`record_path` names every record — a trained run and each evaluation of it — by the
  run's dataset, method and seed and the hash of what determines it;
* :class:`RunRecord` is the typed record of one trained run (:func:`clustr_lib.runs.run`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import subprocess
import warnings
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import sklearn
import torch

from . import __version__
from .files import atomic_write


def device_name(device: torch.device | str | None = None) -> str:
    """Human-readable name of the device that ran a computation (default: the GPU if any)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def git_commit() -> str:
    """Commit of the working tree that produced a result (``unknown`` outside git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=here,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=here,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


LOCK_FILE = Path(__file__).resolve().parent.parent / "requirements.lock"


def lock_pins(text: str) -> dict[str, str]:
    """``{normalised name: version}`` of a lock file's ``name==version`` lines (PEP 503 names;
    comments and blank lines skipped)."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise ValueError(f"lock line {line!r} does not pin one version (name==version)")
        pins[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
    return pins


@functools.cache
def environment_lock() -> dict:
    """The lock file the recorded results were made with (``requirements.lock``): its SHA-256
    and whether every distribution it pins is installed at that version here (the first few
    that are not, by name)."""
    if not LOCK_FILE.exists():  # an installed copy of the library, outside the repository
        return {"lock_sha256": None}
    text = LOCK_FILE.read_text()
    differ = []
    for name, version in lock_pins(text).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            differ.append(f"{name} {installed or 'missing'} (lock: {version})")
    return {
        "lock_sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
        "matches_lock": not differ,
        **({"differs_from_lock": differ[:5]} if differ else {}),
    }


def provenance(device=None, **extra) -> dict:
    """Where a result came from: commit, device, versions, the lock file and whether this
    environment is the lock's (:func:`environment_lock`), time, plus ``extra`` fields."""
    return {
        "git_commit": git_commit(),
        "device": device_name(device),
        "versions": {
            "clustr_lib": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "python": platform.python_version(),
        },
        "environment": environment_lock(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def to_plain(value):
    """JSON-ready copy of ``value``: NumPy/torch scalars and arrays become numbers and lists."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if torch.is_tensor(value):
        return to_plain(value.detach().cpu().numpy())
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_json(path, data: dict) -> Path:
    """Write ``data`` as JSON atomically (:func:`clustr_lib.files.atomic_write`): a killed run
    never leaves a half-written file, two writers never share a temporary."""
    text = json.dumps(to_plain(data), indent=2, allow_nan=True) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def load_json(path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def config_hash(value: dict) -> str:
    """Short SHA-1 of the canonical JSON of ``value``."""
    text = json.dumps(to_plain(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


_IDENTITIES = weakref.WeakKeyDictionary()  # data object → its identity


def data_identity(data) -> dict:
    """What identifies the data a run was trained and evaluated on, for its config (and so its
    cache key): the dataset, both split sizes and a SHA-256 of the labels and images in order
    (a subset, another subset seed or other files give another identity). Computed once per
    data object."""
    cached = _IDENTITIES.get(data)
    if cached is None:
        digest = hashlib.sha256()
        for tensor in (data.y_train, data.y_test, data.x_train, data.x_test):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        cached = {
            "dataset": data.name,
            "train_size": int(len(data.y_train)),
            "test_size": int(len(data.y_test)),
            "sha256": digest.hexdigest()[:16],
        }
        _IDENTITIES[data] = cached
    return dict(cached)


def record_path(
    directory, config: dict, kind: str | None = None, key: dict | None = None, suffix: str = ".json"
) -> Path:
    """The one naming scheme of the results cache: ``<dataset>-<method>-s<seed>[-<kind>]-<hash>``
    in ``directory``, hashing ``key`` (default: the run's ``config``)."""
    stem = f"{config['dataset']}-{config['method']}-s{config['seed']}"
    if kind:
        stem += f"-{kind}"
    return Path(directory) / f"{stem}-{config_hash(config if key is None else key)}{suffix}"


@dataclass
class RunRecord:
    """One trained run: its configuration, its measurements at the protocol, training time and
    provenance (the JSON :func:`clustr_lib.runs.run` writes).

    Attributes:
        config: everything that determined the run (hashed for the cache).
        clean_accuracy: on the whole test set (``test_size`` images).
        pgd: ``{objective: {"clean": accuracy on the attacked points, "robust": {rule: {steps:
            accuracy}}}}`` at the protocol's PGD (:func:`clustr_lib.protocol.pgd_params`) on
            ``eval_size`` points, for each of its rules.
        training: ``{"seconds", "stages", "final_train_accuracy"}``.
    """

    config: dict
    clean_accuracy: float
    test_size: int
    eval_size: int
    pgd: dict
    training: dict
    provenance: dict
    attack_seconds: dict = field(default_factory=dict)
    weights_sha256: str | None = None  # of models/<run>.pt, verified when the model is loaded

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def created(self) -> str:
        return self.provenance["created"]

    def pgd_accuracy(self, objective: str, steps: int, rule: str) -> float:
        """Robust accuracy under the protocol's PGD-``steps`` with ``objective`` and ``rule``."""
        return self.pgd[objective]["robust"][rule][str(steps)]

    def to_json(self) -> dict:
        return {
            "config": self.config,
            "format": 2,  # 1: flat metric keys, migrated (issue 9)
            "metrics": {
                "clean_accuracy": self.clean_accuracy,
                "test_size": self.test_size,
                "eval_size": self.eval_size,
                "pgd": self.pgd,
            },
            "training": self.training,
            "attack_seconds": self.attack_seconds,
            "weights_sha256": self.weights_sha256,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        """Read a run record (the JSON of :meth:`to_json`)."""
        metrics = data["metrics"]
        return cls(
            config=data["config"],
            clean_accuracy=metrics["clean_accuracy"],
            test_size=metrics["test_size"],
            eval_size=metrics["eval_size"],
            pgd=metrics["pgd"],
            training=data["training"],
            provenance=data["provenance"],
            attack_seconds=data.get("attack_seconds", {}),
            weights_sha256=data.get("weights_sha256"),
        )


def load_run(config: dict, directory) -> RunRecord | None:
    """The recorded run of ``config`` in ``directory``, or ``None``; a corrupt or partial file
    is reported with a warning and treated as missing (it will be recomputed)."""
    path = record_path(directory, config)
    if not path.exists():
        return None
    try:
        data = load_json(path)
        if data.get("config") != to_plain(config):
            raise ValueError("it records a different config")
        return RunRecord.from_json(data)
    except (ValueError, KeyError, TypeError, OSError) as err:
        warnings.warn(f"ignoring unreadable result {path} ({err!r}); recomputing", stacklevel=2)
        return None
