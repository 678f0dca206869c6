"""The Velocitune run inside Megatron-LM's ``train()``: start, update every m iterations, save.

The order of operations is the one :mod:`megatron_velocitune.training.loop` runs on
megatron-core alone:

- :meth:`VelocitunePlugin.start` (wrapping ``train``): build the controller on every rank, restore
  the weight history from the checkpoint's sidecar and replay it into the train blend, measure the
  initial held-out losses when this is iteration 0 and they are not given, and rebuild the train
  loader at ``args.consumed_train_samples`` (Megatron-LM built it, and its workers forked, before
  the history was replayed).
- :meth:`VelocitunePlugin.after_iteration` (wrapping ``checkpoint_and_decide_exit``, so on every
  rank, after ``train_step`` and ``consumed_train_samples += ...`` and before any checkpoint of
  this iteration): every m iterations the controller evaluates, decides and updates the blend at
  ``consumed_train_samples``; the ``RerunDataIterator``'s ``.iterable`` is then replaced by a
  fresh loader from that position, so the first sample of the next iteration is drawn with the
  new weights whatever the old workers had prefetched.
- :meth:`VelocitunePlugin.after_save` (wrapping ``save_checkpoint``): the controller's state as
  ``iter_XXXXXXX/velocitune_state.json`` beside the checkpoint just written (global rank 0).
"""

import contextlib
import logging
import os
from typing import Any, Callable, List, Optional

import numpy as np
import torch

from megatron_velocitune.arguments import config_from_args
from megatron_velocitune.controller import TRAJECTORY_FILE, VelocituneController
from megatron_velocitune.evaluation import DomainEvaluator
from megatron_velocitune.loader import close_data_iterator
from megatron_velocitune.megatron_lm.compat import MegatronLMCompat
from megatron_velocitune.megatron_lm.datasets import DatasetRegistry
from megatron_velocitune.megatron_lm.writers import megatron_writers
from megatron_velocitune.state import load_state, save_state, sidecar_path
from megatron_velocitune.training.startup import shared_run_id

__all__ = ["VelocitunePlugin", "format_update"]

logger = logging.getLogger(__name__)

EvaluatorFactory = Callable[[List[torch.nn.Module], Optional[List[Any]], int, Any, Any], Any]


def _default_evaluator(model, held_out, num_domains, args, config):
    return DomainEvaluator(
        model, held_out, num_domains, args.seq_length, args.micro_batch_size, config.eval_iters
    )


def format_update(controller: VelocituneController, decision, iteration: int) -> str:
    """One log line per update, like the megatron-core loop's."""
    vel = controller.velocity(decision.eval_loss)
    cells = []
    for i, name in enumerate(controller.names):
        v = "" if vel is None else f" v={vel[i]:.3f}"
        cells.append(f"{name}: loss={decision.eval_loss[i]:.4f}{v} w={decision.weights[i]:.4f}")
    if decision.skipped:
        status = "skipped (non-finite loss), weights kept"
    elif controller.config.policy == "static":
        status = "(static: observed)"
    else:
        status = "applied"
    return f" velocitune update at iteration {iteration} {status} | " + " | ".join(cells)


def _print_rank_last(message: str) -> None:
    try:
        from megatron.training.utils import print_rank_last
    except ImportError:  # pragma: no cover - megatron.training is there whenever this runs
        print(message, flush=True)
        return
    print_rank_last(message)


def _non_persistent_dir(args, folder: Optional[str]) -> Optional[str]:
    # Where Megatron-LM's checkpointing puts non-persistent global checkpoints.
    explicit = getattr(args, "non_persistent_global_ckpt_dir", None)
    if explicit or folder is None:
        return explicit
    return os.path.join(folder, "non_persistent")


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


