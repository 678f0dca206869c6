"""The pure parts of benchmarks/compare_policies.py: no training here."""

import json
import math
import os
import shutil
import sys
from dataclasses import asdict, replace

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import compare_policies as cp  # noqa: E402

from megatron_velocitune.laws.comparison import (  # noqa: E402
    COLLAPSE_TOLERANCE,
    Collapse,
    MethodRuns,
    SeedPoint,
    Stat,
    collapse_of,
    find_collapses,
    fixed_share_blend,
    is_real_difference,
    mean_std,
    parse_final_losses,
    render_mae_table,
    render_seed_table,
    render_table,
    replay_share_blend,
    seed_points,
    stabilisation_iteration,
    summarise_method,
)


class TestStabilisation:
    def test_last_move_above_tolerance(self):
        init = [0.25, 0.75]
        w = [[0.4, 0.6], [0.45, 0.55], [0.455, 0.545], [0.46, 0.54]]
        assert stabilisation_iteration([10, 20, 30, 40], w, init) == 20

    def test_static_is_zero(self):
        w = [[0.5, 0.5]] * 3
        assert stabilisation_iteration([5, 10, 15], w, [0.5, 0.5]) == 0
        assert stabilisation_iteration([], [], [0.5, 0.5]) == 0

    def test_never_stable(self):
        w = [[0.5, 0.5], [0.6, 0.4]]
        assert stabilisation_iteration([10, 20], w, [0.5, 0.5]) is None

    def test_late_move_resets(self):
        init = [0.5, 0.5]
        w = [[0.6, 0.4], [0.6, 0.4], [0.65, 0.35], [0.65, 0.35]]
        assert stabilisation_iteration([1, 2, 3, 4], w, init) == 3

    def test_tolerance_is_inclusive(self):
        assert (
            stabilisation_iteration(
                [1, 2], [[0.51, 0.49], [0.51, 0.49]], [0.5, 0.5], tolerance=0.01 + 1e-12
            )
            == 0
        )

    def test_length_mismatch(self):
        with pytest.raises(ValueError):
            stabilisation_iteration([1], [], [1.0])


class TestReplayShare:
    def test_split_token_proportional(self):
        w = replay_share_blend([100, 200, 300, 500], [0], 0.6)
        assert w[0] == pytest.approx(0.6)
        assert w[1:] == pytest.approx(np.array([200, 300, 500]) / 1000 * 0.4)
        assert w.sum() == pytest.approx(1.0)

    def test_equals_token_blend_at_its_own_share(self):
        t = np.array([260.0, 240, 250, 250])
        w = replay_share_blend(t, [0], t[0] / t.sum())
        assert w == pytest.approx(t / t.sum())

    def test_several_replay_domains(self):
        w = replay_share_blend([1, 3, 2, 2], [0, 1], 0.5)
        assert w == pytest.approx([0.125, 0.375, 0.25, 0.25])

    @pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5])
    def test_bad_share(self, share):
        with pytest.raises(ValueError):
            replay_share_blend([1, 1], [0], share)

    def test_bad_replay(self):
        with pytest.raises(ValueError):
            replay_share_blend([1, 1], [0, 1], 0.5)
        with pytest.raises(ValueError):
            replay_share_blend([1, 1], [], 0.5)


class TestFixedShares:
    def test_two_fixed_domains_the_rest_in_token_ratio(self):
        w = fixed_share_blend([100, 200, 300, 500], {0: 0.5, 1: 0.4})
        assert w == pytest.approx([0.5, 0.4, 0.1 * 3 / 8, 0.1 * 5 / 8])

    def test_one_fixed_domain_is_the_replay_share_blend(self):
        t = [260.0, 240, 250, 250]
        assert fixed_share_blend(t, {0: 0.85}) == pytest.approx(replay_share_blend(t, [0], 0.85))

    @pytest.mark.parametrize(
        "shares", [{}, {0: 0.0}, {0: 1.0}, {4: 0.5}, {0: 0.6, 1: 0.4}, {0: 0.3, 1: 0.3, 2: 0.3}]
    )
    def test_bad_shares(self, shares):
        with pytest.raises(ValueError):
            fixed_share_blend([1, 1, 1], shares)


