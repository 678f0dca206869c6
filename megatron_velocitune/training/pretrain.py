"""``python -m megatron_velocitune.training.pretrain`` / ``torchrun ... examples/pretrain_gpt.py``."""

import logging
import sys

from megatron_velocitune.config import VelocituneConfigError
from megatron_velocitune.training.arguments import parse_args
from megatron_velocitune.training.loop import pretrain


def main(argv=None) -> int:
    """Parse the flags and run; bad configuration exits 2 with one line, as argparse does."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        pretrain(args)
    except (VelocituneConfigError, FileNotFoundError, ValueError) as e:
        print(f"pretrain_gpt.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
