"""VelocituneRun: the one object both training drivers call, like a callback with hooks.

A driver (the megatron-core loop in :mod:`megatron_velocitune.training.loop`, or Megatron-LM's
``train()`` through :mod:`megatron_velocitune.megatron_lm.plugin`) builds its model and datasets
its own way, then hands them here and calls four hooks in this order::

    settings = RunSettings.from_args(args, prefixes)  # the flags, read once, never mutated
    run = VelocituneRun(settings, prefixes, weights, train_dataset, evaluator, ...)
    run.set_identity(window_layout)             # what a resume must match, in every sidecar
    run.resume(state, sidecar, iteration, load, windows)  # checked, history replayed, window
    run.start(iteration, consumed)              # L_init (measured at iteration 0), targets, header
    run.on_blend_change(rebuild_loader)         # the driver's loader restart
    for each iteration:
        train_step(...)
        run.after_iteration(iteration, consumed)  # every m: evaluate, decide, apply, log
        if saving: save(..., run.sidecar())       # or run.after_save(path)

What this owns, once for both drivers: the config from the flags (domain names defaulting to the
prefixes' basenames), the log dir and trajectory path, the trajectory header, the controller,
the resume (the refusal of a dynamic run without its sidecar, the sidecar's checks, the resume
identity, restoring and replaying the history, the training-stream window), the rule and update
log lines, and when to
restart the loader: only when an update changed the blend, and never after the last iteration
(nothing is left to draw).
"""

import argparse
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence

import numpy as np

from megatron_velocitune.control.controller import TRAJECTORY_FILE, VelocituneController
from megatron_velocitune.control.resume import (
    RESUME_KEY,
    ResumeIdentity,
    check_resume,
    check_sidecar,
)
from megatron_velocitune.control.state import save_state
from megatron_velocitune.control.sync import UpdateDecision, UpdateSync
from megatron_velocitune.control.train_stream import (
    DomainLossAccumulator,
    WindowLayout,
    restore_window,
)
from megatron_velocitune.core.arguments import config_from_args
from megatron_velocitune.core.config import VelocituneConfig
from megatron_velocitune.core.errors import CheckpointError, InputError
from megatron_velocitune.data.datafiles import check_data_file

__all__ = [
    "LoaderRebuild",
    "RunSettings",
    "VelocituneRun",
    "WINDOWS_KEY",
    "default_domain_names",
    "format_update",
    "learning_rate_extra",
]

logger = logging.getLogger(__name__)

#: The sidecar key of the training-stream windows (the adapter keeps them there).
WINDOWS_KEY = "train_stream_windows"

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


@dataclass(frozen=True)
class RunSettings:
    """What a :class:`VelocituneRun` reads from its driver's flags, read once.

    Built by :meth:`from_args` from either driver's ``argparse.Namespace`` (the megatron-core
    entry's or Megatron-LM's), which is left as it was.

    Attributes:
        config (VelocituneConfig): the ``--velocitune-*`` flags, the domain names resolved
            (the prefixes' basenames when ``--velocitune-domain-names`` is unset).
        seq_length (int): ``--seq-length``.
        global_batch_size (int): ``--global-batch-size``.
        train_iters (Optional[int]): ``--train-iters`` (None: no planned end).
        split (Optional[str]): ``--split`` (in the resume identity).
        seed (Optional[int]): ``--seed`` (in the resume identity).
        log_dir (Optional[str]): where the trajectory goes: ``--velocitune-log-dir``, else
            ``--tensorboard-dir``, else ``--save`` (None: no trajectory).
    """

    config: VelocituneConfig
    seq_length: int
    global_batch_size: int
    train_iters: Optional[int] = None
    split: Optional[str] = None
    seed: Optional[int] = None
    log_dir: Optional[str] = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, prefixes: Sequence[str]) -> "RunSettings":
        """Read the settings from a driver's parsed flags (``args`` is not changed).

        Args:
            args (argparse.Namespace): the run's flags (``--velocitune-*``, ``--seq-length``,
                ``--global-batch-size``, ``--train-iters``, ``--split``, ``--seed``,
                ``--tensorboard-dir``, ``--save``).
            prefixes (Sequence[str]): the ``--data-path`` prefixes, in domain order.

        Returns:
            RunSettings: the settings.
        """
        names = args.velocitune_domain_names or default_domain_names(prefixes)
        # A copy with the names resolved: the loss files are read by name.
        config = config_from_args(
            argparse.Namespace(**{**vars(args), "velocitune_domain_names": names})
        )
        return cls(
            config=config,
            seq_length=args.seq_length,
            global_batch_size=args.global_batch_size,
            train_iters=getattr(args, "train_iters", None),
            split=getattr(args, "split", None),
            seed=getattr(args, "seed", None),
            log_dir=config.log_dir
            or getattr(args, "tensorboard_dir", None)
            or getattr(args, "save", None),
        )


