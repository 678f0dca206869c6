"""A megatron-core GPTModel from a small typed config (local layer spec: no TE, no apex).

The same builder serves the CPU tests and demo (gloo, ``use_cpu_initialization``) and GPU runs
(NCCL, parameters created on the current device). It is tensor- and pipeline-parallel aware:
each rank builds only its pipeline stage (``pre_process`` on the first stage, ``post_process``
on the last), with its tensor-parallel shard of every layer.
"""

import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_velocitune.core.errors import InputError

__all__ = [
    "GPTConfig",
    "build_gpt_model",
    "gpt_config_from_args",
    "initialize_layout_invariant_",
    "padded_vocab_size",
    "transformer_config",
]


def padded_vocab_size(vocab_size: int, tensor_parallel_size: int, divisible_by: int = 128) -> int:
    """Pad the vocabulary as Megatron-LM does (``--make-vocab-size-divisible-by``).

    The vocab-parallel embedding and output layer split the vocabulary evenly over TP ranks.

    Args:
        vocab_size (int): the tokenizer's vocabulary size.
        tensor_parallel_size (int): TP degree.
        divisible_by (int): Megatron-LM's ``--make-vocab-size-divisible-by`` (default 128).

    Returns:
        int: the smallest multiple of ``divisible_by * tensor_parallel_size`` >= ``vocab_size``.
    """
    multiple = divisible_by * tensor_parallel_size
    return ((vocab_size + multiple - 1) // multiple) * multiple


@dataclass
class GPTConfig:
    """Shape of a small GPT and how it is split.

    Attributes:
        num_layers (int): transformer layers (a multiple of ``pipeline_model_parallel_size``).
        hidden_size (int): model width.
        num_attention_heads (int): heads (a multiple of ``tensor_model_parallel_size``).
        ffn_hidden_size (int): MLP width (default ``4 * hidden_size``).
        seq_length (int): maximum sequence length (learned absolute positions).
        vocab_size (int): vocabulary size; padded with :func:`padded_vocab_size`.
        tensor_model_parallel_size (int): TP degree the model is built for.
        pipeline_model_parallel_size (int): PP degree the model is built for.
        hidden_dropout (float): dropout after attention / MLP.
        attention_dropout (float): dropout on attention probabilities.
        init_method_std (float): std of the normal weight init.
        share_embeddings_and_output_weights (bool): tie input and output embeddings.
        make_vocab_size_divisible_by (int): vocabulary padding unit.
        params_dtype (torch.dtype): parameter and pipeline-communication dtype.
        normalization (str): ``"LayerNorm"`` or ``"RMSNorm"`` (Llama).
        norm_epsilon (float): epsilon of every normalization layer.
        swiglu (bool): gated SiLU MLP (Llama): ``linear_fc1`` holds ``[gate; up]``.
        position_embedding_type (str): ``"learned_absolute"`` or ``"rope"`` (Llama).
        rotary_base (int): RoPE theta.
        num_query_groups (Optional[int]): key/value heads for grouped-query attention
            (None: one per attention head).
        kv_channels (Optional[int]): attention head width (None: hidden / heads).
        add_bias_linear (bool): biases in the linear layers (Llama has none).
        extra (Dict[str, Any]): further ``TransformerConfig`` fields, passed through.
    """

    num_layers: int = 2
    hidden_size: int = 32
    num_attention_heads: int = 4
    ffn_hidden_size: int = 0
    seq_length: int = 32
    vocab_size: int = 1024
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    init_method_std: float = 0.02
    share_embeddings_and_output_weights: bool = False
    make_vocab_size_divisible_by: int = 128
    params_dtype: torch.dtype = torch.float32
    normalization: str = "LayerNorm"
    norm_epsilon: float = 1e-5
    swiglu: bool = False
    position_embedding_type: str = "learned_absolute"
    rotary_base: int = 10000
    num_query_groups: Optional[int] = None
    kv_channels: Optional[int] = None
    add_bias_linear: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ffn_hidden_size:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.num_layers % self.pipeline_model_parallel_size:
            raise InputError(
                f"num_layers {self.num_layers} is not a multiple of the pipeline size "
                f"{self.pipeline_model_parallel_size}"
            )
        if self.num_attention_heads % self.tensor_model_parallel_size:
            raise InputError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of the "
                f"tensor-parallel size {self.tensor_model_parallel_size}"
            )
        if self.num_query_groups is not None and self.num_attention_heads % self.num_query_groups:
            raise InputError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_query_groups {self.num_query_groups}"
            )

    @property
    def padded_vocab_size(self) -> int:
        """The vocabulary size the embedding and output layer are built with."""
        return padded_vocab_size(
            self.vocab_size, self.tensor_model_parallel_size, self.make_vocab_size_divisible_by
        )


