"""The controller across TP x PP x DP ranks: real megatron-core GPTModel, real pipeline schedule,
gloo on CPU, real held-out text.

Each layout runs as one spawned job: the initial loss is measured on the full held-out sets, then
updates every iteration (m = 1); at two of them a NaN loss is injected on one rank, once so that
it reaches the deciding rank through the reductions and once on a rank the decider never hears
from. A one-process TP=1 x PP=1 job evaluates the same model (a layout-invariant init) on the
same samples as the reference.
"""

import os

import numpy as np
import pytest
import torch

from ._multiproc import run_distributed

SEED = 7
SEQ = 32
MBS = 2
EVAL_ITERS = 2
GBS = 8
MAX_HELDOUT = 9  # samples per domain for the full-set initial loss (odd: exercises padding)
TARGET = 6.0  # below the ~ln(1024) loss of a random model
WEIGHTS = [0.5, 0.3, 0.2]
UPDATES = 5
NAN_REACHES_DECIDER = 3  # iteration whose loss is poisoned through the model (NaN weights)
NAN_LOCAL_ONLY = 4  # iteration whose local sums are NaN on the last rank only


def _corpus_info(corpus):
    return (list(corpus.prefixes), list(corpus.names), int(corpus.vocab_size), int(corpus.eod_id))


def _setup(corpus_info, tp, pp):
    from megatron_velocitune.control.evaluation import DomainEvaluator
    from megatron_velocitune.data.builder import build_heldout_datasets
    from megatron_velocitune.training import (
        GPTConfig,
        ParallelConfig,
        build_gpt_model,
        initialize_parallel,
    )
    from megatron_velocitune.training.model import initialize_layout_invariant_

    prefixes, names, vocab, eod = corpus_info
    info = initialize_parallel(ParallelConfig(tp, pp), seed=1234)
    gcfg = GPTConfig(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        seq_length=SEQ,
        vocab_size=vocab,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
    )
    model = build_gpt_model(gcfg)
    initialize_layout_invariant_(model, gcfg, SEED)
    datasets = None
    if info.holds_data:
        datasets = build_heldout_datasets(
            prefixes, SEQ, vocab, eod, heldout_fraction=0.1, max_samples=MAX_HELDOUT
        )
    evaluator = DomainEvaluator(model, datasets, len(names), SEQ, MBS, EVAL_ITERS)
    return info, model, evaluator


def reference_worker(rank, world_size, corpus_info):
    """TP=1 PP=1 DP=1: full-set sums and fixed-subset sums for 1x and 2x eval_iters.

    Also each subset sequence's own mean loss per domain (``seq<dp>``), recorded as the
    evaluation hands them over, for the standard error by hand.
    """
    from megatron_velocitune.control.evaluation import subset_plan
    from megatron_velocitune.core.sums import DomainSums

    _, _, evaluator = _setup(corpus_info, 1, 1)
    k = len(corpus_info[1])
    out = {"full": evaluator.evaluate(full=True).to_vector()}
    add = DomainSums.add_sequences
    for dp in (1, 2):
        seen = {d: [] for d in range(k)}

        def record(self, domain, seq_loss, seq_tokens, seen=seen):
            seen[domain].extend((np.asarray(seq_loss) / np.asarray(seq_tokens)).tolist())
            add(self, domain, seq_loss, seq_tokens)

        DomainSums.add_sequences = record
        plan = subset_plan(k, EVAL_ITERS * dp, MBS, 0, 1)
        out[dp] = evaluator.evaluate(plan=plan).to_vector()
        out[f"seq{dp}"] = seen
    DomainSums.add_sequences = add
    return out


