"""GPT pretraining on megatron-core with Velocitune, top to bottom.

``pretrain(args)`` is the whole run: process groups, model, optimizer, the dynamic blend and
the per-domain held-out sets, (resume), then per iteration

    train_step -> consumed_samples += global batch -> log -> controller.maybe_update
    (a new blend rebuilds the data iterator at the consumed position) -> validation -> save

in the order Megatron-LM's ``train()`` runs them, so the blend chosen after iteration ``t``
applies from the first sample of iteration ``t + 1`` and a checkpoint at ``t`` holds it.
"""

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_velocitune.control.distributed import shared_run_id
from megatron_velocitune.control.evaluation import DomainEvaluator
from megatron_velocitune.control.run import (
    RunSettings,
    VelocituneRun,
    default_domain_names,
    learning_rate_extra,
)
from megatron_velocitune.control.run_folder import take_save_lock
from megatron_velocitune.control.state import sidecar_path
from megatron_velocitune.control.sync import UpdateSync
from megatron_velocitune.control.train_stream import (
    DomainLossAccumulator,
    TrainStreamEvaluator,
    WindowLayout,
)
from megatron_velocitune.core.arguments import write_loss_file
from megatron_velocitune.core.blending import check_blend_weights
from megatron_velocitune.core.errors import InputError, NonFiniteLossError
from megatron_velocitune.core.files import last_checkpoint_before, read_tracker, write_tracker
from megatron_velocitune.data.batch import broadcast_batch, gpt_forward
from megatron_velocitune.data.builder import (
    DatasetTokenizer,
    VelocityDatasets,
    blend_from_data_path,
    build_velocity_datasets,
    gpt_dataset_config,
)
from megatron_velocitune.data.corpus import eod_token_id, load_tokenizer
from megatron_velocitune.data.loader import RebuildableDataIterator
from megatron_velocitune.device import compute_device
from megatron_velocitune.laws.comparison import diverged_loss_warning, format_loss_table
from megatron_velocitune.laws.schedule_laws import LR_SCHEDULE_KEY, LrSchedule
from megatron_velocitune.training.checkpointing import load_checkpoint, save_checkpoint
from megatron_velocitune.training.model import build_gpt_model, gpt_config_from_args
from megatron_velocitune.training.optimizer import OptimizerSettings, build_optimizer
from megatron_velocitune.training.parallel import (
    ParallelConfig,
    ParallelInfo,
    initialize_parallel,
)
from megatron_velocitune.training.startup import check_heldout

__all__ = [
    "RunSummary",
    "TrainingJob",
    "build_data",
    "build_model_and_optimizer",
    "measure_initial_loss",
    "pretrain",
    "setup",
    "train",
]

logger = logging.getLogger(__name__)

BatchHook = Callable[[int, Dict[str, torch.Tensor]], None]


@dataclass
class RunSummary:
    """What a run ends with (identical on every rank except ``lm_losses``).

    Attributes:
        iteration (int): the last iteration completed.
        consumed_samples (int): global samples consumed.
        domains (List[str]): domain names.
        weights (List[float]): the final blend.
        initial_loss (Optional[List[float]]): per-domain held-out loss before training.
        final_loss (Optional[List[float]]): per-domain held-out loss at the end (full sets).
        lm_losses (Dict[int, float]): training loss per iteration (last pipeline stage).
        trajectory (Optional[str]): the JSONL trajectory file.
        loop_seconds (float): wall time of the training loop (updates, validation and saves
            included; start-up, the initial and the final evaluation excluded).
        loop_cpu_seconds (float): CPU time of this process in the same span.
    """

    iteration: int
    consumed_samples: int
    domains: List[str]
    weights: List[float]
    initial_loss: Optional[List[float]] = None
    final_loss: Optional[List[float]] = None
    lm_losses: Dict[int, float] = field(default_factory=dict)
    trajectory: Optional[str] = None
    loop_seconds: float = 0.0
    loop_cpu_seconds: float = 0.0


def _print_rank_last(message: str) -> None:
    # Megatron-LM prints iteration lines from the last rank: it holds the losses.
    if dist.get_rank() == dist.get_world_size() - 1:
        print(message, flush=True)