class VelocituneRun:
    """One Velocitune run inside a training loop (built on every rank).

    Args:
        settings (RunSettings): what the run reads from the driver's flags.
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
        stream (Optional[DomainLossAccumulator]): the training-stream sums, when the run reads
            them (their open window is saved with a checkpoint and restored by :meth:`resume`).
    """

    def __init__(
        self,
        settings: RunSettings,
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
        stream: Optional[DomainLossAccumulator] = None,
    ) -> None:
        self.settings = settings
        self.config = settings.config
        self.print = print_fn
        self.eval_context = eval_context
        self.train_iters = settings.train_iters
        self.train_dataset = train_dataset
        self.stream = stream
        log_dir = settings.log_dir
        self.trajectory_path = os.path.join(log_dir, TRAJECTORY_FILE) if log_dir else None
        self.controller = VelocituneController(
            self.config,
            weights,
            evaluator,
            dataset=train_dataset,
            seq_length=settings.seq_length,
            tensorboard_writer=tensorboard_writer,
            trajectory_path=self.trajectory_path,
            header_extra={
                "global_batch_size": settings.global_batch_size,
                "train_iters": settings.train_iters,
                "prefixes": list(prefixes),
                **(header_extra or {}),
            },
            sync=sync,
            run_id=run_id,
        )
        self._iteration = 0
        self._prefixes = list(prefixes)
        self._start_blend = [float(w) for w in weights]
        self.identity: Optional[ResumeIdentity] = None
        self.window_layout: Optional[WindowLayout] = None

    # ------------------------------------------------------------------ resume
    def set_identity(self, window_layout: Optional[WindowLayout] = None) -> ResumeIdentity:
        """Fix what a resume of this run must match (every sidecar records it).

        Args:
            window_layout (Optional[WindowLayout]): where this rank's training-stream window
                sits among a checkpoint's (None: the run keeps none). A layout that refuses
                another size puts its size in the identity (the megatron-core entry's
                data-parallel size); one that restarts the windows records none (the adapter).

        Returns:
            ResumeIdentity: the identity.
        """
        c, s = self.config, self.settings
        self.window_layout = window_layout
        fixed = window_layout is not None and window_layout.refuse_other_size
        self.identity = ResumeIdentity.of(
            self._prefixes,
            [check_data_file(p) for p in self._prefixes],
            update_interval=c.update_interval,
            stream_dp_size=window_layout.size if fixed else None,
            policy=c.policy,
            rising_rule=c.rising_rule,
            rule_knobs={
                "min_headroom": c.min_headroom,
                "target_margin": c.target_margin,
                "forgetting_tolerance": None
                if c.forgetting_tolerance is None
                else str(c.forgetting_tolerance),
            },
            min_weight=c.min_weight,
            loss_source=c.loss_source,
            split=s.split,
            seq_length=s.seq_length,
            global_batch_size=s.global_batch_size,
            seed=s.seed,
            guards=c.guards_identity(),
            blend=self._start_blend,
        )
        return self.identity

    def resume(
        self,
        state: Optional[Dict[str, Any]],
        sidecar: str,
        iteration: int,
        load: str,
        windows: Optional[Sequence[Any]] = None,
    ) -> bool:
        """Continue from a checkpoint: checked, the history replayed, the window restored.

        Both drivers refuse the same resumes with the same line: a checkpoint past
        ``--train-iters``, a dynamic run at iteration > 0 whose sidecar is missing (its weight
        history and blend are lost), a sidecar for other domains, and one whose identity differs
        from :meth:`set_identity`'s. A ``--finetune`` start calls none of this.

        Args:
            state (Optional[Dict[str, Any]]): the sidecar's content, None when there is none.
            sidecar (str): its path (for the messages).
            iteration (int): the checkpoint's iteration.
            load (str): ``--load``.
            windows (Optional[Sequence[Any]]): the checkpoint's saved training-stream windows
                (None: the sidecar's ``train_stream_windows``, where the adapter keeps them).

        Returns:
            bool: whether a history was restored.

        Raises:
            CheckpointError: a resume that cannot continue exactly (one line).
        """
        if self.train_iters is not None and iteration > self.train_iters:
            # The history's blends start past the end of this run's (shorter) train blend.
            raise CheckpointError(
                f"--train-iters {self.train_iters} is below the iteration of the checkpoint in "
                f"--load {load} ({iteration}): give at least --train-iters {iteration} to "
                "continue that run"
            )
        if state is None:
            if iteration > 0 and self.config.policy != "static":
                raise CheckpointError(
                    f"--load {load}: {sidecar} is missing: the weight history and the blend of "
                    f"this {self.config.policy} run at iteration {iteration} are lost, so it "
                    "cannot resume (restore the file, or start a new run from the checkpoint "
                    "with --finetune)"
                )
            self._restore_window(windows, load)
            return False
        check_sidecar(state, sidecar, len(self.names))
        if self.identity is not None:
            for note in check_resume(state.get(RESUME_KEY), self.identity, sidecar):
                self.print(f" resume: {note}")
        self.restore(state, sidecar)
        self._restore_window(state.get(WINDOWS_KEY) if windows is None else windows, load)
        return True

    def _restore_window(self, windows: Optional[Sequence[Any]], load: str) -> None:
        if self.window_layout is not None:
            restore_window(self.stream, windows, self.window_layout, f"--load {load}")

    def sidecar(self, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """A sidecar's content: the controller's state, the resume identity, ``extra``."""
        identity = {} if self.identity is None else {RESUME_KEY: self.identity.to_json()}
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
