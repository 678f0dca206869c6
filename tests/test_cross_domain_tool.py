"""``velocitune-fit-dcpt --cross-domain`` end to end on synthetic trajectories, and its
one-line errors.
"""

import pytest

from megatron_velocitune.cli import fit_dcpt_law
from tests.test_fit_tools import write_run

EPS = 0.01
SHARED = dict(E=0.5, B=60.0, eta=0.3, beta=0.3, C=0.3, gamma=0.4, F=1.5, mu=1.0)
W1, W2 = 6.0, 2.0
# Each domain's initial loss k1 and relative decline k2 over the K window.
FEATURES = {
    "a": (9.0, 0.40),
    "b": (7.0, 0.25),
    "c": (11.0, 0.45),
    "d": (8.0, 0.2),
    "x": (10.0, 0.3),
}
NEW = ["a", "b", "c", "d", "x"]
NAMES = ["web", *NEW]
SHARES = (0.2, 0.4, 0.6, 0.8)  # replay (web) share of each ratio run
ITERS, EVERY = 1000, 50  # budget 1000 * 16 * 256 = 4.096e6 tokens
WINDOW = 0.05 * ITERS * 16 * 256


def k_of(name):
    k1, k2 = FEATURES[name]
    return W1 / k1 + W2 * k2


def domain_curve(name, r):
    s = SHARED
    const = s["E"] + s["C"] / (r + EPS) ** s["gamma"] + s["F"] / k_of(name) ** s["mu"]
    return lambda d: const + s["B"] * r ** s["eta"] / d ** s["beta"]


def web_curve(r):
    return lambda d: 2.0 + 30.0 / d**0.3 + 0.05 / (r + EPS) ** 0.5


def blend(g):
    return [g] + [(1 - g) / len(NEW)] * len(NEW)


@pytest.fixture
def runs(tmp_path):
    paths = []
    for i, g in enumerate(SHARES):
        w = blend(g)
        curves = [web_curve(g)] + [domain_curve(n, w[1 + j]) for j, n in enumerate(NEW)]
        init = [2.5] + [FEATURES[n][0] for n in NEW]
        paths.append(
            write_run(tmp_path / f"g{g}.jsonl", NAMES, w, curves, ITERS, EVERY, 5e-4, i, init)
        )
    return paths


def short_run(tmp_path, flat=None):
    """The first 6% of a run: each domain falls linearly by k2 over the window."""

    def early(n):
        k1, k2 = FEATURES[n]
        if n == flat:
            return lambda d: k1 * (1 + 1e-5)
        return lambda d: k1 * (1 - k2 * d / WINDOW)

    curves = [lambda d: 2.5] + [early(n) for n in NEW]
    init = [2.5] + [FEATURES[n][0] for n in NEW]
    return write_run(tmp_path / "short.jsonl", NAMES, blend(0.5), curves, 60, 5, 0.0, 9, init)


def main(argv):
    return fit_dcpt_law.main(["--cross-domain", *argv])


def test_cross_domain_predicts_a_left_out_domain(tmp_path, runs, capsys):
    png = tmp_path / "cross.png"
    short = short_run(tmp_path)
    rc = main(
        [*runs, "--replay", "web", "--short-run", short, "--new-domain", "x", "--plot", str(png)]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "4 training domains ['a', 'b', 'c', 'd']" in out
    assert f"first {WINDOW:.6g} tokens (0.05 of the budget)" in out
    err = float(out.split("observed in the runs (not fitted): mean abs error ")[1].split()[0])
    assert err < 0.01  # nats: K carries x's offset of F / K^mu ~ 0.7
    # K's weights are identified up to a common scale.
    row = out.splitlines()[3].split()
    w1, w2 = float(row[8]), float(row[9])
    assert w2 / w1 == pytest.approx(W2 / W1, rel=0.05)
    assert "--data-path" in out and png.stat().st_size > 0
    line = [s for s in out.splitlines() if s.strip().startswith("x ")][0].split()
    assert line[1] == "new" and float(line[3]) == pytest.approx(0.3, abs=1e-9)


def test_cross_domain_prediction_table_at_given_ratios(tmp_path, runs, capsys):
    short = short_run(tmp_path)
    argv = [*runs, "--replay", "web", "--short-run", short, "--new-domain", "x"]
    assert main([*argv, "--ratio", "0.25", "--domains", "a", "b", "c"]) == 0
    out = capsys.readouterr().out
    rows = [s.split() for s in out.splitlines() if s.strip().startswith("r=0.250")]
    assert len(rows) == 1
    truth = domain_curve("x", 0.25)(ITERS * 16 * 256)
    assert float(rows[0][-1]) == pytest.approx(truth, abs=0.03)


@pytest.mark.parametrize(
    "tail, message",
    [
        (["--new-domain", "nope"], "--new-domain 'nope': not a domain of --short-run"),
        (["--new-domain", "x", "--domains", "a"], "needs 2 or more training domains"),
        (["--new-domain", "x", "--domains", "a", "zz"], "--domains 'zz': not a domain of"),
        (["--new-domain", "x", "--k-window", "0"], "--k-window 0.0 must be in (0, 1]"),
        (["--new-domain", "x", "--k-window", "0.5"], "before the K window"),
        (["--new-domain", "x", "--replay", "wb"], "--replay 'wb': not a domain of the runs"),
        ([], "needs --new-domain"),
        (["--new-domain", "x", "--tolerance", "nan"], "--tolerance nan: must be finite and >= 0"),
        (["--new-domain", "x", "--tolerance", "-1"], "--tolerance -1: must be finite and >= 0"),
    ],
)
def test_cross_domain_one_line_errors(tmp_path, runs, capsys, tail, message):
    argv = [*runs, "--short-run", short_run(tmp_path)]
    if "--replay" not in tail:
        argv += ["--replay", "web"]
    assert main(argv + tail) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("velocitune-fit-dcpt: error:"), err
    assert message in err[0]


def test_cross_domain_refuses_a_flat_early_curve(tmp_path, runs, capsys):
    short = short_run(tmp_path, flat="x")
    assert main([*runs, "--replay", "web", "--short-run", short, "--new-domain", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--short-run {short}: domain 'x'" in err[0]
    assert "flat or rising" in err[0]


def test_cross_domain_refuses_too_few_points(tmp_path, runs, capsys):
    # One ratio run: every training domain sits at a single share.
    argv = [runs[0], "--replay", "web", "--short-run", short_run(tmp_path), "--new-domain", "x"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "domain 'a'" in err[0] and "got 1 ratios" in err[0]


def test_cross_domain_refuses_runs_with_other_domains(tmp_path, runs, capsys):
    odd = write_run(
        tmp_path / "odd.jsonl",
        ["web", "a", "b"],
        [0.5, 0.25, 0.25],
        [web_curve(0.5), domain_curve("a", 0.25), domain_curve("b", 0.25)],
        ITERS,
        EVERY,
    )
    argv = [*runs, odd, "--replay", "web", "--short-run", short_run(tmp_path), "--new-domain", "x"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"velocitune-fit-dcpt: error: {odd}: domains")
    assert "differ from" in err[0]