class TestSeedsAndCollapse:
    CPT = [SeedPoint("cpt", 1, 4.20, 5.50), SeedPoint("cpt", 2, 4.22, 5.60)]

    def test_seed_points(self):
        pts = seed_points("vt", [2, 1], [[4.3, 5.0, 6.0], [4.1, 5.5, 6.5]], [0])
        assert pts == [SeedPoint("vt", 2, 4.3, 5.5), SeedPoint("vt", 1, 4.1, 6.0)]
        # Several replay domains: their mean.
        assert seed_points("x", [1], [[4.0, 5.0, 6.0]], [0, 1])[0].replay == pytest.approx(4.5)
        with pytest.raises(ValueError):
            seed_points("x", [1, 2], [[4.0, 5.0]], [0])
        with pytest.raises(ValueError):
            seed_points("x", [1], [[4.0, 5.0]], [0, 1])

    def test_collapsed_only_behind_on_both_axes_beyond_the_tolerance(self):
        assert COLLAPSE_TOLERANCE == 0.01
        cpt = self.CPT[1]
        c = collapse_of(SeedPoint("vt", 2, 4.251, 5.742), cpt)
        assert c == Collapse("vt", 2, pytest.approx(0.031), pytest.approx(0.142))
        assert c.line() == "collapsed: vt seed 2 (replay +0.031, new +0.142 vs that seed's CPT)"
        # Behind on one axis only, or by no more than the tolerance on one: not collapsed.
        assert collapse_of(SeedPoint("vt", 2, 4.5, 5.5), cpt) is None
        assert collapse_of(SeedPoint("vt", 2, 4.225, 6.0), cpt) is None
        assert collapse_of(SeedPoint("vt", 2, 4.5, 5.6 + 0.0099), cpt) is None
        assert collapse_of(SeedPoint("vt", 2, 4.225, 6.0), cpt, tolerance=0.001) is not None
        with pytest.raises(ValueError):
            collapse_of(SeedPoint("vt", 1, 5.0, 6.0), cpt)

    def test_each_run_against_its_own_seed(self):
        pts = [
            # Behind seed 2's CPT, but ahead of seed 1's: judged against seed 1's.
            SeedPoint("vt", 1, 4.21, 5.55),
            SeedPoint("vt", 2, 4.30, 5.70),
            SeedPoint("vt", 3, 9.0, 9.0),  # no CPT run of seed 3
            self.CPT[0],
        ]
        found = find_collapses(pts, self.CPT)
        assert [(c.method, c.seed) for c in found] == [("vt", 2)]
        assert found[0].replay_delta == pytest.approx(0.08)

    def test_seed_table(self):
        pts = [*self.CPT, SeedPoint("vt", 1, 4.1, 5.4), SeedPoint("vt", 2, 4.3, 5.7)]
        text = render_seed_table(pts, self.CPT, {"cpt": "CPT", "vt": "Velocitune"})
        lines = text.splitlines()
        assert len(lines) == 6 and lines[0].startswith("| method | seed | replay loss |")
        assert lines[2] == "| CPT | 1 | 4.2000 | 5.5000 | - | - |  |"
        assert lines[4] == "| Velocitune | 1 | 4.1000 | 5.4000 | -0.1000 | -0.1000 |  |"
        assert lines[5] == "| Velocitune | 2 | 4.3000 | 5.7000 | +0.0800 | +0.1000 | yes |"

    def test_main_table_counts_collapsed_seeds(self):
        domains = ["general", "man"]
        rows = [
            summarise_method(MethodRuns(n, [[4.0, 6.0], [4.1, 6.1]]), domains, [0])
            for n in ("CPT", "VT")
        ]
        text = render_table(rows, domains, collapsed=[None, 1])
        head, _, cpt, vt = text.splitlines()
        i = head.split(" | ").index("collapsed seeds")
        assert cpt.split(" | ")[i] == "-" and vt.split(" | ")[i] == "1/2"
        assert "collapsed seeds" not in render_table(rows, domains)
        with pytest.raises(ValueError):
            render_table(rows, domains, collapsed=[None])


