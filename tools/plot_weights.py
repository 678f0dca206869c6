#!/usr/bin/env python3
"""velocitune-plot-weights from a checkout; the code is megatron_velocitune.cli.plot_weights."""

import os  # noqa: E401
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_velocitune.cli.plot_weights import main  # noqa: E402

sys.exit(main())
