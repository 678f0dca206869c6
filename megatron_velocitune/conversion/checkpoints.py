"""Checkpoint files for the Llama conversion: a Hugging Face folder <-> megatron-core's legacy
checkpoint layout (one ``model_optim_rng.pt`` per TP x PP rank), with the tokenizer files and the
flags to train the result with. The tensor mapping is :mod:`megatron_velocitune.conversion.llama`;
``velocitune-convert-hf-llama`` (:mod:`megatron_velocitune.cli.convert_hf_llama`) is the command.
"""

import glob
import json
import os
import re
import shutil
from typing import Any, Dict, List, Optional, Tuple

import torch

from megatron_velocitune.conversion.llama import (
    ConversionError,
    architecture_from_hf_config,
    architecture_from_megatron_args,
    hf_config_from_architecture,
    hf_to_megatron,
    megatron_flags,
    megatron_to_hf,
)
from megatron_velocitune.core import files
from megatron_velocitune.training.safe_load import load_checkpoint_file

FLAGS_FILE = "megatron_flags.txt"
HF_CONFIG_COPY = "hf_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def load_hf_state_dict(folder: str) -> Dict[str, torch.Tensor]:
    """All tensors of a Hugging Face checkpoint folder (safetensors, else torch files)."""
    safetensors = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    torch_files = sorted(
        glob.glob(os.path.join(folder, "pytorch_model*.bin"))
        + glob.glob(os.path.join(folder, "*.pt"))
    )
    if not safetensors and not torch_files:
        raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    state: Dict[str, torch.Tensor] = {}
    if safetensors:
        from safetensors.torch import load_file

        for path in safetensors:
            state.update(load_file(path, device="cpu"))
    else:
        for path in torch_files:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    return state