class TestTableMaths:
    def test_mean_std(self):
        s = mean_std([1.0, 2.0, 3.0])
        assert s.mean == 2.0 and s.std == pytest.approx(1.0) and s.n == 3
        one = mean_std([4.0])
        assert one.n == 1 and math.isnan(one.std) and one.fmt() == "4.0000"
        assert mean_std([float("nan"), 1.0]).n == 1
        assert mean_std([]).fmt() == "-"

    def test_real_difference_needs_spread(self):
        a, b = Stat(1.0, 0.1, 3), Stat(1.25, 0.1, 3)
        assert is_real_difference(a, b)
        assert not is_real_difference(a, Stat(1.15, 0.1, 3))
        assert not is_real_difference(Stat(1.0, float("nan"), 1), Stat(5.0, 0.1, 3))

    def test_summarise(self):
        domains = ["general", "man", "code"]
        cpt = MethodRuns("CPT", [[4.0, 6.0, 5.0], [4.2, 6.2, 5.2]], [0, 0], [100.0, 110.0])
        ref = summarise_method(cpt, domains, [0])
        assert ref.mean_all.mean == pytest.approx(5.1)
        assert ref.mean_new.mean == pytest.approx(5.6)
        vt = MethodRuns(
            "VT", [[4.5, 5.8, 4.9], [4.7, 6.0, 5.1]], [30, None], [120.0, 130.0], dynamic=True
        )
        row = summarise_method(vt, domains, [0], np.array([x.mean for x in ref.per_domain]))
        assert row.worst_domain == "general"
        assert row.worst_delta.mean == pytest.approx(0.5)
        assert row.stable_at.mean == 30 and row.never_stable == 1
        text = render_table([ref, row], domains)
        assert text.count("\n") == 3
        assert "(1/2 never)" in text and "+19%" in text and "general +0.5000" in text
        assert "static" in text.splitlines()[2]

    def test_summarise_shape_check(self):
        with pytest.raises(ValueError):
            summarise_method(MethodRuns("x", [[1.0, 2.0]]), ["a", "b", "c"], [0])

    def test_mae_table(self):
        text = render_mae_table(
            ["a", "b"],
            {"a": [1e-3, 3e-3], "b": [2e-3, float("nan")]},
            {"a": 2e-3, "b": float("nan")},
        )
        assert "2.00e-03 ± 1.4e-03" in text and "all domains" in text


LOG = """\
 iteration      300/     300 | consumed samples: ...
 held-out loss per domain (full held-out sets), start of this run -> end:
   domain           start       end    change    weight
   general         4.5453    4.3815   -0.1638    0.6784
   man             9.8372    5.5988   -4.2383    0.1110
 saved checkpoint
"""


def test_parse_final_losses():
    names, start, end, weight = parse_final_losses(LOG)
    assert names == ["general", "man"]
    assert start == [4.5453, 9.8372] and end == [4.3815, 5.5988] and weight == [0.6784, 0.1110]
    with pytest.raises(ValueError):
        parse_final_losses("nothing here")