def _loss_func(
    batch: Dict[str, torch.Tensor],
    stream: Optional[DomainLossAccumulator],
    output_tensor: torch.Tensor,
):
    loss_mask = batch["loss_mask"]
    if stream is not None:
        # Per-domain sums of the training stream, kept on the device: no collective, no sync.
        stream.add(batch["dataset_id"], output_tensor, loss_mask)
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.float().reshape(-1)
    loss_sum = (losses * mask).sum()
    tokens = mask.sum()
    return loss_sum / tokens.clamp(min=1), {"lm loss": torch.stack([loss_sum.detach(), tokens])}


def _make_forward_step(
    micro_batch_size: int,
    seq_length: int,
    stream: Optional[DomainLossAccumulator],
    batch_hook: Optional[BatchHook],
):
    def forward_step(data_iterator, model):
        batch = None
        reads = parallel_state.get_tensor_model_parallel_rank() == 0 and (
            parallel_state.is_pipeline_first_stage() or parallel_state.is_pipeline_last_stage()
        )
        if reads:
            batch = next(data_iterator)
            if batch_hook is not None:
                batch_hook(parallel_state.get_data_parallel_rank(), batch)
        batch = broadcast_batch(batch, micro_batch_size, seq_length, with_domain=stream is not None)
        output = gpt_forward(model, batch)
        return output, lambda out: _loss_func(batch, stream, out)

    return forward_step


