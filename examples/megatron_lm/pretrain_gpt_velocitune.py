"""GPT pre-training with Velocitune on the megatron-core wheel's ``megatron.training``.

The megatron-core wheels (0.17+) carry ``megatron.training`` but not Megatron-LM's
``pretrain_gpt.py``; this script stands in for it (``megatron_velocitune/megatron_lm/gpt_entry.py``:
a dense ``GPTModel``, the ``--data-path`` blend, ``pretrain_gpt.py``'s loss contract) and takes the
same arguments::

    torchrun --nproc-per-node 8 examples/megatron_lm/pretrain_gpt_velocitune.py \\
        <Megatron-LM args> --data-path 0.5 d/arxiv 0.3 d/owm 0.2 d/web --split 998,2,0 \\
        --velocitune-target-loss-file targets.json --velocitune-update-interval 150

(or through ``-m megatron_velocitune.launch``, which installs the plugin the same way).
"""

from megatron_velocitune.megatron_lm import install
from megatron_velocitune.megatron_lm.gpt_entry import main

if __name__ == "__main__":
    install()
    main()
