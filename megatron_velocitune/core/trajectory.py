"""One JSONL trajectory per run: the record every tool reads (fits, plots, averages).

Line 1 is a header; each later line is one evaluation/update event::

    {"type": "header", "domains": [...], "policy": "velocity", "weights": [...],
     "initial_loss": [...] | null, "target_loss": [...] | null, "seq_length": 256,
     "global_batch_size": 16, "train_iters": 1000, "update_interval": 150, ...}
    {"type": "update", "iteration": 150, "consumed_samples": 2400, "consumed_tokens": 614400,
     "domain_tokens": [...], "eval_loss": [...], "eval_tokens": [...], "velocity": [...] | null,
     "weights": [...], "start_sample": 2400, "skipped": false}

``weights`` in an update is the blend in force from global sample ``start_sample`` on (the
header's ``weights`` apply from sample 0). ``eval_loss`` is the per-domain loss the policy read
(held-out, or the training stream's with ``"loss_source": "train"`` in the header) over
``eval_tokens`` tokens; held-out runs also carry the training stream's ``train_loss`` and
``train_tokens`` for comparison. ``domain_tokens[i]`` counts the training tokens drawn
from domain ``i`` before ``consumed_samples``. A resumed run appends to the same file; readers
keep the last record per iteration, so a replayed stretch never counts twice.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from megatron_velocitune.core.errors import InputError

__all__ = ["Trajectory", "TrajectoryWriter", "read_trajectory"]


@dataclass
class Trajectory:
    """A parsed trajectory.

    Attributes:
        header (Dict[str, Any]): the run's header record.
        updates (List[Dict[str, Any]]): update records, by increasing iteration.
    """

    header: Dict[str, Any]
    updates: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def domains(self) -> List[str]:
        """Domain names in blend order."""
        return list(self.header["domains"])

    def column(self, key: str) -> List[Any]:
        """The value of ``key`` in every update record, in order."""
        return [u.get(key) for u in self.updates]


class TrajectoryWriter:
    """Append-only JSONL writer (one process: the rank that logs).

    Args:
        path (str): the ``.jsonl`` file; created with its folder, appended to when it exists.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def has_records(self) -> bool:
        """Whether the file already holds something (a resumed run appends to it)."""
        return os.path.exists(self.path) and os.path.getsize(self.path) > 0

    def write(self, record: Dict[str, Any]) -> None:
        """Append one record and flush it to disk, so a killed run loses nothing logged."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_trajectory(path: str) -> Trajectory:
    """Read a trajectory file written by :class:`TrajectoryWriter`.

    Args:
        path (str): the ``.jsonl`` file.

    Returns:
        Trajectory: the first header and the updates, deduplicated by iteration (last wins).
    """
    header: Optional[Dict[str, Any]] = None
    by_iteration: Dict[int, Dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{line_no}: not a JSON record ({e})") from None
            if record.get("type") == "header":
                header = header or record
            elif record.get("type") == "update":
                by_iteration[int(record["iteration"])] = record
    if header is None:
        raise InputError(f"{path}: no header record (is this a velocitune trajectory?)")
    return Trajectory(header, [by_iteration[i] for i in sorted(by_iteration)])
