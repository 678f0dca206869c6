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

import atexit
import contextlib
import functools
import logging
import os
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from megatron_velocitune.control.controller import VelocituneController
from megatron_velocitune.control.distributed import shared_run_id
from megatron_velocitune.control.evaluation import DomainEvaluator
from megatron_velocitune.control.run import (
    WINDOWS_KEY,
    RunSettings,
    VelocituneRun,
    learning_rate_extra,
)
from megatron_velocitune.control.run_folder import take_save_lock
from megatron_velocitune.control.state import load_state, sidecar_path
from megatron_velocitune.control.train_stream import WindowLayout, gather_windows
from megatron_velocitune.data.loader import close_data_iterator
from megatron_velocitune.laws.schedule_laws import LR_SCHEDULE_KEY, LrSchedule
from megatron_velocitune.megatron_lm.compat import MegatronLMCompat
from megatron_velocitune.megatron_lm.datasets import DatasetRegistry
from megatron_velocitune.megatron_lm.train_loss import TrainLossTap, stream_evaluator
from megatron_velocitune.megatron_lm.writers import megatron_writers

__all__ = ["VelocitunePlugin"]

logger = logging.getLogger(__name__)

EvaluatorFactory = Callable[[List[torch.nn.Module], Optional[List[Any]], int, Any, Any], Any]


def _default_evaluator(model, held_out, num_domains, args, config):
    return DomainEvaluator(
        model, held_out, num_domains, args.seq_length, args.micro_batch_size, config.eval_iters
    )


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


def _world() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def _chunks(model: Any) -> List[Any]:
    return list(model) if isinstance(model, (list, tuple)) else [model]


