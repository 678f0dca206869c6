"""Hugging Face Llama-family checkpoints <-> megatron-core GPTModel state dicts, for any TP x PP.

Pure mapping logic: tensors and config dicts in, tensors and flags out; no files, no processes
(``megatron_velocitune.conversion.checkpoints`` does the I/O). The megatron-core side is the
GPTModel that ``examples/pretrain_gpt.py`` builds with ``get_gpt_layer_local_spec`` and the flags
:func:`megatron_flags` returns (RMSNorm, SwiGLU, RoPE, grouped-query attention, no biases):

=========================================================  =====================================
Hugging Face (``LlamaForCausalLM``)                        megatron-core, per (TP rank, PP stage)
=========================================================  =====================================
``model.embed_tokens.weight`` [V, h]                       ``embedding.word_embeddings.weight``
                                                           [Vp / tp, h] (first stage; rows past V
                                                           are zero padding)
``model.layers.i.input_layernorm.weight``                  ``decoder.layers.j.input_layernorm.weight``
``model.layers.i.self_attn.{q,k,v}_proj.weight``           ``decoder.layers.j.self_attention.linear_qkv.weight``:
                                                           per query group ``[q heads; k; v]``,
                                                           the groups split over TP ranks
``model.layers.i.self_attn.o_proj.weight``                 ``...self_attention.linear_proj.weight`` (columns split)
``model.layers.i.post_attention_layernorm.weight``         ``decoder.layers.j.pre_mlp_layernorm.weight``
``model.layers.i.mlp.{gate,up}_proj.weight``               ``...mlp.linear_fc1.weight``: ``[gate_r; up_r]``
                                                           with TP rank r's rows of each
``model.layers.i.mlp.down_proj.weight``                    ``...mlp.linear_fc2.weight`` (columns split)
``model.norm.weight``                                      ``decoder.final_layernorm.weight`` (last stage)
``lm_head.weight`` (untied models)                         ``output_layer.weight`` (last stage; a
                                                           copy of the embedding when tied and PP > 1)
=========================================================  =====================================

``j`` is the layer's index within its pipeline stage (``i - stage * num_layers / pp``).
Both directions only slice, concatenate and reshape, so HF -> megatron-core -> HF reproduces
every tensor bit for bit.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from megatron_velocitune.core.errors import ConversionError

__all__ = [
    "ConversionError",
    "LlamaArchitecture",
    "architecture_from_hf_config",
    "architecture_from_megatron_args",
    "check_layout",
    "hf_config_from_architecture",
    "hf_to_megatron",
    "megatron_flags",
    "megatron_stage_keys",
    "megatron_to_hf",
]

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
_LINEARS = (
    "self_attention.linear_qkv",
    "self_attention.linear_proj",
    "mlp.linear_fc1",
    "mlp.linear_fc2",
)
# Buffers some older Hugging Face checkpoints carry; recomputed from the config, not weights.
_IGNORED_HF_SUFFIXES = (".rotary_emb.inv_freq",)

Shards = Dict[Tuple[int, int], Dict[str, Any]]


@dataclass(frozen=True)
class LlamaArchitecture:
    """The shape of a Llama-family model, as both sides need it.

    Attributes:
        num_layers (int): decoder layers.
        hidden_size (int): model width ``h``.
        ffn_hidden_size (int): SwiGLU inner width (``intermediate_size``).
        num_attention_heads (int): query heads.
        num_query_groups (int): key/value heads (``num_key_value_heads``).
        head_dim (int): width of one head (``kv_channels``).
        vocab_size (int): vocabulary rows of the Hugging Face model (before padding).
        norm_epsilon (float): RMSNorm epsilon.
        rotary_base (int): RoPE theta.
        max_position_embeddings (int): longest context the model was trained for.
        tie_word_embeddings (bool): output layer shares the input embedding.
    """

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int
    norm_epsilon: float
    rotary_base: int
    max_position_embeddings: int
    tie_word_embeddings: bool

    @property
    def heads_per_group(self) -> int:
        """Query heads sharing one key/value head."""
        return self.num_attention_heads // self.num_query_groups

    @property
    def qkv_rows(self) -> int:
        """Output rows of the fused ``linear_qkv`` (all TP ranks together)."""
        return self.num_query_groups * (self.heads_per_group + 2) * self.head_dim


def _rope_theta_and_type(config: Mapping[str, Any]) -> Tuple[Any, Optional[str]]:
    # transformers >= 5 writes rope_parameters {rope_theta, rope_type}; 4.x writes rope_theta
    # and rope_scaling {rope_type|type, factor, ...} or null.
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    return theta, rope_type


def architecture_from_hf_config(config: Mapping[str, Any]) -> LlamaArchitecture:
    """Read and check a Hugging Face ``config.json`` (as a dict).

    Args:
        config (Mapping[str, Any]): the model's ``config.json``.

    Returns:
        LlamaArchitecture: its shape.

    Raises:
        ConversionError: not a Llama-family model this mapping reproduces exactly (another
            architecture, biases, another activation, RoPE scaling, a sliding window, ...).
    """
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type not in SUPPORTED_MODEL_TYPES:
        listed = ", ".join(architectures) or "no architectures listed"
        raise ConversionError(
            f"unsupported architecture: model_type {model_type!r} ({listed}); this tool maps "
            f"Llama-family checkpoints (model_type {' or '.join(SUPPORTED_MODEL_TYPES)}: "
            "LlamaForCausalLM, MistralForCausalLM)"
        )
    problems = []
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config['hidden_act']!r} (SwiGLU needs 'silu')")
    if config.get("attention_bias", False):
        problems.append("attention_bias=true (linear biases are not mapped)")
    if config.get("mlp_bias", False):
        problems.append("mlp_bias=true (linear biases are not mapped)")
    theta, rope_type = _rope_theta_and_type(config)
    if rope_type not in (None, "default"):
        problems.append(f"RoPE scaling {rope_type!r} (only plain RoPE is mapped)")
    if float(theta) != int(float(theta)):
        problems.append(f"rope_theta {theta} is not an integer (--rotary-base is an int)")
    if config.get("sliding_window") is not None:
        problems.append(
            f"sliding_window={config['sliding_window']} (megatron-core's local "
            "attention is full causal attention)"
        )
    for key in (
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "vocab_size",
    ):
        if not isinstance(config.get(key), int) or config[key] < 1:
            problems.append(f"{key}={config.get(key)!r} (need a positive integer)")
    if problems:
        raise ConversionError(f"cannot map this {model_type} checkpoint: " + "; ".join(problems))
    heads = config["num_attention_heads"]
    groups = config.get("num_key_value_heads") or heads
    if heads % groups:
        raise ConversionError(
            f"num_attention_heads {heads} is not a multiple of num_key_value_heads {groups}"
        )
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    if not config.get("head_dim") and config["hidden_size"] % heads:
        raise ConversionError(
            f"hidden_size {config['hidden_size']} is not a multiple of "
            f"num_attention_heads {heads} and no head_dim is given"
        )
    return LlamaArchitecture(
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        ffn_hidden_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=groups,
        head_dim=head_dim,
        vocab_size=config["vocab_size"],
        norm_epsilon=float(config.get("rms_norm_eps", 1e-6)),
        rotary_base=int(float(theta)),
        max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def architecture_from_megatron_args(args: Mapping[str, Any], vocab_size: int) -> LlamaArchitecture:
    """The architecture a training run's arguments describe (the reverse direction).

    Args:
        args (Mapping[str, Any]): the run's arguments as its checkpoint stores them (``args``).
        vocab_size (int): the Hugging Face vocabulary size (rows kept, padding dropped).

    Returns:
        LlamaArchitecture: its shape.

    Raises:
        ConversionError: the run was not a Llama-architecture model.
    """
    problems = []
    if args.get("normalization") != "RMSNorm":
        problems.append(f"--normalization {args.get('normalization')} (need RMSNorm)")
    if not args.get("swiglu"):
        problems.append("no --swiglu")
    if args.get("position_embedding_type") != "rope":
        problems.append(
            f"--position-embedding-type {args.get('position_embedding_type')} (need rope)"
        )
    if not args.get("disable_bias_linear"):
        problems.append("linear biases (need --disable-bias-linear)")
    if problems:
        raise ConversionError(
            "checkpoint is not a Llama-architecture model: " + "; ".join(problems)
        )
    heads, hidden = args["num_attention_heads"], args["hidden_size"]
    groups = args["num_query_groups"] if args.get("group_query_attention") else heads
    ffn = args.get("ffn_hidden_size") or int((4 * hidden * 2 / 3) / 64) * 64
    return LlamaArchitecture(
        num_layers=args["num_layers"],
        hidden_size=hidden,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        num_query_groups=groups,
        head_dim=args.get("kv_channels") or hidden // heads,
        vocab_size=vocab_size,
        norm_epsilon=float(args.get("norm_epsilon", 1e-5)),
        rotary_base=int(args.get("rotary_base", 10000)),
        max_position_embeddings=int(args.get("max_position_embeddings") or args["seq_length"]),
        tie_word_embeddings=not args.get("untie_embeddings_and_output_weights", False),
    )


def check_layout(arch: LlamaArchitecture, tp: int, pp: int) -> None:
    """Check that megatron-core can split ``arch`` over ``tp`` x ``pp`` ranks.

    Raises:
        ConversionError: naming the dimension that does not divide.
    """
    if tp < 1 or pp < 1:
        raise ConversionError(f"TP={tp} PP={pp}: both must be >= 1")
    problems = []
    if arch.num_layers % pp:
        problems.append(f"num_layers {arch.num_layers} is not a multiple of PP={pp}")
    if arch.num_attention_heads % tp:
        problems.append(
            f"num_attention_heads {arch.num_attention_heads} is not a multiple of TP={tp}"
        )
    groups = arch.num_query_groups
    if groups % tp and tp % groups:
        problems.append(f"num_query_groups {groups} and TP={tp}: one must divide the other")
    if arch.ffn_hidden_size % tp:
        problems.append(f"ffn_hidden_size {arch.ffn_hidden_size} is not a multiple of TP={tp}")
    if problems:
        raise ConversionError("cannot split this model: " + "; ".join(problems))


def _padded_vocab(vocab_size: int, tp: int, divisible_by: int) -> int:
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


def megatron_flags(
    arch: LlamaArchitecture, tp: int, pp: int, make_vocab_size_divisible_by: int = 128
) -> List[str]:
    """The training entry's (and Megatron-LM's) flags for a model of this shape and split.

    Args:
        arch (LlamaArchitecture): the model.
        tp (int): tensor-parallel size of the checkpoint.
        pp (int): pipeline-parallel size of the checkpoint.
        make_vocab_size_divisible_by (int): vocabulary padding unit.

    Returns:
        List[str]: ``["--num-layers", "30", ...]`` (no tokenizer, data or training flags).
    """
    flags = [
        "--num-layers",
        str(arch.num_layers),
        "--hidden-size",
        str(arch.hidden_size),
        "--ffn-hidden-size",
        str(arch.ffn_hidden_size),
        "--num-attention-heads",
        str(arch.num_attention_heads),
        "--group-query-attention",
        "--num-query-groups",
        str(arch.num_query_groups),
    ]
    if arch.head_dim * arch.num_attention_heads != arch.hidden_size:
        flags += ["--kv-channels", str(arch.head_dim)]
    flags += [
        "--max-position-embeddings",
        str(arch.max_position_embeddings),
        "--position-embedding-type",
        "rope",
        "--rotary-base",
        str(arch.rotary_base),
        "--normalization",
        "RMSNorm",
        "--norm-epsilon",
        repr(arch.norm_epsilon),
        "--swiglu",
        "--disable-bias-linear",
        "--hidden-dropout",
        "0",
        "--attention-dropout",
        "0",
        "--vocab-size",
        str(arch.vocab_size),
        "--make-vocab-size-divisible-by",
        str(make_vocab_size_divisible_by),
    ]
    if not arch.tie_word_embeddings:
        flags.append("--untie-embeddings-and-output-weights")
    flags += ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp)]
    return flags


def hf_config_from_architecture(
    arch: LlamaArchitecture, template: Optional[Mapping[str, Any]] = None, dtype: str = "float32"
) -> Dict[str, Any]:
    """A ``config.json`` for ``LlamaForCausalLM`` holding ``arch``.

    Args:
        arch (LlamaArchitecture): the model.
        template (Optional[Mapping[str, Any]]): the original ``config.json`` (token ids, model
            type, ... are kept from it); its architecture fields must agree with ``arch``.
        dtype (str): the weights' dtype name.

    Returns:
        Dict[str, Any]: the config.

    Raises:
        ConversionError: the template describes another architecture.
    """
    fields = {
        "num_hidden_layers": arch.num_layers,
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.ffn_hidden_size,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_query_groups,
        "head_dim": arch.head_dim,
        "vocab_size": arch.vocab_size,
        "rms_norm_eps": arch.norm_epsilon,
        "tie_word_embeddings": arch.tie_word_embeddings,
    }
    if template is not None:
        other = architecture_from_hf_config(template)
        if other != arch:
            diff = [
                f"{k}: {getattr(other, k)} vs {getattr(arch, k)}"
                for k in arch.__dataclass_fields__
                if getattr(other, k) != getattr(arch, k) and k != "max_position_embeddings"
            ]
            if diff:
                raise ConversionError(
                    "the template config.json describes another model: " + "; ".join(diff)
                )
        config = {k: v for k, v in template.items() if k != "quantization_config"}
        config.update(fields)
        config["dtype"] = dtype
        return config
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "max_position_embeddings": arch.max_position_embeddings,
        "rope_theta": float(arch.rotary_base),
        "rope_scaling": None,
        "dtype": dtype,
        **fields,
    }
    return config


def _hf_layer_shapes(arch: LlamaArchitecture) -> Dict[str, Tuple[int, ...]]:
    h, d = arch.hidden_size, arch.head_dim
    return {
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (arch.num_attention_heads * d, h),
        "self_attn.k_proj.weight": (arch.num_query_groups * d, h),
        "self_attn.v_proj.weight": (arch.num_query_groups * d, h),
        "self_attn.o_proj.weight": (h, arch.num_attention_heads * d),
        "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (arch.ffn_hidden_size, h),
        "mlp.up_proj.weight": (arch.ffn_hidden_size, h),
        "mlp.down_proj.weight": (h, arch.ffn_hidden_size),
    }


def _hf_expected(arch: LlamaArchitecture) -> Dict[str, Tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (arch.vocab_size, arch.hidden_size)}
    for i in range(arch.num_layers):
        for name, shape in _hf_layer_shapes(arch).items():
            shapes[f"model.layers.{i}.{name}"] = shape
    shapes["model.norm.weight"] = (arch.hidden_size,)
    if not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (arch.vocab_size, arch.hidden_size)
    return shapes


def _check_tensors(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, Tuple[int, ...]],
    what: str,
    ignored=lambda name: False,
) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not ignored(k)]
    wrong = [
        f"{k}: shape {tuple(state[k].shape)}, expected {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} missing tensor(s): "
            + ", ".join(missing[:6])
            + (" ..." if len(missing) > 6 else "")
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected tensor(s) (biases? another "
            "architecture?): " + ", ".join(unexpected[:6]) + (" ..." if len(unexpected) > 6 else "")
        )
    if wrong:
        problems.append(
            "shape mismatch against the config: "
            + "; ".join(wrong[:6])
            + (" ..." if len(wrong) > 6 else "")
        )
    if problems:
        raise ConversionError(f"{what}: " + " | ".join(problems))


def megatron_stage_keys(
    arch: LlamaArchitecture, tp: int, pp: int, pp_rank: int, make_vocab_size_divisible_by: int = 128
) -> Dict[str, Optional[Tuple]]:
    """Every state-dict entry of one TP rank of pipeline stage ``pp_rank``, with its shape.

    Args:
        arch (LlamaArchitecture): the model.
        tp (int): tensor-parallel size.
        pp (int): pipeline-parallel size.
        pp_rank (int): the stage.
        make_vocab_size_divisible_by (int): vocabulary padding unit.

    Returns:
        Dict[str, Optional[Tuple]]: name -> local shape; None for the linear layers'
        ``_extra_state`` entries (which megatron-core's state dicts carry as None).
    """
    h, d, f = arch.hidden_size, arch.head_dim, arch.ffn_hidden_size
    vocab = _padded_vocab(arch.vocab_size, tp, make_vocab_size_divisible_by) // tp
    first, last = pp_rank == 0, pp_rank == pp - 1
    keys: Dict[str, Optional[Tuple]] = {}
    if first:
        keys["embedding.word_embeddings.weight"] = (vocab, h)
    for j in range(arch.num_layers // pp):
        p = f"decoder.layers.{j}."
        keys[p + "input_layernorm.weight"] = (h,)
        keys[p + "self_attention.linear_qkv.weight"] = (arch.qkv_rows // tp, h)
        keys[p + "self_attention.linear_proj.weight"] = (h, arch.num_attention_heads * d // tp)
        keys[p + "pre_mlp_layernorm.weight"] = (h,)
        keys[p + "mlp.linear_fc1.weight"] = (2 * f // tp, h)
        keys[p + "mlp.linear_fc2.weight"] = (h, f // tp)
        for linear in _LINEARS:
            keys[p + linear + "._extra_state"] = None
    if last:
        keys["decoder.final_layernorm.weight"] = (h,)
        if not arch.tie_word_embeddings or pp > 1:
            keys["output_layer.weight"] = (vocab, h)
        keys["output_layer._extra_state"] = None
    return keys


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    if weight.shape[0] == rows:
        return weight
    pad = torch.zeros((rows - weight.shape[0],) + tuple(weight.shape[1:]), dtype=weight.dtype)
    return torch.cat([weight, pad], dim=0)


def hf_to_megatron(
    state: Mapping[str, torch.Tensor],
    arch: LlamaArchitecture,
    tp: int = 1,
    pp: int = 1,
    make_vocab_size_divisible_by: int = 128,
) -> Shards:
    """Split a Hugging Face Llama state dict into megatron-core state dicts, one per rank.

    Args:
        state (Mapping[str, torch.Tensor]): the Hugging Face tensors (``lm_head.weight`` of a
            tied model is ignored; old ``rotary_emb.inv_freq`` buffers too).
        arch (LlamaArchitecture): from :func:`architecture_from_hf_config`.
        tp (int): tensor-parallel size.
        pp (int): pipeline-parallel size.
        make_vocab_size_divisible_by (int): vocabulary padding unit (rows past the vocabulary
            are zeros).

    Returns:
        Shards: ``{(tp_rank, pp_rank): state_dict}``, each as this rank's GPTModel stage holds it
        (``model.load_state_dict`` strict).

    Raises:
        ConversionError: missing or unexpected tensors, shapes that disagree with the config, or
            a split megatron-core cannot make.
    """
    check_layout(arch, tp, pp)
    _check_tensors(
        state,
        _hf_expected(arch),
        "Hugging Face checkpoint",
        ignored=lambda k: (
            k.endswith(_IGNORED_HF_SUFFIXES) or (k == "lm_head.weight" and arch.tie_word_embeddings)
        ),
    )
    h, d, g = arch.hidden_size, arch.head_dim, arch.num_query_groups
    vocab = _padded_vocab(arch.vocab_size, tp, make_vocab_size_divisible_by)
    embedding = _pad_rows(state["model.embed_tokens.weight"], vocab).chunk(tp, dim=0)
    head = (
        embedding
        if arch.tie_word_embeddings
        else _pad_rows(state["lm_head.weight"], vocab).chunk(tp, dim=0)
    )
    per_stage = arch.num_layers // pp
    shards: Shards = {}
    for s in range(pp):
        layers = []
        for j in range(per_stage):
            hf = f"model.layers.{s * per_stage + j}."
            q = state[hf + "self_attn.q_proj.weight"].reshape(g, arch.heads_per_group * d, h)
            k = state[hf + "self_attn.k_proj.weight"].reshape(g, d, h)
            v = state[hf + "self_attn.v_proj.weight"].reshape(g, d, h)
            qkv = torch.cat([q, k, v], dim=1).reshape(arch.qkv_rows, h).chunk(tp, dim=0)
            gate = state[hf + "mlp.gate_proj.weight"].chunk(tp, dim=0)
            up = state[hf + "mlp.up_proj.weight"].chunk(tp, dim=0)
            layers.append(
                dict(
                    norm1=state[hf + "input_layernorm.weight"],
                    qkv=qkv,
                    proj=state[hf + "self_attn.o_proj.weight"].chunk(tp, dim=1),
                    norm2=state[hf + "post_attention_layernorm.weight"],
                    fc1=[torch.cat([gate[r], up[r]], dim=0) for r in range(tp)],
                    fc2=state[hf + "mlp.down_proj.weight"].chunk(tp, dim=1),
                )
            )
        for r in range(tp):
            out: Dict[str, Any] = {}
            if s == 0:
                out["embedding.word_embeddings.weight"] = embedding[r].clone()
            for j, layer in enumerate(layers):
                p = f"decoder.layers.{j}."
                out[p + "input_layernorm.weight"] = layer["norm1"].clone()
                out[p + "self_attention.linear_qkv.weight"] = layer["qkv"][r].clone()
                out[p + "self_attention.linear_proj.weight"] = layer["proj"][r].clone()
                out[p + "pre_mlp_layernorm.weight"] = layer["norm2"].clone()
                out[p + "mlp.linear_fc1.weight"] = layer["fc1"][r].clone()
                out[p + "mlp.linear_fc2.weight"] = layer["fc2"][r].clone()
                for linear in _LINEARS:
                    out[p + linear + "._extra_state"] = None
            if s == pp - 1:
                out["decoder.final_layernorm.weight"] = state["model.norm.weight"].clone()
                if not arch.tie_word_embeddings or pp > 1:
                    out["output_layer.weight"] = head[r].clone()
                out["output_layer._extra_state"] = None
            shards[(r, s)] = out
    return shards


def megatron_to_hf(
    shards: Mapping[Tuple[int, int], Mapping[str, Any]], arch: LlamaArchitecture, tp: int, pp: int
) -> Dict[str, torch.Tensor]:
    """Merge megatron-core state dicts (every TP rank of every stage) into Hugging Face tensors.

    Args:
        shards (Mapping[Tuple[int, int], Mapping[str, Any]]): ``{(tp_rank, pp_rank): state_dict}``
            as saved by the training entry (``model`` of each ``model_optim_rng.pt``).
        arch (LlamaArchitecture): the model (``vocab_size``: the rows to keep).
        tp (int): tensor-parallel size of the checkpoint.
        pp (int): pipeline-parallel size of the checkpoint.

    Returns:
        Dict[str, torch.Tensor]: ``LlamaForCausalLM`` tensors (no ``lm_head.weight`` when tied).

    Raises:
        ConversionError: a rank's shard is absent, or has missing, unexpected or mis-shaped
            tensors for ``arch``.
    """
    check_layout(arch, tp, pp)
    absent = [(r, s) for s in range(pp) for r in range(tp) if (r, s) not in shards]
    if absent:
        raise ConversionError(
            f"megatron checkpoint for TP={tp} PP={pp}: no shard for (tp_rank, pp_rank) {absent}"
        )
    first_shard = (
        shards[(0, 0)]["embedding.word_embeddings.weight"]
        if "embedding.word_embeddings.weight" in shards[(0, 0)]
        else None
    )
    rows = first_shard.shape[0] * tp if first_shard is not None else 0
    if rows < arch.vocab_size:
        raise ConversionError(
            f"embedding has {rows} rows over {tp} TP ranks, fewer than the "
            f"vocabulary size {arch.vocab_size}"
        )
    divisible = rows // tp  # any unit that reproduces the saved padding
    for s in range(pp):
        expected = megatron_stage_keys(arch, tp, pp, s, make_vocab_size_divisible_by=divisible)
        for r in range(tp):
            shard = shards[(r, s)]
            _check_tensors(
                {k: v for k, v in shard.items() if isinstance(v, torch.Tensor)},
                {k: v for k, v in expected.items() if v is not None},
                f"megatron shard mp_rank_{r:02d}_{s:03d}",
                ignored=lambda k: k.endswith("._extra_state"),
            )

    def cat(s: int, name: str, dim: int) -> torch.Tensor:
        return torch.cat([shards[(r, s)][name] for r in range(tp)], dim=dim)

    h, d, g = arch.hidden_size, arch.head_dim, arch.num_query_groups
    out: Dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": cat(0, "embedding.word_embeddings.weight", 0)[
            : arch.vocab_size
        ].clone()
    }
    per_stage = arch.num_layers // pp
    for s in range(pp):
        for j in range(per_stage):
            p, hf = f"decoder.layers.{j}.", f"model.layers.{s * per_stage + j}."
            qkv = cat(s, p + "self_attention.linear_qkv.weight", 0).reshape(
                g, (arch.heads_per_group + 2) * d, h
            )
            q, k, v = qkv.split([arch.heads_per_group * d, d, d], dim=1)
            fc1 = [shards[(r, s)][p + "mlp.linear_fc1.weight"].chunk(2, dim=0) for r in range(tp)]
            out[hf + "input_layernorm.weight"] = shards[(0, s)][
                p + "input_layernorm.weight"
            ].clone()
            out[hf + "self_attn.q_proj.weight"] = q.reshape(-1, h).clone()
            out[hf + "self_attn.k_proj.weight"] = k.reshape(-1, h).clone()
            out[hf + "self_attn.v_proj.weight"] = v.reshape(-1, h).clone()
            out[hf + "self_attn.o_proj.weight"] = cat(s, p + "self_attention.linear_proj.weight", 1)
            out[hf + "post_attention_layernorm.weight"] = shards[(0, s)][
                p + "pre_mlp_layernorm.weight"
            ].clone()
            out[hf + "mlp.gate_proj.weight"] = torch.cat([a for a, _ in fc1], dim=0)
            out[hf + "mlp.up_proj.weight"] = torch.cat([b for _, b in fc1], dim=0)
            out[hf + "mlp.down_proj.weight"] = cat(s, p + "mlp.linear_fc2.weight", 1)
    out["model.norm.weight"] = shards[(0, pp - 1)]["decoder.final_layernorm.weight"].clone()
    if not arch.tie_word_embeddings:
        out["lm_head.weight"] = cat(pp - 1, "output_layer.weight", 0)[: arch.vocab_size].clone()
    return out
