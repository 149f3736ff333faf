"""The safetensors format, for other tools: the model's arrays under their
``named_state`` names, the optimizer's under ``optimizer.<slot>.<name>``, the JSON
document in the string metadata (``xpnet``), and a SHA-256 of the document and every
tensor (``xpnet.sha256``), since the format has no checksum of its own. Needs the
``safetensors`` package (``pip install "xpnet[safetensors]"``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .common import CheckpointError

#: A path ending so is written in this format (reading tells the formats apart by content).
SAFETENSORS_SUFFIX = ".safetensors"
_ST_DOC, _ST_HASH, _ST_OPT = "xpnet", "xpnet.sha256", "optimizer."
_ST_DTYPES = ("F32", "F64")  # PARAM_DTYPES as safetensors names them


def import_safetensors() -> Any:
    """The ``safetensors`` package (with ``safetensors.numpy``), or ImportError saying
    how to install it."""
    try:
        import safetensors
        import safetensors.numpy
    except ImportError as e:
        raise ImportError(f"safetensors checkpoints need the safetensors package ({e}); "
                          f"install it with: pip install \"xpnet[safetensors]\"") from None
    return safetensors


def st_name(key: str) -> str:
    """``param/0.weight`` -> ``0.weight``, ``opt/m/0.weight`` -> ``optimizer.m.0.weight``."""
    kind, _, rest = key.partition("/")
    return rest if kind == "param" else _ST_OPT + rest.replace("/", ".", 1)


def st_key(name: str) -> str:
    """The inverse of :func:`st_name` (slot names hold no dot; state names never start
    with ``optimizer.``)."""
    if name.startswith(_ST_OPT):
        return "opt/" + name[len(_ST_OPT):].replace(".", "/", 1)
    return f"param/{name}"


def digest(doc: bytes, tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 of the document and of each tensor's name, dtype, shape and bytes, in name
    order, so any change to what load would use shows."""
    h = hashlib.sha256(doc)
    for name in sorted(tensors):
        a = tensors[name]
        h.update(json.dumps([name, a.dtype.name, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def safetensors_bytes(doc: bytes, arrays: dict[str, np.ndarray]) -> bytes:
    """The whole file: ``arrays`` (keys ``param/...``, ``opt/...``), the document and
    its checksum."""
    st = import_safetensors()
    tensors = {st_name(k): np.ascontiguousarray(a) for k, a in arrays.items()}
    return st.numpy.save(tensors, metadata={_ST_DOC: doc.decode(),
                                            _ST_HASH: digest(doc, tensors)})


def read_safetensors(path: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    """The document and arrays (keys ``param/...``, ``opt/...``) of a safetensors
    checkpoint, its checksum verified."""
    st = import_safetensors()
    tensors = {}
    try:
        # safe_open checks that the header's offsets tile the file before any data is read
        with st.safe_open(str(path), framework="numpy") as f:
            info = f.metadata() or {}
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype not in _ST_DTYPES:
                    raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}, "
                                          f"expected F32 or F64 (float32 or float64)")
                tensors[name] = f.get_tensor(name)
    except st.SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or "
                              f"corrupted): {e}") from None
    if _ST_DOC not in info or _ST_HASH not in info:
        raise CheckpointError(f"{path}: a safetensors file without xpnet's metadata (keys "
                              f"{sorted(info)}, expected {_ST_DOC!r} and {_ST_HASH!r}); "
                              f"read it with safetensors.numpy.load_file")
    doc = info[_ST_DOC].encode()
    found = digest(doc, tensors)
    if found != info[_ST_HASH]:
        raise CheckpointError(f"{path}: corrupted: the contents' SHA-256 is {found}, the "
                              f"file records {info[_ST_HASH]!r}")
    return doc, {st_key(name): a for name, a in tensors.items()}
