"""Install Velocitune into Megatron-LM: wrap the functions ``pretrain_gpt.py`` reaches.

:func:`install` wraps these module attributes (every caller looks them up at call time; see
:mod:`~megatron_velocitune.megatron_lm.compat` for how they read across releases):

==========================================================  ===================================
``megatron.training.arguments.add_megatron_arguments``      add ``--velocitune-*``; refuse what
                                                            cannot work right after parsing
``megatron.training.training.build_train_valid_test_``      train blend -> VelocityBlendedDataset,
``datasets`` (+ ``BlendedMegatronDatasetBuilder.build``     per-domain held-out sets
while it runs)
``megatron.training.training.train``                        controller, resume, initial loss;
                                                            its ``forward_step_func`` feeds
                                                            ``--velocitune-loss-source train``
``megatron.training.training.checkpoint_and_decide_exit``   update every m iterations, loader
                                                            restarted at the consumed position
``megatron.training.training.save_checkpoint``              ``velocitune_state.json`` sidecar
``megatron.core.datasets.utils.compile_helpers``            skipped when the dataset helpers
                                                            already import (a wheel has no
                                                            Makefile to run)
==========================================================  ===================================

The module is ``installer``, not ``install``: the package exports the function :func:`install`,
which would shadow a submodule of the same name (``import megatron_velocitune.megatron_lm.install
as m`` would bind the function).
"""

import inspect
from typing import Optional

from megatron_velocitune.core.arguments import add_velocitune_args
from megatron_velocitune.core.errors import VelocituneConfigError
from megatron_velocitune.megatron_lm.checks import check_args
from megatron_velocitune.megatron_lm.compat import detect
from megatron_velocitune.megatron_lm.datasets import BuildRequest, DatasetRegistry, velocity_build
from megatron_velocitune.megatron_lm.patching import Patcher
from megatron_velocitune.megatron_lm.plugin import EvaluatorFactory, VelocitunePlugin

__all__ = ["install", "installed", "uninstall"]

_INSTALLED: Optional[tuple] = None  # (plugin, patcher)


def installed() -> Optional[VelocitunePlugin]:
    """The installed plugin, or None."""
    return None if _INSTALLED is None else _INSTALLED[0]


def install(evaluator_factory: Optional[EvaluatorFactory] = None) -> VelocitunePlugin:
    """Install Velocitune into the Megatron-LM that ``import megatron`` finds (idempotent).

    Call it before ``pretrain(...)`` (and, from core_v0.18, before ``parse_and_validate_args``).

    Args:
        evaluator_factory (Optional[EvaluatorFactory]): replaces the held-out evaluator (tests).

    Returns:
        VelocitunePlugin: the run's plugin (its ``controller`` exists once ``train()`` starts).

    Raises:
        MegatronLMNotFound: no usable ``megatron.training`` (the message says what to install).
        AttributeError: an integration point is missing (a Megatron-LM release not covered).
    """
    global _INSTALLED
    if _INSTALLED is not None:
        return _INSTALLED[0]
    compat = detect()
    import megatron.core.datasets.utils as dataset_utils
    import megatron.training.arguments as arguments
    import megatron.training.training as training
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.training.global_vars import get_args

    registry = DatasetRegistry()
    plugin = VelocitunePlugin(compat, registry, get_args, training, evaluator_factory)
    patcher = Patcher()
    try:
        patcher.wrap(arguments, "add_megatron_arguments", _add_arguments_wrapper)
        patcher.wrap(
            training,
            "build_train_valid_test_datasets",
            lambda original: _build_datasets_wrapper(
                original, registry, BlendedMegatronDatasetBuilder, get_args
            ),
        )
        patcher.wrap(training, "train", lambda original: _train_wrapper(original, plugin))
        patcher.wrap(
            training,
            "checkpoint_and_decide_exit",
            lambda original: _checkpoint_and_decide_exit_wrapper(original, plugin),
        )
        patcher.wrap(training, "save_checkpoint", lambda o: _save_checkpoint_wrapper(o, plugin))
        patcher.wrap(dataset_utils, "compile_helpers", _compile_helpers_wrapper)
    except AttributeError:
        patcher.restore()
        raise
    _INSTALLED = (plugin, patcher)
    return plugin


