"""The entry: ``python -m megatron_velocitune.training.pretrain``, ``examples/pretrain_gpt.py``."""

import logging
import sys
from typing import Any, Callable, Optional

from megatron_velocitune.core.errors import VelocituneError
from megatron_velocitune.training.arguments import parse_args
from megatron_velocitune.training.loop import pretrain


def run_pretrain(prog: str, args, job: Optional[Callable[..., Any]] = None, **kwargs) -> int:
    """Run ``job(args, **kwargs)``; a user error prints ``prog: error: ...`` and its exit code.

    Only the project's own errors (:class:`VelocituneError`: bad flags, files, checkpoints, a
    held lock; a non-finite loss gives 1) and a missing file are a user's; anything else is a
    bug and propagates with its traceback.

    Args:
        prog (str): the program name the error line starts with.
        args (argparse.Namespace): from :func:`parse_args`.
        job (Optional[Callable[..., Any]]): what to run: :func:`pretrain` (the default) or
            :func:`~megatron_velocitune.training.loop.measure_initial_loss`.
        **kwargs: passed to ``job``.

    Returns:
        int: the exit status: 0, 2 (a user error) or 1 (a non-finite loss).
    """
    try:
        (job or pretrain)(args, **kwargs)
    except VelocituneError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except FileNotFoundError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


def main(argv=None) -> int:
    """Parse the flags and run; bad configuration exits 2 with one line, as argparse does."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_pretrain("pretrain_gpt.py", parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
