# The task image: what a stage pod runs (`python -m tasks <stage> ...`) and what serves models
# (`python -m tasks serve`). CUDA-capable: PyTorch's CUDA 12.8 wheels bring their own CUDA runtime, so the
# image runs on GPU nodes (NVIDIA device plugin) and falls back to the CPU elsewhere (device="auto").
#   docker build -f docker/tasks.Dockerfile -t ghcr.io/mlops-airflow/tasks:0.1.0 .
# Build context: the repository root. The lock pins torch==2.13.0+cpu for CI machines; the image replaces
# it with the CUDA build of the same version (TORCH_INDEX below), everything else comes from the lock.
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GX_ANALYTICS_ENABLED=False \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    CUBLAS_WORKSPACE_CONFIG=:4096:8 \
    MLP_DATA_ROOT=/data

RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 git curl tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 app && useradd --uid 10001 --gid 10001 --create-home app

WORKDIR /opt/project
COPY requirements.lock pyproject.toml README.md ./
# everything from the lock except the CPU torch build, then the CUDA build of the same torch version
RUN grep -v '^torch==' requirements.lock > /tmp/req.txt \
 && pip install -r /tmp/req.txt \
 && pip install --index-url "$TORCH_INDEX" "torch==${TORCH_VERSION}"
COPY tasks ./tasks
COPY plugins ./plugins
COPY config ./config
COPY include ./include
RUN pip install --no-deps -e . && mkdir -p /data && chown app:app /data

USER app
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "tasks", "--help"]
