"""Velocitune inside NVIDIA Megatron-LM's ``pretrain_gpt.py``, without editing Megatron-LM.

Two ways in:

- one line at the top of your ``pretrain_gpt.py``::

      from megatron_velocitune.megatron_lm import install; install()

- or no edit at all, through the launcher::

      torchrun ... -m megatron_velocitune.launch pretrain_gpt.py <Megatron-LM args> --velocitune-*

The plugin's run lives in :mod:`~megatron_velocitune.megatron_lm.plugin`; :func:`install` and the
wrappers it puts on Megatron-LM's functions in :mod:`~megatron_velocitune.megatron_lm.installer`.

With the plugin installed, Velocitune is on: the default policy (``velocity``) needs target
losses (``--velocitune-target-loss-file``); ``--velocitune-policy static`` observes only.
"""

from megatron_velocitune.megatron_lm.compat import MegatronLMNotFound
from megatron_velocitune.megatron_lm.installer import install, installed, uninstall
from megatron_velocitune.megatron_lm.plugin import VelocitunePlugin

__all__ = ["MegatronLMNotFound", "VelocitunePlugin", "install", "installed", "uninstall"]
