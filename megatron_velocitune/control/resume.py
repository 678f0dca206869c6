"""What a resume must match, and the checks of a sidecar before the controller reads it.

A resumed run continues bit for bit only if it reads the same data in the same order and
updates the blend by the same rule. The sidecar therefore records a *resume identity*
(:class:`ResumeIdentity`): each domain's data files (sizes, a hash of the ``.idx`` and a
sampled hash of the ``.bin``'s content), ``m``,
the data-parallel size of the training-stream window, the policy, the rising-domain rule and
its knobs, the loss source, the split, the sequence length, the global batch size and the seed.
:func:`check_resume` compares it with the resuming run's and refuses any difference with one
line naming the old and the new value. :func:`check_sidecar` checks the sidecar's own fields
(keys, types, a valid blend, finite initial losses) and names the file. Pure: no torch.
"""

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from megatron_velocitune.core.config import FOOTINGS
from megatron_velocitune.core.errors import CheckpointError

__all__ = ["RESUME_KEY", "ResumeIdentity", "check_resume", "check_sidecar"]

RESUME_KEY = "resume"

# Identity field -> the flag a user changes it with (for the error line).
_FLAGS = {
    "data": "--data-path",
    "blend": "--data-path weights",
    "update_interval": "--velocitune-update-interval",
    "stream_dp_size": "the data-parallel size (world size / (TP x PP))",
    "policy": "--velocitune-policy",
    "rising_rule": "--velocitune-rising-rule",
    "rule_knobs": "the rising rule's knobs (--velocitune-target-margin / "
    "--velocitune-forgetting-tolerance / --velocitune-min-headroom)",
    "min_weight": "--velocitune-min-weight",
    "guards": "the default policy's guards (--velocitune-noise-multiple / "
    "--velocitune-brake-window / --velocitune-runaway-guard)",
    "loss_source": "--velocitune-loss-source",
    "split": "--split",
    "seq_length": "--seq-length",
    "global_batch_size": "--global-batch-size",
    "seed": "--seed",
}


#: Fields an older sidecar's identity lacks: not compared then (a note says so).
_ADDED_LATER = {"guards": "guards", "blend": "--data-path weights"}


