"""A small GPT training entry on ``megatron.training.pretrain``, used like ``pretrain_gpt.py``.

The megatron-core wheels from 0.17 carry ``megatron.training`` but not Megatron-LM's
``pretrain_gpt.py`` (nor its ``model_provider.py`` / ``gpt_builders.py``). This module is the
project's own entry for them: a dense megatron-core ``GPTModel`` (local or Transformer Engine
layer spec, from ``--transformer-impl``), the ``GPTDataset`` blend of ``--data-path`` /
``--split`` built with megatron-core's ``BlendedMegatronDatasetBuilder``, and a forward step
whose loss function is ``pretrain_gpt.py``'s contract: ``partial(loss_func, loss_mask)``
returning ``(loss sum, tokens, {"lm loss": [sum, tokens]})``. With Velocitune installed (the
launcher, or ``install()`` first) it is reweighted like ``pretrain_gpt.py``::

    torchrun ... -m megatron_velocitune.launch examples/megatron_lm/pretrain_gpt_velocitune.py \\
        <Megatron-LM args> --velocitune-*

How it starts depends on the release (:mod:`~megatron_velocitune.megatron_lm.compat`):
before 0.18 ``pretrain(provider, model_provider, model_type, forward_step, args_defaults=...)``
parses the arguments itself; from 0.18 ``parse_and_validate_args`` runs first and
``pretrain(cfg_container, provider, ...)`` takes the model provider third (0.18) or as the
keyword ``model_provider`` (0.19+).

Not covered (use Megatron-LM's own ``pretrain_gpt.py`` from a checkout for those): MoE and
hybrid models, multi-token prediction, SFT / FIM / mock data, packed sequences, ModelOpt.
"""

import inspect
from functools import partial
from typing import Any, Dict, List, Optional

import torch

__all__ = [
    "dataset_provider",
    "forward_step",
    "loss_func",
    "main",
    "model_provider",
    "pretrain_call",
]

ARGS_DEFAULTS: Dict[str, Any] = {"tokenizer_type": "GPT2BPETokenizer"}