def _reduce_lm_loss(losses: List[Dict[str, torch.Tensor]]) -> Optional[float]:
    if not losses:
        return None
    total = torch.stack([x["lm loss"] for x in losses]).sum(0).double()
    dist.all_reduce(total, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    return float(total[0] / total[1])


def build_model_and_optimizer(args, info: ParallelInfo):
    """The GPTModel, its (DDP-wrapped) module and optimizer, and the dataset tokenizer.

    Args:
        args (argparse.Namespace): from :func:`parse_args`.
        info (ParallelInfo): this rank's position (from :func:`initialize_parallel`).

    Returns:
        tuple: ``(model, module, optimizer, DatasetTokenizer)``.
    """
    tokenizer = load_tokenizer(args.tokenizer_model, args.tokenizer_eod_token)
    vocab_size = tokenizer.get_vocab_size()
    eod = eod_token_id(tokenizer, args.tokenizer_model, args.tokenizer_eod_token)
    if args.vocab_size is not None and args.vocab_size < vocab_size:
        raise InputError(f"--vocab-size {args.vocab_size} is below the tokenizer's {vocab_size}")
    try:
        model = build_gpt_model(gpt_config_from_args(args, vocab_size, info.tp_size, info.pp_size))
    except ValueError as e:  # megatron-core's TransformerConfig checks of the model flags
        raise InputError(f"model flags: {e}") from None
    module, optimizer = build_optimizer(
        model,
        OptimizerSettings(
            lr=args.lr,
            min_lr=args.min_lr,
            weight_decay=args.weight_decay,
            adam_beta1=args.adam_beta1,
            adam_beta2=args.adam_beta2,
            adam_eps=args.adam_eps,
            clip_grad=args.clip_grad,
        ),
    )
    return model, module, optimizer, DatasetTokenizer(vocab_size, eod)


def build_data(
    args,
    info: ParallelInfo,
    blend: Tuple[List[str], List[float]],
    tokenizer: DatasetTokenizer,
    update_interval: int,
) -> VelocityDatasets:
    """The dynamic train blend and each domain's held-out set, on data-holding ranks only.

    Args:
        args (argparse.Namespace): from :func:`parse_args` (split, sizes, seed, cache).
        info (ParallelInfo): this rank's position.
        blend (Tuple[List[str], List[float]]): prefixes and normalised weights.
        tokenizer (DatasetTokenizer): from :func:`build_model_and_optimizer`.
        update_interval (int): ``m``, which sets the blend's index window.

    Returns:
        VelocityDatasets: the datasets (None on ranks that hold no data).
    """
    return build_velocity_datasets(
        gpt_dataset_config(
            blend=blend,
            split=args.split,
            seq_length=args.seq_length,
            seed=args.seed,
            tokenizer=tokenizer,
            path_to_cache=args.data_cache_path,
            create_attention_mask=False,
        ),
        train_samples=args.train_iters * args.global_batch_size,
        update_window=update_interval * args.global_batch_size,
        is_built_on_rank=lambda: info.holds_data,
    )


@dataclass
class TrainingJob:
    """What one rank trains with, built by :func:`setup` (every field on every rank).

    Attributes:
        info (ParallelInfo): this rank's place in the TP x PP x DP grid.
        num_microbatches (int): micro-batches per global batch on this rank.
        model (torch.nn.Module): the GPTModel stage (what checkpoints hold).
        module (torch.nn.Module): the DDP-wrapped model (what trains and evaluates).
        optimizer: the optimizer.
        scheduler (OptimizerParamScheduler): the learning-rate schedule.
        data (VelocityDatasets): the dynamic train blend and held-out sets (None off data ranks).
        stream (Optional[DomainLossAccumulator]): the training-stream loss sums, when read.
        run (VelocituneRun): the Velocitune run (controller, log, loader-rebuild rule).
        validator (DomainEvaluator): Megatron-LM's ``--eval-iters`` validation, per domain.
        writer (Optional[Any]): the TensorBoard writer on the last rank.
        lock (Optional[RunLock]): this run's lock on ``--save`` (global rank 0).
    """

    info: ParallelInfo
    num_microbatches: int
    model: torch.nn.Module
    module: torch.nn.Module
    optimizer: Any
    scheduler: OptimizerParamScheduler
    data: VelocityDatasets
    stream: Optional[DomainLossAccumulator]
    run: VelocituneRun
    validator: DomainEvaluator
    writer: Optional[Any]
    lock: Optional[Any] = None

    def close(self) -> None:
        """Release the ``--save`` lock (the run is over, or failed)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def setup(args, measuring: bool = False) -> TrainingJob:
    """Process groups, model, optimizer, schedule, data, evaluators and the Velocitune run.

    Everything that can be checked before training is checked here: the flags, the data files,
    the held-out sets against the evaluation sizes, ``--save`` (created, writable, and locked
    for this run).

    Args:
        args (argparse.Namespace): from :func:`parse_args`.
        measuring (bool): the initial-loss measurement only (no ``--save`` lock, no training).
    """
    info = initialize_parallel(
        ParallelConfig(
            args.tensor_model_parallel_size,
            args.pipeline_model_parallel_size,
            backend=args.distributed_backend,
        ),
        seed=args.seed,
    )
    # One live run per --save, never over another run's checkpoints (created and checked
    # writable here, not at the first save).
    lock = take_save_lock(None if measuring else args.save, args.load, args.finetune)
    try:
        return _build(args, info, measuring, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build(args, info: ParallelInfo, measuring: bool, lock) -> TrainingJob:
    num_microbatches = _microbatches(args, info)
    model, module, optimizer, tokenizer = build_model_and_optimizer(args, info)
    scheduler = build_scheduler(args, optimizer)

    # The blend is validated and normalised once, here; everything downstream keeps its bits.
    prefixes, weights = blend_from_data_path(args.data_path)
    weights = check_blend_weights(
        weights or [1.0] * len(prefixes), len(prefixes), what="--data-path weights"
    ).tolist()
    data = build_data(args, info, (prefixes, weights), tokenizer, args.velocitune_update_interval)
    valid = data.valid if info.holds_data else None
    names = args.velocitune_domain_names or default_domain_names(prefixes)
    if not (measuring and args.velocitune_loss_source == "train"):
        check_heldout(
            valid,
            names,
            args.split,
            args.micro_batch_size * info.dp_size,
            [("--velocitune-eval-iters", args.velocitune_eval_iters)]
            + ([("--eval-iters", args.eval_iters)] if args.eval_interval else []),
            len(prefixes),
            prefixes,
        )
    writer = _tensorboard_writer(args)
    stream, evaluator = build_evaluator(args, info, module, data, len(prefixes))
    run = VelocituneRun(
        RunSettings.from_args(args, prefixes),
        prefixes,
        weights,
        data.train,
        evaluator,
        _print_rank_last,
        writer,
        run_id=shared_run_id(),  # one header per run in a shared log folder
        stream=stream,
        # The whole schedule, so a target law fitted on this run knows the LR past its end.
        header_extra={LR_SCHEDULE_KEY: LrSchedule.from_scheduler(scheduler, 1).to_header()},
    )
    validator = DomainEvaluator(
        module, valid, len(prefixes), args.seq_length, args.micro_batch_size, args.eval_iters
    )
    # What a resume must match; the stream's windows are in the checkpoint, one per DP rank,
    # and cannot be split or merged into another DP size's exactly.
    run.set_identity(
        None if stream is None else WindowLayout(info.dp_rank, info.dp_size, refuse_other_size=True)
    )
    return TrainingJob(
        info,
        num_microbatches,
        model,
        module,
        optimizer,
        scheduler,
        data,
        stream,
        run,
        validator,
        writer,
        lock,
    )


def resume(args, job: TrainingJob) -> Tuple[int, int]:
    """Load ``--load`` (weights only with ``--finetune``) and the run's saved history.

    Returns:
        Tuple[int, int]: the iteration and consumed samples to continue from (0, 0 when new).
    """
    if not args.load:
        return 0, 0
    loaded = load_checkpoint(
        args.load,
        job.model,
        job.optimizer,
        job.scheduler,
        finetune=args.finetune,
        load_optim=not args.no_load_optim,
        load_rng=not args.no_load_rng,
        trust=args.trust_checkpoint,
    )
    iteration, consumed = loaded.iteration, loaded.consumed_samples
    # Without --finetune, load_checkpoint returned the tracker's iteration: its sidecar.
    if not args.finetune:
        job.run.resume(
            loaded.state,
            sidecar_path(args.load, iteration),
            iteration,
            args.load,
            windows=loaded.train_stream_windows,
        )
    _print_rank_last(
        f" loaded checkpoint from {args.load} at iteration {iteration}"
        f" (consumed samples {consumed})"
    )
    return iteration, consumed


def pretrain(args, batch_hook: Optional[BatchHook] = None) -> RunSummary:
    """Run (or resume) one pretraining job as configured by :func:`parse_args`.

    Args:
        args (argparse.Namespace): from :func:`megatron_velocitune.training.arguments.parse_args`.
        batch_hook (Optional[BatchHook]): called with ``(dp_rank, micro_batch)`` for every
            training micro-batch read (tests use it to record what was trained on).

    Returns:
        RunSummary: the run's end state.

    Raises:
        VelocituneError: a user error (one line); ``NonFiniteLossError`` when the loss became
            non-finite (the run stops without saving).
    """
    job = setup(args)
    try:
        iteration, consumed = resume(args, job)
        if iteration >= args.train_iters:
            _print_rank_last(
                f" the checkpoint in {args.load} is at iteration {iteration}, the end of this "
                f"run (--train-iters {args.train_iters}): nothing left to train"
            )
            return RunSummary(iteration, consumed, job.run.names, job.run.weights.tolist())
        job.run.start(iteration, consumed)
        return train(args, job, iteration, consumed, batch_hook)
    finally:
        job.close()


def measure_initial_loss(args, output: str) -> RunSummary:
    """The initial loss only: the model as loaded, every domain's full held-out set, no training.

    Writes it as a ``--velocitune-initial-loss-file`` JSON at ``output`` (global rank 0).

    Returns:
        RunSummary: with ``initial_loss``.
    """
    job = setup(args, measuring=True)
    iteration, consumed = resume(args, job)
    job.run.start(iteration, consumed)
    run = job.run
    initial = run.controller.full_initial_loss.tolist()
    if dist.get_rank() == 0:
        write_loss_file(
            output,
            run.names,
            initial,
            source="measure_initial_loss",
            checkpoint=args.load,
            loss_source=run.config.loss_source,
        )
    _print_rank_last(
        " initial loss per domain: "
        + " | ".join(f"{n}: {v:.4f}" for n, v in zip(run.names, initial))
        + f" -> {output}"
    )
    return RunSummary(iteration, consumed, run.names, run.weights.tolist(), initial_loss=initial)


def train(
    args,
    job: TrainingJob,
    iteration: int,
    consumed: int,
    batch_hook: Optional[BatchHook] = None,
) -> RunSummary:
    """The training loop, from ``iteration`` to ``--train-iters`` (or ``--exit-interval``)."""
    run, info = job.run, job.info
    train_iter = None
    if job.data.train is not None:
        train_iter = RebuildableDataIterator(
            job.data.train,
            consumed,
            args.micro_batch_size,
            info.dp_rank,
            info.dp_size,
            args.num_workers,
        )
        run.on_blend_change(train_iter.rebuild)
    forward_step = _make_forward_step(
        args.micro_batch_size, args.seq_length, job.stream, batch_hook
    )
    forward_backward = get_forward_backward_func()
    initial = run.controller.full_initial_loss
    summary = RunSummary(
        iteration,
        consumed,
        run.names,
        run.weights.tolist(),
        initial_loss=None if initial is None else initial.tolist(),
        trajectory=run.trajectory_path,
    )
    job.module.train()
    warned = None
    vocab_size = getattr(job.model, "vocab_size", None)  # the diverged-loss warning's scale
    timer = time.time()
    loop_start, loop_cpu_start, start_iteration = (
        time.perf_counter(),
        time.process_time(),
        iteration,
    )
    while iteration < args.train_iters:
        job.optimizer.zero_grad()
        losses = forward_backward(
            forward_step_func=forward_step,
            data_iterator=train_iter,
            model=job.module,
            num_microbatches=job.num_microbatches,
            seq_length=args.seq_length,
            micro_batch_size=args.micro_batch_size,
            forward_only=False,
        )
        ok, grad_norm = job.optimizer.step()
        job.scheduler.step(1)
        iteration += 1
        consumed += args.global_batch_size
        lm_loss = _reduce_lm_loss(losses)
        if args.check_for_nan_in_loss_and_grad and _non_finite(lm_loss, grad_norm):
            # As Megatron-LM's check: stop before this iteration's update, validation or save,
            # so the newest checkpoint stays the last good one.
            what = f"the training loss or gradient norm is not finite (lm loss {lm_loss}, "
            _stop_non_finite(args, iteration, what + f"grad norm {grad_norm})", iteration - 1)
        if lm_loss is not None:
            summary.lm_losses[iteration] = lm_loss
            if not warned:  # once: a finite loss far above a uniform guess's has diverged
                warned = diverged_loss_warning(
                    f"the training loss at iteration {iteration}",
                    ["lm"],
                    [lm_loss],
                    vocab_size,
                )
                if warned:
                    _print_rank_last(" " + warned)
        if iteration % args.log_interval == 0 or iteration == args.train_iters:
            elapsed = (time.time() - timer) * 1000.0 / args.log_interval
            timer = time.time()
            _log_iteration(args, job, iteration, consumed, elapsed, lm_loss, grad_norm, ok)

        # Every m iterations: evaluate, decide, apply (the loader restarts if the blend changed).
        extra = None
        if run.is_update_iteration(iteration):  # the record's fields, only where one is written
            extra = {
                **(learning_rate_extra(job.optimizer) or {}),
                **(_stream_diagnostic(run, job) or {}),
            }
        decision = run.after_iteration(iteration, consumed, extra=extra or None)
        if decision is not None and decision.skipped and args.check_for_nan_in_loss_and_grad:
            # The model itself evaluates to NaN/inf (the step just taken broke it): the same stop.
            loss = decision.eval_loss.tolist()
            what = f"the per-domain loss of the velocitune update is not finite ({loss})"
            _stop_non_finite(args, iteration, what, iteration)

        if args.eval_interval and iteration % args.eval_interval == 0:
            _validate(job.validator, run.sync, run.names, iteration, consumed, job.writer)
        stop = args.exit_interval is not None and iteration % args.exit_interval == 0
        if args.save and (
            (args.save_interval and iteration % args.save_interval == 0)
            or stop
            or iteration == args.train_iters
        ):
            save_checkpoint(
                args.save,
                iteration,
                job.model,
                job.optimizer,
                job.scheduler,
                consumed,
                run.sidecar(),
                _plain_args(args),
                None if job.stream is None else job.stream.state(),
            )
            _print_rank_last(f" saved checkpoint at iteration {iteration:7d} to {args.save}")
        if stop:
            _print_rank_last(f" exiting program at iteration {iteration}")
            break

    if train_iter is not None:
        train_iter.close()
    summary.loop_seconds = time.perf_counter() - loop_start
    summary.loop_cpu_seconds = time.process_time() - loop_cpu_start
    done = max(iteration - start_iteration, 1)
    _print_rank_last(
        f" training loop: {iteration - start_iteration} iterations in {summary.loop_seconds:.1f} s"
        f" ({1000 * summary.loop_seconds / done:.1f} ms/iteration wall, "
        f"{1000 * summary.loop_cpu_seconds / done:.1f} ms/iteration CPU of this process)"
    )
    final = run.sync.reduce(job.validator.evaluate(full=True))
    summary.final_loss = final.mean().tolist()
    summary.iteration, summary.consumed_samples = iteration, consumed
    summary.weights = run.weights.tolist()
    _print_rank_last(_format_loss_table(summary, run.config.loss_source, vocab_size))
    if job.writer is not None:
        job.writer.flush()
        job.writer.close()
    return summary


# ---------------------------------------------------------------------- set-up pieces
def _microbatches(args, info: ParallelInfo) -> int:
    per_step = args.micro_batch_size * info.dp_size
    if args.global_batch_size % per_step:
        raise InputError(
            f"--global-batch-size {args.global_batch_size} is not a multiple of "
            f"--micro-batch-size x data-parallel size = {per_step}"
        )
    if (
        info.pp_size > 1
        and not torch.cuda.is_available()
        and not args.untie_embeddings_and_output_weights
    ):
        raise InputError(
            "--pipeline-model-parallel-size > 1 on CPU needs "
            "--untie-embeddings-and-output-weights (megatron-core moves the tied "
            "embedding of the last stage to CUDA)"
        )
    return args.global_batch_size // per_step


def build_scheduler(args, optimizer) -> OptimizerParamScheduler:
    """Megatron-LM's learning-rate schedule from ``--lr*`` (warm-up, then decay to ``--min-lr``)."""
    warmup = args.lr_warmup_iters or int((args.lr_warmup_fraction or 0.0) * args.train_iters)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup else args.lr,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=args.train_iters,
        lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay,
        end_wd=args.weight_decay,
        wd_incr_steps=args.train_iters,
        wd_incr_style="constant",
    )


