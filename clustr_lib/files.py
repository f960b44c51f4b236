"""Files written so that a kill, a second process or a flipped byte never passes for a result:
atomic writes under unique temporary names with ordinary permissions, SHA-256 digests, and an
exclusive lock per run."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> Path:
    """Write ``path`` by ``write(temporary_path)`` into a uniquely named temporary file of the
    same folder, then rename it into place: readers see the old file or the whole new one,
    two writers never share a temporary, and a failed write leaves nothing behind. The file
    gets the permissions of an ordinary file (``0o666`` less the umask), not ``mkstemp``'s
    ``0o600``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_file(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def move_aside(path) -> Path:
    """Rename a damaged file to ``<name>.damaged`` (numbered if taken) and return the new path,
    so that it is kept for inspection but never read again."""
    path = Path(path)
    target = path.with_name(path.name + ".damaged")
    number = 1
    while target.exists():
        target = path.with_name(f"{path.name}.damaged{number}")
        number += 1
    os.replace(path, target)
    return target


def remove_temporaries(directory, stem: str) -> list[Path]:
    """Delete the temporary files that writers of ``stem`` left in ``directory`` when they were
    killed (call it only while holding that stem's :func:`lock`)."""
    removed = []
    for path in Path(directory).glob(f".{stem}*.tmp"):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def lock(path):
    """Hold an exclusive lock on ``path`` (created if needed) for the block: a second process
    asking for the same lock waits until the first leaves the block, or dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_writable(*directories) -> None:
    """Raise ``PermissionError`` naming the folder unless every one of ``directories`` can be
    created and written (checked before any training, so that no result is lost at the end)."""
    for directory in directories:
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-check.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise PermissionError(
                f"cannot write results to {directory} ({err.strerror}); choose another "
                "results_dir or fix its permissions before training"
            ) from None


# Filesystems whose fcntl locks are not shared between machines, or not at all (NFS without a
# lock daemon, SMB/CIFS, FUSE mounts such as sshfs, VirtualBox and 9p shares)
WEAK_LOCK_FILESYSTEMS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "vboxsf"})


def filesystem_type(path, mounts: str = "/proc/mounts") -> str | None:
    """The type of the filesystem holding ``path`` (the longest mount point above it in
    ``mounts``), or ``None`` where that cannot be read (not Linux)."""
    target = os.path.realpath(path)
    best, kind = "", None
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def weak_locks(path) -> str | None:
    """The filesystem type of ``path`` when its locks may not hold across machines, else
    ``None``."""
    kind = filesystem_type(path)
    if kind is None:
        return None
    return kind if kind in WEAK_LOCK_FILESYSTEMS or kind.startswith("fuse") else None