class TestArguments:
    def test_default_and_quick(self):
        p = cp.build_parser()
        s = cp.setting_from_args(p.parse_args(["--out", "x"]))
        assert len(s.seeds) >= 3 and s.cpt_iters > cp.QUICK.cpt_iters
        q = cp.setting_from_args(p.parse_args(["--out", "x", "--quick", "--seeds", "7"]))
        assert q.seeds == (7,) and q.base_iters == cp.QUICK.base_iters

    def test_overrides_and_errors(self):
        p = cp.build_parser()
        s = cp.setting_from_args(
            p.parse_args(["--out", "x", "--cpt-iters", "100", "--update-interval", "20"])
        )
        assert s.cpt_iters == 100 and s.update_interval == 20
        with pytest.raises(SystemExit):
            cp.setting_from_args(p.parse_args(["--out", "x", "--seeds", "1", "1"]))
        with pytest.raises(SystemExit):
            p.parse_args([])

    def test_model_sizes_and_ranks(self):
        p = cp.build_parser()
        argv = ["--out", "x", "--num-layers", "8", "--hidden-size", "1024"]
        argv += ["--num-attention-heads", "16", "--seq-length", "256", "--nproc", "1"]
        argv += ["--micro-batch-size", "32", "--global-batch-size", "32", "--base-lr", "6e-4"]
        s = cp.setting_from_args(p.parse_args(argv + ["--cpt-eval-interval", "5"]))
        assert (s.num_layers, s.hidden_size, s.num_attention_heads) == (8, 1024, 16)
        assert (s.seq_length, s.micro_batch, s.global_batch, s.nproc) == (256, 32, 32, 1)
        assert (s.base_lr, s.cpt_eval_interval) == (6e-4, 5)
        model = cp._model_args("corpus", s)
        for flag, value in (
            ("--num-layers", "8"),
            ("--hidden-size", "1024"),
            ("--seq-length", "256"),
        ):
            assert model[model.index(flag) + 1] == value
        corpus = {"domains": [{"name": "general", "prefix": "c/general", "tokens": 5}]}
        argv_cmp = cp.compare_argv("out", s, corpus, "python")
        assert argv_cmp[argv_cmp.index("--nproc") + 1] == "1"
        assert argv_cmp[argv_cmp.index("--cpt-eval-interval") + 1] == "5"
        # Unset: the README's tiny GPT on 2 ranks.
        d = cp.setting_from_args(p.parse_args(["--out", "x"]))
        assert (d.num_layers, d.hidden_size, d.nproc) == (4, 128, 2)

    def test_cosine_schedule(self):
        p = cp.build_parser()
        flags = cp.entry_args("c", cp.setting_from_args(p.parse_args(["--out", "x"])))
        assert flags[flags.index("--lr-decay-style") + 1] == "constant" and "--min-lr" not in flags
        s = cp.setting_from_args(p.parse_args(["--out", "x", "--cpt-schedule", "cosine"]))
        flags = cp.entry_args("c", s)
        assert flags[flags.index("--lr-decay-style") + 1] == "cosine"
        assert float(flags[flags.index("--min-lr") + 1]) == pytest.approx(s.cpt_lr / 10)

    def test_bad_sizes_get_one_line(self):
        p = cp.build_parser()
        with pytest.raises(SystemExit, match=r"^--nproc 0: must be > 0$"):
            cp.setting_from_args(p.parse_args(["--out", "x", "--nproc", "0"]))
        with pytest.raises(
            SystemExit,
            match=r"^--global-batch-size 30: not a multiple of --micro-batch-size 8 x --nproc 2$",
        ):
            cp.setting_from_args(p.parse_args(["--out", "x", "--global-batch-size", "30"]))

    def test_data_path(self):
        assert cp.data_path(["a", "b"], [0.25, 0.75]) == ["0.250000", "a", "0.750000", "b"]

    def test_fit_span_over_a_decade_by_default(self):
        s = cp.Setting()
        # CPT evaluations fitted: from the end of the warmup to half the budget.
        assert (s.fit_fraction * s.cpt_iters) / s.warmup > 10


