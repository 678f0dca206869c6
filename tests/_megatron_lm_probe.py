"""Drive the adapter through a real Megatron-LM's functions, in one process.

Run by tests/test_megatron_lm.py as ``python tests/_megatron_lm_probe.py OUT.json CORPUS_DIR
NAMES...``, against one of:

- a checkout: ``PYTHONPATH=$MEGATRON_LM_PATH`` first, so ``import megatron`` is the checkout (a
  pytest process has already imported the pip megatron-core); the datasets come from the
  checkout's own ``pretrain_gpt.py`` provider;
- the megatron-core wheel's ``megatron.training`` (0.17+, the Python 3.12 leg): the wheel has no
  ``pretrain_gpt.py``, so the provider is the project's own entry
  (``megatron_velocitune.megatron_lm.gpt_entry``).

Importing Megatron-LM costs ~15-25 s of CPU here, so every check shares this one process and
writes its findings to OUT.json, which the tests assert on one by one. One gloo rank on the CPU
(Megatron-LM's ``train()`` itself needs CUDA: that part runs on a GPU machine,
examples/megatron_lm/).

Checks, in order:
1. ``install()``: the release detected, every integration point wrapped.
2. Megatron-LM's own ``parse_args`` with the ``--velocitune-*`` flags, and a refusal (cyclic).
3. The release's start-up: ``validate_args`` (before 0.18) or ``parse_and_validate_args``
   (0.18+), and the ``pretrain`` call the entry makes (``pretrain_cfg_container_from_args`` run
   for real, the call bound to ``pretrain``'s signature); then Megatron-LM's
   ``build_train_valid_test_datasets`` running the real provider on a real blend: the train split
   is a ``VelocityBlendedDataset``, validation/test are megatron-core's static ones.
4. The run: ``plugin.start`` (a stub evaluator stands in for the model), the *wrapped*
   ``checkpoint_and_decide_exit`` at iteration m updating the blend and restarting Megatron-LM's
   ``RerunDataIterator`` at the consumed position, the sidecar, and a resume that replays it.
5. The refusals, each on a copy of that checkpoint, through ``train()``'s start hook under this
   Megatron-LM's own arguments: a resume without its sidecar, with another ``m``, with other data
   files behind the same domain names (datasets rebuilt by the release's provider), past
   ``--train-iters``, and a new run into the folder of a finished one. Each error line is
   recorded (the megatron-core entry raises the same: both go through ``VelocituneRun``).
"""

import contextlib
import io
import json
import os
import sys
import tempfile

import numpy as np


class StubEvaluator:
    """Per-domain held-out losses that fall a little at every call (no model needed)."""

    def __init__(self, num_domains):
        self.calls = 0
        self.num_domains = num_domains

    def evaluate(self, full=False):
        from megatron_velocitune.core.sums import DomainSums

        self.calls += 1
        loss = np.array([3.4, 3.2, 5.0][: self.num_domains]) - 0.1 * self.calls
        tokens = np.full(self.num_domains, 1000.0)
        return DomainSums(loss * tokens, tokens)


def megatron_argv(corpus, names, workdir, extra=()):
    weights = ["0.5", "0.3", "0.2"][: len(names)]
    data_path = [t for w, n in zip(weights, names) for t in (w, os.path.join(corpus, n))]
    return [
        "pretrain_gpt.py",
        "--num-layers",
        "2",
        "--hidden-size",
        "64",
        "--num-attention-heads",
        "4",
        "--seq-length",
        "32",
        "--max-position-embeddings",
        "32",
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "4",
        "--train-iters",
        "20",
        "--lr",
        "1e-3",
        "--transformer-impl",
        "local",
        "--no-gradient-accumulation-fusion",
        "--tokenizer-type",
        "NullTokenizer",
        "--vocab-size",
        "1024",
        "--data-path",
        *data_path,
        "--split",
        "90,10,0",
        "--num-workers",
        "0",
        "--eval-iters",
        "2",
        "--eval-interval",
        "10",
        "--tensorboard-dir",
        os.path.join(workdir, "tb"),
        "--data-cache-path",
        os.path.join(workdir, "cache"),
        "--velocitune-update-interval",
        "5",
        "--velocitune-initial-loss",
        "3.5",
        "4.5",
        "5.5",
        "--velocitune-target-loss",
        "2.0",
        "3.0",
        "4.0",
        "--velocitune-log-dir",
        workdir,
        *extra,
    ]


