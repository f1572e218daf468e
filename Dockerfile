# One image for every sllm service; compose.yaml picks the service by its command.
# GPU hosts: build FROM an image that already has a CUDA build of torch and pass TORCH=torch,
#   docker compose build --build-arg BASE=<your CUDA torch image> --build-arg TORCH=torch
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH=torch==2.13.0

RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml setup.py* README.md ./
COPY libs ./libs
COPY services ./services
RUN pip install --no-cache-dir "${TORCH}" .

ENV PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
CMD ["sllm", "--help"]