class TestRegimes:
    TOKENS = [800.0, 100.0, 300.0, 600.0]

    def test_four_regimes_in_one_table(self):
        assert list(cp.SETTINGS) == ["realistic", "replay-only", "saturated", "small-headroom"]
        assert set(cp.CORPORA) == {"demo", "debian2"}
        assert cp.CORPORA["debian2"].domains == ("fortunes", "man1", "perl", "changelog")
        assert cp.CORPORA["debian2"].replay == "fortunes"
        assert (cp.REPLAY_DOMAIN, cp.DOMAINS) == ("general", ["general", "man", "pydocs", "code"])

    def test_base_blends(self):
        real = cp.base_blend(cp.SETTINGS["realistic"], self.TOKENS, 0)
        assert real == pytest.approx([0.85, 0.15 * 0.1, 0.15 * 0.3, 0.15 * 0.6])
        assert cp.base_blend(cp.SETTINGS["saturated"], self.TOKENS, 0) == pytest.approx(real)
        assert cp.base_blend(cp.SETTINGS["replay-only"], self.TOKENS, 0) is None
        small = cp.base_blend(cp.SETTINGS["small-headroom"], self.TOKENS, 0)
        assert small == pytest.approx([0.5, 0.4, 0.1 * 1 / 3, 0.1 * 2 / 3])
        # The first new domain is the first one that is not the replay domain.
        small = cp.base_blend(cp.SETTINGS["small-headroom"], self.TOKENS, 1)
        assert small == pytest.approx([0.4, 0.5, 0.1 / 3, 0.2 / 3])

    def test_setting_names_corpus_and_regime(self):
        p = cp.build_parser()
        s = cp.setting_from_args(p.parse_args(["--out", "x"]))
        assert (s.corpus, s.setting, s.saturated_replay_bytes) == ("demo", "realistic", None)
        s = cp.setting_from_args(
            p.parse_args(["--out", "x", "--corpus", "debian2", "--setting", "saturated"])
        )
        assert (s.corpus, s.setting, s.replay_domain) == ("debian2", "saturated", "fortunes")
        assert s.saturated_replay_bytes == cp.SATURATED_REPLAY_BYTES == 300_000
        s = cp.setting_from_args(
            p.parse_args(["--out", "x", "--setting", "saturated", "--saturated-replay-bytes", "5"])
        )
        assert s.saturated_replay_bytes == 5
        with pytest.raises(SystemExit, match="--saturated-replay-bytes 5: goes with --setting"):
            cp.setting_from_args(p.parse_args(["--out", "x", "--saturated-replay-bytes", "5"]))
        with pytest.raises(SystemExit, match="--saturated-replay-bytes 0 must be >= 1"):
            cp.setting_from_args(
                p.parse_args(
                    ["--out", "x", "--setting", "saturated", "--saturated-replay-bytes", "0"]
                )
            )

    def test_two_regimes_cannot_share_an_out(self, tmp_path):
        out = str(tmp_path)
        s = cp.Setting(corpus="debian2", setting="small-headroom")
        with open(os.path.join(out, "setting.json"), "w") as f:
            json.dump(asdict(s), f)
        cp.check_setting(out, replace(s, seeds=(4,)))  # the seeds may differ
        for other in (replace(s, corpus="demo"), replace(s, setting="realistic")):
            with pytest.raises(SystemExit, match="holds runs of another setting"):
                cp.check_setting(out, other)

    def test_a_setting_json_from_before_the_regimes(self, tmp_path):
        old = {k: v for k, v in asdict(cp.Setting()).items() if k not in ("corpus", "setting")}
        old.pop("saturated_replay_bytes")
        for share, setting in ((0.85, "realistic"), (None, "replay-only")):
            with open(tmp_path / "setting.json", "w") as f:
                json.dump({**old, "base_replay_share": share}, f)
            cp.check_setting(str(tmp_path), cp.Setting(setting=setting))
            with pytest.raises(SystemExit):
                cp.check_setting(str(tmp_path), cp.Setting(setting="small-headroom"))

    def test_a_setting_json_from_before_the_model_sizes(self, tmp_path):
        old = asdict(cp.Setting())
        for field in ("num_layers", "hidden_size", "num_attention_heads", "nproc"):
            old.pop(field)
        with open(tmp_path / "setting.json", "w") as f:
            json.dump(old, f)
        cp.check_setting(str(tmp_path), cp.Setting())  # written when the sizes were fixed
        with pytest.raises(SystemExit, match="hidden_size"):
            cp.check_setting(str(tmp_path), cp.Setting(hidden_size=1024))

    def test_the_comparison_runs_default_and_the_frontier(self):
        p = cp.build_parser()
        s = cp.Setting()
        flags = cp.comparison_flags(p.parse_args(["--out", "x"]), s, "x")
        assert flags == ["--methods", "default", "--frontier", "0.1", "0.4", "0.7"]
        flags = cp.comparison_flags(
            p.parse_args(["--out", "x", "--quick", "--methods", "vt-budget", "--frontier", "0.5"]),
            s,
            "x",
        )
        assert flags == ["--quick", "--methods", "vt-budget", "--frontier", "0.5"]

    def test_a_law_method_gets_the_base_curve_and_its_schedule(self):
        p = cp.build_parser()
        s = cp.Setting()
        args = p.parse_args(["--out", "x", "--methods", "default", "default-law-auto"])
        flags = cp.comparison_flags(args, s, "/o")
        at = flags.index("--annealing-from")
        assert flags[at + 1] == "/o/base/tb/velocitune_trajectory.jsonl"
        spec = flags[flags.index("--base-lr-schedule") + 1]
        # The base run's own schedule (train_base): cosine, a tenth of its iterations warm-up.
        assert spec == f"cosine:{s.base_lr}:{s.base_min_lr}:{s.base_iters // 10}:{s.base_iters}"
        from megatron_velocitune.laws.schedule_laws import LrSchedule

        LrSchedule.from_spec(spec, "--base-lr-schedule")
        # The CPT runs' own schedule, for runs whose header predates it: the entry's flags.
        for schedule in ("constant", "cosine"):
            s = cp.Setting(cpt_schedule=schedule)
            spec = cp.comparison_flags(args, s, "/o")
            spec = spec[spec.index("--lr-schedule") + 1]
            lr = LrSchedule.from_spec(spec, "--lr-schedule")
            entry = cp.entry_args("/c", s)
            assert lr.lr([0.0])[0] == 0.0 and lr.lr([s.warmup])[0] == pytest.approx(s.cpt_lr)
            last = float(entry[entry.index("--min-lr") + 1]) if "--min-lr" in entry else s.cpt_lr
            assert lr.lr([s.cpt_iters])[0] == pytest.approx(last)

    def test_compare_argv_takes_replay_domain_and_cpt_blend(self):
        corpus = {
            "domains": [
                {"name": n, "prefix": f"/c/{n}", "tokens": k}
                for n, k in zip(cp.CORPORA["debian2"].domains, (100, 300, 300, 300))
            ],
        }
        s = cp.Setting(corpus="debian2", setting="saturated", saturated_replay_bytes=10)
        argv = cp.compare_argv("/o", s, corpus, "py")
        assert argv[argv.index("--replay-domain") + 1] == "fortunes"
        assert argv[argv.index("--data-path") + 1 : argv.index("--data-path") + 3] == [
            "0.100000",
            "/c/fortunes",
        ]
        # The saturated corpus keeps CPT on the full corpus's blend.
        argv = cp.compare_argv("/o", s, {**corpus, "cpt_weights": [0.25] * 4}, "py")
        assert argv[argv.index("--data-path") + 1] == "0.250000"
        assert argv[argv.index("--tokenizer-model") + 1] == "/c/tokenizer.json"


