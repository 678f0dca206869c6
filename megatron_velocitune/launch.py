"""Run a Megatron-LM training script with Velocitune installed, without editing the script.

    torchrun --nproc-per-node 8 ... -m megatron_velocitune.launch pretrain_gpt.py \\
        <Megatron-LM args> --velocitune-target-loss-file targets.json ...

Everything after the script path goes to the script, unchanged. The script runs as ``__main__``
(``runpy``) with ``sys.argv`` and ``sys.path[0]`` set as ``python pretrain_gpt.py ...`` would
set them, so a Megatron-LM checkout next to the script shadows any installed ``megatron`` as it
does without the launcher, and ``install()`` (which imports Megatron-LM) comes after that.

A Velocitune user error raised inside the script (a refused resume, a held ``--save``) ends as
the megatron-core entry's does: one line ``SCRIPT.py: error: ...`` and its exit status; anything
else keeps its traceback.
"""

import os
import runpy
import sys
from typing import List, Optional, Sequence, Tuple

__all__ = ["main", "split_argv"]

USAGE = (
    "usage: python -m megatron_velocitune.launch [--] SCRIPT.py [script args ...]\n"
    "  runs SCRIPT.py (e.g. Megatron-LM's pretrain_gpt.py) with megatron_velocitune.megatron_lm "
    "installed"
)


def split_argv(argv: Sequence[str]) -> Tuple[str, List[str]]:
    """Split the launcher's arguments into the script and the script's ``sys.argv``.

    Args:
        argv (Sequence[str]): ``sys.argv[1:]`` of the launcher.

    Returns:
        Tuple[str, List[str]]: the script path and ``[script, *script_args]``.

    Raises:
        SystemExit: no script, ``-h``/``--help`` before it, or a script that does not exist.
    """
    argv = list(argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        raise SystemExit(USAGE)
    script = argv[0]
    if script.startswith("-"):
        raise SystemExit(f"{USAGE}\nerror: the first argument must be the script, got {script!r}")
    if not os.path.isfile(script):
        raise SystemExit(f"{USAGE}\nerror: no such script: {script!r}")
    return script, [script, *argv[1:]]


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Install the plugin and run the script as ``__main__``."""
    script, script_argv = split_argv(sys.argv[1:] if argv is None else argv)
    sys.argv = script_argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))

    from megatron_velocitune.megatron_lm import install

    install()
    from megatron_velocitune.core.errors import PortInUseError, VelocituneError

    name = os.path.basename(script)
    try:
        runpy.run_path(script, run_name="__main__")
    except VelocituneError as e:
        print(f"{name}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except RuntimeError as e:  # torch.distributed's DistNetworkError is one
        # Two runs on one MASTER_PORT: the second dies in Megatron-LM's process-group start,
        # before any lock; say so in one line. Any other failure keeps its traceback.
        error = PortInUseError.from_exception(e, os.environ.get("MASTER_PORT"))
        if error is None:
            raise
        print(f"{name}: error: {error}", file=sys.stderr, flush=True)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
