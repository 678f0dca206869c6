# Megatron-LM + megatron-velocitune on NVIDIA's NGC PyTorch image (torch, apex and
# transformer-engine come with the image and are not replaced).
ARG NGC_TAG=25.04-py3
FROM nvcr.io/nvidia/pytorch:${NGC_TAG}
ARG MEGATRON_LM_REF=core_v0.16.1
RUN git clone --depth 1 --branch ${MEGATRON_LM_REF} https://github.com/NVIDIA/Megatron-LM.git /opt/Megatron-LM
ENV PYTHONPATH=/opt/Megatron-LM:${PYTHONPATH}
COPY . /opt/megatron-velocitune
RUN pip install --no-cache-dir --no-deps -e /opt/megatron-velocitune \
 && pip install --no-cache-dir scipy tensorboard
WORKDIR /opt/megatron-velocitune
