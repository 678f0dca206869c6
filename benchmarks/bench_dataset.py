"""VelocityBlendedDataset against megatron-core's static BlendedDataset: one table.

Both blend the same per-domain megatron-core ``GPTDataset``s, built from real ``.bin/.idx``
files (the test corpus: three domains of real text, byte-level BPE,
``megatron_velocitune.data.corpus`` through ``tests/conftest.build_corpus``), each sized for
the static blend at the run length so the static ``BlendedDataset`` does not raise. Measured,
in one run:

* construction: the index build at start (static: the whole run; dynamic: the first window);
* a weight update for a window of 150 steps x 1,024 samples (153,600 samples) near the end of
  a run that updated every window, at run lengths 1M and 16M samples (the same update timed
  from the same restored state, best of rounds, both lengths interleaved so they share the
  machine's load); the static blend's only way to change weights is a full rebuild;
* ``__getitem__`` throughput over the same 20,000 consecutive positions, where both hand out
  identical items (per chunk of 1,000 reads the best of interleaved rounds; GPTDataset's own
  work included, as training sees it);
* index bytes per sample (allocated) and the index memory resident after construction.

Times are this thread's CPU time (``time.thread_time``), so other processes sharing the cores
do not inflate them. Usage: ``.venv/bin/python benchmarks/bench_dataset.py [--quick]``
"""

import argparse
import dataclasses
import gc
import logging
import os
import sys
import tempfile
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from megatron.core.datasets.blended_dataset import BlendedDataset  # noqa: E402

from megatron_velocitune.data.builder import (  # noqa: E402
    DatasetTokenizer,
    build_velocity_datasets,
    gpt_dataset_config,
)
from megatron_velocitune.data.dataset import VelocityBlendedDataset  # noqa: E402

STEPS, GBS = 150, 1024
WINDOW = STEPS * GBS
SEQ = 128
WEIGHTS = [0.5, 0.3, 0.2]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# CPU time of this thread, not wall time: the benchmark shares its cores with other processes,
# and waiting for a core is not a cost of the code measured (page faults it takes still count).
clock = time.thread_time


def timed(fn):
    t = clock()
    out = fn()
    return out, clock() - t


def weight_schedule(n, k, seed=0):
    """Velocitune-like blends: a random walk of the weights, floored at 0.02."""
    rng = np.random.default_rng(seed)
    w = np.asarray(WEIGHTS, np.float64)
    for _ in range(n):
        w = w * np.exp(rng.uniform(0.0, 1.0, k))
        w = w / w.sum()
        w = 0.94 * w + 0.02
        yield w.tolist()


def bench_run_length(corpus, cache, size):
    """Build both datasets at run length `size`; time construction and dynamic updates."""
    tokenizer = DatasetTokenizer(corpus.vocab_size, corpus.eod_id, name=corpus.tokenizer_path)
    blend = (list(corpus.prefixes), WEIGHTS)
    config = gpt_dataset_config(blend, "98,2,0", SEQ, 1234, tokenizer, path_to_cache=cache)
    built = build_velocity_datasets(config, size, valid_samples=None, update_window=WINDOW)
    datasets = built.train_per_domain
    static_config = dataclasses.replace(config, path_to_cache=None)  # no torch.distributed needed

    gc.collect()
    r0 = rss_mb()
    static, t_static = timed(lambda: BlendedDataset(datasets, WEIGHTS, size, static_config))
    static_rss = rss_mb() - r0
    r0 = rss_mb()
    dynamic, t_dynamic = timed(
        lambda: VelocityBlendedDataset(datasets, WEIGHTS, size, config, update_window=WINDOW)
    )
    dynamic_rss = rss_mb() - r0

    # Run the whole schedule (an update every window), stopping before the last full window:
    # the update measured below is the one a run of this length makes near its end.
    starts = list(range(WINDOW, size - WINDOW, WINDOW))
    schedule = list(weight_schedule(len(starts) + 1, len(WEIGHTS)))
    for start, w in zip(starts[:-1], schedule):
        dynamic.update_weights(w, start)
    probe = (schedule[len(starts) - 1], starts[-1], dynamic.state_dict())
    seg_bytes = sum(s.weights.nbytes + s.counts.nbytes + 8 for s in dynamic.segments)
    return dict(
        static=static,
        dynamic=dynamic,
        t_static=t_static,
        t_dynamic=t_dynamic,
        static_rss=static_rss,
        dynamic_rss=dynamic_rss,
        probe=probe,
        static_bytes=(static.dataset_index.nbytes + static.dataset_sample_index.nbytes) / size,
        dynamic_bytes=(
            dynamic.dataset_index.nbytes + dynamic.dataset_sample_index.nbytes + seg_bytes
        )
        / size,
    )


def bench_updates(runs, rounds):
    """Best-of-rounds time of each run's late update, the run lengths interleaved.

    Each round restores the run's weight history first (untimed), so every round times the
    same update from the same state: the open segment built to its horizon, as reads leave it.
    """
    best = {size: float("inf") for size in runs}
    for _ in range(rounds):
        for size, run in runs.items():
            w, start, state = run["probe"]
            ds = run["dynamic"]
            ds.load_state_dict(state)
            _, t = timed(lambda: ds.update_weights(w, start))
            best[size] = min(best[size], t)
    return best