def _accepted(fn, **kwargs) -> Dict[str, Any]:
    """The keyword arguments ``fn`` takes (megatron-core's constructors grow across releases)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def _layer_spec(specs, kind: str, **kwargs):
    """``get_gpt_layer_<kind>_spec`` with the options it takes.

    From 0.19 the spec functions take ``*args, **kwargs`` and pass them to
    ``get_gpt_layer_<kind>_submodules``, whose signature then says which options exist.
    """
    spec = getattr(specs, f"get_gpt_layer_{kind}_spec")
    signature_of = getattr(specs, f"get_gpt_layer_{kind}_submodules", spec)
    return spec(**_accepted(signature_of, **kwargs))


def model_provider(
    pre_process: bool = True,
    post_process: bool = True,
    vp_stage: Optional[int] = None,
    config: Any = None,
    pg_collection: Any = None,
    **_: Any,
):
    """A megatron-core ``GPTModel`` from Megatron-LM's arguments (``get_model`` calls this).

    Args:
        pre_process (bool): this stage holds the embedding.
        post_process (bool): this stage holds the output layer and the loss.
        vp_stage (Optional[int]): virtual pipeline stage.
        config: a ``TransformerConfig`` (default: from the arguments).
        pg_collection: the process groups (0.19+ pass them).

    Returns:
        GPTModel: the model chunk.
    """
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt import gpt_layer_specs as specs
    from megatron.training import get_args
    from megatron.training.arguments import core_transformer_config_from_args

    args = get_args()
    if config is None:
        config = core_transformer_config_from_args(args)
    if args.transformer_impl == "transformer_engine":
        layer_spec = _layer_spec(specs, "with_transformer_engine", qk_layernorm=args.qk_layernorm)
    else:
        layer_spec = _layer_spec(
            specs, "local", qk_layernorm=args.qk_layernorm, normalization=args.normalization
        )
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec,
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        fp16_lm_cross_entropy=args.fp16_lm_cross_entropy,
        parallel_output=True,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
        **_accepted(GPTModel.__init__, pg_collection=pg_collection, vp_stage=vp_stage),
    )


def _tokenizer(args):
    try:  # 0.15+: the script builds it (pretrain_gpt.py does the same)
        from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer
    except ImportError:  # pragma: no cover - older releases keep a global one
        from megatron.training import get_tokenizer

        return get_tokenizer()
    return build_tokenizer(args)


def _is_dataset_built_on_rank(vp_stage: Optional[int] = None) -> bool:
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_rank() == 0 and (
        parallel_state.is_pipeline_first_stage() or parallel_state.is_pipeline_last_stage()
    )


def dataset_config_from_args(args):
    """The ``GPTDatasetConfig`` of ``--data-path`` / ``--split`` (and the common data flags).

    Args:
        args: Megatron-LM's parsed arguments.

    Returns:
        GPTDatasetConfig: the config.
    """
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
    from megatron.training.utils import get_blend_and_blend_per_split

    blend, blend_per_split = get_blend_and_blend_per_split(args)
    return GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=args.split,
        path_to_cache=args.data_cache_path,
        tokenizer=_tokenizer(args),
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=args.create_attention_mask_in_dataloader,
        **_accepted(
            GPTDatasetConfig,
            mmap_bin_files=getattr(args, "mmap_bin_files", True),
            mid_level_dataset_surplus=getattr(args, "mid_level_dataset_surplus", 0.005),
        ),
    )


def dataset_provider(train_val_test_num_samples: List[int], vp_stage: Optional[int] = None):
    """Train, validation and test ``GPTDataset`` blends (Megatron-LM's dataset provider contract).

    Args:
        train_val_test_num_samples (List[int]): samples wanted per split.
        vp_stage (Optional[int]): virtual pipeline stage.

    Returns:
        tuple: ``(train, valid, test)``.
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.training import get_args

    config = dataset_config_from_args(get_args())
    return BlendedMegatronDatasetBuilder(
        GPTDataset, train_val_test_num_samples, _is_dataset_built_on_rank, config
    ).build()


# The datasets are built on every rank that needs them (Megatron-LM's "core datasets" path).
dataset_provider.is_distributed = True


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Sum of the masked per-token losses (Megatron-LM divides by the tokens it is given).

    Args:
        loss_mask (torch.Tensor): ``[b, s]`` 1 for the tokens that count.
        output_tensor (torch.Tensor): ``[b, s]`` per-token losses.

    Returns:
        tuple: ``(loss sum, tokens, {"lm loss": [loss sum, tokens]})``.
    """
    losses = output_tensor.reshape(-1).float()
    mask = loss_mask.reshape(-1).float()
    loss = torch.sum(losses * mask)
    num_tokens = mask.sum().clone().detach().to(torch.int)
    report = {"lm loss": torch.cat([loss.clone().detach().view(1), num_tokens.view(1)])}
    return loss, num_tokens, report


def forward_step(data_iterator, model):
    """One micro-batch through this rank's pipeline stage.

    Tensor-parallel rank 0 of the first and last stages reads the iterator and broadcasts the
    batch over its TP group (:func:`megatron_velocitune.data.batch.broadcast_batch`,
    context-parallel slicing included); the causal mask is built inside megatron-core's attention.

    Args:
        data_iterator: the train or validation iterator (None on ranks that read no data).
        model: the model chunk.

    Returns:
        tuple: ``(output_tensor, partial(loss_func, loss_mask))``.
    """
    from megatron.core import parallel_state
    from megatron.training import get_args

    from megatron_velocitune.data.batch import broadcast_batch, gpt_forward

    args = get_args()
    reads = parallel_state.get_tensor_model_parallel_rank() == 0 and (
        parallel_state.is_pipeline_first_stage() or parallel_state.is_pipeline_last_stage()
    )
    raw = next(data_iterator) if reads and data_iterator is not None else None
    batch = broadcast_batch(raw, args.micro_batch_size, args.seq_length)
    output = gpt_forward(model, batch)
    return output, partial(loss_func, None if batch is None else batch["loss_mask"])


def pretrain_call(compat, args: Any = None):
    """The positional and keyword arguments of ``pretrain`` for this release.

    Args:
        compat (MegatronLMCompat): the release facts.
        args: the parsed arguments (0.18+: ``parse_and_validate_args``' result).

    Returns:
        tuple: ``(positional, keywords)``.
    """
    from megatron.core.enums import ModelType

    model_type = ModelType.encoder_or_decoder
    if not compat.pretrain_takes_config_container:
        return (dataset_provider, model_provider, model_type, forward_step), {
            "args_defaults": dict(ARGS_DEFAULTS)
        }
    from megatron.training.argument_utils import pretrain_cfg_container_from_args

    cfg_container = pretrain_cfg_container_from_args(args)
    if compat.model_provider_keyword:
        return (cfg_container, dataset_provider, model_type, forward_step), {
            "model_provider": model_provider
        }
    return (cfg_container, dataset_provider, model_provider, model_type, forward_step), {}


def parse_args_for(compat):
    """0.18+: ``parse_and_validate_args`` (the flags join through the wrapped parser).

    Returns:
        Any: the arguments, or None before 0.18 (``pretrain`` parses them itself).
    """
    if not compat.pretrain_takes_config_container:
        return None
    from megatron.training.arguments import parse_and_validate_args

    return parse_and_validate_args(args_defaults=dict(ARGS_DEFAULTS))


def main() -> None:
    """Train: ``pretrain(...)`` with this module's providers and forward step."""
    from megatron.training import pretrain

    from megatron_velocitune.megatron_lm.compat import detect

    compat = detect()
    positional, keywords = pretrain_call(compat, parse_args_for(compat))
    pretrain(*positional, **keywords)


if __name__ == "__main__":
    main()
