"""What every run of one comparison shares: the :class:`Setting`, read from the tool's flags.

A resume must match it: :func:`check_setting` keeps it in ``OUT/compare_setting.json`` and
refuses an ``--out`` that holds runs of another setting. Reading the flags checks the
``--data-path`` files and the base checkpoint (one line per problem, :class:`ToolError`).
"""

import argparse
import json
import os
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import numpy as np

from megatron_velocitune.core.errors import InputError, ToolError
from megatron_velocitune.core.files import write_json
from megatron_velocitune.core.policy import Tolerance
from megatron_velocitune.laws.schedule_laws import LrSchedule

__all__ = ["PROG", "Setting", "check_setting", "setting_from_args"]

#: The tool's name, in the one-line errors.
PROG = "velocitune-compare"


@dataclass(frozen=True)
class Setting:
    """What every run of one ``--out`` shares (a resume must match it)."""

    prefixes: tuple
    weights: tuple
    load: str
    replay_domain: str
    train_iters: int
    update_interval: int
    cpt_eval_interval: int
    eval_iters: int
    min_weight: float
    fit_fraction: float
    tolerance: str
    min_headroom: float
    nproc: int
    entry_args: tuple
    seq_length: int
    global_batch_size: int
    warmup_iters: int
    #: ``velocitune-fit-targets --annealing-from``/``--base-lr-schedule``/``--lr-schedule`` of
    #: the ``default-law-<law>`` targets (None: not given; older settings have none).
    annealing_from: Optional[str] = None
    base_lr_schedule: Optional[str] = None
    lr_schedule: Optional[str] = None

    @property
    def domains(self) -> List[str]:
        return [os.path.basename(p) for p in self.prefixes]

    @property
    def replay(self) -> int:
        return self.domains.index(self.replay_domain)

    @property
    def budget_tokens(self) -> int:
        return self.train_iters * self.global_batch_size * self.seq_length

    @property
    def warmup_tokens(self) -> int:
        return self.warmup_iters * self.global_batch_size * self.seq_length


def _entry_sizes(entry_args: Sequence[str]) -> argparse.Namespace:
    # No abbreviations: the entry's --lr must not read as --lr-warmup-iters.
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--seq-length", type=int)
    p.add_argument("--global-batch-size", type=int)
    p.add_argument("--lr-warmup-iters", type=int, default=0)
    p.add_argument("--data-path", nargs="+")
    p.add_argument("--load")
    p.add_argument("--train-iters")
    p.add_argument("--seed")
    known, _ = p.parse_known_args(list(entry_args))
    for flag in ("data_path", "load", "train_iters", "seed"):
        if getattr(known, flag) is not None:
            raise ToolError(
                f"--{flag.replace('_', '-')} after '--': give it to {PROG} itself "
                f"(it sets it for every run)"
            )
    for flag in ("seq_length", "global_batch_size"):
        if getattr(known, flag) is None:
            raise ToolError(
                f"the entry flags after '--' need --{flag.replace('_', '-')} "
                f"(the token budget is train iterations x batch x sequence)"
            )
    return known


def _blend(data_path: Sequence[str]) -> tuple:
    """(prefixes, weights or None) of a Megatron ``--data-path``, each prefix's files checked."""
    from megatron_velocitune.core.errors import DataError
    from megatron_velocitune.data.builder import blend_from_data_path

    try:
        prefixes, weights = blend_from_data_path(data_path)
    except (FileNotFoundError, DataError) as e:
        raise ToolError(str(e)) from None
    if weights is not None and any(not np.isfinite(w) or w <= 0 for w in weights):
        raise ToolError(f"--data-path: weights {weights} must be finite and > 0")
    return prefixes, weights