@dataclass(frozen=True)
class ResumeIdentity:
    """What a resume must match (stored in every sidecar under ``resume``).

    The on-disk form is :meth:`to_json`'s dict, the same keys and values the sidecars of
    earlier versions hold, so an older sidecar compares equal where it did.

    Attributes:
        data (Tuple[Mapping[str, Any], ...]): each domain's prefix and
            :func:`~megatron_velocitune.data.datafiles.check_data_file` record, in blend order.
        update_interval (int): ``m``.
        stream_dp_size (Optional[int]): data-parallel size of the saved training-stream windows
            (None when the run keeps none, or restarts them under another layout).
        policy (str): the policy.
        rising_rule (str): the rising-domain rule.
        rule_knobs (Mapping[str, Any]): its knobs (margin, tolerance, headroom floor).
        min_weight (float): the weight floor.
        loss_source (str): ``eval`` or ``train``.
        split (str): ``--split``.
        seq_length (int): ``--seq-length``.
        global_batch_size (int): ``--global-batch-size``.
        seed (int): ``--seed``.
        guards (Optional[Mapping[str, Any]]): the ``velocity`` policy's noise multiple and
            brake window (an older sidecar has none: not compared).
        blend (Optional[Tuple[float, ...]]): the ``--data-path`` weights the run started from
            (a changed static blend would otherwise resume silently on the saved one; an older
            sidecar has none: not compared).
    """

    data: Tuple[Mapping[str, Any], ...]
    update_interval: int
    stream_dp_size: Optional[int]
    policy: str
    rising_rule: str
    rule_knobs: Mapping[str, Any]
    min_weight: float
    loss_source: str
    split: str
    seq_length: int
    global_batch_size: int
    seed: int
    guards: Optional[Mapping[str, Any]] = None
    blend: Optional[Tuple[float, ...]] = None

    @classmethod
    def of(
        cls,
        prefixes: Sequence[str],
        files: Sequence[Mapping[str, Any]],
        *,
        update_interval: int,
        stream_dp_size: Optional[int],
        policy: str,
        rising_rule: str,
        rule_knobs: Mapping[str, Any],
        min_weight: float,
        loss_source: str,
        split: str,
        seq_length: int,
        global_batch_size: int,
        seed: int,
        guards: Optional[Mapping[str, Any]] = None,
        blend: Optional[Sequence[float]] = None,
    ) -> "ResumeIdentity":
        """The identity of a run over ``prefixes``, each value in the form the sidecar holds.

        Args:
            prefixes (Sequence[str]): the domains' data prefixes, in blend order.
            files (Sequence[Mapping[str, Any]]): each prefix's ``check_data_file`` record.
            update_interval (int): ``m``.
            stream_dp_size (Optional[int]): the saved windows' data-parallel size, or None.
            policy (str): the policy.
            rising_rule (str): the rising-domain rule.
            rule_knobs (Mapping[str, Any]): its knobs.
            min_weight (float): the weight floor.
            loss_source (str): ``eval`` or ``train``.
            split (str): ``--split``.
            seq_length (int): ``--seq-length``.
            global_batch_size (int): ``--global-batch-size``.
            seed (int): ``--seed``.
            guards (Optional[Mapping[str, Any]]): the default policy's guards.
            blend (Optional[Sequence[float]]): the starting ``--data-path`` weights.

        Returns:
            ResumeIdentity: the identity.
        """
        return cls(
            data=tuple({"prefix": str(p), **dict(f)} for p, f in zip(prefixes, files)),
            update_interval=int(update_interval),
            stream_dp_size=None if stream_dp_size is None else int(stream_dp_size),
            policy=policy,
            rising_rule=rising_rule,
            rule_knobs=dict(rule_knobs),
            min_weight=float(min_weight),
            loss_source=loss_source,
            split=str(split),
            seq_length=int(seq_length),
            global_batch_size=int(global_batch_size),
            seed=int(seed),
            guards=None if guards is None else dict(guards),
            # Rounded: the blend read back from JSON compares equal to the one computed.
            blend=None if blend is None else tuple(round(float(w), 12) for w in blend),
        )

    def to_json(self) -> Dict[str, Any]:
        """The sidecar's ``resume`` record (the keys and values of every earlier version)."""
        return {
            "data": [dict(d) for d in self.data],
            "update_interval": self.update_interval,
            "stream_dp_size": self.stream_dp_size,
            "policy": self.policy,
            "rising_rule": self.rising_rule,
            "rule_knobs": dict(self.rule_knobs),
            "min_weight": self.min_weight,
            "loss_source": self.loss_source,
            "split": self.split,
            "seq_length": self.seq_length,
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
            "guards": None if self.guards is None else dict(self.guards),
            "blend": None if self.blend is None else list(self.blend),
        }


def _content(entry: Dict[str, Any], bin_hash: bool) -> tuple:
    keys = ("bin_bytes", "idx_bytes", "idx_sha256") + (("bin_blake2b",) if bin_hash else ())
    return tuple(entry.get(k) for k in keys)


def _describe(entry: Dict[str, Any]) -> str:
    return (
        f"{entry.get('prefix')} ({entry.get('bin_bytes')} + {entry.get('idx_bytes')} bytes, "
        f"idx sha256 {str(entry.get('idx_sha256'))[:12]}, bin blake2b "
        f"{str(entry.get('bin_blake2b'))[:12]})"
    )


