"""The Megatron-LM adapter (megatron_velocitune.megatron_lm) and the launcher.

Two kinds of tests:

- Without a checkout (always): the pure parts (release facts from a version string, the
  refusals, the launcher's argv handling, the writers' fan-out, the patcher), the dataset
  substitution on megatron-core's own builder (pip megatron-core, real .bin/.idx from the
  ``corpus`` fixture), and the plugin's start / update / sidecar / resume with stand-ins for
  Megatron-LM's loader and train loop (a one-process gloo world).
- Against a real Megatron-LM: with ``MEGATRON_LM_PATH`` set to a checkout (core_v0.16.x on
  Python 3.11, core_v0.17+ on 3.12; its dataset helpers compiled: ``make -C
  $MEGATRON_LM_PATH/megatron/core/datasets``), else the megatron-core wheel's own
  ``megatron.training`` (0.17+: the Python 3.12 leg, ``make test-latest``, where
  ``VELOCITUNE_REQUIRE_MEGATRON_LM=1`` turns these skips into failures).
  tests/_megatron_lm_probe.py imports it in a subprocess (this process already holds the pip
  megatron-core) and drives the adapter through Megatron-LM's real ``parse_args`` /
  ``parse_and_validate_args``, ``validate_args``, ``build_train_valid_test_datasets`` with
  ``pretrain_gpt.py``'s provider (a checkout) or the project's ``gpt_entry`` (the wheel),
  ``build_pretraining_data_loader``, ``RerunDataIterator`` and ``checkpoint_and_decide_exit``;
  tests/_megatron_lm_train_loss.py runs ``--velocitune-loss-source train`` on 2 gloo ranks
  through megatron-core's forward-backward schedule with the wheel's ``megatron.training``.
  Megatron-LM's ``train()`` needs CUDA: examples/megatron_lm/run_single_gpu.sh runs it.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from megatron_velocitune.core.config import VelocituneConfigError
from megatron_velocitune.megatron_lm.checks import check_args, check_dataset_config
from megatron_velocitune.megatron_lm.compat import (
    MegatronLMNotFound,
    compat_for_version,
    parse_version,
)
from megatron_velocitune.megatron_lm.patching import Patcher, is_wrapped, original_of
from megatron_velocitune.megatron_lm.writers import MegatronWriters
from tests._multiproc import free_port

HERE = os.path.dirname(os.path.abspath(__file__))
MEGATRON_LM_PATH = os.environ.get("MEGATRON_LM_PATH")
# The megatron-core wheels from 0.17 carry megatron.training (0.16 and older: megatron.core only).
WHEEL_HAS_TRAINING = importlib.util.find_spec("megatron.training") is not None
REQUIRED = os.environ.get("VELOCITUNE_REQUIRE_MEGATRON_LM") == "1"


# ------------------------------------------------------------------------ release facts
@pytest.mark.parametrize(
    "version, expected",
    [
        ("0.14.0", (0, 14, 0)),
        ("0.16.1", (0, 16, 1)),
        ("0.20.0rc0", (0, 20, 0)),
        ("core_v0.15.3", (0, 15, 3)),
        ("0.17.0.dev0+abc123", (0, 17, 0)),
        ("0.19", (0, 19, 0)),
    ],
)
def test_parse_version(version, expected):
    assert parse_version(version) == expected


def test_parse_version_rejects_garbage():
    with pytest.raises(ValueError, match="not a megatron-core version"):
        parse_version("main")


@pytest.mark.parametrize(
    "version, args_entry, samplers, hook_optimizer, fast_cache, python",
    [
        ("0.14.0", "parse_args", "megatron.legacy.data.data_samplers", False, False, (3, 10)),
        ("0.15.3", "parse_args", "megatron.legacy.data.data_samplers", False, False, (3, 10)),
        ("0.16.1", "parse_args", "megatron.training.datasets.data_samplers", False, True, (3, 10)),
        ("0.17.1", "parse_args", "megatron.training.datasets.data_samplers", False, True, (3, 10)),
        (
            "0.18.0",
            "parse_and_validate_args",
            "megatron.training.datasets.data_samplers",
            False,
            True,
            (3, 12),
        ),
        (
            "0.19.0",
            "parse_and_validate_args",
            "megatron.training.datasets.data_samplers",
            True,
            True,
            (3, 12),
        ),
        (
            "0.20.0rc0",
            "parse_and_validate_args",
            "megatron.training.datasets.data_samplers",
            True,
            True,
            (3, 12),
        ),
    ],
)
def test_compat_for_version(version, args_entry, samplers, hook_optimizer, fast_cache, python):
    compat = compat_for_version(version)
    assert compat.args_entry == args_entry
    assert compat.pretrain_takes_config_container == (args_entry == "parse_and_validate_args")
    assert compat.data_samplers_module == samplers
    assert compat.forward_pre_hook_takes_optimizer is hook_optimizer
    assert compat.has_fast_cache_load is fast_cache
    assert compat.has_phase_transitions is fast_cache
    assert compat.min_python == python
    assert compat.model_provider_keyword is (parse_version(version) >= (0, 19, 0))


def test_import_hint_reads_the_error():
    from megatron_velocitune.megatron_lm.compat import import_hint

    def error(message, name):
        e = ModuleNotFoundError(message) if name else ImportError(message)
        e.name = name
        return e

    wheel = error("No module named 'megatron.training'", "megatron.training")
    assert "hold megatron.core only" in import_hint((0, 16, 1), wheel)
    assert "(einops)" in import_hint((0, 19, 2), error("No module named 'einops'", "einops"))
    override = error("cannot import name 'override' from 'typing'", None)
    if sys.version_info[:2] < (3, 12):
        assert "needs Python 3.12" in import_hint((0, 17, 1), override)
    else:
        assert "incomplete" in import_hint((0, 17, 1), override)


def test_compat_refuses_old_releases():
    with pytest.raises(MegatronLMNotFound, match="older than core_v0.14.0"):
        compat_for_version("0.13.1")


# ------------------------------------------------------------------------ refusals
def _args(**overrides):
    """A Megatron-LM namespace as parse_args leaves it (only the fields the checks read)."""
    base = dict(
        dataloader_type=None,
        dataloader_fast_cache_load=False,
        dataloader_defer_npy_index_mmap=False,
        phase_transition_iterations=None,
        num_layers_per_virtual_pipeline_stage=None,
        num_virtual_stages_per_pipeline_rank=None,
        hybrid_context_parallel=False,
        non_persistent_ckpt_type=None,
        mock_data=False,
        sft=False,
        fim_data=False,
        train_data_path=None,
        valid_data_path=None,
        test_data_path=None,
        per_split_data_args_path=None,
        velocitune_loss_source="eval",
        data_path=["0.5", "data/a", "0.5", "data/b"],
    )
    base.update(overrides)
    return argparse.Namespace(**base)


def test_check_args_accepts_a_weighted_blend():
    check_args(_args())
    check_args(_args(dataloader_type="single", data_path=["0.7 data/a 0.3 data/b"]))
    check_args(_args(data_path=None))  # --data-args-path: checked once the blend is read
    check_args(_args(velocitune_loss_source="train"))  # the forward step is tapped


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"dataloader_type": "cyclic"}, "--dataloader-type cyclic"),
        ({"dataloader_type": "external"}, "--dataloader-type external"),
        ({"dataloader_fast_cache_load": True}, "--dataloader-fast-cache-load"),
        ({"dataloader_defer_npy_index_mmap": True}, "--dataloader-defer-npy-index-mmap"),
        ({"phase_transition_iterations": "100,200"}, "--phase-transition-iterations.*schedule"),
        ({"num_layers_per_virtual_pipeline_stage": 2}, "virtual pipeline"),
        ({"num_virtual_stages_per_pipeline_rank": 2}, "virtual pipeline"),
        ({"hybrid_context_parallel": True}, "--hybrid-context-parallel"),
        ({"non_persistent_ckpt_type": "local"}, "--non-persistent-ckpt-type local"),
        ({"mock_data": True}, "--mock-data"),
        ({"sft": True}, "--sft"),
        ({"fim_data": True}, "--fim-data"),
        ({"train_data_path": ["0.5", "a"]}, "--train-data-path"),
        ({"per_split_data_args_path": "x.json"}, "--per-split-data-args-path"),
        ({"data_path": ["data/a"]}, "single-prefix blend"),
        ({"data_path": ["1.0", "data/a"]}, "single-prefix blend"),
        ({"data_path": ["data/a", "data/b"]}, "needs the starting weights"),
    ],
)
def test_check_args_refuses(overrides, match):
    with pytest.raises(VelocituneConfigError, match=match):
        check_args(_args(**overrides))


def _dataset_config(tmp_path, blend, split="90,10,0", **kwargs):
    from megatron_velocitune.data.builder import DatasetTokenizer, gpt_dataset_config

    return gpt_dataset_config(
        blend,
        split,
        32,
        1234,
        DatasetTokenizer(1024, 0),
        path_to_cache=str(tmp_path / "cache"),
        **kwargs,
    )


def test_check_dataset_config(tmp_path):
    from megatron.core.datasets.gpt_dataset import GPTDataset, MockGPTDataset

    good = _dataset_config(tmp_path, (["a", "b"], [0.5, 0.5]))
    check_dataset_config(GPTDataset, good)
    cases = [
        (MockGPTDataset, good, "MockGPTDataset"),
        (GPTDataset, _dataset_config(tmp_path, (["a"], None)), "single-prefix"),
        (GPTDataset, _dataset_config(tmp_path, (["a", "b"], None)), "without weights"),
        (
            GPTDataset,
            _dataset_config(tmp_path, (["a", "b"], [0.5, 0.5]), "100,0,0"),
            "validation split",
        ),
    ]
    for cls, config, match in cases:
        with pytest.raises(VelocituneConfigError, match=match):
            check_dataset_config(cls, config)


# ------------------------------------------------------------------------ launcher
def test_split_argv():
    from megatron_velocitune.launch import split_argv

    script = os.path.abspath(__file__)
    assert split_argv([script, "--lr", "1e-4"]) == (script, [script, "--lr", "1e-4"])
    assert split_argv(["--", script, "--x"]) == (script, [script, "--x"])
    for bad, match in (
        ([], "usage"),
        (["--help"], "usage"),
        (["--lr", script], "must be the script"),
        (["/no/such/pretrain_gpt.py"], "no such script"),
    ):
        with pytest.raises(SystemExit, match=match):
            split_argv(bad)


def test_launcher_installs_then_runs_the_script_as_main(tmp_path, monkeypatch):
    import megatron_velocitune.megatron_lm as adapter
    from megatron_velocitune import launch

    out = tmp_path / "seen.json"
    script = tmp_path / "pretrain_gpt.py"
    script.write_text(
        "import json, sys\n"
        "import megatron_velocitune.megatron_lm as a\n"
        f"json.dump({{'name': __name__, 'argv': sys.argv, 'path0': sys.path[0], "
        f"'installed': a.installed() == 'stub'}}, open({str(out)!r}, 'w'))\n"
    )
    calls = []
    monkeypatch.setattr(adapter, "install", lambda: calls.append(1))
    monkeypatch.setattr(adapter, "installed", lambda: "stub" if calls else None)
    monkeypatch.setattr(sys, "argv", ["launch"])
    monkeypatch.setattr(sys, "path", list(sys.path))
    launch.main([str(script), "--num-layers", "2", "--velocitune-policy", "static"])
    seen = json.loads(out.read_text())
    assert calls == [1]
    assert seen == {
        "name": "__main__",
        "argv": [str(script), "--num-layers", "2", "--velocitune-policy", "static"],
        "path0": str(tmp_path),
        "installed": True,
    }


def test_launcher_ends_a_velocitune_error_in_one_line(tmp_path, monkeypatch, capsys):
    import megatron_velocitune.megatron_lm as adapter
    from megatron_velocitune import launch

    script = tmp_path / "pretrain_gpt.py"
    script.write_text(
        "from megatron_velocitune.core.errors import CheckpointError\n"
        "raise CheckpointError('--load ckpt: refused')\n"
    )
    monkeypatch.setattr(adapter, "install", lambda: None)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as stop:
        launch.main([str(script)])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "pretrain_gpt.py: error: --load ckpt: refused\n"
    script.write_text("raise ValueError('a bug')\n")  # anything else keeps its traceback
    with pytest.raises(ValueError, match="a bug"):
        launch.main([str(script)])


# ------------------------------------------------------------------------ small pieces
def test_writers_fan_out_like_megatron_lm():
    class Recorder:
        def __init__(self):
            self.calls = []

        def add_scalar(self, *a):
            self.calls.append(a)

        def log(self, *a):
            self.calls.append(a)

    tb, wandb = Recorder(), Recorder()
    writers = MegatronWriters(tb, wandb)
    writers.add_scalar("velocitune/weight/code", 0.5, 150)
    writers.add_scalar("velocitune/weight/code vs samples", 0.5, 614400)
    assert tb.calls == [
        ("velocitune/weight/code", 0.5, 150),
        ("velocitune/weight/code vs samples", 0.5, 614400),
    ]
    # wandb's step only grows: iterations only, as Megatron-LM logs it.
    assert wandb.calls == [({"velocitune/weight/code": 0.5}, 150)]
    MegatronWriters(None, wandb).add_scalar("x", 1.0, 1)


def test_patcher_wraps_once_and_restores():
    module = SimpleNamespace(f=lambda x: x + 1)
    original = module.f
    patcher = Patcher()
    patcher.wrap(module, "f", lambda orig: lambda x: orig(x) * 10)
    patcher.wrap(module, "f", lambda orig: lambda x: orig(x) * 100)  # already ours: no-op
    assert module.f(1) == 20 and is_wrapped(module.f) and original_of(module.f) is original
    assert len(patcher) == 1
    with pytest.raises(AttributeError):
        patcher.wrap(module, "missing", lambda orig: orig)
    patcher.restore()
    assert module.f is original and not is_wrapped(module.f)


def test_hook_wrappers_bind_megatron_lm_signatures():
    """The wrappers find their arguments by name in Megatron-LM's signatures (0.14 .. main)."""
    from megatron_velocitune.megatron_lm.installer import (
        _checkpoint_and_decide_exit_wrapper,
        _compile_helpers_wrapper,
        _save_checkpoint_wrapper,
        _train_wrapper,
    )
    from megatron_velocitune.megatron_lm.train_loss import TrainLossTap

    seen = []
    plugin = SimpleNamespace(
        train_loss=TrainLossTap(),
        start=lambda model, optimizer, it, sched: seen.append(
            ("start", model, optimizer, it, sched)
        ),
        after_iteration=lambda model, opt, iteration, it: seen.append(("iter", iteration, it)),
        after_save=lambda iteration, non_persistent: seen.append(
            ("save", iteration, non_persistent)
        ),
    )

    def checkpoint_and_decide_exit(
        model,
        optimizer,
        opt_param_scheduler,
        iteration,
        num_floating_point_operations_so_far,
        checkpointing_context,
        train_data_iterator,
    ):
        return "exit?"

    def save_checkpoint(
        iteration,
        model,
        optimizer,
        opt_param_scheduler,
        num_floating_point_operations_so_far,
        checkpointing_context=None,
        pipeline_rank=None,
        expert_rank=None,
        tensor_rank=None,
        pipeline_parallel=None,
        expert_parallel=None,
        non_persistent_ckpt=False,
        train_data_iterator=None,
    ):
        return "saved"

    def train(
        forward_step_func,
        model,
        optimizer,
        opt_param_scheduler,
        train_data_iterator,
        valid_data_iterator,
        process_non_loss_data_func,
        config,
        checkpointing_context,
        non_loss_data_func,
        inference_model=None,
    ):
        seen.append(("forward_step", forward_step_func.__wrapped__))
        return 7, 0.0

    assert (
        _checkpoint_and_decide_exit_wrapper(checkpoint_and_decide_exit, plugin)(
            "m", "o", "s", 150, 0.0, {}, "it"
        )
        == "exit?"
    )
    assert (
        _save_checkpoint_wrapper(save_checkpoint, plugin)(
            300, "m", "o", "s", 0.0, {}, non_persistent_ckpt=True
        )
        == "saved"
    )
    assert _save_checkpoint_wrapper(save_checkpoint, plugin)(450, "m", "o", "s", 0.0) == "saved"
    assert _train_wrapper(train, plugin)(
        "f", "m", "o", "s", "it", None, None, None, {}, None, None
    ) == (7, 0.0)
    assert seen == [
        ("iter", 150, "it"),
        ("save", 300, True),
        ("save", 450, False),
        ("start", "m", "o", "it", "s"),
        ("forward_step", "f"),  # train() gets the tapped step (--velocitune-loss-source train)
    ]

    # Helpers that already import (a wheel's prebuilt ones, here pip's) need no `make`.
    calls = []
    _compile_helpers_wrapper(lambda: calls.append("make"))()
    assert calls == []