def uninstall() -> None:
    """Put Megatron-LM's functions back (tests)."""
    global _INSTALLED
    if _INSTALLED is not None:
        _INSTALLED[1].restore()
        _INSTALLED = None


# ---------------------------------------------------------------------- the wrappers
def _add_arguments_wrapper(original):
    def add_megatron_arguments(parser):
        parser = original(parser)
        add_velocitune_args(parser)
        # Refuse right after parsing, on every rank, before torch.distributed starts.
        parse_known_args = parser.parse_known_args

        def parse_known_args_checked(args=None, namespace=None):
            namespace, extras = parse_known_args(args, namespace)
            try:
                check_args(namespace)
            except VelocituneConfigError as e:
                # argparse's exit status, without Megatron-LM's several-hundred-line usage.
                parser.exit(2, f"{parser.prog}: error: velocitune: {e}\n")
            return namespace, extras

        parser.parse_known_args = parse_known_args_checked
        return parser

    return add_megatron_arguments


def _build_datasets_wrapper(original, registry: DatasetRegistry, builder_cls, get_args):
    def build_train_valid_test_datasets(provider, *args, **kwargs):
        megatron_args = get_args()
        registry.request = BuildRequest(
            update_window=megatron_args.velocitune_update_interval * megatron_args.global_batch_size
        )
        registry.data = None
        megatron_build = builder_cls.build

        def build(builder):
            return velocity_build(builder, megatron_build, registry)

        builder_cls.build = build
        try:
            datasets = original(provider, *args, **kwargs)
        finally:
            builder_cls.build = megatron_build
            registry.request = None
        if registry.data is None:
            raise RuntimeError(
                "velocitune: the dataset provider built no blend through megatron-core's "
                "BlendedMegatronDatasetBuilder; Velocitune needs pretrain_gpt.py's GPTDataset "
                "provider (or one like it) and --data-path W1 PREFIX1 W2 PREFIX2 ... --split ..."
            )
        return datasets

    return build_train_valid_test_datasets


def _train_wrapper(original, plugin: VelocitunePlugin):
    def train(
        forward_step_func,
        model,
        optimizer,
        opt_param_scheduler,
        train_data_iterator,
        *args,
        **kwargs,
    ):
        plugin.start(model, optimizer, train_data_iterator, opt_param_scheduler)
        return original(
            plugin.train_loss.wrap(forward_step_func),
            model,
            optimizer,
            opt_param_scheduler,
            train_data_iterator,
            *args,
            **kwargs,
        )

    return train


def _checkpoint_and_decide_exit_wrapper(original, plugin: VelocitunePlugin):
    signature = inspect.signature(original)

    def checkpoint_and_decide_exit(*args, **kwargs):
        bound = signature.bind(*args, **kwargs).arguments
        plugin.after_iteration(
            bound["model"],
            bound["optimizer"],
            bound["iteration"],
            bound.get("train_data_iterator"),
        )
        return original(*args, **kwargs)

    return checkpoint_and_decide_exit


def _save_checkpoint_wrapper(original, plugin: VelocitunePlugin):
    signature = inspect.signature(original)

    def save_checkpoint(*args, **kwargs):
        result = original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs).arguments
        plugin.after_save(bound["iteration"], bool(bound.get("non_persistent_ckpt", False)))
        return result

    return save_checkpoint


def _compile_helpers_wrapper(original):
    def compile_helpers():
        # Megatron-LM runs `make` in megatron/core/datasets on rank 0 at every start. A wheel has
        # no Makefile there (rank 0 would exit), and a checkout carried to a machine without
        # pybind11 or python3-config cannot build: when the helpers already import, there is
        # nothing to build. Otherwise Megatron-LM's own build runs.
        try:
            import megatron.core.datasets.helpers_cpp  # noqa: F401

            return None
        except ImportError:
            return original()

    return compile_helpers
