"""VelocituneController: every ``m`` iterations, evaluate -> reduce -> policy -> dataset -> log.

The controller is the one stateful piece of the plugin. Construct it on **every** rank with the
same config and starting blend, and call :meth:`VelocituneController.maybe_update` on every
rank after each training iteration (it returns at once except every ``m`` iterations). At an
update:

1. every rank runs the forward-only held-out evaluation (the pipeline needs all of them);
2. the injected :class:`~megatron_velocitune.control.sync.UpdateSync` reduces the losses, applies
   the pure policy on one rank and shares the blend; the default,
   :class:`~megatron_velocitune.control.distributed.DistributedSync`, sums over DP(+CP) on the last
   stage, broadcasts and checks the blend bit-identical everywhere (a non-finite loss skips the
   update on all ranks); :class:`~megatron_velocitune.control.sync.LocalSync` is one process;
3. when the blend changed, ranks holding the training dataset call
   ``dataset.update_weights(weights, consumed_samples)`` and every registered sink is called (a
   loader rebuild), so the new blend applies from the first sample of the next iteration; an
   observe-only (static) run never calls them;
4. the observers log it: the deciding rank's JSONL trajectory
   (:class:`~megatron_velocitune.control.observers.TrajectoryObserver`) and, on ranks given a
   TensorBoard writer, ``velocitune/weight/<domain>``, ``velocitune/eval-loss/<domain>`` and
   ``velocitune/velocity/<domain>`` (each also ``... vs samples``).

The controller imports neither torch nor megatron: ranks live in the sync, files in the
observers.

**One footing.** Every loss the velocity reads comes from the same measurement
(``config.footing``): under ``subset`` (policy ``velocity`` and the baselines) ``L_init`` is
measured at iteration 0 on the very subset ``S'_eval`` every update evaluates, and the full-set
value (given, or measured) is kept for the start/end table; a fitted targets file that names its
proxy's own initial loss (``reference_initial``) is carried over as each target's change from it,
added to this run's ``L_init``. Under ``full`` (policy ``paper``, the paper's own procedure)
``L_init`` is the full held-out sets' loss and targets are absolute; under ``stream`` (the
training-stream source) it is the stream's first draws. The header records the footing and a
resume keeps it. Each domain's target is then resolved against ``L_init`` by the config's
rising-domain rule (``--velocitune-rising-rule``): a target above ``L_init`` is a forgetting
budget under ``budget`` and ``tolerance``, held below it under ``hold-initial``, an error under
``refuse``; the trajectory header records each domain's rule.

**Guards** (policy ``velocity``; ``paper`` has none): the headroom is never below
``--velocitune-noise-multiple`` standard errors of the evaluated loss, and the brake stops a
domain above its initial share whose loss did not fall over ``--velocitune-brake-window``
updates from gaining more (see :mod:`megatron_velocitune.core.policy`). Each update's record
holds the standard errors, the headroom floors and the braked domains.
:meth:`state_dict` / :meth:`load_state_dict` carry the history and the losses as JSON-able data
(:mod:`megatron_velocitune.control.state` writes them next to a checkpoint).
"""

import functools
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import numpy as np

from megatron_velocitune.control.observers import Observer, TensorBoardObserver, TrajectoryObserver
from megatron_velocitune.control.sync import UpdateDecision, UpdateSync
from megatron_velocitune.core.blending import check_blend_weights
from megatron_velocitune.core.config import VelocituneConfig, VelocituneConfigError
from megatron_velocitune.core.errors import InputError
from megatron_velocitune.core.policy import (
    Guards,
    domain_velocity,
    held_budget_velocity,
    noise_headroom,
    unresponsive,
    update_weights,
)
from megatron_velocitune.core.sums import DomainSums

__all__ = ["STATE_VERSION", "TRAJECTORY_FILE", "VelocituneController", "WeightSink"]

logger = logging.getLogger(__name__)