# ------------------------------------------------------------------------ dataset substitution
def _blend_config(corpus, tmp_path, weights=(0.5, 0.3, 0.2)):
    return _dataset_config(
        tmp_path, (list(corpus.prefixes), list(weights)), create_attention_mask=False
    )


def test_velocity_build_replaces_the_train_split_only(world, corpus, tmp_path):
    from megatron.core.datasets.blended_dataset import BlendedDataset
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset

    from megatron_velocitune.data.dataset import VelocityBlendedDataset
    from megatron_velocitune.megatron_lm.datasets import (
        BuildRequest,
        DatasetRegistry,
        velocity_build,
    )

    config = _blend_config(corpus, tmp_path)
    sizes = [400, 40, 8]
    builder = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config)
    static_train, static_valid, _ = BlendedMegatronDatasetBuilder(
        GPTDataset, sizes, lambda: True, config
    ).build()
    registry = DatasetRegistry()
    original = BlendedMegatronDatasetBuilder.build
    # Outside Megatron-LM's dataset building, the builder is left alone.
    assert type(velocity_build(builder, original, registry)[0]) is BlendedDataset
    registry.request = BuildRequest(update_window=80)
    train, valid, test = velocity_build(builder, original, registry)

    assert isinstance(train, VelocityBlendedDataset) and len(train) == 400
    assert np.allclose(train.weights, [0.5, 0.3, 0.2])
    # Until an update, the blend draws exactly megatron-core's static blend.
    for i in (0, 1, 57, 399):
        assert int(train[i]["dataset_id"]) == int(static_train[i]["dataset_id"])
        assert np.array_equal(train[i]["tokens"], static_train[i]["tokens"])
    # Validation is megatron-core's own static blend of the held-out split, unchanged.
    assert type(valid) is BlendedDataset and len(valid) == len(static_valid)
    for i in (0, len(valid) - 1):
        assert np.array_equal(valid[i]["tokens"], static_valid[i]["tokens"])
    assert test is None  # --split 90,10,0 holds out no test documents
    # The held-out sets for the controller: each domain's validation split, one epoch.
    held_out = registry.held_out()
    assert [type(d) for d in held_out] == [GPTDataset] * 3
    assert [d.index_split.name for d in held_out] == ["valid"] * 3
    assert registry.data.prefixes == list(corpus.prefixes)
    # A weight far above a domain's static share wraps its epochs instead of IndexError.
    train.update_weights([0.02, 0.02, 0.96], 200)
    assert int(train[399]["dataset_id"]) in (0, 1, 2)

    registry.request = BuildRequest(update_window=80)
    single = _dataset_config(tmp_path, ([corpus.prefixes[0]], None))
    with pytest.raises(VelocituneConfigError, match="single-prefix"):
        velocity_build(
            BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, single),
            original,
            registry,
        )


