"""Hugging Face Llama-family checkpoints <-> megatron-core: the tensor mapping (``llama``) and
the checkpoint files (``checkpoints``).
"""
