"""VelocituneRun: the one object both training drivers call, like a callback with hooks.

A driver (the megatron-core loop in :mod:`megatron_velocitune.training.loop`, or Megatron-LM's
``train()`` through :mod:`megatron_velocitune.megatron_lm.plugin`) builds its model and datasets
its own way, then hands them here and calls four hooks in this order::

    run = VelocituneRun(args, prefixes, weights, train_dataset, evaluator, ...)
    run.set_identity(stream_dp_size)            # what a resume must match, in every sidecar
    run.resume(state, sidecar, iteration, load) # resuming: checked, the history replayed
    run.start(iteration, consumed)              # L_init (measured at iteration 0), targets, header
    run.on_blend_change(rebuild_loader)         # the driver's loader restart
    for each iteration:
        train_step(...)
        run.after_iteration(iteration, consumed)  # every m: evaluate, decide, apply, log
        if saving: save(..., run.sidecar())       # or run.after_save(path)

What this owns, once for both drivers: the config from the flags (domain names defaulting to the
prefixes' basenames), the log dir and trajectory path, the trajectory header, the controller,
the resume (the refusal of a dynamic run without its sidecar, the sidecar's checks, the resume
identity, restoring and replaying the history), the rule and update log lines, and when to
restart the loader: only when an update changed the blend, and never after the last iteration
(nothing is left to draw).
"""

import contextlib
import logging
import os
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence

import numpy as np

from megatron_velocitune.control.controller import TRAJECTORY_FILE, VelocituneController
from megatron_velocitune.control.resume import (
    RESUME_KEY,
    check_resume,
    check_sidecar,
    resume_identity,
)
from megatron_velocitune.control.state import save_state
from megatron_velocitune.control.sync import UpdateDecision, UpdateSync
from megatron_velocitune.core.arguments import config_from_args
from megatron_velocitune.core.errors import CheckpointError, InputError
from megatron_velocitune.data.datafiles import check_data_file

__all__ = [
    "LoaderRebuild",
    "VelocituneRun",
    "default_domain_names",
    "format_update",
    "learning_rate_extra",
]

logger = logging.getLogger(__name__)

#: Restarts the driver's training data loader at a global sample position.
LoaderRebuild = Callable[[int], None]


def learning_rate_extra(optimizer: Any) -> Optional[Dict[str, Any]]:
    """The update record's ``lr``: the learning rate of the optimizer's first param group.

    A schedule-aware target law (:mod:`megatron_velocitune.laws.schedule_laws`) fits the proxy's
    curve against the sum of its learning rates, so every update records the LR it ran at.

    Args:
        optimizer (Any): a torch or megatron-core optimizer (``param_groups``); None for none.

    Returns:
        Optional[Dict[str, Any]]: ``{"lr": float}``, or None when the optimizer has no groups.
    """
    groups = getattr(optimizer, "param_groups", None)
    if not groups or "lr" not in groups[0]:
        return None
    return {"lr": float(groups[0]["lr"])}


def default_domain_names(prefixes: Sequence[str]) -> List[str]:
    """The prefixes' basenames: the domain names when ``--velocitune-domain-names`` is unset."""
    return [os.path.basename(p) for p in prefixes]


def format_update(
    controller: VelocituneController, decision: UpdateDecision, iteration: int
) -> str:
    """One log line per update, in Megatron-LM's style (both drivers print it).

    The velocities are the ones the update recorded (its noise floor included).
    """
    vel = controller.history[-1]["velocity"] if controller.history else None
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


