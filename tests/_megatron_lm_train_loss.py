"""``--velocitune-loss-source train`` through the adapter on 2 gloo ranks (DP=2, the CPU).

Run by tests/test_megatron_lm.py with :func:`tests._multiproc.run_distributed` where this
interpreter's ``megatron.training`` is Megatron-LM's (the megatron-core 0.17+ wheel, the Python
3.12 leg). On every rank: the adapter installed, Megatron-LM's own argument parsing (0.18+:
``parse_and_validate_args``) with the flag, its ``build_train_valid_test_datasets`` running the
project's GPT entry's provider (the dynamic blend), the entry's real ``GPTModel``, Megatron-LM's
``build_pretraining_data_loader`` behind a ``RerunDataIterator``, the plugin's ``start`` (the
initial loss on the stream's first draws, a real forward), then ``m`` iterations of
megatron-core's forward-backward schedule with the forward step as ``train()`` receives it
(tapped), and the wrapped ``checkpoint_and_decide_exit`` deciding the update.

Each rank returns, per iteration, its DP-reduced window increment beside the DP-reduced
``lm loss`` reports of the same micro-batches, the per-domain token counts the dataset itself
says those samples hold, and the update's decision; the test compares them.
"""

import sys

__all__ = ["worker"]


def _without(argv, flag, count):
    i = argv.index(flag)
    return argv[:i] + argv[i + 1 + count :]


def worker(rank, world_size, corpus, names, workdir, iterations):
    import numpy as np
    import torch

    from megatron_velocitune.megatron_lm import install

    plugin = install()
    import megatron.training.arguments as arguments
    import megatron.training.training as training
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.rerun_state_machine import RerunDataIterator
    from megatron.training import global_vars

    from megatron_velocitune.megatron_lm import gpt_entry
    from megatron_velocitune.training import ParallelConfig, initialize_parallel
    from tests._megatron_lm_probe import megatron_argv

    initialize_parallel(ParallelConfig(), seed=1234)
    argv = megatron_argv(corpus, names, workdir)  # one index cache, built by rank 0
    # The initial loss is measured (the stream's first draws), not given.
    argv = _without(argv, "--velocitune-initial-loss", 3)
    argv += [
        "--velocitune-loss-source",
        "train",
        "--velocitune-update-interval",
        str(iterations),
        "--global-batch-size",
        "8",  # 2 micro-batches of 2 per DP rank
        # The CPU: no apex or fused kernels.
        "--use-cpu-initialization",
        "--no-persist-layer-norm",
        "--no-masked-softmax-fusion",
        "--no-bias-gelu-fusion",
        "--no-bias-dropout-fusion",
        "--velocitune-log-dir",
        workdir,
    ]
    sys.argv = argv
    compat = plugin.compat
    if compat.args_entry == "parse_and_validate_args":
        args = gpt_entry.parse_args_for(compat)
    else:
        args = arguments.parse_args()
        arguments.validate_args(args, {})
        global_vars.set_global_variables(args, build_tokenizer=False)

    num_samples = training.get_train_valid_test_num_samples()
    train_ds, _, _ = training.build_train_valid_test_datasets(
        gpt_entry.dataset_provider, num_samples
    )
    model = gpt_entry.model_provider(pre_process=True, post_process=True)
    train_iter = RerunDataIterator(iter(training.build_pretraining_data_loader(train_ds, 0)))
    args.iteration, args.consumed_train_samples = 0, 0
    plugin.start([model], None, train_iter)
    controller = plugin.controller
    accumulator = plugin.train_loss.accumulator
    forward_step = plugin.train_loss.wrap(gpt_entry.forward_step)  # what train() runs
    dp_group = parallel_state.get_data_parallel_group()
    gbs, mbs = args.global_batch_size, args.micro_batch_size
    micro_batches = gbs // (mbs * world_size)

    def dp_sum(t):
        t = t.clone()
        torch.distributed.all_reduce(t, group=dp_group)
        return t

    records = []
    window_total = torch.zeros(2, len(names), dtype=torch.float64)
    decision = None
    for iteration in range(1, iterations + 1):
        before = accumulator.state()
        reports = get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=train_iter,
            model=[model],
            num_microbatches=micro_batches,
            seq_length=args.seq_length,
            micro_batch_size=mbs,
            forward_only=False,
        )
        window = dp_sum(accumulator.state() - before)
        window_total += window
        lm = dp_sum(torch.stack([r["lm loss"].double() for r in reports]).sum(0))
        # The samples this global batch holds, read from the blend itself.
        start = args.consumed_train_samples
        expected_tokens = np.zeros(len(names))
        for i in range(start, start + gbs):
            sample = train_ds[i]
            mask = torch.as_tensor(sample["loss_mask"])
            expected_tokens[int(sample["dataset_id"])] += float(mask.sum())
        records.append(
            {
                "window_loss": window[0].tolist(),
                "window_tokens": window[1].tolist(),
                "lm_loss_sum": float(lm[0]),
                "lm_tokens": float(lm[1]),
                "expected_tokens": expected_tokens.tolist(),
            }
        )
        args.consumed_train_samples += gbs
        training.checkpoint_and_decide_exit([model], None, None, iteration, 0.0, {}, train_iter)
    if controller.history:
        decision = controller.history[-1]
    return {
        "records": records,
        "window_total": window_total.tolist(),
        "initial_loss": controller.initial_loss.tolist(),
        "decision": decision,
        "weights": controller.weights.tolist(),
        "dataset_weights": [float(w) for w in train_ds.weights],
        "open_window_after_update": accumulator.state().tolist(),
        "version": list(compat.version),
    }