# ------------------------------------------------------------------------ the plugin's run
class _StubEvaluator:
    """Held-out losses that fall at each call, different velocities per domain."""

    def __init__(self):
        self.calls = 0

    def evaluate(self, full=False):
        from megatron_velocitune.core.sums import DomainSums

        self.calls += 1
        loss = np.array([3.4, 3.2, 5.0]) - 0.1 * self.calls
        return DomainSums(loss * 1000.0, np.full(3, 1000.0))


def _plugin(corpus, tmp_path, args):
    """A plugin over a real blend, with Megatron-LM's loader and iterator stood in for."""
    from megatron_velocitune.data.builder import build_velocity_datasets
    from megatron_velocitune.data.loader import build_pretraining_data_loader
    from megatron_velocitune.megatron_lm.compat import compat_for_version
    from megatron_velocitune.megatron_lm.datasets import DatasetRegistry
    from megatron_velocitune.megatron_lm.plugin import VelocitunePlugin

    registry = DatasetRegistry()
    registry.data = build_velocity_datasets(
        _blend_config(corpus, tmp_path),
        train_samples=args.train_iters * args.global_batch_size,
        update_window=5 * args.global_batch_size,
    )
    training = SimpleNamespace(
        build_pretraining_data_loader=lambda ds, consumed: build_pretraining_data_loader(
            ds, consumed, args.micro_batch_size, 0, 1, num_workers=0
        )
    )
    return VelocitunePlugin(
        compat_for_version("0.16.1"),
        registry,
        lambda: args,
        training,
        evaluator_factory=lambda *a: _StubEvaluator(),
        writers=lambda: None,
    )


