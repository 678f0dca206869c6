"""Plot runs' domain weights, held-out losses and velocities over iterations (PNG and SVG).

Panels (``--panels``, default all three, top to bottom):

* ``weights``: each domain's weight as a step plot (the paper's Figures 2-4): the header's blend
  from iteration 0, each applied update's from its iteration until the next one (skipped
  updates change nothing), to ``train_iters`` when the run reached its last update, else to
  its last update;
* ``loss``: each domain's held-out loss at every update (the initial loss at iteration 0 when
  the header has it), the target losses as dashed horizontal lines;
* ``velocity``: each domain's velocity ``clamp((L_t - L_target) / (L_init - L_target), 0, 1)``.

Several runs are overlaid (one line style per run, ``--layout overlay``) or drawn one column per
run (``--layout columns``); ``--labels`` names them. Colours follow the domain names.

Example::

    velocitune-plot-weights runs/cpt/trajectory.jsonl runs/vt/trajectory.jsonl \\
        --labels CPT Velocitune --output weights.png      # writes weights.png and weights.svg
"""

import argparse
import os
import sys
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from megatron_velocitune.cli._common import (
    ToolError,
    check_outputs,
    load_trajectories,
    optional_floats,
    run_tool,
)
from megatron_velocitune.core.files import save_figure
from megatron_velocitune.core.trajectory import Trajectory
from megatron_velocitune.core.weight_history import blend_spans, run_history

PROG = "velocitune-plot-weights"
PANELS = ("weights", "loss", "velocity")
LAYOUTS = ("overlay", "columns")
RUN_STYLES = ["-", "--", ":", "-."]
TITLES = {"weights": "domain weight", "loss": "held-out loss", "velocity": "velocity"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Plot domain weights (a step plot), per-domain held-out loss (with the "
        "target losses) and velocity over iterations from one or more trajectories; writes PNG "
        "and SVG.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example:\n  velocitune-plot-weights runs/cpt/trajectory.jsonl "
        "runs/vt/trajectory.jsonl --labels CPT Velocitune -o weights.png",
    )
    p.add_argument("trajectories", nargs="+", help="JSONL trajectory file(s), one per run.")
    p.add_argument(
        "--output",
        "-o",
        default="weights.png",
        help="Output path; the PNG and the SVG are both written (weights.png -> "
        "weights.png and weights.svg). Default: %(default)s.",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        default=None,
        help="One label per trajectory (default: each file's folder name).",
    )
    p.add_argument(
        "--panels",
        default=",".join(PANELS),
        help="Comma-separated panels, in order, from: " + ", ".join(PANELS) + " (default: all).",
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="overlay",
        help="Several runs in one column (overlay, default) or one column per run.",
    )
    p.add_argument("--title", default=None, help="A title above the figure.")
    p.add_argument("--dpi", type=int, default=120, help="PNG resolution (default: %(default)s).")
    return p


def default_labels(paths: Sequence[str], trajectories: Sequence[Trajectory]) -> List[str]:
    """The folder name of each file (its file name when that is not unique), else numbered."""
    folders = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]
    if len(set(folders)) == len(folders):
        labels = folders
    else:
        labels = [os.path.splitext(os.path.basename(p))[0] for p in paths]
        if len(set(labels)) != len(labels):
            labels = [
                f"run {i + 1} ({t.header.get('policy', '?')})" for i, t in enumerate(trajectories)
            ]
    return labels


def output_paths(output: str) -> List[str]:
    """``x.png`` -> ``[x.png, x.svg]``; ``x.svg`` -> ``[x.png, x.svg]``; ``x`` -> both added."""
    stem, ext = os.path.splitext(output)
    if ext.lower() not in (".png", ".svg"):
        stem = output
    return [stem + ".png", stem + ".svg"]


def parse_panels(text: str) -> List[str]:
    panels = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in panels if p not in PANELS]
    if not panels or bad or len(set(panels)) != len(panels):
        raise ToolError(f"--panels {text!r}: give distinct names from {', '.join(PANELS)}")
    return panels


def _series(t: Trajectory, key: str) -> np.ndarray:
    """``key`` per update as a (updates, domains) float array, NaN where not recorded."""
    k = len(t.domains)
    rows = []
    for u in t.updates:
        v = optional_floats(u.get(key))
        rows.append(v if v is not None and len(v) == k else [np.nan] * k)
    return np.asarray(rows, np.float64).reshape(len(rows), k)


def _iterations(t: Trajectory) -> np.ndarray:
    return np.asarray([float(u.get("iteration", np.nan)) for u in t.updates], np.float64)


def weight_steps(t: Trajectory) -> Tuple[np.ndarray, np.ndarray]:
    """The step plot of a run's blends, in iterations.

    Returns:
        Tuple[np.ndarray, np.ndarray]: ``x`` (n + 1 positions) and ``w`` (n + 1 blends): blend
        ``w[k]`` holds over ``[x[k], x[k+1])``; the last row is the blend the run ended with,
        at the end of the plot (the run's end, or its last update if later, when the blend
        chosen there never trained).
    """
    h = run_history(t.header, t.updates, "iterations")
    last_start = max([s for s, _ in h.updates], default=0.0)
    end = max(h.end or 0.0, last_start)
    if end <= 0:
        end = float(t.header.get("update_interval") or 1)
    spans = blend_spans(h.initial, h.updates, end)
    x = np.asarray([s.start for s in spans] + [end])
    w = np.stack([s.weights for s in spans] + [h.final])
    return x, w


def _draw_weights(ax, t: Trajectory, colors: Dict[str, str], style: str) -> None:
    x, w = weight_steps(t)
    for i, d in enumerate(t.domains):
        ax.step(x, w[:, i], where="post", color=colors[d], ls=style, lw=1.4)
    ax.set_ylim(bottom=0)


