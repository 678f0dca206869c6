#!/usr/bin/env python3
"""velocitune-average-weights from a checkout.

The code is megatron_velocitune.cli.average_weights.
"""

import os  # noqa: E401
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_velocitune.cli.average_weights import main  # noqa: E402

sys.exit(main())
