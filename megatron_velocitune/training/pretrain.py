"""The entry: ``python -m megatron_velocitune.training.pretrain``, ``examples/pretrain_gpt.py``."""

import logging
import sys

from megatron_velocitune.core.config import VelocituneConfigError
from megatron_velocitune.training.arguments import parse_args
from megatron_velocitune.training.loop import pretrain


def run_pretrain(prog: str, args, **kwargs) -> int:
    """Run :func:`pretrain`; a bad configuration or input prints ``prog: error: ...`` and gives 2.

    Args:
        prog (str): the program name the error line starts with.
        args (argparse.Namespace): from :func:`parse_args`.
        **kwargs: passed to :func:`pretrain`.

    Returns:
        int: the exit status, 0 or 2.
    """
    try:
        pretrain(args, **kwargs)
    except (VelocituneConfigError, FileNotFoundError, ValueError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    """Parse the flags and run; bad configuration exits 2 with one line, as argparse does."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_pretrain("pretrain_gpt.py", parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