def transformer_config(config: GPTConfig) -> TransformerConfig:
    """The megatron-core ``TransformerConfig`` for ``config`` on this machine.

    On a machine without CUDA, parameters are created on the CPU (``use_cpu_initialization``)
    and the pipeline exchanges float32 activations; on GPU they are created on the current
    device.

    Args:
        config (GPTConfig): model shape and split.

    Returns:
        TransformerConfig: ready for :class:`GPTModel`.
    """
    on_cpu = not torch.cuda.is_available()
    kwargs: Dict[str, Any] = dict(
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        ffn_hidden_size=config.ffn_hidden_size,
        tensor_model_parallel_size=config.tensor_model_parallel_size,
        pipeline_model_parallel_size=config.pipeline_model_parallel_size,
        hidden_dropout=config.hidden_dropout,
        attention_dropout=config.attention_dropout,
        init_method_std=config.init_method_std,
        use_cpu_initialization=on_cpu,
        params_dtype=config.params_dtype,
        pipeline_dtype=config.params_dtype,
        bf16=config.params_dtype == torch.bfloat16,
        fp16=config.params_dtype == torch.float16,
        normalization=config.normalization,
        layernorm_epsilon=config.norm_epsilon,
        add_bias_linear=config.add_bias_linear,
    )
    if config.swiglu:
        kwargs.update(gated_linear_unit=True, activation_func=F.silu)
    if config.num_query_groups is not None:
        kwargs["num_query_groups"] = config.num_query_groups
    if config.kv_channels is not None:
        kwargs["kv_channels"] = config.kv_channels
    kwargs.update(config.extra)
    return TransformerConfig(**kwargs)


def build_gpt_model(config: GPTConfig) -> GPTModel:
    """Build this rank's stage of the GPT (after ``initialize_parallel``).

    Args:
        config (GPTConfig): model shape and split; TP/PP sizes must match the initialized
            parallel state.

    Returns:
        GPTModel: the local stage and TP shard, on the CPU or the current CUDA device.
    """
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if (tp, pp) != (config.tensor_model_parallel_size, config.pipeline_model_parallel_size):
        raise InputError(
            f"GPTConfig is for TP={config.tensor_model_parallel_size} "
            f"PP={config.pipeline_model_parallel_size} but the parallel state is TP={tp} PP={pp}"
        )
    model = GPTModel(
        config=transformer_config(config),
        transformer_layer_spec=get_gpt_layer_local_spec(normalization=config.normalization),
        vocab_size=config.padded_vocab_size,
        max_sequence_length=config.seq_length,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=config.share_embeddings_and_output_weights,
        position_embedding_type=config.position_embedding_type,
        rotary_base=config.rotary_base,
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    elif isinstance(getattr(model, "rotary_pos_emb", None), RotaryEmbedding):
        model.rotary_pos_emb.__class__ = _HostRotaryEmbedding
    return model


class _HostRotaryEmbedding(RotaryEmbedding):
    """megatron-core's RoPE without its move of ``inv_freq`` to CUDA (CPU runs; same maths)."""

    def get_emb(self, max_seq_len: int, offset: int = 0) -> torch.Tensor:
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)
        if not self.rotary_interleaved:
            emb = torch.cat((freqs, freqs), dim=-1)
        else:
            emb = torch.stack((freqs.view(-1, 1), freqs.view(-1, 1)), dim=-1).view(
                freqs.shape[0], -1
            )
        return emb[:, None, None, :]


