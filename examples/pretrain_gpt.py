#!/usr/bin/env python3
"""GPT pretraining on megatron-core with Velocitune: Megatron-LM's flag names plus --velocitune-*.

torchrun --nproc-per-node 2 examples/pretrain_gpt.py --num-layers 4 --hidden-size 256 \\
        --num-attention-heads 4 --seq-length 256 --micro-batch-size 8 --global-batch-size 32 \\
        --train-iters 1000 --lr 6e-4 --data-path 0.5 data/code 0.5 data/kjv \\
        --tokenizer-model data/tokenizer.json --velocitune-target-loss-file targets.json
"""

import sys

from megatron_velocitune.training.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