def _megatron_args(tmp_path, **overrides):
    values = dict(
        velocitune_policy="velocity",
        velocitune_update_interval=5,
        velocitune_eval_iters=2,
        velocitune_initial_loss=[3.5, 4.5, 5.5],
        velocitune_initial_loss_file=None,
        velocitune_target_loss=[2.0, 3.0, 4.0],
        velocitune_target_loss_file=None,
        velocitune_min_weight=0.0,
        velocitune_domain_names=None,
        velocitune_loss_source="eval",
        velocitune_log_dir=str(tmp_path / "logs"),
        seed=1234,
        seq_length=32,
        micro_batch_size=2,
        global_batch_size=4,
        train_iters=20,
        tensorboard_dir=None,
        save=str(tmp_path / "ckpt"),
        load=None,
        finetune=False,
        iteration=0,
        consumed_train_samples=0,
        non_persistent_global_ckpt_dir=None,
    )
    values.update(overrides)
    return argparse.Namespace(**values)


def test_plugin_updates_at_m_restarts_the_loader_and_resumes(world, corpus, tmp_path):
    args = _megatron_args(tmp_path)
    plugin = _plugin(corpus, tmp_path, args)
    data = plugin.registry.data
    iterator = SimpleNamespace(
        iterable=iter(plugin.training.build_pretraining_data_loader(data.train, 0))
    )
    plugin.start([], None, iterator)
    assert plugin.controller.names == [os.path.basename(p) for p in corpus.prefixes]

    plugin.after_iteration([], None, 4, iterator)  # not an update iteration
    assert plugin.controller.history == []
    args.consumed_train_samples = 5 * args.global_batch_size
    before = [int(data.train[i]["dataset_id"]) for i in range(args.consumed_train_samples)]
    plugin.after_iteration([], None, 5, iterator)
    weights = plugin.controller.weights
    assert len(plugin.controller.history) == 1 and not np.allclose(weights, [0.5, 0.3, 0.2])
    assert np.allclose(data.train.weights, weights)
    # Samples before the update never change; the loader restarts at the consumed position.
    assert [int(data.train[i]["dataset_id"]) for i in range(20)] == before
    batch = next(iterator.iterable)
    assert [int(d) for d in batch["dataset_id"]] == [
        int(data.train[20 + j]["dataset_id"]) for j in range(2)
    ]
    path = plugin.after_save(5, non_persistent=False)
    assert path == os.path.join(args.save, "iter_0000005", "velocitune_state.json")
    assert os.path.exists(os.path.join(args.velocitune_log_dir, "velocitune_trajectory.jsonl"))

    # Resume from that checkpoint: the history is replayed into a fresh blend.
    resumed_args = _megatron_args(tmp_path, load=args.save, iteration=5, consumed_train_samples=20)
    resumed = _plugin(corpus, tmp_path, resumed_args)
    iterator2 = SimpleNamespace(
        iterable=iter(
            resumed.training.build_pretraining_data_loader(resumed.registry.data.train, 20)
        )
    )
    resumed.start([], None, iterator2)
    assert np.array_equal(resumed.controller.weights, weights)
    assert [int(resumed.registry.data.train[i]["dataset_id"]) for i in range(80)] == [
        int(data.train[i]["dataset_id"]) for i in range(80)
    ]
    assert np.array_equal(next(iterator2.iterable)["tokens"], batch["tokens"])


