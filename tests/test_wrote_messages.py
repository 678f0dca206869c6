"""What the tools say they wrote is the file a user finds: never an atomic write's temporary name.

``velocitune-compare`` used to hand ``velocitune-fit-targets`` temporary names and rename them
afterwards, so its saved fit log read ``wrote .../target_fit-default.png.<pid>.tmp.png``.
"""

import os
import sys

import pytest

from megatron_velocitune.comparison.setting import Setting
from megatron_velocitune.comparison.targets import fit_targets
from megatron_velocitune.core.files import save_figure
from tests.test_fit_tools import CODE, GBS, MATH, SEQ, chin, rising, write_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    return fig, plt


@pytest.mark.parametrize("name,magic", [("fit.png", b"\x89PNG\r\n\x1a\n"), ("fit.svg", b"<?xml")])
def test_save_figure_writes_the_final_name_in_its_format(tmp_path, name, magic):
    fig, plt = _figure()
    try:
        save_figure(fig, str(tmp_path / "sub" / name), dpi=50)
    finally:
        plt.close(fig)
    assert os.listdir(tmp_path / "sub") == [name]  # no temporary file left beside it
    assert (tmp_path / "sub" / name).read_bytes().startswith(magic)


def test_compare_fit_log_names_the_final_files(tmp_path, monkeypatch):
    # The fit tool runs as a subprocess: it must import this checkout's package.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    domains, weights = ["code", "math", "web"], [0.4, 0.4, 0.2]
    curves = [chin(*CODE), chin(*MATH), rising]
    cpt = [
        {
            "seed": seed,
            "trajectory": write_run(
                tmp_path / f"cpt{seed}.jsonl",
                domains,
                weights,
                curves,
                seed=seed,
                initial=[4, 3.5, 3],
            ),
        }
        for seed in (1, 2)
    ]
    s = Setting(
        prefixes=tuple(f"data/{d}" for d in domains),
        weights=tuple(weights),
        load="base",
        replay_domain="web",
        train_iters=1000,
        update_interval=50,
        cpt_eval_interval=50,
        eval_iters=1,
        min_weight=0.0,
        fit_fraction=0.5,
        tolerance="5%",
        min_headroom=0.0,
        nproc=1,
        entry_args=(),
        seq_length=SEQ,
        global_batch_size=GBS,
        warmup_iters=0,
    )
    out = tmp_path / "cmp"
    out.mkdir()
    res = fit_targets(str(out), sys.executable, cpt, s)
    targets, png = out / "targets-default.json", out / "target_fit-default.png"
    assert res["targets"] == str(targets) and targets.is_file()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (out / "fit-default.txt").read_text()
    assert f"wrote {png}\n" in log and f"wrote {targets}\n" in log
    assert ".tmp" not in log
    assert sorted(os.listdir(out)) == [
        "fit-default.txt",
        "target_fit-default.png",
        "targets-default.json",
    ]