def _read_json(path: str, flag: str) -> Dict[str, Any]:
    """A JSON object from ``path``, or one :class:`ConversionError` line naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{flag}: {path} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{flag}: {path} holds no JSON object")
    return data


def _copy_tokenizer(src_dir: str, dst_dir: str) -> List[str]:
    copied = []
    for name in TOKENIZER_FILES:
        src = os.path.join(src_dir, name)
        if os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(
            os.path.join(dst_dir, name)
        ):
            shutil.copyfile(src, os.path.join(dst_dir, name))
            copied.append(name)
    return copied


def _args_from_flags(flags: List[str]) -> Dict[str, Any]:
    """``["--num-layers", "30", "--swiglu"]`` -> ``{"num_layers": 30, "swiglu": True}``."""
    args: Dict[str, Any] = {}
    i = 0
    while i < len(flags):
        key = flags[i][2:].replace("-", "_")
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            value: Any = flags[i + 1]
            for cast in (int, float):
                try:
                    value = cast(value)
                    break
                except ValueError:
                    pass
            args[key] = value
            i += 2
        else:
            args[key] = True
            i += 1
    return args


def hf_to_megatron_checkpoint(
    hf_dir: str, output: str, tp: int, pp: int, divisible_by: int = 128
) -> List[str]:
    """Write ``hf_dir`` as a megatron-core checkpoint under ``output``.

    Args:
        hf_dir (str): a Hugging Face model folder (``config.json`` + weights, tokenizer files).
        output (str): the checkpoint root (``--load`` of the training entry).
        tp (int): tensor-parallel size.
        pp (int): pipeline-parallel size.
        divisible_by (int): ``--make-vocab-size-divisible-by``.

    Returns:
        List[str]: the flags to train it with (also in ``output/megatron_flags.txt``).
    """
    config = _read_json(os.path.join(hf_dir, "config.json"), "--hf-dir")
    try:
        arch = architecture_from_hf_config(config)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ConversionError):
            raise
        raise ConversionError(
            f"--hf-dir {hf_dir}: config.json is not a Llama config ({type(e).__name__}: {e})"
        ) from None
    shards = hf_to_megatron(load_hf_state_dict(hf_dir), arch, tp, pp, divisible_by)
    flags = megatron_flags(arch, tp, pp, divisible_by)
    os.makedirs(output, exist_ok=True)
    copied = _copy_tokenizer(hf_dir, output)
    if "tokenizer.json" in copied:
        flags += [
            "--tokenizer-type",
            "HuggingFaceTokenizer",
            "--tokenizer-model",
            os.path.join(os.path.abspath(output), "tokenizer.json"),
        ]
    args = _args_from_flags(flags)
    for (r, s), shard in shards.items():
        payload = {
            "iteration": 0,
            "consumed_train_samples": 0,
            "checkpoint_version": 3.0,
            "model": shard,
            "args": args,
        }
        path = os.path.join(files.rank_dir(output, 0, r, s, pipeline=True), files.MODEL_FILE_NAME)
        files.save_with(path, lambda f, payload=payload: torch.save(payload, f))
    with open(os.path.join(output, HF_CONFIG_COPY), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(output, FLAGS_FILE), "w", encoding="utf-8") as f:
        f.write(" ".join(flags) + "\n")
    files.write_tracker(output, 0)
    return flags


_SHARD_DIR = re.compile(r"^mp_rank_(\d{2})(?:_(\d{3}))?$")


def read_megatron_checkpoint(
    root: str, iteration: Optional[int] = None, trust: bool = False
) -> Tuple[Dict[Tuple[int, int], Dict[str, Any]], Dict[str, Any], int]:
    """Every rank's model state dict of a legacy-layout checkpoint.

    Args:
        root (str): the checkpoint root (``--save`` / ``--load``).
        iteration (Optional[int]): which one (default: the tracker's).
        trust (bool): ``--trust-checkpoint``: load with ``weights_only=False``.

    Returns:
        Tuple: ``({(tp_rank, pp_rank): state_dict}, the run's args, iteration)``.
    """
    if iteration is None:
        iteration = files.read_tracker(root, flag="megatron-to-hf --load")
        if iteration is None:
            raise FileNotFoundError(f"{root}: no {files.TRACKER_NAME} (not a checkpoint directory)")
    it_dir = files.iteration_dir(root, iteration)
    if not os.path.isdir(it_dir):
        raise FileNotFoundError(f"{it_dir}: no such checkpoint")
    shards, args = {}, {}
    for name in sorted(os.listdir(it_dir)):
        m = _SHARD_DIR.match(name)
        if not m:
            continue
        ckpt = load_checkpoint_file(
            os.path.join(it_dir, name, files.MODEL_FILE_NAME), trust=trust, flag="--load"
        )
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise ConversionError(f"--load {root}: {it_dir}/{name} holds no 'model' state dict")
        shards[(int(m.group(1)), int(m.group(2) or 0))] = ckpt["model"]
        args = ckpt.get("args") or args
    if not shards:
        raise FileNotFoundError(f"{it_dir}: no mp_rank_* shards")
    if not isinstance(args, dict):
        args = vars(args)
    return shards, args, iteration


def megatron_to_hf_folder(
    load: str,
    output: str,
    hf_config: Optional[str] = None,
    iteration: Optional[int] = None,
    vocab_size: Optional[int] = None,
    tokenizer: Optional[str] = None,
    trust: bool = False,
) -> Dict[str, Any]:
    """Write a megatron-core checkpoint as a Hugging Face ``LlamaForCausalLM`` folder.

    Args:
        load (str): the checkpoint root.
        output (str): the Hugging Face folder to write.
        hf_config (Optional[str]): the original ``config.json`` (token ids etc. are kept);
            default ``load/hf_config.json`` when the checkpoint came from this tool.
        iteration (Optional[int]): which checkpoint (default the latest).
        vocab_size (Optional[int]): rows to keep (default: the config's, the run's
            ``--vocab-size``, else the tokenizer's).
        tokenizer (Optional[str]): tokenizer.json to ship (default the run's --tokenizer-model).
        trust (bool): ``--trust-checkpoint`` (see :func:`read_megatron_checkpoint`).

    Returns:
        Dict[str, Any]: the ``config.json`` written.
    """
    shards, args, iteration = read_megatron_checkpoint(load, iteration, trust)
    if hf_config is None and os.path.isfile(os.path.join(load, HF_CONFIG_COPY)):
        hf_config = os.path.join(load, HF_CONFIG_COPY)
    if hf_config is not None and os.path.isdir(hf_config):
        hf_config = os.path.join(
            hf_config,
            HF_CONFIG_COPY
            if os.path.isfile(os.path.join(hf_config, HF_CONFIG_COPY))
            else "config.json",
        )
    template = None
    if hf_config is not None:
        template = _read_json(hf_config, "--hf-config")
    tokenizer = tokenizer or args.get("tokenizer_model")
    if tokenizer and os.path.isdir(tokenizer):
        tokenizer = os.path.join(tokenizer, "tokenizer.json")
    if vocab_size is None:
        vocab_size = (template or {}).get("vocab_size") or args.get("vocab_size")
    if vocab_size is None and tokenizer and os.path.isfile(tokenizer):
        from tokenizers import Tokenizer

        vocab_size = Tokenizer.from_file(tokenizer).get_vocab_size()
    if vocab_size is None:
        raise ConversionError("vocabulary size unknown: pass --vocab-size or --hf-config")
    arch = architecture_from_megatron_args(args, int(vocab_size))
    tp = 1 + max(r for r, _ in shards)
    pp = 1 + max(s for _, s in shards)
    state = megatron_to_hf(shards, arch, tp, pp)
    dtype = str(state["model.embed_tokens.weight"].dtype).replace("torch.", "")
    config = hf_config_from_architecture(arch, template, dtype=dtype)
    os.makedirs(output, exist_ok=True)
    from safetensors.torch import save_file

    save_file(state, os.path.join(output, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(output, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    if tokenizer and os.path.isfile(tokenizer):
        _copy_tokenizer(os.path.dirname(os.path.abspath(tokenizer)), output)
    return config