@pytest.mark.parametrize(
    "case", ["missing", "interval", "data", "blend", "domains", "train_iters", "save", "plain"]
)
def test_plugin_refuses_a_resume_as_the_entry_does(world, corpus, tmp_path, case):
    """One resume for both drivers (``VelocituneRun.resume``): the adapter refuses a dynamic
    run without its sidecar, another ``m`` and other data behind the same domain names, each
    with the megatron-core entry's line; a plain resume continues.
    """
    from megatron_velocitune.core.errors import VelocituneError

    args = _megatron_args(tmp_path, split="90,10,0")
    plugin = _plugin(corpus, tmp_path, args)
    loader = plugin.training.build_pretraining_data_loader
    plugin.start([], None, SimpleNamespace(iterable=iter(loader(plugin.registry.data.train, 0))))
    args.consumed_train_samples = 20
    plugin.after_iteration([], None, 5, SimpleNamespace(iterable=None))
    path = plugin.after_save(5, non_persistent=False)
    with open(path) as f:
        saved = json.load(f)
    assert saved["resume"]["update_interval"] == 5  # the sidecar records the identity

    overrides = dict(load=args.save, iteration=5, consumed_train_samples=20, split="90,10,0")
    if case == "missing":
        os.remove(path)
        expected = (
            f"^--load {args.save}: {path} is missing: the weight history and the blend of this "
            "velocity run at iteration 5 are lost, so it cannot resume \\(restore the file, or "
            "start a new run from the checkpoint with --finetune\\)$"
        )
    elif case == "interval":
        overrides["velocitune_update_interval"] = 4
        expected = r"--velocitune-update-interval.*cannot resume exactly"
    elif case == "data":
        saved["resume"]["data"][1]["idx_sha256"] = "0" * 64
        with open(path, "w") as f:
            json.dump(saved, f)
        expected = r"domain 1 of --data-path was .*: other data, it cannot resume$"
    elif case == "domains":  # a state of other domain names (and no identity to say so first)
        saved["domains"] = ["a", "b", "c"]
        del saved["resume"]
        with open(path, "w") as f:
            json.dump(saved, f)
        expected = f"^{path}: velocitune state is for domains \\['a', 'b', 'c'\\], this run has"
    elif case == "blend":  # a run started from other --data-path weights
        saved["resume"]["blend"] = [0.2, 0.3, 0.5]
        with open(path, "w") as f:
            json.dump(saved, f)
        expected = (
            r"saved with --data-path weights \[0.2, 0.3, 0.5\], this run has \[0.5, 0.3, 0.2\]"
        )
    elif case == "train_iters":
        overrides["train_iters"] = 4
        expected = (
            f"^--train-iters 4 is below the iteration of the checkpoint in --load {args.save} "
            "\\(5\\): give at least --train-iters 5 to continue that run$"
        )
    elif case == "save":  # a new run into the folder of a finished one (Megatron-LM's tracker)
        with open(os.path.join(args.save, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write("5")
        overrides.update(load=None, iteration=0, consumed_train_samples=0)
        expected = (
            f"^--save {args.save}: holds the checkpoints of run {saved['run_id']} \\(its "
            "tracker names iteration 5\\), which this run would overwrite: resume that run "
            f"with --load {args.save}, or save to another folder$"
        )
    resumed = _plugin(corpus, tmp_path, _megatron_args(tmp_path, **overrides))
    # (Megatron-LM's own loader refuses a position past --train-iters before train() starts.)
    iterator = SimpleNamespace(
        iterable=None
        if case == "train_iters"
        else iter(loader(resumed.registry.data.train, overrides["consumed_train_samples"]))
    )
    if case == "plain":
        resumed.start([], None, iterator)
        assert np.array_equal(resumed.controller.weights, plugin.controller.weights)
        return
    with pytest.raises(VelocituneError, match=expected):
        resumed.start([], None, iterator)


def test_plugin_without_a_velocitune_build_says_why(world, corpus, tmp_path):
    plugin = _plugin(corpus, tmp_path, _megatron_args(tmp_path))
    plugin.registry.data = None
    with pytest.raises(RuntimeError, match="BlendedMegatronDatasetBuilder"):
        plugin.start([], None, None)


# ------------------------------------------------------------------------ a real checkout
needs_checkout = pytest.mark.skipif(
    not (MEGATRON_LM_PATH or WHEEL_HAS_TRAINING or REQUIRED),
    reason="no megatron.training here (megatron-core < 0.17 holds megatron.core only): these run "
    "on the Python 3.12 leg against the wheel's megatron.training (make test-latest), or with "
    "MEGATRON_LM_PATH set to a Megatron-LM checkout (pip install -e '.[megatron-lm]'; make -C "
    "$MEGATRON_LM_PATH/megatron/core/datasets)",
)


def _require_megatron_lm():
    if not (MEGATRON_LM_PATH or WHEEL_HAS_TRAINING):
        pytest.fail(
            "VELOCITUNE_REQUIRE_MEGATRON_LM=1 but this environment has no megatron.training "
            "(install megatron-core >= 0.17 on Python 3.12, or set MEGATRON_LM_PATH)"
        )


@pytest.fixture(scope="module")
def probe(corpus, tmp_path_factory):
    """Run tests/_megatron_lm_probe.py against the Megatron-LM once; its findings as a dict."""
    _require_megatron_lm()
    out = tmp_path_factory.mktemp("probe") / "probe.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in (MEGATRON_LM_PATH, os.path.dirname(HERE), env.get("PYTHONPATH")) if p]
    )
    env.update(OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()))
    names = [os.path.basename(p) for p in corpus.prefixes]
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, "_megatron_lm_probe.py"),
            str(out),
            corpus.root,
            *names,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"probe failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return json.loads(out.read_text())