class VelocituneRun:
    """One Velocitune run inside a training loop (built on every rank).

    Args:
        args (argparse.Namespace): the run's flags (``--velocitune-*``, ``--seq-length``,
            ``--global-batch-size``, ``--train-iters``, ``--tensorboard-dir``, ``--save``).
        prefixes (Sequence[str]): the ``--data-path`` prefixes, in domain order.
        weights (Sequence[float]): the starting blend (normalised).
        train_dataset (Optional[Any]): the ``VelocityBlendedDataset`` on ranks that hold data.
        evaluator (Any): returns this rank's per-domain sums (``evaluate(full=False)``).
        print_fn (Callable[[str], None]): the driver's rank-filtered print (Megatron-LM prints
            from the last rank).
        tensorboard_writer (Optional[Any]): this rank's scalar writer, if it logs.
        header_extra (Optional[Dict[str, Any]]): more trajectory-header fields.
        sync (Optional[UpdateSync]): the update synchronisation (default: distributed).
        eval_context (Callable[[], ContextManager]): entered around every evaluation (Megatron-LM
            turns its overlapped-parameter-gather hooks off there).
        run_id (Optional[str]): this run's identity in the trajectory (the same on every rank).
    """

    def __init__(
        self,
        args: Any,
        prefixes: Sequence[str],
        weights: Sequence[float],
        train_dataset: Optional[Any],
        evaluator: Any,
        print_fn: Callable[[str], None] = print,
        tensorboard_writer: Optional[Any] = None,
        header_extra: Optional[Dict[str, Any]] = None,
        sync: Optional[UpdateSync] = None,
        eval_context: Callable[[], ContextManager] = contextlib.nullcontext,
        run_id: Optional[str] = None,
    ) -> None:
        if not args.velocitune_domain_names:
            args.velocitune_domain_names = default_domain_names(prefixes)
        self.config = config_from_args(args)
        self.print = print_fn
        self.eval_context = eval_context
        self.train_iters = args.train_iters
        self.train_dataset = train_dataset
        log_dir = self.config.log_dir or args.tensorboard_dir or args.save
        self.trajectory_path = os.path.join(log_dir, TRAJECTORY_FILE) if log_dir else None
        self.controller = VelocituneController(
            self.config,
            weights,
            evaluator,
            dataset=train_dataset,
            seq_length=args.seq_length,
            tensorboard_writer=tensorboard_writer,
            trajectory_path=self.trajectory_path,
            header_extra={
                "global_batch_size": args.global_batch_size,
                "train_iters": args.train_iters,
                "prefixes": list(prefixes),
                **(header_extra or {}),
            },
            sync=sync,
            run_id=run_id,
        )
        self._iteration = 0
        self._start_blend = [float(w) for w in weights]
        # Read at set_identity (a driver that never resumes never sets one).
        self._identity_fields = (
            list(prefixes),
            getattr(args, "split", None),
            args.seq_length,
            args.global_batch_size,
            getattr(args, "seed", None),
        )
        self.identity: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ resume
    def set_identity(self, stream_dp_size: Optional[int]) -> Dict[str, Any]:
        """Fix what a resume of this run must match (every sidecar records it).

        Args:
            stream_dp_size (Optional[int]): the data-parallel size when the run keeps per-rank
                training-stream windows across a resume (None when it keeps none).

        Returns:
            Dict[str, Any]: the identity (:func:`~.resume.resume_identity`).
        """
        c = self.config
        prefixes, split, seq_length, global_batch_size, seed = self._identity_fields
        self.identity = resume_identity(
            prefixes,
            [check_data_file(p) for p in prefixes],
            c.update_interval,
            stream_dp_size,
            c.policy,
            c.rising_rule,
            {
                "min_headroom": c.min_headroom,
                "target_margin": c.target_margin,
                "forgetting_tolerance": None
                if c.forgetting_tolerance is None
                else str(c.forgetting_tolerance),
            },
            c.min_weight,
            c.loss_source,
            split,
            seq_length,
            global_batch_size,
            seed,
            c.guards_identity(),
            self._start_blend,
        )
        return self.identity

    def resume(
        self, state: Optional[Dict[str, Any]], sidecar: str, iteration: int, load: str
    ) -> bool:
        """Continue from a checkpoint's sidecar: checked, then the history replayed (every rank).

        Both drivers refuse the same resumes with the same line: a dynamic run at iteration > 0
        whose sidecar is missing (its weight history and blend are lost), a sidecar for other
        domains, and one whose identity differs from :meth:`set_identity`'s. A ``--finetune``
        start calls none of this.

        Args:
            state (Optional[Dict[str, Any]]): the sidecar's content, None when there is none.
            sidecar (str): its path (for the messages).
            iteration (int): the checkpoint's iteration.
            load (str): ``--load``.

        Returns:
            bool: whether a history was restored.

        Raises:
            CheckpointError: a resume that cannot continue exactly (one line).
        """
        if state is None:
            if iteration > 0 and self.config.policy != "static":
                raise CheckpointError(
                    f"--load {load}: {sidecar} is missing: the weight history and the blend of "
                    f"this {self.config.policy} run at iteration {iteration} are lost, so it "
                    "cannot resume (restore the file, or start a new run from the checkpoint "
                    "with --finetune)"
                )
            return False
        check_sidecar(state, sidecar, len(self.names))
        if self.identity is not None:
            for note in check_resume(state.get(RESUME_KEY), self.identity, sidecar):
                self.print(f" resume: {note}")
        self.restore(state, sidecar)
        return True

    def sidecar(self, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """A sidecar's content: the controller's state, the resume identity, ``extra``."""
        identity = {} if self.identity is None else {RESUME_KEY: self.identity}
        return {**self.state_dict(), **identity, **(extra or {})}

    # ------------------------------------------------------------------ hooks
    def restore(self, state: Dict[str, Any], source: str) -> int:
        """Restore a saved history and replay it into the train blend (every rank).

        Args:
            state (Dict[str, Any]): a sidecar's content (:meth:`state_dict`).
            source (str): where it came from, for the log line.

        Returns:
            int: the updates replayed into this rank's dataset (0 where it holds none).
        """
        try:
            self.controller.load_state_dict(state)
        except InputError as e:  # name the file the state came from
            raise type(e)(f"{source}: {e}") from None
        replayed = 0
        if self.train_dataset is not None:
            replayed = self.controller.replay(self.train_dataset.update_weights)
        self.print(
            f" velocitune: restored {len(self.controller.history)} updates from {source}"
            f" ({replayed} replayed into the train blend)"
        )
        return replayed

    def start(self, iteration: int, consumed: int) -> None:
        """Measure ``L_init`` if needed, resolve the targets, write the header (every rank)."""
        self._iteration = iteration
        with self.eval_context():
            self.controller.initialize(iteration, consumed)
        if self.controller.target_rules is not None:
            self.print(
                f" velocitune target rules (--velocitune-rising-rule "
                f"{self.config.rising_rule}): {self.controller.describe_rules()}"
            )

    def on_blend_change(self, rebuild: LoaderRebuild) -> None:
        """Restart the driver's loader with ``rebuild(start_sample)`` after each blend change.

        Called only when an update changed the blend (a static, observe-only run never), and
        never after the last iteration: nothing is left to draw there.
        """

        def sink(weights: np.ndarray, start_sample: int) -> None:
            if self.train_iters is None or self._iteration < self.train_iters:
                rebuild(start_sample)

        self.controller.add_sink(sink)

    def is_update_iteration(self, iteration: int) -> bool:
        """Whether :meth:`after_iteration` evaluates at ``iteration``."""
        return self.controller.is_update_iteration(iteration)

    def after_iteration(
        self, iteration: int, consumed: int, extra: Optional[Dict[str, Any]] = None
    ) -> Optional[UpdateDecision]:
        """After ``train_step`` (every rank): every m iterations evaluate, decide and apply.

        Args:
            iteration (int): the iteration just completed.
            consumed (int): global samples consumed; the new blend applies from here.
            extra (Optional[Dict[str, Any]]): more fields for the update's trajectory record.

        Returns:
            Optional[UpdateDecision]: the decision, or None when no update was due.
        """
        self._iteration = iteration
        if not self.controller.is_update_iteration(iteration):
            return None
        with self.eval_context():
            decision = self.controller.maybe_update(iteration, consumed, extra=extra)
        if decision is not None:
            self.print(format_update(self.controller, decision, iteration))
        return decision

    def state_dict(self) -> Dict[str, Any]:
        """The sidecar's content (the controller's state)."""
        return self.controller.state_dict()

    def after_save(self, path: str, extra: Optional[Dict[str, Any]] = None) -> str:
        """Write the sidecar to ``path`` (call on one rank, after the checkpoint is written).

        Args:
            path (str): the sidecar file.
            extra (Optional[Dict[str, Any]]): more JSON-able fields the driver keeps there
                (Megatron-LM: the training-stream windows, which its checkpoint cannot hold).
        """
        save_state(path, self.sidecar(extra))
        return path

    # ------------------------------------------------------------------ views
    @property
    def names(self) -> List[str]:
        """Domain names, in order."""
        return self.controller.names

    @property
    def weights(self) -> np.ndarray:
        """The blend in force."""
        return self.controller.weights

    @property
    def sync(self) -> UpdateSync:
        """The update synchronisation (after :meth:`start`); validation reduces with it."""
        return self.controller.sync