def check_resume(
    saved: Optional[Mapping[str, Any]], identity: ResumeIdentity, where: str
) -> List[str]:
    """Refuse a resume whose identity differs from the saved one.

    Args:
        saved (Optional[Mapping[str, Any]]): the sidecar's ``resume`` record as read (None: a
            sidecar written before it existed; nothing can be compared).
        identity (ResumeIdentity): the resuming run's.
        where (str): the sidecar path, for the error line.

    Returns:
        List[str]: notes for the log (data moved to other paths with the same content).

    Raises:
        CheckpointError: the first difference, naming the flag, the old and the new value.
    """
    notes: List[str] = []
    current = identity.to_json()  # compared in the on-disk form: old sidecars as before
    if saved is None:
        return [
            "the sidecar records no resume identity (written by an older version): "
            "data files and settings were not compared"
        ]
    for key, flag in _FLAGS.items():
        old, new = saved.get(key), current.get(key)
        if key == "data":
            old = old or []
            if len(old) != len(new):
                raise CheckpointError(
                    f"{where}: the run was saved with {len(old)} domains in --data-path, "
                    f"this run has {len(new)}"
                )
            # A sidecar written before the .bin hash compares sizes and the .idx only.
            bin_hash = all(a.get("bin_blake2b") is not None for a in old)
            if not bin_hash and old:
                notes.append(
                    "the sidecar records no .bin content hash (written by an older version): "
                    "the .bin files were compared by size only"
                )
            for i, (a, b) in enumerate(zip(old, new)):
                if _content(a, bin_hash) != _content(b, bin_hash):
                    raise CheckpointError(
                        f"{where}: domain {i} of --data-path was {_describe(a)}, this run has "
                        f"{_describe(b)}: other data, it cannot resume"
                    )
                if a.get("prefix") != b.get("prefix"):
                    notes.append(
                        f"domain {i}: data moved from {a.get('prefix')} to {b.get('prefix')} "
                        "(same content)"
                    )
            continue
        if key in _ADDED_LATER and old is None and new is not None:
            notes.append(
                f"the sidecar records no {_ADDED_LATER[key]} (written by an older version)"
            )
            continue
        if old != new:
            raise CheckpointError(
                f"{where}: the run was saved with {flag} {old!r}, this run has {new!r}: it "
                "cannot resume exactly (use the saved value, or start a new run from the "
                "checkpoint with --finetune)"
            )
    return notes


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(state: Dict[str, Any], key: str, k: int, where: str, optional: bool) -> None:
    value = state.get(key)
    if value is None and optional:
        return
    if not isinstance(value, list) or len(value) != k or not all(_is_number(v) for v in value):
        raise CheckpointError(
            f"{where}: {key!r} must be a list of {k} numbers, one per domain; it holds {value!r}"
        )


def check_sidecar(state: Dict[str, Any], where: str, num_domains: int) -> None:
    """Check a sidecar's fields before the controller reads them.

    Args:
        state (Dict[str, Any]): the sidecar, as
            :func:`~megatron_velocitune.control.state.load_state` returns it (NaN for the
            ``null`` s of number lists).
        where (str): its path, for the error line.
        num_domains (int): the run's domain count.

    Raises:
        CheckpointError: a missing key, a wrong type, an invalid blend or a non-finite or
            non-positive initial loss, naming the file and the field.
    """
    required = ("version", "domains", "policy", "initial_weights", "weights", "history")
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{where}: the Velocitune sidecar has no {', '.join(missing)}")
    domains = state["domains"]
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise CheckpointError(f"{where}: 'domains' must be a list of names; it holds {domains!r}")
    k = len(domains)
    if k != num_domains:
        raise CheckpointError(
            f"{where}: the sidecar is for {k} domains {domains}, this run has {num_domains}"
        )
    for key in ("initial_weights", "weights"):
        _numbers(state, key, k, where, optional=False)
        w = state[key]
        if not all(math.isfinite(x) and x > 0 for x in w) or abs(sum(w) - 1.0) > 1e-6:
            raise CheckpointError(
                f"{where}: {key!r} {w} is not a blend (finite, > 0, summing to 1)"
            )
    for key in ("initial_loss", "initial_loss_full", "target_loss", "target_given"):
        _numbers(state, key, k, where, optional=True)
    footing = state.get("footing", "full")
    if footing not in FOOTINGS:
        raise CheckpointError(f"{where}: 'footing' {footing!r} is not one of {list(FOOTINGS)}")
    initial = state.get("initial_loss")
    if initial is not None and not all(math.isfinite(x) and x > 0 for x in initial):
        raise CheckpointError(
            f"{where}: 'initial_loss' {initial} must be finite and positive (the base model's "
            "loss per domain)"
        )
    history = state["history"]
    if not isinstance(history, list):
        raise CheckpointError(f"{where}: 'history' must be a list of updates; it holds {history!r}")
    last = -1
    for n, record in enumerate(history):
        if not isinstance(record, dict):
            raise CheckpointError(f"{where}: history[{n}] is not an update record: {record!r}")
        for key in ("iteration", "start_sample", "weights", "skipped"):
            if key not in record:
                raise CheckpointError(f"{where}: history[{n}] has no {key!r}")
        if not isinstance(record["iteration"], int) or record["iteration"] <= last:
            raise CheckpointError(
                f"{where}: history[{n}] iteration {record['iteration']!r} does not increase"
            )
        last = record["iteration"]
        _numbers(record, "weights", k, f"{where}: history[{n}]", optional=False)
        if not record["skipped"] and not all(math.isfinite(x) and x > 0 for x in record["weights"]):
            raise CheckpointError(
                f"{where}: history[{n}] weights {record['weights']} are not a blend"
            )