@needs_checkout
def test_checkout_is_the_megatron_imported(probe):
    if MEGATRON_LM_PATH:
        assert probe["megatron_core_file"].startswith(os.path.abspath(MEGATRON_LM_PATH))
        assert tuple(probe["version"]) >= (0, 14, 0)
        assert probe["provider"] == "pretrain_gpt.train_valid_test_datasets_provider"
    else:
        import megatron.core

        assert probe["megatron_core_file"] == megatron.core.__file__  # the wheel's
        assert tuple(probe["version"]) >= (0, 17, 0)
        assert probe["provider"].endswith("gpt_entry.dataset_provider")


@needs_checkout
def test_checkout_startup_path_of_the_release(probe):
    """0.18+: parse_and_validate_args, then pretrain(cfg_container, ...); 0.19+ keyword."""
    startup, version = probe["startup"], tuple(probe["version"])
    new = version >= (0, 18, 0)
    assert startup["args_entry"] == ("parse_and_validate_args" if new else "parse_args")
    assert startup["args_is_global"] and startup["velocitune_flags"]
    assert (startup["cfg_container"] == "PretrainConfigContainer") is new
    assert startup["model_provider_bound"] and startup["forward_step_bound"]


@needs_checkout
def test_checkout_every_integration_point_is_wrapped(probe):
    assert probe["wrapped"] and all(probe["wrapped"].values()), probe["wrapped"]
    assert probe["install_idempotent"]


