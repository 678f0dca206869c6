"""Configuration: every bad value is one clear line naming the flag and the value."""

import argparse
import json

import pytest

from megatron_velocitune.core.arguments import (
    add_velocitune_args,
    config_from_args,
    read_loss_file,
    write_loss_file,
)
from megatron_velocitune.core.config import VelocituneConfig, VelocituneConfigError


def parse(*argv):
    return add_velocitune_args(argparse.ArgumentParser()).parse_args(list(argv))


def one_line_error(fn, match):
    with pytest.raises(VelocituneConfigError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_defaults_build_a_config():
    cfg = config_from_args(parse("--velocitune-target-loss", "1.0", "2.0"))
    assert cfg.policy == "velocity" and cfg.update_interval == 150 and cfg.min_weight == 0.0
    cfg.validate(2, [0.5, 0.5])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--velocitune-update-interval", "0"], r"--velocitune-update-interval: 0 must be"),
        (["--velocitune-eval-iters", "-3"], r"--velocitune-eval-iters: -3 must be"),
        (["--velocitune-min-weight", "nan"], r"--velocitune-min-weight: nan"),
    ],
)
def test_bad_scalar_flags(argv, match):
    one_line_error(lambda: config_from_args(parse(*argv)), match)


def test_bad_policy_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit):
        parse("--velocitune-policy", "doremi")
    assert "--velocitune-policy" in capsys.readouterr().err
    one_line_error(lambda: VelocituneConfig(policy="doremi"), r"--velocitune-policy: 'doremi'")


def test_wrong_number_of_losses():
    cfg = config_from_args(parse("--velocitune-target-loss", "1.0", "2.0", "3.0"))
    one_line_error(lambda: cfg.validate(2), r"--velocitune-target-loss: got 3 losses")


def test_target_not_below_initial():
    # Checked at start-up on the paper's footing (the full-set L_init it is given).
    cfg = config_from_args(
        parse(
            "--velocitune-policy",
            "paper",
            "--velocitune-initial-loss",
            "2.0",
            "3.0",
            "--velocitune-target-loss",
            "1.5",
            "3.0",
            "--velocitune-domain-names",
            "code",
            "web",
            "--velocitune-rising-rule",
            "refuse",
        )
    )
    one_line_error(
        lambda: cfg.validate(2),
        r"--velocitune-target-loss: target 3.0 for domain 'web' is not below the initial "
        r"loss 3.0 \(rule refuse",
    )


@pytest.mark.parametrize("bad", ["nan", "inf", "-1"])
def test_non_finite_or_negative_loss(bad):
    cfg = config_from_args(
        parse("--velocitune-initial-loss", "2.0", bad, "--velocitune-target-loss", "1.0", "1.0")
    )
    one_line_error(lambda: cfg.validate(2), rf"--velocitune-initial-loss: loss {float(bad)}")


@pytest.mark.parametrize(
    "weights, match",
    [([0.5, 0.6], r"--data-path: weights \[0.5, 0.6\] sum to"), ([1.0, 0.0], r"must all be")],
)
def test_bad_weights(weights, match):
    cfg = VelocituneConfig(policy="static")
    one_line_error(lambda: cfg.validate(2, weights), match)


def test_velocity_needs_targets_static_does_not():
    one_line_error(lambda: VelocituneConfig().validate(2), r"--velocitune-target-loss: policy")
    VelocituneConfig(policy="static").validate(2)
    VelocituneConfig(policy="ratio").validate(2)


def test_floor_too_large_for_domains():
    cfg = VelocituneConfig(policy="static", min_weight=0.3)
    one_line_error(lambda: cfg.validate(4), r"--velocitune-min-weight: 0.3 leaves no room")


def test_loss_files_round_trip_and_errors(tmp_path):
    path = str(tmp_path / "targets.json")
    write_loss_file(path, ["code", "web"], [1.25, 2.5], fraction=0.5)
    assert json.load(open(path))["fraction"] == 0.5
    assert read_loss_file(path, ["web", "code"], "f") == [2.5, 1.25]
    cfg = config_from_args(
        parse("--velocitune-target-loss-file", path, "--velocitune-domain-names", "code", "web")
    )
    assert cfg.target_loss == [1.25, 2.5] and cfg.target_loss_file == path
    one_line_error(lambda: read_loss_file(path, ["code", "math"], "--x"), r"no loss for .*'math'")
    one_line_error(lambda: read_loss_file(str(tmp_path / "nope.json"), None, "--x"), "cannot read")
    # A domain named twice (json.load would keep the last) and a file nested too deep to read.
    twice = tmp_path / "twice.json"
    twice.write_text('{"losses": {"code": 1.0, "web": 2.0, "code": 3.0}}')
    one_line_error(
        lambda: read_loss_file(str(twice), None, "--x"),
        r"^--x: cannot read .*twice.json': key 'code' appears twice in one object$",
    )
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    one_line_error(lambda: read_loss_file(str(deep), None, "--x"), r"nested too deeply")
    one_line_error(
        lambda: config_from_args(
            parse("--velocitune-target-loss", "1", "--velocitune-target-loss-file", path)
        ),
        "give one",
    )


def test_target_file_named_in_error(tmp_path):
    path = str(tmp_path / "t.json")
    write_loss_file(path, ["a", "b"], [1.0, 5.0])
    cfg = config_from_args(
        parse(
            "--velocitune-policy",
            "paper",
            "--velocitune-target-loss-file",
            path,
            "--velocitune-initial-loss",
            "2",
            "3",
            "--velocitune-domain-names",
            "a",
            "b",
            "--velocitune-rising-rule",
            "refuse",
        )
    )
    msg = one_line_error(lambda: cfg.validate(2), "not below the initial")
    assert path in msg


@pytest.mark.parametrize("names", [["", "b"], ["a", "  "]])
def test_an_empty_domain_name_names_the_flag(names):
    one_line_error(
        lambda: VelocituneConfig(policy="static", domain_names=names),
        r"--velocitune-domain-names: .* has an empty name \(domain \d\)",
    )