class VelocitunePlugin:
    """One Velocitune run's state inside a Megatron-LM process.

    Args:
        compat (MegatronLMCompat): the release facts.
        registry (DatasetRegistry): the datasets the substituted builder made.
        get_args (Callable[[], Any]): Megatron-LM's ``get_args``.
        training_module: ``megatron.training.training`` (its ``build_pretraining_data_loader``,
            forward pre-hook helpers).
        evaluator_factory (Optional[EvaluatorFactory]): builds the held-out evaluator (tests
            substitute one); default :class:`~megatron_velocitune.evaluation.DomainEvaluator`.
        writers (Callable[[], Optional[Any]]): this rank's scalar writer (default: Megatron-LM's
            TensorBoard and wandb writers, see :func:`~.writers.megatron_writers`).
    """

    def __init__(
        self,
        compat: MegatronLMCompat,
        registry: DatasetRegistry,
        get_args: Callable[[], Any],
        training_module: Any,
        evaluator_factory: Optional[EvaluatorFactory] = None,
        writers: Callable[[], Optional[Any]] = megatron_writers,
    ) -> None:
        self.compat = compat
        self.registry = registry
        self.get_args = get_args
        self.training = training_module
        self.evaluator_factory = evaluator_factory or _default_evaluator
        self.writers = writers
        self.controller: Optional[VelocituneController] = None

    # ------------------------------------------------------------------ train() start
    def start(self, model: List[torch.nn.Module], optimizer: Any, train_data_iterator: Any) -> None:
        """Build the controller, restore and replay, measure L_init, rebuild the loader.

        Call on every rank at the start of ``train()``.
        """
        args = self.get_args()
        data = self.registry.data
        if data is None:
            raise RuntimeError(
                "velocitune: no Velocitune train blend was built; the dataset provider must build "
                "its datasets with megatron-core's BlendedMegatronDatasetBuilder (as "
                "pretrain_gpt.py does) from --data-path W1 PREFIX1 W2 PREFIX2 ... --split ..."
            )
        if not args.velocitune_domain_names:
            args.velocitune_domain_names = [os.path.basename(p) for p in data.prefixes]
        config = config_from_args(args)
        log_dir = config.log_dir or args.tensorboard_dir or args.save
        model = list(model) if isinstance(model, (list, tuple)) else [model]
        evaluator = self.evaluator_factory(
            model, self.registry.held_out(), len(data.prefixes), args, config
        )
        self.controller = VelocituneController(
            config,
            data.weights,
            evaluator,
            dataset=data.train,
            seq_length=args.seq_length,
            tensorboard_writer=self.writers(),
            trajectory_path=os.path.join(log_dir, TRAJECTORY_FILE) if log_dir else None,
            header_extra={
                "global_batch_size": args.global_batch_size,
                "train_iters": args.train_iters,
                "prefixes": list(data.prefixes),
                "megatron_lm": ".".join(map(str, self.compat.version)),
            },
            run_id=shared_run_id(),  # one header per run in a shared log folder
        )
        iteration = int(getattr(args, "iteration", 0) or 0)
        consumed = int(getattr(args, "consumed_train_samples", 0) or 0)
        restored = self._restore(args, iteration)
        with self._forward_pre_hooks_off(model, optimizer):
            self.controller.initialize(iteration, consumed)
        if self.controller.target_rules is not None:
            _print_rank_last(
                f" velocitune target rules (--velocitune-rising-rule "
                f"{self.controller.config.rising_rule}): "
                f"{self.controller.describe_rules()}"
            )
        if restored or iteration > 0:
            self._rebuild_train_iterator(train_data_iterator, consumed)

    def _restore(self, args, iteration: int) -> bool:
        """Load the sidecar of the checkpoint Megatron-LM resumed from, replay it (all ranks)."""
        if not args.load or iteration <= 0 or getattr(args, "finetune", False):
            return False
        # Megatron-LM loads the newer of the persistent and the non-persistent (global) checkpoint.
        folders = [args.load, _non_persistent_dir(args, args.load)]
        for folder in folders:
            path = sidecar_path(folder, iteration)
            if os.path.exists(path):
                self.controller.load_state_dict(load_state(path))
                data = self.registry.data
                replayed = 0
                if data.train is not None:
                    replayed = self.controller.replay(data.train.update_weights)
                _print_rank_last(
                    f" velocitune: restored {len(self.controller.history)} updates from {path}"
                    f" ({replayed} replayed into the train blend)"
                )
                return True
        _print_rank_last(
            f" velocitune: WARNING no {os.path.basename(sidecar_path(args.load, iteration))} for "
            f"iteration {iteration} under {folders}: starting the weight history here"
        )
        return False

    # ------------------------------------------------------------------ every iteration
    def after_iteration(
        self, model: Any, optimizer: Any, iteration: int, train_data_iterator: Any
    ) -> None:
        """Every m iterations: update the blend and restart the loader there (every rank)."""
        controller = self.controller
        if controller is None or not controller.is_update_iteration(iteration):
            return
        args = self.get_args()
        consumed = int(args.consumed_train_samples)
        model = list(model) if isinstance(model, (list, tuple)) else [model]
        with self._forward_pre_hooks_off(model, optimizer):
            decision = controller.maybe_update(iteration, consumed)
        if decision is None:
            return
        _print_rank_last(format_update(controller, decision, iteration))
        # After the last iteration there is nothing left to draw (train_iters is set from
        # --train-samples by Megatron-LM before train() starts).
        if not decision.skipped and (args.train_iters is None or iteration < args.train_iters):
            self._rebuild_train_iterator(train_data_iterator, consumed)

    def _rebuild_train_iterator(self, train_data_iterator: Any, consumed: int) -> None:
        data = self.registry.data
        if train_data_iterator is None or data is None or data.train is None:
            return
        # Megatron-LM's own loader (workers, pinning, collate as configured), restarted at the
        # consumed position: new workers fork from the updated blend.
        loader = self.training.build_pretraining_data_loader(data.train, consumed)
        close_data_iterator(getattr(train_data_iterator, "iterable", None))
        train_data_iterator.iterable = iter(loader)

    @contextlib.contextmanager
    def _forward_pre_hooks_off(self, model: List[Any], optimizer: Any):
        """Evaluate as Megatron-LM's ``evaluate`` does: no overlapped param all-gather hooks.

        With ``--overlap-param-gather`` the forward pre-hooks are registered; Megatron-LM
        removes them (and synchronises the parameters) around its own evaluation. They are on
        exactly when the chunks hold hook handles.
        """
        hooked = bool(model) and all(
            getattr(m, "remove_forward_pre_hook_handles", None) for m in model
        )
        if not hooked:
            yield
            return
        if self.compat.forward_pre_hook_takes_optimizer:
            self.training.disable_forward_pre_hook(model, optimizer=optimizer)
        else:
            self.training.disable_forward_pre_hook(model)
        try:
            yield
        finally:
            self.training.enable_forward_pre_hook(model)

    # ------------------------------------------------------------------ checkpoints
    def after_save(self, iteration: int, non_persistent: bool) -> Optional[str]:
        """Write the controller's state beside the checkpoint just saved (global rank 0).

        Returns:
            Optional[str]: the sidecar written, on rank 0.
        """
        if self.controller is None or _rank() != 0:
            return None
        args = self.get_args()
        folder = _non_persistent_dir(args, args.save) if non_persistent else args.save
        if not folder:
            return None
        path = sidecar_path(folder, int(iteration))
        save_state(path, self.controller.state_dict())
        return path

    @property
    def weights(self) -> Optional[np.ndarray]:
        """The current blend (None before ``train()``)."""
        return None if self.controller is None else self.controller.weights