@needs_checkout
def test_checkout_parse_args_takes_the_flags_and_refuses_cyclic(probe):
    assert probe["parsed"] == {
        "update_interval": 5,
        "policy": "velocity",
        "initial_loss": [3.5, 4.5, 5.5],
        "target_loss": [2.0, 3.0, 4.0],
        "num_layers": 2,
    }
    assert probe["refusal"]["exit"] == 2
    assert "velocitune: --dataloader-type cyclic" in probe["refusal"]["message"]
    assert "usage:" not in probe["refusal"]["message"]


@needs_checkout
def test_checkout_pretrain_gpt_provider_builds_a_velocity_blend(probe):
    d = probe["datasets"]
    assert d["train_is_velocity"] and d["train_len"] == d["num_samples"][0]
    assert d["train_weights"] == [0.5, 0.3, 0.2]
    assert d["valid_is_static_blend"] and d["valid_len"] >= d["valid_size_requested"]
    assert d["prefixes"] == ["code", "docs", "legal"] and min(d["held_out_lengths"]) > 0
    assert d["builder_restored"]


@needs_checkout
def test_checkout_update_swaps_the_rerun_iterator_at_the_consumed_position(probe):
    run = probe["run"]
    assert run["evaluator_held_out"] and run["evaluator_domains"] == 3
    assert run["first_batch_matches"] and not run["should_exit"]
    assert run["updates"] == 1 and run["weights"] == run["dataset_weights"]
    assert run["weights"] != [0.5, 0.3, 0.2]
    assert run["prefix_unchanged"] and run["next_batch_is_consumed_position"]
    assert run["tensorboard"] and run["trajectory"]


@needs_checkout
def test_checkout_sidecar_and_resume(probe):
    resume = probe["resume"]
    assert resume["sidecar_exists"] and resume["sidecar"].endswith(
        "iter_0000005/velocitune_state.json"
    )
    assert resume["history"] == 1 and resume["weights"] == probe["run"]["weights"]
    assert resume["same_index"] and resume["same_next_batch"]


@needs_checkout
def test_checkout_refuses_a_resume_with_the_entrys_line(probe):
    """Issue 25: under a real Megatron-LM (the wheel's megatron.training, or a checkout with
    MEGATRON_LM_PATH) the adapter refuses what the megatron-core entry refuses, with its line
    (tests/test_reliability.py's table holds the entry's side of each case).
    """
    found = probe["refusals"]

    def line(case):
        assert found[case]["line"] is not None, f"{case}: not refused"
        assert found[case]["exit"] == 2
        return found[case]["line"], found[case]["folder"]

    text, folder = line("missing")
    sidecar = os.path.join(folder, "iter_0000005", "velocitune_state.json")
    assert text == (
        f"--load {folder}: {sidecar} is missing: the weight history and the blend of this "
        "velocity run at iteration 5 are lost, so it cannot resume (restore the file, or start a "
        "new run from the checkpoint with --finetune)"
    )
    text, folder = line("interval")
    sidecar = os.path.join(folder, "iter_0000005", "velocitune_state.json")
    assert text == (
        f"{sidecar}: the run was saved with --velocitune-update-interval 5, this run has 4: it "
        "cannot resume exactly (use the saved value, or start a new run from the checkpoint "
        "with --finetune)"
    )
    text, folder = line("data")
    assert text.startswith(f"{folder}/iter_0000005/velocitune_state.json: domain 0 of ")
    assert "other-data/code (" in text and text.endswith("): other data, it cannot resume")
    text, folder = line("train_iters")
    assert text == (
        f"--train-iters 4 is below the iteration of the checkpoint in --load {folder} (5): give "
        "at least --train-iters 5 to continue that run"
    )
    text, folder = line("save")
    assert text.startswith(f"--save {folder}: holds the checkpoints of run ")
    assert text.endswith(
        f"(its tracker names iteration 5), which this run would overwrite: resume that run "
        f"with --load {folder}, or save to another folder"
    )


# ------------------------------------------------------------------------ loss-source train
@pytest.mark.slow
@pytest.mark.skipif(
    not (WHEEL_HAS_TRAINING or REQUIRED),
    reason="no megatron.training in this interpreter (megatron-core < 0.17): runs on the Python "
    "3.12 leg against the wheel's megatron.training (make test-latest)",
)
def test_loss_source_train_through_the_adapter_on_two_ranks(corpus, tmp_path):
    """The tapped forward step's per-domain sums are the batch's lm loss, split by domain."""
    if not WHEEL_HAS_TRAINING:
        pytest.fail(
            "VELOCITUNE_REQUIRE_MEGATRON_LM=1 but this interpreter has no megatron.training"
        )
    from tests._megatron_lm_train_loss import worker
    from tests._multiproc import run_distributed

    names = [os.path.basename(p) for p in corpus.prefixes]
    iterations = 2
    results = run_distributed(
        worker,
        world_size=2,
        args=(corpus.root, names, str(tmp_path), iterations),
        timeout=600,
    )
    first = results[0]
    assert tuple(first["version"]) >= (0, 17, 0)
    for result in results:
        assert len(result["records"]) == iterations
        for record in result["records"]:
            loss, tokens = np.array(record["window_loss"]), np.array(record["window_tokens"])
            # Every token of the global batch lands in its sample's domain ...
            assert np.array_equal(tokens, record["expected_tokens"])
            assert tokens.sum() == record["lm_tokens"] > 0
            # ... and the per-domain means, pooled, are the batch's lm loss.
            means = loss[tokens > 0] / tokens[tokens > 0]
            pooled = float(np.sum(means * tokens[tokens > 0]) / tokens.sum())
            assert pooled == pytest.approx(record["lm_loss_sum"] / record["lm_tokens"], rel=1e-5)
            assert np.all(np.isfinite(means)) and np.all(means > 0)
        # The update read exactly the window (its per-domain means), then opened a new one.
        total = np.array(result["window_total"])
        decision = result["decision"]
        assert decision is not None and decision["iteration"] == iterations
        seen = total[1] > 0
        assert np.allclose(
            np.array(decision["eval_loss"])[seen], total[0][seen] / total[1][seen], rtol=1e-12
        )
        assert np.count_nonzero(np.array(result["open_window_after_update"])) == 0
        assert np.allclose(result["dataset_weights"], result["weights"])
        assert np.all(np.isfinite(result["initial_loss"]))
    # All ranks agree: the same windows, initial loss, decision and blend.
    for other in results[1:]:
        assert other["records"] == first["records"]
        assert other["initial_loss"] == first["initial_loss"]
        assert other["decision"]["eval_loss"] == first["decision"]["eval_loss"]
        assert other["weights"] == first["weights"]


