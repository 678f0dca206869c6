# Megatron-LM + megatron-velocitune on NVIDIA's NGC PyTorch image (torch, apex, transformer-engine,
# triton and pybind11 come with the image and are not replaced).
#
#   docker build -t velocitune .                       # or: --build-arg MEGATRON_LM_REF=core_v0.19.0
#   docker run --gpus all --ipc=host -v /data:/data velocitune \
#     torchrun --nproc-per-node 8 -m megatron_velocitune.launch pretrain_gpt.py ... --velocitune-*
#
# Megatron-LM is a checkout at a pinned release on PYTHONPATH (WORKDIR is the checkout, so
# `pretrain_gpt.py` is found); the adapter supports core_v0.14 .. main and was exercised against
# core_v0.16.1, the default pin.
ARG NGC_TAG=25.04-py3
FROM nvcr.io/nvidia/pytorch:${NGC_TAG}
ARG MEGATRON_LM_REF=core_v0.16.1
RUN git clone --depth 1 --branch ${MEGATRON_LM_REF} https://github.com/NVIDIA/Megatron-LM.git /opt/Megatron-LM \
 && make -C /opt/Megatron-LM/megatron/core/datasets
ENV PYTHONPATH=/opt/Megatron-LM:${PYTHONPATH}
COPY . /opt/megatron-velocitune
# --no-deps: keep the image's torch; then the few pure-Python packages the tools and Megatron-LM's
# imports need that the image may lack (the setup.py extra `megatron-lm`, minus what NGC ships).
RUN pip install --no-cache-dir --no-deps -e /opt/megatron-velocitune \
 && pip install --no-cache-dir scipy tensorboard matplotlib six regex einops pyyaml pydantic
WORKDIR /opt/Megatron-LM