def build_evaluator(args, info: ParallelInfo, module, data: VelocityDatasets, k: int):
    """The per-domain loss estimator the controller reads, and the training-stream sums.

    Returns:
        tuple: ``(stream or None, evaluator)``: held-out evaluation (``eval``) or the training
        stream with ``L_init`` on its first draws (``train``).
    """
    mbs, seq, eval_iters = args.micro_batch_size, args.seq_length, args.velocitune_eval_iters
    heldout = DomainEvaluator(
        module, data.valid if info.holds_data else None, k, seq, mbs, eval_iters
    )
    # The training stream is read when it feeds the policy, and logged beside the held-out
    # estimate in dynamic runs; a static run with held-out evaluation is megatron-core's static
    # path untouched (the estimator benchmark's baseline).
    source = args.velocitune_loss_source
    stream = None
    if source == "train" or args.velocitune_policy != "static":
        stream = DomainLossAccumulator(k, compute_device())
    if source != "train":
        return stream, heldout
    # L_init on the stream's own footing: the base model on the first samples the stream draws
    # from each domain (the j-th draw of domain d is train dataset d's sample j).
    first_draws = DomainEvaluator(
        module, data.train_per_domain if info.holds_data else None, k, seq, mbs, eval_iters
    )
    return stream, TrainStreamEvaluator(first_draws, stream)


