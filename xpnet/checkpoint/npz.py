"""The npz format: NumPy's ``.npz`` zip archive, each array a ``.npy`` member
(``param/<name>``, ``opt/<slot>/<name>``) and the JSON document as uint8 bytes under
``__meta__``; no pickle.

Reading checks every member before a byte of its data is read: its compression method,
its sizes against the file's, its ``.npy`` header (version, dtype, shape) against the
bytes it holds; zip's CRC is checked by reading each member to its end.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .common import PARAM_DTYPES, CheckpointError, dtype_text

#: The member that holds the JSON document.
META = "__meta__"
# Deflate never expands more than about 1032:1, so no honest member declares more.
_DEFLATE_RATIO = 1032
_CHUNK = 1 << 24


def write_npz(f: BinaryIO, doc: bytes, arrays: dict[str, np.ndarray]) -> None:
    """Write the document and ``arrays`` (keys ``param/...``, ``opt/...``) to ``f``."""
    np.savez(f, **arrays, **{META: np.frombuffer(doc, dtype=np.uint8)})


def read_npz(path: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    """The document and the arrays of the npz checkpoint at ``path``, every member
    checked before it is read (zipfile's and NumPy's own errors pass through: the
    caller names them damage)."""
    arrays = _read_arrays(path)
    raw = arrays.pop(META)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path}: entry '{META}' is {dtype_text(raw.dtype)} of shape "
                              f"{raw.shape}, expected uint8 bytes of shape (n,)")
    return raw.tobytes(), arrays


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every member of the zip at ``path`` as an array, each checked before it is read."""
    arrays: dict[str, np.ndarray] = {}
    with open(path, "rb") as fh:
        if fh.read(6) == b"\x93NUMPY":
            raise CheckpointError(f"{path}: a single .npy array, not an xpnet checkpoint "
                                  f"(an .npz archive with a {META} entry)")
        fh.seek(0)
        size = os.fstat(fh.fileno()).st_size
        with zipfile.ZipFile(fh) as zf:
            if f"{META}.npy" not in zf.namelist():
                raise CheckpointError(f"{path}: not an xpnet checkpoint (no {META} entry)")
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                if key == info.filename:
                    raise CheckpointError(f"{path}: entry {info.filename!r} is not a .npy array")
                if key in arrays:
                    raise CheckpointError(f"{path}: entry {info.filename!r} appears twice")
                arrays[key] = _read_member(path, zf, info, size)
    return arrays


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo,
                 file_size: int) -> np.ndarray:
    key = info.filename.removesuffix(".npy")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(f"{path}: entry {key!r} uses zip compression method "
                              f"{info.compress_type}, expected stored (0) or deflated (8)")
    # bound what the header may make us allocate by what the file holds
    ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_RATIO
    if info.compress_size > file_size or info.file_size > ratio * info.compress_size:
        raise CheckpointError(f"{path}: entry {key!r} declares {info.file_size} bytes from "
                              f"{info.compress_size} stored, in a file of {file_size} bytes")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise CheckpointError(f"{path}: entry {key!r} has .npy format {version}, "
                                  f"expected (1, 0) or (2, 0)")
        allowed = ("uint8",) if key == META else PARAM_DTYPES
        if dtype.hasobject or not dtype.isnative or dtype.name not in allowed:
            raise CheckpointError(f"{path}: entry {key!r} has dtype {dtype_text(dtype)}, "
                                  f"expected {' or '.join(allowed)}")
        if any(d < 0 for d in shape):
            raise CheckpointError(f"{path}: entry {key!r} declares shape {shape}, expected "
                                  f"sizes >= 0")
        nbytes = math.prod(shape) * dtype.itemsize
        if f.tell() + nbytes != info.file_size:
            raise CheckpointError(
                f"{path}: entry {key!r} declares shape {shape} ({nbytes} bytes of data), but "
                f"holds {info.file_size - f.tell()} bytes of data"
            )
        flat = np.empty(math.prod(shape), dtype=dtype)
        view, got = memoryview(flat.view(np.uint8)), 0
        while got < nbytes:  # in chunks: read() of it all would hold a second copy
            n = f.readinto(view[got:got + _CHUNK])
            if not n:
                break
            got += n
        if got != nbytes or f.read(1):  # reading to the end also checks the CRC
            raise CheckpointError(f"{path}: entry {key!r} is truncated ({got} of {nbytes} "
                                  f"bytes of data)")
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