def controller_worker(rank, world_size, corpus_info, tp, pp, log_dir):
    """Measure the initial loss, run UPDATES updates with two NaN injections, report."""
    import warnings

    from megatron_velocitune.control.controller import VelocituneController
    from megatron_velocitune.core.config import VelocituneConfig

    info, model, evaluator = _setup(corpus_info, tp, pp)
    names = corpus_info[1]
    received = []
    config = VelocituneConfig(
        policy="paper",  # Algorithm 1 on the full-set L_init, no guards: checked by hand below
        update_interval=1,
        eval_iters=EVAL_ITERS,
        target_loss=[TARGET] * len(names),
        domain_names=names,
        log_dir=log_dir,
    )
    controller = VelocituneController(
        config,
        WEIGHTS,
        evaluator,
        sinks=[lambda w, s: received.append((w.tolist(), s))] if info.holds_data else [],
        seq_length=SEQ,
    )
    controller.maybe_update(0, 0)

    poison_model = (
        info.is_last_stage
        and info.dp_rank == info.dp_size - 1
        and (info.tp_rank == info.tp_size - 1)
    )
    poison_local = rank == world_size - 1
    original_evaluate = evaluator.evaluate
    decisions, skipped_warnings = [], 0
    for it in range(1, UPDATES + 1):
        saved = None
        if it == NAN_REACHES_DECIDER and poison_model:
            weight = model.output_layer.weight
            saved = weight.detach().clone()
            with torch.no_grad():
                weight.fill_(float("nan"))
        if it == NAN_LOCAL_ONLY and poison_local:

            def nan_evaluate(full=False, plan=None):
                sums = original_evaluate(full=full, plan=plan)
                sums.loss_sum[1] = float("nan")
                return sums

            evaluator.evaluate = nan_evaluate
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            decision = controller.maybe_update(it, it * GBS)
        skipped_warnings += sum("skipped" in str(w.message) for w in caught)
        evaluator.evaluate = original_evaluate
        if saved is not None:
            with torch.no_grad():
                model.output_layer.weight.copy_(saved)
        decisions.append(
            {
                "weights": decision.weights.tolist(),
                "sums": decision.sums.to_vector().tolist(),
                "skipped": decision.skipped,
            }
        )
    return {
        "info": info,
        "initial_loss": controller.initial_loss.tolist(),
        "history": controller.history,
        "decisions": decisions,
        "received": received,
        "weights": controller.weights.tolist(),
        "skipped_warnings": skipped_warnings,
        "is_decider": controller.groups.is_decider,
    }


@pytest.fixture(scope="module")
def reference(corpus):
    return run_distributed(reference_worker, 1, args=(_corpus_info(corpus),), timeout=120)[0]


def _mean(vector):
    from megatron_velocitune.core.sums import DomainSums

    return DomainSums.from_vector(np.asarray(vector)).mean()


@pytest.mark.slow
@pytest.mark.parametrize(
    "tp,pp,dp", [(2, 2, 2), (1, 1, 2), (2, 1, 1)], ids=["tp2-pp2-dp2", "tp1-pp1-dp2", "tp2-pp1-dp1"]
)
def test_controller_across_ranks(corpus, reference, tmp_path, tp, pp, dp):
    from megatron_velocitune.core.policy import update_weights
    from megatron_velocitune.core.trajectory import read_trajectory

    world = tp * pp * dp
    log_dir = str(tmp_path / "log")
    results = run_distributed(
        controller_worker, world, args=(_corpus_info(corpus), tp, pp, log_dir), timeout=240
    )
    k = len(corpus.names)

    # Every rank: the same layout sizes, and the same decisions to the last bit.
    assert {(r["info"].tp_size, r["info"].pp_size, r["info"].dp_size) for r in results} == {
        (tp, pp, dp)
    }
    first = results[0]
    for r in results[1:]:
        assert r["initial_loss"] == first["initial_loss"]
        assert r["history"] == first["history"] or _same_with_nan(r["history"], first["history"])
        assert r["weights"] == first["weights"]
        assert [d["weights"] for d in r["decisions"]] == [d["weights"] for d in first["decisions"]]

    # The reduced losses equal one process evaluating the same samples.
    np.testing.assert_allclose(first["initial_loss"], _mean(reference["full"]), rtol=2e-6)
    subset = reference[dp]
    for it, d in enumerate(first["decisions"], 1):
        if it == NAN_REACHES_DECIDER:
            assert not np.isfinite(d["sums"][:k]).all()
        if not np.isfinite(d["sums"]).all():
            continue
        np.testing.assert_array_equal(d["sums"][k : 2 * k], subset[k : 2 * k])  # token counts
        np.testing.assert_allclose(d["sums"][:k], subset[:k], rtol=2e-6)
        # The per-sequence moments, summed over the DP ranks, equal one process's.
        np.testing.assert_allclose(d["sums"][2 * k :], subset[2 * k :], rtol=2e-6)

    # NaN anywhere: skipped on every rank, weights kept; the other updates follow the policy.
    w = np.asarray(WEIGHTS)
    initial = np.asarray(first["initial_loss"])
    for it, record in enumerate(first["history"], 1):
        assert record["iteration"] == it and record["start_sample"] == it * GBS
        expect_skip = it in (NAN_REACHES_DECIDER, NAN_LOCAL_ONLY)
        assert record["skipped"] == expect_skip, it
        if not expect_skip:
            w = update_weights(
                "paper", w, np.asarray(record["eval_loss"]), initial, np.full(k, TARGET)
            )
            # Every subset sequence has SEQ tokens, so the ratio estimator's standard error is
            # the textbook one of the per-sequence means: std(ddof=1) / sqrt(N), over all ranks.
            by_hand = [
                np.std(reference[f"seq{dp}"][d], ddof=1) / np.sqrt(len(reference[f"seq{dp}"][d]))
                for d in range(k)
            ]
            # (float32 per-token losses summed in another order under TP/PP: 1e-5, not 2e-6)
            np.testing.assert_allclose(record["eval_stderr"], by_hand, rtol=1e-5)
        np.testing.assert_array_equal(record["weights"], w)
    assert all(r["skipped_warnings"] == 2 for r in results)

    # Ranks holding data handed every applied blend to their dataset sink; the others hold none.
    applied = [
        (rec["weights"], rec["start_sample"]) for rec in first["history"] if not rec["skipped"]
    ]
    for r in results:
        info = r["info"]
        if info.tp_rank == 0 and (info.is_first_stage or info.is_last_stage):
            assert r["received"] == applied
        else:
            assert r["received"] == []

    # One trajectory, written by the deciding rank only.
    assert sum(r["is_decider"] for r in results) == 1
    traj = read_trajectory(os.path.join(log_dir, "velocitune_trajectory.jsonl"))
    assert traj.domains == list(corpus.names)
    assert traj.header["initial_loss"] == first["initial_loss"]
    assert traj.column("weights") == [rec["weights"] for rec in first["history"]]
    assert traj.column("skipped") == [rec["skipped"] for rec in first["history"]]