def _tensorboard_writer(args) -> Optional[Any]:
    if not args.tensorboard_dir or dist.get_rank() != dist.get_world_size() - 1:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=args.tensorboard_dir, max_queue=20)


# ---------------------------------------------------------------------- loop pieces
def _log_iteration(args, job, iteration, consumed, elapsed_ms, lm_loss, grad_norm, ok) -> None:
    lr = job.optimizer.param_groups[0]["lr"]
    blend = " ".join(f"{n}={w:.3f}" for n, w in zip(job.run.names, job.run.weights))
    _print_rank_last(
        f" iteration {iteration:8d}/{args.train_iters:8d} | consumed samples: "
        f"{consumed:12d} | elapsed time per iteration (ms): {elapsed_ms:.1f} | learning "
        f"rate: {lr:.6E} | global batch size: {args.global_batch_size:5d} | lm loss: "
        f"{lm_loss if lm_loss is not None else float('nan'):.6E} | grad norm: "
        f"{grad_norm:.3f} |{'' if ok else ' skipped step |'} weights: {blend}"
    )
    if job.writer is not None:
        job.writer.add_scalar("lm loss", lm_loss, iteration)
        job.writer.add_scalar("lm loss vs samples", lm_loss, consumed)
        job.writer.add_scalar("learning-rate", lr, iteration)


