"""The entry: ``python -m megatron_velocitune.training.pretrain``, ``examples/pretrain_gpt.py``."""

import logging
import sys

from megatron_velocitune.errors import VelocituneError
from megatron_velocitune.training.arguments import parse_args
from megatron_velocitune.training.loop import pretrain


def run_pretrain(prog: str, args, **kwargs) -> int:
    """Run :func:`pretrain`; a user error prints ``prog: error: ...`` and gives its exit code.

    Only the project's own errors (:class:`~megatron_velocitune.errors.VelocituneError`: bad
    flags, files, checkpoints, a held lock; a non-finite loss gives 1) and missing files are
    turned into one line; anything else is a bug and keeps its traceback.

    Args:
        prog (str): the program name the error line starts with.
        args (argparse.Namespace): from :func:`parse_args`.
        **kwargs: passed to :func:`pretrain`.

    Returns:
        int: the exit status: 0, 2 (a user error) or 1 (a non-finite loss).
    """
    try:
        pretrain(args, **kwargs)
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
