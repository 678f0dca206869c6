"""Checks of the ``--data-path`` blend and its ``.bin``/``.idx`` files, before any model is built.

megatron-core reads a domain's ``.idx`` (a header, then sequence lengths, pointers and document
indices) and memory-maps its ``.bin``; a truncated ``.bin`` or an empty domain then fails deep
inside with a numpy message that names no file. :func:`check_data_file` reads the same header
(the layout of ``megatron.core.datasets.indexed_dataset``) and compares the ``.bin`` size with
what the index needs, and returns a cheap identity of the pair that the sidecar records so a
resume can tell the same data from other files: both sizes, the ``.idx``'s SHA-256 and a
BLAKE2b of the ``.bin``'s content (the whole file up to 64 MiB; above, 64 chunks of 64 KiB at
fixed offsets spread over the file, first and last included, so a multi-GB file costs a 4 MiB
read). A same-size edit of a ``.bin`` is told when it touches a hashed byte: always up to
64 MiB, within a sampled chunk above. No torch, no megatron-core.
"""

import hashlib
import math
import os
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from megatron_velocitune.core.errors import DataError

__all__ = ["check_data_file", "parse_data_path"]

_INDEX_HEADER = b"MMIDIDX\x00\x00"
# megatron.core.datasets.indexed_dataset.DType codes -> item size in bytes.
_ITEM_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}
# .idx files up to this size are hashed whole; larger ones by their head, tail and size.
_HASH_WHOLE = 64 << 20
_HASH_PART = 8 << 20
# .bin files up to _HASH_WHOLE are hashed whole; larger ones by this many chunks of this size.
_BIN_SAMPLES = 64
_BIN_CHUNK = 64 << 10


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_data_path(data_path: Sequence[str]) -> Tuple[List[str], Optional[List[float]]]:
    """Megatron-LM's ``--data-path w1 p1 w2 p2 ...`` (or ``p1 p2 ...``), every weight checked.

    The split between the two forms is megatron-core's (``get_blend_from_list``): an even
    count whose every other item is a number is weights and prefixes, anything else prefixes.
    Here a mix (some of those items numbers, some not) is an error instead of an assertion.

    Args:
        data_path (Sequence[str]): the flag's values.

    Returns:
        Tuple[List[str], Optional[List[float]]]: prefixes and weights (None: prefixes alone).

    Raises:
        DataError: a weight that is not a number, not finite or not > 0 (named as given).
    """
    items = list(data_path)
    if not items:
        raise DataError("--data-path: no prefixes given")
    if len(items) % 2:
        return items, None
    raw, prefixes = items[0::2], items[1::2]
    numeric = [_is_number(w) for w in raw]
    if not any(numeric):
        return items, None
    for w, p, ok in zip(raw, prefixes, numeric):
        if not ok:
            raise DataError(f"--data-path: weight {w!r} of {p} is not a number")
    weights = []
    for w, p in zip(raw, prefixes):
        value = float(w)
        if not math.isfinite(value) or value <= 0.0:
            raise DataError(f"--data-path: weight {w!r} of {p} must be a finite number > 0")
        weights.append(value)
    return prefixes, weights


def _sha256(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= _HASH_WHOLE:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f.read(_HASH_PART))
            f.seek(size - _HASH_PART)
            h.update(f.read(_HASH_PART))
            h.update(str(size).encode())
    return h.hexdigest()


def _bin_sample(path: str, size: int) -> str:
    """BLAKE2b of the size and the content (whole, or fixed-offset chunks of a large file)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= _HASH_WHOLE:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            for i in range(_BIN_SAMPLES):
                f.seek((size - _BIN_CHUNK) * i // (_BIN_SAMPLES - 1))
                h.update(f.read(_BIN_CHUNK))
    return h.hexdigest()


def check_data_file(
    prefix: str, flag: str = "--data-path", hash_index: bool = True
) -> Dict[str, object]:
    """Check one domain's ``.bin``/``.idx`` pair and return its identity.

    Args:
        prefix (str): the path prefix.
        flag (str): the flag that named it, for the error line.
        hash_index (bool): hash the files (``idx_sha256`` and ``bin_blake2b`` are None
            without).

    Returns:
        Dict[str, object]: ``{"documents", "bin_bytes", "idx_bytes", "idx_sha256",
        "bin_blake2b"}``.

    Raises:
        FileNotFoundError: the ``.bin`` or the ``.idx`` is missing.
        DataError: an ``.idx`` that is not megatron-core's, no documents, or a
            ``.bin`` shorter than its index needs.
    """
    bin_path, idx_path = prefix + ".bin", prefix + ".idx"
    missing = [p for p in (bin_path, idx_path) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{flag} {prefix}: no {' or '.join(missing)}")
    idx_bytes, bin_bytes = os.path.getsize(idx_path), os.path.getsize(bin_path)
    head = 9 + 8 + 1 + 8 + 8
    with open(idx_path, "rb") as f:
        header = f.read(head)
        if len(header) < head or header[:9] != _INDEX_HEADER:
            raise DataError(f"{flag} {prefix}: {idx_path} is not a megatron-core index file")
        code = header[17]
        sequences, documents = struct.unpack("<QQ", header[18:34])
        if code not in _ITEM_SIZE:
            raise DataError(f"{flag} {prefix}: {idx_path} has an unknown token type {code}")
        need_idx = head + sequences * (4 + 8) + documents * 8
        if idx_bytes < need_idx:
            raise DataError(
                f"{flag} {prefix}: {idx_path} is truncated ({idx_bytes} bytes, its header "
                f"needs {need_idx})"
            )
        if sequences == 0:
            raise DataError(f"{flag} {prefix}: the domain holds no documents ({idx_path})")
        # The last sequence's length and pointer give the .bin size the index needs.
        f.seek(head + (sequences - 1) * 4)
        last_length = int(np.frombuffer(f.read(4), np.int32)[0])
        f.seek(head + sequences * 4 + (sequences - 1) * 8)
        last_pointer = int(np.frombuffer(f.read(8), np.int64)[0])
    need_bin = last_pointer + last_length * _ITEM_SIZE[code]
    if bin_bytes < need_bin:
        raise DataError(
            f"{flag} {prefix}: {bin_path} is truncated ({bin_bytes} bytes, its index needs "
            f"{need_bin})"
        )
    return {
        "documents": int(documents) - 1,
        "bin_bytes": bin_bytes,
        "idx_bytes": idx_bytes,
        "idx_sha256": _sha256(idx_path, idx_bytes) if hash_index else None,
        "bin_blake2b": _bin_sample(bin_path, bin_bytes) if hash_index else None,
    }
