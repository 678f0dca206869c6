"""What each velocity estimator costs a training step, measured step by step in one process.

Whole-run timings (``compare_estimators.py``) drift by ±10% between runs of the same command on
this machine and on a small GPU model, more than the effect to measure. Here one process builds
the real thing once (megatron-core GPTModel, optimizer, pipeline schedule, the dynamic blend over
a real corpus, the Megatron-order data iterator) and alternates, step by step, the two training
steps that differ only by the estimator (ABBA order, so drift and order cancel):

* **static**: megatron-core's static path, the loss function without the stream;
* **train stream**: the same step, plus ``dataset_id`` in the batch broadcast and the
  per-domain ``index_add_`` in the loss function; every ``m``-th such step also pays the
  estimator's update work, the one DP(+CP) reduction of the window (:func:`reduce_domain_sums`).

The overhead is the mean over pairs of ``stream / static - 1`` with a 95% confidence interval.
The same run times the costs every dynamic blend pays at an update, whichever estimator: the
held-out evaluation (paper's estimator, ``k x eval_iters`` forward micro-batches) and the data
iterator rebuild after a weight change (weights applied, DataLoader restarted, first batch).

Usage (the corpus of ``compare_policies.py`` or ``examples/cpu_demo/run.sh``)::

    .venv/bin/python benchmarks/bench_train_stream.py --corpus /tmp/compare/corpus
    python -m torch.distributed.run --nproc-per-node 2 benchmarks/bench_train_stream.py ...
"""

import argparse
import json
import os
import sys
import time
from typing import Callable, List

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402

from megatron_velocitune.control.distributed import UpdateGroups, reduce_domain_sums  # noqa: E402
from megatron_velocitune.control.evaluation import DomainEvaluator  # noqa: E402
from megatron_velocitune.control.train_stream import DomainLossAccumulator  # noqa: E402
from megatron_velocitune.data.loader import RebuildableDataIterator  # noqa: E402
from megatron_velocitune.device import compute_device  # noqa: E402
from megatron_velocitune.training import ParallelConfig, initialize_parallel  # noqa: E402
from megatron_velocitune.training.arguments import parse_args  # noqa: E402

