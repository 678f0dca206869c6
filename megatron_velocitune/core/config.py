"""VelocituneConfig: every knob of the plugin in one dataclass, validated once.

Each field maps to one ``--velocitune-*`` flag (see :mod:`megatron_velocitune.core.arguments`), and
every validation error is a single line naming that flag and the offending value, so a bad launch
fails before any rank touches data.
"""

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from megatron_velocitune.core.blending import check_blend_weights
from megatron_velocitune.core.errors import TargetRuleError, VelocituneConfigError
from megatron_velocitune.core.policy import (
    DEFAULT_BRAKE_WINDOW,
    DEFAULT_NOISE_MULTIPLE,
    DEFAULT_RISING_RULE,
    DEFAULT_RUNAWAY_GUARD,
    DEFAULT_TARGET_MARGIN,
    POLICY_NAMES,
    RISING_RULES,
    RUNAWAY_GUARDS,
    SCHEDULE_POLICY,
    VELOCITY_POLICIES,
    ResolvedTargets,
    Tolerance,
    resolve_targets,
)
from megatron_velocitune.core.schedule import SCHEDULE_FLAG, BlendSchedule

__all__ = [
    "FOOTINGS",
    "VelocituneConfig",
    "VelocituneConfigError",
    "check_losses",
    "check_weights",
]


LOSS_SOURCES = ("eval", "train")

#: What the velocity's L_init (and the targets carried over as changes) is measured on:
#: ``subset`` the evaluation subset S'_eval that every update measures (policy velocity and the
#: baselines), ``full`` the full held-out sets (policy paper, as the paper does; also an older
#: run's sidecar), ``stream`` the training stream's first draws (``--velocitune-loss-source
#: train``).
FOOTINGS = ("subset", "full", "stream")


def _flag(name: str) -> str:
    return "--velocitune-" + name.replace("_", "-")


def check_losses(
    values: Sequence[float], num_domains: int, flag: str, names: Optional[Sequence[str]] = None
) -> List[float]:
    """Check a per-domain loss vector: right length, finite, positive.

    Args:
        values (Sequence[float]): one loss per domain.
        num_domains (int): number of domains in the blend.
        flag (str): the flag (or file) the values came from, for the error message.
        names (Optional[Sequence[str]]): domain names, for the error message.

    Returns:
        List[float]: the values as floats.
    """
    values = [float(v) for v in values]
    if len(values) != num_domains:
        raise VelocituneConfigError(
            f"{flag}: got {len(values)} losses {values} for {num_domains} domains"
        )
    for i, v in enumerate(values):
        name = names[i] if names else str(i)
        if not math.isfinite(v) or v <= 0.0:
            raise VelocituneConfigError(
                f"{flag}: loss {v} for domain {name!r} must be finite and positive"
            )
    return values


def check_weights(weights: Sequence[float], flag: str = "--data-path") -> List[float]:
    """Check a blend: finite, strictly positive, summing to one (within 1e-6).

    Returns:
        List[float]: the weights as floats.
    """
    try:
        return check_blend_weights(weights, None, normalize=False, what=f"{flag}: weights").tolist()
    except ValueError as e:
        raise VelocituneConfigError(str(e)) from None