def _same_with_nan(a, b):
    """History equality where NaN == NaN (a skipped update records NaN losses)."""
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        for key in ra:
            va, vb = ra[key], rb[key]
            if isinstance(va, list) and va and isinstance(va[0], float):
                if not np.array_equal(np.asarray(va), np.asarray(vb), equal_nan=True):
                    return False
            elif va != vb:
                return False
    return True


def sync_worker(rank, world_size, mode):
    """Two DP ranks call synchronize_update directly; ``mode`` breaks one of them."""
    from megatron_velocitune.control.distributed import (
        UpdateGroups,
        WeightMismatchError,
        synchronize_update,
    )
    from megatron_velocitune.core.sums import DomainSums
    from megatron_velocitune.training import ParallelConfig, initialize_parallel

    initialize_parallel(ParallelConfig(), seed=1)
    groups = UpdateGroups.from_parallel_state()
    weights = np.array([0.25, 0.25, 0.5])
    iteration = 10
    if mode == "weights" and rank == 1:
        weights = np.nextafter(weights, 1.0)  # one ulp apart: a rank that diverged earlier
    if mode == "iteration" and rank == 1:
        iteration = 11

    def decide(mean, stderr):
        if mode == "policy":
            raise ValueError("policy exploded")
        return weights[::-1].copy()

    local = DomainSums(np.array([7.0, 6.0, 5.0]), np.array([10.0, 10.0, 10.0]))
    try:
        decision = synchronize_update(local, weights, decide, iteration, 80, groups)
    except WeightMismatchError as e:
        return ("mismatch", str(e))
    except RuntimeError as e:
        return ("error", str(e))
    return ("ok", decision.weights.tolist(), decision.sums.to_vector().tolist())


@pytest.mark.slow
def test_agreement_check_and_policy_errors_fail_on_every_rank():
    ok = run_distributed(sync_worker, 2, args=("ok",), timeout=60)
    assert ok[0] == ok[1] and ok[0][1] == [0.5, 0.25, 0.25]
    # Summed over the 2 DP ranks (no per-sequence moments given: those stay zero).
    assert ok[0][2][:6] == [14.0, 12.0, 10.0, 20.0, 20.0, 20.0]
    assert ok[0][2][6:] == [0.0] * 12
    for mode, kind, text in [
        ("weights", "mismatch", "entries [0, 1, 2]"),
        ("iteration", "mismatch", "entries [6]"),
        ("policy", "error", "weight policy failed on rank 0 at iteration 10"),
    ]:
        results = run_distributed(sync_worker, 2, args=(mode,), timeout=60)
        for r in results:  # every rank raises: none is left hanging in a collective
            assert r[0] == kind and text in r[1], (mode, r)
    assert "policy exploded" in results[0][1]  # the deciding rank names the cause
