"""megatron-velocitune: velocity-based dynamic domain reweighting for Megatron-Core.

The update rule itself lives in :mod:`megatron_velocitune.core.policy` (pure numpy); everything that
touches ranks, files or models sits in the modules around it.
"""

__version__ = "0.1.0"
