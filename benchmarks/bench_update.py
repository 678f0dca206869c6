"""Cost of one Velocitune weight update across ranks, evaluation forward passes excluded: one table.

For k = 5 domains, in 8 processes (TP=2 x PP=2 x DP=2) and 2 processes (DP=2), gloo on CPU,
megatron-core's real process groups, this times back-to-back updates (best of rounds of N
updates between two barriers, wall time / N on rank 0; the variants take turns round by round)
of:

* **floor**: the bare collectives of one update with no logic around them: an all-reduce of
  2k float64 over the DP(+CP) group on the last stage, a world broadcast of 3k+1 float64, a
  world max-all-reduce of 4k+5 float64 (what megatron_velocitune.control.distributed sends);
* **synchronize_update**: reduce -> decide (the pure velocity policy) -> broadcast -> agree;
* **controller**: ``VelocituneController.maybe_update`` with an evaluator that returns
  precomputed local sums (the forward passes are what this excludes), history and sinks;
* **+ log**: the same plus the JSONL trajectory record (one fsync'd line, deciding rank);
* **+ log + dataset**: and the data plane's update on ranks that hold data
  (``BlendIndex.update`` for the next window of 150 steps x 1,024 samples, as
  ``VelocityBlendedDataset.update_weights`` does).

A first row times the update logic alone in one process (no collectives): what the ranks add
to the collectives' floor.

Usage: ``.venv/bin/python benchmarks/bench_update.py [--updates 200] [--rounds 5]``
"""

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests._multiproc import run_distributed  # noqa: E402

K = 5
WINDOW = 150 * 1024  # samples between two updates: m = 150 steps of 1,024 samples


class PrecomputedEvaluator:
    """Local sums as if the forward passes had just run (losses drift down per call)."""

    def __init__(self, rank: int) -> None:
        self.calls = 0
        self.base = 7.0 - 0.1 * np.arange(K) - 0.001 * rank

    def evaluate(self, full=False, plan=None):
        from megatron_velocitune.core.sums import DomainSums

        self.calls += 1
        tokens = np.full(K, 4096.0)
        return DomainSums((self.base - 1e-4 * self.calls) * tokens, tokens)


def _time_interleaved(fns, n: int, rounds: int):
    """Best over rounds of (wall time of n back-to-back calls / n) per function, microseconds.

    The functions take turns round by round, so all of them see the same share of a machine
    whose cores other work also uses.
    """
    import torch.distributed as dist

    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            dist.barrier()
            best[name] = min(best[name], (time.perf_counter() - t0) / n)
    return {name: t * 1e6 for name, t in best.items()}


