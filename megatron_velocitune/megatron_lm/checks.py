"""What the adapter refuses, with one line that says why and what to do instead.

Two checks, both pure functions so they are tested without a Megatron-LM checkout:

- :func:`check_args` runs on the parsed command line, before ``torch.distributed`` starts (the
  adapter wraps the parser), so a launch that cannot work stops on every rank at once, with
  argparse's usage line and exit status 2.
- :func:`check_dataset_config` runs on the ``GPTDatasetConfig`` a dataset provider hands to
  megatron-core's builder, once the blend is resolved (``--data-args-path`` files included).
"""

from typing import Any, List, Optional, Sequence

from megatron_velocitune.core.config import VelocituneConfigError
from megatron_velocitune.data.dataset import static_index_refusals

__all__ = ["check_args", "check_dataset_config", "check_data_path"]


def check_data_path(data_path: Optional[Sequence[str]]) -> None:
    """Refuse a ``--data-path`` that cannot be reweighted: one prefix, or no weights.

    Args:
        data_path (Optional[Sequence[str]]): Megatron-LM's ``--data-path`` tokens (None: the
            blend comes from elsewhere and is checked at build time).
    """
    if not data_path:
        return
    tokens = [t for item in data_path for t in str(item).split()]
    if len(tokens) == 1:
        raise VelocituneConfigError(
            f"--data-path {tokens[0]}: a single-prefix blend has nothing to reweight; give one "
            f"weighted prefix per domain: --data-path W1 PREFIX1 W2 PREFIX2 ..."
        )
    try:
        float(tokens[0])
    except ValueError:
        raise VelocituneConfigError(
            f"--data-path {' '.join(tokens[:4])} ...: Velocitune needs the starting weights; "
            f"give --data-path W1 PREFIX1 W2 PREFIX2 ... (velocitune-prepare-corpus prints the "
            f"token-proportional ones)"
        ) from None
    if len(tokens) == 2:
        raise VelocituneConfigError(
            f"--data-path {' '.join(tokens)}: a single-prefix blend has nothing to reweight; give "
            f"one weighted prefix per domain"
        )


def check_args(args: Any) -> None:
    """Refuse Megatron-LM options the adapter cannot honour.

    Args:
        args: Megatron-LM's parsed namespace (before ``validate_args``).

    Raises:
        VelocituneConfigError: one line naming the option and the reason.
    """
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    refusals: List[str] = []
    dataloader_type = get("dataloader_type")
    if dataloader_type in ("cyclic", "external"):
        refusals.append(
            f"--dataloader-type {dataloader_type}: Velocitune switches the blend at a consumed-"
            f"samples position, which only the 'single' loader walks in order (cyclic draws "
            f"per-epoch permutations; external loaders are opaque); use --dataloader-type single"
        )
    refusals += static_index_refusals(lambda option: get(f"dataloader_{option}"))
    if get("phase_transition_iterations"):
        refusals.append(
            "--phase-transition-iterations: each phase rebuilds the train set from sample 0, "
            "so a weight history in global samples does not apply; for phased blends of the "
            "same --data-path prefixes use --velocitune-policy schedule "
            "--velocitune-blend-schedule ITER:W1,W2,... (one run, no relaunch)"
        )
    if (
        get("virtual_pipeline_model_parallel_size")
        or get("num_layers_per_virtual_pipeline_stage")
        or get("num_virtual_stages_per_pipeline_rank")
    ):
        refusals.append(
            "virtual pipeline parallelism (--num-layers-per-virtual-pipeline-stage / "
            "--num-virtual-stages-per-pipeline-rank): the per-domain evaluation runs the "
            "non-interleaved schedule; use plain --pipeline-model-parallel-size"
        )
    if get("hybrid_context_parallel"):
        refusals.append(
            "--hybrid-context-parallel: its sampler regroups samples per batch; the Velocitune "
            "blend needs Megatron's in-order sampler"
        )
    if get("non_persistent_ckpt_type") in ("local", "in_memory"):
        refusals.append(
            f"--non-persistent-ckpt-type {get('non_persistent_ckpt_type')}: the Velocitune state "
            f"is a file beside each checkpoint; use 'global' (or persistent --save only)"
        )
    for flag, name in (("--mock-data", "mock_data"), ("--sft", "sft"), ("--fim-data", "fim_data")):
        if get(name):
            refusals.append(
                f"{flag}: Velocitune reweights a blend of GPTDataset domains "
                f"(--data-path W1 PREFIX1 W2 PREFIX2 ... --split ...)"
            )
    for flag, name in (
        ("--train-data-path", "train_data_path"),
        ("--valid-data-path", "valid_data_path"),
        ("--test-data-path", "test_data_path"),
        ("--per-split-data-args-path", "per_split_data_args_path"),
    ):
        if get(name):
            refusals.append(
                f"{flag}: per-split blends are not supported; give --data-path W1 PREFIX1 ... "
                f"with --split, whose validation split holds each domain's held-out documents"
            )
    if refusals:
        raise VelocituneConfigError(refusals[0])
    check_data_path(get("data_path"))


def check_dataset_config(dataset_cls: type, config: Any) -> None:
    """Refuse a dataset build the Velocitune blend cannot replace.

    Args:
        dataset_cls (type): the class the provider asked megatron-core's builder for.
        config: its ``BlendedMegatronDatasetConfig``.

    Raises:
        VelocituneConfigError: one line naming the cause.
    """
    from megatron.core.datasets.gpt_dataset import GPTDataset

    if dataset_cls is not GPTDataset:
        raise VelocituneConfigError(
            f"train dataset class {dataset_cls.__name__}: Velocitune blends GPTDataset domains "
            f"(--mock-data, --sft and --fim-data build other classes)"
        )
    if getattr(config, "mock", False):
        raise VelocituneConfigError("--mock-data: Velocitune needs a real --data-path blend")
    refused = static_index_refusals(lambda option: getattr(config, option, False))
    if refused:
        raise VelocituneConfigError(refused[0])
    if config.blend_per_split is not None or config.blend is None:
        raise VelocituneConfigError(
            "per-split blends (--train-data-path/--per-split-data-args-path) are not supported: "
            "give --data-path W1 PREFIX1 W2 PREFIX2 ... with --split"
        )
    prefixes, weights = config.blend
    if len(prefixes) < 2:
        raise VelocituneConfigError(
            f"--data-path {' '.join(prefixes)}: a single-prefix blend has nothing to reweight"
        )
    if weights is None:
        raise VelocituneConfigError(
            "--data-path without weights: Velocitune needs the starting blend "
            "(--data-path W1 PREFIX1 W2 PREFIX2 ...)"
        )
    split = config.split_matrix
    if split is None or split[1] is None:
        raise VelocituneConfigError(
            f"--split {config.split}: Velocitune evaluates each domain on its validation split; "
            f"hold some documents out (e.g. --split 98,2,0)"
        )
    if split[0] is None:
        raise VelocituneConfigError(f"--split {config.split}: no training split to reweight")