@dataclass
class VelocituneConfig:
    """Configuration of a Velocitune run.

    Attributes:
        policy (str): ``velocity`` (Velocitune), ``dbl``, ``ratio`` (no target loss) or
            ``static`` (CPT; per-domain evaluation still runs, which is the observe mode).
        update_interval (int): ``m``, iterations between two weight updates (paper: 150).
        eval_iters (int): micro-batches per domain in each held-out evaluation ``S'_eval,i``.
        initial_loss (Optional[List[float]]): ``L_init`` per domain; measured at iteration 0
            on the full held-out sets when None.
        initial_loss_file (Optional[str]): JSON file the initial losses were read from.
        target_loss (Optional[List[float]]): ``L_target`` per domain (needed by velocity, dbl).
        target_loss_file (Optional[str]): JSON file the target losses were read from.
        min_weight (float): weight floor after each update (0 reproduces the paper exactly).
        domain_names (Optional[List[str]]): one name per domain, for logs and loss files.
        seed (int): seed of the blend (and of the evaluation subsets).
        log_dir (Optional[str]): where the JSONL trajectory is written.
        loss_source (str): ``eval`` (held-out evaluation every ``m`` iterations, the paper) or
            ``train`` (the per-domain training loss of the last ``m`` iterations: no extra
            forward passes; see :mod:`megatron_velocitune.control.train_stream`).
        rising_rule (str): the target of a domain whose given target is not below its initial
            loss: ``budget`` (kept, a forgetting budget), ``tolerance``, ``hold-initial`` or
            ``refuse`` (see :func:`megatron_velocitune.core.policy.resolve_targets`).
        target_margin (float): hold-initial's relative margin below ``L_init``.
        forgetting_tolerance (Optional[Tolerance]): the tolerance rule's budget.
        min_headroom (float): the velocity never divides by a headroom ``|L_init - L_target|``
            smaller than this (nats): a floor against evaluation noise.
        target_reference (Optional[List[float]]): the initial losses the targets were predicted
            from (a targets file's ``reference_initial``): the run then uses ``L_init +
            (target - reference)``, each target as a change on its own footing. None: absolute.
        noise_multiple (float): policy ``velocity``: the headroom is at least this many
            standard errors of the evaluated loss.
        brake_window (int): policy ``velocity``: updates over which a domain above its initial
            share must lower its loss to keep gaining weight (0: no brake).
        runaway_guard (str): policy ``velocity``: what keeps a domain's weight from compounding
            (one of :data:`~megatron_velocitune.core.policy.RUNAWAY_GUARDS`; ``brake`` reads
            ``brake_window``).
        blend_phases (Optional[List[str]]): policy ``schedule``: its ``ITER:W1,W2,...`` phases
            (``--velocitune-blend-schedule``), read into :attr:`blend_schedule` by
            :meth:`validate` once the number of domains is known.
        train_iters (Optional[int]): the run's length, when known (a phase at or after it
            would never apply).
    """

    policy: str = "velocity"
    update_interval: int = 150
    eval_iters: int = 10
    initial_loss: Optional[List[float]] = None
    initial_loss_file: Optional[str] = None
    target_loss: Optional[List[float]] = None
    target_loss_file: Optional[str] = None
    min_weight: float = 0.0
    domain_names: Optional[List[str]] = None
    seed: int = 1234
    log_dir: Optional[str] = None
    loss_source: str = "eval"
    rising_rule: str = DEFAULT_RISING_RULE
    target_margin: float = DEFAULT_TARGET_MARGIN
    forgetting_tolerance: Optional[Tolerance] = None
    min_headroom: float = 0.0
    target_reference: Optional[List[float]] = None
    noise_multiple: float = DEFAULT_NOISE_MULTIPLE
    brake_window: int = DEFAULT_BRAKE_WINDOW
    runaway_guard: str = DEFAULT_RUNAWAY_GUARD
    blend_phases: Optional[List[str]] = None
    train_iters: Optional[int] = None
    blend_schedule: Optional[BlendSchedule] = field(default=None, init=False)

    @property
    def footing(self) -> str:
        """What L_init is measured on (one of :data:`FOOTINGS`), from the policy and source."""
        if self.loss_source == "train":
            return "stream"
        return "full" if self.policy == "paper" else "subset"

    def guards_identity(self) -> dict:
        """The ``velocity`` policy's guards (and a ``schedule``'s phases) as the resume
        identity and the trajectory header record them (the runaway guard only when it is not
        ``brake``, so that sidecars and headers from before the choice read the same).
        """
        guards = {"noise_multiple": self.noise_multiple, "brake_window": self.brake_window}
        if self.runaway_guard != DEFAULT_RUNAWAY_GUARD:
            guards["runaway_guard"] = self.runaway_guard
        if self.blend_schedule is not None:
            guards["blend_schedule"] = self.blend_schedule.to_json()
        return guards

    def __post_init__(self) -> None:
        if self.policy not in POLICY_NAMES:
            raise VelocituneConfigError(
                f"{_flag('policy')}: {self.policy!r} is not one of {sorted(POLICY_NAMES)}"
            )
        if (self.policy == SCHEDULE_POLICY) != (self.blend_phases is not None):
            raise VelocituneConfigError(
                f"{SCHEDULE_FLAG}: {self.blend_phases} is read by {_flag('policy')} "
                f"{SCHEDULE_POLICY} and only by it (the policy is {self.policy!r})"
                if self.blend_phases is not None
                else f"{_flag('policy')} {SCHEDULE_POLICY} needs {SCHEDULE_FLAG} ITER:W1,W2,... "
                "(the blend after each given iteration)"
            )
        if self.loss_source not in LOSS_SOURCES:
            raise VelocituneConfigError(
                f"{_flag('loss_source')}: {self.loss_source!r} is not one of {list(LOSS_SOURCES)}"
            )
        for name in ("update_interval", "eval_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise VelocituneConfigError(f"{_flag(name)}: {value!r} must be an integer >= 1")
        if self.rising_rule not in RISING_RULES:
            raise VelocituneConfigError(
                f"{_flag('rising_rule')}: {self.rising_rule!r} is not one of {list(RISING_RULES)}"
            )
        if not 0.0 < self.target_margin < 1.0:
            raise VelocituneConfigError(
                f"{_flag('target_margin')}: {self.target_margin} must be in (0, 1)"
            )
        if self.rising_rule == "tolerance" and self.forgetting_tolerance is None:
            raise VelocituneConfigError(
                f"{_flag('rising_rule')} tolerance needs {_flag('forgetting_tolerance')} "
                f"(nats, e.g. 0.05, or a share of the initial loss, e.g. 2%)"
            )
        if self.rising_rule != "tolerance" and self.forgetting_tolerance is not None:
            raise VelocituneConfigError(
                f"{_flag('forgetting_tolerance')}: {self.forgetting_tolerance} is read only by "
                f"{_flag('rising_rule')} tolerance, not {self.rising_rule!r}"
            )
        if not math.isfinite(self.min_headroom) or self.min_headroom < 0.0:
            raise VelocituneConfigError(
                f"{_flag('min_headroom')}: {self.min_headroom} must be finite and >= 0"
            )
        if not math.isfinite(self.noise_multiple) or self.noise_multiple < 0.0:
            raise VelocituneConfigError(
                f"{_flag('noise_multiple')}: {self.noise_multiple} must be finite and >= 0"
            )
        if not isinstance(self.brake_window, int) or self.brake_window < 0:
            raise VelocituneConfigError(
                f"{_flag('brake_window')}: {self.brake_window!r} must be an integer >= 0"
            )
        if self.runaway_guard not in RUNAWAY_GUARDS:
            raise VelocituneConfigError(
                f"{_flag('runaway_guard')}: {self.runaway_guard!r} is not one of "
                f"{list(RUNAWAY_GUARDS)}"
            )
        if not math.isfinite(self.min_weight) or self.min_weight < 0.0:
            raise VelocituneConfigError(
                f"{_flag('min_weight')}: {self.min_weight} must be finite and >= 0"
            )
        blank = [i for i, n in enumerate(self.domain_names or []) if not str(n).strip()]
        if blank:
            raise VelocituneConfigError(
                f"{_flag('domain_names')}: {self.domain_names} has an empty name (domain "
                f"{blank[0]}); every domain needs one (loss files and logs are keyed by it)"
            )
        if self.domain_names is not None and len(set(self.domain_names)) != len(self.domain_names):
            raise VelocituneConfigError(
                f"{_flag('domain_names')}: {self.domain_names} has repeated names"
            )

    def validate(self, num_domains: int, weights: Optional[Sequence[float]] = None) -> None:
        """Check everything that depends on the blend, once it is known.

        Args:
            num_domains (int): number of domains in the blend.
            weights (Optional[Sequence[float]]): the starting blend, normalised.

        Raises:
            VelocituneConfigError: one line naming the flag and value at fault.
        """
        if num_domains < 1:
            raise VelocituneConfigError(f"--data-path: a blend needs domains, got {num_domains}")
        names = self.domain_names
        if names is not None and len(names) != num_domains:
            raise VelocituneConfigError(
                f"{_flag('domain_names')}: {len(names)} names {names} for {num_domains} domains"
            )
        if weights is not None:
            check_weights(weights)
        if self.blend_phases is not None:
            try:
                self.blend_schedule = BlendSchedule.parse(self.blend_phases, num_domains)
            except ValueError as e:
                raise VelocituneConfigError(str(e)) from None
            last = self.blend_schedule.iterations[-1]
            if self.train_iters is not None and last >= self.train_iters:
                raise VelocituneConfigError(
                    f"{SCHEDULE_FLAG}: the phase after iteration {last} never applies in a run "
                    f"of --train-iters {self.train_iters}"
                )
        if self.min_weight * num_domains >= 1.0:
            raise VelocituneConfigError(
                f"{_flag('min_weight')}: {self.min_weight} leaves no room for {num_domains} "
                f"domains (needs min_weight * domains < 1)"
            )
        initial_flag = self.initial_loss_file or _flag("initial_loss")
        target_flag = self.target_loss_file or _flag("target_loss")
        if self.initial_loss is not None:
            check_losses(self.initial_loss, num_domains, initial_flag, names)
        if self.target_loss is not None:
            check_losses(self.target_loss, num_domains, target_flag, names)
            if self.target_reference is not None:
                check_losses(
                    self.target_reference, num_domains, f"{target_flag} reference_initial", names
                )
        elif self.policy in VELOCITY_POLICIES + ("dbl",):
            raise VelocituneConfigError(
                f"{_flag('target_loss')}: policy {self.policy!r} needs target losses "
                f"(--velocitune-target-loss or --velocitune-target-loss-file)"
            )
        if (
            self.initial_loss is not None
            and self.target_loss is not None
            and self.target_reference is None
            and self.footing == "full"
        ):
            self.resolve_targets(self.initial_loss, self.target_loss, target_flag, names)

    def resolve_targets(
        self,
        initial: Sequence[float],
        target: Sequence[float],
        flag: str,
        names: Optional[Sequence[str]] = None,
    ) -> ResolvedTargets:
        """Each domain's target under :attr:`rising_rule` (see ``policy.resolve_targets``).

        Raises:
            VelocituneConfigError: one line naming ``flag``, the rule, the domain and the values.
        """
        try:
            return resolve_targets(
                initial,
                target,
                self.rising_rule,
                self.target_margin,
                self.forgetting_tolerance,
                names,
            )
        except TargetRuleError as e:
            raise VelocituneConfigError(f"{flag}: {e} ({_flag('rising_rule')})") from None

    def targets_for(self, initial: Sequence[float]) -> List[float]:
        """The given targets for a run whose velocity reads ``initial``.

        With a reference (a fitted targets file), each target is its change from the reference
        added to ``initial``, so a proxy's subset and this run's subset need not agree on the
        level, only on the change; without one the targets are absolute.

        Args:
            initial (Sequence[float]): the L_init the velocity reads.

        Returns:
            List[float]: one target per domain.
        """
        if self.target_loss is None:
            raise VelocituneConfigError(f"{_flag('target_loss')}: no targets given")
        if self.target_reference is None:
            return [float(t) for t in self.target_loss]
        return [
            float(i) + float(t) - float(r)
            for i, t, r in zip(initial, self.target_loss, self.target_reference)
        ]

    def names(self, num_domains: int) -> List[str]:
        """Domain names, defaulting to ``domain0 .. domain{k-1}``."""
        return list(self.domain_names or [f"domain{i}" for i in range(num_domains)])