def test_train_loss_tap_reads_domains_from_the_iterator():
    """The tap on a forward step shaped like pretrain_gpt.py's (dataset_id not in its batch)."""
    import functools

    import torch

    from megatron_velocitune.control.train_stream import DomainLossAccumulator
    from megatron_velocitune.megatron_lm.train_loss import TrainLossTap, loss_mask_of

    def loss_func(loss_mask, output_tensor, model=None):
        return (output_tensor.reshape(-1) * loss_mask.reshape(-1)).sum()

    def forward_step(data_iterator, model):
        batch = next(data_iterator)  # like get_batch: only the fixed keys go on
        losses = batch["tokens"].float() / 10.0
        return losses, functools.partial(loss_func, batch["loss_mask"], model=model)

    def batches():
        for i in range(3):
            yield {
                "tokens": torch.arange(8).reshape(2, 4) + i,
                "loss_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
                "dataset_id": torch.tensor([i % 2, 2]),
            }

    tap = TrainLossTap()
    model = torch.nn.Linear(1, 1)
    stepped = tap.wrap(forward_step)
    it = batches()
    out, fn = stepped(it, model)  # no accumulator yet: untouched
    assert fn.func is loss_func
    tap.accumulator = DomainLossAccumulator(3)
    expected = np.zeros((2, 3))
    for i in (1, 2):
        out, fn = stepped(it, model)
        total = fn(out)
        mask = loss_mask_of(fn.__wrapped__, out)
        assert float(total) == pytest.approx(float((out * mask).sum()))
        for j, d in enumerate([i % 2, 2]):
            expected[0, d] += float((out[j] * mask[j]).sum())
            expected[1, d] += float(mask[j].sum())
    assert np.allclose(tap.accumulator.state().numpy(), expected)
    # Megatron-LM's evaluate() runs the same step in eval mode: not the training stream.
    model.eval()
    out, fn = stepped(iter(list(batches())), model)
    assert fn.func is loss_func
    # A loss function without a bound mask and samples whose masks do not fit: one clear line.
    model.train()

    def bare_step(data_iterator, model):
        batch = next(data_iterator)
        return batch["tokens"].float()[:, :2], lambda out: out.sum()

    out, fn = tap.wrap(bare_step)(iter(list(batches())), model)
    with pytest.raises(RuntimeError, match="--velocitune-loss-source eval"):
        fn(out)


def test_train_stream_window_goes_into_the_sidecar_and_back():
    """A checkpoint between two updates keeps each rank's open window (one-process world)."""
    import torch

    from megatron_velocitune.control.train_stream import (
        DomainLossAccumulator,
        WindowLayout,
        gather_windows,
        restore_window,
    )
    from megatron_velocitune.core.errors import CheckpointError

    acc = DomainLossAccumulator(3)
    acc.add(torch.tensor([0, 2]), torch.full((2, 4), 2.5), torch.ones(2, 4))
    assert gather_windows(None) is None
    windows = gather_windows(acc)
    assert windows == [acc.state().tolist()]
    saved = json.loads(json.dumps(windows))  # as the sidecar holds them
    adapter = WindowLayout(0, 1, refuse_other_size=False, what="world")
    resumed = DomainLossAccumulator(3)
    assert restore_window(resumed, saved, adapter, "--load ckpt")
    assert torch.equal(resumed.state(), acc.state())
    sums = resumed.take()
    assert np.array_equal(sums.loss_sum, [10.0, 0.0, 10.0])
    assert np.array_equal(sums.tokens, [4.0, 0.0, 4.0])
    # Another world size: which rank drew which samples is unknown; the adapter's restarts.
    other = DomainLossAccumulator(3)
    assert not restore_window(other, saved * 2, adapter, "--load ckpt")
    assert not restore_window(other, None, adapter, "--load ckpt") and other.state().sum() == 0
    # The entry's layout (one window per data-parallel rank, in its shards) refuses it.
    entry = WindowLayout(0, 1, refuse_other_size=True)
    with pytest.raises(CheckpointError, match="window is for data-parallel size 2, this run has 1"):
        restore_window(other, saved * 2, entry, "--load ckpt")
