#!/usr/bin/env python3
"""velocitune-convert-hf-llama from a checkout.

The code is megatron_velocitune.cli.convert_hf_llama.
"""

import os  # noqa: E401
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_velocitune.cli.convert_hf_llama import main  # noqa: E402

sys.exit(main())
