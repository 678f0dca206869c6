"""Command-line flags of the megatron-core training entry, named as in Megatron-LM.

Only the flags the entry really implements are accepted; any other flag (a Megatron-LM flag this
entry does not support, or a typo) stops the launch with one line naming it.
"""

import argparse
import sys
from typing import List, Optional

from megatron_velocitune.core.arguments import add_velocitune_args
from megatron_velocitune.core.files import folder_problem

__all__ = ["parse_args"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that say which entry refused the flag."""

    def error(self, message: str) -> None:  # noqa: D401 (argparse's signature)
        if message.startswith("unrecognized arguments"):
            message += (
                " (not supported by this megatron-core entry; `--help` lists what it supports,"
                " and Megatron-LM's own pretrain_gpt.py takes the rest via "
                "megatron_velocitune.launch)"
            )
        self.exit(2, f"{self.prog}: error: {message}\n")


def _model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--num-layers", type=int, required=True)
    g.add_argument("--hidden-size", type=int, required=True)
    g.add_argument("--num-attention-heads", type=int, required=True)
    g.add_argument("--ffn-hidden-size", type=int, default=None, help="Default 4 * hidden size.")
    g.add_argument("--seq-length", type=int, required=True)
    g.add_argument(
        "--max-position-embeddings",
        type=int,
        default=None,
        help="Learned absolute positions: must equal --seq-length when given; "
        "rope: at least --seq-length.",
    )
    g.add_argument("--hidden-dropout", type=float, default=0.1)
    g.add_argument("--attention-dropout", type=float, default=0.1)
    g.add_argument("--init-method-std", type=float, default=0.02)
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    # Llama-family architecture (what tools/convert_hf_llama.py writes).
    g.add_argument("--normalization", default="LayerNorm", choices=["LayerNorm", "RMSNorm"])
    g.add_argument("--norm-epsilon", type=float, default=1e-5)
    g.add_argument(
        "--swiglu",
        action="store_true",
        help="Gated SiLU MLP (default --ffn-hidden-size: Megatron-LM's 8/3 rule).",
    )
    g.add_argument(
        "--position-embedding-type",
        default="learned_absolute",
        choices=["learned_absolute", "rope"],
    )
    g.add_argument("--rotary-base", type=int, default=10000, help="RoPE theta.")
    g.add_argument("--group-query-attention", action="store_true")
    g.add_argument(
        "--num-query-groups",
        type=int,
        default=1,
        help="Key/value heads with --group-query-attention.",
    )
    g.add_argument(
        "--kv-channels",
        type=int,
        default=None,
        help="Attention head width (default hidden size / heads).",
    )
    g.add_argument("--disable-bias-linear", action="store_true")
    g.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="Model vocabulary before padding (default: the tokenizer's); at least "
        "the tokenizer's size.",
    )


def _training(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, required=True)
    g.add_argument("--global-batch-size", type=int, required=True)
    g.add_argument("--train-iters", type=int, required=True)
    g.add_argument("--lr", type=float, required=True)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", default="cosine", choices=["constant", "linear", "cosine"])
    g.add_argument("--lr-warmup-fraction", type=float, default=None)
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.999)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--log-interval", type=int, default=100)
    g.add_argument(
        "--exit-interval",
        type=int,
        default=None,
        help="Stop (after saving) once the iteration is a multiple of this.",
    )
    g.add_argument(
        "--no-check-for-nan-in-loss-and-grad",
        dest="check_for_nan_in_loss_and_grad",
        action="store_false",
        help="Train on when the loss or the gradient norm becomes NaN/inf (by default the run "
        "stops with exit status 1 before saving, as Megatron-LM's check, and the newest "
        "checkpoint stays the last good one).",
    )
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument(
        "--distributed-backend",
        default=None,
        choices=["nccl", "gloo"],
        help="Default: nccl with a GPU, gloo without.",
    )


def _data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data and evaluation")
    g.add_argument(
        "--data-path",
        nargs="+",
        required=True,
        help="Megatron blend: 'w1 prefix1 w2 prefix2 ...' (or prefixes alone).",
    )
    g.add_argument("--split", default="969,30,1")
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--num-workers", type=int, default=2)
    g.add_argument(
        "--tokenizer-type", default="HuggingFaceTokenizer", choices=["HuggingFaceTokenizer"]
    )
    g.add_argument(
        "--tokenizer-model",
        required=True,
        help="A Hugging Face tokenizer.json, or the folder holding it.",
    )
    g.add_argument(
        "--tokenizer-eod-token",
        default=None,
        help="End-of-document token (not a Megatron-LM flag). Default: "
        "'<|endoftext|>' when the tokenizer has it, else the eos_token of the "
        "tokenizer_config.json beside tokenizer.json.",
    )
    g.add_argument("--eval-interval", type=int, default=1000)
    g.add_argument("--eval-iters", type=int, default=10)


def _checkpointing(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpointing and logging")
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument(
        "--finetune",
        action="store_true",
        help="Load model weights only; start at iteration 0 with a fresh optimizer "
        "(continual pre-training from a base checkpoint).",
    )
    g.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="Load --load with torch.load(weights_only=False): allows checkpoints holding "
        "arbitrary pickled objects (e.g. some Megatron-LM legacy files), and so lets the file "
        "run any code as you on every rank. Only for checkpoints you made yourself. By "
        "default only tensors and plain data (and a few numpy/argparse data types) load.",
    )
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--tensorboard-dir", default=None)


def build_parser(prog: str = "pretrain_gpt.py") -> argparse.ArgumentParser:
    """The entry's flags: model, training, data, checkpointing and ``--velocitune-*``.

    Args:
        prog (str): the program name its messages and ``--help`` give.

    Returns:
        argparse.ArgumentParser: the parser (its errors are one line, exit 2).
    """
    parser = _Parser(
        prog=prog, description="GPT pretraining on megatron-core with Velocitune reweighting."
    )
    for add in (_model, _training, _data, _checkpointing):
        add(parser)
    add_velocitune_args(parser)
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse and check the entry's flags.

    Args:
        argv (Optional[List[str]]): the arguments (default ``sys.argv[1:]``).

    Returns:
        argparse.Namespace: Megatron-LM-style attributes (``args.num_layers`` ...) and the
        ``velocitune_*`` group.
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    _check(parser, args)
    return args


def _check(parser: _Parser, args: argparse.Namespace) -> None:
    positive = (
        "num_layers",
        "hidden_size",
        "num_attention_heads",
        "seq_length",
        "micro_batch_size",
        "global_batch_size",
        "train_iters",
        "eval_iters",
        "log_interval",
        "tensor_model_parallel_size",
        "pipeline_model_parallel_size",
    )
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: {getattr(args, name)} must be >= 1")
    if args.position_embedding_type == "rope":
        if (
            args.max_position_embeddings is not None
            and args.max_position_embeddings < args.seq_length
        ):
            parser.error(
                f"--max-position-embeddings {args.max_position_embeddings} is below "
                f"--seq-length {args.seq_length}"
            )
    elif args.max_position_embeddings not in (None, args.seq_length):
        parser.error(
            f"--max-position-embeddings {args.max_position_embeddings} must equal "
            f"--seq-length {args.seq_length}"
        )
    if args.group_query_attention and (
        args.num_query_groups < 1 or args.num_attention_heads % args.num_query_groups
    ):
        parser.error(
            f"--num-query-groups {args.num_query_groups} must divide "
            f"--num-attention-heads {args.num_attention_heads}"
        )
    if args.norm_epsilon <= 0:
        parser.error(f"--norm-epsilon: {args.norm_epsilon} must be > 0")
    if args.lr <= 0 or args.min_lr < 0 or args.min_lr > args.lr:
        parser.error(f"--lr {args.lr} / --min-lr {args.min_lr}: need 0 <= min-lr <= lr, lr > 0")
    if args.lr_warmup_fraction is not None and not 0 <= args.lr_warmup_fraction < 1:
        parser.error(f"--lr-warmup-fraction: {args.lr_warmup_fraction} must be in [0, 1)")
    if args.lr_warmup_iters and args.lr_warmup_iters >= args.train_iters:
        parser.error(
            f"--lr-warmup-iters {args.lr_warmup_iters} must be below --train-iters "
            f"{args.train_iters}"
        )
    if args.save_interval is not None and args.save_interval < 1:
        parser.error(f"--save-interval: {args.save_interval} must be >= 1")
    if args.save_interval and not args.save:
        parser.error("--save-interval needs --save")
    # The folders a run writes into, tried before any work (a file in the way or a read-only
    # filesystem otherwise surfaces as a traceback from TensorBoard or megatron-core's cache).
    # --save is checked when its lock is taken.
    for flag, folder in (
        ("--tensorboard-dir", args.tensorboard_dir),
        ("--velocitune-log-dir", args.velocitune_log_dir),
        ("--data-cache-path", args.data_cache_path),
    ):
        problem = folder and folder_problem(folder)
        if problem:
            parser.error(f"{flag} {folder}: {problem}")
