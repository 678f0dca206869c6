"""What differs between the Megatron-LM releases the adapter supports, in one place.

Read from NVIDIA/Megatron-LM's tags core_v0.14.0, core_v0.15.0, core_v0.16.0, core_v0.16.1,
core_v0.17.0, core_v0.17.1, core_v0.18.0, core_v0.18.2, core_v0.19.0 and main (0.20.0 in
development, snapshot of 2026-08-22). Exercised (tests/test_megatron_lm.py) against a core_v0.16.1
checkout on Python 3.11 and, on Python 3.12, the megatron-core 0.19.2 wheel's
``megatron.training`` and checkouts of core_v0.17.1, core_v0.18.2, core_v0.19.0 and main
(docs/megatron-lm.md, "Megatron-LM releases").
The integration points the adapter wraps are the same module-level names in every one of them,
which is why it wraps those and nothing else (each is looked up at call time by its caller, so
wrapping the module attribute reaches every call):

- ``megatron.training.arguments.add_megatron_arguments(parser)``: called by ``parse_args`` in
  every release; from core_v0.18 ``pretrain_gpt.py`` calls ``parse_and_validate_args`` (which calls
  ``parse_args``) itself instead of passing ``extra_args_provider`` to ``pretrain``, so the flags
  join there rather than through ``extra_args_provider``, which a script may set to its own.
- ``megatron.training.training.build_train_valid_test_datasets(provider, num_samples=None)``:
  called by ``build_train_valid_test_data_loaders`` (the second parameter appeared in 0.15).
- ``megatron.training.training.train(forward_step_func, model, optimizer, opt_param_scheduler,
  train_data_iterator, ...)``: the first five positional parameters are the same in every
  release (0.16.0 added ``inference_model``, 0.19.0 ``p2p_communicator`` and ``pg_collection``).
  ``forward_step_func`` is what ``--velocitune-loss-source train`` wraps
  (:mod:`~megatron_velocitune.megatron_lm.train_loss`): from 0.18 ``pretrain_gpt.py``'s
  ``get_batch`` returns a fixed key list (``BATCH_KEYS``) that leaves ``dataset_id`` out, so the
  domains are read where the sample leaves the data iterator, not from the batch.
- ``megatron.training.training.checkpoint_and_decide_exit(model, optimizer, opt_param_scheduler,
  iteration, num_floating_point_operations_so_far, checkpointing_context, train_data_iterator)``:
  called on every rank after ``train_step``, ``consumed_train_samples += ...``,
  ``training_log``, evaluation and ``post_training_step_callbacks``; unchanged 0.14 .. main.
- ``megatron.training.training.save_checkpoint(iteration, ...)``: imported by name into
  ``training``; ``save_checkpoint_and_time`` and ``pretrain``'s final save call it.
- ``megatron.training.training.build_pretraining_data_loader(dataset, consumed_samples)``: the
  train loader Megatron-LM built; re-used to rebuild it at the consumed position. It lives in
  ``megatron.legacy.data.data_samplers`` up to 0.15 and ``megatron.training.datasets
  .data_samplers`` from 0.16, imported by name into ``training`` in both.
- ``megatron.core.datasets.blended_megatron_dataset_builder.BlendedMegatronDatasetBuilder
  .build``: a class attribute, so every import of the class sees it.
- ``megatron.core.datasets.utils.compile_helpers``: imported inside ``initialize`` at call time
  (every release runs ``make`` there on rank 0; the 0.17+ wheels ship the helpers prebuilt and no
  Makefile).

What does differ is below (:class:`MegatronLMCompat`): where the sampler module lives, whether
``disable_forward_pre_hook`` takes the optimizer (0.19+: it prepares the distributed optimizer's
parameters for the synchronous all-gather), whether fast cache load and training phases exist
(0.16+), how a script parses arguments and calls ``pretrain`` (0.18+:
``parse_and_validate_args``, then ``pretrain(cfg_container, provider, model_provider,
model_type, forward_step)``; 0.19+: ``pretrain(cfg_container, provider, model_type,
forward_step, model_provider=...)``), and the Python the release imports on: 0.17 still uses
``typing_extensions.override`` and imports on 3.10+ (its package metadata asks for 3.12, so its
wheel installs on 3.12 only); from 0.18.0 ``megatron.training.models`` imports the stdlib
``typing.override``, which is Python 3.12's.

Where Megatron-LM comes from: a checkout on ``PYTHONPATH`` (any release above), or the
megatron-core wheel from 0.17 on, which carries ``megatron.training`` (but no ``pretrain_gpt.py``;
bring your own script). The 0.16 wheels hold ``megatron.core`` only.
"""

import re
import sys
from dataclasses import dataclass
from typing import Tuple

__all__ = [
    "MIN_VERSION",
    "MegatronLMCompat",
    "MegatronLMNotFound",
    "compat_for_version",
    "detect",
    "import_hint",
    "parse_version",
]

MIN_VERSION = (0, 14, 0)


class MegatronLMNotFound(ImportError):
    """Megatron-LM's ``megatron.training`` cannot be imported, or the release is too old."""


