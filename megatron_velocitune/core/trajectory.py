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

One run, one trajectory: every record carries the run's ``run_id`` (kept across resumes in the
sidecar). A different run logging into the same folder appends its own header, and
:func:`read_trajectory` returns the last run in the file (its header and only its updates), so
no tool ever mixes two runs. Records are strict JSON: a non-finite number inside a list (the
loss of a skipped update) is ``null``, read back as NaN.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from megatron_velocitune.core.errors import InputError
from megatron_velocitune.core.strict_json import nan_from_null, strict

__all__ = ["Trajectory", "TrajectoryWriter", "read_trajectory"]


@dataclass
class Trajectory:
    """A parsed trajectory.

    Attributes:
        header (Dict[str, Any]): the run's header record.
        updates (List[Dict[str, Any]]): update records, by increasing iteration.
        earlier_runs (List[str]): ``run_id`` of the other runs logged earlier in the same file
            (not read).
    """

    header: Dict[str, Any]
    updates: List[Dict[str, Any]] = field(default_factory=list)
    earlier_runs: List[str] = field(default_factory=list)

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
        run_id (Optional[str]): the run's identity, added to every record.
    """

    def __init__(self, path: str, run_id: Optional[str] = None) -> None:
        self.path = path
        self.run_id = run_id
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def needs_header(self) -> bool:
        """Whether this run has no header in the file yet (a new file, or another run's)."""
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            return True
        last = _last_header_run(self.path)
        return last is _NO_HEADER or last != self.run_id

    def write(self, record: Dict[str, Any]) -> None:
        """Append one record and flush it to disk, so a killed run loses nothing logged."""
        if self.run_id is not None:
            record = {**record, "run_id": self.run_id}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(strict(record), allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


_NO_HEADER = object()


def _last_header_run(path: str) -> Any:
    """The ``run_id`` of the file's last header (None for a header without one)."""
    run: Any = _NO_HEADER
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if '"header"' not in line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("type") == "header":
                run = record.get("run_id")
    return run


def read_trajectory(path: str) -> Trajectory:
    """Read a trajectory file written by :class:`TrajectoryWriter`.

    Args:
        path (str): the ``.jsonl`` file.

    Returns:
        Trajectory: the last run in the file: its first header and its updates, deduplicated
        by iteration (last wins). Files written before records carried a ``run_id`` hold one
        run: their first header and every update.
    """
    headers: List[Dict[str, Any]] = []
    records: List[Dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{line_no}: not a JSON record ({e})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}:{line_no}: not a JSON object")
            record = nan_from_null(record)
            if record.get("type") == "header":
                headers.append(record)
            elif record.get("type") == "update":
                records.append(record)
    if not headers:
        raise InputError(f"{path}: no header record (is this a velocitune trajectory?)")
    run = headers[-1].get("run_id")
    if run is None:  # one run per file (legacy): the first header, every update
        header, mine = headers[0], records
    else:
        header = next(h for h in headers if h.get("run_id") == run)
        mine = [r for r in records if r.get("run_id") == run]
    earlier: List[str] = []
    for h in headers:
        rid = h.get("run_id")
        if rid != run and rid is not None and rid not in earlier:
            earlier.append(rid)
    domains = header.get("domains")
    if isinstance(domains, list) and len(set(map(str, domains))) != len(domains):
        twice = sorted({d for d in domains if domains.count(d) > 1})
        raise InputError(f"{path}: the header names domains {twice} more than once")
    by_iteration: Dict[int, Dict[str, Any]] = {}
    for r in mine:
        iteration = r.get("iteration")
        if isinstance(iteration, bool) or not isinstance(iteration, (int, float)):
            raise InputError(
                f"{path}: an update record has no number 'iteration' (it has {iteration!r})"
            )
        by_iteration[int(iteration)] = r
    return Trajectory(header, [by_iteration[i] for i in sorted(by_iteration)], earlier)
