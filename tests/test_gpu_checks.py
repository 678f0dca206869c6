"""examples/gpu_checks/run.sh, the GPU checks' one script, as a CPU dry run (GPU_CHECKS_DRY=1).

The script runs on a GPU machine with the image's Python 3.12 and the newest megatron-core; this
dry run goes through the same steps at tiny sizes on one gloo rank: the GPU-scale comparison
(benchmarks/compare_policies.py: base model, CPT, the default Velocitune, two static points),
step 2's refusal without CUDA (Megatron-LM's train() needs it) and bench_train_stream.py.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from megatron_velocitune.data.corpus import (
    iter_documents,
    train_tokenizer,
    write_domain,
    write_manifest,
)

from .conftest import STDLIB, capped, stdlib_docstrings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "gpu_checks", "run.sh")
DOMAIN_BYTES = 150_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("megatron.training") is None,
        reason="runs in the Python 3.12 leg (make test-latest): the GPU machine's Python and "
        "the newest megatron-core, whose wheel carries megatron.training",
    ),
]


@pytest.fixture(scope="module")
def demo_corpus_dir(tmp_path_factory) -> str:
    """A folder holding ``corpus/`` with the demo corpus's four domain names, of real text."""
    root = str(tmp_path_factory.mktemp("gpu_checks"))
    folder = os.path.join(root, "corpus")
    os.makedirs(folder)
    sources = {
        "general": capped(iter_documents("/usr/share/doc/**/copyright"), DOMAIN_BYTES),
        "man": capped(stdlib_docstrings(), DOMAIN_BYTES),
        "pydocs": capped(iter_documents(os.path.join(STDLIB, "*.py")), DOMAIN_BYTES),
        "code": capped(iter_documents(os.path.join(STDLIB, "email", "*.py")), DOMAIN_BYTES),
    }
    tok_path = os.path.join(folder, "tokenizer.json")
    tokenizer = train_tokenizer((d for docs in sources.values() for d in docs), 1024, tok_path)
    stats = [
        write_domain(n, docs, tokenizer, os.path.join(folder, n)) for n, docs in sources.items()
    ]
    write_manifest(os.path.join(folder, "corpus.json"), stats, tok_path)
    return root


def _run(out: str, corpus_dir: str, **env) -> subprocess.CompletedProcess:
    full_env = {
        **os.environ,
        "GPU_CHECKS_DRY": "1",
        "CORPUS_DIR": corpus_dir,
        "PYTHON": sys.executable,
        **env,
    }
    return subprocess.run(
        ["bash", SCRIPT, out], env=full_env, capture_output=True, text=True, timeout=900
    )


def test_the_dry_run_goes_through_every_step_and_a_second_call_keeps_them(
    demo_corpus_dir, tmp_path
):
    out = str(tmp_path / "out")
    proc = _run(out, demo_corpus_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = open(os.path.join(out, "summary.txt"), encoding="utf-8").read()
    assert "1 compare (2x64, seq 64): ok" in summary
    assert "3 bench_train_stream (hidden 64, seq 64): ok" in summary
    # No CUDA here: step 2 says where it runs, and is not marked done.
    assert summary.count("skipped, Megatron-LM's train() needs CUDA") == 2
    assert not os.path.exists(os.path.join(out, "2_megatron_training_eval.log")) or (
        "step done" not in open(os.path.join(out, "2_megatron_training_eval.log")).read()
    )

    table = open(os.path.join(out, "1_compare.md"), encoding="utf-8").read()
    for row in (
        "| CPT (static) | 1 |",
        "| Velocitune, shipped defaults | 1 |",
        "| static, replay 0.10 | 1 |",
        "| static, replay 0.60 | 1 |",
    ):
        assert row in table
    assert os.path.getsize(os.path.join(out, "1_compare_pareto.png")) > 0
    bench = open(os.path.join(out, "3_bench_train_stream.log"), encoding="utf-8").read()
    assert "| + training-stream estimator" in bench
    assert "layers 2, hidden 64, seq 64" in bench

    again = _run(out, demo_corpus_dir, STEPS="1 3")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 compare (2x64, seq 64): done before, kept" in again.stdout
    assert "3 bench_train_stream (hidden 64, seq 64): done before, kept" in again.stdout


def test_bad_input_gets_one_line(demo_corpus_dir, tmp_path):
    proc = _run(str(tmp_path / "a"), demo_corpus_dir, STEPS="1 4")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "STEPS=1 4: unknown step 4 (1, 2, 2-eval, 2-train or 3)"
    proc = _run(str(tmp_path / "b"), str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"CORPUS_DIR={tmp_path}: no corpus/corpus.json in it (the demo's tokenized corpus)"
    )