@dataclass(frozen=True)
class MegatronLMCompat:
    """The release-dependent facts the adapter uses.

    Attributes:
        version (Tuple[int, int, int]): megatron-core's version of the Megatron-LM in use.
        args_entry (str): what a ``pretrain_gpt.py`` calls to parse arguments:
            ``initialize_megatron -> parse_args`` (< 0.18) or ``parse_and_validate_args``.
        pretrain_takes_config_container (bool): ``pretrain(cfg_container, provider, ...)``
            (0.18+) instead of ``pretrain(provider, model_provider, ...)``.
        model_provider_keyword (bool): ``pretrain(cfg_container, provider, model_type,
            forward_step, model_provider=...)`` (0.19+; 0.18 passes it third, positionally).
        data_samplers_module (str): the module defining ``build_pretraining_data_loader``.
        forward_pre_hook_takes_optimizer (bool): ``disable_forward_pre_hook(model_chunks,
            optimizer=None, param_sync=True)`` (0.19+).
        has_fast_cache_load (bool): ``--dataloader-fast-cache-load`` exists (0.16+).
        has_phase_transitions (bool): ``--phase-transition-iterations`` exists (0.16+).
        min_python (Tuple[int, int]): the oldest Python the release imports on.
    """

    version: Tuple[int, int, int]
    args_entry: str
    pretrain_takes_config_container: bool
    model_provider_keyword: bool
    data_samplers_module: str
    forward_pre_hook_takes_optimizer: bool
    has_fast_cache_load: bool
    has_phase_transitions: bool
    min_python: Tuple[int, int]


def parse_version(version: str) -> Tuple[int, int, int]:
    """``"0.16.1"``, ``"0.20.0rc0"``, ``"core_v0.15.0"``, ``"0.17.0.dev0+g1"`` -> a version tuple.

    Raises:
        ValueError: no ``major.minor`` in the string.
    """
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    if match is None:
        raise ValueError(f"not a megatron-core version: {version!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def compat_for_version(version: str) -> MegatronLMCompat:
    """The facts for one release.

    Args:
        version (str): megatron-core's ``__version__`` (or a ``core_vX.Y.Z`` tag).

    Returns:
        MegatronLMCompat: the facts.

    Raises:
        MegatronLMNotFound: a release older than core_v0.14.
    """
    v = parse_version(version)
    if v < MIN_VERSION:
        raise MegatronLMNotFound(
            f"Megatron-LM {version} is older than core_v0.14.0, the oldest release the "
            f"Velocitune adapter supports"
        )
    minor = v[:2]
    return MegatronLMCompat(
        version=v,
        args_entry="parse_and_validate_args" if minor >= (0, 18) else "parse_args",
        pretrain_takes_config_container=minor >= (0, 18),
        model_provider_keyword=minor >= (0, 19),
        data_samplers_module=(
            "megatron.training.datasets.data_samplers"
            if minor >= (0, 16)
            else "megatron.legacy.data.data_samplers"
        ),
        forward_pre_hook_takes_optimizer=minor >= (0, 19),
        has_fast_cache_load=minor >= (0, 16),
        has_phase_transitions=minor >= (0, 16),
        min_python=(3, 12) if minor >= (0, 18) else (3, 10),
    )


def detect() -> MegatronLMCompat:
    """The facts for the Megatron-LM that ``import megatron`` finds.

    Raises:
        MegatronLMNotFound: no ``megatron.training`` (a 0.16 wheel alone, or nothing), with what
            to install.
    """
    try:
        from megatron.core import package_info
    except ImportError as e:
        raise MegatronLMNotFound(
            f"megatron-core is not importable ({e}): put a Megatron-LM checkout (core_v0.14 or "
            f"later) on PYTHONPATH"
        ) from None
    compat = compat_for_version(package_info.__version__)
    if sys.version_info[:2] < compat.min_python:
        raise MegatronLMNotFound(
            f"Megatron-LM {package_info.__version__} needs Python "
            f"{'.'.join(map(str, compat.min_python))}+ (it imports typing.override), this is "
            f"{_python()}: run it with Python 3.12 or later"
        )
    try:
        import megatron.training.training  # noqa: F401
    except ImportError as e:
        raise MegatronLMNotFound(
            f"cannot import megatron.training.training (megatron-core "
            f"{package_info.__version__}): {e}; {import_hint(compat.version, e)}"
        ) from None
    return compat


def import_hint(version: Tuple[int, int, int], error: ImportError) -> str:
    """What to do when ``megatron.training`` does not import, read from the error.

    Args:
        version (Tuple[int, int, int]): megatron-core's version.
        error (ImportError): what ``import megatron.training.training`` raised.

    Returns:
        str: one clause naming the fix.
    """
    missing = getattr(error, "name", None) or ""
    if missing == "megatron.training" or (
        missing.startswith("megatron.training") and version < (0, 17, 0)
    ):
        return (
            "the megatron-core wheels before 0.17 hold megatron.core only: put a Megatron-LM "
            "checkout on PYTHONPATH, ahead of site-packages"
        )
    if "override" in str(error) and sys.version_info[:2] < (3, 12):
        # A checkout whose version string is older than its code (a main between releases).
        return f"this Megatron-LM needs Python 3.12 (typing.override), this is {_python()}"
    if missing and not missing.startswith("megatron"):
        return (
            f"a dependency of Megatron-LM is missing ({missing}): pip install "
            f"'megatron-velocitune[megatron-lm]' installs the ones pretrain_gpt.py imports"
        )
    return "the Megatron-LM on PYTHONPATH is incomplete or does not match its megatron-core"


def _python() -> str:
    return sys.version.split()[0]
