"""Convert Llama-family checkpoints between Hugging Face and megatron-core (any TP x PP).

Hugging Face -> megatron-core, for ``examples/pretrain_gpt.py --load OUT --finetune``:

    velocitune-convert-hf-llama hf-to-megatron --hf-dir smollm2-hf --output ckpt/smollm2-tp1 \\
        --tensor-model-parallel-size 1 --pipeline-model-parallel-size 1

writes ``OUT/iter_0000000/mp_rank_TT_PPP/model_optim_rng.pt`` (one per rank, key ``model``),
``OUT/latest_checkpointed_iteration.txt``, the model's tokenizer files and ``config.json`` (as
``OUT/hf_config.json``), and ``OUT/megatron_flags.txt``: the architecture flags to train it with
(also printed). Then:

    torchrun --nproc-per-node 2 examples/pretrain_gpt.py \\
        $(cat ckpt/smollm2-tp1/megatron_flags.txt) \\
        --load ckpt/smollm2-tp1 --finetune --seq-length 256 ... --data-path ...

megatron-core -> Hugging Face (a continued run's checkpoint, any layout it was trained with):

    velocitune-convert-hf-llama megatron-to-hf --load runs/cpt --output smollm2-cpt \\
        --hf-config ckpt/smollm2-tp1/hf_config.json

writes ``model.safetensors``, ``config.json`` and the tokenizer files, loadable with
``LlamaForCausalLM.from_pretrained``. The mapping itself is
``megatron_velocitune.conversion.llama``, the files ``megatron_velocitune.conversion.checkpoints``.
"""

import argparse
import os
import sys
from typing import List, Optional

from megatron_velocitune.conversion.checkpoints import (
    FLAGS_FILE,
    hf_to_megatron_checkpoint,
    megatron_to_hf_folder,
)
from megatron_velocitune.core.errors import ConversionError, VelocituneError


def get_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="velocitune-convert-hf-llama",
        description="Convert Llama-family checkpoints: Hugging Face <-> megatron-core "
        "(the training entry's legacy checkpoint layout, any TP x PP).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("hf-to-megatron", help="Hugging Face folder -> megatron-core checkpoint.")
    a.add_argument(
        "--hf-dir",
        required=True,
        help="Hugging Face model folder: config.json, *.safetensors or "
        "pytorch_model*.bin, tokenizer.json.",
    )
    a.add_argument("--output", required=True, help="Checkpoint root to write (--load).")
    a.add_argument("--tensor-model-parallel-size", type=int, default=1)
    a.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    a.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    b = sub.add_parser("megatron-to-hf", help="megatron-core checkpoint -> Hugging Face folder.")
    b.add_argument("--load", required=True, help="Checkpoint root (a run's --save).")
    b.add_argument("--output", required=True, help="Hugging Face folder to write.")
    b.add_argument("--iteration", type=int, default=None, help="Default: the latest.")
    b.add_argument(
        "--hf-config",
        default=None,
        help="The original config.json (or the converted checkpoint's folder): token "
        "ids and other fields are kept from it. Default: LOAD/hf_config.json.",
    )
    b.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="Vocabulary rows to keep (default: from the config or the tokenizer).",
    )
    b.add_argument(
        "--tokenizer-model",
        default=None,
        help="tokenizer.json to ship (default: the run's --tokenizer-model).",
    )
    b.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="Load the shards with torch.load(weights_only=False): allows files holding "
        "arbitrary pickled objects, and so lets them run any code as you. Only for "
        "checkpoints you made yourself (default: tensors and plain data only).",
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = get_args(argv)
    try:
        if args.direction == "hf-to-megatron":
            flags = hf_to_megatron_checkpoint(
                args.hf_dir,
                args.output,
                args.tensor_model_parallel_size,
                args.pipeline_model_parallel_size,
                args.make_vocab_size_divisible_by,
            )
            print(
                f"wrote {args.output} (TP={args.tensor_model_parallel_size}, "
                f"PP={args.pipeline_model_parallel_size}); train it with --load {args.output} "
                f"--finetune and these flags (also in {os.path.join(args.output, FLAGS_FILE)}):"
            )
            print(" ".join(flags))
        else:
            config = megatron_to_hf_folder(
                args.load,
                args.output,
                args.hf_config,
                args.iteration,
                args.vocab_size,
                args.tokenizer_model,
                args.trust_checkpoint,
            )
            print(
                f"wrote {args.output}: {config['architectures'][0]}, "
                f"{config['num_hidden_layers']} layers, vocab {config['vocab_size']}, "
                f"{config['dtype']}"
            )
    except (ConversionError, FileNotFoundError, VelocituneError) as e:
        print(f"velocitune-convert-hf-llama: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
