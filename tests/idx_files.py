"""Fashion-MNIST's IDX files, written by the tests themselves (never Debian's package or a
download): tests/test_data.py and tests/test_gpu_slice.py."""

import gzip
import struct

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: big-endian magic 0x0000080D (D = dims; 0x08 = uint8), dims, data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder, arrays, gz=True):
    """The files as Debian ships them (gzip-recompressed: torchvision's md5 of the .gz fails)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw, mtime=0))
        else:
            (folder / name).write_bytes(raw)