def main(out_path, corpus, names):
    result = {}
    workdir = tempfile.mkdtemp(prefix="vt_probe_")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")

    # 1. install
    from megatron_velocitune.megatron_lm import install
    from megatron_velocitune.megatron_lm.patching import is_wrapped

    evaluators = []

    def factory(model, held_out, num_domains, args, config):
        evaluators.append((held_out, num_domains))
        return StubEvaluator(num_domains)

    plugin = install(evaluator_factory=factory)
    import megatron.core
    import megatron.core.datasets.utils as dataset_utils
    import megatron.training.arguments as arguments
    import megatron.training.training as training

    result["megatron_core_file"] = megatron.core.__file__
    result["version"] = list(plugin.compat.version)
    result["compat"] = {k: v for k, v in vars(plugin.compat).items() if k != "version"}
    result["wrapped"] = {
        "arguments.add_megatron_arguments": is_wrapped(arguments.add_megatron_arguments),
        "training.build_train_valid_test_datasets": is_wrapped(
            training.build_train_valid_test_datasets
        ),
        "training.train": is_wrapped(training.train),
        "training.checkpoint_and_decide_exit": is_wrapped(training.checkpoint_and_decide_exit),
        "training.save_checkpoint": is_wrapped(training.save_checkpoint),
        "datasets.utils.compile_helpers": is_wrapped(dataset_utils.compile_helpers),
    }
    result["install_idempotent"] = install() is plugin

    # 2. argument parsing through Megatron-LM's parse_args
    sys.argv = megatron_argv(corpus, names, workdir)
    args = arguments.parse_args()
    result["parsed"] = {
        "update_interval": args.velocitune_update_interval,
        "policy": args.velocitune_policy,
        "initial_loss": args.velocitune_initial_loss,
        "target_loss": args.velocitune_target_loss,
        "num_layers": args.num_layers,
    }
    sys.argv = megatron_argv(corpus, names, workdir, ["--dataloader-type", "cyclic"])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            arguments.parse_args()
            result["refusal"] = {"exit": None}
        except SystemExit as e:
            result["refusal"] = {"exit": e.code, "message": stderr.getvalue().strip()}

    # 3. the release's start-up (globals set), the pretrain call, the datasets
    import inspect

    import torch
    from megatron.core import parallel_state
    from megatron.training import global_vars

    from megatron_velocitune.megatron_lm import gpt_entry

    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    parallel_state.initialize_model_parallel()
    sys.argv = megatron_argv(corpus, names, workdir)
    compat = plugin.compat
    if compat.args_entry == "parse_and_validate_args":
        args = gpt_entry.parse_args_for(compat)  # parse, validate, set the globals
    else:
        args = arguments.parse_args()
        arguments.validate_args(args, {})
        global_vars.set_global_variables(args, build_tokenizer=False)
    positional, keywords = gpt_entry.pretrain_call(compat, args)
    bound = inspect.signature(training.pretrain).bind(*positional, **keywords).arguments
    result["startup"] = {
        "args_entry": compat.args_entry,
        "args_is_global": global_vars.get_args() is args,
        "velocitune_flags": args.velocitune_update_interval == 5,
        "cfg_container": type(positional[0]).__name__ if positional else None,
        "model_provider_bound": bound.get("model_provider") is gpt_entry.model_provider,
        "forward_step_bound": bound.get("forward_step_func") is gpt_entry.forward_step,
    }

    from megatron.core.datasets.blended_dataset import BlendedDataset

    from megatron_velocitune.data.dataset import VelocityBlendedDataset

    if os.environ.get("MEGATRON_LM_PATH"):
        import pretrain_gpt

        pretrain_gpt.train_valid_test_datasets_provider.is_distributed = True
        provider = pretrain_gpt.train_valid_test_datasets_provider
    else:  # the wheel: no pretrain_gpt.py, the project's own entry
        provider = gpt_entry.dataset_provider
    result["provider"] = f"{provider.__module__}.{provider.__name__}"
    num_samples = training.get_train_valid_test_num_samples()
    train_ds, valid_ds, test_ds = training.build_train_valid_test_datasets(provider, num_samples)
    data = plugin.registry.data
    result["datasets"] = {
        "num_samples": list(num_samples),
        "train_type": type(train_ds).__name__,
        "train_is_velocity": isinstance(train_ds, VelocityBlendedDataset),
        "train_len": len(train_ds),
        "train_weights": [float(w) for w in train_ds.weights],
        "valid_type": type(valid_ds).__name__,
        "valid_is_static_blend": type(valid_ds) is BlendedDataset,
        "valid_len": len(valid_ds),
        "valid_size_requested": num_samples[1],
        "test": None if test_ds is None else type(test_ds).__name__,
        "held_out_lengths": [len(d) for d in data.valid],
        "prefixes": [os.path.basename(p) for p in data.prefixes],
        "builder_restored": not is_wrapped(
            __import__(
                "megatron.core.datasets.blended_megatron_dataset_builder", fromlist=["x"]
            ).BlendedMegatronDatasetBuilder.build
        ),
    }
    # Megatron-LM's static blend of the same config, for comparison of validation samples.
    valid_first = valid_ds[0]["tokens"].tolist()
    result["datasets"]["valid_first_tokens_len"] = len(valid_first)

    # 4. the run through the wrapped train-loop functions
    from megatron.core.rerun_state_machine import RerunDataIterator

    loader = training.build_pretraining_data_loader(train_ds, 0)
    train_iter = RerunDataIterator(iter(loader))
    args.iteration, args.consumed_train_samples = 0, 0
    # train()'s wrapper runs plugin.start; train() itself needs CUDA, so call the hook directly.
    plugin.start([torch.nn.Linear(1, 1)], None, train_iter)
    controller = plugin.controller
    first = next(train_iter)
    m, gbs = args.velocitune_update_interval, args.global_batch_size
    iteration = m
    args.consumed_train_samples = iteration * gbs
    ids = lambda ds, n: [int(ds[i]["dataset_id"]) for i in range(n)]  # noqa: E731
    before = ids(train_ds, args.consumed_train_samples)
    should_exit = training.checkpoint_and_decide_exit(
        [torch.nn.Linear(1, 1)], None, None, iteration, 0.0, {}, train_iter
    )
    after = ids(train_ds, args.consumed_train_samples)
    batch = next(train_iter)
    consumed = args.consumed_train_samples
    expected = [train_ds[consumed + j]["tokens"].tolist() for j in range(args.micro_batch_size)]
    result["run"] = {
        "evaluator_held_out": evaluators[0][0] is not None,
        "evaluator_domains": evaluators[0][1],
        "first_batch_ids": first["dataset_id"].tolist(),
        "first_batch_matches": first["tokens"].tolist()
        == [train_ds[j]["tokens"].tolist() for j in range(args.micro_batch_size)],
        "should_exit": bool(should_exit),
        "updates": len(controller.history),
        "weights": controller.weights.tolist(),
        "dataset_weights": [float(w) for w in train_ds.weights],
        "prefix_unchanged": before == after,
        "next_batch_is_consumed_position": batch["tokens"].tolist() == expected,
        "iterator_type": type(train_iter.iterable).__name__,
        "tensorboard": getattr(controller.tensorboard_writer, "tensorboard", None) is not None,
        "trajectory": os.path.exists(os.path.join(workdir, "velocitune_trajectory.jsonl")),
    }

    # Sidecar at a save, then a resume from it replays the history into a fresh blend.
    args.save = os.path.join(workdir, "ckpt")
    path = plugin.after_save(iteration, non_persistent=False)
    index_after_update = ids(train_ds, len(train_ds))
    train_ds2, _, _ = training.build_train_valid_test_datasets(provider, num_samples)
    loader2 = training.build_pretraining_data_loader(train_ds2, consumed)
    train_iter2 = RerunDataIterator(iter(loader2))
    args.load, args.iteration, args.consumed_train_samples = args.save, iteration, consumed
    plugin.start([torch.nn.Linear(1, 1)], None, train_iter2)
    batch2 = next(train_iter2)
    result["resume"] = {
        "sidecar": path,
        "sidecar_exists": bool(path) and os.path.exists(path),
        "history": len(plugin.controller.history),
        "weights": plugin.controller.weights.tolist(),
        "same_index": ids(train_ds2, len(train_ds2)) == index_after_update,
        "same_next_batch": batch2["tokens"].tolist() == batch["tokens"].tolist(),
    }
    result["refusals"] = refusals(plugin, args, training, provider, num_samples, workdir)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