def _token_counts(prefixes: Sequence[str]) -> List[float]:
    """Tokens of each ``.bin/.idx`` domain (megatron-core's own index reader)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    counts = []
    for p in prefixes:
        index = IndexedDataset(p)  # held: its arrays are views of a mmap closed on deletion
        counts.append(float(np.sum(index.sequence_lengths, dtype=np.float64)))
        del index
    return counts


def setting_from_args(args: argparse.Namespace) -> Setting:
    """The :class:`Setting` the flags ask for, checked (one line per problem)."""
    prefixes, weights = _blend(args.data_path)
    if len(prefixes) < 2:
        raise ToolError(
            f"--data-path {' '.join(args.data_path)}: a comparison needs two or "
            f"more domains (a replay domain and new ones)"
        )
    names = [os.path.basename(p) for p in prefixes]
    if len(set(names)) != len(names):
        raise ToolError(f"--data-path: domain names {names} repeat (the prefixes' base names)")
    if args.replay_domain not in names:
        raise ToolError(
            f"--replay-domain {args.replay_domain}: not a domain of --data-path {names}"
        )
    tracker = os.path.join(args.load, "latest_checkpointed_iteration.txt")
    if not os.path.isfile(tracker):
        raise ToolError(f"--load {args.load}: no base checkpoint there (no {tracker})")
    sizes = _entry_sizes(args.entry_args)
    if weights is None:
        weights = _token_counts(prefixes)
    total = float(sum(weights))
    weights = [w / total for w in weights]
    try:
        tolerance = str(Tolerance.parse(args.tolerance))
    except ValueError as e:
        raise ToolError(f"--tolerance {e}") from None
    for flag in ("train_iters", "update_interval", "cpt_eval_interval", "eval_iters", "nproc"):
        if getattr(args, flag) < 1:
            raise ToolError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be >= 1")
    if not 0.0 < args.fit_fraction <= 1.0:
        raise ToolError(f"--fit-fraction {args.fit_fraction} must be in (0, 1]")
    annealing_from = getattr(args, "annealing_from", None)
    if annealing_from is not None and not os.path.isfile(annealing_from):
        raise ToolError(f"--annealing-from {annealing_from}: no such file")
    schedules = {f: getattr(args, f, None) for f in ("base_lr_schedule", "lr_schedule")}
    for flag, spec in schedules.items():
        try:
            if spec is not None:
                LrSchedule.from_spec(spec, f"--{flag.replace('_', '-')}")
        except InputError as e:
            raise ToolError(str(e)) from None
    return Setting(
        prefixes=tuple(os.path.abspath(p) for p in prefixes),
        weights=tuple(weights),
        load=os.path.abspath(args.load),
        replay_domain=args.replay_domain,
        train_iters=args.train_iters,
        update_interval=args.update_interval,
        cpt_eval_interval=args.cpt_eval_interval,
        eval_iters=args.eval_iters,
        min_weight=args.min_weight,
        fit_fraction=args.fit_fraction,
        tolerance=tolerance,
        min_headroom=args.min_headroom,
        nproc=args.nproc,
        entry_args=tuple(args.entry_args),
        seq_length=sizes.seq_length,
        global_batch_size=sizes.global_batch_size,
        warmup_iters=sizes.lr_warmup_iters,
        annealing_from=None if annealing_from is None else os.path.abspath(annealing_from),
        **schedules,
    )


#: Fields that change only the ``default-law-<law>`` targets, refitted on every call: an
#: ``--out`` may add such a method (and these flags) after its other runs finished.
_TARGET_FIT_ONLY = ("annealing_from", "base_lr_schedule", "lr_schedule")


def check_setting(out: str, s: Setting) -> None:
    """Refuse an ``--out`` that holds runs of another setting (one line naming what differs)."""
    path = os.path.join(out, "compare_setting.json")
    mine = json.loads(json.dumps(asdict(s)))
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        diff = {
            k: (old.get(k), v)
            for k, v in mine.items()
            if old.get(k) != v and k not in _TARGET_FIT_ONLY
        }
        if diff:
            raise ToolError(
                f"{out} holds runs of another setting (old, new): {diff}; use another --out"
            )
        return
    write_json(path, mine, allow_nan=True)