STATE_VERSION = 1
TRAJECTORY_FILE = "velocitune_trajectory.jsonl"

# Called with (weights, start_sample) after every update that changed the blend.
WeightSink = Callable[[np.ndarray, int], None]


class _Evaluator(Protocol):
    def evaluate(self, full: bool = False) -> DomainSums:  # pragma: no cover - protocol
        ...


def _floats(values: Optional[Sequence[float]]) -> Optional[List[float]]:
    return None if values is None else [float(v) for v in values]


class VelocituneController:
    """Owns the blend, the initial/target losses and the weight history of one run.

    Args:
        config (VelocituneConfig): the run's knobs (policy, ``m``, losses, floor, names).
        weights (Sequence[float]): the starting blend (normalised here), in domain order.
        evaluator (_Evaluator): returns this rank's local per-domain sums; normally a
            :class:`~megatron_velocitune.control.evaluation.DomainEvaluator`, built on every rank.
        dataset (Optional[Any]): the training dataset on ranks that hold one (an object with
            ``update_weights(weights, start_sample)``), None elsewhere.
        sinks (Sequence[WeightSink]): more callables ``(weights, start_sample)`` to notify when
            the blend changes (e.g. a data-loader rebuild).
        seq_length (Optional[int]): tokens per sample, for ``consumed_tokens`` in the log.
        tensorboard_writer (Optional[Any]): a ``SummaryWriter``-like object (``add_scalar``)
            on the ranks that log to TensorBoard (Megatron-LM: the last rank), None elsewhere.
        trajectory_path (Optional[str]): JSONL trajectory file; default
            ``<config.log_dir>/velocitune_trajectory.jsonl`` when ``log_dir`` is set. Written
            by the deciding rank only.
        header_extra (Optional[Dict[str, Any]]): more header fields (``seq_length``,
            ``global_batch_size``, ``train_iters``, ...).
        sync (Optional[UpdateSync]): how an update is reduced, decided and shared; default a
            :class:`~megatron_velocitune.control.distributed.DistributedSync` built from
            megatron-core's parallel state at the first update (imported only then).
        observers (Sequence[Observer]): more observers of the updates.
        groups (Optional[UpdateGroups]): process groups for the default distributed sync.
        run_id (Optional[str]): the run's identity in the trajectory (identical on every rank;
            a resumed run takes the one its sidecar holds).
    """

    def __init__(
        self,
        config: VelocituneConfig,
        weights: Sequence[float],
        evaluator: _Evaluator,
        dataset: Optional[Any] = None,
        sinks: Sequence[WeightSink] = (),
        seq_length: Optional[int] = None,
        tensorboard_writer: Optional[Any] = None,
        trajectory_path: Optional[str] = None,
        header_extra: Optional[Dict[str, Any]] = None,
        sync: Optional[UpdateSync] = None,
        observers: Sequence[Observer] = (),
        groups: Optional[Any] = None,
        run_id: Optional[str] = None,
    ) -> None:
        self.config = config
        self.run_id = run_id
        self.initial_weights = check_blend_weights(weights, None, what="--data-path weights")
        self.num_domains = int(self.initial_weights.shape[0])
        config.validate(self.num_domains, self.initial_weights.tolist())
        self.names = config.names(self.num_domains)
        self.weights = self.initial_weights.copy()
        # The blend in force when the latest losses were measured (budget-hold's pace).
        self._measured_under = self.weights.copy()
        # The footing of every loss the velocity reads; a resumed run keeps the one it started on.
        self.footing = config.footing
        # L_init as the velocity reads it (on ``footing``), and on the full held-out sets (the
        # start/end table); a given initial loss is the full-set value except under ``stream``.
        given_initial = (
            None if config.initial_loss is None else np.asarray(config.initial_loss, np.float64)
        )
        self.initial_loss_full = None if self.footing == "stream" else given_initial
        self.initial_loss = given_initial if self.footing != "subset" else None
        # The targets as given (a fit's predictions); ``target_loss`` holds them resolved by
        # the rising-domain rule once the initial loss is known.
        self.given_target = (
            None if config.target_loss is None else np.asarray(config.target_loss, np.float64)
        )
        self.target_loss: Optional[np.ndarray] = None
        self.target_rules: Optional[List[str]] = None
        self.evaluator = evaluator
        self.dataset = dataset
        self.sinks: List[WeightSink] = list(sinks)
        if dataset is not None:
            self.sinks.insert(0, dataset.update_weights)
        self.seq_length = seq_length
        self.tensorboard_writer = tensorboard_writer
        if trajectory_path is None and config.log_dir:
            trajectory_path = os.path.join(config.log_dir, TRAJECTORY_FILE)
        self.trajectory_path = trajectory_path
        self.header_extra = dict(header_extra or {})
        self.sync = sync
        self._groups = groups
        self.observers: List[Observer] = list(observers)
        if tensorboard_writer is not None:
            self.observers.append(TensorBoardObserver(tensorboard_writer))
        self.history: List[Dict[str, Any]] = []
        self.initialized = False

    # ------------------------------------------------------------------ public API
    def add_sink(self, sink: WeightSink) -> None:
        """Register another ``(weights, start_sample)`` callable, called when the blend changes."""
        self.sinks.append(sink)

    @property
    def groups(self) -> Optional[Any]:
        """The process groups of a distributed sync (None for another sync or before start)."""
        return getattr(self.sync, "groups", self._groups)

    def _connect(self) -> None:
        """The default sync (the edge that imports torch) and the trajectory observer."""
        if self.sync is None:
            from megatron_velocitune.control.distributed import DistributedSync

            self.sync = DistributedSync(self._groups)
        if self.sync.is_decider and self.trajectory_path:
            self.observers.insert(0, TrajectoryObserver(self.trajectory_path, self.run_id))

    def is_update_iteration(self, iteration: int) -> bool:
        """Whether :meth:`maybe_update` evaluates at ``iteration`` (every ``m`` and at each
        phase of a ``schedule``, never at 0).
        """
        schedule = self.config.blend_schedule
        return iteration > 0 and (
            iteration % self.config.update_interval == 0
            or (schedule is not None and iteration in schedule.iterations)
        )

    def initialize(self, iteration: int = 0, consumed_samples: int = 0) -> None:
        """Measure the initial loss if needed, check the targets, write the log header.

        Runs once (call on every rank; :meth:`maybe_update` calls it on first use). With no
        initial loss configured or restored, it evaluates it (on the footing's samples, and the
        full held-out sets for the table), which must happen before training
        (``iteration == 0``).

        Raises:
            VelocituneConfigError: targets not below the initial losses, or a measured initial
                loss that is not finite, or no initial loss at a resumed iteration.
        """
        if self.initialized:
            return
        self._connect()
        measured = False
        if self.initial_loss is None:
            if iteration != 0:
                raise VelocituneConfigError(
                    f"--velocitune-initial-loss: not given and not restored from a checkpoint "
                    f"sidecar, and the run is at iteration {iteration}: the initial loss must be "
                    f"the base model's (measure it at iteration 0, or pass it)"
                )
            # The stream's evaluator answers full=True with its first draws (its footing).
            on_subset = self.footing == "subset"
            self.initial_loss = self._measure(not on_subset, iteration, consumed_samples)
            if on_subset and self.initial_loss_full is None:
                self.initial_loss_full = self._measure(True, iteration, consumed_samples)
            elif self.footing == "full":
                self.initial_loss_full = self.initial_loss
            measured = True
            logger.info(
                "velocitune: measured initial losses %s (%s footing)",
                self.initial_loss.tolist(),
                self.footing,
            )
        if (
            self.config.target_loss is not None
            and self.config.target_reference is not None
            and self.footing != "full"
        ):
            # Fitted targets: their change from the proxy's own L_init, on this run's L_init
            # (the paper's footing takes them as the absolute losses they are).
            self.given_target = np.asarray(
                self.config.targets_for(self.initial_loss.tolist()), np.float64
            )
        if self.given_target is not None:
            flag = self.config.target_loss_file or "--velocitune-target-loss"
            if measured:
                flag += " (vs. the initial loss measured at iteration 0)"
            resolved = self.config.resolve_targets(
                self.initial_loss.tolist(), self.given_target.tolist(), flag, self.names
            )
            self.target_loss = np.asarray(resolved.targets, np.float64)
            self.target_rules = resolved.rules
        self.initialized = True
        self._write_header()
        self._log_rules()
        if measured:
            self._log_scalars("eval-loss", self.initial_loss, iteration, consumed_samples)
        self._log_scalars("weight", self.weights, iteration, consumed_samples)

    @property
    def full_initial_loss(self) -> Optional[np.ndarray]:
        """L_init on the full held-out sets (the start/end table), else the footing's own."""
        return self.initial_loss if self.initial_loss_full is None else self.initial_loss_full

    def _measure(self, full: bool, iteration: int, consumed_samples: int) -> np.ndarray:
        """Evaluate, reduce and share the losses without changing the blend (every rank)."""
        sums = self.evaluator.evaluate(full=full)
        # The identity policy: this round only reduces and shares the losses.
        decision = self.sync.update(
            sums, self.weights, lambda mean, stderr: self.weights, iteration, consumed_samples
        )
        loss = decision.eval_loss
        if decision.skipped or not np.isfinite(loss).all():
            raise VelocituneConfigError(
                f"--velocitune-initial-loss: measured initial losses {loss.tolist()} are not "
                f"all finite"
            )
        return loss

    def maybe_update(
        self,
        iteration: int,
        consumed_samples: int,
        domain_tokens: Optional[Sequence[int]] = None,
        extra: Optional[Dict[str, Any]] = None,
    ) -> Optional[UpdateDecision]:
        """Update the blend if ``iteration`` is a multiple of ``m`` (call on every rank).

        Args:
            iteration (int): the iteration just completed (Megatron's ``iteration`` after
                ``train_step``).
            consumed_samples (int): global samples consumed so far; the new blend applies
                from this sample on.
            domain_tokens (Optional[Sequence[int]]): training tokens drawn per domain before
                ``consumed_samples``, for the trajectory; when None, taken from the dataset's
                ``domain_counts(consumed_samples) * seq_length`` where the logging rank holds
                a dataset that has it.
            extra (Optional[Dict[str, Any]]): more JSON-able fields for this update's
                trajectory record (diagnostics, e.g. the other loss estimator).

        Returns:
            Optional[UpdateDecision]: the decision (identical on every rank), or None when no
            update was due.
        """
        if not self.initialized:
            self.initialize(iteration, consumed_samples)
        if not self.is_update_iteration(iteration):
            return None
        if self.history and self.history[-1]["iteration"] >= iteration:
            return None  # already done (a resumed run replaying its last iteration)
        sums = self.evaluator.evaluate(full=False)
        self._measured_under = self.weights.copy()
        decision = self.sync.update(
            sums,
            self.weights,
            functools.partial(self._decide, iteration=iteration),
            iteration,
            consumed_samples,
            fallback=self._last_estimate() if self.config.loss_source == "train" else None,
        )
        if decision.changed:
            self.weights = decision.weights
            for sink in self.sinks:
                sink(self.weights.copy(), consumed_samples)
        self._record(decision, iteration, consumed_samples, domain_tokens, extra)
        return decision

    def _last_estimate(self) -> Optional[np.ndarray]:
        """The latest per-domain loss estimate (a domain absent from a window keeps it)."""
        for record in reversed(self.history):
            if not record["skipped"]:
                return np.asarray(record["eval_loss"], np.float64)
        return self.initial_loss

    def _velocity(self, eval_loss: np.ndarray, headroom: np.ndarray) -> Optional[np.ndarray]:
        """Velocity of each domain (None without initial and target losses).

        Args:
            eval_loss (np.ndarray): ``L_t``.
            headroom (np.ndarray): the headroom floor per domain (:meth:`headroom_floor`).
        """
        if self.initial_loss is None or self.target_loss is None:
            return None
        if self.config.rising_rule == "budget-hold":
            return held_budget_velocity(
                eval_loss, self.initial_loss, self.target_loss, self._measured_under, headroom
            )
        return domain_velocity(eval_loss, self.initial_loss, self.target_loss, headroom)

    def headroom_floor(self, stderr: Optional[np.ndarray]) -> np.ndarray:
        """The headroom floor per domain: the stated one, or the noise's (policy velocity)."""
        k = self.num_domains
        if self.config.policy == "paper":
            return np.zeros(k)
        if self.config.policy != "velocity":
            return np.full(k, self.config.min_headroom)
        floor = noise_headroom(self.config.min_headroom, stderr, self.config.noise_multiple)
        return np.broadcast_to(floor, (k,)).astype(np.float64)

    def braked(self, eval_loss: np.ndarray, weights: np.ndarray) -> Optional[np.ndarray]:
        """The domains the brake holds at this update (policy velocity; None: no brake).

        A domain is braked when it holds more than its initial share and its loss is not below
        its loss ``brake_window`` updates ago (or ``L_init`` before that many updates).
        """
        window = self.config.brake_window
        if (
            self.config.policy != "velocity"
            or self.config.runaway_guard != "brake"
            or window == 0
            or self.initial_loss is None
        ):
            return None
        applied = [r for r in self.history if not r["skipped"]]
        earlier = (
            np.asarray(applied[-window]["eval_loss"], np.float64)
            if len(applied) >= window
            else self.initial_loss
        )
        return unresponsive(eval_loss, earlier, weights, self.initial_weights)

    def replay(self, sink: WeightSink) -> int:
        """Feed every applied update of the history, in order, to ``sink`` (e.g. a rebuilt dataset).

        Returns:
            int: the number of updates replayed.
        """
        n = 0
        for record in self.history:
            if not record["skipped"]:
                sink(np.asarray(record["weights"], np.float64), int(record["start_sample"]))
                n += 1
        return n

    def state_dict(self) -> Dict[str, Any]:
        """JSON-able state: blend, losses and history (identical on every rank)."""
        return {
            "version": STATE_VERSION,
            "domains": list(self.names),
            "policy": self.config.policy,
            "update_interval": self.config.update_interval,
            "initial_weights": self.initial_weights.tolist(),
            "weights": self.weights.tolist(),
            "footing": self.footing,
            "initial_loss": _floats(self.initial_loss),
            "initial_loss_full": _floats(self.initial_loss_full),
            "target_loss": _floats(self.target_loss),
            "target_given": _floats(self.given_target),
            "target_rules": self.target_rules,
            "history": [dict(r) for r in self.history],
            "run_id": self.run_id,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (on every rank, before the first update).

        The dataset is not touched: it restores its own state, or use :meth:`replay`.

        Raises:
            VelocituneConfigError: the state belongs to another blend (domains) or version.
        """
        if state.get("version") != STATE_VERSION:
            raise InputError(f"velocitune state version {state.get('version')} != {STATE_VERSION}")
        if list(state["domains"]) != list(self.names):
            raise InputError(
                f"velocitune state is for domains {state['domains']}, this run has {self.names}"
            )
        if state.get("policy") != self.config.policy:
            logger.warning(
                "velocitune: state was written by policy %r, continuing with %r",
                state.get("policy"),
                self.config.policy,
            )
        self.initial_weights = np.asarray(state["initial_weights"], np.float64)
        self.weights = np.asarray(state["weights"], np.float64)
        # A sidecar of an older run has no footing: its L_init was the full held-out sets'.
        footing = state.get("footing", "full")
        if footing != self.footing:
            logger.warning(
                "velocitune: the run started on the %r footing (L_init %s); it continues on it, "
                "not on %r (start a new run with --finetune to change it)",
                footing,
                state.get("initial_loss"),
                self.footing,
            )
            self.footing = footing
        if state.get("initial_loss") is not None:
            self.initial_loss = np.asarray(state["initial_loss"], np.float64)
        full = state.get("initial_loss_full")
        if full is None and footing == "full":
            full = state.get("initial_loss")
        if full is not None:
            self.initial_loss_full = np.asarray(full, np.float64)
        # A target given on the command line wins over the saved one (a re-fit target); either
        # is resolved again against the restored initial loss by :meth:`initialize`.
        saved = state.get("target_given") or state.get("target_loss")
        if self.config.target_loss is None and saved is not None:
            self.given_target = np.asarray(saved, np.float64)
        self.history = [dict(r) for r in state["history"]]
        self.run_id = state.get("run_id") or self.run_id

    # ------------------------------------------------------------------ internals
    def _guards(self, eval_loss: np.ndarray, stderr: np.ndarray, weights: np.ndarray) -> Guards:
        """This update's headroom floors, budget hold and braked domains (under ``weights``)."""
        return Guards(
            headroom=self.headroom_floor(stderr),
            hold_budget=self.config.rising_rule == "budget-hold",
            braked=self.braked(eval_loss, weights),
            initial_weights=self.initial_weights,
            runaway=self.config.runaway_guard,
        )

    def _decide(self, eval_loss: np.ndarray, stderr: np.ndarray, iteration: int) -> np.ndarray:
        """The pure policy (runs on the deciding rank only)."""
        if self.config.blend_schedule is not None:
            return self.config.blend_schedule.blend_after(iteration, self.initial_weights)
        return update_weights(
            self.config.policy,
            self.weights,
            eval_loss,
            self.initial_loss,
            self.target_loss,
            self.config.min_weight,
            self._guards(eval_loss, stderr, self.weights),
        )

    def _record(
        self,
        decision: UpdateDecision,
        iteration: int,
        consumed_samples: int,
        domain_tokens: Optional[Sequence[int]],
        extra: Optional[Dict[str, Any]] = None,
    ) -> None:
        eval_loss = decision.eval_loss
        stderr = decision.sums.stderr()
        # The guards as the decider applied them (every rank holds the same history and sums).
        guards = self._guards(eval_loss, stderr, self._measured_under)
        vel = self._velocity(eval_loss, guards.headroom)
        braked = guards.braked
        record = {
            "iteration": int(iteration),
            "consumed_samples": int(consumed_samples),
            "start_sample": int(consumed_samples),
            "weights": self.weights.tolist(),
            "eval_loss": eval_loss.tolist(),
            "eval_tokens": decision.sums.tokens.tolist(),
            # None when the source measures no per-sequence losses (the training stream).
            "eval_stderr": stderr.tolist() if np.isfinite(stderr).any() else None,
            "headroom_floor": guards.headroom.tolist(),
            "braked": None if braked is None else [bool(b) for b in braked],
            "velocity": None if vel is None else vel.tolist(),
            "skipped": bool(decision.skipped),
        }
        self.history.append(record)
        if self.observers:
            self._notify("on_update", self._trajectory_record(record, domain_tokens, extra))
        self._log_scalars("eval-loss", eval_loss, iteration, consumed_samples)
        if vel is not None:
            self._log_scalars("velocity", vel, iteration, consumed_samples)
        self._log_scalars("weight", self.weights, iteration, consumed_samples)

    def _trajectory_record(
        self,
        record: Dict[str, Any],
        domain_tokens: Optional[Sequence[int]] = None,
        extra: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, Any]:
        """An update's trajectory record from its history record (the one form both take)."""
        consumed = int(record["consumed_samples"])
        if domain_tokens is None and self.seq_length is not None:
            counts = getattr(self.dataset, "domain_counts", None)
            if counts is not None:
                domain_tokens = np.asarray(counts(consumed)) * self.seq_length
        return {
            "type": "update",
            "iteration": record["iteration"],
            "consumed_samples": consumed,
            "consumed_tokens": None if self.seq_length is None else consumed * self.seq_length,
            "domain_tokens": None if domain_tokens is None else [int(t) for t in domain_tokens],
            "eval_loss": record["eval_loss"],
            "eval_tokens": record.get("eval_tokens"),
            # Older sidecars' histories lack these three.
            "eval_stderr": record.get("eval_stderr"),
            "headroom_floor": record.get("headroom_floor"),
            "braked": record.get("braked"),
            "velocity": record.get("velocity"),
            "weights": record["weights"],
            "start_sample": record["start_sample"],
            "skipped": record["skipped"],
            **(extra or {}),
        }

    def _notify(self, event: str, *args: Any) -> None:
        for observer in self.observers:
            getattr(observer, event)(*args)

    def _write_header(self) -> None:
        header = {
            "type": "header",
            "domains": list(self.names),
            "policy": self.config.policy,
            "weights": self.initial_weights.tolist(),
            "footing": self.footing,
            "initial_loss": _floats(self.initial_loss),
            "initial_loss_full": _floats(self.initial_loss_full),
            "target_loss": _floats(self.target_loss),
            "target_given": _floats(self.given_target),
            "target_reference": _floats(self.config.target_reference),
            "rising_rule": self.config.rising_rule,
            "target_rules": self.target_rules,
            "blend_schedule": (
                None if self.config.blend_schedule is None else self.config.blend_schedule.to_json()
            ),
            "rule_knobs": self._rule_knobs(),
            "update_interval": self.config.update_interval,
            "eval_iters": self.config.eval_iters,
            "min_weight": self.config.min_weight,
            "loss_source": self.config.loss_source,
            "seed": self.config.seed,
        }
        if self.seq_length is not None:
            header["seq_length"] = self.seq_length
        header.update(self.header_extra)
        # A resumed run's restored updates, for a trajectory file that does not hold this run
        # yet (a new --velocitune-log-dir, or a lost file): without them every reader would
        # take the initial blend for the whole stretch before the resume.
        restored = [self._trajectory_record(r, extra={"restored": True}) for r in self.history]
        self._notify("on_header", header, restored)

    def _rule_knobs(self) -> Dict[str, Any]:
        """The knobs of the rising-domain rule and the headroom floor, as the header holds them."""
        knobs: Dict[str, Any] = {"min_headroom": self.config.min_headroom}
        if self.config.policy == "velocity":
            knobs.update(self.config.guards_identity())
        if self.config.rising_rule == "hold-initial":
            knobs["target_margin"] = self.config.target_margin
        if self.config.forgetting_tolerance is not None:
            knobs["forgetting_tolerance"] = str(self.config.forgetting_tolerance)
        return knobs

    def describe_rules(self) -> str:
        """One line: each domain's target rule, e.g. ``general=budget man=progress``."""
        if self.target_rules is None:
            return "no targets"
        return " ".join(f"{n}={r}" for n, r in zip(self.names, self.target_rules))

    def _log_rules(self) -> None:
        """Each domain's target rule in the log and, as text, in TensorBoard."""
        if self.target_rules is None:
            return
        line = f"rule {self.config.rising_rule}: {self.describe_rules()}"
        if self.sync.is_decider:
            logger.info("velocitune: target rules %s", line)
        self._notify("on_text", "velocitune/target-rules", line)

    def _log_scalars(self, kind: str, values: np.ndarray, iteration: int, samples: int) -> None:
        values = np.asarray(values, np.float64).tolist()
        self._notify("on_scalars", kind, self.names, values, iteration, samples)
