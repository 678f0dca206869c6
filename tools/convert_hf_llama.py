#!/usr/bin/env python3
"""velocitune-convert-hf-llama from a checkout; the code is megatron_velocitune.cli.convert_hf_llama."""
import os, sys  # noqa: E401
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_velocitune.cli.convert_hf_llama import main  # noqa: E402
sys.exit(main())