def _non_finite(lm_loss: Optional[float], grad_norm) -> bool:
    """Whether the loss or the gradient norm is NaN/inf on any rank (a world collective)."""
    bad = (lm_loss is not None and not math.isfinite(lm_loss)) or (
        grad_norm is not None and not math.isfinite(float(grad_norm))
    )
    flag = torch.tensor([1.0 if bad else 0.0], dtype=torch.float32, device=compute_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def _stop_non_finite(args, iteration: int, what: str, first_bad: int) -> None:
    """Megatron-LM's stop on a non-finite loss: one line, no save, the last good checkpoint named.

    Args:
        args (argparse.Namespace): the run's flags (``--save``).
        iteration (int): the iteration that found it.
        what (str): what was not finite.
        first_bad (int): the first iteration whose weights are bad: the training loss of
            iteration ``t`` is the forward of the weights saved at ``t - 1``, so a checkpoint
            there already holds them; an update's held-out loss at ``t`` reads ``t``'s weights.

    Raises:
        NonFiniteLossError: always (every rank). Rank 0 sets the tracker back to the last
            checkpoint saved before ``first_bad``, so ``--load`` resumes from good weights.
    """
    tail = ""
    if args.save:
        good = last_checkpoint_before(args.save, first_bad)
        newest = read_tracker(args.save, flag="--save")
        if good is not None and newest != good and dist.get_rank() == 0:
            write_tracker(args.save, good)
        if good is not None:
            tail = f", the last good checkpoint is iteration {good} in {args.save}"
            if newest is not None and newest > good:
                tail += (
                    f" (the tracker names it now: the weights of iteration {newest} had "
                    "already diverged)"
                )
        elif newest is not None:
            tail = (
                f", and no checkpoint in {args.save} was saved before the weights of iteration "
                f"{first_bad} (its tracker names iteration {newest}, whose weights diverged)"
            )
        dist.barrier()  # every rank raises after the tracker is set back
    raise NonFiniteLossError(
        f"iteration {iteration}: {what}; stopped without saving{tail}"
        " (--no-check-for-nan-in-loss-and-grad trains on)"
    )


def _stream_diagnostic(run: VelocituneRun, job: TrainingJob):
    """The training-stream estimate beside the held-out one (call at an update iteration only:
    the estimator study).

    Diagnostic only (the held-out estimate drives the policy): one more 2k-float reduction per
    update, in dynamic runs with ``--velocitune-loss-source eval``.
    """
    if job.stream is None or run.config.loss_source != "eval":
        return None
    window = run.sync.reduce(job.stream.take())
    return {"train_loss": window.mean().tolist(), "train_tokens": window.tokens.tolist()}


def _format_loss_table(summary: RunSummary, loss_source: str = "eval", vocab_size=None) -> str:
    start = (
        "start of this run"
        if loss_source == "eval"
        else ("start: L_init on the training stream's first draws (not held-out)")
    )
    initial = summary.initial_loss or [float("nan")] * len(summary.domains)
    return format_loss_table(
        summary.domains, initial, summary.final_loss, summary.weights, start, vocab_size
    )


def _validate(
    validator: DomainEvaluator, sync: UpdateSync, names, iteration, consumed, writer
) -> None:
    sums = sync.reduce(validator.evaluate(full=False))
    loss = sums.mean()
    cells = " | ".join(f"{n} lm loss: {v:.6E}" for n, v in zip(names, loss))
    _print_rank_last(f" validation loss at iteration {iteration} | {cells}")
    if writer is not None:
        for n, v in zip(names, loss):
            writer.add_scalar(f"{n} validation lm loss", v, iteration)
            writer.add_scalar(f"{n} validation lm loss vs samples", v, consumed)


def _plain_args(args) -> Dict[str, Any]:
    return {
        k: v
        for k, v in vars(args).items()
        if isinstance(v, (int, float, str, bool, list, type(None)))
    }
