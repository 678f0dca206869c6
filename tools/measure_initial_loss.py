#!/usr/bin/env python3
"""velocitune-measure-initial-loss from a checkout.

The code is megatron_velocitune.cli.measure_initial_loss.
"""

import os  # noqa: E401
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_velocitune.cli.measure_initial_loss import main  # noqa: E402

sys.exit(main())
