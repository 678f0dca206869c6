"""Load a checkpoint file without running code from it (``torch.load(weights_only=True)``).

A ``.pt`` file is a pickle: loaded with ``weights_only=False`` it can run any code as the user
on every rank. The project's own checkpoints hold only tensors and plain Python types (the RNG
states as lists, the arguments as a plain dict), which ``weights_only=True`` loads; the few
numpy and argparse types that older files of this project and Megatron-LM's legacy checkpoints
carry (a numpy RNG state array, an ``argparse.Namespace`` of plain values) are allowed by name
here, as data. A file that needs anything else is refused with one line; ``--trust-checkpoint``
loads it with ``weights_only=False`` (any code in it runs: use it only on files you made).
"""

import argparse
import pickle
import re
from typing import Any, List

import numpy as np
import torch

from megatron_velocitune.core.errors import CheckpointError

__all__ = ["SAFE_GLOBALS", "TRUST_FLAG", "load_checkpoint_file"]

TRUST_FLAG = "--trust-checkpoint"


def _safe_globals() -> List[Any]:
    """Data-only types allowed in a checkpoint beside torch's own (no callable runs code)."""
    core = getattr(np, "_core", None) or np.core
    allowed: List[Any] = [
        core.multiarray._reconstruct,  # rebuilds an ndarray from its bytes
        np.ndarray,
        np.dtype,
        argparse.Namespace,  # Megatron-LM's ``args``: its __dict__ is restored, nothing called
    ]
    for name in ("UInt32DType", "Int64DType", "Float64DType", "Float32DType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, name):
            allowed.append(getattr(np.dtypes, name))
    return allowed


SAFE_GLOBALS = _safe_globals()


def load_checkpoint_file(path: str, trust: bool = False, flag: str = "--load") -> Any:
    """``torch.load`` one checkpoint file onto the CPU, refusing files that would run code.

    Args:
        path (str): the ``.pt`` file.
        trust (bool): load with ``weights_only=False`` (``--trust-checkpoint``).
        flag (str): the flag that named the checkpoint, for the error line.

    Returns:
        Any: the loaded object.

    Raises:
        CheckpointError: the file is truncated or corrupt, or needs types beyond tensors and
            plain data (without ``trust``).
    """
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text or "GLOBAL" in text:
            needed = _unsupported_global(text)
            raise CheckpointError(
                f"{flag}: {path} needs {needed} to load, which could run code; it was not "
                f"loaded (pass {TRUST_FLAG} only if you made this file yourself)"
            ) from None
        raise CheckpointError(f"{flag}: {path} is not a readable checkpoint ({e})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{flag}: {path} is truncated or corrupt ({first[:200]})") from None


def _unsupported_global(text: str) -> str:
    # torch names the refused callable as "GLOBAL module.name" in every message variant.
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return f"the global {match.group(1)}"
    return "more than tensors and plain data"
