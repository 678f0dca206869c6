"""Where this rank's tensors live: the one home of the device rule every layer shares."""

import torch

__all__ = ["compute_device"]


def compute_device() -> torch.device:
    """This rank's CUDA device when there is one (NCCL), else the CPU (gloo, the CPU shim)."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{torch.cuda.current_device()}")
    return torch.device("cpu")
