"""megatron-velocitune: velocity-based dynamic domain reweighting for Megatron-Core.

The package tree is the architecture:

- ``core``: pure logic, no torch, no megatron: the policy (Algorithm 1), blend index maths,
  config and flags, trajectories, weight history, per-domain sums, the on-disk layout;
- ``laws``: pure fits: the Chinchilla target fit, the D-CPT Law, comparison statistics;
- ``data``: megatron-core datasets: ``VelocityBlendedDataset``, the builder, loader, batches;
- ``control``: the controller (torch-free) and what connects it to ranks and models: the
  distributed sync, held-out and training-stream evaluation, the checkpoint sidecar, and
  ``VelocituneRun``, the object both training drivers call;
- ``training``: the megatron-core training driver (``examples/pretrain_gpt.py``);
- ``megatron_lm``: the Megatron-LM adapter (``megatron_velocitune.megatron_lm.install()``);
- ``cli``: the console tools (``velocitune-*``);
- ``launch``: ``python -m megatron_velocitune.launch SCRIPT.py ...``.

The names users reach for are importable from here, lazily, so ``import megatron_velocitune``
(and the core) stays torch-free until one of the torch-side names is used.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "VelocityBlendedDataset": "megatron_velocitune.data.dataset",
    "build_velocity_datasets": "megatron_velocitune.data.builder",
    "VelocituneController": "megatron_velocitune.control.controller",
    "VelocituneRun": "megatron_velocitune.control.run",
    "DistributedSync": "megatron_velocitune.control.distributed",
    "LocalSync": "megatron_velocitune.control.sync",
    "DomainEvaluator": "megatron_velocitune.control.evaluation",
    "VelocituneConfig": "megatron_velocitune.core.config",
    "VelocituneConfigError": "megatron_velocitune.core.errors",
    "VelocituneError": "megatron_velocitune.core.errors",
    "add_velocitune_args": "megatron_velocitune.core.arguments",
    "config_from_args": "megatron_velocitune.core.arguments",
    "update_weights": "megatron_velocitune.core.policy",
    "velocity": "megatron_velocitune.core.policy",
    "velocity_update": "megatron_velocitune.core.policy",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'megatron_velocitune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