def logic_alone(n: int, rounds: int) -> float:
    """synchronize_update + policy in one process without torch.distributed, microseconds."""
    from megatron_velocitune.control.distributed import UpdateGroups, synchronize_update
    from megatron_velocitune.core.policy import update_weights

    groups, evaluator = UpdateGroups.single_process(), PrecomputedEvaluator(0)
    w, initial, target = np.full(K, 1.0 / K), np.full(K, 7.5), np.full(K, 5.0)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            w = synchronize_update(
                evaluator.evaluate(),
                w,
                lambda mean, stderr: update_weights("velocity", w, mean, initial, target, 1e-3),
                1,
                0,
                groups,
            ).weights
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def worker(rank: int, world_size: int, tp: int, pp: int, n: int, rounds: int, log_dir: str):
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_velocitune.control.controller import VelocituneController
    from megatron_velocitune.control.distributed import UpdateGroups, synchronize_update
    from megatron_velocitune.core.blending import BlendIndex
    from megatron_velocitune.core.config import VelocituneConfig
    from megatron_velocitune.core.policy import update_weights
    from megatron_velocitune.training import ParallelConfig, initialize_parallel

    info = initialize_parallel(ParallelConfig(tp, pp), seed=1)
    groups = UpdateGroups.from_parallel_state()
    # The floor subtracts the time of the barrier pair framing each round from nothing: the
    # rounds are long enough (n updates) for it not to matter.
    dp_group = ps.get_data_parallel_group(with_context_parallel=True)
    a = torch.zeros(2 * K, dtype=torch.float64)
    b = torch.zeros(3 * K + 1, dtype=torch.float64)
    c = torch.zeros(4 * K + 5, dtype=torch.float64)

    def floor():
        if info.is_last_stage and groups.dp_cp_size > 1:
            dist.all_reduce(a, group=dp_group)
        dist.broadcast(b, src=groups.decider_rank)
        dist.all_reduce(c, op=dist.ReduceOp.MAX)

    evaluator = PrecomputedEvaluator(rank)
    w = np.full(K, 1.0 / K)
    initial, target = np.full(K, 7.5), np.full(K, 5.0)

    def sync():
        nonlocal w
        local = evaluator.evaluate()
        if not info.is_last_stage:
            local.loss_sum[:] = 0.0
            local.tokens[:] = 0.0
        w = synchronize_update(
            local,
            w,
            lambda mean, stderr: update_weights("velocity", w, mean, initial, target, 1e-3),
            1,
            0,
            groups,
        ).weights

    def make_controller(with_log: bool, with_data: bool):
        config = VelocituneConfig(
            policy="velocity",
            update_interval=1,
            eval_iters=1,
            initial_loss=initial.tolist(),
            target_loss=target.tolist(),
            min_weight=1e-3,
            log_dir=os.path.join(log_dir, f"{with_log}-{with_data}") if with_log else None,
        )
        sinks = []
        if with_data and info.holds_data:
            size = (n * rounds + 2) * WINDOW
            index = BlendIndex(np.full(K, 1.0 / K), size, [10**9] * K, WINDOW)
            sinks.append(index.update)
        ctrl = VelocituneController(
            config,
            np.full(K, 1.0 / K),
            PrecomputedEvaluator(rank),
            sinks=sinks,
            groups=groups,
            seq_length=4096,
        )
        ctrl.maybe_update(0, 0)
        state = {"it": 0}

        def step():
            state["it"] += 1
            ctrl.maybe_update(state["it"], state["it"] * WINDOW)

        return step

    results = _time_interleaved(
        {
            "floor": floor,
            "sync": sync,
            "controller": make_controller(False, False),
            "log": make_controller(True, False),
            "log_data": make_controller(True, True),
        },
        n,
        rounds,
    )
    return results if rank == 0 else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=50, help="updates per timed round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds (the best is reported)")
    args = parser.parse_args(argv)
    rows = []
    for world, tp, pp, name in [(8, 2, 2, "TP2xPP2xDP2"), (2, 1, 1, "TP1xPP1xDP2")]:
        with tempfile.TemporaryDirectory() as log_dir:
            r = run_distributed(
                worker, world, args=(tp, pp, args.updates, args.rounds, log_dir), timeout=600
            )[0]
        rows.append((world, name, r))
    logic = logic_alone(args.updates, args.rounds)
    print(
        f"Velocitune update cost, k={K} domains, gloo on CPU ({os.cpu_count()} cores), "
        f"best of {args.rounds} rounds x {args.updates} updates; microseconds per update"
    )
    cols = [
        "ranks",
        "layout     ",
        "bare collectives (floor)",
        "synchronize_update",
        "controller",
        "+ log",
        "+ log + dataset",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
    print(
        f"| {1:>5d} | {'logic alone':<11s} | {'-':>24s} | {logic:18.0f} | {'-':>10s} "
        f"| {'-':>5s} | {'-':>15s} |"
    )
    for world, name, r in rows:
        print(
            f"| {world:>5d} | {name:<11s} | {r['floor']:24.0f} | {r['sync']:18.0f} "
            f"| {r['controller']:10.0f} | {r['log']:5.0f} | {r['log_data']:15.0f} |"
        )


if __name__ == "__main__":
    main()