class VelocitunePlugin:
    """Megatron-LM's hooks wired to one :class:`~megatron_velocitune.control.run.VelocituneRun`.

    Args:
        compat (MegatronLMCompat): the release facts.
        registry (DatasetRegistry): the datasets the substituted builder made.
        get_args (Callable[[], Any]): Megatron-LM's ``get_args``.
        training_module: ``megatron.training.training`` (its ``build_pretraining_data_loader``,
            forward pre-hook helpers).
        evaluator_factory (Optional[EvaluatorFactory]): builds the held-out evaluator (tests
            substitute one); default
            :class:`~megatron_velocitune.control.evaluation.DomainEvaluator`.
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
        self.run: Optional[VelocituneRun] = None
        # --velocitune-loss-source train: train()'s forward step feeds its accumulator.
        self.train_loss = TrainLossTap()
        self._train_iterator: Any = None
        self._lock: Any = None

    # ------------------------------------------------------------------ train() start
    def start(
        self,
        model: List[torch.nn.Module],
        optimizer: Any,
        train_data_iterator: Any,
        opt_param_scheduler: Any = None,
    ) -> None:
        """Build the run, restore and replay, measure L_init, rebuild the loader (every rank).

        ``opt_param_scheduler`` (``train()``'s) goes into the trajectory header as the whole
        learning-rate schedule, so a target law fitted on this run knows the LR past its end.
        """
        args = self.get_args()
        data = self.registry.data
        if data is None:
            raise RuntimeError(
                "velocitune: no Velocitune train blend was built; the dataset provider must build "
                "its datasets with megatron-core's BlendedMegatronDatasetBuilder (as "
                "pretrain_gpt.py does) from --data-path W1 PREFIX1 W2 PREFIX2 ... --split ..."
            )
        model = _chunks(model)
        self._take_save_lock(args)
        run = self.run = VelocituneRun(
            RunSettings.from_args(args, data.prefixes),
            data.prefixes,
            data.weights,
            data.train,
            None,
            print_fn=_print_rank_last,
            tensorboard_writer=self.writers(),
            header_extra={
                "megatron_lm": ".".join(map(str, self.compat.version)),
                **_lr_schedule_header(opt_param_scheduler, args),
            },
            eval_context=functools.partial(self._forward_pre_hooks_off, model, optimizer),
            run_id=shared_run_id(),  # one header per run in a shared log folder
        )
        evaluator = self.evaluator_factory(
            model, self.registry.held_out(), len(data.prefixes), args, run.config
        )
        if run.config.loss_source == "train":
            evaluator = stream_evaluator(
                self.train_loss, self.evaluator_factory, model, data, args, run.config
            )
        run.controller.evaluator = evaluator
        run.stream = self.train_loss.accumulator
        # The training-stream windows travel in the sidecar, one per global rank, and restart
        # under another world size instead of refusing it: no layout in the identity.
        run.set_identity(
            None
            if run.stream is None
            else WindowLayout(_rank(), _world(), refuse_other_size=False, what="world")
        )
        self._train_iterator = train_data_iterator
        run.on_blend_change(self._rebuild_train_iterator)
        iteration = int(getattr(args, "iteration", 0) or 0)
        consumed = int(getattr(args, "consumed_train_samples", 0) or 0)
        restored = self._restore(args, iteration)
        run.start(iteration, consumed)
        # Megatron-LM built the loader (and forked its workers) before the history was replayed.
        if restored or iteration > 0:
            self._rebuild_train_iterator(consumed)

    def _take_save_lock(self, args) -> None:
        """One live run per ``--save``, never over another run's checkpoints (every rank).

        Megatron-LM writes nothing to ``--save`` before ``train()``; its last save comes after
        ``train()`` returns, so the lock is released at the process's exit.
        """
        if self._lock is not None or not getattr(args, "save", None):
            return
        self._lock = take_save_lock(args.save, args.load, bool(getattr(args, "finetune", False)))
        if self._lock is not None:
            atexit.register(self._lock.release)

    def _restore(self, args, iteration: int) -> bool:
        """Check and replay the sidecar of the checkpoint Megatron-LM resumed from (all ranks);
        refused as the megatron-core entry refuses (:meth:`VelocituneRun.resume`).
        """
        if not args.load or iteration <= 0 or getattr(args, "finetune", False):
            return False
        # Megatron-LM loads the newer of the persistent and the non-persistent (global) checkpoint.
        for folder in (args.load, _non_persistent_dir(args, args.load)):
            path = sidecar_path(folder, iteration)
            if os.path.exists(path):
                return self.run.resume(load_state(path), path, iteration, args.load)
        return self.run.resume(None, sidecar_path(args.load, iteration), iteration, args.load)

    # ------------------------------------------------------------------ every iteration
    def after_iteration(
        self, model: Any, optimizer: Any, iteration: int, train_data_iterator: Any
    ) -> None:
        """Every m iterations: update the blend (the loader restarts if it changed)."""
        if self.run is None:
            return
        self._train_iterator = train_data_iterator
        self.run.after_iteration(
            iteration,
            int(self.get_args().consumed_train_samples),
            extra=learning_rate_extra(optimizer),
        )

    def _rebuild_train_iterator(self, consumed: int) -> None:
        data = self.registry.data
        iterator = self._train_iterator
        if iterator is None or data is None or data.train is None:
            return
        # Megatron-LM's own loader (workers, pinning, collate as configured), restarted at the
        # consumed position: new workers fork from the updated blend, whatever the old ones had
        # prefetched.
        loader = self.training.build_pretraining_data_loader(data.train, consumed)
        close_data_iterator(getattr(iterator, "iterable", None))
        iterator.iterable = iter(loader)

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
        """Write the run's state beside the checkpoint just saved (global rank 0).

        Returns:
            Optional[str]: the sidecar written, on rank 0.
        """
        if self.run is None:
            return None
        windows = gather_windows(self.train_loss.accumulator)  # a collective: every rank
        if _rank() != 0:
            return None
        args = self.get_args()
        folder = _non_persistent_dir(args, args.save) if non_persistent else args.save
        if not folder:
            return None
        extra = {} if windows is None else {WINDOWS_KEY: windows}
        return self.run.after_save(sidecar_path(folder, int(iteration)), extra)

    @property
    def controller(self) -> Optional[VelocituneController]:
        """The run's controller (None before ``train()``)."""
        return None if self.run is None else self.run.controller

    @property
    def weights(self) -> Optional[np.ndarray]:
        """The current blend (None before ``train()``)."""
        return None if self.run is None else self.run.weights


def _lr_schedule_header(scheduler: Any, args: Any) -> Dict[str, Any]:
    """The trajectory header's learning-rate schedule (Megatron-LM steps its scheduler by the
    global batch size each iteration); none under a batch-size ramp-up, whose step varies.
    """
    if scheduler is None or getattr(args, "rampup_batch_size", None):
        return {}
    schedule = LrSchedule.from_scheduler(scheduler, args.global_batch_size)
    return {LR_SCHEDULE_KEY: schedule.to_header()}