class TestCorpusFolders:
    def test_folders(self):
        assert cp.corpus_folders("/r", "demo") == ("/r/text", "/r/corpus")
        assert cp.corpus_folders("/r", "debian2") == ("/r/text-debian2", "/r/corpus-debian2")
        assert cp.corpus_folders("/r", "debian2", 300) == (
            "/r/text-debian2-saturated300",
            "/r/corpus-debian2-saturated300",
        )

    def test_first_files(self):
        files = [("b.txt", 40), ("a.txt", 50), ("c.txt", 30)]
        assert cp.first_files(files, 90) == ["a.txt", "b.txt"]
        assert cp.first_files(files, 89) == ["a.txt"]
        assert cp.first_files(files, 10) == ["a.txt"]  # at least one
        assert cp.first_files(files, 10**6) == ["a.txt", "b.txt", "c.txt"]

    def test_truncate_text(self, tmp_path):
        src = tmp_path / "src"
        (src / "sub").mkdir(parents=True)
        for name, size in (("a.txt", 10), ("b.txt", 10), ("sub/c.txt", 10)):
            (src / name).write_text("x" * size)
        kept = cp.truncate_text(str(src), str(tmp_path / "dst"), 20)
        assert kept == ["a.txt", "b.txt"]
        assert sorted(os.listdir(tmp_path / "dst")) == ["a.txt", "b.txt"]

    def test_reuses_a_built_corpus_and_refuses_another(self, tmp_path):
        folder = tmp_path / "corpus-debian2"
        folder.mkdir()
        names = cp.CORPORA["debian2"].domains
        manifest = {
            "tokenizer": str(folder / "tokenizer.json"),
            "domains": [{"name": n, "prefix": str(folder / n), "tokens": 5} for n in names],
        }
        (folder / "corpus.json").write_text(json.dumps(manifest))
        assert cp.prepare_corpus(str(tmp_path), "no-python", "debian2") == manifest
        (tmp_path / "corpus").mkdir()
        (tmp_path / "corpus" / "corpus.json").write_text(json.dumps(manifest))
        with pytest.raises(SystemExit, match="not the demo corpus's"):
            cp.prepare_corpus(str(tmp_path), "no-python", "demo")