def _draw_loss(
    ax, t: Trajectory, colors: Dict[str, str], style: str, targets_drawn: Set[Tuple[str, float]]
) -> None:
    it = _iterations(t)
    loss = _series(t, "eval_loss")
    initial = optional_floats(t.header.get("initial_loss"))
    target = optional_floats(t.header.get("target_loss"))
    for i, d in enumerate(t.domains):
        x, y = it, loss[:, i]
        if initial is not None and len(initial) == len(t.domains):
            x, y = np.append(0.0, x), np.append(initial[i], y)
        ax.plot(x, y, color=colors[d], ls=style, lw=1.4, marker="o", ms=2.5)
        if (
            target is not None
            and len(target) == len(t.domains)
            and np.isfinite(target[i])
            and (d, target[i]) not in targets_drawn
        ):
            targets_drawn.add((d, target[i]))
            ax.axhline(target[i], color=colors[d], ls=(0, (4, 3)), lw=0.9, alpha=0.7)


def _draw_velocity(ax, t: Trajectory, colors: Dict[str, str], style: str) -> bool:
    vel = _series(t, "velocity")
    if not np.isfinite(vel).any():
        return False
    it = _iterations(t)
    for i, d in enumerate(t.domains):
        ax.plot(it, vel[:, i], color=colors[d], ls=style, lw=1.4, marker="o", ms=2.5)
    ax.set_ylim(-0.03, 1.03)
    return True


def plot(
    trajectories: Sequence[Trajectory],
    labels: Sequence[str],
    panels: Sequence[str],
    layout: str,
    outputs: Sequence[str],
    title: Optional[str] = None,
    dpi: int = 120,
) -> None:
    """Draw the figure and save it to every path in ``outputs`` (format from the extension)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    domains: List[str] = []
    for t in trajectories:
        domains += [d for d in t.domains if d not in domains]
    palette = plt.get_cmap("tab10" if len(domains) <= 10 else "tab20").colors
    colors = {d: palette[i % len(palette)] for i, d in enumerate(domains)}

    cols = len(trajectories) if layout == "columns" else 1
    fig, axes = plt.subplots(
        len(panels),
        cols,
        figsize=(6.4 * cols if cols > 1 else 7.5, 2.9 * len(panels)),
        squeeze=False,
        sharex="col",
    )
    drawn_velocity = [False] * cols
    targets_drawn: List[Set[Tuple[str, float]]] = [set() for _ in range(cols)]
    for r, (t, _label) in enumerate(zip(trajectories, labels)):
        col = r if layout == "columns" else 0
        style = "-" if layout == "columns" else RUN_STYLES[r % len(RUN_STYLES)]
        for row, panel in enumerate(panels):
            ax = axes[row][col]
            if panel == "weights":
                _draw_weights(ax, t, colors, style)
            elif panel == "loss":
                _draw_loss(ax, t, colors, style, targets_drawn[col])
            else:
                drawn_velocity[col] |= _draw_velocity(ax, t, colors, style)
    for col in range(cols):
        for row, panel in enumerate(panels):
            ax = axes[row][col]
            ax.grid(True, alpha=0.3)
            ax.set_ylabel(TITLES[panel] if col == 0 else "")
            if panel == "velocity" and not drawn_velocity[col]:
                ax.text(
                    0.5,
                    0.5,
                    "no velocity recorded (no target loss)",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="grey",
                )
        axes[-1][col].set_xlabel("iteration")
        if layout == "columns":
            axes[0][col].set_title(labels[col], fontsize=10)

    handles = [Line2D([], [], color=colors[d], lw=2, label=d) for d in domains]
    if any("loss" == p for p in panels) and any(t.header.get("target_loss") for t in trajectories):
        handles.append(Line2D([], [], color="grey", ls=(0, (4, 3)), lw=0.9, label="target loss"))
    if layout == "overlay" and len(trajectories) > 1:
        handles += [
            Line2D([], [], color="black", ls=RUN_STYLES[r % len(RUN_STYLES)], lw=1.4, label=label)
            for r, label in enumerate(labels)
        ]
    elif layout == "overlay":
        axes[0][0].set_title(labels[0], fontsize=10)
    fig.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False
    )
    if title:
        fig.suptitle(title)
    legend_rows = -(-len(handles) // 6)
    bottom = (0.1 + 0.2 * legend_rows) / fig.get_figheight()  # inches kept for the legend
    fig.tight_layout(rect=(0, bottom, 1, 1))
    for path in outputs:
        save_figure(fig, path, dpi=dpi)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    panels = parse_panels(args.panels)
    if args.labels is not None and len(args.labels) != len(args.trajectories):
        raise ToolError(
            f"--labels: {len(args.labels)} label(s) for {len(args.trajectories)} trajectories"
        )
    if args.dpi <= 0:
        raise ToolError(f"--dpi {args.dpi} must be positive")
    outputs = output_paths(args.output)
    check_outputs(output=outputs[0])
    check_outputs(output=outputs[1])
    trajectories = load_trajectories(args.trajectories)
    for path, t in zip(args.trajectories, trajectories):
        try:
            run_history(t.header, t.updates, "iterations")
        except (ValueError, KeyError) as e:
            raise ToolError(f"{path}: {e}") from None
    labels = args.labels or default_labels(args.trajectories, trajectories)
    plot(trajectories, labels, panels, args.layout, outputs, args.title, args.dpi)
    for path, t, label in zip(args.trajectories, trajectories, labels):
        print(f"{label}: {path} (policy {t.header.get('policy', '?')}, {len(t.updates)} updates)")
    print("wrote " + " and ".join(outputs))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point; returns the exit status (2 on a user error)."""
    args = build_parser().parse_args(argv)
    return run_tool(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
