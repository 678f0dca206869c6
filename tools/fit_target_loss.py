#!/usr/bin/env python3
"""velocitune-fit-targets from a checkout; the code is megatron_velocitune.cli.fit_target_loss."""

import os  # noqa: E401
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_velocitune.cli.fit_target_loss import main  # noqa: E402

sys.exit(main())