def refusals(plugin, args, training, provider, num_samples, workdir):
    """Each refused resume's error line (None where it was not refused), keyed by case."""
    import shutil

    import torch

    from megatron_velocitune.core.errors import VelocituneError

    checkpoint, found = args.save, {}
    # The train() hook's Megatron-LM tracker: the adapter's sidecar is written at 5.
    with open(os.path.join(checkpoint, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("5")
    original = {k: getattr(args, k) for k in ("data_path", "velocitune_update_interval")}
    original.update(train_iters=args.train_iters)

    def attempt(case, resume=True, **changes):
        folder = shutil.copytree(checkpoint, os.path.join(workdir, f"case-{case}"))
        if case == "missing":
            os.remove(os.path.join(folder, "iter_0000005", "velocitune_state.json"))
        for key, value in changes.items():
            setattr(args, key, value)
        if "data_path" in changes:  # the release's own provider builds them again
            training.build_train_valid_test_datasets(provider, num_samples)
        args.save = folder
        args.load = folder if resume else None
        args.iteration, args.consumed_train_samples = (5, 20) if resume else (0, 0)
        if plugin._lock is not None:  # one process stands in for each new run
            plugin._lock.release()
            plugin._lock = None
        try:
            plugin.start([torch.nn.Linear(1, 1)], None, None)
            found[case] = {"line": None, "folder": folder}
        except VelocituneError as e:
            found[case] = {"line": str(e), "folder": folder, "exit": e.exit_code}
        finally:
            for key, value in original.items():
                setattr(args, key, value)
            if "data_path" in changes:
                training.build_train_valid_test_datasets(provider, num_samples)

    attempt("missing")
    attempt("interval", velocitune_update_interval=4)
    attempt("train_iters", train_iters=4)
    attempt("save", resume=False)
    # Other files behind the same names: code's and docs' swapped, in a folder of their own.
    other = os.path.join(workdir, "other-data")
    os.makedirs(other)
    weights, prefixes = args.data_path[0::2], args.data_path[1::2]
    swapped = {0: prefixes[1], 1: prefixes[0]}
    for i, prefix in enumerate(prefixes):
        for ext in (".bin", ".idx"):
            source = swapped.get(i, prefix) + ext
            shutil.copyfile(source, os.path.join(other, os.path.basename(prefix) + ext))
    data_path = [
        t for w, p in zip(weights, prefixes) for t in (w, os.path.join(other, os.path.basename(p)))
    ]
    attempt("data", data_path=data_path)
    return found


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
