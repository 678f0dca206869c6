"""The ``--velocitune-*`` command-line flags.

``add_velocitune_args`` has the signature of Megatron-LM's ``extra_args_provider``, so the same
group serves ``pretrain_gpt.py`` (through the adapter) and this project's own training entry.
``config_from_args`` turns the parsed namespace into a validated :class:`VelocituneConfig`.

Loss files are JSON: either ``{"losses": {"<domain>": <loss>, ...}}`` (what the project's tools
write, with any other metadata keys beside ``losses``) or a bare ``{"<domain>": <loss>}``; the
domains are matched by name to ``--velocitune-domain-names``, or taken in file order.
"""

import argparse
import json
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_velocitune.core.config import VelocituneConfig, VelocituneConfigError
from megatron_velocitune.core.files import write_json
from megatron_velocitune.core.policy import (
    DEFAULT_BRAKE_WINDOW,
    DEFAULT_NOISE_MULTIPLE,
    DEFAULT_RISING_RULE,
    DEFAULT_RUNAWAY_GUARD,
    DEFAULT_TARGET_MARGIN,
    POLICY_NAMES,
    RISING_RULES,
    RUNAWAY_GUARDS,
    Tolerance,
)
from megatron_velocitune.core.strict_json import load_unique

__all__ = [
    "add_velocitune_args",
    "config_from_args",
    "read_loss_file",
    "read_loss_file_with_reference",
    "write_loss_file",
]


