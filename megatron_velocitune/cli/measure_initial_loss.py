"""Measure each domain's initial loss: ``--velocitune-initial-loss-file`` for a later run.

    torchrun --nproc-per-node 2 tools/measure_initial_loss.py --output initial_loss.json \\
        --load base --finetune <the run's model, data and tokenizer flags>

Takes the training entry's flags (``examples/pretrain_gpt.py --help``), loads the model, evaluates
it on every domain's full held-out set (the same evaluation the entry runs at iteration 0 when no
initial loss is given; with ``--velocitune-loss-source train``, on the training stream's first
draws) and writes the JSON. Flags a measurement does not need may be left out: ``--train-iters``,
``--lr`` and ``--global-batch-size`` get harmless defaults, and the policy is ``static`` so no
target loss is asked for.
"""

import os
import sys
from typing import List, Optional

from megatron_velocitune.cli._common import output_problem
from megatron_velocitune.training.arguments import build_parser, parse_args
from megatron_velocitune.training.loop import measure_initial_loss
from megatron_velocitune.training.pretrain import run_pretrain

PROG = "velocitune-measure-initial-loss"


def _with_defaults(argv: List[str]) -> List[str]:
    argv = list(argv)
    given = {a.split("=")[0] for a in argv if a.startswith("--")}
    if "--micro-batch-size" in given and "--global-batch-size" not in given:
        # A multiple of micro-batch x data-parallel size for any TP/PP split of the world.
        mbs = int(argv[argv.index("--micro-batch-size") + 1])
        argv += ["--global-batch-size", str(mbs * int(os.environ.get("WORLD_SIZE", "1")))]
    for flag, value in (("--train-iters", "1"), ("--lr", "1e-4")):
        if flag not in given:
            argv += [flag, value]
    # Nothing is trained: no warm-up to fit into the one nominal iteration.
    return argv + ["--velocitune-policy", "static", "--lr-warmup-iters", "0"]


def main(argv: Optional[List[str]] = None) -> int:
    """Console-script entry point: 0 on success, 2 on a user error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(f"usage: {PROG} --output FILE --load CHECKPOINT [--finetune] [the entry's flags]")
        print("\n" + __doc__.strip() + "\n\nThe entry's flags:\n")
        print(build_parser(PROG).format_help().split("\n\n", 2)[-1])
        return 0
    if "--output" not in argv:
        print(
            f"{PROG}: error: --output PATH (the initial-loss JSON to write) is required",
            file=sys.stderr,
        )
        return 2
    i = argv.index("--output")
    output = argv[i + 1] if i + 1 < len(argv) else None
    if not output or output.startswith("--"):
        print(f"{PROG}: error: --output needs a path", file=sys.stderr)
        return 2
    del argv[i : i + 2]
    problem = output_problem(output)
    if problem:
        print(f"{PROG}: error: --output {output}: {problem}", file=sys.stderr)
        return 2
    return run_pretrain(PROG, parse_args(_with_defaults(argv)), measure_initial_loss, output=output)


if __name__ == "__main__":
    sys.exit(main())
