"""Strict JSON for the trajectory and the sidecar: a non-finite float is written as ``null``.

Python's ``json`` writes NaN as the bare literal ``NaN``, which strict JSON readers (``jq``,
JavaScript, most other languages) refuse. The project's files store a non-finite number as
``null`` inside a list of numbers instead, and :func:`nan_from_null` turns such ``null``\\ s back
into NaN on reading, so the tools see the same float arrays as before. A ``null`` that stands
alone (e.g. ``"velocity": null``: no velocity at all) stays ``None``.
"""

import json
import math
from typing import IO, Any, List, Tuple

__all__ = ["load_unique", "nan_from_null", "strict"]


def strict(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth) replaced by None.

    Args:
        value (Any): JSON-able data (dicts, lists, tuples, numbers, strings, None).

    Returns:
        Any: the same structure, safe for ``json.dumps(..., allow_nan=False)``.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def _numbers_with_nulls(values: list) -> bool:
    # The project's files hold no list of nulls other than a list of non-finite numbers.
    return any(v is None for v in values) and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values
    )


def nan_from_null(value: Any) -> Any:
    """Undo :func:`strict` for number lists: ``[1.0, null]`` -> ``[1.0, nan]``, at any depth.

    A list of numbers and ``null`` s (``null`` s only included: every domain's loss NaN) is a
    number list.

    Args:
        value (Any): data read with ``json.load``.

    Returns:
        Any: the same structure with the ``null`` s of mixed number lists as NaN.
    """
    if isinstance(value, dict):
        return {k: nan_from_null(v) for k, v in value.items()}
    if isinstance(value, list):
        if _numbers_with_nulls(value):
            return [math.nan if v is None else v for v in value]
        return [nan_from_null(v) for v in value]
    return value


def _unique_keys(pairs: List[Tuple[str, Any]]) -> dict:
    seen = {}
    for key, value in pairs:
        if key in seen:
            # json.load would keep the last silently: a loss file naming a domain twice is a
            # mistake the user must see.
            raise ValueError(f"key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def load_unique(f: IO[str]) -> Any:
    """``json.load`` that refuses a key given twice in one object and a document nested too
    deeply to read.

    Raises:
        ValueError: the file is not such JSON (``json.JSONDecodeError`` is one), with why.
    """
    try:
        return json.load(f, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply to be a loss, targets or state file") from None