# The training loop's own forward step, so both paths are exactly what a run executes.
from megatron_velocitune.training.loop import (  # noqa: E402
    _make_forward_step,
    build_data,
    build_model_and_optimizer,
)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], None]) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--corpus", required=True, help="Folder with corpus.json and tokenizer.json.")
    p.add_argument("--pairs", type=int, default=60, help="Timed (static, stream) step pairs.")
    p.add_argument("--update-interval", type=int, default=20, help="m (default: %(default)s).")
    p.add_argument("--eval-iters", type=int, default=4, help="Held-out micro-batches per domain.")
    p.add_argument("--rebuilds", type=int, default=5, help="Timed iterator rebuilds.")
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-attention-heads", type=int, default=4)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--global-batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=1)
    a = p.parse_args(argv)

    with open(os.path.join(a.corpus, "corpus.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    prefixes = [os.path.join(a.corpus, d["name"]) for d in manifest["domains"]]
    weights = list(manifest["weights"])
    steps = 2 * a.pairs + 8
    data_path = [x for w, pre in zip(weights, prefixes) for x in (f"{w:.6f}", pre)]
    args = parse_args(
        [
            "--num-layers",
            str(a.num_layers),
            "--hidden-size",
            str(a.hidden_size),
            "--num-attention-heads",
            str(a.num_attention_heads),
            "--seq-length",
            str(a.seq_length),
            "--micro-batch-size",
            str(a.micro_batch_size),
            "--global-batch-size",
            str(a.global_batch_size),
            "--hidden-dropout",
            "0",
            "--attention-dropout",
            "0",
            "--tokenizer-model",
            os.path.join(a.corpus, "tokenizer.json"),
            "--data-path",
            *data_path,
            "--split",
            "90,10,0",
            "--train-iters",
            str(4 * steps),
            "--lr",
            "1e-4",
            "--velocitune-policy",
            "static",
        ]
    )

    info = initialize_parallel(ParallelConfig(), seed=1234)
    # The training entry's own builders: the same model, optimizer and data a run gets.
    _, module, optimizer, tokenizer = build_model_and_optimizer(args, info)
    data = build_data(args, info, (prefixes, weights), tokenizer, a.update_interval)
    k = len(prefixes)
    consumed = 0
    it = RebuildableDataIterator(
        data.train, consumed, a.micro_batch_size, info.dp_rank, info.dp_size, a.num_workers
    )
    stream = DomainLossAccumulator(
        k,
        compute_device(),
    )
    groups = UpdateGroups.from_parallel_state()
    fb = get_forward_backward_func()
    num_micro = a.global_batch_size // (a.micro_batch_size * info.dp_size)
    paths = {
        "static": _make_forward_step(a.micro_batch_size, a.seq_length, None, None),
        "stream": _make_forward_step(a.micro_batch_size, a.seq_length, stream, None),
    }
    stream_steps = {"n": 0}

    def step(name: str) -> None:
        optimizer.zero_grad()
        fb(
            forward_step_func=paths[name],
            data_iterator=it,
            model=module,
            num_microbatches=num_micro,
            seq_length=a.seq_length,
            micro_batch_size=a.micro_batch_size,
            forward_only=False,
        )
        optimizer.step()
        if name == "stream":
            stream_steps["n"] += 1
            if stream_steps["n"] % a.update_interval == 0:
                reduce_domain_sums(stream.take(), groups)

    module.train()
    for name in ("static", "stream") * 4:  # warm-up
        step(name)
    times = {"static": [], "stream": []}
    for i in range(a.pairs):
        order = ("static", "stream") if i % 2 == 0 else ("stream", "static")
        for name in order:
            times[name].append(_timed(lambda: step(name)))
    consumed = steps * a.global_batch_size

    heldout = DomainEvaluator(
        module,
        data.valid if info.holds_data else None,
        k,
        a.seq_length,
        a.micro_batch_size,
        a.eval_iters,
    )
    evals = [_timed(heldout.evaluate) for _ in range(3)]
    rng = np.random.default_rng(0)
    rebuilds: List[float] = []
    for _ in range(a.rebuilds):
        w = rng.dirichlet(np.ones(k)).tolist()

        def rebuild() -> None:
            if data.train is not None:
                data.train.update_weights(w, consumed)
            it.rebuild(consumed)
            next(it)

        rebuilds.append(_timed(rebuild))
        consumed += a.micro_batch_size * info.dp_size
    it.close()
    # The accumulator's own work in isolation: one micro-batch's index_add_ of real shape.
    probe = DomainLossAccumulator(k, stream.device)
    ids = torch.arange(a.micro_batch_size, device=probe.device) % k
    loss = torch.rand(a.micro_batch_size, a.seq_length, device=probe.device)
    mask = torch.ones_like(loss)
    add_us = _timed(lambda: [probe.add(ids, loss, mask) for _ in range(1000)]) * 1e3

    if dist.get_rank() != dist.get_world_size() - 1:
        return 0
    s, t = np.array(times["static"]) * 1e3, np.array(times["stream"]) * 1e3
    ratio = 100.0 * (t / s - 1.0)
    ci = 1.96 * ratio.std(ddof=1) / np.sqrt(ratio.size)
    step_ms = float(np.median(s))
    ev, rb = float(np.median(evals)) * 1e3, float(np.median(rebuilds)) * 1e3
    m = a.update_interval
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"{dev}, {dist.get_world_size()} rank(s), layers {a.num_layers}, hidden "
        f"{a.hidden_size}, seq {a.seq_length}, micro-batch {a.micro_batch_size}, global batch "
        f"{a.global_batch_size}; {a.pairs} step pairs (ABBA), m = {m}, {k} domains"
    )
    print("| per training step | median ms | mean ms | vs static (mean of pairs, 95% CI) |")
    print("|---|---:|---:|---:|")
    print(f"| static (megatron-core path) | {step_ms:.1f} | {s.mean():.1f} | - |")
    print(
        f"| + training-stream estimator (update reduction every {m}) | {np.median(t):.1f} "
        f"| {t.mean():.1f} | {ratio.mean():+.2f}% ± {ci:.2f} |"
    )
    print(
        f"| accumulator add alone: {add_us:.1f} us per micro-batch x {num_micro} "
        f"| {add_us * num_micro / 1e3:.3f} | | {100 * add_us * num_micro / 1e3 / step_ms:+.3f}% |"
    )
    print(
        f"| held-out evaluation at an update ({k} x {a.eval_iters} micro-batches), per "
        f"step over m | {ev:.1f} / {m} | | {100 * ev / m / step_ms:+.2f}% |"
    )
    print(
        f"| iterator rebuild at a weight change (both estimators), per step over m "
        f"| {rb:.1f} / {m} | | {100 * rb / m / step_ms:+.2f}% |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