def bench_getitem(static, dynamic, start, n, rounds, chunk=1000):
    """Samples/s of both over the same positions: per chunk of positions the best of
    ``rounds`` timings, the two datasets alternating (and swapping order) chunk by chunk, so
    bursts of load from other processes hit both alike and drop out of the minimum.
    """
    chunks = [range(i, min(i + chunk, start + n)) for i in range(start, start + n, chunk)]
    for ds in (static, dynamic):  # warm: page cache, lazy index, GPTDataset mask cache
        for i in range(start, start + n):
            ds[i]
    best = {"static": [float("inf")] * len(chunks), "dynamic": [float("inf")] * len(chunks)}
    pair = [("static", static), ("dynamic", dynamic)]
    for r in range(rounds):
        for c, positions in enumerate(chunks):
            for name, ds in pair if (r + c) % 2 == 0 else pair[::-1]:
                t = clock()
                for i in positions:
                    ds[i]
                best[name][c] = min(best[name][c], clock() - t)
    return n / sum(best["static"]), n / sum(best["dynamic"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="run lengths 600K and 4M (smoke test)")
    parser.add_argument("--rounds", type=int, default=25, help="timings per update (best kept)")
    parser.add_argument("--getitem-rounds", type=int, default=7, help="timings per chunk of reads")
    args = parser.parse_args()
    sizes = [600_000, 4_000_000] if args.quick else [1_000_000, 16_000_000]

    from conftest import build_corpus

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        corpus = build_corpus(root)
        cache = os.path.join(root, "cache")
        results = {}
        for size in sizes:
            results[size] = bench_run_length(corpus, cache, size)
            if size != sizes[0]:
                results[size]["static"] = None  # memory: the static 16M index is done with
            gc.collect()
        best = bench_updates(results, args.rounds)
        for size in sizes:
            results[size]["update_ms"] = best[size] * 1e3
        small = results[sizes[0]]
        results[sizes[1]]["dynamic"] = None
        # Throughput over the first 20,000 samples of the 1M run, after its whole schedule of
        # updates: there both datasets hand out the very same items (the first segment is the
        # static blend bit for bit, tested), so the per-item GPTDataset work is identical and
        # the difference is the index lookup alone.
        dynamic = small["dynamic"]
        n = 20_000
        rounds = args.getitem_rounds
        thr_static, thr_dynamic = bench_getitem(small["static"], dynamic, 0, n, rounds)
        assert np.array_equal(dynamic.dataset_index[:n], small["static"].dataset_index[:n])
        same = small["static"].dataset_sample_index[:n]
        assert np.array_equal(dynamic.dataset_sample_index[:n], same)

    big = results[sizes[1]]
    a, b = (f"{s / 1e6:g}M" for s in sizes)
    update = f"weight update, {STEPS} steps x {GBS} samples (ms)"
    ratio = big["update_ms"] / small["update_ms"]
    rows = [
        (
            "index build at construction (ms)",
            a,
            small["t_static"] * 1e3,
            small["t_dynamic"] * 1e3,
            "dynamic builds one window",
        ),
        ("index build at construction (ms)", b, big["t_static"] * 1e3, big["t_dynamic"] * 1e3, ""),
        (
            update,
            a,
            small["t_static"] * 1e3,
            small["update_ms"],
            f"static: full rebuild; dynamic: last update of the run, best of {args.rounds}",
        ),
        (
            update,
            b,
            big["t_static"] * 1e3,
            big["update_ms"],
            f"ratio {b}/{a} = {ratio:.2f}x (limit 1.5x)",
        ),
        (
            "__getitem__ throughput (samples/s)",
            a,
            thr_static,
            thr_dynamic,
            f"dynamic/static = {thr_dynamic / thr_static:.3f} (limit >= 0.95)",
        ),
        (
            "index bytes per sample (allocated)",
            b,
            big["static_bytes"],
            big["dynamic_bytes"],
            "int16 + int64 per sample, + segments",
        ),
        (
            "index memory resident after construction (MB)",
            b,
            big["static_rss"],
            big["dynamic_rss"],
            "np.empty: pages commit as windows build",
        ),
    ]
    print(
        f"\nVelocityBlendedDataset vs megatron-core BlendedDataset: {len(WEIGHTS)} real-text "
        f"domains, seq {SEQ}, window {STEPS} x {GBS} = {WINDOW:,} samples; CPU times; "
        f"{time.perf_counter() - t0:.0f} s wall in all\n"
    )
    print("| metric | run length | static BlendedDataset | VelocityBlendedDataset | note |")
    print("|---|---|---:|---:|---|")
    for metric, n_, s, d, note in rows:
        print(f"| {metric} | {n_} | {s:,.2f} | {d:,.2f} | {note} |")


if __name__ == "__main__":
    main()