def add_velocitune_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``velocitune`` argument group to ``parser``.

    Args:
        parser (argparse.ArgumentParser): Megatron-LM's parser, or any other.

    Returns:
        argparse.ArgumentParser: the same parser (Megatron-LM's extra_args_provider contract).
    """
    group = parser.add_argument_group(title="velocitune")
    group.add_argument(
        "--velocitune-policy",
        default="velocity",
        choices=sorted(POLICY_NAMES),
        help="Reweighting rule: velocity (Velocitune: Algorithm 1 on one footing, with the noise "
        "floor and the brake), paper (Algorithm 1 exactly as the paper writes it: L_init on the "
        "full held-out sets, absolute targets, no floor, no brake), dbl (Sheared LLaMA DBL), "
        "ratio (no target loss ablation), static (fixed blend, per-domain losses still "
        "recorded) or schedule (a phased blend: --velocitune-blend-schedule).",
    )
    group.add_argument(
        "--velocitune-blend-schedule",
        nargs="+",
        default=None,
        metavar="ITER:W1,W2,...",
        help="Policy schedule: the blend after each given iteration, one weight per domain in "
        "--data-path order (normalised like --data-path weights); the --data-path weights hold "
        "until the first phase. Example: 1700:0.5,0.25,0.25 switches to half replay for the "
        "samples after iteration 1700. Each switch is an update (evaluated and logged, kept "
        "in the checkpoint's sidecar), so a resume across it is exact.",
    )
    group.add_argument(
        "--velocitune-update-interval",
        type=int,
        default=150,
        help="Iterations m between two weight updates (paper: 150).",
    )
    group.add_argument(
        "--velocitune-eval-iters",
        type=int,
        default=10,
        help="Micro-batches per domain and data-parallel rank in each held-out evaluation (the "
        "same samples every time, also for L_init). The standard error of a domain's loss falls "
        "as 1/sqrt(eval-iters * micro-batch * data-parallel size) sequences, and the velocity's "
        "headroom is never below --velocitune-noise-multiple of it: a larger subset costs "
        "proportionally more forward passes per update and lets smaller headrooms count.",
    )
    group.add_argument(
        "--velocitune-initial-loss",
        type=float,
        nargs="+",
        default=None,
        help="Initial held-out loss per domain on the full held-out sets, in blend order "
        "(the start/end table; the velocity of policy paper). Measured at iteration 0 when "
        "neither this nor --velocitune-initial-loss-file is given. The velocity of policy "
        "velocity always reads L_init measured at iteration 0 on its evaluation subset.",
    )
    group.add_argument(
        "--velocitune-initial-loss-file",
        default=None,
        help="JSON file of initial losses per domain (tools/measure_initial_loss.py writes it).",
    )
    group.add_argument(
        "--velocitune-target-loss",
        type=float,
        nargs="+",
        default=None,
        help="Target held-out loss per domain, in blend order; each below its initial loss.",
    )
    group.add_argument(
        "--velocitune-target-loss-file",
        default=None,
        help="JSON file of target losses per domain (tools/fit_target_loss.py writes it).",
    )
    group.add_argument(
        "--velocitune-rising-rule",
        default=DEFAULT_RISING_RULE,
        choices=list(RISING_RULES),
        help="Target of a domain whose given target is not below its initial loss (a replay "
        "domain that forgets): budget (keep it: the velocity is the share of that forgetting "
        "budget used, 0 at the start, 1 once it has forgotten that much), budget-hold (the "
        "same target; at its budget the domain keeps pace with the others' mean velocity, "
        "past it it gains weight, below it it gives weight away), tolerance "
        "(L_init + --velocitune-forgetting-tolerance, same velocity), hold-initial "
        "(L_init * (1 - --velocitune-target-margin): any forgetting reads velocity 1) or "
        "refuse (an error). Default: %(default)s (docs/results.md).",
    )
    group.add_argument(
        "--velocitune-target-margin",
        type=float,
        default=DEFAULT_TARGET_MARGIN,
        help="hold-initial's relative margin below the initial loss (default: %(default)s).",
    )
    group.add_argument(
        "--velocitune-forgetting-tolerance",
        type=tolerance_arg,
        default=None,
        help="The tolerance rule's forgetting budget: nats (0.05) or a share of the initial "
        "loss (2%%).",
    )
    group.add_argument(
        "--velocitune-min-headroom",
        type=float,
        default=0.0,
        help="Smallest headroom |L_init - L_target| (nats) the velocity divides by, so that "
        "evaluation noise on a domain with a tiny gap cannot hold its velocity at 0 or 1 "
        "(default: 0; policy velocity also floors it at --velocitune-noise-multiple standard "
        "errors).",
    )
    group.add_argument(
        "--velocitune-noise-multiple",
        type=float,
        default=DEFAULT_NOISE_MULTIPLE,
        help="Policy velocity: the headroom is at least this many standard errors of the "
        "domain's evaluated loss (per-sequence losses of the subset; 0: off; default: "
        "%(default)s).",
    )
    group.add_argument(
        "--velocitune-brake-window",
        type=int,
        default=DEFAULT_BRAKE_WINDOW,
        help="Policy velocity: a domain above its initial share whose loss did not fall over "
        "the last this-many updates stops gaining weight and gives half its excess back per "
        "update (0: off; default: %(default)s).",
    )
    group.add_argument(
        "--velocitune-runaway-guard",
        choices=RUNAWAY_GUARDS,
        default=DEFAULT_RUNAWAY_GUARD,
        help="Policy velocity: what stops a domain's weight from compounding when more of it "
        "does not lower its loss: brake (see --velocitune-brake-window), cap (no share above "
        "2x its initial one) or anchored (each update starts from the initial blend; "
        "default: %(default)s).",
    )
    group.add_argument(
        "--velocitune-min-weight",
        type=float,
        default=0.0,
        help="Floor of every domain weight after an update (0: the paper's rule exactly).",
    )
    group.add_argument(
        "--velocitune-domain-names",
        nargs="+",
        default=None,
        help="One name per domain, in blend order (default: the data prefixes' base names).",
    )
    group.add_argument(
        "--velocitune-loss-source",
        default="eval",
        choices=["eval", "train"],
        help="Per-domain loss the policy reads: eval (held-out evaluation every m iterations, "
        "as the paper) or train (the training stream's per-domain loss over the last m "
        "iterations: no extra forward passes; fit targets on a proxy run with the same source).",
    )
    group.add_argument(
        "--velocitune-log-dir",
        default=None,
        help="Directory for the JSONL weight/loss trajectory (default: --tensorboard-dir or "
        "--save).",
    )
    return parser


def tolerance_arg(text: str) -> Tolerance:
    """An argparse type for a forgetting tolerance: nats (``0.05``) or a percentage (``2%``)."""
    try:
        return Tolerance.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def read_loss_file(path: str, names: Optional[Sequence[str]], flag: str) -> List[float]:
    """Read a per-domain loss JSON file.

    Args:
        path (str): the file.
        names (Optional[Sequence[str]]): domain names to pick, in blend order; file order if None.
        flag (str): the flag that named the file, for error messages.

    Returns:
        List[float]: one loss per domain.
    """
    return read_loss_file_with_reference(path, names, flag)[0]


def read_loss_file_with_reference(
    path: str, names: Optional[Sequence[str]], flag: str
) -> Tuple[List[float], Optional[List[float]]]:
    """Read a per-domain loss JSON file and the initial losses its values are relative to.

    A targets file written by ``velocitune-fit-targets`` from proxy runs on the subset footing
    names the proxy's own initial loss under ``reference_initial``: the run then takes each
    target as its change from that reference, applied to its own initial loss.

    Args:
        path (str): the file.
        names (Optional[Sequence[str]]): domain names to pick, in blend order; file order if None.
        flag (str): the flag that named the file, for error messages.

    Returns:
        Tuple[List[float], Optional[List[float]]]: the losses, and the reference (None: the
        losses are absolute).
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = load_unique(f)
    except (OSError, ValueError) as e:
        raise VelocituneConfigError(f"{flag}: cannot read {path!r}: {e}") from None
    losses = data.get("losses", data) if isinstance(data, dict) else None
    if not isinstance(losses, dict):
        raise VelocituneConfigError(
            f"{flag}: {path!r} must hold a JSON object of domain -> loss (optionally under "
            f"'losses')"
        )
    values = _losses_of(losses, names, flag, path)
    reference = data.get("reference_initial") if "losses" in data else None
    if reference is None:
        return values, None
    if not isinstance(reference, dict):
        raise VelocituneConfigError(
            f"{flag}: {path!r} 'reference_initial' must be a JSON object of domain -> loss"
        )
    return values, _losses_of(reference, names or list(losses), flag, path)


def _losses_of(
    losses: Dict[str, object], names: Optional[Sequence[str]], flag: str, path: str
) -> List[float]:
    """The numbers of one domain -> loss mapping, in ``names`` order (one-line errors)."""
    for domain, value in losses.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise VelocituneConfigError(
                f"{flag}: {path!r} gives domain {domain!r} the loss {json.dumps(value)}, not a "
                "number"
            )
    if names is None:
        return [float(v) for v in losses.values()]
    missing = [n for n in names if n not in losses]
    if missing:
        raise VelocituneConfigError(
            f"{flag}: {path!r} has no loss for domains {missing} (it has {sorted(losses)})"
        )
    extra = [n for n in losses if n not in names]
    if extra:
        raise VelocituneConfigError(
            f"{flag}: {path!r} has losses for domains {extra} that are not in this run "
            f"({list(names)})"
        )
    return [float(losses[n]) for n in names]


def write_loss_file(path: str, names: Sequence[str], losses: Sequence[float], **meta) -> None:
    """Write losses in the format :func:`read_loss_file` reads (atomically)."""
    payload: Dict[str, object] = dict(meta)
    payload["losses"] = {n: float(v) for n, v in zip(names, losses)}
    write_json(path, payload, indent=2)


def _losses_from(args: argparse.Namespace, kind: str, names) -> tuple:
    values = getattr(args, f"velocitune_{kind}_loss")
    path = getattr(args, f"velocitune_{kind}_loss_file")
    if values is not None and path is not None:
        raise VelocituneConfigError(
            f"--velocitune-{kind}-loss and --velocitune-{kind}-loss-file {path!r}: give one"
        )
    if path is not None:
        losses, reference = read_loss_file_with_reference(
            path, names, f"--velocitune-{kind}-loss-file {path}"
        )
        return losses, path, reference
    return values, None, None


def config_from_args(args: argparse.Namespace) -> VelocituneConfig:
    """Build the config from parsed flags (reading the loss files they name).

    Args:
        args (argparse.Namespace): parsed arguments holding the ``velocitune_*`` attributes.

    Returns:
        VelocituneConfig: the config; call ``validate(num_domains, weights)`` once the blend is
        known.
    """
    names = args.velocitune_domain_names
    initial, initial_file, _ = _losses_from(args, "initial", names)
    target, target_file, target_reference = _losses_from(args, "target", names)
    return VelocituneConfig(
        policy=args.velocitune_policy,
        update_interval=args.velocitune_update_interval,
        eval_iters=args.velocitune_eval_iters,
        initial_loss=initial,
        initial_loss_file=initial_file,
        target_loss=target,
        target_loss_file=target_file,
        target_reference=target_reference,
        min_weight=args.velocitune_min_weight,
        domain_names=names,
        seed=getattr(args, "seed", 1234),
        log_dir=args.velocitune_log_dir,
        loss_source=getattr(args, "velocitune_loss_source", "eval"),
        rising_rule=getattr(args, "velocitune_rising_rule", DEFAULT_RISING_RULE),
        target_margin=getattr(args, "velocitune_target_margin", DEFAULT_TARGET_MARGIN),
        forgetting_tolerance=getattr(args, "velocitune_forgetting_tolerance", None),
        min_headroom=getattr(args, "velocitune_min_headroom", 0.0),
        noise_multiple=getattr(args, "velocitune_noise_multiple", DEFAULT_NOISE_MULTIPLE),
        brake_window=getattr(args, "velocitune_brake_window", DEFAULT_BRAKE_WINDOW),
        runaway_guard=getattr(args, "velocitune_runaway_guard", DEFAULT_RUNAWAY_GUARD),
        blend_phases=getattr(args, "velocitune_blend_schedule", None),
        train_iters=getattr(args, "train_iters", None),
    )