def test_a_copied_corpus_is_read_where_it_is_now(tmp_path):
    """``corpus.json`` holds the paths it was written at; a copy (to a GPU machine, say) is read
    from where it is.
    """
    folder = tmp_path / "corpus"
    folder.mkdir()
    manifest = {
        "tokenizer": "/elsewhere/tokenizer.json",
        "domains": [{"name": d, "prefix": f"/elsewhere/{d}", "tokens": 1} for d in cp.DOMAINS],
    }
    (folder / "corpus.json").write_text(json.dumps(manifest))
    read = cp._manifest(str(folder), "demo")
    assert [d["prefix"] for d in read["domains"]] == [str(folder / d) for d in cp.DOMAINS]
    assert read["tokenizer"] == str(folder / "tokenizer.json")


def test_corpus_dir_is_the_folder_above_a_corpus(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "corpus.json").write_text("{}")
    with pytest.raises(SystemExit, match="is a tokenized corpus itself; give the folder"):
        cp.main(["--out", str(tmp_path / "o"), "--corpus-dir", str(tmp_path / "corpus")])
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # a tools/prepare_corpus.py process (~10-20 s)
def test_saturated_corpus_cuts_the_replay_text_and_keeps_the_tokenizer(tmp_path, corpus):
    """The saturated corpus from a built one: its replay domain the first files, the rest and
    the tokenizer the full corpus's, CPT's blend the full corpus's (one real tokenizing run).
    """
    root = tmp_path / "root"
    spec = cp.CORPORA["debian2"]
    for d in spec.domains:
        (root / "text-debian2" / d).mkdir(parents=True)
        for i in range(3):
            (root / "text-debian2" / d / f"{i}.txt").write_text(f"{d} document {i}. " * 20)
    full = root / "corpus-debian2"
    full.mkdir()
    shutil.copyfile(corpus.tokenizer_path, full / "tokenizer.json")
    manifest = {
        "tokenizer": str(full / "tokenizer.json"),
        "domains": [
            {"name": d, "prefix": str(full / d), "tokens": k}
            for d, k in zip(spec.domains, (400, 200, 200, 200))
        ],
    }
    (full / "corpus.json").write_text(json.dumps(manifest))
    size = len(("fortunes document 0. " * 20).encode())
    sat = cp.prepare_corpus(str(root), sys.executable, "debian2", 2 * size)
    assert [d["name"] for d in sat["domains"]] == list(spec.domains)
    assert [d["documents"] for d in sat["domains"]] == [2, 3, 3, 3]
    assert sat["cpt_weights"] == pytest.approx([0.4, 0.2, 0.2, 0.2])
    folder = root / f"corpus-debian2-saturated{2 * size}"
    assert sat["domains"][0]["prefix"] == str(folder / "fortunes")
    assert (folder / "tokenizer.json").exists()
    assert sorted(os.listdir(root / f"text-debian2-saturated{2 * size}" / "fortunes")) == [
        "0.txt",
        "1.txt",
    ]
    # Built once: a second call reads it back.
    assert cp.prepare_corpus(str(root), "no-python", "debian2", 2 * size) == sat


def test_parse_loop_time():
    from megatron_velocitune.laws.comparison import parse_loop_time

    line = (
        " training loop: 60 iterations in 241.5 s (4025.7 ms/iteration wall, "
        "686.2 ms/iteration CPU of this process)\n"
    )
    assert parse_loop_time("x\n" + line) == (60, 241.5, 4025.7, 686.2)
    assert parse_loop_time("nothing") is None


def test_overhead_uses_cpu_when_every_row_has_it():
    domains = ["general", "man"]
    a = summarise_method(
        MethodRuns("CPT", [[4.0, 6.0], [4.1, 6.1]], [0, 0], [100.0, 100.0], cpu_ms=[500.0, 500.0]),
        domains,
        [0],
    )
    b = summarise_method(
        MethodRuns(
            "VT",
            [[4.0, 6.0], [4.1, 6.1]],
            [10, 10],
            [300.0, 300.0],
            dynamic=True,
            cpu_ms=[600.0, 600.0],
        ),
        domains,
        [0],
    )
    text = render_table([a, b], domains)
    assert "+20%" in text and "+200%" not in text