def gpt_config_from_args(
    args, vocab_size: int, tensor_model_parallel_size: int, pipeline_model_parallel_size: int
) -> GPTConfig:
    """The :class:`GPTConfig` that the training entry's flags describe.

    Args:
        args (argparse.Namespace): from :func:`megatron_velocitune.training.arguments.parse_args`.
        vocab_size (int): the tokenizer's vocabulary size (``--vocab-size`` overrides it).
        tensor_model_parallel_size (int): TP degree.
        pipeline_model_parallel_size (int): PP degree.

    Returns:
        GPTConfig: the model the run builds (and a converted checkpoint must match).
    """
    ffn_hidden_size = args.ffn_hidden_size or 0
    if not ffn_hidden_size and getattr(args, "swiglu", False):
        # Megatron-LM's default for --swiglu without --ffn-hidden-size.
        ffn_hidden_size = int((4 * args.hidden_size * 2 / 3) / 64) * 64
    return GPTConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        ffn_hidden_size=ffn_hidden_size,
        seq_length=args.seq_length,
        vocab_size=getattr(args, "vocab_size", None) or vocab_size,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout,
        init_method_std=args.init_method_std,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
        normalization=getattr(args, "normalization", "LayerNorm"),
        norm_epsilon=getattr(args, "norm_epsilon", 1e-5),
        swiglu=getattr(args, "swiglu", False),
        position_embedding_type=getattr(args, "position_embedding_type", "learned_absolute"),
        rotary_base=getattr(args, "rotary_base", 10000),
        num_query_groups=(
            args.num_query_groups if getattr(args, "group_query_attention", False) else None
        ),
        kv_channels=getattr(args, "kv_channels", None),
        add_bias_linear=not getattr(args, "disable_bias_linear", False),
    )


_LAYER = re.compile(r"decoder\.layers\.(\d+)\.")


def initialize_layout_invariant_(model: torch.nn.Module, config: GPTConfig, seed: int) -> None:
    """Re-initialise every parameter as a function of (seed, global parameter name) only.

    megatron-core's own initialisation depends on the parallel layout (each TP rank draws its
    shard from its own stream), so the same seed gives different models at TP=1 and TP=2. This
    draws each *full* tensor from a generator seeded by ``seed`` and the parameter's global
    name (local layer numbers shifted by the stage's first layer) and keeps this rank's
    tensor-parallel shard, so any TP x PP layout holds the same model: what tests comparing
    layouts need. Weights ~ N(0, init_method_std), norm weights 1 + N(0, init_method_std).

    Args:
        model (torch.nn.Module): this rank's stage, as built by :func:`build_gpt_model`.
        config (GPTConfig): its config (for the number of layers per stage and the std).
        seed (int): the seed.
    """
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    offset = pp_rank * (config.num_layers // config.pipeline_model_parallel_size)
    with torch.no_grad():
        for name, param in model.named_parameters():
            global_name = _LAYER.sub(lambda m: f"decoder.layers.{int(m.group(1)) + offset}.", name)
            shape = list(param.shape)
            split = bool(getattr(param, "tensor_model_parallel", False)) and tp_size > 1
            if split:
                shape[param.partition_dim] *= tp_size
            gen = torch.Generator().manual_seed(
                (seed * 1_000_003 + zlib.crc32(global_name.encode())) % (2**63)
            )
            full = torch.randn(shape, generator=gen, dtype=torch.float32) * config.init_method_std
            if "norm" in global_name and global_name.endswith("weight"):
                full += 1.0
            if split:
                full = full.chunk(tp_size, dim=param.partition_dim)[tp_rank]
            param.copy_(full.to(device=param.device, dtype=param.dtype))
