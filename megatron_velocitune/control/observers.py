"""What watches a run's updates: the JSONL trajectory and TensorBoard, as observers.

The controller tells each observer the same four things (the header once, every update record,
the scalars of each update, the target-rule line); observers never change the run. Pure: a
TensorBoard writer is anything with ``add_scalar`` (and optionally ``add_text``), so the
controller stays importable without torch.
"""

from typing import Any, Dict, Optional, Protocol, Sequence

from megatron_velocitune.core.trajectory import TrajectoryWriter

__all__ = ["Observer", "TensorBoardObserver", "TrajectoryObserver"]


class Observer(Protocol):
    """Receives a run's log events (every method optional in spirit: no-ops are fine)."""

    def on_header(
        self, header: Dict[str, Any], restored: Sequence[Dict[str, Any]] = ()
    ) -> None:  # pragma: no cover - protocol
        """The run's header record, once per run, before any update.

        Args:
            header (Dict[str, Any]): the header.
            restored (Sequence[Dict[str, Any]]): a resumed run's updates before the resume, as
                trajectory records (from the checkpoint's sidecar).
        """

    def on_update(self, record: Dict[str, Any]) -> None:  # pragma: no cover - protocol
        """One update's trajectory record."""

    def on_scalars(
        self, kind: str, names: Sequence[str], values: Sequence[float], iteration: int, samples: int
    ) -> None:  # pragma: no cover - protocol
        """Per-domain values of ``kind`` (``weight``, ``eval-loss``, ``velocity``)."""

    def on_text(self, tag: str, text: str) -> None:  # pragma: no cover - protocol
        """A line of text (the target rules)."""


class TrajectoryObserver:
    """Appends the header and every update to a JSONL trajectory (the deciding rank only).

    Args:
        path (str): the ``.jsonl`` file; a resumed run appends to it.
        run_id (Optional[str]): the run's identity, stamped on every record: a second run into
            the same file writes a header of its own, and readers keep the runs apart.
    """

    def __init__(self, path: str, run_id: Optional[str] = None) -> None:
        self.path = path
        self._writer = TrajectoryWriter(path, run_id)

    def on_header(self, header: Dict[str, Any], restored: Sequence[Dict[str, Any]] = ()) -> None:
        """Write the header unless this run has one in the file already (a resumed run).

        A resumed run whose file does not hold it (a new log folder, or the file was lost)
        writes its restored updates after the header: the file then holds the whole run, and
        every tool's time average is the uninterrupted run's.
        """
        if self._writer.needs_header():
            self._writer.write(header)
            for record in restored:
                self._writer.write(record)

    def on_update(self, record: Dict[str, Any]) -> None:
        """Append the record."""
        self._writer.write(record)

    def on_scalars(self, kind, names, values, iteration, samples) -> None:
        """Scalars are in the update record already."""

    def on_text(self, tag: str, text: str) -> None:
        """The rules are in the header already."""


class TensorBoardObserver:
    """``velocitune/<kind>/<domain>`` scalars (also ``... vs samples``) and the rules as text.

    Args:
        writer (Any): a ``SummaryWriter``-like object (``add_scalar``, optionally ``add_text``).
    """

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def on_header(self, header: Dict[str, Any], restored: Sequence[Dict[str, Any]] = ()) -> None:
        """Nothing: TensorBoard has no header (the restored scalars were logged before)."""

    def on_update(self, record: Dict[str, Any]) -> None:
        """Nothing: the scalars arrive through :meth:`on_scalars`."""

    def on_scalars(self, kind, names, values, iteration, samples) -> None:
        """One scalar per domain, against iterations and against samples."""
        for name, value in zip(names, values):
            self.writer.add_scalar(f"velocitune/{kind}/{name}", value, iteration)
            self.writer.add_scalar(f"velocitune/{kind}/{name} vs samples", value, samples)

    def on_text(self, tag: str, text: str) -> None:
        """``add_text`` where the writer has it (wandb-only writers do not)."""
        if hasattr(self.writer, "add_text"):
            self.writer.add_text(tag, text, 0)
